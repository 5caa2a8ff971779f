"""The HTTP service: OpenAI SDK and LangChain clients, feedback, roles, limits, errors, observability."""

import json
import logging
import threading
import time

import openai
import pytest
from langchain_openai import ChatOpenAI
from sqlalchemy import select

from agent.service.observability import JsonFormatter
from affinage.core.tables import Feedback, Interaction
from tests.agent.conftest import bearer
from tests.agent.service_harness import LiveServer, model_busy

QUESTION = "How long is the password reset link valid?"


def chat(client, key, **body):
    payload = {"model": "default", "messages": [{"role": "user", "content": QUESTION}], **body}
    return client.post("/v1/chat/completions", json=payload, headers=bearer(key))


def sse_payloads(text: str) -> list:
    lines = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# --- the official clients ---------------------------------------------------------------------

def test_openai_sdk_plain_and_streaming(service):
    app, keys = service()
    with LiveServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["agent"])
        models = [m.id for m in client.models.list()]
        assert models[0] == "default" and app.state.agent.model_version in models

        reply = client.chat.completions.create(model="default", messages=[{"role": "user", "content": QUESTION}])
        assert reply.choices[0].message.role == "assistant"
        assert reply.usage.prompt_tokens > 50 and reply.usage.completion_tokens >= 1
        extra = reply.model_extra["affinage"]
        assert extra["citations"][0]["source"] == "account/passwords.md#reset-your-password"
        assert extra["model_version"] == app.state.agent.model_version
        assert app.state.agent.store.get_interaction(extra["interaction_id"]).answer == reply.choices[0].message.content

        chunks = list(client.chat.completions.create(
            model=app.state.agent.model_version, messages=[{"role": "user", "content": QUESTION}], stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        last = chunks[-1]
        assert last.usage.completion_tokens >= 1
        assert last.choices[0].finish_reason == reply.choices[0].finish_reason  # greedy: the same answer both ways
        assert last.model_extra["affinage"]["citations"][0]["source"] == "account/passwords.md#reset-your-password"
        row = app.state.agent.store.get_interaction(last.model_extra["affinage"]["interaction_id"])
        assert row.answer == text.strip() and row.channel == "api" and row.user == "test-agent"

        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": QUESTION}])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="afk_wrong").models.list()


def test_langchain_chat_openai_unchanged(service):
    app, keys = service()
    with LiveServer(app) as server:
        llm = ChatOpenAI(base_url=f"{server.url}/v1", api_key=keys["agent"], model="default", max_tokens=5)
        message = llm.invoke(QUESTION)
        assert isinstance(message.content, str) and message.usage_metadata["output_tokens"] >= 1
        pieces = list(llm.stream(QUESTION))
        streamed = sum(pieces[1:], pieces[0])
        assert streamed.content == message.content  # greedy decoding: the same answer either way
        assert streamed.usage_metadata["output_tokens"] == message.usage_metadata["output_tokens"]


# --- feedback -----------------------------------------------------------------------------------

def test_feedback_is_stored_against_the_interaction(client_and_keys):
    client, keys = client_and_keys
    interaction_id = chat(client, keys["agent"]).json()["affinage"]["interaction_id"]
    response = client.post("/api/feedback", headers=bearer(keys["agent"]), json={
        "interaction_id": interaction_id, "rating": "down", "correction": "The link expires after 2 hours.",
        "comment": "too vague"})
    assert response.status_code == 201
    store = client.app.state.agent.store
    with store.session() as session:
        row = session.scalars(select(Feedback)).one()
    assert (row.interaction_id, row.rating, row.correction, row.comment, row.user) == (
        interaction_id, "down", "The link expires after 2 hours.", "too vague", "test-agent")
    kinds = [s["kind"] for s in store.get_interaction(interaction_id).signals]
    assert kinds[:2] == ["thumbs_down", "correction_submitted"]


@pytest.mark.parametrize("body, status, code", [
    ({"interaction_id": "nope", "rating": "up"}, 404, "interaction_not_found"),
    ({"rating": "down", "correction": "   "}, 400, "empty_correction"),
    ({"rating": "down", "correction": "x" * 9000}, 400, "correction_too_long"),
    ({"rating": "sideways"}, 400, "invalid_request"),
])
def test_bad_feedback_is_refused_and_nothing_stored(client_and_keys, body, status, code):
    client, keys = client_and_keys
    interaction_id = chat(client, keys["agent"]).json()["affinage"]["interaction_id"]
    response = client.post("/api/feedback", headers=bearer(keys["agent"]), json={"interaction_id": interaction_id, **body})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    with client.app.state.agent.store.session() as session:
        assert session.scalars(select(Feedback)).all() == []


# --- roles and keys ------------------------------------------------------------------------------

ROUTES = [("GET", "/v1/models", "agent"), ("POST", "/v1/chat/completions", "agent"), ("POST", "/api/feedback", "agent"),
          ("GET", "/metrics", "operator"), ("GET", "/api/operator/corrections", "operator"),
          ("POST", "/api/operator/corrections/x/approve", "operator"), ("GET", "/api/admin/keys", "admin"), ("POST", "/api/admin/keys", "admin"),
          ("DELETE", "/api/admin/keys/someone", "admin"), ("GET", "/api/operator/models", "operator"),
          ("GET", "/api/operator/models/x/report", "operator"), ("POST", "/api/operator/models/x/approve", "operator"),
          ("POST", "/api/operator/models/x/reject", "operator"), ("POST", "/api/operator/promote/x", "operator"),
          ("POST", "/api/operator/rollback", "operator"), ("GET", "/api/operator/datasets", "operator"),
          ("GET", "/api/operator/topics", "operator"), ("GET", "/api/operator/audit", "operator"),
          ("GET", "/api/operator/guard-events", "operator")]


@pytest.mark.parametrize("method, path, role", ROUTES)
def test_every_route_needs_a_key_and_the_right_role(client_and_keys, method, path, role):
    client, keys = client_and_keys
    response = client.request(method, path)
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
    response = client.request(method, path, headers=bearer("afk_not-a-real-key"))
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    weaker = {"agent": None, "operator": "agent", "admin": "operator"}[role]
    if weaker:
        response = client.request(method, path, headers=bearer(keys[weaker]))
        assert response.status_code == 403 and response.json()["error"]["type"] == "permission_error"


def test_admin_manages_keys_and_revoked_keys_stop_working(client_and_keys):
    client, keys = client_and_keys
    created = client.post("/api/admin/keys", headers=bearer(keys["admin"]), json={"name": "bob", "role": "agent"})
    assert created.status_code == 201
    new_key = created.json()["key"]
    assert client.get("/v1/models", headers=bearer(new_key)).status_code == 200
    listed = client.get("/api/admin/keys", headers=bearer(keys["admin"])).json()
    assert "bob" in [k["name"] for k in listed] and new_key not in json.dumps(listed)
    assert client.post("/api/admin/keys", headers=bearer(keys["admin"]), json={"name": "bob", "role": "agent"}).status_code == 409
    assert client.delete("/api/admin/keys/bob", headers=bearer(keys["admin"])).status_code == 204
    assert client.get("/v1/models", headers=bearer(new_key)).status_code == 401


def test_keys_are_stored_hashed_and_never_logged(client_and_keys, caplog):
    client, keys = client_and_keys
    caplog.set_level(logging.INFO, logger="affinage")
    chat(client, keys["agent"])
    client.post("/api/admin/keys", headers=bearer(keys["admin"]), json={"name": "carol", "role": "operator"})
    with client.app.state.agent.store.engine.connect() as connection:
        dump = "\n".join("\n".join(map(str, row)) for row in connection.exec_driver_sql("SELECT * FROM api_keys"))
    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    for key in keys.values():
        assert key not in dump and key not in logged
    assert '"caller": "test-agent"' in logged  # the key's name is what identifies the caller


# --- limits ----------------------------------------------------------------------------------------

def test_rate_limit_answers_429_with_retry_after(service):
    app, keys = service(rate_limit_per_minute=2)
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        assert chat(client, keys["agent"]).status_code == 200
        assert chat(client, keys["agent"]).status_code == 200
        response = chat(client, keys["agent"])
        assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"
        assert chat(client, keys["operator"]).status_code == 200  # limits are per key


@pytest.mark.parametrize("body, param, fragment", [
    ({"max_tokens": 5000}, "max_tokens", "max_tokens is 5000; the limit is 1024"),
    ({"messages": [{"role": "user", "content": "x" * 9000}]}, "messages.0.content", "9000 characters; the limit is 8000"),
    ({"messages": [{"role": "user", "content": "  "}]}, "messages", "empty"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", "last message must come from the user"),
    ({"messages": []}, "messages", "at least 1"),
    ({"model": "nope"}, "model", "does not exist"),
    ({"temperature": "hot"}, "temperature", "valid number"),
])
def test_bad_chat_requests_get_openai_shaped_4xx(client_and_keys, body, param, fragment):
    client, keys = client_and_keys
    response = chat(client, keys["agent"], **body)
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and fragment in error["message"]


def test_context_overflow_gives_both_numbers(service):
    app, keys = service(max_message_chars=100_000)
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        words = " ".join([QUESTION] * 800)  # relevant, so retrieval is confident and the model is asked
        for stream in (False, True):
            response = chat(client, keys["agent"], messages=[{"role": "user", "content": words}], stream=stream)
            assert response.status_code == 400
            message = response.json()["error"]["message"]
            assert "tokens" in message and "4096" in message
            assert response.json()["error"]["code"] == "context_length_exceeded"
    with app.state.agent.store.session() as session:
        assert session.scalars(select(Interaction)).all() == []


@pytest.mark.parametrize("content, headers", [
    (b"{not json", {"Content-Type": "application/json"}),
    (b'{"messages": "hi"}', {"Content-Type": "application/json"}),
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', {"Content-Type": "application/json"}),
    (b"x" * 1_100_000, {"Content-Type": "application/json"}),
])
def test_malformed_bodies_are_4xx_and_service_keeps_serving(client_and_keys, content, headers):
    client, keys = client_and_keys
    response = client.post("/v1/chat/completions", content=content, headers={**headers, **bearer(keys["agent"])})
    assert 400 <= response.status_code < 500 and "error" in response.json()
    assert chat(client, keys["agent"]).status_code == 200


@pytest.mark.parametrize("batched", [False, True], ids=["one-at-a-time", "batched"])
def test_overload_is_refused_at_once_not_queued_forever(service, batched):
    app, keys = service(max_queue=0, batched_generation=batched, max_batch_size=1)
    agent = app.state.agent
    with LiveServer(app) as server:
        import httpx

        with model_busy(agent.llm):  # the model is busy with someone else's answer
            first = {}
            thread = threading.Thread(target=lambda: first.update(r=httpx.post(
                f"{server.url}/v1/chat/completions", headers=bearer(keys["agent"]), timeout=30,
                json={"messages": [{"role": "user", "content": QUESTION}]})))
            thread.start()
            deadline = time.monotonic() + 10
            while app.state.queue.in_flight == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            begun = time.monotonic()
            second = httpx.post(f"{server.url}/v1/chat/completions", headers=bearer(keys["operator"]), timeout=30,
                                json={"messages": [{"role": "user", "content": QUESTION}]})
            assert second.status_code == 503 and second.headers["Retry-After"]
            assert time.monotonic() - begun < 5
        thread.join(timeout=30)
        assert first["r"].status_code == 200


# --- observability ----------------------------------------------------------------------------------------

def test_health_and_metrics(client_and_keys):
    client, keys = client_and_keys
    assert client.get("/healthz").json()["status"] == "ok"
    response = chat(client, keys["agent"], stream=True)
    payloads = sse_payloads(response.text)
    interaction_id = payloads[-1]["affinage"]["interaction_id"]
    client.post("/api/feedback", headers=bearer(keys["agent"]), json={"interaction_id": interaction_id, "rating": "up"})
    text = client.get("/metrics", headers=bearer(keys["operator"])).text
    assert 'affinage_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0' in text
    assert "affinage_time_to_first_token_seconds_count 1.0" in text
    assert 'affinage_feedback_total{has_correction="false",rating="up"} 1.0' in text
    assert "affinage_queue_depth 0.0" in text


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_cut_by_max_tokens_finishes_with_length(client_and_keys, stream):
    client, keys = client_and_keys
    response = chat(client, keys["agent"], max_tokens=2, stream=stream)
    assert response.status_code == 200
    last = sse_payloads(response.text)[-1] if stream else response.json()
    assert last["usage"]["completion_tokens"] == 2 and last["choices"][0]["finish_reason"] == "length"


def test_the_request_temperature_reaches_the_model(client_and_keys, monkeypatch):
    client, keys = client_and_keys
    model_class = type(client.app.state.agent.llm)
    seen, real = [], model_class._sampling  # the overrides of one request, whichever way it is generated
    monkeypatch.setattr(model_class, "_sampling", lambda self, overrides: seen.append(overrides) or real(self, overrides))
    assert chat(client, keys["agent"], temperature=0.7).status_code == 200
    assert seen and seen[-1]["temperature"] == 0.7
    assert chat(client, keys["agent"]).status_code == 200
    assert "temperature" not in seen[-1]  # unset: the configured default (greedy)


def test_stream_chunks_follow_openai_format(client_and_keys):
    client, keys = client_and_keys
    response = chat(client, keys["agent"], stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.text)
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(p["object"] == "chat.completion.chunk" and p["id"] == payloads[0]["id"] for p in payloads)
    assert [p for p in payloads if "affinage" in p] == [payloads[-1]]
    assert payloads[-1]["usage"]["total_tokens"] == payloads[-1]["usage"]["prompt_tokens"] + payloads[-1]["usage"]["completion_tokens"]


def test_failure_mid_stream_is_reported_in_the_stream(tiny_settings, kb, embeddings):
    from fastapi.testclient import TestClient
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk

    from affinage.factory import build_agent
    from agent.service import auth
    from affinage.service import create_app
    from retrieval.ingest import ingest

    class BreaksAfterOneToken(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "broken"

        def _generate(self, *args, **kwargs):
            raise RuntimeError("GPU fell off")

        def _stream(self, *args, **kwargs):
            # a whole word: the link guard holds back a word still being written (it could become a domain)
            yield ChatGenerationChunk(message=AIMessageChunk(content="Annual "))
            raise RuntimeError("GPU fell off")

    ingest(tiny_settings.index_dir, [kb], embeddings, tiny_settings.chunk_chars, tiny_settings.chunk_overlap_chars)
    agent = build_agent(tiny_settings, llm=BreaksAfterOneToken(), embeddings=embeddings)
    app = create_app(tiny_settings, agent=agent)
    key = auth.create_key(agent.store, "a", "agent")
    with TestClient(app) as client:
        response = chat(client, key, stream=True)
        events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line.startswith("data: ")]
        assert json.loads(events[1])["choices"][0]["delta"]["content"] == "Annual "
        assert json.loads(events[-1])["error"]["code"] == "generation_failed"
        assert "[DONE]" not in events
        assert app.state.queue.in_flight == 0  # the slot is given back
        assert client.get("/healthz").status_code == 200


def test_pages_and_api_send_security_headers(client_and_keys):
    client, _ = client_and_keys
    for path in ("/", "/static/chat.js", "/healthz"):
        response = client.get(path)
        assert response.status_code == 200
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
