"""Packed rows kept apart: each batch row holds several conversations, and attention stays inside each one.

TRL's padding-free collator flattens a packed batch into one long row. Flash-attention kernels read the sequence
boundaries and pay nothing for that; SDPA (the CPU path) builds one dense mask over the whole flattened row, so
attention costs (rows x length)^2 instead of rows x length^2. Keeping the rows, each with position ids that restart
at every conversation and no attention mask, lets transformers build a block-diagonal mask per row: the same loss
for a fraction of the attention work.

SDPA's CPU kernel still computes every block of that masked row-by-row square, though only the causal triangles of
the conversations on its diagonal count: for a 1024-token row of four or five conversations, about a twentieth of
it. ``per_conversation_attention`` attends each conversation alone instead (causal, so the kernel skips the upper
triangle): the same gradients, and a default-model step of two packed 1024-token rows took 28.9 s instead of 35.1 on
2 CPU cores (float32, activation checkpointing, steps alternating between the two in one process; the masked square
was a quarter of the step: its forward twice, and its backward). Rows of 512 tokens gain little (32.0 s against
32.8): their square is a quarter as large.
"""

from __future__ import annotations

from typing import Any

from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

FLASH_KERNELS = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn",
                 "kernels-community/vllm-flash-attn3")
PER_CONVERSATION = "affinage_per_conversation"  # the attention implementation's name in transformers' registry


class PackedRowsCollator(DataCollatorForLanguageModeling):
    """Batches bfd-packed rows as ``rows x longest`` with restarting position ids, padded at the right."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from trl.trainer.utils import pad

        input_ids = [torch.tensor(example["input_ids"]) for example in examples]
        labels = [torch.tensor(example.get("labels", example["input_ids"])) for example in examples]
        positions = self.get_position_ids_from_packed_seq_lengths([example["seq_lengths"] for example in examples])
        output = {"input_ids": pad(input_ids, padding_value=self.pad_token_id, padding_side="right"),
                  "labels": pad(labels, padding_value=-100, padding_side="right"),
                  "position_ids": pad(positions, padding_value=0, padding_side="right")}
        # a conversation's first token is not predicted from the one before it; padding (position 0) trains nothing
        output["labels"][output["position_ids"] == 0] = -100
        return output


def rows_collator(model, tokenizer) -> PackedRowsCollator | None:
    """The row-keeping collator where the attention kernel would otherwise pay for flattening; None under flash."""
    if getattr(model.config, "_attn_implementation", None) in FLASH_KERNELS:
        return None  # TRL's flattened padding-free batches are what varlen kernels want
    return PackedRowsCollator(pad_token_id=tokenizer.pad_token_id, padding_free=True)


def conversation_spans(positions: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each conversation of a packed row, whose position ids restart at 0 with each one; the right
    padding (position 0 repeated) is one span of its own."""
    end = max((i + 1 for i, p in enumerate(positions) if p != 0), default=0)  # past the last real token
    if end == 0:
        return [(0, len(positions))] if positions else []
    starts = [0] + [i for i in range(1, end) if positions[i] == 0]
    spans = list(zip(starts, starts[1:] + [end]))
    return spans + [(end, len(positions))] if end < len(positions) else spans


def per_conversation_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                               scaling: float | None = None, **kwargs):
    """Causal attention within each conversation of a packed row (``position_ids`` mark them), one SDPA call a
    conversation; anything else (no position ids, a single query, keys beyond the queries from a filled cache) takes
    transformers' SDPA path. Only the SFT recipe's model attends this way (``attend_per_conversation``), for the
    packed rows of ``PackedRowsCollator``."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    positions = kwargs.get("position_ids")
    if positions is None or query.shape[2] == 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows = []  # unbind and split rather than slice: their backward is one concatenation, a slice's a full-size copy
    for row, tensors in enumerate(zip(query.unbind(0), key.unbind(0), value.unbind(0))):
        lengths = [b - a for a, b in conversation_spans(positions[min(row, positions.shape[0] - 1)].tolist())]
        rows.append(torch.cat([F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True,
                                                              dropout_p=dropout, scale=scaling, enable_gqa=True)
                               for q, k, v in zip(*(t.split(lengths, dim=1) for t in tensors))], dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def attend_per_conversation(model) -> None:
    """``model`` attends as ``per_conversation_attention`` does, for the packed rows of ``PackedRowsCollator``
    (registered under ``PER_CONVERSATION``, with transformers' SDPA mask, still built for the calls it passes on)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PER_CONVERSATION, per_conversation_attention)
    AttentionMaskInterface.register(PER_CONVERSATION, sdpa_mask)
    model.set_attn_implementation(PER_CONVERSATION)
