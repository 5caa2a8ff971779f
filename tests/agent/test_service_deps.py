"""The service's dependencies (``agent.service.deps``) are replaced the FastAPI way, through
``app.dependency_overrides``, and the agent layer's assembly runs on backends handed in, with no ``tuning`` behind."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from affinage.core.settings import load_settings
from affinage.core.store import Store
from affinage.factory import build_agent
from affinage.service import create_app
from agent.service import auth
from agent.service.app import assemble
from agent.service.backends import Backends
from agent.service.deps import get_backends, get_caller, get_store
from agent.service.errors import APIError
from tests.agent.conftest import bearer
from tests.agent.light_server import HashEmbeddings


@pytest.fixture
def settings_and_agent(home):
    settings = load_settings(home)
    agent = build_agent(settings, llm=FakeListChatModel(responses=["Annual plans are refundable."]),
                        embeddings=HashEmbeddings())
    return settings, agent


def test_the_caller_and_the_store_are_overridden_through_dependency_overrides(settings_and_agent, tmp_path):
    settings, agent = settings_and_agent
    admin = auth.create_key(agent.store, "real-admin", "admin")
    app = create_app(settings, agent=agent)
    with TestClient(app) as client:
        assert client.get("/api/admin/keys").status_code == 401  # no key, no override: refused

        app.dependency_overrides[get_caller] = lambda: auth.Caller("tester", "admin")
        listed = client.get("/api/admin/keys")  # no key sent: the override is the caller
        assert listed.status_code == 200 and [k["name"] for k in listed.json()] == ["real-admin"]
        app.dependency_overrides[get_caller] = lambda: auth.Caller("tester", "agent")
        refused = client.get("/api/admin/keys")  # require_role still checks the overriding caller's role
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_role"
        del app.dependency_overrides[get_caller]

        other = Store(f"sqlite:///{tmp_path / 'other.db'}")
        other_admin = auth.create_key(other, "other-admin", "admin")
        app.dependency_overrides[get_store] = lambda: other
        assert client.get("/api/admin/keys", headers=bearer(admin)).status_code == 401  # keys are looked up there
        listed = client.get("/api/admin/keys", headers=bearer(other_admin))
        assert listed.status_code == 200 and [k["name"] for k in listed.json()] == ["other-admin"]

        app.dependency_overrides.clear()
        assert client.get("/api/admin/keys", headers=bearer(admin)).status_code == 200


class FakeRegistry:
    def __init__(self):
        self.promoted: list[tuple[str, str]] = []

    def overview(self) -> dict:
        return {"active": "v1", "versions": [{"id": "v1", "state": "active"}]}

    def promote(self, version_id: str, actor: str) -> dict:
        if version_id != "v1":
            raise APIError(404, f"no version {version_id}", "version_not_found", "id")
        self.promoted.append((version_id, actor))
        return {"id": version_id, "state": "active"}


class FakeJobs:
    def __init__(self, *listed: dict):
        self.listed = list(listed)

    def recent(self) -> list[dict]:
        return self.listed


def test_the_assembly_runs_on_backends_handed_in_and_they_can_be_overridden(settings_and_agent):
    settings, agent = settings_and_agent
    operator = auth.create_key(agent.store, "op", "operator")
    registry = FakeRegistry()
    app = assemble(settings, agent, Backends(registry=registry, canary=None, jobs=FakeJobs({"id": "job-1"}), erasure=None,
                                             report_style_hash="'sha256-test'"))
    with TestClient(app) as client:
        assert client.get("/api/operator/models", headers=bearer(operator)).json()["active"] == "v1"
        assert client.post("/api/operator/promote/v1", headers=bearer(operator)).status_code == 200
        assert registry.promoted == [("v1", "op")]
        missing = client.post("/api/operator/promote/v9", headers=bearer(operator))  # the backend's APIError
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "version_not_found"
        assert "'sha256-test'" in client.get("/operator").headers["Content-Security-Policy"]

        assert client.get("/api/operator/jobs", headers=bearer(operator)).json() == [{"id": "job-1"}]
        app.dependency_overrides[get_backends] = lambda: Backends(registry=registry, canary=None, jobs=FakeJobs(), erasure=None,
                                                                  report_style_hash="'sha256-test'")
        assert client.get("/api/operator/jobs", headers=bearer(operator)).json() == []
