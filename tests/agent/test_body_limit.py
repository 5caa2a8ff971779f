"""The body size limit holds for chunked uploads too: leaving out Content-Length must not lift it."""

from __future__ import annotations

import json

import httpx
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from sqlalchemy import func, select

from affinage.core.settings import load_settings
from affinage.factory import build_agent
from agent.service import auth
from affinage.service import create_app
from affinage.core.tables import Interaction
from retrieval.ingest import ingest
from tests.agent.light_server import HashEmbeddings
from tests.agent.service_harness import LiveServer

QUESTION = {"role": "user", "content": "How long is the password reset link valid?"}


def chunked(body: bytes, size: int = 65536):
    """A body sent with Transfer-Encoding: chunked, which declares no length."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_chunked_bodies_over_the_limit_get_413_and_smaller_ones_are_served(home, kb):
    settings = load_settings(home, max_body_bytes=100_000)
    embeddings = HashEmbeddings()
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    agent = build_agent(settings, llm=FakeListChatModel(responses=["Two hours."]), embeddings=embeddings)
    headers = {"Authorization": f"Bearer {auth.create_key(agent.store, 'a', 'agent')}",
               "Content-Type": "application/json"}
    # every message within max_message_chars; only the body as a whole is too large
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}] * 40 + [QUESTION]}).encode()
    small = json.dumps({"messages": [QUESTION], "stream": True}).encode()
    assert len(big) > 2 * settings.max_body_bytes

    with LiveServer(create_app(settings, agent=agent)) as server, httpx.Client(timeout=30) as client:
        url = server.url + "/v1/chat/completions"
        refused = client.post(url, content=chunked(big), headers=headers)
        assert refused.request.headers["transfer-encoding"] == "chunked"
        assert refused.status_code == 413
        assert refused.json()["error"] == {"message": "request body larger than 100000 bytes",
                                           "type": "invalid_request_error", "param": None, "code": "body_too_large"}
        assert refused.headers["X-Content-Type-Options"] == "nosniff"  # still answered through the middleware

        served = client.post(url, content=chunked(small, 16), headers=headers)
        assert served.status_code == 200 and served.text.rstrip().endswith("data: [DONE]")
        assert client.post(url, content=big, headers=headers).status_code == 413  # with Content-Length, as before
    with agent.store.session() as session:
        assert session.scalar(select(func.count()).select_from(Interaction)) == 1
