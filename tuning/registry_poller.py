"""The polling loop both ways of serving share: a daemon thread that brings serving in line with the registry
every few seconds (``tuning.serving`` for local weights, ``tuning.remote_serving`` for a vLLM server)."""

from __future__ import annotations

import logging
import threading

from affinage.core.canary_split import arm_for

log = logging.getLogger("affinage.serving")


def served_canary(pointer: dict) -> dict | None:
    """The running canary of the pointer state ``pointer`` (``Registry.pointer_state``); a canary of the active
    version itself is none."""
    canary = pointer["canary"]
    return canary if canary and canary.get("version") != pointer["active"] else None


class CanaryArms:
    """What both followers answer the agent with (``agent.arms.ArmRouter``): ``_arms`` is None, or the running canary
    and the model its arm is answered by, replaced whole, so that a request reads one consistent pair."""

    llm = None
    _arms: tuple[dict, object] | None = None

    def route(self, conversation: str):
        arms = self._arms
        if arms is None:
            return self.llm, None
        return (arms[1], "canary") if arm_for(conversation, arms[0]) == "canary" else (self.llm, "active")

    def arms(self) -> dict:
        arms = self._arms
        return {} if arms is None else {"active": self.llm, "canary": arms[1]}

    @property
    def canary_version(self) -> str | None:
        """The version the canary arm is answered by now, None when no canary is served."""
        arms = self._arms
        return None if arms is None else arms[0]["version"]


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
