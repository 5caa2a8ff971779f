"""SFT loss off the GPU: only the answer tokens go through the LM head.

TRL's fused LM head scores only the labelled positions where Triton runs (GPUs). Elsewhere it scores every position,
prompt included, in tiles, and scores them all again in the backward pass; on a CPU that costs more than the rest of
a small model's step. Here the backbone runs once and only the positions with a label (the answer; the prompt is
masked) are projected, a chunk of positions at a time whose logits are recomputed in the backward pass rather than
kept: the same loss and logged metrics for a fraction of the work and of the memory.
"""

from __future__ import annotations

import torch
from trl import SFTTrainer


CHUNK = 256  # answer positions projected at once: the vocabulary-wide logits of a packed 1024-token row would be
# ~200 MB each in float32, and the loss, its gradient and the logged entropy hold several copies


def answer_states(model, head: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states of the positions that predict a labelled token, and those labels (both flat, in batch order).

    The forward goes through ``model`` as given, wrapper included: DistributedDataParallel all-reduces gradients
    only for a forward that ran through it. A pre-hook on the LM ``head`` keeps the answer positions' states and
    hands the head a single row, so the forward never builds the vocabulary-wide logits.
    """
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    kept: list[torch.Tensor] = []

    def keep(module, args):
        kept.append(args[0][:, :-1][mask])
        return (kept[0][:1],)

    handle = head.register_forward_pre_hook(keep)
    try:
        model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
    finally:
        handle.remove()
    return kept[0], labels[mask]


def chunk_loss(head: torch.nn.Module, states: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Summed cross-entropy of one chunk, with its summed entropy and correct predictions (no gradient)."""
    logits = head(states).float()
    log_probs = logits.log_softmax(-1)
    with torch.no_grad():
        entropy = -(log_probs.exp() * log_probs).sum()
        correct = (logits.argmax(-1) == labels).sum()
    return torch.nn.functional.nll_loss(log_probs, labels, reduction="sum"), entropy, correct


def chunked_answer_loss(head: torch.nn.Module, states: torch.Tensor, labels: torch.Tensor,
                        chunk: int | None = None) -> tuple[torch.Tensor, float, int]:
    """The summed loss over every answer position, its entropy sum and correct count, ``chunk`` positions at a
    time; each chunk's logits are recomputed in the backward pass instead of kept (activation checkpointing)."""
    from torch.utils.checkpoint import checkpoint

    chunk = chunk or CHUNK
    loss, entropy, correct = states[:0].sum().float(), 0.0, 0  # zero, on the graph even with no answer position
    for start in range(0, labels.numel(), chunk):
        part, e, c = checkpoint(chunk_loss, head, states[start:start + chunk], labels[start:start + chunk],
                                use_reentrant=False)
        loss, entropy, correct = loss + part, entropy + e.item(), correct + int(c)
    return loss, entropy, correct


class AnswerLossSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss projects only answer positions, a chunk at a time, when the model is on the CPU."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or next(model.parameters()).device.type != "cpu":
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        states, labels = answer_states(model, head, inputs)
        summed, entropy, correct = chunked_answer_loss(head, states, labels)
        count = labels.numel() if num_items_in_batch is None else num_items_in_batch
        # summed over tokens, divided by the batch's token count: what TRL and Trainer do with num_items_in_batch
        loss = summed / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # the count covers every rank; DDP averages over them
        self._log_metrics(model, inputs, entropy, correct, labels.numel())
        return loss

    def _log_metrics(self, model, inputs, entropy: float, correct: int, count: int) -> None:
        """The entropy, token accuracy and token count SFTTrainer logs, over the answer positions of every rank."""
        mode = "train" if model.training else "eval"
        mask = inputs.get("attention_mask")  # absent from packed rows, whose padding is the pad token
        real = mask if mask is not None else inputs["input_ids"] != self.processing_class.pad_token_id
        local = torch.tensor([[entropy, correct, count, real.sum().item()]], dtype=torch.float64)
        entropy, correct, count, tokens = self.accelerator.gather(local).sum(0).tolist()
        n = max(count, 1)
        self._metrics[mode]["entropy"].append(entropy / n)
        self._metrics[mode]["mean_token_accuracy"].append(correct / n)
        if mode == "train":
            self._total_train_tokens += int(tokens)
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
