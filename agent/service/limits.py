"""Per-key rate limits (requests, prompt tokens, requests in flight), a bounded generation queue and a body size limit,
so overload, one greedy key and oversized requests are answered at once instead of hanging or filling memory."""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from agent.service.errors import APIError, error_response

# Seconds a refused request is told to wait when the model is busy: about one short answer on CPU.
BUSY_RETRY_AFTER_S = 2
# Prompt tokens are estimated at 4 characters each when the model cannot count them itself: OpenAI's rule of thumb,
# and SmolLM2's tokenizer averages 3.8-4.2 on English prose and code (digits and non-Latin scripts cost more).
CHARS_PER_TOKEN = 4


def estimate_tokens(*texts: str) -> int:
    return sum(math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts)


def prompt_tokens(messages: list, count: Callable[[list], int] | None = None) -> int:
    """What the prompt budget charges for ``messages``: ``count`` (a local model's own tokenizer and chat template,
    exact and cheap) when the model has one, else the character estimate."""
    if count is not None:
        return int(count(messages))
    return estimate_tokens(*(m.content if isinstance(m.content, str) else str(m.content) for m in messages))


class TokenBucket:
    """Per-key token buckets holding ``per_minute`` tokens, refilled continuously."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.rate)

    def _take(self, key: str, amount: float) -> tuple[int | None, float]:
        """Take ``amount`` from the key's bucket: (None, level before) when taken, else (seconds until it could be,
        level). More than the whole bucket is taken from a full one, leaving it in debt, rather than never."""
        with self._lock:
            now = self.clock()
            level = self._level(key, now)
            needed = min(amount, self.capacity)
            if level < needed:
                self._buckets[key] = (level, now)
                return max(1, math.ceil((needed - level) / self.rate - 1e-9)), level  # 1e-9: float dust
            self._buckets[key] = (level - amount, now)
            return None, level

    def refund(self, key: str, amount: float) -> None:
        """Give back a charge."""
        with self._lock:
            now = self.clock()
            self._buckets[key] = (min(self.capacity, self._level(key, now) + amount), now)


class RateLimiter(TokenBucket):
    """``per_minute`` requests per key."""

    def check(self, key: str) -> None:
        retry, _ = self._take(key, 1.0)
        if retry is not None:
            raise APIError(429, f"rate limit of {int(self.capacity)} requests per minute exceeded",
                           "rate_limit_exceeded", headers={"Retry-After": str(retry)})


class TokenBudget(TokenBucket):
    """``per_minute`` prompt tokens per key, each request charged its prompt tokens. A request larger than the whole
    bucket passes a full bucket and leaves it in debt (the model's context refuses it later, not this forever); a
    request refused before the model read its prompt (queue full, queue deadline, prompt over the model's context) is
    refunded: the budget is for the model's work."""

    def charge(self, key: str, tokens: int) -> None:
        retry, level = self._take(key, float(tokens))
        if retry is not None:
            raise APIError(429, f"this request has {tokens} prompt tokens and the key's budget of "
                           f"{int(self.capacity)} prompt tokens per minute has {max(0, int(level))} left",
                           "prompt_tokens_exceeded", headers={"Retry-After": str(retry)})


class KeyConcurrency:
    """At most ``max_per_key`` requests of one key in flight: one key cannot fill the queue and hold the model while
    other keys wait. More get 429 at once."""

    def __init__(self, max_per_key: int):
        self.max_per_key = max_per_key
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, key: str) -> None:
        with self._lock:
            count = self._counts.get(key, 0)
            if count >= self.max_per_key:
                raise APIError(429, f"this key already has {count} requests in progress, the most allowed; wait for "
                               "one to finish", "too_many_concurrent_requests",
                               headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
            self._counts[key] = count + 1

    def leave(self, key: str) -> None:
        with self._lock:
            count = self._counts.pop(key, 0) - 1
            if count > 0:  # idle keys take no room
                self._counts[key] = count

    def in_flight(self, key: str) -> int:
        with self._lock:
            return self._counts.get(key, 0)


class GenerationQueue:
    """Admits ``running`` generations at once (the batch; one when answers are generated one at a time) plus
    ``max_waiting`` queued ones; the rest get 503 with Retry-After."""

    def __init__(self, max_waiting: int, running: int = 1):
        self.running = running
        self.capacity = max_waiting + running
        self.in_flight = 0
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting those generating)."""
        return max(0, self.in_flight - self.running)

    def enter(self) -> None:
        with self._lock:
            if self.in_flight >= self.capacity:
                raise APIError(503, f"the assistant is busy ({self.in_flight} requests in progress); retry shortly",
                               "server_overloaded", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
            self.in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    @contextmanager
    def slot(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()


@dataclass(frozen=True)
class Limits:
    """One app's admission state: per-key requests, prompt tokens and requests in flight for chat, per-key feedback,
    and the generation queue."""

    rate: RateLimiter
    prompt_budget: TokenBudget
    in_flight: KeyConcurrency
    feedback_rate: RateLimiter
    queue: GenerationQueue

    @classmethod
    def from_settings(cls, settings, running: int = 1) -> "Limits":
        """``running``: answers the model generates at once (its batch; one for a model that answers one at a
        time)."""
        return cls(rate=RateLimiter(settings.rate_limit_per_minute),
                   prompt_budget=TokenBudget(settings.prompt_tokens_per_minute),
                   in_flight=KeyConcurrency(settings.max_in_flight_per_key),
                   feedback_rate=RateLimiter(settings.feedback_per_minute),
                   queue=GenerationQueue(settings.max_queue, running=running))


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before the app sees it.

    A declared Content-Length is checked up front; a chunked body, which declares none, is counted as it arrives
    (and held, at most ``max_bytes`` of it, then handed on), so leaving the header out does not lift the limit.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def too_large(self):
        return error_response(413, f"request body larger than {self.max_bytes} bytes", "body_too_large")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self.too_large()(scope, receive, send)
            return await self.app(scope, receive, send)
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self.too_large()(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
