"""One key cannot take the model (issue 21): requests in flight per key, prompt tokens per minute per key, a deadline in
the queue, and generation that stops when the client goes away. The limiters are pure logic with an injected clock;
the app's behaviour is checked under uvicorn with the tiny model held or paced by a forward hook, never by speed."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from pydantic import ValidationError
from sqlalchemy import select

from affinage.core.settings import load_settings
from agent.service.errors import APIError
from agent.service.limits import KeyConcurrency, RateLimiter, TokenBudget, estimate_tokens, prompt_tokens
from affinage.core.tables import Interaction
from tests.agent.conftest import bearer
from tests.agent.service_harness import LiveServer, model_busy

QUESTION = "How long is the password reset link valid?"
GUARD_S = 60  # failure guard only: every wait below ends on an event or a state long before this


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(call) -> APIError:
    with pytest.raises(APIError) as caught:
        call()
    return caught.value


# --- the limiters, as pure logic ------------------------------------------------------------------------------

def test_token_budget_charges_prompt_tokens_and_names_the_refill_wait():
    clock = Clock()
    budget = TokenBudget(600, clock=clock)  # 10 tokens a second
    budget.charge("a", 500)  # 100 left
    error = refusal(lambda: budget.charge("a", 300))
    assert (error.status, error.code, error.headers["Retry-After"]) == (429, "prompt_tokens_exceeded", "20")  # 200/10
    assert "300 prompt tokens" in error.message and "600 prompt tokens per minute has 100 left" in error.message
    clock.now += 5  # 150 left: 150 more needed
    assert refusal(lambda: budget.charge("a", 300)).headers["Retry-After"] == "15"
    clock.now += 15
    budget.charge("a", 300)  # exactly enough
    budget.charge("b", 600)  # every key has its own bucket


def test_token_budget_lets_an_oversized_prompt_through_a_full_bucket_into_debt():
    clock = Clock()
    budget = TokenBudget(600, clock=clock)
    budget.charge("a", 1000)  # bigger than the bucket: admitted when full, 400 in debt
    assert refusal(lambda: budget.charge("a", 1)).headers["Retry-After"] == "41"  # (1 + 400) / 10 = 40.1
    clock.now += 100  # refilled to the brim, not beyond
    budget.charge("a", 600)
    assert refusal(lambda: budget.charge("a", 1)).headers["Retry-After"] == "1"


def test_token_budget_refund_gives_back_a_charge_up_to_the_brim():
    clock = Clock()
    budget = TokenBudget(600, clock=clock)
    budget.charge("a", 500)
    budget.refund("a", 500)
    budget.refund("a", 500)  # capped at 600
    budget.charge("a", 600)
    assert refusal(lambda: budget.charge("a", 10)).headers["Retry-After"] == "1"


def test_key_concurrency_caps_each_key_and_frees_on_leave():
    limit = KeyConcurrency(2)
    limit.enter("a")
    limit.enter("a")
    error = refusal(lambda: limit.enter("a"))
    assert (error.status, error.code, error.headers["Retry-After"]) == (429, "too_many_concurrent_requests", "2")
    limit.enter("b")  # other keys are unaffected
    limit.leave("a")
    limit.enter("a")
    for key in ("a", "a", "b"):
        limit.leave(key)
    assert limit.in_flight("a") == limit.in_flight("b") == 0 and limit._counts == {}


def test_request_rate_limiter_retry_after_by_hand():
    clock = Clock()
    limiter = RateLimiter(2, clock=clock)  # one request every 30 s
    limiter.check("a")
    limiter.check("a")
    assert refusal(lambda: limiter.check("a")).headers["Retry-After"] == "30"
    clock.now += 20
    assert refusal(lambda: limiter.check("a")).headers["Retry-After"] == "10"


def test_prompt_tokens_uses_the_models_count_else_four_characters_a_token():
    messages = [HumanMessage("abcd"), AIMessage("abcde"), HumanMessage("")]
    assert estimate_tokens("abcd", "abcde", "") == 1 + 2 + 0
    assert prompt_tokens(messages) == 3
    assert prompt_tokens(messages, count=lambda m: 7 * len(m)) == 21


@pytest.mark.parametrize("field, value", [("max_in_flight_per_key", 0), ("prompt_tokens_per_minute", 10),
                                          ("queue_timeout_seconds", 0)])
def test_bad_limit_settings_are_refused_by_name(tmp_path, field, value):
    with pytest.raises(ValidationError, match=field):
        load_settings(tmp_path, **{field: value})


# --- through the app ---------------------------------------------------------------------------------------------

def ask(url: str, key: str, content: str = QUESTION, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers=bearer(key), timeout=GUARD_S,
                      json={"messages": [{"role": "user", "content": content}], **extra})


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def rejected(app, reason: str) -> float:
    return app.state.metrics.registry.get_sample_value("affinage_rejected_total", {"reason": reason}) or 0.0


def test_a_third_request_in_flight_from_one_key_is_refused_while_other_keys_get_in(service):
    app, keys = service()  # defaults: two requests in flight per key
    agent, queue = app.state.agent, app.state.queue
    results: dict[str, httpx.Response] = {}
    with LiveServer(app) as server:
        with model_busy(agent.llm):  # the model is busy: admitted requests wait for it
            threads = [threading.Thread(target=lambda n=n: results.update({n: ask(server.url, keys["agent"])}))
                       for n in ("first", "second")]
            for thread in threads:
                thread.start()
            wait_for(lambda: queue.in_flight == 2, "two requests admitted")
            third = ask(server.url, keys["agent"])
            assert third.status_code == 429 and third.headers["Retry-After"] == "2"
            assert third.json()["error"] == {"message": third.json()["error"]["message"], "type": "rate_limit_error",
                                             "param": None, "code": "too_many_concurrent_requests"}
            other = threading.Thread(target=lambda: results.update(other=ask(server.url, keys["operator"])))
            other.start()
            wait_for(lambda: queue.in_flight == 3, "another key's request admitted")
        for thread in [*threads, other]:
            thread.join(timeout=GUARD_S)
        assert {name: r.status_code for name, r in results.items()} == {"first": 200, "second": 200, "other": 200}
        assert ask(server.url, keys["agent"]).status_code == 200  # the key's slots were given back
    assert rejected(app, "in_flight") == 1 and queue.in_flight == 0


@pytest.mark.slow
def test_a_burst_of_big_prompts_from_one_key_is_refused_by_the_token_budget(service):
    app, keys = service()  # the default budget: twelve 7,000-character prompts must not all pass
    big = "Please read the customer's message below and tell me what to do about it. " * 93  # 6,975 characters
    with LiveServer(app) as server:
        codes = []
        for _ in range(12):
            response = ask(server.url, keys["agent"], big)
            codes.append(response.status_code)
            if response.status_code == 429:
                break
        assert codes[:5] == [200] * 5 and codes[-1] == 429, codes
        assert response.json()["error"]["code"] == "prompt_tokens_exceeded"
        assert 1 <= int(response.headers["Retry-After"]) <= 60
        assert ask(server.url, keys["operator"], big).status_code == 200  # another key has its own budget
        assert ask(server.url, keys["agent"]).status_code == 200  # a short question still fits what is left
    assert rejected(app, "prompt_tokens") == 1


@pytest.mark.slow
@pytest.mark.parametrize("batched", [False, True], ids=["one-at-a-time", "batched"])
def test_a_request_queued_past_the_deadline_gets_503_frees_its_slot_and_costs_no_tokens(service, tiny_settings,
                                                                                        batched):
    from transformers import AutoTokenizer

    question = " ".join([QUESTION] * 5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_settings.chat_model)  # the count the service charges
    cost = len(tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"])
    assert cost > 40  # 2.5 prompts is over the smallest budget the settings accept
    # Room for two and a half such prompts: the third would be refused if the two that timed out had cost tokens
    # (refilling half a prompt takes 12 s; the test takes about one).
    app, keys = service(queue_timeout_seconds=0.5, max_in_flight_per_key=1, prompt_tokens_per_minute=cost * 5 // 2,
                        batched_generation=batched)
    agent, queue = app.state.agent, app.state.queue
    with LiveServer(app) as server:
        with model_busy(agent.llm):  # others' answers hold the model for longer than the deadline
            for _ in range(2):  # the second one is admitted too: the first one's key slot was given back
                response = ask(server.url, keys["agent"], question)
                assert response.status_code == 503 and response.headers["Retry-After"] == "2"
                assert response.json()["error"]["code"] == "queue_timeout"
                assert "waited 0.5 s for the model" in response.json()["error"]["message"]
                assert queue.in_flight == 0
        assert ask(server.url, keys["agent"], question).status_code == 200
    assert rejected(app, "queue_timeout") == 2 and rejected(app, "prompt_tokens") == 0
    with agent.store.session() as session:
        assert len(session.scalars(select(Interaction)).all()) == 1


class Pacer:
    """A forward hook on the model: counts forward passes (one per generated token), forbids the end-of-text token so
    only a stop can end the answer, holds generation at the first pass after ``hold`` is set until ``go`` is, and
    paces it, so the whole answer would take half a minute unless stopped."""

    def __init__(self, llm):
        self.calls = 0
        self.hold, self.reached, self.go = threading.Event(), threading.Event(), threading.Event()
        self.eos = llm._tokenizer.eos_token_id
        self.handle = llm._model.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        output.logits[..., self.eos] = float("-inf")
        if self.hold.is_set() and not self.reached.is_set():
            self.held_at = self.calls
            self.reached.set()
            self.go.wait(timeout=GUARD_S)
        time.sleep(0.01)
        return output


def raw_request(port: int, key: str, body: dict) -> socket.socket:
    """A request from a client we can hang up on at a moment of our choosing."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=GUARD_S)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


BUDGET = 3000  # tokens a request asks for: far more than a test waits for


def paced(service, **overrides):
    """A service whose model answers up to BUDGET tokens, one token at a time under the test's control."""
    app, keys = service(max_new_tokens=BUDGET, max_tokens_limit=BUDGET, max_answer_sentences=0,
                        kv_cache_tokens=2 * BUDGET, **overrides)
    return app, keys, Pacer(app.state.agent.llm)


def settled(pacer) -> int:
    """The forward passes once generation has stopped (a cancelled answer may still take the step in progress)."""
    last = -1
    while pacer.calls != last:
        last = pacer.calls
        time.sleep(0.3)
    return last


@pytest.mark.slow
@pytest.mark.parametrize("batched", [False, True], ids=["one-at-a-time", "batched"])
@pytest.mark.parametrize("stream", [False, True])
def test_generation_stops_when_the_client_goes_away_and_nothing_is_logged(service, stream, batched):
    app, keys, pacer = paced(service, batched_generation=batched)
    agent, queue = app.state.agent, app.state.queue
    with LiveServer(app) as server:
        sock = raw_request(server.port, keys["agent"], {"messages": [{"role": "user", "content": QUESTION}],
                                                        "max_tokens": BUDGET, "stream": stream})
        if stream:  # hang up once the answer is streaming in
            received = b""
            while b'"content": "' not in received.split(b"data: ", 2)[-1]:
                received += sock.recv(65536)
        pacer.hold.set()
        assert pacer.reached.wait(timeout=GUARD_S), "generation never started"
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        wait_for(lambda: not server.server.server_state.connections, "the server to see the client go")
        pacer.go.set()  # generation resumes: the service must now stop it
        wait_for(lambda: queue.in_flight == 0, "the request's slot to be given back")
        stopped_at = settled(pacer)
        assert ask(server.url, keys["agent"], max_tokens=2).status_code == 200  # the model and the key are free
    pacer.handle.remove()
    assert stopped_at < pacer.held_at + BUDGET // 2, stopped_at  # far short of the answer it was asked for
    assert pacer.calls == stopped_at + 2  # then nothing but the next request's own two tokens
    with agent.store.session() as session:
        logged = session.scalars(select(Interaction)).all()
    assert [row.completion_tokens for row in logged] == [2]  # the abandoned answer is not in the log


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_while_queued_frees_its_slot_and_is_not_answered(service, stream):
    app, keys, pacer = paced(service)
    agent, queue = app.state.agent, app.state.queue
    with LiveServer(app) as server:
        with model_busy(agent.llm):  # others' answers hold the model
            sock = raw_request(server.port, keys["agent"], {"messages": [{"role": "user", "content": QUESTION}],
                                                            "max_tokens": BUDGET, "stream": stream})
            wait_for(lambda: queue.in_flight == 1, "the request to be queued")
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            wait_for(lambda: not server.server.server_state.connections, "the server to see the client go")
        # the abandoned request gets the model and must let it go at once
        wait_for(lambda: queue.in_flight == 0, "the request's slot to be given back")
        stopped_at = settled(pacer)
        assert ask(server.url, keys["agent"], max_tokens=2).status_code == 200
    pacer.handle.remove()
    assert stopped_at < BUDGET // 2 and pacer.calls == stopped_at + 2, stopped_at
    with agent.store.session() as session:
        assert [row.completion_tokens for row in session.scalars(select(Interaction))] == [2]
