"""Serving the active version: load it (hash-checked) on start, and follow promotions and rollbacks while running."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from affinage.core.chat_model import LocalChatModel
from affinage.core.model_files import serving_dtype
from tuning.registry import Registry
from tuning.registry_poller import CanaryArms, RegistryPoller, served_canary
from tuning.remote_serving import follow_vllm
from tuning.train import base_model

log = logging.getLogger("affinage.serving")


def load_weights(base_path: Path, registry: Registry, version_id: str | None, dtype: Any = "auto"):
    """The model for ``version_id`` (None: the base) in ``dtype`` (``serving_dtype``; "auto": the checkpoint's own),
    LoRA merged in so serving pays nothing for the adapter. The merge is done in the checkpoint's precision, then
    cast: the served weights are the trained ones rounded once."""
    from transformers import AutoModelForCausalLM

    if version_id is None:
        return AutoModelForCausalLM.from_pretrained(str(base_path), dtype=dtype)
    folder = registry.verify(version_id)
    if registry.get(version_id).manifest.get("kind") == "full":
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype="auto")
    merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    return merged if dtype == "auto" else merged.to(dtype)


class ActiveVersionWatcher(CanaryArms, RegistryPoller):
    """Polls the registry pointer; a change loads the new version beside the serving one, then swaps it in.

    Loading happens outside the model's lock, so requests keep being answered meanwhile; answers in flight finish
    on the old version. A version that fails to load is logged and the old one keeps serving.

    While a canary runs, its version is loaded into a second model (``route`` sends its share of conversations
    there): a copy of the serving one, so it shares its tokenizer, its limits and its lock (answering one at a time,
    one generation across both arms; batched, each arm's model has its own engine; either way a wait past
    ``queue_timeout`` is ModelBusyError). Two sets of weights are resident until the canary ends; promoted, the
    canary's weights are swapped in without loading them again.
    """

    thread_name = "active-version-watcher"

    def __init__(self, llm, registry: Registry, base_path: Path, interval_s: float = 2.0, dtype: Any = "auto"):
        super().__init__(interval_s)
        self.llm, self.registry, self.base_path, self.dtype = llm, registry, base_path, dtype
        self._failed: int | None = None  # the pointer generation whose version failed: retried once the pointer moves
        self._canary_failed: tuple[str, int] | None = None  # the same for the canary: (version, generation)
        self._canary_weights = None  # the canary arm's model, reused if its version is promoted

    def check(self) -> bool:
        """Swap in the active version if it is not the one serving, and load or drop the canary's model; True when
        what is served changed.

        One read of the pointer row in the database, so replicas sharing it can poll often.
        """
        pointer = self.registry.pointer_state()
        swapped = self._follow_active(pointer)
        return self._follow_canary(pointer, served_canary(pointer)) or swapped

    def _follow_active(self, pointer: dict) -> bool:
        wanted = pointer["active"]
        if wanted == self.llm.adapter_version or pointer["generation"] == self._failed:
            return False
        if wanted is not None and wanted == self.canary_version:
            model = self._canary_weights  # the canary was promoted: loaded and hash-checked already
        else:
            try:
                model = load_weights(self.base_path, self.registry, wanted, self.dtype)
            except Exception as error:  # noqa: BLE001 - keep serving the old version, say why
                self._failed = pointer["generation"]
                log.error("cannot load the active version; still serving the previous one",
                          extra={"version": wanted, "error": str(error)})
                return False
        previous = self.llm.served_version
        self.llm.swap(model, wanted)
        log.info("now serving a new version", extra={"version": self.llm.served_version, "previous": previous})
        return True

    def _follow_canary(self, pointer: dict, canary: dict | None) -> bool:
        """Serve ``canary`` (None: none) on the canary arm; a share step keeps the loaded model."""
        version = canary["version"] if canary else None
        if version is not None and version == self.canary_version:
            self._arms = (canary, self._arms[1])
            return False
        if version is not None and self._canary_failed == (version, pointer["generation"]):
            return False
        dropped = self._arms is not None
        if dropped:
            log.info("the canary arm is no longer served", extra={"version": self.canary_version})
            self._arms[1].release()  # its engine stops once the answers in flight on it end (unless promoted)
            self._arms, self._canary_weights = None, None  # freed once the requests in flight on it finish
        if version is None:
            return dropped
        try:
            model = load_weights(self.base_path, self.registry, version, self.dtype)
        except Exception as error:  # noqa: BLE001 - every conversation stays on the active version
            self._canary_failed = (version, pointer["generation"])
            log.error("cannot load the canary version; every conversation stays on the active one",
                      extra={"version": version, "error": str(error)})
            return dropped
        arm = self.llm.serving(model, version)  # same tokenizer, settings and lock as the serving model
        self._canary_weights, self._arms = model, (canary, arm)
        log.info("now serving a canary", extra={"version": arm.served_version, "share": canary["share"]})
        return True


def follow_registry(settings, llm) -> RegistryPoller | None:
    """Swap the active version into a local model now and return a watcher to keep following it.

    For a remote endpoint: with ``remote_lora = 'vllm'`` a follower that loads the active adapter into the vLLM
    server and routes requests to it (``tuning.remote_serving``); otherwise None, as its server owns its weights.
    """
    if not isinstance(llm, LocalChatModel):
        if settings.remote_lora != "vllm":
            return None
        return follow_vllm(settings, llm)
    watcher = ActiveVersionWatcher(llm, Registry.open(settings), base_model(settings)[1],
                                   settings.registry_poll_seconds, serving_dtype(settings.serving_dtype))
    watcher.check()
    return watcher
