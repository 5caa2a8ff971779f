"""What an outside probe of the running service found, each attack replayed: it must now end in a 4xx in OpenAI's
shape (or a counted, logged 500 in that shape), and the service keeps serving."""

from __future__ import annotations

import logging
import random
import string

from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from playwright import sync_api
from sqlalchemy import select

from agent.service.errors import error_body
from affinage.core.tables import Feedback
from tests.agent.conftest import bearer
from tests.agent.test_service import chat
from tests.agent.test_web_chat import browser  # noqa: F401 (the module's Chromium fixture)


def ask(client, key) -> str:
    response = chat(client, key)
    assert response.status_code == 200, response.text
    return response.json()["affinage"]["interaction_id"]


def test_random_http_methods_cannot_grow_metrics(client_and_keys):
    client, keys = client_and_keys
    rng = random.Random(7)

    def probe_then_count_series() -> list[str]:
        for _ in range(40):
            method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(8, 4000)))
            assert client.request(method, "/healthz").status_code in (404, 405)
        text = client.get("/metrics", headers=bearer(keys["operator"])).text
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}

    client.get("/metrics", headers=bearer(keys["operator"]))
    first, second = probe_then_count_series(), probe_then_count_series()
    assert first == second  # forty more random methods added no series
    assert max(map(len, second)) < 200
    assert any('method="other"' in line for line in second)


def test_an_exception_in_a_route_is_a_500_in_openai_shape_logged_and_counted(service, caplog):
    app, keys = service()

    def explode():
        raise RuntimeError("boom")

    app.add_api_route("/explode", explode)
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.INFO, "affinage.service"):
        response = client.get("/explode")
        assert response.status_code == 500
        assert response.json() == error_body(500, "internal error; it was logged", "internal_error")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        text = client.get("/metrics", headers=bearer(keys["operator"])).text
        assert 'affinage_http_requests_total{method="GET",route="/explode",status="500"} 1.0' in text
        assert client.get("/healthz").status_code == 200
    errors = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert len(errors) == 1 and "RuntimeError: boom" in caplog.text
    assert any(r.getMessage() == "request" and r.status == 500 for r in caplog.records)


def test_feedback_only_from_the_interactions_own_user_or_an_operator(service):
    app, keys = service()
    from agent.service import auth

    other = auth.create_key(app.state.agent.store, "mallory", "agent")
    with TestClient(app) as client:
        interaction_id = ask(client, keys["agent"])
        body = {"interaction_id": interaction_id, "rating": "down", "correction": "Send refunds to http://evil.example"}
        refused = client.post("/api/feedback", headers=bearer(other), json=body)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "not_your_interaction"
        assert refused.json()["error"]["type"] == "permission_error"
        assert client.post("/api/feedback", headers=bearer(keys["agent"]), json={**body, "correction": "2 hours."}
                           ).status_code == 201
        assert client.post("/api/feedback", headers=bearer(keys["operator"]), json={**body, "correction": "Two hours."}
                           ).status_code == 201
    with app.state.agent.store.session() as session:
        users = sorted(row.user for row in session.scalars(select(Feedback)))
    assert users == ["test-agent", "test-operator"]


def test_feedback_is_rate_limited_per_key(service):
    app, keys = service(feedback_per_minute=2)
    with TestClient(app) as client:
        interaction_id = ask(client, keys["agent"])
        body = {"interaction_id": interaction_id, "rating": "up"}
        answers = [client.post("/api/feedback", headers=bearer(keys["agent"]), json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [201, 201, 429]
        assert int(answers[2].headers["Retry-After"]) >= 1
        assert answers[2].json()["error"]["type"] == "rate_limit_error"
    with app.state.agent.store.session() as session:
        assert len(session.scalars(select(Feedback)).all()) == 2


@pytest.mark.parametrize("n", [2, 5])
def test_more_than_one_choice_is_refused_not_silently_answered_with_one(client_and_keys, n):
    client, keys = client_and_keys
    response = chat(client, keys["agent"], n=n)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert chat(client, keys["agent"], n=1).status_code == 200


def test_a_conflict_has_an_openai_client_error_type(client_and_keys):
    client, keys = client_and_keys
    interaction_id = ask(client, keys["agent"])
    client.post("/api/feedback", headers=bearer(keys["agent"]),
                json={"interaction_id": interaction_id, "rating": "down", "correction": "Two hours."})
    pending = client.get("/api/operator/corrections", headers=bearer(keys["operator"])).json()
    url = f"/api/operator/corrections/{pending[0]['id']}/approve"
    assert client.post(url, headers=bearer(keys["operator"])).status_code == 200
    again = client.post(url, headers=bearer(keys["operator"]))
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "invalid_request_error"


def test_api_docs_page_renders_from_local_files_under_the_csp(service, browser):
    from tests.agent.service_harness import LiveServer
    from tests.agent.test_web_chat import PageLog, screenshot

    app, _ = service()
    context = browser.new_context()
    page = context.new_page()
    page_log = PageLog(page)
    try:
        with LiveServer(app) as server:
            response = page.goto(server.url + "/docs")
            assert "script-src" not in response.headers["content-security-policy"]  # default-src 'self' holds
            sync_api.expect(page.locator(".swagger-ui .title")).to_contain_text("affinage")
            sync_api.expect(page.locator(".opblock-summary-path").first).to_be_visible()
            paths = page.locator(".opblock-summary-path").all_text_contents()
            assert "/v1/chat/completions" in paths
            hosts = {urlsplit(r.url).netloc for r in page_log.requests if urlsplit(r.url).scheme.startswith("http")}
            assert hosts == {urlsplit(server.url).netloc}  # nothing from a CDN
            assert page_log.unexpected_console_errors() == []  # no CSP refusal (only /favicon.ico is missing)
            screenshot(page, "api-docs.png")
    finally:
        context.close()


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "reset\u0000link?"}]},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "a\u0000b"}]}]},
    {"messages": [{"role": "user", "content": "How do I reset?"}], "user": "cust\u0000-1"},
])
def test_a_nul_character_is_a_400_on_every_database(client_and_keys, body):
    """PostgreSQL refuses NUL in text: it is refused as input everywhere, rather than failing the insert there."""
    client, keys = client_and_keys
    response = client.post("/v1/chat/completions", json=body, headers=bearer(keys["agent"]))
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]["message"]
