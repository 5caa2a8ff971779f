"""Run the real app under uvicorn on a free loopback port, for clients that need a real HTTP server."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn


class LiveServer:
    """The app under uvicorn in a background thread; the socket is bound first, so the port cannot be taken."""

    def __init__(self, app):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.socket.close()


@contextmanager
def model_busy(llm):
    """Every generation slot of a local model taken, as by other answers: its lock when it answers one at a time,
    each batch slot of its engine when it batches."""
    if not llm.max_batch:
        with llm._lock:
            yield
        return
    engine, _ = llm._engine()
    for _ in range(llm.max_batch):
        engine._slots.acquire()
    try:
        yield
    finally:
        for _ in range(llm.max_batch):
            engine._slots.release()
