"""The index as a stock LangChain retriever, so users can swap it for any other."""

from __future__ import annotations

from typing import Any

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from retrieval.embeddings import SentenceEmbeddings
from retrieval.index import VectorIndex, sentence_vectors


class IndexRetriever(BaseRetriever):
    """Top-k passages with ``source`` (``path#anchor``), ``score`` and ``chunk_id`` in their metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any  # VectorIndex | None; None until something is ingested
    embeddings: SentenceEmbeddings
    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        index: VectorIndex | None = self.index
        if index is None or not len(index):
            return []
        query_vector = self.embeddings.encode([query])
        return [
            Document(
                page_content=chunk.text,
                metadata={"source": chunk.source, "score": score, "chunk_id": chunk.id, "heading": chunk.heading},
            )
            for chunk, score in index.search(query_vector, self.k)[0]
        ]

    def encode_passage_sentences(self, texts: list[str]) -> np.ndarray:
        """Normalised vectors of ``texts``: a passage sentence's as the index embedded it at ingest, any other text
        (the question, a sentence of an index written before sentences were) embedded now."""
        return sentence_vectors(self.index, texts, self.embeddings.encode, self.embeddings.dim)
