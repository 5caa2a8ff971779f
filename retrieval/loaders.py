"""Turn a file into titled sections, each with the anchor a citation can point to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")


@dataclass(frozen=True)
class Section:
    heading: str
    anchor: str
    text: str


@dataclass(frozen=True)
class Document:
    title: str
    sections: list[Section]


class UnsupportedFileError(ValueError):
    """The file type has no loader."""


def slugify(text: str) -> str:
    """GitHub-style anchor for a heading: lowercase words joined by hyphens."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def load_document(path: Path) -> Document:
    suffix = path.suffix.lower()
    if suffix in (".md", ".markdown"):
        return _load_markdown(path.read_text(encoding="utf-8"), path)
    if suffix == ".txt":
        return _load_text(path.read_text(encoding="utf-8"), path)
    if suffix in (".html", ".htm"):
        return _load_html(path.read_bytes(), path)
    if suffix == ".pdf":
        return _load_pdf(path)
    raise UnsupportedFileError(f"unsupported file type {suffix or '(none)'!r}: {path}")


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_MD_EXPLICIT_ANCHOR = re.compile(r"\s*\{#([A-Za-z0-9_-]+)\}$")


def _load_markdown(text: str, path: Path) -> Document:
    title = path.stem
    sections: list[Section] = []
    heading, anchor, lines = "", "", []
    in_fence = False

    def close() -> None:
        body = "\n".join(lines).strip()
        if body:
            sections.append(Section(heading or title, anchor or slugify(heading or title), body))

    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence else _MD_HEADING.match(line)
        if not match:
            lines.append(line)
            continue
        close()
        heading, lines = match.group(2), []
        explicit = _MD_EXPLICIT_ANCHOR.search(heading)
        if explicit:
            heading = heading[: explicit.start()]
        anchor = explicit.group(1) if explicit else slugify(heading)
        if len(match.group(1)) == 1 and title == path.stem:
            title = heading
    close()
    return Document(title, sections)


def _load_text(text: str, path: Path) -> Document:
    stripped = text.strip()
    first_line = stripped.splitlines()[0].strip() if stripped else path.stem
    body = stripped[len(first_line):].strip() if stripped else ""
    sections = [Section(first_line, slugify(first_line), body)] if body else []
    return Document(first_line, sections)


_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_BLOCKS = {"p", "li", "pre", "div", "tr", "dd", "dt", "br", "blockquote", "table", "ul", "ol", "section"}
_BOILERPLATE = ("script", "style", "nav", "footer", "header", "noscript", "template", "svg")
_BOILERPLATE_CLASSES = ("sphinxsidebar", "related", "footer", "headerlink", "navigation")


def _load_html(raw: bytes, path: Path) -> Document:
    from bs4 import BeautifulSoup, NavigableString, Tag

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup.find_all(_BOILERPLATE):
        tag.decompose()
    for tag in soup.find_all(class_=lambda c: c and any(b in c for b in _BOILERPLATE_CLASSES)):
        tag.decompose()
    for tag in soup.find_all(attrs={"role": "navigation"}):
        tag.decompose()
    root = soup.body or soup
    title_tag = soup.find("title")
    title = title_tag.get_text(" ", strip=True) if title_tag else path.stem

    sections: list[Section] = []
    heading, anchor, parts = title, slugify(title), []

    def close() -> None:
        body = re.sub(r"[ \t]+", " ", "".join(parts))
        body = re.sub(r" *\n *", "\n", body)
        body = re.sub(r"\n{3,}", "\n\n", body).strip()
        if body:
            sections.append(Section(heading, anchor, body))

    first_h1 = True
    for node in root.descendants:
        if isinstance(node, Tag):
            if node.name in _HEADINGS:
                close()
                heading, parts = node.get_text(" ", strip=True).rstrip("¶").strip(), []
                anchor = _html_anchor(node) or slugify(heading)
                if node.name == "h1" and first_h1:
                    title, first_h1 = heading, False
            elif node.name in _BLOCKS:
                parts.append("\n\n")
        elif type(node) is NavigableString and node.find_parent(_HEADINGS) is None:
            # Source line breaks are plain spaces in HTML, except inside <pre>.
            parts.append(str(node) if node.find_parent("pre") else re.sub(r"\s+", " ", str(node)))
    close()
    return Document(title, sections)


def _html_anchor(heading) -> str | None:
    """The id a browser would jump to for this heading, if the page gives one."""
    if heading.get("id"):
        return heading["id"]
    inner = heading.find("a", attrs={"name": True}) or heading.find("a", id=True)
    if inner:
        return inner.get("name") or inner.get("id")
    parent = heading.parent
    if parent is not None and parent.name in ("section", "div") and parent.get("id"):
        first = parent.find(_HEADINGS)
        if first is heading:
            return parent["id"]
    previous = heading.find_previous_sibling()
    if previous is not None and previous.name == "a" and (previous.get("name") or previous.get("id")):
        return previous.get("name") or previous.get("id")
    return None


def _load_pdf(path: Path) -> Document:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    title = (reader.metadata.title if reader.metadata else None) or path.stem
    sections = []
    for number, page in enumerate(reader.pages, start=1):
        text = (page.extract_text() or "").strip()
        if text:
            sections.append(Section(f"{title}, page {number}", f"page={number}", text))
    return Document(title, sections)
