"""The FastAPI app: OpenAI-compatible chat, feedback, keys, health, metrics and the web chat page."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Iterator, Literal

import anyio
import fastapi_offline
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from affinage.core.settings import Settings
from affinage.core.chat_model import ContextOverflowError, ModelBusyError
from agent.corrections import UnknownCorrection, correction_info, pending_corrections, review_correction
from agent.feedback import NotYourInteraction, UnknownInteraction, record_feedback
from agent.pipeline import MAX_HISTORY_TURNS, Answer, SupportAgent
from agent.service import auth
from agent.service.erasure_routes import erasure_routes
from agent.service.errors import APIError, error_body, error_response, install_error_handlers
from agent.service.limits import (
    BUSY_RETRY_AFTER_S,
    BodySizeLimit,
    GenerationQueue,
    KeyConcurrency,
    RateLimiter,
    TokenBudget,
    prompt_tokens,
)
from agent.service.observability import Metrics
from agent.service.operator import operator_routes
from agent.service.schemas import (
    ChatRequest,
    CorrectionInfo,
    CreatedKey,
    FeedbackRequest,
    FeedbackResponse,
    KeyInfo,
    KeyRequest,
    ReviewResult,
)
from tuning.report import REPORT_STYLE_HASH

log = logging.getLogger("affinage.service")
STATIC = Path(__file__).parent / "static"
DEFAULT_MODEL = "default"
# The console shows gate reports in a sandboxed srcdoc frame, which inherits this policy: their plots are data:
# images and their one stylesheet is allowed by hash.
OPERATOR_CSP = (f"default-src 'self'; img-src 'self' data:; style-src 'self' {REPORT_STYLE_HASH}; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
# Metric labels come from closed sets, so no client can grow /metrics: HTTP's methods, else "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_LOGGED_PATH = 200

# Swagger UI styles its elements inline; the rest of its page is ours.
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'self'")
SWAGGER_ASSETS = Path(fastapi_offline.__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def method_label(method: str) -> str:
    return method if method in HTTP_METHODS else "other"


def create_app(settings: Settings, agent: SupportAgent | None = None) -> FastAPI:
    """Build the app around one agent (built from the settings when not given)."""
    if agent is None:
        from affinage.factory import build_agent

        agent = build_agent(settings)
    store = agent.store
    metrics = Metrics()
    limiter = RateLimiter(settings.rate_limit_per_minute)
    prompt_budget = TokenBudget(settings.prompt_tokens_per_minute)
    in_flight = KeyConcurrency(settings.max_in_flight_per_key)
    feedback_limiter = RateLimiter(settings.feedback_per_minute)
    queue = GenerationQueue(settings.max_queue)
    started = time.time()

    @asynccontextmanager
    async def follow_promotions(_: FastAPI):
        """Promotions and rollbacks reach the running service without a restart."""
        if agent.watcher:
            agent.watcher.start()
        yield
        if agent.watcher:
            agent.watcher.stop()

    app = FastAPI(title="affinage", version="0.1.0", lifespan=follow_promotions, docs_url=None, redoc_url=None,
                  description="A support assistant with an OpenAI-compatible API.")
    app.state.agent, app.state.metrics, app.state.queue = agent, metrics, queue
    install_error_handlers(app)

    # --- dependencies: one place for who may call what -------------------------------------------
    def caller(request: Request) -> auth.Caller:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key",
                           headers={"WWW-Authenticate": "Bearer"})
        found = auth.authenticate(store, key.strip())
        if found is None:
            raise APIError(401, "invalid API key", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        request.state.caller = found.name
        return found

    def require(role: str):
        def check(who: auth.Caller = Depends(caller)) -> auth.Caller:
            if not who.can(role):
                raise APIError(403, f"this needs the {role} role; key {who.name!r} has {who.role}", "insufficient_role")
            return who
        return check

    # --- middleware: body size (inside, so its 413s are observed too), metrics, access log ---------------
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        """Count, time and log every request, and answer any exception that escapes a route with a 500 in OpenAI's
        shape here, inside the counting, rather than as Starlette's plain-text page that nothing records."""
        begun = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:
            log.exception("unhandled error", extra={"method": method_label(request.method),
                                                    "path": request.url.path[:MAX_LOGGED_PATH]})
            response = error_response(500, "internal error; it was logged", "internal_error")
        for name, value in SECURITY_HEADERS.items():  # a route may set a stricter or wider CSP of its own
            response.headers.setdefault(name, value)
        elapsed = time.perf_counter() - begun
        label = getattr(request.scope.get("route"), "path", "other")  # a route's template: a closed set
        method = method_label(request.method)
        metrics.requests.labels(label, method, str(response.status_code)).inc()
        metrics.latency.labels(label).observe(elapsed)
        log.info("request", extra={"method": method, "path": request.url.path[:MAX_LOGGED_PATH],
                                   "status": response.status_code, "duration_s": round(elapsed, 4),
                                   "caller": getattr(request.state, "caller", None)})
        return response

    # --- chat ------------------------------------------------------------------------------------------
    def model_ids() -> list[str]:
        return [agent.model_version]

    @app.get("/v1/models", tags=["openai"])
    def list_models(_: auth.Caller = Depends(require("agent"))) -> dict:
        ids = [DEFAULT_MODEL, *model_ids()]
        return {"object": "list",
                "data": [{"id": i, "object": "model", "created": int(started), "owned_by": "affinage"} for i in ids]}

    def parse_chat(body: ChatRequest) -> tuple[str, list[BaseMessage], int | None]:
        if body.model not in (None, DEFAULT_MODEL, *model_ids()):
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

    def completion_extras(result: Answer) -> dict:
        return {"interaction_id": result.interaction_id, "citations": result.citations, "model_version": result.model}

    def usage_of(result: Answer) -> dict:
        prompt = int(result.usage.get("input_tokens") or 0)
        completion = int(result.usage.get("output_tokens") or 0)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def first_item(stream: Iterator) -> object:
        """Run the pipeline up to the first token, so that bad input still gets a 4xx before streaming starts."""
        try:
            return next(stream)
        except ContextOverflowError as error:
            raise APIError(400, str(error), "context_length_exceeded", "messages") from None

    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(body: ChatRequest, request: Request, who: auth.Caller = Depends(require("agent"))):
        """Admit the request past the key's limits (requests in flight, requests and prompt tokens per minute) and the
        queue, then answer, whole or streamed; a request that waits past ``queue_timeout_seconds`` for the model gets
        503, and, like one refused by the queue or too long for the context, its prompt tokens are refunded.

        When the client goes away, generation stops (a non-streamed request notices at the next piece of the answer)
        and the interaction is not logged: the log holds answers that were delivered, and an abandoned one logged as
        answered would feed the failure detectors and training with an answer nobody read."""
        question, history, max_tokens = parse_chat(body)
        key = who.name

        def admit(reason: str, take) -> None:
            try:
                take()
            except APIError:
                metrics.rejected.labels(reason).inc()
                raise

        admit("in_flight", lambda: in_flight.enter(key))  # first: a refused request costs no budget
        try:
            admit("rate_limit", lambda: limiter.check(key))
            messages = [*history[-2 * MAX_HISTORY_TURNS:], HumanMessage(question)]  # what the pipeline sends the model
            tokens = await run_in_threadpool(prompt_tokens, messages, getattr(agent.llm, "count_tokens", None))
            admit("prompt_tokens", lambda: prompt_budget.charge(key, tokens))
            try:
                admit("queue_full", queue.enter)
            except APIError:
                prompt_budget.refund(key, tokens)
                raise
        except BaseException:
            in_flight.leave(key)
            raise
        metrics.queue_depth.set(queue.depth)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        begun = time.perf_counter()
        stream = agent.stream(question, history, channel="api", user=key, customer=body.user,
                              conversation_id=body.conversation_id, max_tokens=max_tokens, temperature=body.temperature)
        once = threading.Lock()

        def release() -> None:
            """Stop generating (if still running) and give the slots back, once however many paths call it."""
            if not once.acquire(blocking=False):
                return
            stream.close()
            queue.leave()
            in_flight.leave(key)
            metrics.queue_depth.set(queue.depth)

        try:
            first = await run_in_threadpool(first_item, stream)
        except (ModelBusyError, APIError) as error:  # refused before the model read the prompt: its tokens are refunded
            release()
            prompt_budget.refund(key, tokens)
            if isinstance(error, APIError):  # the prompt does not fit the model's context
                raise
            metrics.rejected.labels("queue_timeout").inc()
            raise APIError(503, f"{error}; retry shortly", "queue_timeout",
                           headers={"Retry-After": str(BUSY_RETRY_AFTER_S)}) from None
        except BaseException:
            release()
            raise
        metrics.ttft.observe(time.perf_counter() - begun)

        def finish(result: Answer) -> None:
            metrics.generation.observe(time.perf_counter() - begun)
            metrics.tokens.inc(usage_of(result)["completion_tokens"])

        if not body.stream:
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
                    item = await run_in_threadpool(next, stream)
                    result = item if isinstance(item, Answer) else None
            finally:
                watcher.cancel()
                release()
            if result is None:
                log.info("client went away; generation stopped", extra={"completion_id": completion_id, "caller": key})
                raise APIError(499, "the client closed the connection before the answer was ready",
                               "client_closed_request")
            finish(result)
            return {
                "id": completion_id, "object": "chat.completion", "created": created, "model": result.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.answer},
                             "finish_reason": result.finish_reason, "logprobs": None}],
                "usage": usage_of(result),
                "affinage": completion_extras(result),
            }

        def chunk(delta: dict, finish_reason: str | None = None, **extra) -> str:
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": agent.model_version,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **extra}
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                item = first
                while not isinstance(item, Answer):
                    yield chunk({"content": item})
                    item = await run_in_threadpool(next, stream)
                finish(item)
                yield chunk({}, item.finish_reason, usage=usage_of(item), affinage=completion_extras(item))
                yield "data: [DONE]\n\n"
            except Exception:  # headers are sent: the client learns of the failure in-stream, as OpenAI does
                log.exception("generation failed mid-stream", extra={"completion_id": completion_id})
                yield f"data: {json.dumps(error_body(500, 'generation failed; the answer is incomplete', 'generation_failed'))}\n\n"
            finally:
                with anyio.CancelScope(shield=True):  # a client that hangs up cancels this task: still give back
                    await run_in_threadpool(release)

        # A hang-up cancels the response, which can leave events() suspended at a yield until the garbage collector
        # closes it: the response's background task gives the slots back when it ends, whatever ended it.
        return StreamingResponse(events(), media_type="text/event-stream", background=BackgroundTask(release),
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- feedback --------------------------------------------------------------------------------------
    @app.post("/api/feedback", status_code=201, response_model=FeedbackResponse, tags=["feedback"])
    def feedback(body: FeedbackRequest, who: auth.Caller = Depends(require("agent"))) -> FeedbackResponse:
        for field in ("correction", "comment"):
            value = getattr(body, field)
            if value is not None and not value.strip():
                raise APIError(400, f"{field} is empty", f"empty_{field}", field)
            if value is not None and len(value) > settings.max_message_chars:
                raise APIError(400, f"{field} has {len(value)} characters; the limit is {settings.max_message_chars}",
                               f"{field}_too_long", field)
        try:
            feedback_limiter.check(who.name)
        except APIError:
            metrics.rejected.labels("feedback_rate_limit").inc()
            raise
        try:
            row = record_feedback(store, body.interaction_id, body.rating, user=who.name,
                                  correction=body.correction.strip() if body.correction else None,
                                  comment=body.comment.strip() if body.comment else None,
                                  owner_only=not who.can("operator"))
        except UnknownInteraction as error:
            raise APIError(404, str(error), "interaction_not_found", "interaction_id") from None
        except NotYourInteraction as error:
            raise APIError(403, str(error), "not_your_interaction", "interaction_id") from None
        metrics.feedback.labels(body.rating, str(bool(body.correction)).lower()).inc()
        return FeedbackResponse(id=row.id, interaction_id=row.interaction_id, rating=row.rating)

    # --- operator: review corrections ----------------------------------------------------------------------
    @app.get("/api/operator/corrections", response_model=list[CorrectionInfo], tags=["operator"])
    def corrections(_: auth.Caller = Depends(require("operator"))) -> list[dict]:
        return [correction_info(f, i) for f, i in pending_corrections(store)]

    @app.post("/api/operator/corrections/{feedback_id}/{decision}", response_model=ReviewResult, tags=["operator"])
    def review(feedback_id: str, decision: Literal["approve", "reject"],
               who: auth.Caller = Depends(require("operator"))) -> dict:
        try:
            example = review_correction(store, feedback_id, decision == "approve", who.name)
        except UnknownCorrection as error:
            raise APIError(404, str(error), "correction_not_found", "feedback_id") from None
        except ValueError as error:
            raise APIError(409, str(error), "already_reviewed", "feedback_id") from None
        log.info("correction reviewed", extra={"feedback_id": feedback_id, "decision": decision, "by": who.name})
        return {"id": feedback_id, "review": "approved" if example else "rejected",
                "example_id": example.id if example else None}

    app.include_router(operator_routes(settings, store, agent.retriever.embeddings.encode, require))
    from affinage.erasure import Selector, check, forget  # the top layer's work, handed in: never imported above
    app.include_router(erasure_routes(settings, store, require, forget=forget, check=check, selector=Selector,
                                      bank=agent.examples))

    # --- keys (admin) ------------------------------------------------------------------------------------
    @app.get("/api/admin/keys", response_model=list[KeyInfo], tags=["admin"])
    def keys(_: auth.Caller = Depends(require("admin"))) -> list[dict]:
        return [auth.key_info(row) for row in auth.list_keys(store)]

    @app.post("/api/admin/keys", status_code=201, response_model=CreatedKey, tags=["admin"])
    def new_key(body: KeyRequest, who: auth.Caller = Depends(require("admin"))) -> dict:
        try:
            key, row = auth.issue_key(store, body.name, body.role)
        except auth.InvalidKey as error:
            raise APIError(400, str(error), f"invalid_key_{error.param}", error.param) from None
        except auth.KeyNameTaken as error:
            raise APIError(409, str(error), "key_exists", "name") from None
        log.info("key created", extra={"key_name": row.name, "role": row.role, "by": who.name})
        return {**auth.key_info(row), "key": key}

    @app.delete("/api/admin/keys/{name}", status_code=204, tags=["admin"])
    def delete_key(name: str, who: auth.Caller = Depends(require("admin"))) -> Response:
        try:
            auth.revoke_key(store, name)
        except ValueError as error:
            raise APIError(404, str(error), "key_not_found", "name") from None
        log.info("key revoked", extra={"key_name": name, "by": who.name})
        return Response(status_code=204)

    # --- health, metrics, pages ------------------------------------------------------------------------------
    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict:
        return {"status": "ok", "model": agent.model_version, "queue_depth": queue.depth}

    @app.get("/metrics", tags=["ops"])
    def prometheus(_: auth.Caller = Depends(require("operator"))) -> Response:
        metrics.queue_depth.set(queue.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/operator", include_in_schema=False)
    def operator_console() -> FileResponse:
        """The page is public; every call it makes needs an operator key."""
        return FileResponse(STATIC / "operator.html", headers={"Cache-Control": "no-cache",
                                                               "Content-Security-Policy": OPERATOR_CSP})

    @app.get("/docs", include_in_schema=False)
    def api_docs() -> FileResponse:
        """Swagger UI, from files served here (FastAPI's own page loads them from a CDN, which the CSP blocks)."""
        return FileResponse(STATIC / "docs.html",
                            headers={"Cache-Control": "no-cache", "Content-Security-Policy": DOCS_CSP})

    app.mount("/static/docs-assets", StaticFiles(directory=SWAGGER_ASSETS), name="docs-assets")
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
