"""Catastrophic-forgetting measures: how far a candidate moved from the base model on text it was not trained on."""

from __future__ import annotations

import math


def perplexity(model, tokenizer, texts: list[str], max_length: int = 512) -> float:
    """Token-weighted perplexity over ``texts``: general text the support data never touched."""
    import torch

    if not texts:
        raise ValueError("perplexity needs at least one reference text")
    total_nll, total_tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            if ids.shape[1] < 2:
                continue
            loss = model(input_ids=ids, labels=ids).loss  # mean over ids.shape[1] - 1 predicted tokens
            total_nll += float(loss) * (ids.shape[1] - 1)
            total_tokens += ids.shape[1] - 1
    if not total_tokens:
        raise ValueError("the reference texts are too short to score (need two tokens or more)")
    return math.exp(total_nll / total_tokens)


def mean_kl(candidate, base, tokenizer, prompts: list[str], max_length: int = 256) -> float:
    """Mean KL(base || candidate) of the next-token distributions over every position of ``prompts``.

    Zero when the candidate predicts exactly as the base; it grows as fine-tuning reshapes general behaviour.
    """
    import torch
    import torch.nn.functional as F

    if not prompts:
        raise ValueError("mean_kl needs at least one reference prompt")
    total, positions = 0.0, 0
    candidate.eval()
    base.eval()
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
            base_logp = F.log_softmax(base(input_ids=ids).logits.float(), dim=-1)
            cand_logp = F.log_softmax(candidate(input_ids=ids).logits.float(), dim=-1)
            kl = (base_logp.exp() * (base_logp - cand_logp)).sum(-1)  # per position
            total += float(kl.sum())
            positions += kl.numel()
    return total / positions
