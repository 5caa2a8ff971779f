"""Heading-aware chunking: a chunk never spans two sections, so its anchor stays exact."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass

from retrieval.loaders import Document


@dataclass(frozen=True)
class Chunk:
    id: str
    path: str
    anchor: str
    heading: str
    text: str

    @property
    def source(self) -> str:
        return f"{self.path}#{self.anchor}" if self.anchor else self.path

    def to_dict(self) -> dict:
        return asdict(self)


def chunk_document(path: str, document: Document, max_chars: int, overlap_chars: int) -> list[Chunk]:
    """Split each section into passages of at most ``max_chars`` characters.

    Each passage starts with its page title and heading: the embedder then sees
    what the passage is about even when the body never repeats the heading.
    """
    chunks = []
    for section in document.sections:
        context = section.heading if section.heading == document.title else f"{document.title} — {section.heading}"
        for i, body in enumerate(split_text(section.text, max_chars, overlap_chars)):
            text = f"{context}\n{body}"
            digest = hashlib.sha1(f"{path}#{section.anchor}\0{i}\0{text}".encode()).hexdigest()[:16]
            chunks.append(Chunk(digest, path, section.anchor, section.heading, text))
    return chunks


def split_text(text: str, max_chars: int, overlap_chars: int) -> list[str]:
    """Pack paragraphs (then sentences, then words) into pieces of at most ``max_chars``."""
    units: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= max_chars:
            units.append(paragraph)
            continue
        for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
            units.extend(_hard_wrap(sentence, max_chars))
    pieces: list[str] = []
    current = ""
    for unit in units:
        candidate = f"{current}\n\n{unit}" if current else unit
        if len(candidate) <= max_chars:
            current = candidate
            continue
        pieces.append(current)
        tail = current[-overlap_chars:] if overlap_chars else ""
        tail = tail[tail.find(" ") + 1:] if " " in tail else tail
        current = f"{tail} {unit}" if tail and len(tail) + 1 + len(unit) <= max_chars else unit
    if current:
        pieces.append(current)
    return pieces


def _hard_wrap(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    out, line = [], ""
    for word in sentence.split():
        while len(word) > max_chars:
            if line:
                out.append(line)
                line = ""
            out.append(word[:max_chars])
            word = word[max_chars:]
        if not word:
            continue
        if line and len(line) + 1 + len(word) > max_chars:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        out.append(line)
    return out
