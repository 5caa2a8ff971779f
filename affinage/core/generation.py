"""What every local generation shares: where an answer is cut (stop strings, the sentence limit), and answering
many prompts in batches, for the gates' probes and general instructions.

A batch is generated in one ``model.generate`` call with left padding: on a CPU a 135M model's step costs little
more for many rows than for one (16 probes with the default model on 2 cores: 318 s one at a time, 173 s eight at
a time, 112 s sixteen at a time, with another job on the other core). Each row stops on its own, at the
end of text or the sentence limit (a stopping criterion per row), and is cut exactly as a streamed answer is.
Greedy answers match those generated alone except where padding changes the float sums enough to flip a near
tie between the top two tokens; the gates ask both versions the same way, so their comparison is unaffected.
"""

from __future__ import annotations

import re
from typing import Any

_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n\s*\n")


def cut_at_sentences(text: str, limit: int) -> str:
    """The text up to the end of its ``limit``-th sentence (0: no limit): small models ramble past a short answer."""
    if limit <= 0:
        return text
    for count, match in enumerate(_SENTENCE_END.finditer(text), start=1):
        if count == limit:
            return text[: match.end()].rstrip()
    return text


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    for marker in stop or ():
        position = text.find(marker)
        if position >= 0:
            text = text[:position]
    return text


def left_padded(encoded: list[dict], pad_id: int) -> dict:
    """Prompts' token ids (each as the tokenizer gave it alone) stacked with padding on the left, so every row's
    next token is generated at the same position."""
    import torch

    width = max(int(e["input_ids"].shape[1]) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = int(e["input_ids"].shape[1])
        ids[row, width - n:] = e["input_ids"][0]
        mask[row, width - n:] = 1
    return {"input_ids": ids, "attention_mask": mask}


def generate_batches(model: Any, tokenizer: Any, encoded: list[dict], generation: dict, max_sentences: int,
                     batch_size: int, progress: bool = False) -> list[str]:
    """The answers to ``encoded`` prompts, in their order, generated ``batch_size`` at a time (similar lengths
    together, so little is padding); ``generation``: ``generate``'s arguments, ``pad_token_id`` among them."""
    import torch
    from tqdm import tqdm

    pad_id = generation["pad_token_id"]
    order = sorted(range(len(encoded)), key=lambda i: int(encoded[i]["input_ids"].shape[1]))
    answers: dict[int, str] = {}
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="answers", unit="batch", disable=not progress):
        inputs = left_padded([encoded[i] for i in batch], pad_id)
        width = inputs["input_ids"].shape[1]

        def done(ids, scores, **_):
            """A row is done once its text holds ``max_sentences`` sentences (0: only at the end of text)."""
            texts = [t.lstrip() for t in tokenizer.batch_decode(ids[:, width:], skip_special_tokens=True)]
            return torch.tensor([len(cut_at_sentences(t, max_sentences)) < len(t) for t in texts], device=ids.device)

        with torch.inference_mode():
            out = model.generate(**inputs, **generation, stopping_criteria=[done] if max_sentences > 0 else None)
        for i, text in zip(batch, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
            answers[i] = cut_at_sentences(text.lstrip(), max_sentences)
    return [answers[i] for i in range(len(encoded))]
