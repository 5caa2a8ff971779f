"""Serving the active version on a vLLM server: load its LoRA adapter there and route every request to it.

vLLM started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` loads and unloads adapters at run
time (``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter``) and lists them in ``GET /v1/models`` as
cards whose ``parent`` is the base model; a chat request picks one by naming it as its ``model``. The contract these
calls follow, read from vLLM's source, is ``tests/agent/contracts/vllm_lora.json``.

Routing is ChatOpenAI's ``model_name``: the base model's served name, or the id of the active version, which is the
name its adapter is loaded under. vLLM reports that name back as the answer's model, so the interaction log records
the version that answered. Two adapters stay loaded, the active one and the one it replaced, so the rollback an
operator reaches for first costs no load; older ones are unloaded. While a canary runs its adapter is loaded too,
and ``route`` sends the canary's share of conversations to a copy of the ChatOpenAI that names it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path, PurePosixPath

import httpx

from tuning.registry import Registry, RegistryError
from tuning.registry_poller import CanaryArms, RegistryPoller, served_canary

log = logging.getLogger("affinage.serving")


class AdapterRefused(RuntimeError):
    """The registry or the server refused to serve a version's adapter; the message says why."""


def _reason(response: httpx.Response) -> str:
    """The message of a vLLM error body (nested ``error``, the older flat shape, or 401's string), else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(error or (body.get("message") if isinstance(body, dict) else body))


class VLLMAdapters:
    """vLLM's runtime LoRA API: list, load and unload adapters by name, relative to the OpenAI base URL (``.../v1``).

    Only ``lora_name`` and ``lora_path`` are sent: every vLLM version in the contract accepts them.
    """

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = 120.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout_s)

    def loaded(self) -> set[str]:
        """Names of the adapters the server holds: the ``/v1/models`` cards that have a parent."""
        response = self.http.get("models")
        if response.status_code != 200:
            raise httpx.HTTPStatusError(f"GET /models answered {response.status_code}: {_reason(response)}",
                                        request=response.request, response=response)
        return {card["id"] for card in response.json()["data"] if card.get("parent")}

    def load(self, name: str, path: str) -> None:
        response = self.http.post("load_lora_adapter", json={"lora_name": name, "lora_path": path})
        if response.status_code != 200:
            raise AdapterRefused(f"the server refused to load adapter {name!r} from {path}: "
                                 f"HTTP {response.status_code}: {_reason(response)}")

    def unload(self, name: str) -> None:
        """Unload ``name``; one the server no longer holds (404) is already what was wanted."""
        response = self.http.post("unload_lora_adapter", json={"lora_name": name})
        if response.status_code not in (200, 404):
            raise AdapterRefused(f"the server refused to unload adapter {name!r}: "
                                 f"HTTP {response.status_code}: {_reason(response)}")

    def close(self) -> None:
        self.http.close()


def server_path(folder: Path, registry_dir: Path, remote_registry_dir: str | None) -> str:
    """Where the server finds ``folder``: its place under the registry folder, as the server mounts that folder."""
    local = registry_dir.resolve()
    try:
        relative = folder.resolve().relative_to(local)
    except ValueError:
        raise AdapterRefused(f"{folder} is not inside the registry folder {local}, so its path on the server "
                             "is unknown") from None
    return str(PurePosixPath(remote_registry_dir or local.as_posix()) / relative.as_posix())


class RemoteAdapterFollower(CanaryArms, RegistryPoller):
    """Polls the registry pointer and the server; loads, routes and unloads so the server serves the active version.

    A version the server cannot take (full weights, hashes that do not match, a refused load) is logged and the
    routing stays where it was; it is tried again every ``retry_s`` (a mount that was not ready, memory that was
    short) and at once when it is promoted again. A server that lost the routed adapter (restarted) is noticed at the
    next poll and the adapter loaded again; while that is refused, requests go to the base model rather than fail.
    An unreachable server changes nothing until it answers again.
    """

    retry_s = 60.0
    thread_name = "remote-adapter-follower"

    def __init__(self, llm, registry: Registry, adapters: VLLMAdapters, base_name: str, registry_dir: Path,
                 remote_registry_dir: str | None, interval_s: float = 2.0):
        super().__init__(interval_s)
        self.llm, self.registry, self.adapters, self.base_name = llm, registry, adapters, base_name
        self.registry_dir, self.remote_registry_dir = registry_dir, remote_registry_dir
        self._failed: tuple[str, float] | None = None  # the version last refused, and when
        self._canary_failed: tuple[str, float] | None = None  # the same for the canary's version

    @property
    def routed(self) -> str | None:
        """The version requests name now, None for the base model."""
        return None if self.llm.model_name == self.base_name else self.llm.model_name

    def check(self) -> bool:
        """Bring the server and the routing in line with the registry; True when the routing changed."""
        pointer = self.registry.pointer_state()
        wanted, current, canary = pointer["active"], self.routed, served_canary(pointer)
        if self._failed and self._failed[0] != wanted:
            self._failed = None  # the pointer moved on: promoting that version again later tries it afresh
        loaded = self.adapters.loaded()
        target = self._target(wanted, current, loaded)
        was_canary, arms_changed = self.canary_version, self._follow_canary(canary, loaded)
        if target == current:
            if was_canary not in (None, target, self.canary_version):  # the canary ended: its adapter goes
                self._unload_all_but({target, current, self.canary_version}, {was_canary})
            return arms_changed
        self.llm.model_name = target or self.base_name
        log.info("now serving a new version", extra={"version": self.llm.model_name,
                                                     "previous": current or self.base_name, "server": "vllm"})
        self._unload_all_but({target, current, self.canary_version}, loaded | {target})
        return True

    def _follow_canary(self, canary: dict | None, loaded: set[str]) -> bool:
        """Route the canary's arm to its adapter, loading it if the server lacks it; one the server refuses is
        logged and its conversations stay on the active version (tried again after ``retry_s``). True on a change."""
        version = canary["version"] if canary else None
        if version is not None and version not in loaded:
            if self._canary_failed and self._canary_failed[0] == version and \
                    time.monotonic() - self._canary_failed[1] < self.retry_s:
                version = None
            else:
                try:
                    self._load(version)
                    self._canary_failed = None
                except (AdapterRefused, RegistryError) as error:
                    self._canary_failed = (version, time.monotonic())
                    log.error("cannot load the canary version into the server; every conversation stays on the "
                              "active one", extra={"version": version, "error": str(error)})
                    version = None
        previous = self.canary_version
        if version is None:
            self._arms = None
        elif version == previous:
            self._arms = (canary, self._arms[1])  # a share step: the same arm
        else:
            self._arms = (canary, self.llm.model_copy(update={"model_name": version}))
            log.info("now serving a canary", extra={"version": version, "share": canary["share"], "server": "vllm"})
        return version != previous

    def _target(self, wanted: str | None, current: str | None, loaded: set[str]) -> str | None:
        """What requests should name: the wanted version if it is or gets loaded, else what still works."""
        if wanted is None or wanted in loaded:
            return wanted
        if wanted == current:
            log.warning("the server no longer holds the serving adapter (restarted?); loading it again",
                        extra={"version": wanted})
        if not (self._failed and time.monotonic() - self._failed[1] < self.retry_s):
            try:
                self._load(wanted)
                self._failed = None
                return wanted
            except (AdapterRefused, RegistryError) as error:
                self._failed = (wanted, time.monotonic())
                log.error("cannot load the active version into the server; still serving the previous one",
                          extra={"version": wanted, "error": str(error)})
        if current is not None and current not in loaded:
            log.error("the server lost the adapter that was serving; the base model answers until a version loads",
                      extra={"version": current})
            return None
        return current

    def _load(self, version_id: str) -> None:
        """Hash-check the version, then load its adapter under its id (only adapters can join a running server)."""
        version = self.registry.get(version_id)
        if version.manifest.get("kind") == "full":
            raise AdapterRefused(f"version {version_id} holds full weights, which cannot be loaded into a running "
                                 "vLLM server (only LoRA adapters can): start vLLM on its folder, or promote a LoRA "
                                 "version")
        folder = self.registry.verify(version_id)
        if not (folder / "adapter_config.json").is_file():
            raise AdapterRefused(f"version {version_id} has no adapter_config.json: it is not a PEFT adapter")
        try:
            self.adapters.load(version_id, server_path(folder, self.registry_dir, self.remote_registry_dir))
        except AdapterRefused:
            if version_id not in self.adapters.loaded():  # not another replica that loaded it first
                raise

    def _unload_all_but(self, keep: set[str | None], loaded: set[str]) -> None:
        """Unload this registry's adapters other than ``keep``; adapters loaded by others are left alone."""
        ours = {version.id for version in self.registry.list()}
        for name in sorted((loaded & ours) - keep):
            try:
                self.adapters.unload(name)
            except (AdapterRefused, httpx.HTTPError) as error:
                log.warning("could not unload an adapter no longer needed",
                            extra={"version": name, "error": str(error)})

    def stop(self) -> None:
        super().stop()
        self.adapters.close()

    def log_failure(self, error: Exception) -> None:
        if isinstance(error, httpx.HTTPError):
            log.error("cannot reach the vLLM server or list its adapters; routing unchanged",
                      extra={"error": str(error)})
        else:
            super().log_failure(error)


def follow_vllm(settings, llm) -> RemoteAdapterFollower:
    """A follower for ``llm`` (ChatOpenAI on the vLLM server at ``settings.openai_base_url``), synced once now."""
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    follower = RemoteAdapterFollower(llm, Registry.open(settings), VLLMAdapters(settings.openai_base_url, key),
                                     settings.chat_model, settings.registry_dir, settings.remote_registry_dir,
                                     settings.registry_poll_seconds)
    follower.check_logged()
    return follower
