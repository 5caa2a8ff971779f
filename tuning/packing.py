"""Packed rows kept apart: each batch row holds several conversations, and attention stays inside each one.

TRL's padding-free collator flattens a packed batch into one long row. Flash-attention kernels read the sequence
boundaries and pay nothing for that; SDPA (the CPU path) builds one dense mask over the whole flattened row, so
attention costs (rows x length)^2 instead of rows x length^2. Keeping the rows, each with position ids that restart
at every conversation and no attention mask, lets transformers build a block-diagonal mask per row: the same loss
for a fraction of the attention work.
"""

from __future__ import annotations

from typing import Any

from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

FLASH_KERNELS = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn",
                 "kernels-community/vllm-flash-attn3")


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
