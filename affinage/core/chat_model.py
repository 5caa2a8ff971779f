"""Chat models: the embedded SmolLM2 (or any local/HF model) as a LangChain chat model, or an OpenAI-compatible endpoint."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any, Iterator

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_messages
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, PrivateAttr

from affinage.core.cores import claim_all_cores
from affinage.core.engine import EngineBusyError, EngineStoppedError, engine_for, retire_engine
from affinage.core.generation import cut_at_sentences, cut_at_stop, generate_batches
from affinage.core.model_files import EMBEDDED_NAME, resolve_model_path, serving_dtype
from affinage.core.settings import EMBEDDED_CHAT_MODEL, Settings

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


class ContextOverflowError(ValueError):
    """The prompt plus the requested answer length does not fit the model's context window."""


class ModelBusyError(TimeoutError):
    """A request waited ``queue_timeout`` seconds for the model without starting: the service answers 503."""


class LocalChatModel(BaseChatModel):
    """A transformers causal LM behind LangChain's chat-model interface, with token streaming.

    With ``max_batch`` set, concurrent answers are generated together by the serving model's batching engine
    (``affinage.core.engine``); otherwise one at a time under a lock (two separate generations on a CPU only slow
    each other down). ``swap`` serves another version from the next request on.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str
    max_new_tokens: int = 200
    temperature: float = 0.0
    repetition_penalty: float = 1.1
    max_sentences: int = 0
    queue_timeout: float | None = None  # longest wait for the model (its lock) before ModelBusyError; None: forever
    max_batch: int = 0  # answers generated together by the batching engine (affinage.core.engine); 0: one at a time
    kv_cache_tokens: int = 8192  # the engine's KV cache
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
        """Serve ``model`` from the next request on; answers in flight finish on the old model (one at a time: the
        swap waits for the answer in flight; batched: it does not, and the old model's engine stops once idle)."""
        model.eval()
        with self._lock:
            old, self._model, self._version = self._model, model, version
        if old is not model:
            retire_engine(old)

    def serving(self, model: Any, version: str | None) -> "LocalChatModel":
        """A copy with the same tokenizer, limits and lock that serves ``model`` (a canary arm), this one untouched."""
        copy = self.model_copy()
        copy._model, copy._version = model.eval(), version
        return copy

    def release(self) -> None:
        retire_engine(self._model)  # this one serves no more: its engine stops once the answers in flight end

    @classmethod
    def from_pretrained(cls, location: Path | str, name: str | None = None, dtype: Any = "auto",
                        **kwargs: Any) -> "LocalChatModel":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(location))
            model = AutoModelForCausalLM.from_pretrained(str(location), dtype=dtype)
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
        limits = {"the model's context": self.context_length}
        if self.max_batch:
            limits["the batching engine's cache (setting kv_cache_tokens)"] = self.kv_cache_tokens
        for what, limit in limits.items():
            if prompt_tokens + wanted > limit:
                raise ContextOverflowError(f"the prompt needs {prompt_tokens} tokens plus {wanted} for the answer, "
                                           f"but {what} holds {limit} tokens")
        return inputs, prompt_tokens

    def _answer_budget(self, overrides: dict) -> int:
        """Tokens to generate: LangChain callers say max_tokens, transformers says max_new_tokens."""
        return int(overrides.get("max_tokens") or overrides.get("max_new_tokens") or self.max_new_tokens)

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
        inputs, prompt_tokens = self._encode_checked(messages, **kwargs)
        produced = self._batched(inputs, **kwargs) if self.max_batch else self._alone(inputs, **kwargs)
        served = next(produced)
        emitted, cut_short, generated = "", False, 0
        try:
            for generated, piece in produced:
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
            produced.close()  # the consumer left or the answer was cut: stop generating it
        usage = {"input_tokens": prompt_tokens, "output_tokens": generated, "total_tokens": prompt_tokens + generated}
        # OpenAI's finish reasons: "length" when the token budget ended the answer, "stop" for an end of text, a stop
        # string or the sentence limit.
        finish = "length" if not cut_short and generated >= self._answer_budget(kwargs) else "stop"
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=usage, response_metadata={
            "model_name": served, "finish_reason": finish}))

    def _batched(self, inputs, **kwargs: Any) -> Iterator:
        """The served version, then (tokens so far, new text) as the engine extends the answer."""
        ids = inputs["input_ids"][0].tolist()
        temperature = float(self._sampling(kwargs).get("temperature", 0.0))
        for attempt in range(2):  # an engine may stop (idle) between being picked and taking the request
            engine, served = self._engine()
            tokens = engine.stream(ids, self._answer_budget(kwargs), temperature, wait_s=self.queue_timeout)
            try:
                first = next(tokens, [])
            except EngineStoppedError:
                if attempt:
                    raise
                continue
            except EngineBusyError:
                raise ModelBusyError(f"waited {self.queue_timeout:g} s for the model, which is busy with other "
                                     "answers") from None
            break
        text = ""
        try:
            yield served
            for answer in itertools.chain([first], tokens):
                decoded = self._tokenizer.decode(answer, skip_special_tokens=True)
                if decoded.endswith("\ufffd"):
                    continue  # a character split across tokens: wait for the rest
                yield len(answer), decoded[len(text):]
                text = decoded
        finally:
            tokens.close()

    def _engine(self):
        """The serving model's batching engine and the version it serves."""
        with self._lock:
            eos = self._model.generation_config.eos_token_id or self._tokenizer.eos_token_id
            return engine_for(self._model, eos, self.max_batch, self.kv_cache_tokens,
                              self.repetition_penalty), self.served_version

    def _alone(self, inputs, **kwargs: Any) -> Iterator:
        """The served version, then (tokens so far, new text), one generation at a time under the model's lock."""
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self._tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
        cancelled = threading.Event()
        generated = [0]
        error: list[BaseException] = []

        def keep_going(ids, scores, **_):
            """Counts tokens, and ends generation early once the consumer has gone."""
            generated[0] += 1
            return torch.full((ids.shape[0],), cancelled.is_set(), dtype=torch.bool)

        def work() -> None:
            claim_all_cores()
            try:
                with torch.inference_mode():
                    model.generate(**inputs, **self._sampling(kwargs), streamer=streamer, stopping_criteria=[keep_going])
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
                yield served
                for piece in streamer:
                    yield generated[0], piece
            finally:
                cancelled.set()
                thread.join()
        finally:
            self._lock.release()
        if error:
            raise error[0]
        yield generated[0], ""  # the count after the last piece (generation may end on a token with no text)


def load_chat_model(settings: Settings) -> BaseChatModel:
    """The chat model the settings name: an OpenAI-compatible endpoint, or a local/HF model."""
    if settings.openai_base_url:
        from langchain_openai import ChatOpenAI

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
        return ChatOpenAI(model=settings.chat_model, base_url=settings.openai_base_url, api_key=key,
                          temperature=settings.temperature, max_tokens=settings.max_new_tokens, stream_usage=True)
    location = resolve_model_path(settings)
    name = EMBEDDED_NAME if settings.chat_model == EMBEDDED_CHAT_MODEL else Path(str(location)).name
    return LocalChatModel.from_pretrained(
        location,
        name=name,
        dtype=serving_dtype(settings.serving_dtype),
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        repetition_penalty=settings.repetition_penalty,
        max_sentences=settings.max_answer_sentences,
        queue_timeout=settings.queue_timeout_seconds,
        max_batch=settings.max_batch_size if settings.batched_generation else 0,
        kv_cache_tokens=settings.kv_cache_tokens,
    )
