"""The teacher: a chat model that writes grounded answers and paraphrases for training data."""

from __future__ import annotations

import re

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage, SystemMessage

from affinage.core.chat_model import load_chat_model
from affinage.core.settings import Settings

ANSWER_SYSTEM = (
    "You write the ideal reply of a customer support assistant. Use only the facts in the passages. "
    "Reply in one to three sentences with the exact steps, names and numbers from the passages."
)
PARAPHRASE_SYSTEM = "You rewrite customer questions. Keep the meaning; change the wording."
QUESTION_SYSTEM = ("You write questions customers ask a support team. Given one sentence from the help pages, write "
                   "one question, in a customer's own words, that the sentence answers.")


class TeacherError(RuntimeError):
    """The teacher could not be reached or answered with nothing usable."""


def load_teacher(settings: Settings, local: BaseChatModel) -> BaseChatModel:
    """The configured teacher; ``local`` (the already loaded chat model) when it is 'local'."""
    if settings.teacher_model == "local" and not settings.teacher_base_url:
        return local
    overrides = {"chat_model": settings.chat_model if settings.teacher_model == "local" else settings.teacher_model,
                 "openai_base_url": settings.teacher_base_url, "openai_api_key": settings.teacher_api_key}
    return load_chat_model(settings.model_copy(update=overrides))


def _ask(teacher: BaseChatModel, system: str, prompt: str) -> str:
    try:
        text = teacher.invoke([SystemMessage(system), HumanMessage(prompt)]).content
    except Exception as error:  # a remote teacher may fail in any way; the caller skips and counts it
        raise TeacherError(f"teacher failed: {type(error).__name__}: {str(error)[:200]}") from error
    if not isinstance(text, str) or not text.strip():
        raise TeacherError("teacher returned an empty reply")
    return text.strip()


def grounded_answer(teacher: BaseChatModel, question: str, passages: list[str]) -> str:
    context = "\n\n".join(f"[{i}] {p}" for i, p in enumerate(passages, start=1))
    return _ask(teacher, ANSWER_SYSTEM, f"Passages:\n{context}\n\nCustomer question: {question}\n\nReply:")


_NUMBERING = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")


def paraphrase(teacher: BaseChatModel, question: str, n: int) -> list[str]:
    """Up to ``n`` distinct rewordings, one per line of the teacher's reply; the original is never repeated."""
    if n <= 0:
        return []
    reply = _ask(teacher, PARAPHRASE_SYSTEM,
                 f"Rewrite this customer question in {n} different ways, one per line, nothing else:\n{question}")
    seen = {question.strip().lower()}
    out = []
    for line in reply.splitlines():
        line = _NUMBERING.sub("", line).strip().strip('"')
        if line and line.lower() not in seen:
            seen.add(line.lower())
            out.append(line)
    return out[:n]


def question_for(teacher: BaseChatModel, sentence: str) -> str:
    """One customer question the knowledge-base ``sentence`` answers (for the workspace's golden set): the first
    line of the reply that is a question of at least three words."""
    reply = _ask(teacher, QUESTION_SYSTEM, f"Sentence: {sentence}\n\nQuestion:")
    for line in reply.splitlines():
        line = _NUMBERING.sub("", line).strip().strip('"')
        if line.endswith("?") and len(line.split()) >= 3 and line.lower() != sentence.lower():
            return line
    raise TeacherError(f"teacher wrote no question for the sentence: {reply[:120]!r}")
