"""What counts as a refusal, defined once: the detectors flag it, the drift report counts it, the gates compare it."""

from __future__ import annotations

import re

from affinage.core.text import fold, sentences

# Each pattern is matched case-insensitively with word boundaries on the folded text (curly apostrophes straight).
REFUSAL_PATTERNS: tuple[tuple[str, str], ...] = (
    # "I don't know", "I do not know", but not "I don't know why ..." (puzzlement, usually followed by an answer).
    ("I don't know", r"\bi (?:do not|don't|dont) know\b(?! why\b)"),
    ("I'm not sure", r"\bi(?:'m| am) (?:not (?:sure|certain)|unsure)\b"),
    ("I have no idea", r"\bi (?:have no|don't have an?|do not have an?) (?:idea|answer)\b"),
    # "I cannot help / answer / find ...", "I'm unable to assist", "I couldn't find ..."
    ("I cannot help", r"\bi(?: cannot| can't| can not| could not| couldn't|'m unable to| am unable to|'m not able to"
                      r"| am not able to) (?:help|answer|assist|find|provide|say|tell)\b"),
    # "I have no information", "there is no information", "I don't have (any|enough) information"
    ("no information", r"\b(?:(?:i|we) (?:have|had|found|could find) no |there(?: is|'s) no "
                       r"|(?:don't|do not) have (?:any |enough )?)(?:\w+ )?information\b"),
    # "not covered in the knowledge base", "not mentioned in the passages" — the sources, not a warranty or a plan.
    ("not covered", r"\bnot (?:\w+ )?(?:covered|mentioned|addressed|documented|described) (?:in|by) (?:the |our |these "
                    r"|this |my )?(?:provided )?(?:knowledge base|documentation|docs|passages?|context|sources?"
                    r"|articles?|information)\b"),
    # "the passages do not mention ...", "the knowledge base doesn't cover ...", "the context contains no ..."
    ("sources are silent", r"\b(?:passages?|context|knowledge base|documentation|docs|sources?|articles?) (?:does not"
                           r"|doesn't|do not|don't) (?:contain|include|mention|cover|provide|say|specify)\b"),
    ("outside my scope", r"\b(?:outside|beyond) (?:the scope|my (?:knowledge|scope))\b"),
)
_REFUSALS = tuple((label, re.compile(pattern)) for label, pattern in REFUSAL_PATTERNS)
# A refusal phrase followed in its sentence by "but ..." is a hedge before an answer ("I'm not sure, but press X")
# — unless what follows "but" only offers a hand-over ("..., but I can escalate this to a human agent").
_PIVOT = re.compile(r"\b(?:but|however|though|although)\b")
_ESCALATION_OFFER = re.compile(r"\b(?:escalat\w*|human|agent|team|someone|somebody|colleague|contact support)\b")

# A first-person hand-over ("I'll escalate this to our team") declines as surely as "I don't know"; "to escalate a
# ticket, open ..." is a help-desk answer and does not match.
_HANDOVER = re.compile(r"\b(?:i(?:'ll| will| can|'m going to| am going to)|let me|we(?:'ll| will| can)) "
                       r"(?:escalate|hand (?:this|it|you) (?:over|off)|pass (?:this|it) on|connect you (?:to|with))\b")


def refusal_in(sentence: str) -> str | None:
    folded = fold(sentence)
    if _HANDOVER.search(folded):
        return "hand-over"
    for label, pattern in _REFUSALS:
        for match in pattern.finditer(folded):
            pivot = _PIVOT.search(folded, match.end())
            if pivot is None or _ESCALATION_OFFER.search(folded, pivot.end()):
                return label
    return None


def first_refusal(answer: str) -> tuple[int, str, str] | None:
    """(sentence position, label, sentence) of the answer's first refusal, or None.

    Rules: a phrase from ``REFUSAL_PATTERNS`` counts unless the rest of its sentence pivots with "but"/"however"
    to an answer (a hedge); "I don't know why ..." is never a refusal; a first-person hand-over ("I'll escalate
    this to our team") declines as surely as "I don't know".
    """
    for position, sentence in enumerate(sentences(answer)):
        label = refusal_in(sentence)
        if label is not None:
            return position, label, sentence
    return None


def is_refusal(answer: str) -> bool:
    return first_refusal(answer) is not None
