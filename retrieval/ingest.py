"""Ingesting: bring the index in line with files and folders, embedding only what is new or changed."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retrieval.chunking import Chunk, chunk_document
from retrieval.embeddings import SentenceEmbeddings
from retrieval.index import VERSION_DIR, FORMAT_VERSION, VectorIndex, prune, sentence_vectors
from retrieval.loaders import SUPPORTED_SUFFIXES, UnsupportedFileError, load_document


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
    sentences_embedded: int = 0  # quotable sentences new to the index, embedded at this ingest

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
            "sentences_embedded": self.sentences_embedded,
        }

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

def _targets(paths: list[Path]) -> list[tuple[Path, list[Path], bool]]:
    """(root, files, is_folder) for each path, every one checked before anything changes."""
    targets = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            targets.append((path, _walk(path), True))
            continue
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise UnsupportedFileError(
                f"unsupported file type {path.suffix or '(none)'!r}: {path} (supported: {', '.join(SUPPORTED_SUFFIXES)})"
            )
        if not os.access(path, os.R_OK):
            raise PermissionError(f"cannot read {path}")
        targets.append((path.parent, [path], False))
    return targets

def _scan(targets, old_files: dict, same_embedder: bool, max_chars: int, overlap_chars: int,
          report: IngestReport) -> tuple[dict, dict[str, list[Chunk]]]:
    """The index's file records after this ingest, and the chunks of new and changed files (to embed)."""
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
    return files, fresh

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
    targets = _targets(paths)
    current = VectorIndex.open(index_dir)
    same_embedder = current is not None and current.meta.get("embedder") == embeddings.name
    old_files = dict(current.files) if current else {}
    old_rows = {c.id: i for i, c in enumerate(current.chunks)} if current else {}
    report = IngestReport()
    files, fresh = _scan(targets, old_files, same_embedder, max_chars, overlap_chars, report)

    # A snapshot written before sentences were embedded at ingest (no "sentences" in its meta) is written anew.
    if current is not None and same_embedder and not fresh and files == old_files and "sentences" in current.meta:
        live = (index_dir / "CURRENT").read_text().strip()
        earlier = sorted(p.name for p in index_dir.iterdir() if VERSION_DIR.match(p.name) and p.name < live)
        prune(index_dir, keep={live, *earlier[-1:]})  # nothing to write, but a killed ingest may have left litter
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
    chunks = kept_chunks + new_chunks
    sentences, sentence_vectors, report.sentences_embedded = _sentence_vectors(
        chunks, current if same_embedder else None, embeddings, progress)
    meta = {"format": FORMAT_VERSION, "embedder": embeddings.name, "dim": embeddings.dim, "chunks": len(vectors),
            "sentences": len(sentences)}
    snapshot = VectorIndex(chunks, vectors, files, meta, sentences=sentences, sentence_vectors=sentence_vectors)
    snapshot.save(index_dir)
    report.chunks = len(snapshot)
    report.embedded = len(new_chunks)
    return report


def quotable_sentences(chunk: Chunk) -> list[str]:
    """The sentences an answer may quote from ``chunk``, cut as quote selection cuts them from a retrieved passage."""
    from langchain_core.documents import Document

    from affinage.core.extraction import candidates

    return [sentence for sentence, _ in candidates([Document(chunk.text, metadata={"heading": chunk.heading})])]


def _sentence_vectors(chunks: list[Chunk], current: VectorIndex | None, embeddings: SentenceEmbeddings,
                      progress: bool) -> tuple[list[str], np.ndarray, int]:
    """Every quotable sentence of ``chunks``, its vector (the earlier snapshot's where it has one, else embedded now),
    and how many were embedded now."""
    sentences = list(dict.fromkeys(sentence for chunk in chunks for sentence in quotable_sentences(chunk)))
    known = current.sentences if current is not None else {}
    vectors = sentence_vectors(current, sentences, lambda texts: embeddings.encode(texts, progress=progress),
                               embeddings.dim)
    return sentences, vectors, sum(sentence not in known for sentence in sentences)
