"""Per-key rate limits, a bounded generation queue and a body size limit, so overload and oversized requests are
answered at once instead of hanging or filling memory."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from agent.service.errors import APIError, error_response


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests, refilled continuously."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                retry = max(1, int((1.0 - tokens) / self.rate + 0.999))
                self._buckets[key] = (tokens, now)
                raise APIError(429, f"rate limit of {int(self.capacity)} requests per minute exceeded",
                               "rate_limit_exceeded", headers={"Retry-After": str(retry)})
            self._buckets[key] = (tokens - 1.0, now)


class GenerationQueue:
    """Admits one running generation plus ``max_waiting`` queued ones; the rest get 503 with Retry-After."""

    def __init__(self, max_waiting: int):
        self.capacity = max_waiting + 1
        self.in_flight = 0
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the one generating)."""
        return max(0, self.in_flight - 1)

    def enter(self) -> None:
        with self._lock:
            if self.in_flight >= self.capacity:
                raise APIError(503, f"the assistant is busy ({self.in_flight} requests in progress); retry shortly",
                               "server_overloaded", headers={"Retry-After": "2"})
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
