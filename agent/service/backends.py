"""What the service needs from the layers beside and above it, as small interfaces the composition fills in
(``affinage.service``): the model registry and the worker's jobs (``tuning``), and the erasure work
(``affinage.erasure``). The agent layer never imports those; a backend raises ``APIError`` for what the client got
wrong (an unknown version, a conflicting decision, an unknown job), so the routes only pass it on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.erasure import Selector


class ModelRegistry(Protocol):
    """The registry of fine-tuned versions. Versions are given as their JSON (``Version.to_json``)."""

    def overview(self) -> dict:
        """``{"active": <active version or "base">, "versions": [<newest first>]}``."""

    def report_path(self, version_id: str) -> Path:
        """Where the version's gate report is (or will be once gated)."""

    def decide(self, version_id: str, approve: bool, actor: str, comment: str,
               override_reason: str | None) -> dict: ...

    def promote(self, version_id: str, actor: str) -> dict: ...

    def rollback(self, actor: str) -> str:
        """Roll back to the previous version; returns the version now active (or "base")."""

    def events(self) -> list[dict]:
        """The registry's audit events: ``at``, ``actor``, ``action``, ``version`` and details."""


class Canary(Protocol):
    """The staged rollout of an approved version (``affinage.canary``): a share of new conversations first, compared
    live with the active version, rolled back on harm. Each call returns the canary's status as ``status`` does."""

    def status(self) -> dict:
        """``{"canary": <running canary or None>, "decision", "arms", "trajectory", "rules", "last"}``."""

    def start(self, version_id: str, share: int, actor: str) -> dict: ...

    def advance(self, share: int | None, actor: str) -> dict:
        """Step the share up (None: the next of the configured steps); 100 makes the version the active one."""

    def stop(self, actor: str, comment: str) -> dict:
        """Pause: every conversation goes back to the active version; the version stays approved."""

    def roll_back(self, actor: str, comment: str) -> dict:
        """Take the canary out of service and reject its version."""


class JobQueue(Protocol):
    """The worker's job queue, read-only."""

    def recent(self) -> list[dict]:
        """The latest jobs, newest first, as the console shows them."""

    def log_lines(self, job_id: str) -> list[dict]: ...


class Erasure(Protocol):
    """Forgetting a customer (GDPR art. 17). Reports carry counts and random ids only."""

    def check(self, selector: Selector, bank=None) -> dict[str, int]:
        """What is left of what the selector names (kinds and counts); ``bank``: the running example bank."""

    def forget(self, selector: Selector, actor: str) -> dict: ...


@dataclass(frozen=True)
class Backends:
    """Everything handed in; ``report_style_hash`` is the CSP source that lets a gate report's one stylesheet in."""

    registry: ModelRegistry
    canary: Canary
    jobs: JobQueue
    erasure: Erasure
    report_style_hash: str
