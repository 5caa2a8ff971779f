"""The polling loop both ways of serving share: a daemon thread that brings serving in line with the registry
every few seconds (``tuning.serving`` for local weights, ``tuning.remote_serving`` for a vLLM server)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("affinage.serving")


class RegistryPoller:
    """Runs ``check`` every ``interval_s`` on a daemon thread until stopped; a failed check is logged, never fatal,
    so a database or server that is down for a moment does not stop a replica from following promotions."""

    thread_name = "registry-poller"

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Bring serving in line with the registry; True when what is served changed."""
        raise NotImplementedError

    def check_logged(self) -> bool:
        """``check``, with a failure logged instead of raised."""
        try:
            return self.check()
        except Exception as error:  # noqa: BLE001 - a bad pointer read must not kill the poller
            self.log_failure(error)
            return False

    def log_failure(self, error: Exception) -> None:
        log.error("registry check failed", extra={"error": str(error)})

    def start(self):
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_logged()
