"""SFT loss off the GPU: only the answer tokens go through the LM head.

TRL's fused LM head scores only the labelled positions where Triton runs (GPUs). Elsewhere it scores every position,
prompt included, in tiles, and scores them all again in the backward pass; on a CPU that costs more than the rest of
a small model's step. Here the backbone runs once and only the positions with a label (the answer; the prompt is
masked) are projected: the same loss and logged metrics for a fraction of the work.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer


def answer_logits(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the positions that predict a labelled token, and those labels (both flat, in batch order)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT's LoRA lives in the modules
    backbone = getattr(base, base.base_model_prefix)
    hidden = backbone(**{**{k: v for k, v in inputs.items() if k != "labels"}, "use_cache": False})
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    return base.get_output_embeddings()(hidden.last_hidden_state[:, :-1][mask]).float(), labels[mask]


class AnswerLossSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss projects only answer positions when the model is on the CPU."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or next(model.parameters()).device.type != "cpu":
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        logits, labels = answer_logits(model, inputs)
        count = labels.numel() if num_items_in_batch is None else num_items_in_batch
        # summed over tokens, divided by the batch's token count: what TRL and Trainer do with num_items_in_batch
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._log_metrics(model, inputs, logits.detach(), labels)
        return loss

    def _log_metrics(self, model, inputs, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """The entropy, token accuracy and token count SFTTrainer logs, from the answer logits."""
        mode = "train" if model.training else "eval"
        log_probs = logits.log_softmax(-1)
        n = max(labels.numel(), 1)
        self._metrics[mode]["entropy"].append((-(log_probs.exp() * log_probs).sum(-1)).sum().item() / n)
        self._metrics[mode]["mean_token_accuracy"].append((logits.argmax(-1) == labels).sum().item() / n)
        if mode == "train":
            mask = inputs.get("attention_mask")  # absent from packed rows, whose padding is the pad token
            real = mask if mask is not None else inputs["input_ids"] != self.processing_class.pad_token_id
            self._total_train_tokens += int(real.sum())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
