"""A persisted FAISS index over chunks, updated incrementally and swapped atomically.

Layout under the index folder::

    CURRENT          name of the live snapshot (replaced atomically)
    v000003/         chunks.jsonl, vectors.npy, files.json, meta.json, faiss.index

An ingest writes a whole new snapshot beside the live one and only then flips
CURRENT, so a failed or killed ingest leaves the previous index usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affinage.core.atomic import atomic_write_text, fsync_dir, fsync_file
from retrieval.chunking import Chunk, chunk_document
from retrieval.embeddings import SentenceEmbeddings
from retrieval.loaders import SUPPORTED_SUFFIXES, UnsupportedFileError, load_document

FORMAT_VERSION = 1
HNSW_MIN_CHUNKS = 50_000  # below this an exact flat search is fast enough
_VERSION_DIR = re.compile(r"^v(\d{6})$")


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    chunks: int = 0
    embedded: int = 0

    def to_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
            "chunks": self.chunks,
            "embedded": self.embedded,
        }


class VectorIndex:
    """One immutable snapshot: chunks, their vectors and the FAISS index over them."""

    def __init__(self, chunks: list[Chunk], vectors: np.ndarray, files: dict[str, dict], meta: dict, faiss_index=None):
        self.chunks = chunks
        self.vectors = vectors
        self.files = files
        self.meta = meta
        self.faiss_index = faiss_index if faiss_index is not None else build_faiss(vectors)

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
        return cls(chunks, vectors, files, meta, index)

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
        _prune(index_dir, keep={name, previous} - {None})
        return index_dir / name


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
    numbers = [int(m.group(1)) for p in index_dir.iterdir() if (m := _VERSION_DIR.match(p.name))]
    return max(numbers, default=0)


def _prune(index_dir: Path, keep: set[str]) -> None:
    """Drop every snapshot but ``keep`` (the live one and the one before it) and what killed ingests left behind:
    temporary folders, and snapshots written but never made live."""
    for path in index_dir.iterdir():
        if (path.name.startswith(".tmp-") or _VERSION_DIR.match(path.name)) and path.name not in keep and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _walk(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / name for name in sorted(filenames) if not name.startswith("."))
    return found


def ingest(
    index_dir: Path,
    paths: list[Path],
    embeddings: SentenceEmbeddings,
    max_chars: int,
    overlap_chars: int,
    progress: bool = False,
) -> IngestReport:
    """Bring the index in line with ``paths``: embed new and changed files, drop deleted ones.

    A folder is compared with what was ingested from it before; a single file
    only adds or updates itself. Every path is checked before anything changes.
    """
    targets: list[tuple[Path, list[Path], bool]] = []  # (root, files, is_folder)
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            targets.append((path, _walk(path), True))
        else:
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise UnsupportedFileError(
                    f"unsupported file type {path.suffix or '(none)'!r}: {path} (supported: {', '.join(SUPPORTED_SUFFIXES)})"
                )
            if not os.access(path, os.R_OK):
                raise PermissionError(f"cannot read {path}")
            targets.append((path.parent, [path], False))

    current = VectorIndex.open(index_dir)
    same_embedder = current is not None and current.meta.get("embedder") == embeddings.name
    old_files = dict(current.files) if current else {}
    old_rows = {c.id: i for i, c in enumerate(current.chunks)} if current else {}

    report = IngestReport()
    files = dict(old_files)
    fresh: dict[str, list[Chunk]] = {}  # file key -> chunks to embed
    for root, found, is_folder in targets:
        root_key = str(root.resolve())
        seen = set()
        for file in found:
            rel = file.relative_to(root).as_posix()
            key = f"{root_key}::{rel}"
            seen.add(key)
            if file.suffix.lower() not in SUPPORTED_SUFFIXES:
                report.skipped.append((rel, f"unsupported type {file.suffix or '(none)'}"))
                continue
            try:
                digest = file_sha256(file)
                previous = old_files.get(key)
                if previous and previous["sha256"] == digest and same_embedder:
                    report.unchanged.append(rel)
                    continue
                document = load_document(file)
            except (OSError, ValueError, UnicodeDecodeError) as error:
                report.failed.append((rel, f"{type(error).__name__}: {error}".splitlines()[0]))
                continue
            except Exception as error:  # a parser choking on a corrupt file must not stop the others
                report.failed.append((rel, f"cannot parse: {type(error).__name__}: {error}".splitlines()[0]))
                continue
            chunks = chunk_document(rel, document, max_chars, overlap_chars)
            if not chunks:
                report.skipped.append((rel, "no text found"))
                files.pop(key, None)
                continue
            (report.updated if previous else report.added).append(rel)
            fresh[key] = chunks
            files[key] = {"root": root_key, "path": rel, "sha256": digest, "chunks": [c.id for c in chunks]}
        if is_folder:
            for key, record in old_files.items():
                if record["root"] == root_key and key not in seen:
                    report.removed.append(record["path"])
                    files.pop(key)

    if current is not None and same_embedder and not fresh and files == old_files:
        live = (index_dir / "CURRENT").read_text().strip()
        earlier = sorted(p.name for p in index_dir.iterdir() if _VERSION_DIR.match(p.name) and p.name < live)
        _prune(index_dir, keep={live, *earlier[-1:]})  # nothing to write, but a killed ingest may have left litter
        report.chunks = len(current)
        return report

    kept_chunks, kept_rows = [], []
    by_id = {c.id: c for c in current.chunks} if current else {}
    for key, record in files.items():
        if key in fresh:
            continue
        if not same_embedder:
            fresh[key] = [by_id[i] for i in record["chunks"] if i in by_id]
            continue
        for chunk_id in record["chunks"]:
            if chunk_id in old_rows:
                kept_chunks.append(by_id[chunk_id])
                kept_rows.append(old_rows[chunk_id])

    new_chunks = [chunk for chunks in fresh.values() for chunk in chunks]
    new_vectors = embeddings.encode([c.text for c in new_chunks], progress=progress)
    old_vectors = current.vectors[kept_rows] if current is not None and kept_rows else np.zeros((0, embeddings.dim), np.float32)
    vectors = np.concatenate([old_vectors, new_vectors]).astype(np.float32)
    meta = {"format": FORMAT_VERSION, "embedder": embeddings.name, "dim": embeddings.dim, "chunks": len(vectors)}
    snapshot = VectorIndex(kept_chunks + new_chunks, vectors, files, meta)
    snapshot.save(index_dir)
    report.chunks = len(snapshot)
    report.embedded = len(new_chunks)
    return report
