"""Serving both arms of a running canary: a local model beside the active one, or a second adapter on vLLM.

The canary is set by writing the pointer row as the registry's canary moves do (``canary`` and a new generation),
so these tests depend only on the row's shape, not on how a canary is started."""

from __future__ import annotations

import gc
import time
import weakref

import pytest
from fastapi.testclient import TestClient

from affinage.core.canary_split import arm_for
from affinage.core.chat_model import ModelBusyError
from affinage.core.tables import Interaction, RegistryPointer
from affinage.factory import build_agent
from affinage.service import create_app
from tests.agent.service_harness import model_busy
from agent.service import auth
from retrieval.ingest import ingest
from tests.agent import test_remote_backend as remote
from tests.agent.test_replicas import register_adapter
from tuning import serving
from tuning.registry import POINTER_ID, Registry

QUESTION = "How long is the password reset link valid?"
upstream, vllm, settings = remote.upstream, remote.vllm, remote.settings  # the vLLM stand-in's fixtures


def set_canary(registry: Registry, version: str | None, share: int = 50, promote: bool = False) -> None:
    """Start, step or clear the canary (``promote``: make it the active version in the same move)."""
    with registry.store.session() as session:
        row = session.get(RegistryPointer, POINTER_ID)
        if promote:
            version = row.canary["version"]
            row.history, row.active = [*row.history, row.active], version
            row.ever_active = sorted({*row.ever_active, version})
        at = "2025-01-01T00:00:00+00:00"
        row.canary = None if promote or version is None else {
            "version": version, "share": share, "started_at": at, "step_started_at": at, "actor": "test"}
        row.generation += 1


def conversations(version: str, share: int, arm: str, count: int = 1) -> list[str]:
    """The first ``count`` conversation ids that a canary of ``version`` at ``share`` puts on ``arm``."""
    canary = {"version": version, "share": share}
    return [c for c in (f"conv-{i}" for i in range(1000)) if arm_for(c, canary) == arm][:count]


@pytest.fixture
def local(tiny_settings, tiny_model_dir, kb, embeddings, monkeypatch):
    """An agent serving v1 locally, v2 registered beside it, and a count of the versions loaded from disk."""
    registry = Registry.open(tiny_settings)
    for version in ("v1", "v2"):
        register_adapter(registry, tiny_model_dir, version)
    registry.promote("v1", actor="test")
    ingest(tiny_settings.index_dir, [kb], embeddings, tiny_settings.chunk_chars, tiny_settings.chunk_overlap_chars)
    loads, load = [], serving.load_weights
    monkeypatch.setattr(serving, "load_weights", lambda *a: loads.append(a[2]) or load(*a))
    agent = build_agent(tiny_settings, embeddings=embeddings)
    assert agent.router is agent.watcher and agent.llm.adapter_version == "v1"
    return agent, registry, loads


def asked(agent, conversation: str) -> tuple[str, str | None]:
    """The version that answered a conversation's question and its arm, as the log records them."""
    answer = agent.ask(QUESTION, conversation_id=conversation)
    with agent.store.session() as session:
        row = session.get(Interaction, answer.interaction_id)
        assert row.model_version == answer.model
        return row.model_version, row.arm


def test_a_canary_splits_conversations_and_keeps_each_on_one_version(local, tiny_model_dir):
    agent, registry, loads = local
    v1, v2 = f"{tiny_model_dir.name}@v1", f"{tiny_model_dir.name}@v2"
    assert asked(agent, "c") == (v1, None)  # no canary: the active version, no arm
    set_canary(registry, "v2", share=50)
    assert agent.watcher.check() and loads == ["v1", "v2"]
    canary = agent.router.arms()["canary"]
    assert agent.served_versions() == [v1, v2] and canary.served_version == v2 and agent.llm.served_version == v1

    arms = [agent.router.route(f"conversation-{i}")[1] for i in range(1000)]
    assert 440 <= arms.count("canary") <= 560  # 50 % of 1000: three standard deviations either way
    for conversation in conversations("v2", 50, "canary", 2) + conversations("v2", 50, "active", 2):
        expected = (v2, "canary") if arm_for(conversation, {"version": "v2", "share": 50}) == "canary" else (v1, "active")
        assert asked(agent, conversation) == asked(agent, conversation) == expected

    on_canary = {c for c in (f"conversation-{i}" for i in range(1000)) if agent.router.route(c)[1] == "canary"}
    set_canary(registry, "v2", share=90)  # a share step: the same model, every canary conversation stays
    assert not agent.watcher.check() and loads == ["v1", "v2"] and agent.router.arms()["canary"] is canary
    assert all(agent.router.route(c) == (canary, "canary") for c in on_canary)

    freed = weakref.ref(agent.watcher._canary_weights)
    del canary
    set_canary(registry, None)  # stopped or rolled back: everything on the active version, the second model freed
    assert agent.watcher.check() and agent.router.arms() == {} and agent.served_versions() == [v1]
    assert asked(agent, conversations("v2", 90, "canary")[0]) == (v1, None)
    deadline = time.monotonic() + 10  # its engine stops at its next step, having no answer in flight
    while gc.collect() is not None and freed() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert freed() is None


def test_a_promoted_canary_is_served_without_loading_it_again(local, tiny_model_dir):
    agent, registry, loads = local
    set_canary(registry, "v2", share=10)
    assert agent.watcher.check()
    weights = agent.watcher._canary_weights
    set_canary(registry, None, promote=True)
    assert agent.watcher.check() and loads == ["v1", "v2"]
    assert agent.llm.adapter_version == "v2" and agent.llm._model is weights and agent.router.arms() == {}
    assert asked(agent, "any") == (f"{tiny_model_dir.name}@v2", None)


@pytest.mark.parametrize("batched", [False, True], ids=["one-at-a-time", "batched"])
def test_both_arms_keep_the_queue_timeout(local, batched):
    """One at a time, both arms share one lock (one generation across both, as with one model); batched, the canary's
    model has an engine of its own. Either way a request that waits past queue_timeout is ModelBusyError."""
    agent, registry, _ = local
    set_canary(registry, "v2")
    agent.watcher.check()
    canary = agent.router.arms()["canary"]
    canary.queue_timeout = 0.2
    assert canary._lock is agent.llm._lock
    if not batched:
        agent.llm.max_batch = canary.max_batch = 0
    with model_busy(agent.llm if not batched else canary):  # the active arm's answers, or the canary's own
        with pytest.raises(ModelBusyError):
            canary.invoke("hello")


def test_a_canary_that_fails_to_load_leaves_every_conversation_on_the_active_version(local):
    agent, registry, loads = local
    weights = registry.versions / "v2" / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # damaged: its hash no longer matches
    set_canary(registry, "v2")
    assert not agent.watcher.check() and agent.router.arms() == {}
    assert not agent.watcher.check() and loads == ["v1", "v2"]  # not hashed again at every poll
    assert {agent.router.route(c)[1] for c in ("a", "b", "c", "d")} == {None}


def test_the_api_lists_the_canary_and_serves_a_version_named_explicitly(local, tiny_model_dir, tiny_settings):
    agent, registry, _ = local
    set_canary(registry, "v2")
    agent.watcher.check()
    key = auth.create_key(agent.store, "client", "agent")
    client = TestClient(create_app(tiny_settings, agent=agent))  # no lifespan: the watcher is checked by hand
    headers = {"Authorization": f"Bearer {key}"}
    v1, v2 = f"{tiny_model_dir.name}@v1", f"{tiny_model_dir.name}@v2"
    assert [m["id"] for m in client.get("/v1/models", headers=headers).json()["data"]] == ["default", v1, v2]
    active_conversation = conversations("v2", 50, "active")[0]
    for model, arm in ((v2, "canary"), (v1, "active"), ("default", "active")):
        body = {"model": model, "conversation_id": active_conversation,
                "messages": [{"role": "user", "content": QUESTION}]}
        extra = client.post("/v1/chat/completions", json=body, headers=headers).json()["affinage"]
        assert extra["model_version"] == (v2 if arm == "canary" else v1)
        assert agent.store.get_interaction(extra["interaction_id"]).arm == arm
    set_canary(registry, None)
    agent.watcher.check()
    body = {"model": v2, "messages": [{"role": "user", "content": QUESTION}]}
    assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 404


@pytest.mark.slow
def test_vllm_serves_the_canary_adapter_by_name(settings, vllm):
    agent, follower = remote.remote_agent(settings)
    registry = Registry.open(settings)
    v1, v2, v3 = (remote.register(registry, f"sft-v{n}") for n in (1, 2, 3))
    registry.promote(v1, actor="test")
    assert follower.check() and vllm.calls == [remote.load_call(v1)]
    set_canary(registry, v2)
    assert follower.check() and vllm.calls[-1] == remote.load_call(v2) and set(vllm.adapters) == {v1, v2}
    assert agent.served_versions() == [v1, v2]
    for arm, version in (("canary", v2), ("active", v1)):
        conversation = conversations(v2, 50, arm)[0]
        answer = agent.ask(remote.QUESTION, conversation_id=conversation)
        assert (answer.model, vllm.chat_models[-1]) == (version, version)
        assert agent.store.get_interaction(answer.interaction_id).arm == arm

    calls = len(vllm.calls)
    set_canary(registry, None, promote=True)  # the canary's adapter is loaded already: no call at all
    assert follower.check() and len(vllm.calls) == calls and follower.routed == v2
    set_canary(registry, v3)
    assert follower.check() and vllm.calls[-1] == remote.load_call(v3)
    set_canary(registry, None)  # rolled back: its adapter goes; the active one and the one it replaced stay
    assert follower.check() and vllm.calls[-1] == ("unload", {"lora_name": v3}) and set(vllm.adapters) == {v1, v2}
    assert agent.ask(remote.QUESTION, conversation_id=conversations(v3, 50, "canary")[0]).model == v2
    assert vllm.violations == []
