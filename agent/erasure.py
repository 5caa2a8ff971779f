"""Erasing from the interaction log (GDPR art. 17): which rows a selector names, and deleting them with what
quotes them (feedback, corrections, example-bank entries, job-log lines, other answers' failure signals).

Everything here works inside the caller's transaction; ``affinage.erasure`` records the erasure, supersedes the
datasets and flags the model versions around it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Iterable, Iterator

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from affinage.core.pii import ERASED
from affinage.core.tables import Example, Feedback, Interaction, JobLog

KINDS = ("customer", "conversation", "interaction", "matching")
MIN_MATCHING_CHARS = 3  # "--matching a" would erase nearly everything
BATCH = 500  # ids per IN (...): well under SQLite's bound-parameter limit
SCAN_BATCH = 1000
ID_TOKEN = re.compile(r"[0-9a-f]{32}")  # how interaction ids (uuid4 hex) appear in log lines
# What a report counts: rows deleted per table (corrections: the feedback rows that held one), and other
# interactions whose failure signals quoted an erased question (a rephrase names the earlier question), scrubbed.
TABLES = ("interactions", "feedback", "corrections", "examples", "job_logs", "signal_quotes")


class SelectorError(ValueError):
    """No selector, two selectors, or an unusable value: the CLI exits 2, the route answers 400."""


@dataclass(frozen=True)
class Selector:
    """Exactly one of: an end customer's id, a conversation id, an interaction id, or text (an email address or a
    name) matched case-insensitively in questions, answers, corrections, comments and the example bank."""

    customer: str | None = None
    conversation: str | None = None
    interaction: str | None = None
    matching: str | None = None

    def __post_init__(self) -> None:
        given = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if len(given) != 1:
            raise SelectorError("give exactly one of customer, conversation, interaction, matching; got "
                                + (", ".join(given) if given else "none"))
        value = getattr(self, given[0])
        if not isinstance(value, str) or not value.strip():
            raise SelectorError(f"the {given[0]} to forget is empty")
        if "\x00" in value or value.encode("utf-8", "replace").decode("utf-8") != value:  # neither can be stored
            raise SelectorError(f"the {given[0]} to forget is not valid text (a NUL or a lone surrogate): {value!r}")
        object.__setattr__(self, given[0], value.strip())
        if given[0] == "matching" and len(self.value) < MIN_MATCHING_CHARS:
            raise SelectorError(f"matching text {self.value!r} is shorter than {MIN_MATCHING_CHARS} characters: it "
                                "would match almost everything")

    @classmethod
    def of(cls, kind: str, value: str) -> "Selector":
        if kind not in KINDS:
            raise SelectorError(f"unknown selector {kind!r}; use one of {', '.join(KINDS)}")
        return cls(**{kind: value})

    @property
    def kind(self) -> str:
        return next(f.name for f in fields(self) if getattr(self, f.name) is not None)

    @property
    def value(self) -> str:
        return getattr(self, self.kind)

    @property
    def hash(self) -> str:
        """sha256 of "kind:value" (matching text case-folded, as it is matched): what records keep instead."""
        value = self.value.casefold() if self.kind == "matching" else self.value
        return hashlib.sha256(f"{self.kind}:{value}".encode("utf-8")).hexdigest()

    def matches(self, text: str | None) -> bool:
        return self.kind == "matching" and text is not None and self.value.casefold() in text.casefold()


# -- finding what a selector names ------------------------------------------------------------------------------

def _chunks(items: Iterable[str], size: int = BATCH) -> Iterator[list[str]]:
    items = sorted(items)
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _scan(session: Session, statement) -> Iterator[tuple]:
    yield from session.execute(statement.execution_options(yield_per=SCAN_BATCH))


def resolve(session: Session, selector: Selector, since: datetime | None = None) -> tuple[set[str], set[str]]:
    """The interaction ids the selector names, and the example ids it names by text alone. Text is matched here in
    Python, case-folded, over every row (``since``: only newer ones): SQLite's LIKE folds ASCII only, and a missed
    "Zoë" is a failed erasure, while an erasure is rare enough to afford a scan."""
    kind, value = selector.kind, selector.value
    if kind == "interaction":
        return set(session.scalars(select(Interaction.id).where(Interaction.id == value))), set()
    if kind == "conversation":
        return set(session.scalars(select(Interaction.id).where(Interaction.conversation_id == value))), set()
    if kind == "customer":
        ids = set(session.scalars(select(Interaction.id).where(Interaction.customer == value)))
        ids |= set(session.scalars(select(Feedback.interaction_id).where(Feedback.customer == value)))
        return ids, set(session.scalars(select(Example.id).where(Example.customer == value)))
    ids: set[str] = set()
    found = selector.matches
    query = select(Interaction.id, Interaction.question, Interaction.answer, Interaction.customer)
    for row_id, *texts in _scan(session, query if since is None else query.where(Interaction.created_at >= since)):
        if any(found(t) for t in texts):
            ids.add(row_id)
    query = select(Feedback.interaction_id, Feedback.correction, Feedback.comment, Feedback.customer)
    for interaction_id, *texts in _scan(session, query if since is None else query.where(Feedback.created_at >= since)):
        if any(found(t) for t in texts):
            ids.add(interaction_id)
    examples: set[str] = set()
    query = select(Example.id, Example.interaction_id, Example.question, Example.answer, Example.customer)
    for example_id, interaction_id, *texts in _scan(session, query if since is None else
                                                    query.where(Example.created_at >= since)):
        if any(found(t) for t in texts):
            examples.add(example_id)
            if interaction_id:
                ids.add(interaction_id)
    return ids, examples


def _log_line_concerned(message: str, ids: set[str], selector: Selector | None) -> bool:
    """A job-log line naming an erased interaction, or the selector's value itself (a customer id may be an email)."""
    if ids and not ids.isdisjoint(ID_TOKEN.findall(message)):
        return True
    if selector is None:
        return False
    if selector.kind == "matching":
        return selector.matches(message)
    return re.search(rf"(?<![\w@.+-]){re.escape(selector.value)}(?![\w@.+-])", message) is not None


def _concerned_log_lines(session: Session, ids: set[str], selector: Selector | None) -> list[int]:
    return [line_id for line_id, message in _scan(session, select(JobLog.id, JobLog.message))
            if _log_line_concerned(message, ids, selector)]


# -- deleting -----------------------------------------------------------------------------------------------------

def delete_rows(session: Session, ids: set[str], example_ids: set[str], selector: Selector | None,
                 texts: set[str] | None = None) -> dict[str, int]:
    """Delete in foreign-key order, within the caller's transaction; returns rows deleted per table. The erased
    questions and corrections go into ``texts`` (memory only), for scrubbing the gate reports that quote them."""
    counts = dict.fromkeys(TABLES, 0)
    texts = set() if texts is None else texts
    since = None  # the oldest erased interaction: only later ones can quote it
    quoted: set[str] = set()
    for chunk in _chunks(example_ids):
        counts["examples"] += session.execute(delete(Example).where(Example.id.in_(chunk))
                                              .execution_options(synchronize_session=False)).rowcount
    for chunk in _chunks(ids):
        counts["examples"] += session.execute(delete(Example).where(Example.interaction_id.in_(chunk))
                                              .execution_options(synchronize_session=False)).rowcount
        corrections = session.scalars(select(Feedback.correction).where(
            Feedback.interaction_id.in_(chunk), Feedback.correction.is_not(None))).all()
        counts["corrections"] += len(corrections)
        questions = session.scalars(select(Interaction.question).where(Interaction.id.in_(chunk))).all()
        texts.update(corrections)
        texts.update(questions)
        quoted.update(questions)
        first = session.scalar(select(func.min(Interaction.created_at)).where(Interaction.id.in_(chunk)))
        since = first if since is None or (first is not None and first < since) else since
        counts["feedback"] += session.execute(delete(Feedback).where(Feedback.interaction_id.in_(chunk))
                                              .execution_options(synchronize_session=False)).rowcount
        counts["interactions"] += session.execute(delete(Interaction).where(Interaction.id.in_(chunk))
                                                  .execution_options(synchronize_session=False)).rowcount
    if since is not None:
        counts["signal_quotes"] = _scrub_signals(session, quoted, since, selector)
    lines = _concerned_log_lines(session, ids, selector)
    for start in range(0, len(lines), BATCH):
        counts["job_logs"] += session.execute(delete(JobLog).where(JobLog.id.in_(lines[start:start + BATCH]))
                                              .execution_options(synchronize_session=False)).rowcount
    return counts


def _scrub_signals(session: Session, questions: set[str], since: datetime, selector: Selector | None) -> int:
    """Replace by ``[erased]``, in the failure signals of the interactions logged since ``since``, every reason that
    quotes an erased question (the rephrase detector quotes the first 120 characters of the earlier question, in
    double quotes) or contains the selector's text; returns how many interactions changed."""
    quotes = {f'"{question[:120]}"' for question in questions if question}

    def erased(reason: str) -> bool:
        return any(quote in reason for quote in quotes) or (selector is not None and selector.matches(reason))

    changed = 0
    for row_id, signals in list(_scan(session, select(Interaction.id, Interaction.signals)
                                      .where(Interaction.created_at >= since))):
        clean = [{**signal, "reason": ERASED} if erased(str(signal.get("reason", ""))) else signal
                 for signal in signals or []]
        if clean != (signals or []):
            session.execute(update(Interaction).where(Interaction.id == row_id).values(signals=clean)
                            .execution_options(synchronize_session=False))
            changed += 1
    return changed


def left_in_log(session: Session, selector: Selector, ids: set[str], example_ids: set[str]) -> dict[str, int]:
    """What of the named rows is still in the log, by kind (counts only, never content)."""
    left: dict[str, int] = {}
    for chunk in _chunks(ids):
        left["interactions"] = left.get("interactions", 0) + len(
            session.scalars(select(Interaction.id).where(Interaction.id.in_(chunk))).all())
        left["feedback"] = left.get("feedback", 0) + len(
            session.scalars(select(Feedback.id).where(Feedback.interaction_id.in_(chunk))).all())
    examples = {e for chunk in _chunks(ids) for e in session.scalars(
        select(Example.id).where(Example.interaction_id.in_(chunk)))}
    examples |= {e for chunk in _chunks(example_ids) for e in session.scalars(
        select(Example.id).where(Example.id.in_(chunk)))}
    left["examples"] = len(examples)
    left["job_logs"] = len(_concerned_log_lines(session, ids, selector))
    if selector.kind == "matching":
        left["signal_quotes"] = sum(any(selector.matches(str(s.get("reason", ""))) for s in signals or [])
                                    for _, signals in _scan(session, select(Interaction.id, Interaction.signals)))
    return left
