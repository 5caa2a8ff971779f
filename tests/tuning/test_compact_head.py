"""The fused LM head on the CPU: scoring only labelled positions gives TRL's numbers for a fraction of the work."""

import torch
import trl.trainer.utils as trl_utils
from transformers import AutoModelForCausalLM
from trl.kernels.chunked_logprob import _use_triton as trl_rule  # TRL's own rule, even once a recipe swapped it

from tuning.compact_head import compact_positions, use_compact_head

APPLY = trl_utils._ChunkedLogProbFunction.apply


def score(model, rule, monkeypatch, ids, labels):
    """Per-token log-probs, loss, parameter gradients, and how many positions went through the head."""
    monkeypatch.setattr(trl_utils, "_use_triton", rule)
    rows = []
    spy = lambda *args: rows.append(len(args[0])) or APPLY(*args)  # noqa: E731 - counts positions scored
    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.log_probs.detach(), out.loss.detach(), grads, rows


def test_compact_scoring_gives_the_same_log_probs_loss_and_gradients(tiny_model_dir, monkeypatch):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trl_utils.add_fused_lm_head(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :7] = -100  # the prompt
    labels[1, 10:] = -100  # padding after a shorter answer
    every = score(model, trl_rule, monkeypatch, ids, labels)  # TRL's own rule: every position on the CPU
    compact = score(model, compact_positions, monkeypatch, ids, labels)

    assert every[3] == [2 * 11] and compact[3] == [int((labels[:, 1:] != -100).sum())] == [5 + 3]
    assert torch.allclose(every[0], compact[0], atol=1e-6) and torch.allclose(every[1], compact[1], atol=1e-6)
    assert every[2].keys() == compact[2].keys() and every[2]
    for name, grad in every[2].items():
        assert torch.allclose(grad, compact[2][name], atol=1e-6), name


def test_use_compact_head_switches_the_cpu_rule_only(monkeypatch):
    monkeypatch.setattr(trl_utils, "_use_triton", trl_rule)
    use_compact_head()
    assert trl_rule(torch.device("cpu")) is False and trl_utils._use_triton(torch.device("cpu")) is True
    assert trl_utils._use_triton(torch.device("meta")) == trl_rule(torch.device("meta"))
