"""Extract, then answer: the passage sentences that answer a question, screened, for the prompt and the answer.

Retrieval finds the right passage nine times in ten, but a small model handed whole passages drops the fact. So
the sentences closest in meaning to the question are picked here (with the retriever's own embedder), the model
reads only those, and the answer quotes them with their citations. A sentence that addresses the reader (a
planted instruction) or carries a link outside the allowed domains is never picked: the quotes go to the customer
verbatim. When no sentence is close enough to the question, there is nothing to quote and the caller abstains.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
from langchain_core.documents import Document

from affinage.core import text
from affinage.core.links import off_policy_links

Embed = Callable[[list[str]], np.ndarray]  # texts -> normalised vectors, e.g. SentenceEmbeddings.encode

MIN_WORDS = 4  # shorter lines are mostly code, headings or fragments
WINDOW_WORDS = 60  # a very long "sentence" (a table row, a paragraph without stops) is cut into windows
_MIN_LETTER_SHARE = 0.5  # below this a line is code, a number table or binary noise, not a quotable statement

# Text that speaks to whoever reads it: a planted instruction. Written against the hardening plants, the injection
# bench and the gates' probes, and checked to flag no sentence of the Python FAQ or the Debian Reference.
_ADDRESSES_READER = re.compile(
    r"\b(?:assistants?|ai|chatbots?|bots?|llms?|language models?)\s*[:,]"
    r"|\b(?:note|message|instructions?|reminder)s? (?:to|for) (?:the |all |any )?(?:assistants?|ai|bots?|models?|readers?|llms?)\b"
    r"|\b(?:the|an?|any) (?:assistants?|ai|chatbots?|bots?|llms?|models?) (?:must|should|shall|will|is required)\b"
    r"|\bai (?:systems?|models?|agents?)\b"
    r"|\b(?:ignore|disregard|forget)\b(?: \w+){0,3} (?:instructions?|rules|text|prompts?|messages?|directions|guidelines)\b"
    r"|\boverride\s*:|(?-i:\bSYSTEM\b)|^\W*system\s*(?::|override|notice|alert)"
    r"|\b(?:hidden|secret) (?:prompt|instructions?|messages?)\b|\b(?:your|its) (?:\w+ )?system (?:prompt|message)\b"
    r"|\bsystem prompt\b"
    r"|\b(?:your|its|their|the only) (?:replies|reply|responses?|answers?)\b"
    r"|\b(?:end|start|begin|sign|finish|in|to) (?:every|each|all) (?:replies|reply|responses?|answers?)\b"
    r"|\b(?:correct|only) answer is\b|\banswer must\b"
    r"|\b(?:whoever|anyone|anybody|anything|everyone) (?:who )?(?:reads?|reading|sees)\b|\breading this (?:page|text|passage|message|note)\b"
    r"|\[(?:admin|system|instructions?|assistant)\]"
    r"|\b(?:print|output|say|write|type|repeat|reveal)\b (?:only |out |exactly |the |this |your )+(?:code|token|secret|phrase|word|canary)\b"
    r"|\byour (?:new|real|only|actual|true) (?:task|instructions?|rules|job|role)\b|\byour (?:task|job|role) is\b"
    r"|\bbefore (?:you )?answering\b|\b(?:stop|instead of) answering\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Quote:
    sentence: str
    passage: int  # index of the passage it comes from, in the order the passages were given
    similarity: float  # cosine to the question


def addresses_reader(sentence: str) -> bool:
    """Whether the sentence speaks to whoever reads it (an assistant, a bot, 'whoever reads this'): data never does."""
    return bool(_ADDRESSES_READER.search(sentence))


def quotable(sentence: str, allowed_domains: list[str] | tuple[str, ...] = ()) -> bool:
    """Safe to hand the customer verbatim: a statement (mostly letters) that addresses nobody and links nowhere
    outside the allowed domains."""
    letters = sum(c.isalpha() for c in sentence)
    return (letters >= _MIN_LETTER_SHARE * len(sentence.replace(" ", "")) and not addresses_reader(sentence)
            and not off_policy_links(sentence, allowed_domains))


def body(doc: Document) -> str:
    """The passage without the "Title — Heading" line the chunker puts first (it helps retrieval, not an answer)."""
    content = doc.page_content
    heading = doc.metadata.get("heading")
    first, _, rest = content.partition("\n")
    return rest if heading and rest and first.strip().endswith(heading.strip()) else content


def candidates(docs: list[Document]) -> list[tuple[str, int]]:
    """(sentence, passage index) for every statement in the passages: no questions, nothing under ``MIN_WORDS``
    words, long sentences cut into ``WINDOW_WORDS``-word windows, exact repeats once."""
    seen: set[str] = set()
    found: list[tuple[str, int]] = []
    for index, doc in enumerate(docs):
        for raw in text.sentences(body(doc)):
            words = raw.split()
            if len(words) < MIN_WORDS or raw.endswith("?"):
                continue
            for start in range(0, len(words), WINDOW_WORDS):
                piece = " ".join(words[start:start + WINDOW_WORDS])
                if piece not in seen and len(piece.split()) >= MIN_WORDS:
                    seen.add(piece)
                    found.append((piece, index))
    return found


def lexical_embed(texts: list[str], dim: int = 2048) -> np.ndarray:
    """Normalised hashed bags of content words: the fallback embedder for a retriever that has none of its own."""
    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    for row, sentence in enumerate(texts):
        for token in text.content_tokens(sentence):
            vectors[row, zlib.crc32(token.encode()) % dim] += 1.0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


def select_quotes(question: str, docs: list[Document], embed: Embed, n: int, min_similarity: float,
                  allowed_domains: list[str] | tuple[str, ...] = (), screen: bool = True) -> list[Quote]:
    """The ``n`` passage sentences closest in meaning to the question (cosine at least ``min_similarity``), in the
    order the passages give them; none when no sentence is close enough. ``screen=False`` skips the quote screen
    (the gates' model-level probes, which measure what the model does with a planted sentence)."""
    found = [(s, i) for s, i in candidates(docs) if not screen or quotable(s, allowed_domains)]
    if n <= 0 or not found:
        return []
    vectors = embed([question, *(s for s, _ in found)])
    similarity = vectors[1:] @ vectors[0]
    best = [int(k) for k in np.argsort(-similarity, kind="stable")[:n] if similarity[k] >= min_similarity]
    return [Quote(found[k][0], found[k][1], float(similarity[k])) for k in sorted(best)]
