"""TRL's fused LM head, compact on the CPU as well: only the positions with a label go through the head.

TRL's DPO and KTO trainers score tokens through a fused LM head. On Triton devices it projects only the positions
whose label is not -100 (the answer); elsewhere it projects every position, prompt included, and masks the result
afterwards, so that tile shapes stay fixed for compilers such as Neuron's. A CPU in eager mode compiles nothing, and
there projecting the prompt too is most of a preference step's cost for a small model (measured in
``bench/train_throughput.py``). The log-probabilities, loss and gradients are the same either way
(``tests/tuning/test_compact_head.py``); only the work differs. The kernel itself still falls back to TRL's
PyTorch tiles on the CPU: only the choice of which positions to score is changed.
"""

from __future__ import annotations

import trl.trainer.utils as trl_utils

_triton_only = trl_utils._use_triton  # TRL's own rule, kept for every other device


def compact_positions(device) -> bool:
    """Score only labelled positions on the CPU, and wherever TRL already does (Triton devices)."""
    return device.type == "cpu" or _triton_only(device)


def use_compact_head() -> None:
    """Make every fused LM head in this process compact on the CPU (idempotent; TRL reads the rule per call)."""
    trl_utils._use_triton = compact_positions
