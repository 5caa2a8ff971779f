import pytest
from fastapi.testclient import TestClient

from affinage.factory import build_agent
from agent.service import auth
from affinage.service import create_app
from retrieval.ingest import ingest


@pytest.fixture
def service(tiny_settings, kb, embeddings):
    """The app around a tiny-model agent, with one key per role."""

    def make(**overrides):
        settings = tiny_settings.model_copy(update=overrides)
        ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
        agent = build_agent(settings, embeddings=embeddings)
        app = create_app(settings, agent=agent)
        keys = {role: auth.create_key(agent.store, f"test-{role}", role) for role in auth.ROLES}
        return app, keys

    return make


@pytest.fixture
def client_and_keys(service):
    app, keys = service()
    with TestClient(app) as client:
        yield client, keys


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}
