"""Concurrent requests generated together on one local model: transformers' continuous batching
(``ContinuousBatchingManager``: a paged KV cache, a FIFO scheduler that joins a new request to the running batch at
the next step, and blocks shared between requests whose prompts begin alike, so the system prompt is prefilled once).

Two small pieces are ours, each because the engine has none that fits a CPU:

- ``varlen_attention`` (``affinage.core.varlen_attention``): the engine's eager and SDPA paths attend every query to
  every request's keys under a mask, so a decode step costs the square of the batch (the default model, one core:
  351 ms a step for 8 requests against 43 ms for one). It attends each request to its own keys instead (119 ms for 8),
  from the engine's ``cu_seq_lens``, and the decoding requests together.
- ``RequestSampling``: the engine drops the repetition penalty (it needs each request's tokens) and decides greedy or
  sampled for all requests at once. It applies the penalty over each request's prompt and answer, as ``generate``
  does, and draws the token of each request with a temperature above 0; the engine then takes the top token, so a
  greedy request costs no draw.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
import weakref
from typing import Any, Iterator

from affinage.core.cores import claim_all_cores
from affinage.core.varlen_attention import varlen_attention

PAGE_TOKENS = 16  # small pages share more of a common prefix (sharing is by whole pages): the default prompt's
# system message is 82 tokens, of which pages of 16 share 80 and pages of 32 share 64
_ATTENTION = "paged|eager"  # the engine's own name for its eager path, which only the engine calls
_LIVE: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def _stop_all() -> None:
    for engine in list(_LIVE):
        engine.stop()


# The engine's generation loop is not a daemon thread: stop every engine before the interpreter waits for threads.
threading._register_atexit(_stop_all)


class EngineBusyError(TimeoutError):
    """No batch slot came free within the wait allowed."""


class EngineStoppedError(RuntimeError):
    """The engine stopped (idle, or its model was swapped out): start a new one."""


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTENTION, varlen_attention)


def sampling_processors(repetition_penalty: float):
    """The engine's logits processors: ``RequestSampling`` alone (a class made here: its base is imported lazily)."""
    import torch
    from transformers import LogitsProcessorList
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor, ContinuousBatchingLogitsProcessorList)

    class RequestSampling(ContinuousBatchingLogitsProcessor):
        """Repetition penalty over each request's tokens; a request with a temperature above 0 draws its token here
        and keeps it alone in its row, so the engine's argmax returns it (greedy rows are left as they are)."""

        supported_kwargs = {"temperature": float}
        ignored_kwargs = ()

        def __init__(self, penalty: float):
            self.penalty = penalty
            self.tokens: list[list[int]] = []

        def fill_defaults(self, int32_tensor):
            int32_tensor.zero_()

        def prepare_tensor_args(self, requests):
            # Called on the engine's thread just before the forward pass whose logits __call__ gets, in this order.
            self.tokens = [r.state.initial_tokens + r.state.generated_tokens for r in requests]
            temperatures = [float(r.state.logit_processor_kwargs.get("temperature", 0.0)) for r in requests]
            return torch.tensor(temperatures, dtype=torch.float32).view(torch.int32)

        def __call__(self, scores, tensor_arg):
            temperatures = tensor_arg[: scores.size(0)].view(torch.float32)
            for row, tokens in enumerate(self.tokens[: scores.size(0)]):
                if self.penalty != 1.0 and tokens:
                    ids = torch.tensor(tokens, dtype=torch.long, device=scores.device)
                    picked = scores[row].gather(0, ids)
                    scores[row].scatter_(0, ids, torch.where(picked < 0, picked * self.penalty, picked / self.penalty))
                if temperatures[row] > 0:  # drawn here, so the engine's argmax takes it: no draw for greedy rows
                    drawn = torch.multinomial(torch.softmax(scores[row] / temperatures[row], dim=-1), 1)
                    scores[row].fill_(float("-inf"))
                    scores[row, drawn] = 0.0
            return scores

    processors = ContinuousBatchingLogitsProcessorList(LogitsProcessorList([RequestSampling(repetition_penalty)]))
    processors.tensors_required = 1  # one int32 row of per-request arguments (the temperatures)
    return processors


class Engine:
    """One model's continuous batching: at most ``max_batch`` requests generate at once, each streamed as token ids;
    a request that waits ``wait_s`` for a slot gets ``EngineBusyError``. ``cache_tokens`` bounds the KV cache (every
    running request's prompt and answer, shared prefixes counted once).

    ``retire`` stops it once its last stream ends (a version swapped out frees its cache and weights then); after
    ``idle_s`` without a request it stops itself too."""

    def __init__(self, model: Any, eos_token_id: int | list[int], max_batch: int, cache_tokens: int,
                 repetition_penalty: float, max_prefill_tokens: int = 512, idle_s: float = 30.0):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if cache_tokens < PAGE_TOKENS:
            raise ValueError(f"cache_tokens must be at least {PAGE_TOKENS}, not {cache_tokens}")
        _register_attention()
        self.model, self.max_batch, self.cache_tokens = model, max_batch, cache_tokens
        self._attention = model.config._attn_implementation
        model.set_attn_implementation(_ATTENTION)
        generation = GenerationConfig(do_sample=False, eos_token_id=eos_token_id, pad_token_id=0, max_new_tokens=64)
        config = ContinuousBatchingConfig(
            page_size=PAGE_TOKENS, num_blocks=cache_tokens // PAGE_TOKENS, max_batch_tokens=max_prefill_tokens,
            max_requests_per_batch=max_batch, allow_block_sharing=True, scheduler_type="fifo",
            max_blocks_per_request=0)  # no block-table decode path: it needs flash attention's kernel
        self.manager = model.init_continuous_batching(generation_config=generation,
                                                      continuous_batching_config=config)
        self.manager.logit_processor = sampling_processors(repetition_penalty)
        # The cache is zero pages the system commits as answers first write them: the service's memory would creep up
        # for minutes (bench/load_soak.py: +21%). Writing it now makes the footprint at full load the one at start.
        self.manager.batch_processor = self.manager._create_batch_processor()  # the loop takes it over
        self.manager.batch_processor.cache.cache_tensor.fill_(0)
        self._slots = threading.BoundedSemaphore(max_batch)
        self._streams: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._running, self._retiring, self._idle_s = True, False, idle_s
        self._stopped = threading.Event()
        loop = self.manager._run_generation_loop  # the engine's own thread runs it, after claiming every core
        self.manager._run_generation_loop = lambda **kwargs: (claim_all_cores(), loop(**kwargs))
        self.manager.start()
        self._router = threading.Thread(target=self._route, name="engine-router", daemon=True)
        self._router.start()
        _LIVE.add(self)

    def _route(self) -> None:
        """Hands each output of the engine to the stream that asked for it; stops the engine once idle."""
        idle_since = time.monotonic()
        while self._running:
            output = self.manager.get_result(timeout=0.1)
            if output is None:
                with self._lock:
                    if self._streams:
                        idle_since = time.monotonic()
                    elif self._retiring or time.monotonic() - idle_since > self._idle_s:
                        self._running = False
                continue
            with self._lock:
                stream = self._streams.get(output.request_id)
            if stream is not None:
                stream.put(output)
        self._shut_down()
        with self._lock:
            for stream in self._streams.values():
                stream.put(None)  # stopped while answering: the stream fails rather than waits
        self._stopped.set()

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._streams)

    def stream(self, input_ids: list[int], max_new_tokens: int, temperature: float,
               wait_s: float | None = None) -> Iterator[list[int]]:
        """The answer's token ids so far, each time it grows; closing the iterator early cancels the request, which
        frees its slot and stops its generation at the next step."""
        if len(input_ids) + max_new_tokens > self.cache_tokens:
            raise ValueError(f"the prompt needs {len(input_ids)} tokens plus {max_new_tokens} for the answer, but the "
                             f"batching cache holds {self.cache_tokens} tokens (setting kv_cache_tokens)")
        if not self._slots.acquire(timeout=wait_s):
            raise EngineBusyError(f"waited {wait_s:g} s for one of the {self.max_batch} batch slots")
        outputs: queue.Queue = queue.Queue()
        request_id, finished = None, False
        try:
            with self._lock:
                if not self._running or self._retiring:
                    raise EngineStoppedError("the engine has stopped")
                request_id = uuid.uuid4().hex
                self._streams[request_id] = outputs
            self.manager.add_request(list(input_ids), request_id=request_id, max_new_tokens=max_new_tokens,
                                     streaming=True, temperature=float(temperature))
            while not finished:
                output = outputs.get(timeout=600)
                if output is None:
                    raise EngineStoppedError("the engine stopped during the answer")
                if output.error:
                    raise RuntimeError(f"generation failed: {output.error}")
                finished = output.is_finished()
                yield list(output.generated_tokens)
        finally:
            if request_id is not None:
                if not finished:
                    self.manager.cancel_request(request_id)
                with self._lock:
                    self._streams.pop(request_id, None)
            self._slots.release()

    def retire(self) -> None:
        """Take no new request; stop once the streams in flight have ended."""
        with self._lock:
            self._retiring = True

    def reopen(self) -> bool:
        """Take requests again if not stopped yet (a retired model served again); False once stopped."""
        with self._lock:
            if self._running:
                self._retiring = False
            return self._running

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def stop(self) -> None:
        """Stops the engine's threads and gives the model back its own attention."""
        self._running = False
        if self._router is not threading.current_thread():
            self._router.join(timeout=5)

    def _shut_down(self) -> None:
        self.manager.stop(block=True)
        self.model.destroy_cached_continuous_batching_manager()
        self.model.set_attn_implementation(self._attention)


def engine_for(model: Any, eos_token_id, max_batch: int, cache_tokens: int, repetition_penalty: float) -> Engine:
    """``model``'s engine, started on first use and again once stopped (idle, or retired and not served again).
    One engine per model at a time: each sets the model's attention while it runs."""
    engine = getattr(model, "_affinage_engine", None)
    if engine is not None and not engine.reopen():
        engine.wait_stopped()
        engine = None
    if engine is None:
        engine = Engine(model, eos_token_id, max_batch, cache_tokens, repetition_penalty)
        model._affinage_engine = engine
    return engine


def retire_engine(model: Any) -> None:
    """``model`` is no longer served: its engine, if any, stops once the answers in flight have ended."""
    engine = getattr(model, "_affinage_engine", None)
    if engine is not None:
        engine.retire()
