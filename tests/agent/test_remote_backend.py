"""Generating through a vLLM server: promotions load the active adapter there and route every request to it.

The agent talks through ChatOpenAI (the OpenAI SDK) to a stand-in for vLLM (``vllm_standin``: every adapter call is
checked against the contract recorded from vLLM's source, ``contracts/vllm_lora.json``), which generates on a real
affinage service process (``tests.agent.light_server``: the app as ``affinage serve`` runs it, scripted models).
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime, timezone

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import SecretStr, ValidationError

from affinage.core.settings import load_settings
from affinage.factory import build_agent
from agent.service import auth
from affinage.service import create_app
from retrieval.ingest import ingest
from tests.agent.light_server import HashEmbeddings
from tests.agent.service_harness import LiveServer
from tests.agent.test_crash_soak import ServerProcess, free_port, workspace
from tests.agent.vllm_standin import VLLMStandIn
from tests.conftest import DEMO_KB
from tuning.registry import Registry
from tuning.remote_serving import RemoteAdapterFollower

BASE = "support-base"  # the name the vLLM server serves its base model under
VLLM_KEY = "vllm-test-key"
SERVER_REGISTRY = "/srv/affinage/registry"  # where the server mounts the client's registry folder
QUESTION = "How long is the password reset link valid?"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """A real affinage service process that the stand-in relays generation to: its URL and an agent key."""
    home = tmp_path_factory.mktemp("upstream") / "home"
    key = workspace(home, DEMO_KB, real_models=False, tiny_model_dir=None)
    server = ServerProcess([sys.executable, "-m", "tests.agent.light_server", str(home), str(free_port())], home)
    server.start()
    yield server.url, key
    server.stop()


@pytest.fixture
def vllm(tmp_path, upstream):
    standin = VLLMStandIn(BASE, VLLM_KEY, {SERVER_REGISTRY: tmp_path / "client" / "registry"}, *upstream)
    with LiveServer(standin.app) as server:
        standin.url = server.url
        yield standin


@pytest.fixture
def settings(tmp_path, vllm, kb):
    """A workspace whose agent generates through the stand-in and follows the registry with remote_lora = 'vllm'."""
    settings = load_settings(tmp_path / "client", chat_model=BASE, openai_base_url=f"{vllm.url}/v1",
                             openai_api_key=SecretStr(VLLM_KEY), remote_lora="vllm",
                             remote_registry_dir=SERVER_REGISTRY, min_score=0.05, max_new_tokens=16)
    ingest(settings.index_dir, [kb], HashEmbeddings(), settings.chunk_chars, settings.chunk_overlap_chars)
    return settings


def register(registry: Registry, version_id: str, rank: int = 4, full: bool = False) -> str:
    """A gated version holding a PEFT adapter saved by peft itself (or full weights) of a one-layer model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    staged = registry.staging()
    if full:
        model.save_pretrained(staged)
    else:
        get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"])
                       ).save_pretrained(staged)
    registry.add(staged, {"id": version_id, "kind": "full" if full else "lora", "method": "sft",
                          "created_at": datetime.now(timezone.utc).isoformat()})
    registry.record_gate(version_id, True, {})
    return version_id


def load_call(version_id: str) -> tuple[str, dict]:
    """The load call the contract asks for: the version id as name, its folder as the server mounts it."""
    return "load", {"lora_name": version_id, "lora_path": f"{SERVER_REGISTRY}/versions/{version_id}"}


def remote_agent(settings):
    agent = build_agent(settings, embeddings=HashEmbeddings())
    assert isinstance(agent.llm, ChatOpenAI) and isinstance(agent.watcher, RemoteAdapterFollower)
    return agent, agent.watcher


def asked(agent, vllm) -> tuple[str, str, str]:
    """Who answered one question: as the agent reports it, as its log records it, as the server was asked for."""
    answer = agent.ask(QUESTION)
    assert answer.answer and not answer.abstained
    return answer.model, agent.store.get_interaction(answer.interaction_id).model_version, vllm.chat_models[-1]


@pytest.mark.slow
def test_promotions_and_rollbacks_load_adapters_into_the_server_and_route_requests_to_them(settings, vllm):
    agent, follower = remote_agent(settings)
    registry = Registry.open(settings)
    v1, v2, v3 = (register(registry, f"sft-v{n}") for n in (1, 2, 3))
    assert asked(agent, vllm) == (BASE, BASE, BASE)  # nothing promoted: the base model answers through the server
    assert vllm.calls == []

    registry.promote(v1, actor="test")
    assert follower.check()
    assert vllm.calls == [load_call(v1)]
    assert asked(agent, vllm) == (v1, v1, v1)  # the request names the adapter; the log records the version

    registry.promote(v2, actor="test")
    assert follower.check() and vllm.calls[-1] == load_call(v2)
    registry.promote(v3, actor="test")
    assert follower.check()
    assert vllm.calls[-2:] == [load_call(v3), ("unload", {"lora_name": v1})]  # the one replaced stays loaded
    served = openai.OpenAI(base_url=f"{vllm.url}/v1", api_key=VLLM_KEY).models.list().data
    assert {m.id: m.model_extra["parent"] for m in served} == {BASE: None, v2: BASE, v3: BASE}
    assert asked(agent, vllm) == (v3, v3, v3)

    calls = len(vllm.calls)
    assert registry.rollback(actor="test") == v2
    assert follower.check() and len(vllm.calls) == calls  # back to the one kept loaded: no load at all
    assert asked(agent, vllm) == (v2, v2, v2)
    assert registry.rollback(actor="test") == v1
    assert follower.check()
    assert vllm.calls[calls:] == [load_call(v1), ("unload", {"lora_name": v3})]  # unloaded earlier: loaded again
    assert asked(agent, vllm) == (v1, v1, v1)
    assert registry.rollback(actor="test") is None
    assert follower.check()
    assert asked(agent, vllm) == (BASE, BASE, BASE)
    assert vllm.calls[-1] == ("unload", {"lora_name": v2}) and set(vllm.adapters) == {v1}

    assert not follower.check()  # in step: nothing to do
    assert vllm.violations == []


@pytest.mark.slow
def test_a_refused_load_keeps_the_previous_routing_and_says_why(settings, vllm, caplog):
    agent, follower = remote_agent(settings)
    registry = Registry.open(settings)
    v1 = register(registry, "sft-v1")
    wide = register(registry, "sft-rank64", rank=64)  # above the server's --max-lora-rank 16
    full = register(registry, "full-v1", full=True)
    tampered = register(registry, "sft-tampered")
    registry.promote(v1, actor="test")
    assert follower.check()
    caplog.set_level(logging.ERROR, logger="affinage.serving")

    def refused(version: str, tamper: bool = False) -> str:
        """Promote ``version`` (then change its weights if ``tamper``); requests must stay on v1. Returns the reason."""
        caplog.clear()
        registry.promote(version, actor="test")  # the registry checks the hashes here
        if tamper:
            (registry.get(version).path / "adapter_model.safetensors").write_bytes(b"not the trained weights")
        assert not follower.check()
        assert follower.routed == v1 and asked(agent, vllm) == (v1, v1, v1)
        return next(r.error for r in caplog.records if getattr(r, "version", None) == version)

    assert "HTTP 500: LoRA rank 64 is greater than max_lora_rank 16" in refused(wide)
    assert vllm.calls[-1] == load_call(wide) and wide not in vllm.adapters
    calls = len(vllm.calls)
    assert not follower.check() and len(vllm.calls) == calls  # not asked again at every poll
    assert "full weights, which cannot be loaded into a running vLLM server" in refused(full)
    assert "does not match its recorded sha256" in refused(tampered, tamper=True)
    assert len(vllm.calls) == calls  # neither reached the server
    assert vllm.violations == []


@pytest.mark.slow
def test_a_restarted_server_gets_its_adapter_back(settings, vllm, caplog):
    agent, follower = remote_agent(settings)
    registry = Registry.open(settings)
    v1 = register(registry, "sft-v1")
    registry.promote(v1, actor="test")
    assert follower.check()

    vllm.restart()
    with pytest.raises(openai.NotFoundError, match="does not exist"):  # what the server answers until the next poll
        agent.ask(QUESTION)
    assert not follower.check()  # the routing stays; the adapter is loaded again
    assert vllm.calls[-1] == load_call(v1) and v1 in vllm.adapters
    assert asked(agent, vllm) == (v1, v1, v1)

    vllm.restart()
    mounts, vllm.mounts = vllm.mounts, {}  # and now the server cannot read the registry
    caplog.set_level(logging.ERROR, logger="affinage.serving")
    assert follower.check() and follower.routed is None
    reasons = [getattr(r, "error", "") for r in caplog.records]
    assert any("No adapter found for /srv/affinage/registry/versions/sft-v1" in reason for reason in reasons)
    assert asked(agent, vllm) == (BASE, BASE, BASE)  # answers keep coming, from the base model
    vllm.mounts = mounts
    assert not follower.check()  # refused a moment ago: not tried at every poll
    follower.retry_s = 0
    assert follower.check() and asked(agent, vllm) == (v1, v1, v1)
    assert vllm.violations == []


@pytest.mark.slow
def test_the_running_service_follows_a_promotion_on_the_server(settings, vllm):
    settings = settings.model_copy(update={"registry_poll_seconds": 0.1})
    agent = build_agent(settings, embeddings=HashEmbeddings())
    key = auth.create_key(agent.store, "client", "agent")
    registry = Registry.open(settings)
    v1 = register(registry, "sft-v1")
    with LiveServer(create_app(settings, agent=agent)) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        ask = [{"role": "user", "content": QUESTION}]
        assert client.chat.completions.create(model="default", messages=ask).model == BASE
        registry.promote(v1, actor="test")
        deadline = time.monotonic() + 30
        while v1 not in [m.id for m in client.models.list()]:
            assert time.monotonic() < deadline, "the service never routed to the promoted adapter"
            time.sleep(0.05)
        chunks = list(client.chat.completions.create(model="default", messages=ask, stream=True))
        extra = chunks[-1].model_extra["affinage"]
        assert extra["model_version"] == v1 and vllm.chat_models[-1] == v1
        assert agent.store.get_interaction(extra["interaction_id"]).model_version == v1
    assert vllm.calls == [load_call(v1)] and vllm.violations == []


def test_the_stand_in_refuses_calls_that_break_the_contract(vllm):
    with httpx.Client(base_url=vllm.url, headers={"Authorization": f"Bearer {VLLM_KEY}"}) as client:
        assert client.post("/v1/load_lora_adapter", json={"lora_name": "x"}).status_code == 400
        assert client.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/p",
                                                           "load_inplace": True}).status_code == 400
        assert client.post("/v1/unload_lora_adapter", content='{"lora_name": "x"}',
                           headers={"Content-Type": "text/plain"}).status_code == 400
        unknown = client.post("/v1/unload_lora_adapter", json={"lora_name": "x"})
        assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "NotFoundError"
    assert httpx.get(f"{vllm.url}/v1/models").json() == {"error": "Unauthorized"}
    assert vllm.violations == [
        "load: required field 'lora_path' is missing",
        "load: field 'load_inplace' is not accepted by every vLLM version in the contract",
        "unload: content type 'text/plain', not application/json",
    ]


@pytest.mark.parametrize("overrides, named", [
    ({"remote_lora": "vllm"}, "remote_lora = 'vllm' needs openai_base_url"),
    ({"remote_registry_dir": "/srv/registry"}, "remote_registry_dir is set but remote_lora is 'off'"),
    ({"remote_lora": "vllm", "openai_base_url": "http://h:8000/v1", "remote_registry_dir": "srv/registry"},
     "remote_registry_dir must be an absolute path"),
])
def test_settings_refuse_bad_remote_combinations(home, overrides, named):
    with pytest.raises(ValidationError, match=named):
        load_settings(home, **overrides)
