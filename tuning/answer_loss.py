"""SFT loss off the GPU: only the answer tokens go through the LM head.

TRL's fused LM head scores only the labelled positions where Triton runs (GPUs). Elsewhere it scores every position,
prompt included, in tiles, and scores them all again in the backward pass; on a CPU that costs more than the rest of
a small model's step. Here the backbone runs once and only the positions with a label (the answer; the prompt is
masked) are projected: the same loss and logged metrics for a fraction of the work.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer


def answer_logits(model, head: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the positions that predict a labelled token, and those labels (both flat, in batch order).

    The forward goes through ``model`` as given, wrapper included: DistributedDataParallel all-reduces gradients
    only for a forward that ran through it. A pre-hook on the LM ``head`` hands it just the answer positions.
    """
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][:, :-1][mask],))
    try:
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits
    finally:
        handle.remove()
    return logits.float(), labels[mask]


class AnswerLossSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss projects only answer positions when the model is on the CPU."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or next(model.parameters()).device.type != "cpu":
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        logits, labels = answer_logits(model, head, inputs)
        count = labels.numel() if num_items_in_batch is None else num_items_in_batch
        # summed over tokens, divided by the batch's token count: what TRL and Trainer do with num_items_in_batch
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # the count covers every rank; DDP averages over them
        self._log_metrics(model, inputs, logits.detach(), labels)
        return loss

    def _log_metrics(self, model, inputs, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """The entropy, token accuracy and token count SFTTrainer logs, from the answer logits of every rank."""
        mode = "train" if model.training else "eval"
        log_probs = logits.log_softmax(-1)
        mask = inputs.get("attention_mask")  # absent from packed rows, whose padding is the pad token
        real = mask if mask is not None else inputs["input_ids"] != self.processing_class.pad_token_id
        local = torch.tensor([[(-(log_probs.exp() * log_probs).sum(-1)).sum().item(),
                               (logits.argmax(-1) == labels).sum().item(), labels.numel(), real.sum().item()]],
                             dtype=torch.float64)
        entropy, correct, count, tokens = self.accelerator.gather(local).sum(0).tolist()
        n = max(count, 1)
        self._metrics[mode]["entropy"].append(entropy / n)
        self._metrics[mode]["mean_token_accuracy"].append(correct / n)
        if mode == "train":
            self._total_train_tokens += int(tokens)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
