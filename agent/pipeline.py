"""The answering pipeline: retrieve → extract → pick few-shot examples → prompt → generate, as one LCEL runnable.

The runnable maps ``{"question", "history", "max_tokens"?}`` to
``{"retrieved", "docs", "quotes", "examples", "verified", "abstained", "answer"}`` and streams: the first chunks
carry the retrieved passages, later chunks the answer as it is generated. ``docs`` are the retrieved passages
confident enough to answer from; ``quotes`` their sentences closest to the question, screened
(``affinage.core.extraction``): the model reads only those. No quote close enough means abstain. An
operator-approved correction for (nearly) the same question is reused verbatim (``verified``), the cheapest remedy
there is. ``SupportAgent`` adds validation, the quotes after a generated answer (verbatim and cited, so that the
fact reaches the customer even when the small model's own sentence drops it) and the log.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Iterator

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import (
    Runnable,
    RunnableBranch,
    RunnableLambda,
    RunnablePassthrough,
)
from sqlalchemy import select

from affinage.core import prompts
from affinage.core.extraction import select_quotes
from affinage.core.links import allowed_domains
from affinage.core.prompts import (
    ABSTAIN_MESSAGE,
    PROMPT_VERSION,
    generated_part,
    passage_embedder,
    quote_block,
    quote_context,
    support_prompt,
)
from affinage.core.settings import Settings
from affinage.core.store import Store
from affinage.core.tables import Example, Interaction
from affinage.core.timeutil import utcnow
from agent.arms import ArmRouter, Choice, choose, model_version, served_versions
from agent.detectors import DetectorConfig, InteractionView, detect_all
from agent.example_bank import ExampleBank
from agent.link_guard import OutputGuard

MAX_HISTORY_TURNS = 3


def build_chain(retriever: BaseRetriever, examples: ExampleBank | None, llm: BaseChatModel, settings: Settings) -> Runnable:
    """The quote screen admits a linking sentence only to a domain the operator listed in ``allowed_link_domains``,
    never by the knowledge-base default: a poisoned page would otherwise vouch for its own planted link (the
    injection bench plants them in ingested pages)."""
    embed = passage_embedder(retriever)  # picks the passage sentences the model reads and the answer quotes

    def confident(docs: list[Document]) -> list[Document]:
        """Passages good enough to answer from: above min_score and close to the best one."""
        best = max((d.metadata["score"] for d in docs), default=0.0)
        floor = max(settings.min_score, best - settings.score_margin)
        return [d for d in docs if d.metadata["score"] >= floor]

    def quotes(state: dict) -> list:
        return select_quotes(state["question"], state["docs"], embed, settings.quote_sentences,
                             settings.quote_min_similarity, tuple(settings.allowed_link_domains or ()))

    def shots(state: dict) -> list[BaseMessage]:
        messages: list[BaseMessage] = []
        for example, _ in state["examples"]:
            messages += [HumanMessage(f"Question: {example.question}"), AIMessage(example.answer)]
        return messages

    def prompt_inputs(state: dict) -> dict:
        return {
            "context": quote_context([quote.sentence for quote in state["quotes"]]),
            "question": state["question"],
            "shots": shots(state),
            "history": [AIMessage(generated_part(m.content)) if isinstance(m, AIMessage) else m  # its own words
                        for m in list(state.get("history") or [])[-2 * MAX_HISTORY_TURNS:]],
        }

    pick_examples = RunnableLambda(
        lambda state: examples.select(state["question"], settings.few_shot_k, settings.few_shot_min_score) if examples else []
    )

    def answer_with(state: dict) -> Runnable:
        options = {k: state[k] for k in ("max_tokens", "temperature") if state.get(k) is not None}
        chosen = state.get("llm") or llm  # the conversation's arm, while a canary is served
        model = chosen.bind(**options) if options else chosen
        return RunnableLambda(prompt_inputs) | support_prompt() | model

    def verified(state: dict) -> Example | None:
        """An operator-approved correction for (nearly) this very question: answer with it verbatim."""
        for example, score in state["examples"]:
            if example.origin == "correction" and score >= settings.verified_answer_min_score:
                return example
        return None

    generate = RunnablePassthrough.assign(answer=RunnableLambda(answer_with))
    abstain = RunnablePassthrough.assign(answer=RunnableLambda(lambda _: AIMessage(ABSTAIN_MESSAGE)))
    reuse = RunnablePassthrough.assign(answer=RunnableLambda(lambda state: AIMessage(state["verified"].answer)))
    return (
        RunnablePassthrough.assign(retrieved=(lambda state: state["question"]) | retriever)
        | RunnablePassthrough.assign(docs=lambda state: confident(state["retrieved"]))
        | RunnablePassthrough.assign(quotes=quotes)
        | RunnablePassthrough.assign(examples=pick_examples)
        | RunnablePassthrough.assign(verified=verified)
        | RunnablePassthrough.assign(abstained=lambda state: not state["quotes"] and state["verified"] is None)
        | RunnableBranch((lambda state: state["verified"] is not None, reuse),
                         (lambda state: state["abstained"], abstain), generate)
    )


@dataclass
class Answer:
    answer: str
    citations: list[dict]
    model: str
    abstained: bool
    latency_s: float
    interaction_id: str | None = None
    usage: dict = field(default_factory=dict)
    finish_reason: str = "stop"  # OpenAI's: stop | length | content_filter (an output guard changed the answer)
    generated: str = ""  # the model's own words before the output guards: what the gates judge the model by

    def to_json(self) -> dict:
        return {"answer": self.answer, "citations": self.citations, "interaction_id": self.interaction_id, "model": self.model}


def cited_first(answer: str, docs: list[Document], sources: tuple[str, ...] = ()) -> list[Document]:
    """Passages the answer names (by ``[n]`` or by source) or that ``sources`` lists first, then the rest in order."""
    named = set(int(n) - 1 for n in re.findall(r"\[(\d+)\]", answer))
    named |= {i for i, doc in enumerate(docs) if doc.metadata["source"] in answer or doc.metadata["source"] in sources}
    return [docs[i] for i in sorted(named) if i < len(docs)] + [d for i, d in enumerate(docs) if i not in named]


def quotes_after(state: dict, message: AIMessageChunk | AIMessage | None) -> str:
    """The quote block that follows a generated answer ("" after an abstention or a verified answer). Added by
    ``SupportAgent.stream``, not as a chain step after the model: such a step kept generating after a client left."""
    if not state.get("quotes") or message is None or state.get("verified") is not None:
        return ""
    block = quote_block(state["quotes"])
    return f"\n\n{block}" if str(message.content).strip() else block


def weak_retrieval_threshold(min_score: float) -> float:
    """Flag knowledge gaps a little above the abstain threshold (borderline answers that were attempted too); the
    detector needs a threshold in (0, 1], which a min_score at or below -0.1 (always answer) would not give."""
    return min(1.0, max(0.05, min_score + 0.1))


class SupportAgent:
    """Answers questions with the chain and logs every answer. ``link_domains``: the link policy in force (the factory
    resolves it against the index: ``affinage.core.links.allowed_domains``); by default the setting, or no links."""

    watcher = None  # follows registry promotions when the model is local (set by the factory)
    router: ArmRouter | None = None  # picks each conversation's model while a canary runs (the factory: the watcher)

    def __init__(self, settings: Settings, retriever: BaseRetriever, llm: BaseChatModel, store: Store,
                 examples: ExampleBank | None = None, link_domains: tuple[str, ...] | None = None):
        self.settings = settings
        self.link_domains = allowed_domains(settings.allowed_link_domains, ()) if link_domains is None else link_domains
        self.retriever = retriever
        self.llm = llm
        self.store = store
        self.examples = examples
        self.chain = build_chain(retriever, examples, llm, settings)
        self.detectors = DetectorConfig(retrieval_threshold=weak_retrieval_threshold(settings.min_score))

    def _earlier_questions(self, user: str | None, customer: str | None = None) -> list[tuple[str, float]]:
        """The same user's recent questions, for the rephrase detector; the same customer's when one is named, since
        one key (the web chat's) serves many customers, and the signal quotes the earlier question."""
        if user is None:
            return []
        since = utcnow() - timedelta(seconds=self.detectors.rephrase_window_s)
        same = [Interaction.user == user, Interaction.created_at >= since]
        if customer:
            same.append(Interaction.customer == customer)
        with self.store.session() as session:
            rows = session.execute(
                select(Interaction.question, Interaction.created_at)
                .where(*same)
                .order_by(Interaction.created_at.desc()).limit(20)
            ).all()
        return [(q, at.timestamp()) for q, at in rows]  # the column reads back in UTC

    @property
    def model_version(self) -> str:
        return model_version(self.llm)

    def served_versions(self) -> list[str]:
        return served_versions(self.router, self.llm)

    def choose(self, conversation_id: str | None = None, model: str | None = None) -> Choice:
        return choose(self.router, self.llm, conversation_id, model)

    def ask(self, question: str, history: list[BaseMessage] | None = None, **log_fields) -> Answer:
        answer = None
        for item in self.stream(question, history, **log_fields):
            answer = item
        return answer

    def stream(self, question: str, history: list[BaseMessage] | None = None, *, log: bool = True,
               channel: str = "cli", user: str | None = None, conversation_id: str | None = None,
               max_tokens: int | None = None, temperature: float | None = None,
               customer: str | None = None, choice: Choice | None = None) -> Iterator[str | Answer]:
        """Yield the answer text in pieces as it is generated, then the finished ``Answer``.

        ``user`` is the API key that asked; ``customer`` the end customer the client named (OpenAI's ``user``), kept
        on the interaction so that ``affinage forget --customer`` can find their data. ``choice`` is the model and arm
        to answer with (``choose``); by default, the conversation's."""
        question = validate_question(question)
        customer = (customer or "").strip() or None
        started = time.perf_counter()
        state: dict = {}
        message: AIMessageChunk | AIMessage | None = None
        guard = OutputGuard(prompts.SYSTEM_PROMPT, question, self.link_domains)
        llm, arm = choice or self.choose(conversation_id)
        chunks = self.chain.stream({"question": question, "history": history or [], "max_tokens": max_tokens,
                                    "temperature": temperature, "llm": llm})
        for chunk in chunks:
            piece = chunk.get("answer")
            state.update({k: v for k, v in chunk.items() if k != "answer"})
            if piece is None:
                continue
            message = piece if message is None else message + piece
            shown = guard.feed(piece.content) if piece.content else ""
            if shown:
                yield shown
            if guard.leaked:
                chunks.close()  # stop generating: nothing more of this answer will be shown
                break
        tail = "" if guard.leaked else quotes_after(state, message)
        for shown in (guard.feed(tail) if tail else "", guard.finish()):
            if shown:
                yield shown
        latency = time.perf_counter() - started
        text = guard.shown.strip()
        docs = state.get("docs", [])
        citations = [
            {"source": d.metadata["source"], "score": round(float(d.metadata["score"]), 4), "text": d.page_content}
            for d in cited_first(generated_part(text), docs, (state["verified"].source,) if state.get("verified") else ())
        ]
        usage = dict(getattr(message, "usage_metadata", None) or {})
        metadata = getattr(message, "response_metadata", None) or {}
        answered_by = metadata.get("model_name") or model_version(llm)
        finish = "content_filter" if guard.removed else metadata.get("finish_reason") or "stop"
        result = Answer(text, citations, answered_by, bool(state.get("abstained")), latency, usage=usage,
                        finish_reason=finish, generated=message.content if message is not None else "")
        if log:
            view = InteractionView(
                question=question, answer=generated_part(text), created_at=time.time(),
                retrieved_scores=[float(d.metadata["score"]) for d in state.get("retrieved", [])],
                passages=[d.page_content for d in docs],
                earlier_questions=self._earlier_questions(user, customer), guarded=guard.removed,
            )
            row = self.store.add(Interaction(
                question=question,
                answer=text,
                retrieved=[{"chunk_id": d.metadata.get("chunk_id"), "source": d.metadata["source"],
                            "score": float(d.metadata["score"])} for d in state.get("retrieved", [])],
                citations=[{"source": c["source"], "score": c["score"]} for c in citations],
                examples=[e.id for e, _ in state.get("examples", [])],
                abstained=result.abstained,
                signals=[asdict(signal) for signal in detect_all(view, self.detectors)],
                prompt_version=PROMPT_VERSION,
                model_version=result.model,
                latency_s=latency,
                prompt_tokens=usage.get("input_tokens"),
                completion_tokens=usage.get("output_tokens"),
                channel=channel,
                user=user,
                conversation_id=conversation_id,
                customer=customer,
                arm=arm,
            ))
            result.interaction_id = row.id
        yield result


def validate_question(question: str) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError("the question is empty")
    return question.strip()
