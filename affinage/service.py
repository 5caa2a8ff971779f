"""The HTTP service, composed: the agent (built from the settings when not given) and what its operator and admin
routes need from the layers beside it (the model registry and the worker's jobs from ``tuning``, the erasure work from
``affinage.erasure``), handed to the agent layer's assembly. Their errors become the service's HTTP errors here."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI

from affinage import canary, erasure
from affinage.core.settings import Settings
from affinage.core.store import Store
from agent.erasure import Selector
from agent.pipeline import SupportAgent
from agent.service.app import assemble
from agent.service.backends import Backends
from agent.service.errors import APIError
from tuning import canary as canary_moves
from tuning import jobs
from tuning.registry import BASE, Registry, RegistryError, UnknownVersion
from tuning.report import REPORT_STYLE_HASH
from tuning.search import held_out_gain


def registry_error(error: RegistryError) -> APIError:
    if isinstance(error, UnknownVersion):
        return APIError(404, str(error), "version_not_found", "id")
    return APIError(409, str(error), "registry_conflict", "id")


class RegistryBackend:
    """``tuning.registry.Registry`` as the operator routes use it (``agent.service.backends.ModelRegistry``)."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self.gains: dict[tuple, float | None] = {}  # (version, gate time) -> held-out gain, read once per report

    def overview(self) -> dict:
        """Every version with its held-out gain (from its gate report): a search's candidates side by side."""
        return {"active": self.registry.active_id() or BASE,
                "versions": [{**v.to_json(), "held_out_gain": self.gain(v)} for v in reversed(self.registry.list())]}

    def gain(self, version) -> float | None:
        if not version.gate or not (version.path / "report.json").is_file():
            return None
        key = (version.id, version.gate.get("at"))
        if key not in self.gains:
            self.gains[key] = held_out_gain(json.loads((version.path / "report.json").read_text(encoding="utf-8")))
        return self.gains[key]

    def report_path(self, version_id: str) -> Path:
        try:
            return self.registry.get(version_id).path / "report.html"
        except RegistryError as error:
            raise registry_error(error) from None

    def decide(self, version_id: str, approve: bool, actor: str, comment: str, override_reason: str | None) -> dict:
        try:
            return self.registry.decide(version_id, approve, actor=actor, comment=comment,
                                        override_reason=override_reason).to_json()
        except RegistryError as error:
            raise registry_error(error) from None

    def promote(self, version_id: str, actor: str) -> dict:
        try:
            return self.registry.promote(version_id, actor=actor).to_json()
        except RegistryError as error:
            raise registry_error(error) from None

    def rollback(self, actor: str) -> str:
        try:
            return self.registry.rollback(actor=actor) or BASE
        except RegistryError as error:
            raise registry_error(error) from None

    def events(self) -> list[dict]:
        return self.registry.events()


class CanaryBackend:
    """``affinage.canary`` and ``tuning.canary`` as the operator routes use them (``agent.service.backends.Canary``)."""

    def __init__(self, settings: Settings, store: Store, registry: Registry):
        self.settings, self.store, self.registry = settings, store, registry

    def _after(self, move) -> dict:
        try:
            move()
        except RegistryError as error:
            raise registry_error(error) from None
        return self.status()

    def status(self) -> dict:
        return canary.status(self.settings, self.store, self.registry)

    def start(self, version_id: str, share: int, actor: str) -> dict:
        return self._after(lambda: canary_moves.start(self.registry, version_id, share, actor))

    def advance(self, share: int | None, actor: str) -> dict:
        return self._after(lambda: canary.advance(self.settings, self.registry, share, actor))

    def stop(self, actor: str, comment: str) -> dict:
        return self._after(lambda: canary_moves.stop(self.registry, actor, comment))

    def roll_back(self, actor: str, comment: str) -> dict:
        return self._after(lambda: canary_moves.roll_back(self.registry, actor, comment))


class JobsBackend:
    """``tuning.jobs`` on the service's store (``agent.service.backends.JobQueue``)."""

    def __init__(self, store: Store):
        self.store = store

    def recent(self) -> list[dict]:
        return [jobs.info(job) for job in jobs.recent(self.store)]

    def log_lines(self, job_id: str) -> list[dict]:
        try:
            return jobs.log_lines(self.store, job_id)
        except jobs.UnknownJob as error:
            raise APIError(404, str(error), "job_not_found", "id") from None


class ErasureBackend:
    """``affinage.erasure`` on the service's settings and store (``agent.service.backends.Erasure``)."""

    def __init__(self, settings: Settings, store: Store):
        self.settings, self.store = settings, store

    def check(self, selector: Selector, bank=None) -> dict[str, int]:
        return erasure.check(self.settings, self.store, selector, bank=bank)

    def forget(self, selector: Selector, actor: str) -> dict:
        return erasure.forget(self.settings, self.store, selector, actor)


def backends_for(settings: Settings, store: Store) -> Backends:
    registry = Registry.open(settings, store)
    return Backends(registry=RegistryBackend(registry), canary=CanaryBackend(settings, store, registry),
                    jobs=JobsBackend(store),
                    erasure=ErasureBackend(settings, store), report_style_hash=REPORT_STYLE_HASH)


def create_app(settings: Settings, agent: SupportAgent | None = None) -> FastAPI:
    """Build the app around one agent (built from the settings when not given)."""
    if agent is None:
        from affinage.factory import build_agent

        agent = build_agent(settings)
    return assemble(settings, agent, backends_for(settings, agent.store))
