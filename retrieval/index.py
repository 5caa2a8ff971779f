"""A persisted FAISS index over chunks, updated incrementally and swapped atomically.

Layout under the index folder::

    CURRENT          name of the live snapshot (replaced atomically)
    v000003/         chunks.jsonl, vectors.npy, files.json, meta.json, faiss.index,
                     sentences.json, sentences.npy (the vector of every quotable sentence of the chunks)

An ingest writes a whole new snapshot beside the live one and only then flips
CURRENT, so a failed or killed ingest leaves the previous index usable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from affinage.core.atomic import atomic_write_text, fsync_dir, fsync_file
from retrieval.chunking import Chunk

FORMAT_VERSION = 1
HNSW_MIN_CHUNKS = 50_000  # below this an exact flat search is fast enough
VERSION_DIR = re.compile(r"^v(\d{6})$")


class VectorIndex:
    """One immutable snapshot: chunks, their vectors and the FAISS index over them, and the vectors of the chunks'
    quotable sentences, embedded once at ingest rather than for every answer that quotes them (16 concurrent chats
    spent 5 s embedding the sentences of the passages they retrieved before their first token)."""

    def __init__(self, chunks: list[Chunk], vectors: np.ndarray, files: dict[str, dict], meta: dict, faiss_index=None,
                 sentences: list[str] = (), sentence_vectors: np.ndarray | None = None):
        self.chunks = chunks
        self.vectors = vectors
        self.files = files
        self.meta = meta
        self.faiss_index = faiss_index if faiss_index is not None else build_faiss(vectors)
        self.sentences = {sentence: row for row, sentence in enumerate(sentences)}
        self.sentence_vectors = sentence_vectors if sentence_vectors is not None else np.zeros((0, vectors.shape[1]),
                                                                                               np.float32)

    def __len__(self) -> int:
        return len(self.chunks)

    @classmethod
    def open(cls, index_dir: Path) -> "VectorIndex | None":
        """The live snapshot, or None when nothing was ingested yet."""
        pointer = index_dir / "CURRENT"
        if not pointer.exists():
            return None
        import faiss

        snapshot = index_dir / pointer.read_text().strip()
        meta = json.loads((snapshot / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"index at {snapshot} has format {meta.get('format')}, expected {FORMAT_VERSION}: re-ingest")
        with open(snapshot / "chunks.jsonl", encoding="utf-8") as handle:
            chunks = [Chunk(**json.loads(line)) for line in handle]
        vectors = np.load(snapshot / "vectors.npy", allow_pickle=False)
        files = json.loads((snapshot / "files.json").read_text())
        index = faiss.read_index(str(snapshot / "faiss.index"))
        _tune(index)
        if not (snapshot / "sentences.npy").exists():  # written before sentences were: they are embedded when quoted
            return cls(chunks, vectors, files, meta, index)
        sentences = json.loads((snapshot / "sentences.json").read_text(encoding="utf-8"))
        sentence_vectors = np.load(snapshot / "sentences.npy", mmap_mode="r", allow_pickle=False)  # paged in as read
        return cls(chunks, vectors, files, meta, index, sentences, sentence_vectors)

    def search(self, query_vectors: np.ndarray, k: int) -> list[list[tuple[Chunk, float]]]:
        """Top-k chunks per query vector with their cosine similarity, best first."""
        import faiss

        if not self.chunks:
            return [[] for _ in range(len(query_vectors))]
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # for a handful of queries a second thread costs more than it brings (measured)
        try:
            scores, ids = self.faiss_index.search(np.ascontiguousarray(query_vectors, dtype=np.float32),
                                                  min(k, len(self.chunks)))
        finally:
            faiss.omp_set_num_threads(threads)
        return [
            [(self.chunks[i], float(s)) for s, i in zip(row_scores, row_ids) if i >= 0]
            for row_scores, row_ids in zip(scores, ids)
        ]

    def save(self, index_dir: Path) -> Path:
        """Write this snapshot beside the live one, then make it live."""
        import faiss

        index_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=index_dir))
        try:
            with open(tmp / "chunks.jsonl", "w", encoding="utf-8") as handle:
                for chunk in self.chunks:
                    handle.write(json.dumps(chunk.to_dict(), ensure_ascii=False) + "\n")
            np.save(tmp / "vectors.npy", self.vectors, allow_pickle=False)
            (tmp / "files.json").write_text(json.dumps(self.files, indent=1))
            (tmp / "meta.json").write_text(json.dumps(self.meta, indent=1))
            (tmp / "sentences.json").write_text(json.dumps(list(self.sentences), ensure_ascii=False), encoding="utf-8")
            np.save(tmp / "sentences.npy", np.asarray(self.sentence_vectors, dtype=np.float32), allow_pickle=False)
            faiss.write_index(self.faiss_index, str(tmp / "faiss.index"))
            for path in tmp.iterdir():
                fsync_file(path)
            fsync_dir(tmp)
            name = f"v{_latest_version(index_dir) + 1:06d}"
            os.rename(tmp, index_dir / name)
            fsync_dir(index_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        pointer = index_dir / "CURRENT"
        previous = pointer.read_text().strip() if pointer.exists() else None
        atomic_write_text(pointer, name + "\n")
        prune(index_dir, keep={name, previous} - {None})
        return index_dir / name


def sentence_vectors(index: VectorIndex | None, texts: list[str], encode: Callable[[list[str]], np.ndarray],
                     dim: int) -> np.ndarray:
    """Each text's vector: ``index``'s, embedded at its ingest, where it has one; the rest from one ``encode`` call."""
    known = index.sentences if index is not None else {}
    missing = [text for text in texts if text not in known]
    fresh = dict(zip(missing, encode(missing))) if missing else {}
    rows = [fresh[text] if text in fresh else index.sentence_vectors[known[text]] for text in texts]
    return np.array(rows, dtype=np.float32).reshape(len(texts), dim)


def build_faiss(vectors: np.ndarray):
    import faiss

    dim = vectors.shape[1]
    if len(vectors) >= HNSW_MIN_CHUNKS:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
    else:
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _tune(index)
    return index


def _tune(index) -> None:
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = 96


def _latest_version(index_dir: Path) -> int:
    numbers = [int(m.group(1)) for p in index_dir.iterdir() if (m := VERSION_DIR.match(p.name))]
    return max(numbers, default=0)


def prune(index_dir: Path, keep: set[str]) -> None:
    """Drop every snapshot but ``keep`` (the live one and the one before it) and what killed ingests left behind:
    temporary folders, and snapshots written but never made live."""
    for path in index_dir.iterdir():
        if (path.name.startswith(".tmp-") or VERSION_DIR.match(path.name)) and path.name not in keep and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


