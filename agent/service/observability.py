"""Prometheus metrics and JSON logs. Logs name the key, never the key itself."""

from __future__ import annotations

import json
import logging
import sys

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


class Metrics:
    """One registry per app, so several apps (tests) never collide."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("affinage_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("affinage_http_request_seconds", "HTTP request latency", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("affinage_time_to_first_token_seconds", "Time to first streamed token",
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.generation = Histogram("affinage_generation_seconds", "Whole answer generation time",
                                    buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("affinage_completion_tokens_total", "Generated tokens", registry=self.registry)
        self.queue_depth = Gauge("affinage_queue_depth", "Chat requests waiting for the model", registry=self.registry)
        self.feedback = Counter("affinage_feedback_total", "Feedback received", ["rating", "has_correction"], registry=self.registry)
        self.rejected = Counter("affinage_rejected_total", "Requests refused by limits", ["reason"], registry=self.registry)


class JsonFormatter(logging.Formatter):
    _SKIP = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                 "logger": record.name, "msg": record.getMessage()}
        entry.update({k: v for k, v in vars(record).items() if k not in self._SKIP})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("affinage")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
