"""Chat models are chosen by configuration: embedded, a local folder, or any OpenAI-compatible endpoint."""

from langchain_openai import ChatOpenAI
from pydantic import SecretStr
from sqlalchemy import select

from affinage.core.chat_model import LocalChatModel, load_chat_model
from affinage.factory import build_agent
from affinage.core.tables import Interaction
from retrieval.embeddings import SentenceEmbeddings, embedded_embedder_path
from retrieval.ingest import ingest
from tests.agent.service_harness import LiveServer


def test_default_model_is_converted_once_to_safetensors(default_model_dir):
    files = {p.name for p in default_model_dir.iterdir()}
    assert "model.safetensors" in files and "config.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)
    assert "quantization_config" not in (default_model_dir / "config.json").read_text()


def test_local_folder_model(tiny_settings, tiny_model_dir):
    llm = load_chat_model(tiny_settings)
    assert isinstance(llm, LocalChatModel) and llm.model_name == tiny_model_dir.name


def test_the_serving_precision_is_the_setting_or_what_the_cpu_computes_natively(tiny_settings, monkeypatch):
    import torch

    from affinage.core.model_files import serving_dtype

    assert serving_dtype("float32") is torch.float32 and serving_dtype("bfloat16") is torch.bfloat16
    for native, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert serving_dtype("auto") is expected
    llm = load_chat_model(tiny_settings.model_copy(update={"serving_dtype": "bfloat16"}))
    assert {p.dtype for p in llm._model.parameters()} == {torch.bfloat16}
    assert load_chat_model(tiny_settings.model_copy(update={"serving_dtype": "float32"}))._model.dtype is torch.float32


def test_openai_compatible_endpoint_is_used_through_langchain(service, tiny_settings, embeddings, kb):
    """affinage's own service stands in for any OpenAI-compatible server."""
    app, keys = service()
    with LiveServer(app) as server:
        remote = tiny_settings.model_copy(update={
            "home": tiny_settings.home.parent / "client-home", "chat_model": "default",
            "openai_base_url": f"{server.url}/v1", "openai_api_key": SecretStr(keys["agent"]),
        })
        ingest(remote.index_dir, [kb], embeddings, remote.chunk_chars, remote.chunk_overlap_chars)
        agent = build_agent(remote, embeddings=embeddings)
        assert isinstance(agent.llm, ChatOpenAI)
        answer = agent.ask("How long is the password reset link valid?")
        assert answer.model == app.state.agent.model_version  # the version the server says answered
        assert answer.citations[0]["source"] == "account/passwords.md#reset-your-password"
        with app.state.agent.store.session() as session:  # the server logged the request it answered
            rows = session.scalars(select(Interaction)).all()
        assert len(rows) == 1 and rows[0].user == "test-agent"


def test_embedder_is_swappable_by_path():
    embedder = SentenceEmbeddings(str(embedded_embedder_path()))
    assert embedder.dim == 384 and embedder.name == str(embedded_embedder_path())


def test_answers_stop_after_the_sentence_limit():
    from affinage.core.generation import cut_at_sentences as _cut_at_sentences

    assert _cut_at_sentences("First one. Second one!\n\nThird part? Fourth. Fifth", 2) == "First one. Second one!"
    assert _cut_at_sentences("Steps:\n\nOpen settings. Done.", 1) == "Steps:"
    assert _cut_at_sentences("Use obj.method() here. Then go.", 1) == "Use obj.method() here."
    assert _cut_at_sentences("No end yet", 3) == "No end yet"
    assert _cut_at_sentences("A. B. C.", 0) == "A. B. C."


def test_batched_answers_are_the_answers_generated_alone(tiny_model_dir):
    """Greedy, float32: padding on the left and stopping each row on its own change no answer (prompts of different
    lengths, more than one batch)."""
    from langchain_core.messages import HumanMessage

    llm = LocalChatModel.from_pretrained(tiny_model_dir, max_new_tokens=24, max_sentences=1)
    questions = ["Hi", "How do I reset my password?", "Refunds on annual plans: how long do I have to ask for one?",
                 "Export", "Which browsers are supported by the web app and the desktop client?"]
    prompts = [[HumanMessage(q)] for q in questions]
    alone = [llm.invoke(p).content for p in prompts]
    assert llm.answer_batch(prompts, batch_size=3) == alone
