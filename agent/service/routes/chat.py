"""OpenAI's chat API: ``/v1/models`` and ``/v1/chat/completions``, answered whole or streamed as server-sent events."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from typing import Callable, Iterator

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from affinage.core.chat_model import ContextOverflowError, ModelBusyError
from affinage.core.settings import Settings
from agent.pipeline import MAX_HISTORY_TURNS, Answer, SupportAgent, model_version
from agent.service.deps import AgentCaller, AgentDep, LimitsDep, MetricsDep, SettingsDep
from agent.service.errors import APIError, error_body
from agent.service.limits import BUSY_RETRY_AFTER_S, Limits, prompt_tokens
from agent.service.observability import Metrics
from agent.service.schemas import ChatRequest

log = logging.getLogger("affinage.service")
DEFAULT_MODEL = "default"
router = APIRouter(tags=["openai"])


@router.get("/v1/models")
def list_models(_: AgentCaller, agent: AgentDep, request: Request) -> dict:
    ids = [DEFAULT_MODEL, *agent.served_versions()]  # the canary's version too, while one is served
    created = int(request.app.state.started)
    return {"object": "list",
            "data": [{"id": i, "object": "model", "created": created, "owned_by": "affinage"} for i in ids]}


def parse_chat(body: ChatRequest, settings: Settings, served: list[str]) -> tuple[str, list[BaseMessage], int | None]:
    """The question, the history before it and the token limit, or a 4xx for a request that cannot be answered;
    ``served`` are the versions a request may name (``/v1/models``)."""
    if body.model not in (None, DEFAULT_MODEL, *served):
        raise APIError(404, f"model {body.model!r} does not exist; GET /v1/models lists them", "model_not_found", "model")
    if body.n is not None and body.n > 1:
        raise APIError(400, f"n is {body.n}; affinage answers with one choice, so n must be 1", "n_not_supported",
                       "n")
    turns = [m for m in body.messages if m.role in ("user", "assistant")]  # the system prompt is ours
    if not turns or turns[-1].role != "user":
        raise APIError(400, "the last message must come from the user", "invalid_messages", "messages")
    for i, message in enumerate(body.messages):
        if len(message.text()) > settings.max_message_chars:
            raise APIError(400, f"message {i} has {len(message.text())} characters; the limit is "
                           f"{settings.max_message_chars}", "message_too_long", f"messages.{i}.content")
    question = turns[-1].text().strip()
    if not question:
        raise APIError(400, "the last user message is empty", "empty_message", "messages")
    history = [HumanMessage(m.text()) if m.role == "user" else AIMessage(m.text()) for m in turns[:-1]]
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None and max_tokens > settings.max_tokens_limit:
        raise APIError(400, f"max_tokens is {max_tokens}; the limit is {settings.max_tokens_limit}",
                       "max_tokens_too_large", "max_tokens")
    return question, history, max_tokens


async def admit(limits: Limits, metrics: Metrics, key: str, messages: list, count: Callable | None) -> int:
    """Take the key's slot in flight (first: a refused request costs no budget), one request and the prompt's tokens
    from its budgets, and a place in the queue; returns the tokens charged. A refusal gives back what was taken."""

    def take(reason: str, step: Callable[[], None]) -> None:
        try:
            step()
        except APIError:
            metrics.rejected.labels(reason).inc()
            raise

    take("in_flight", lambda: limits.in_flight.enter(key))
    try:
        take("rate_limit", lambda: limits.rate.check(key))
        tokens = await run_in_threadpool(prompt_tokens, messages, count)
        take("prompt_tokens", lambda: limits.prompt_budget.charge(key, tokens))
        try:
            take("queue_full", limits.queue.enter)
        except APIError:
            limits.prompt_budget.refund(key, tokens)
            raise
    except BaseException:
        limits.in_flight.leave(key)
        raise
    metrics.queue_depth.set(limits.queue.depth)
    return tokens


def usage_of(result: Answer) -> dict:
    prompt = int(result.usage.get("input_tokens") or 0)
    completion = int(result.usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_extras(result: Answer) -> dict:
    return {"interaction_id": result.interaction_id, "citations": result.citations, "model_version": result.model}


def first_item(stream: Iterator) -> object:
    """Run the pipeline up to the first token, so that bad input still gets a 4xx before streaming starts."""
    try:
        return next(stream)
    except ContextOverflowError as error:
        raise APIError(400, str(error), "context_length_exceeded", "messages") from None


class Generation:
    """One admitted request's answer: the pipeline's stream, the slots it holds and what it adds to the metrics."""

    def __init__(self, agent: SupportAgent, limits: Limits, metrics: Metrics, key: str, stream: Iterator,
                 model: str | None = None):
        self.agent, self.limits, self.metrics, self.key, self.stream = agent, limits, metrics, key, stream
        self.model = model or agent.model_version  # the version answering, as the stream's chunks name it
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.begun = time.perf_counter()
        self._once = threading.Lock()

    def release(self) -> None:
        """Stop generating (if still running) and give the slots back, once however many paths call it."""
        if not self._once.acquire(blocking=False):
            return
        self.stream.close()
        self.limits.queue.leave()
        self.limits.in_flight.leave(self.key)
        self.metrics.queue_depth.set(self.limits.queue.depth)

    async def start(self, tokens: int) -> object:
        """The first piece of the answer; a request refused before the model read its prompt gets its tokens back."""
        try:
            first = await run_in_threadpool(first_item, self.stream)
        except (ModelBusyError, APIError) as error:
            self.release()
            self.limits.prompt_budget.refund(self.key, tokens)
            if isinstance(error, APIError):  # the prompt does not fit the model's context
                raise
            self.metrics.rejected.labels("queue_timeout").inc()
            raise APIError(503, f"{error}; retry shortly", "queue_timeout",
                           headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}) from None
        except BaseException:
            self.release()
            raise
        self.metrics.ttft.observe(time.perf_counter() - self.begun)
        return first

    def finish(self, result: Answer) -> None:
        self.metrics.generation.observe(time.perf_counter() - self.begun)
        self.metrics.tokens.inc(usage_of(result)["completion_tokens"])

    async def whole(self, request: Request, first: object) -> dict:
        """The answer as one completion; a client that hangs up first stops the generation (499, nothing logged)."""
        gone = asyncio.Event()

        async def watch() -> None:
            """Wait for the client to hang up: ``request.is_disconnected()`` never sees it through the http
            middleware's receive, so listen the way StreamingResponse does."""
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
        try:
            result = first if isinstance(first, Answer) else None
            while result is None and not gone.is_set():  # nobody will read the answer: stop making it
                item = await run_in_threadpool(next, self.stream)
                result = item if isinstance(item, Answer) else None
        finally:
            watcher.cancel()
            self.release()
        if result is None:
            log.info("client went away; generation stopped", extra={"completion_id": self.id, "caller": self.key})
            raise APIError(499, "the client closed the connection before the answer was ready", "client_closed_request")
        self.finish(result)
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": result.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": usage_of(result),
            "affinage": completion_extras(result),
        }

    def chunk(self, delta: dict, finish_reason: str | None = None, **extra) -> str:
        payload = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                   "model": self.model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def events(self, first: object):
        """The answer as server-sent events, ending with usage and ``[DONE]``."""
        try:
            yield self.chunk({"role": "assistant", "content": ""})
            item = first
            while not isinstance(item, Answer):
                yield self.chunk({"content": item})
                item = await run_in_threadpool(next, self.stream)
            self.finish(item)
            yield self.chunk({}, item.finish_reason, usage=usage_of(item), affinage=completion_extras(item))
            yield "data: [DONE]\n\n"
        except Exception:  # headers are sent: the client learns of the failure in-stream, as OpenAI does
            log.exception("generation failed mid-stream", extra={"completion_id": self.id})
            yield f"data: {json.dumps(error_body(500, 'generation failed; the answer is incomplete', 'generation_failed'))}\n\n"
        finally:
            with anyio.CancelScope(shield=True):  # a client that hangs up cancels this task: still give back
                await run_in_threadpool(self.release)


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request, who: AgentCaller, settings: SettingsDep,
                           agent: AgentDep, limits: LimitsDep, metrics: MetricsDep):
    """Admit the request past the key's limits (requests in flight, requests and prompt tokens per minute) and the
    queue, then answer, whole or streamed; a request that waits past ``queue_timeout_seconds`` for the model gets
    503, and, like one refused by the queue or too long for the context, its prompt tokens are refunded.

    When the client goes away, generation stops (a non-streamed request notices at the next piece of the answer)
    and the interaction is not logged: the log holds answers that were delivered, and an abandoned one logged as
    answered would feed the failure detectors and training with an answer nobody read."""
    question, history, max_tokens = parse_chat(body, settings, agent.served_versions())
    key = who.name
    messages = [*history[-2 * MAX_HISTORY_TURNS:], HumanMessage(question)]  # what the pipeline sends the model
    tokens = await admit(limits, metrics, key, messages, getattr(agent.llm, "count_tokens", None))
    choice = agent.choose(body.conversation_id, body.model)  # the version named, else the conversation's arm
    generation = Generation(agent, limits, metrics, key, agent.stream(
        question, history, channel="api", user=key, customer=body.user, conversation_id=body.conversation_id,
        max_tokens=max_tokens, temperature=body.temperature, choice=choice), model_version(choice[0]))
    first = await generation.start(tokens)
    if not body.stream:
        return await generation.whole(request, first)
    # A hang-up cancels the response, which can leave events() suspended at a yield until the garbage collector
    # closes it: the response's background task gives the slots back when it ends, whatever ended it.
    return StreamingResponse(generation.events(first), media_type="text/event-stream",
                             background=BackgroundTask(generation.release),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
