"""The batching engine (transformers' continuous batching with our CPU attention and sampling) on the tiny model,
float32: concurrent answers are each the answer generated alone, a closed stream stops being generated and frees
its slot, and a swap mid-stream leaves every stream whole on its version."""

from __future__ import annotations

import threading

import pytest
import torch
from langchain_core.messages import HumanMessage, SystemMessage

from affinage.core.chat_model import ContextOverflowError, LocalChatModel
from affinage.core.engine import PAGE_TOKENS, Engine
from affinage.core.varlen_attention import varlen_attention

SYSTEM = "You are the support assistant of Acme. Answer from the passages, in one short paragraph. " * 4
QUESTIONS = ["Hi", "How do I reset my password?", "Refunds on annual plans: how long do I have to ask for one?",
             "Export", "Which browsers are supported by the web app and the desktop client?"]


def load(model_dir, seed: int | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if seed is not None:  # another version: the same shapes, other weights
        torch.manual_seed(seed)
        for parameter in model.parameters():
            parameter.data.normal_(0, 0.2)
    return model, AutoTokenizer.from_pretrained(model_dir)


def prompt_ids(tokenizer, question: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                                         add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]


class Gate:
    """A forward hook that counts the model's forward passes and, while closed, holds the engine's thread at one."""

    def __init__(self, model):
        self.passes, self.open = 0, threading.Event()
        self.open.set()
        self.handle = model.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.passes += 1
        assert self.open.wait(timeout=30)


def generated_alone(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """Each prompt's greedy answer from ``generate``, alone (repetition penalty 1.3, as the engines below)."""
    with torch.inference_mode():
        return [model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                               repetition_penalty=1.3, pad_token_id=tokenizer.eos_token_id)[0, len(ids):].tolist()
                for ids in prompts]


def stream_together(engine: Engine, gate: Gate, requests: list[tuple], seen=lambda: None) -> list[list[int]]:
    """Each (prompt ids, max_new_tokens, temperature) streamed from its own thread, the engine held at its first step
    by ``gate`` while they are queued, so they are generated together; their answers in order. ``seen`` is called at
    each piece streamed. Stops the engine."""
    answers: dict[int, list[int]] = {}

    def ask(i: int, ids: list[int], max_new_tokens: int, temperature: float) -> None:
        for tokens in engine.stream(ids, max_new_tokens, temperature=temperature):
            answers[i] = tokens
            seen()

    threads = [threading.Thread(target=ask, args=(i, *request)) for i, request in enumerate(requests)]
    gate.open.clear()
    try:
        for thread in threads:
            thread.start()
        gate.open.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        gate.handle.remove()
        engine.stop()
    return [answers[i] for i in range(len(requests))]


@pytest.mark.parametrize("decoding", [[(1, 7), (1, 30), (1, 19)], [(1, 7)]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_request_attends_causally_to_its_own_keys_alone(dtype, decoding):
    """A step mixing decoding requests (attended together, their keys padded to the longest, or one alone), a prompt
    chunk after a cached prefix and a whole prompt: each request's output is SDPA over its own keys alone, query i of
    n_q seeing the keys up to position n_k - n_q + i, with 2 query heads reading each key head."""
    torch.manual_seed(0)
    rows = [decoding[0], (5, 12), *decoding[1:], (6, 6)]  # (queries, keys), in the engine's order
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()]) for sizes in zip(*rows))
    tokens, keys = int(cu_q[-1]), int(cu_k[-1])
    query = torch.randn(1, tokens, 4, 8, dtype=dtype).transpose(1, 2)  # the engine's layouts
    key, value = torch.randn(2, keys, 2, 8, dtype=dtype).transpose(1, 2)[:, None]
    out, _ = varlen_attention(None, query, key, value, scaling=0.3, cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k)
    assert out.shape == (1, tokens, 4, 8) and out.dtype == dtype
    for (n_q, n_k), q0, k0 in zip(rows, cu_q.tolist(), cu_k.tolist()):
        sees = torch.arange(n_k)[None, :] <= torch.arange(n_k - n_q, n_k)[:, None]
        expected = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, q0:q0 + n_q].float(), key[:, :, k0:k0 + n_k].repeat_interleave(2, dim=1).float(),
            value[:, :, k0:k0 + n_k].repeat_interleave(2, dim=1).float(), attn_mask=sees, scale=0.3)
        torch.testing.assert_close(out[0, q0:q0 + n_q].transpose(0, 1).float(), expected[0],
                                   **({} if dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}))


@pytest.mark.slow
def test_concurrent_answers_are_each_the_answer_generated_alone(tiny_model_dir):
    """Five requests of different lengths sharing a system prompt, started together: each gets, token for token, the
    greedy answer ``generate`` gives it alone (repetition penalty included)."""
    model, tokenizer = load(tiny_model_dir)
    prompts = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    alone = generated_alone(model, tokenizer, prompts, 20)
    engine = Engine(model, tokenizer.eos_token_id, max_batch=4, cache_tokens=4096, repetition_penalty=1.3)
    gate = Gate(model)
    answers = stream_together(engine, gate, [(ids, 20, 0.0) for ids in prompts])
    assert answers == alone
    assert len({tuple(a) for a in alone}) > 1  # the answers differ, so none was handed another's
    assert gate.passes < sum(len(a) for a in alone)  # requests shared forward passes
    assert model.config._attn_implementation == "sdpa"  # stopped, the engine gave the model its attention back


@pytest.mark.slow
def test_a_bfloat16_model_answers_batched_with_its_cache_in_bfloat16(tiny_model_dir):
    """``serving_dtype = 'auto'`` serves bfloat16 on CPUs that compute it natively: concurrent streams each get the
    answer generated alone in bfloat16, from a cache of half the float32 size."""
    model, tokenizer = load(tiny_model_dir)
    model = model.to(torch.bfloat16)
    prompts = [prompt_ids(tokenizer, q) for q in QUESTIONS]
    alone = generated_alone(model, tokenizer, prompts, 8)
    engine = Engine(model, tokenizer.eos_token_id, max_batch=5, cache_tokens=2048, repetition_penalty=1.3)
    dtypes = set()
    answers = stream_together(engine, Gate(model), [(ids, 8, 0.0) for ids in prompts],
                              seen=lambda: dtypes.add(engine.manager.batch_processor.cache.dtype))
    assert answers == alone and len({tuple(a) for a in alone}) > 1
    assert dtypes == {torch.bfloat16}


def test_each_request_keeps_its_own_temperature(tiny_model_dir):
    """Requests with a temperature draw their tokens; a greedy one beside them still gets the greedy answer."""
    model, tokenizer = load(tiny_model_dir)
    ids = prompt_ids(tokenizer, QUESTIONS[2])
    greedy = generated_alone(model, tokenizer, [ids], 8)[0]
    engine = Engine(model, -1, max_batch=4, cache_tokens=2048, repetition_penalty=1.3)
    answers = stream_together(engine, Gate(model), [(ids, 8, 0.0 if i == 0 else 2.0) for i in range(4)])
    assert answers[0] == greedy
    assert len({tuple(answers[i]) for i in (1, 2, 3)} | {tuple(greedy)}) > 1  # drawn: not all the greedy answer


def test_a_closed_stream_stops_its_generation_and_frees_its_slot(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    engine = Engine(model, -1, max_batch=1, cache_tokens=4096, repetition_penalty=1.0)  # -1: no end of text
    gate = Gate(model)
    try:
        stream = engine.stream(prompt_ids(tokenizer, QUESTIONS[1]), 1000, temperature=0.0)
        next(stream), next(stream)
        stream.close()  # the client went away
        assert engine.active == 0
        after_close = gate.passes
        second = list(engine.stream(prompt_ids(tokenizer, QUESTIONS[0]), 5, temperature=0.0, wait_s=10))
        assert len(second[-1]) == 5  # the only slot came free
        assert gate.passes - after_close <= 5 + 2  # the second answer's passes, and at most a step of the first
    finally:
        gate.handle.remove()
        engine.stop()


def test_a_swap_mid_stream_leaves_each_stream_whole_and_later_answers_on_the_new_version(tiny_model_dir):
    old, tokenizer = load(tiny_model_dir)
    new, _ = load(tiny_model_dir, seed=7)
    llm = LocalChatModel(old, tokenizer, version=None, model_name="tiny", max_new_tokens=12, max_batch=4,
                         repetition_penalty=1.3)
    messages = [[SystemMessage(SYSTEM), HumanMessage(q)] for q in QUESTIONS[:3]]
    reference = LocalChatModel(old, tokenizer, model_name="tiny", max_new_tokens=12, repetition_penalty=1.3)
    expected_old = [reference.invoke(m).content for m in messages]
    expected_new = LocalChatModel(new, tokenizer, model_name="tiny", max_new_tokens=12,
                                  repetition_penalty=1.3).invoke(messages[0]).content
    gate = Gate(old)
    gate.open.clear()
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        results[i] = llm.invoke(messages[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    try:
        for thread in threads:
            thread.start()
        while gate.passes == 0:  # the streams are in flight, held at their first step
            threading.Event().wait(0.01)
        llm.swap(new, "v2")  # a promotion
        gate.open.set()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        gate.handle.remove()
    assert [results[i].content for i in range(3)] == expected_old  # whole, and on the version they started on
    assert {results[i].response_metadata["model_name"] for i in range(3)} == {"tiny"}
    later = llm.invoke(messages[0])
    assert later.response_metadata["model_name"] == "tiny@v2"
    assert later.content == expected_new
    for model in (old, new):
        model._affinage_engine.stop()


def test_a_prompt_over_the_engine_cache_is_refused_with_both_numbers(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    llm = LocalChatModel(model, tokenizer, model_name="tiny", max_new_tokens=16, max_batch=2, kv_cache_tokens=64)
    with pytest.raises(ContextOverflowError,
                       match=r"needs \d+ tokens plus 16 .* cache \(setting kv_cache_tokens\) holds 64 tokens"):
        llm.invoke([SystemMessage(SYSTEM), HumanMessage("Hi")])


def test_a_prompt_prefix_already_in_the_cache_is_not_prefilled_again(tiny_model_dir):
    """Two questions after the same long system prompt: the second prefills its own tail, not the shared prefix."""
    model, tokenizer = load(tiny_model_dir)
    first, second = (prompt_ids(tokenizer, q) for q in QUESTIONS[1:3])
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert shared > 2 * PAGE_TOKENS
    engine = Engine(model, tokenizer.eos_token_id, max_batch=2, cache_tokens=4096, repetition_penalty=1.0)
    prefilled: list[int] = []
    hook = model.register_forward_hook(lambda module, args, kwargs, output: prefilled.append(
        kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        list(engine.stream(first, 2, temperature=0.0))  # (a block is kept for sharing once its request goes on)
        after_first = sum(prefilled)
        list(engine.stream(second, 2, temperature=0.0))
    finally:
        hook.remove()
        engine.stop()
    assert after_first == len(first) + 1  # the first prompt, every token of it, then one decoding step
    assert sum(prefilled) - after_first - 1 <= len(second) - shared + PAGE_TOKENS  # only what the cache lacked


def test_a_long_answer_does_not_hold_up_a_short_one_that_starts_after_it(tiny_model_dir):
    model, tokenizer = load(tiny_model_dir)
    engine = Engine(model, -1, max_batch=2, cache_tokens=4096, repetition_penalty=1.0)  # -1: no end of text
    gate = Gate(model)
    try:
        long = engine.stream(prompt_ids(tokenizer, QUESTIONS[4]), 400, temperature=0.0)
        next(long)
        short = list(engine.stream(prompt_ids(tokenizer, QUESTIONS[0]), 3, temperature=0.0))
        assert len(short[-1]) == 3
        assert gate.passes < 50  # the short one ended a few steps in, not after the long one's 400
        long.close()
    finally:
        gate.handle.remove()
        engine.stop()
