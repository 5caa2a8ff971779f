"""Access control over every route the app has, found by walking ``app.routes``: a route added later is covered (or
the test names it until someone decides who may call it)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from affinage.core.settings import load_settings
from affinage.factory import build_agent
from agent.service import auth
from affinage.service import create_app
from retrieval.ingest import ingest
from tests.agent.conftest import bearer
from tests.agent.light_server import HashEmbeddings

PUBLIC = {"/", "/operator", "/healthz", "/openapi.json", "/docs", "/static", "/static/docs-assets"}
MOUNTS = {"/static", "/static/docs-assets"}
ROLE_BY_PREFIX = (("/v1/", "agent"), ("/api/feedback", "agent"), ("/api/operator/", "operator"),
                  ("/metrics", "operator"), ("/api/admin/", "admin"))
WEAKER = {"agent": None, "operator": "agent", "admin": "operator"}


@pytest.fixture
def app_and_keys(home, kb):
    settings = load_settings(home)
    embeddings = HashEmbeddings()
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    agent = build_agent(settings, llm=FakeListChatModel(responses=["Annual plans are refundable."]),
                        embeddings=embeddings)
    keys = {role: auth.create_key(agent.store, f"test-{role}", role) for role in auth.ROLES}
    return create_app(settings, agent=agent), keys


def required_role(path: str) -> str:
    for prefix, role in ROLE_BY_PREFIX:
        if path.startswith(prefix):
            return role
    raise AssertionError(f"route {path} is neither public nor under a known role's prefix: decide who may call it")


def route_paths(routes) -> set[str]:
    """Every path the app serves: FastAPI keeps an included router as one entry whose routes carry the prefix."""
    paths = set()
    for route in routes:
        if hasattr(route, "effective_candidates"):
            paths |= route_paths(route.effective_candidates())
        elif getattr(route, "path", None):
            paths.add(route.path)
    return paths


def protected_routes(app) -> list[tuple[str, str, str]]:
    """(method, concrete path, role) for every route in the OpenAPI schema; path parameters get a placeholder.

    Routes left out of the schema must be public: those are checked to answer without a key.
    """
    paths = app.openapi()["paths"]
    served = route_paths(app.routes)
    assert {"/", "/operator", "/docs", "/v1/chat/completions"} <= served  # the walk reaches into the routers
    hidden = served - set(paths)
    assert hidden <= PUBLIC, f"routes outside the schema that are not declared public: {sorted(hidden - PUBLIC)}"
    found = []
    for template, operations in paths.items():
        if template in PUBLIC:
            continue
        path = re.sub(r"\{[^}]+\}", "x", template).replace("/x/x", "/x/approve")  # the decision parameter
        found += [(method.upper(), path, required_role(template)) for method in sorted(operations)]
    return found


def test_every_route_is_public_or_needs_a_key_of_the_right_role(app_and_keys):
    app, keys = app_and_keys
    routes = protected_routes(app)
    assert len(routes) >= 18
    with TestClient(app) as client:
        for method, path, role in routes:
            where = f"{method} {path}"
            response = client.request(method, path)
            assert response.status_code == 401, where
            assert response.json()["error"]["code"] == "missing_api_key", where
            response = client.request(method, path, headers=bearer("afk_not-a-real-key"))
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key", where
            for scheme in ("Basic", "Token"):  # the key under another scheme is no key
                assert client.request(method, path, headers={"Authorization": f"{scheme} {keys['admin']}"}
                                      ).status_code == 401, where
            if WEAKER[role]:
                response = client.request(method, path, headers=bearer(keys[WEAKER[role]]))
                assert response.status_code == 403, where
                assert response.json()["error"]["type"] == "permission_error", where
            response = client.request(method, path, headers=bearer(keys[role]))
            assert response.status_code not in (401, 403), (where, response.text[:200])
        for path in sorted(PUBLIC - MOUNTS) + ["/static/chat.js", "/static/operator.js",
                                               "/static/docs-assets/swagger-ui-bundle.js"]:
            assert client.get(path).status_code == 200, path


def test_operator_actions_need_a_key_that_is_still_valid_with_its_role_now(app_and_keys):
    """Keys and roles are looked up on every request: a revoked or downgraded operator is refused at once."""
    app, keys = app_and_keys
    admin, operator = bearer(keys["admin"]), bearer(keys["operator"])
    with TestClient(app) as client:
        assert client.post("/api/operator/rollback", headers=operator).status_code == 409  # allowed: nothing to undo
        assert client.get("/api/operator/models", headers=operator).status_code == 200
        assert client.delete("/api/admin/keys/test-operator", headers=admin).status_code == 204
        for method, path in (("POST", "/api/operator/rollback"), ("GET", "/api/operator/models"),
                             ("POST", "/api/operator/promote/x"), ("POST", "/api/operator/corrections/x/approve")):
            response = client.request(method, path, headers=operator)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"

        # the same name again, now with the agent role: a new key, and the old one stays dead
        downgraded = client.post("/api/admin/keys", headers=admin, json={"name": "test-operator", "role": "agent"})
        new_key = downgraded.json()["key"]
        assert client.post("/api/operator/rollback", headers=bearer(new_key)).status_code == 403
        assert client.get("/api/operator/models", headers=operator).status_code == 401
