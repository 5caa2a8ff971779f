"""The real app as its own process, started in a couple of seconds: for tests that SIGKILL it or read its logs.

    python -m tests.agent.light_server HOME PORT

Everything is the production stack (``create_app``, the database at ``database_url`` through ``affinage.core.store``, JSON
logging and uvicorn set up as ``affinage serve`` does) except the two models: a scripted chat model that streams a
fixed answer and a hashing embedder, so the process never imports torch. The index must have been ingested with
``HashEmbeddings``.
"""

from __future__ import annotations

import re
import sys
import zlib

import numpy as np

from retrieval.embeddings import SentenceEmbeddings

ANSWER = "Click Forgot password on the sign-in page; the link expires after 2 hours."


class HashEmbeddings(SentenceEmbeddings):
    """Bag-of-words vectors hashed into 64 dimensions: retrieval that works on shared words, with no model."""

    def __init__(self):  # no sentence-transformers model to load
        self.name, self.dim = "hash-64", 64

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                vectors[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def main(home: str, port: int) -> None:
    import uvicorn
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from affinage.core.settings import load_settings
    from affinage.factory import build_agent
    from affinage.service import create_app
    from agent.service.observability import configure_logging

    configure_logging()
    settings = load_settings(home)
    agent = build_agent(settings, llm=FakeListChatModel(responses=[ANSWER], sleep=0.005), embeddings=HashEmbeddings())
    uvicorn.run(create_app(settings, agent=agent), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
