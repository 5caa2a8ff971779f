"""Planted API keys and PII must not show up in the service's logs, its metrics or a dataset built from its log.

The service runs as its own process (``tests.agent.light_server``: the real app, JSON logging and uvicorn as
``affinage serve`` sets them up), so everything it writes to stdout and stderr is what is searched.
"""

from __future__ import annotations

import json
import signal
import sys

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from affinage.core.settings import load_settings
from affinage.factory import build_agent
from agent.service import auth
from affinage.core.store import Store
from synth_data.builder import synthesize
from tests.agent.conftest import bearer
from tests.agent.light_server import HashEmbeddings
from tests.agent.test_crash_soak import ServerProcess, free_port, workspace

QUESTION_PII = ("dana.planted@example.com", "+1 415 555 0199", "4111 1111 1111 1111")
CORRECTION_PII = ("refunds.planted@example.org", "+44 20 7946 0321")
PASTED_KEY = "afk_PlantedInAQuestion0123456789abcdef"
WRONG_KEY = "afk_PlantedWrongKey0123456789abcdefgh"


class Teacher(FakeListChatModel):
    def _call(self, messages, *args, **kwargs):
        if "Rewrite this customer question" in messages[-1].content:
            return "1. How long does the reset link last?\n2. When does a reset link expire?"
        return "The reset link expires after 2 hours."


@pytest.mark.multiprocess
def test_keys_and_pii_stay_out_of_logs_metrics_and_datasets(tmp_path, kb):
    home = tmp_path / "home"
    agent_key = workspace(home, kb, f"sqlite:///{home / 'affinage.db'}", real_models=False, tiny_model_dir=None)
    server = ServerProcess([sys.executable, "-m", "tests.agent.light_server", str(home), str(free_port())], home)
    question = (f"How long is the password reset link valid? I am {QUESTION_PII[0]}, call {QUESTION_PII[1]}, "
                f"card {QUESTION_PII[2]}, my key is {PASTED_KEY}")
    correction = f"The reset link expires after 2 hours; write to {CORRECTION_PII[0]} or call {CORRECTION_PII[1]}."
    store = Store(load_settings(home).db_url)
    admin_key = auth.create_key(store, "planted-admin", "admin")
    store.close()
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            agent = bearer(agent_key)
            operator_key = client.post("/api/admin/keys", headers=bearer(admin_key),
                                       json={"name": "new-operator", "role": "operator"}).json()["key"]
            ids = []
            for stream in (False, True):
                response = client.post("/v1/chat/completions", headers=agent, json={
                    "messages": [{"role": "user", "content": question}], "stream": stream})
                assert response.status_code == 200
                last = response.json() if not stream else json.loads(response.text.split("data: ")[-2])
                ids.append(last["affinage"]["interaction_id"])
            for interaction in ids:
                assert client.post("/api/feedback", headers=agent, json={
                    "interaction_id": interaction, "rating": "down", "correction": correction,
                    "comment": f"customer {QUESTION_PII[0]}"}).status_code == 201
            refused = [
                client.get("/v1/models", headers=bearer(WRONG_KEY)),  # a wrong key is refused, and not written down
                client.post("/v1/chat/completions", headers=agent, json={"messages": [
                    {"role": "user", "content": question * 200}]}),  # too long: the error must not echo it
                client.post("/v1/chat/completions", headers={**agent, "Content-Type": "application/json"},
                            content=f'{{"messages": [{{"role": "user", "content": "{question}"'),  # broken JSON
                client.post("/api/feedback", headers=agent, json={"interaction_id": QUESTION_PII[0], "rating": "up"}),
            ]
            assert [r.status_code for r in refused] == [401, 400, 400, 404]
            errors = " ".join(r.text for r in refused[1:3])
            metrics = client.get("/metrics", headers=bearer(operator_key)).text
            assert "affinage_feedback_total" in metrics
    finally:
        server.process.send_signal(signal.SIGTERM)  # a clean stop, so that shutdown logging is searched too
        server.process.wait(timeout=15)
        server.stop()
    logs = (home / "serve.log").read_text()
    assert '"caller": "soak"' in logs  # the log names the key, which proves requests were logged

    settings = load_settings(home, paraphrases=1)
    embeddings = HashEmbeddings()
    agent_for_synth = build_agent(settings, llm=FakeListChatModel(responses=["unused"]), embeddings=embeddings)
    manifest = synthesize(settings, agent_for_synth.store, agent_for_synth.retriever, Teacher(responses=["unused"]),
                          embeddings.encode, teacher_name="scripted", base_model="m", progress=False).manifest
    folder = settings.datasets_dir / manifest["id"]
    dataset = "".join(path.read_text() for path in folder.iterdir())
    assert manifest["counts"]["sft"] >= 1 and "[EMAIL]" in dataset and "[PHONE]" in dataset

    planted = [agent_key, admin_key, operator_key, WRONG_KEY, PASTED_KEY, *QUESTION_PII, *CORRECTION_PII]
    for place, text in (("logs", logs), ("metrics", metrics), ("error responses", errors), ("dataset", dataset)):
        for value in planted:
            for variant in {value, value.replace(" ", ""), value[-12:]}:
                assert variant not in text, f"{value!r} appears in the {place}"
