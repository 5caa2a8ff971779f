"""A running service follows promotions and rollbacks without a restart and without failing a request."""

import threading
import time

import openai
import pytest

from affinage.core.chat_model import LocalChatModel
from affinage.factory import build_agent
from agent.service import auth
from affinage.service import create_app
from retrieval.ingest import ingest
from tests.agent.service_harness import LiveServer
from tests.agent.test_replicas import register_adapter
from tuning.registry import Registry
from tuning.serving import ActiveVersionWatcher
from tuning.train import train

QUESTION = "How long is the password reset link valid?"


@pytest.mark.slow
def test_service_switches_versions_under_traffic(tiny_settings, tiny_model_dir, kb, embeddings, dataset, quick_config):
    settings = tiny_settings.model_copy(update={"registry_poll_seconds": 0.1, "temperature": 1.0, "max_new_tokens": 16})
    registry = Registry.open(settings)
    candidate = train(settings, "sft", config_path=quick_config(), progress=False).id
    registry.record_gate(candidate, True, {})
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    agent = build_agent(settings, embeddings=embeddings)
    app = create_app(settings, agent=agent)
    key = auth.create_key(agent.store, "traffic", "agent")
    base, promoted = tiny_model_dir.name, f"{tiny_model_dir.name}@{candidate}"

    with LiveServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        answers, errors, stop = [], [], threading.Event()

        def traffic():
            while not stop.is_set():
                try:
                    chunks = list(client.chat.completions.create(
                        model="default", messages=[{"role": "user", "content": QUESTION}], stream=True))
                    answers.append(chunks[-1].model_extra["affinage"])
                except Exception as error:  # noqa: BLE001 - any failure fails the test below
                    errors.append(error)

        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            def wait_for(version):
                deadline = time.monotonic() + 30
                while version not in [m.id for m in client.models.list()]:
                    assert time.monotonic() < deadline, f"the service never switched to {version}"
                    time.sleep(0.05)
                seen = len(answers)
                while len(answers) < seen + 2:  # answers keep flowing on the new version
                    assert time.monotonic() < deadline and not errors
                    time.sleep(0.05)

            wait_for(base)
            registry.promote(candidate, actor="test")
            wait_for(promoted)
            registry.rollback(actor="test")
            wait_for(base)
        finally:
            stop.set()
            worker.join(timeout=60)

    assert not errors
    versions = [a["model_version"] for a in answers]
    segments = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
    assert segments == [base, promoted, base]
    for answer in answers:  # the log records the version that actually answered
        assert agent.store.get_interaction(answer["interaction_id"]).model_version == answer["model_version"]


def test_a_version_that_fails_to_load_is_tried_again_once_the_pointer_moves(tiny_settings, tiny_model_dir):
    registry = Registry.open(tiny_settings)
    register_adapter(registry, tiny_model_dir, "v1")
    llm = LocalChatModel.from_pretrained(tiny_model_dir)
    watcher = ActiveVersionWatcher(llm, registry, tiny_model_dir)
    registry.promote("v1", actor="test")
    weights = registry.versions / "v1" / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # damaged after promotion: refused, base serves on
    assert not watcher.check() and llm.adapter_version is None
    weights.write_bytes(good)
    assert not watcher.check()  # the same pointer is not hashed again at every poll
    registry.rollback(actor="test")
    registry.promote("v1", actor="test")  # promoted again: a new generation, tried again
    assert watcher.check() and llm.served_version == f"{tiny_model_dir.name}@v1"
