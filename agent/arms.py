"""Which chat model answers a request while a canary runs: the contract between the agent and whatever follows the
registry (``tuning.serving`` for local weights, ``tuning.remote_serving`` for a vLLM server), which implements it
without importing this module (the agent must not import ``tuning``)."""

from __future__ import annotations

import uuid
from typing import Protocol

from langchain_core.language_models import BaseChatModel

Choice = tuple[BaseChatModel, "str | None"]  # the model to answer with, and the arm: "canary" | "active" | None


class ArmRouter(Protocol):
    def route(self, conversation: str) -> Choice:
        """The model and arm for ``conversation`` (a stable hash); arm None when no canary is being served."""

    def arms(self) -> dict[str, BaseChatModel]:
        """``{"active": model, "canary": model}`` while a canary is served; empty otherwise."""


def model_version(llm: BaseChatModel) -> str:
    """The version a model answers as: a local model's ``name@version``, a remote one's model name."""
    return str(getattr(llm, "served_version", None) or getattr(llm, "model_name", None) or getattr(llm, "model", None)
               or type(llm).__name__)


def choose(router: ArmRouter | None, llm: BaseChatModel, conversation_id: str | None = None,
           model: str | None = None) -> Choice:
    """The model and arm for a request: the one it names (``model``, the version as ``/v1/models`` lists it) if an
    arm serves it, else its conversation's arm; a request without a conversation id is a conversation of its own."""
    if router is None:
        return llm, None
    if model:
        for arm, candidate in router.arms().items():
            if model_version(candidate) == model:
                return candidate, arm
    return router.route(conversation_id or uuid.uuid4().hex)


def served_versions(router: ArmRouter | None, llm: BaseChatModel) -> list[str]:
    """The versions a request may name: the active one, then the canary's while one is served."""
    canary = router.arms().get("canary") if router is not None else None
    return [model_version(llm)] + ([model_version(canary)] if canary is not None else [])
