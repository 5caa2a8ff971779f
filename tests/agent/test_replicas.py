"""Two real `affinage serve` processes, one database and one workspace: a promotion made through one replica is
served by the other, and a rollback made through the other reaches the first, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import openai
import pytest

from affinage.core.settings import load_settings
from agent.service import auth
from affinage.core.store import Store
from retrieval.ingest import ingest
from tests.agent.test_crash_soak import free_port
from tuning.registry import Registry

pytestmark = pytest.mark.multiprocess

REPO = Path(__file__).resolve().parents[2]
START_LIMIT_S = 240.0  # two processes loading torch, the embedder and the model at once on a shared machine
FOLLOW_LIMIT_S = 60.0


def register_adapter(registry: Registry, base: Path, version_id: str) -> None:
    """A real LoRA adapter on the tiny model (untrained: the test is about which version serves, not what it says)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    staged = registry.staging()
    model.save_pretrained(staged, safe_serialization=True)
    registry.add(staged, {"id": version_id, "method": "sft", "kind": "lora", "datasets": [], "metrics": {},
                          "created_at": datetime.now(timezone.utc).isoformat()})
    registry.record_gate(version_id, True, {})


class Replica:
    """One `affinage serve` process on its own port; its output goes to ``log``."""

    def __init__(self, home: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "affinage.cli", "--home", str(home), "serve", "--port", str(self.port)],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.logfile = log

    def model(self) -> str | None:
        """The version /healthz says is serving, or None while the process does not answer yet."""
        assert self.process.poll() is None, self.logfile.read_text()[-3000:]
        try:
            return httpx.get(self.url + "/healthz", timeout=2).json()["model"]
        except httpx.TransportError:
            return None

    def wait_for(self, model: str, limit_s: float) -> None:
        deadline = time.monotonic() + limit_s
        while (seen := self.model()) != model:
            assert time.monotonic() < deadline, f"{self.url} serves {seen}, not {model}, after {limit_s:.0f} s"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def test_replicas_follow_promotions_and_rollbacks_made_through_each_other(tmp_path, db_url, kb, embeddings,
                                                                          tiny_model_dir):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(f'chat_model = "{tiny_model_dir}"\ndatabase_url = "{db_url}"\n'
                                      "max_new_tokens = 4\nregistry_poll_seconds = 0.2\n")
    settings = load_settings(home)
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    store = Store(settings.db_url)
    operator, agent = auth.create_key(store, "op", "operator"), auth.create_key(store, "agent", "agent")
    register_adapter(Registry.open(settings, store), tiny_model_dir, "sft-shared")
    base, promoted = tiny_model_dir.name, f"{tiny_model_dir.name}@sft-shared"

    replicas = [Replica(home, tmp_path / f"replica-{n}.log") for n in (1, 2)]
    try:
        starting = [threading.Thread(target=r.wait_for, args=(base, START_LIMIT_S)) for r in replicas]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join()
        for replica in replicas:
            assert replica.model() == base, "a replica did not start (see the assertion above)"
        first, second = replicas
        headers = {"Authorization": f"Bearer {operator}"}

        response = httpx.post(f"{first.url}/api/operator/promote/sft-shared", headers=headers, timeout=60)
        assert response.status_code == 200 and response.json()["state"] == "active", response.text
        second.wait_for(promoted, FOLLOW_LIMIT_S)
        first.wait_for(promoted, FOLLOW_LIMIT_S)
        client = openai.OpenAI(base_url=f"{second.url}/v1", api_key=agent, max_retries=0, timeout=60)
        answer = client.chat.completions.create(model="default",
                                                messages=[{"role": "user", "content": "How long is the reset link valid?"}])
        assert answer.model == promoted and answer.model_extra["affinage"]["model_version"] == promoted

        again = httpx.post(f"{second.url}/api/operator/promote/sft-shared", headers=headers, timeout=60)
        assert again.status_code == 409 and "already active" in again.json()["error"]["message"]
        response = httpx.post(f"{second.url}/api/operator/rollback", headers=headers, timeout=60)
        assert response.status_code == 200 and response.json() == {"active": "base"}
        first.wait_for(base, FOLLOW_LIMIT_S)
        second.wait_for(base, FOLLOW_LIMIT_S)

        audit = httpx.get(f"{first.url}/api/operator/audit", headers=headers, timeout=60).json()
        moves = [(e["action"], e["subject"], e["actor"]) for e in reversed(audit) if e["action"] in ("promoted",
                                                                                                    "rolled_back")]
        assert moves == [("promoted", "sft-shared", "op"), ("rolled_back", "base", "op")]
    finally:
        for replica in replicas:
            replica.stop()
        store.close()
