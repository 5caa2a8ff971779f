"""16 streaming clients at once against the real app under uvicorn (scripted model, default queue): every stream that
starts ends properly, overload is a 503 with Retry-After, nothing is a 5xx. bench/load_soak.py runs the same for 60 s
against the default model."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from affinage.core.prompts import QUOTE_LEAD, generated_part
from affinage.core.settings import load_settings
from affinage.factory import build_agent
from agent.service import auth
from affinage.service import create_app
from retrieval.ingest import ingest
from tests.agent.light_server import ANSWER, HashEmbeddings
from tests.agent.service_harness import LiveServer

CLIENTS, SECONDS = 16, 4.0


@pytest.mark.slow
def test_sixteen_streaming_clients_get_whole_answers_or_a_prompt_refusal(home, kb):
    settings = load_settings(home)  # the default max_queue (8) and rate limit (60 a minute per key)
    embeddings = HashEmbeddings()
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    agent = build_agent(settings, llm=FakeListChatModel(responses=[ANSWER], sleep=0.001), embeddings=embeddings)
    keys = [auth.create_key(agent.store, f"client-{i}", "agent") for i in range(CLIENTS)]
    outcomes: Counter = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def client(url: str, key: str, deadline: float) -> None:
        body = {"stream": True, "messages": [{"role": "user", "content": "How long is the password reset link valid?"}]}
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < deadline:
                with http.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as response:
                    if response.status_code in (429, 503):
                        response.read()
                        outcome = f"refused {response.status_code}"
                        retry = response.headers.get("Retry-After")
                        if not retry or response.json()["error"]["code"] not in ("rate_limit_exceeded",
                                                                                 "server_overloaded"):
                            problems.append(f"refusal without Retry-After or code: {response.text[:200]}")
                    elif response.status_code == 200:
                        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
                        last = json.loads(events[-2]) if events[-1:] == ["[DONE]"] else {}
                        text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
                        whole = last.get("choices", [{}])[0].get("finish_reason") == "stop" and "affinage" in last
                        outcome = "complete" if whole and generated_part(text) == ANSWER and QUOTE_LEAD in text else "truncated"
                    else:
                        outcome = f"status {response.status_code}"
                with lock:
                    outcomes[outcome] += 1
                if outcome.startswith("refused"):
                    time.sleep(0.2)  # sooner than Retry-After asks, to keep the queue full

    app = create_app(settings, agent=agent)
    with LiveServer(app) as server:
        deadline = time.monotonic() + SECONDS
        threads = [threading.Thread(target=client, args=(server.url + "/v1/chat/completions", key, deadline))
                   for key in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert app.state.queue.in_flight == 0  # every slot was given back

    assert problems == []
    assert set(outcomes) <= {"complete", "refused 503", "refused 429"}, outcomes
    assert outcomes["complete"] >= CLIENTS and outcomes["refused 503"] >= 1, outcomes
