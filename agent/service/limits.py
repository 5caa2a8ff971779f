"""Per-key rate limits and a bounded generation queue, so overload is answered at once instead of hanging."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from agent.service.errors import APIError


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
