"""The plain-text triage report, for a person reading a terminal; ``Topic.to_json`` serves machines."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from agent.triage.remedies import REMEDIES
from agent.triage.topics import Topic

REMEDY_TITLES = {"knowledge_gap": "knowledge gap", "prompt_retrieval": "prompt/retrieval", "behaviour": "behaviour"}


def render_text(topics: Sequence[Topic], max_doc_questions: int = 20) -> str:
    """A plain-text report: one block per topic with its remedy, reason, examples and, for gaps, the questions."""
    if not topics:
        return "No failures to triage.\n"
    total = sum(t.count for t in topics)
    remedies = Counter(t.remedy for t in topics)
    summary = ", ".join(f"{remedies[r]} {REMEDY_TITLES[r]}" for r in REMEDIES if remedies[r])
    lines = [f"{len(topics)} topic(s) from {total} failure(s): {summary}", ""]
    for topic in topics:
        lines.extend(_topic_block(topic, max_doc_questions))
    return "\n".join(lines)


def _topic_block(topic: Topic, max_doc_questions: int) -> list[str]:
    users = f"{topic.users} user{'s' if topic.users != 1 else ''}"
    lines = [f"#{topic.id} {topic.label} — {topic.count} failure{'s' if topic.count != 1 else ''}, {users}",
             f"  remedy: {REMEDY_TITLES.get(topic.remedy, topic.remedy)} — {topic.why}"]
    if topic.signal_counts:
        lines.append("  signals: " + ", ".join(f"{k} {n}" for k, n in topic.signal_counts.items()))
    if topic.top_sources:
        lines.append("  sources: " + ", ".join(f"{s} ({n})" for s, n in topic.top_sources))
    lines.append("  examples:")
    lines.extend(f"    - {q}" for q in topic.examples)
    if topic.doc_questions:
        lines.append("  questions for the documentation team:")
        lines.extend(f"    - {q}" for q in topic.doc_questions[:max_doc_questions])
        if len(topic.doc_questions) > max_doc_questions:
            lines.append(f"    … and {len(topic.doc_questions) - max_doc_questions} more (see --json)")
    lines.append("")
    return lines
