"""``python -m affinage.cli`` whose second process fails at its second training step: a crash in one rank of a launch.

Run by tests/tuning/test_accelerate.py under ``accelerate launch``; not a test module itself.
"""

import os
import sys

from transformers import Trainer

from affinage.cli import main


def fail_at_second_step(training_step):
    steps = []

    def step(self, *args, **kwargs):
        steps.append(None)
        if len(steps) == 2:
            raise RuntimeError("rank 1 fails on purpose at step 2")
        return training_step(self, *args, **kwargs)
    return step


if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        Trainer.training_step = fail_at_second_step(Trainer.training_step)
    sys.exit(main())
