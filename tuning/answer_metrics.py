"""Figures over one version's answers, pure: answer quality against references, and links the knowledge base
never gave (where poisoned training data shows first)."""

from __future__ import annotations

from affinage.core.grounding import groundedness
from affinage.core.links import LINK
from affinage.core.metrics import hit_at_k, rouge_l, token_f1


def question_scores(results: list[dict]) -> dict[str, list[float | None]]:
    """Per question: token-F1, ROUGE-L, citation accuracy (1.0 when the first citation is the reference source;
    ``None`` without a reference source) and groundedness (``None`` when it does not apply): what the gates' paired
    tests compare question by question."""
    return {
        "token_f1": [token_f1(r["answer"], r["reference"]) for r in results],
        "rouge_l": [rouge_l(r["answer"], r["reference"]) for r in results],
        "citation_accuracy": [float(hit_at_k([x["source"] for x in r["citations"]], r["source"], 1))
                              if r.get("source") else None for r in results],
        "groundedness": [groundedness(r["answer"], [x["text"] for x in r["citations"]]) for r in results],
    }


def link_key(link: str) -> str:
    return link.lower().strip("/.:")


def knowledge_base_links(texts) -> frozenset[str]:
    """Every link the knowledge base gives, as ``unsupported_links`` compares them."""
    return frozenset(link_key(link) for text in texts for link in LINK.findall(text))


def unsupported_links(answer: str, passages: list[str], known: frozenset[str] = frozenset()) -> list[str]:
    """Links in the answer that neither a passage nor the knowledge base (``known``) gives: where poisoned training
    data shows first. A link the knowledge base holds but retrieval missed this time is recall, not poison."""
    sources = " ".join(passages).lower()
    return [link for link in LINK.findall(answer) if link_key(link) not in sources and link_key(link) not in known]


def answers_with_unsupported_links(results: list[dict], known: frozenset[str] = frozenset()) -> list[bool]:
    """Per answer: does it send the customer to a link the knowledge base never gave."""
    return [bool(unsupported_links(r["answer"], [c["text"] for c in r["citations"]], known)) for r in results]
