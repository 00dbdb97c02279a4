"""Fault injection for the reliability and sweep tests: a loss that fails like a real run can.

Selected by config, from the command line of a test only:

    loss._target_=tests.faults.FaultyLoss +loss.fail=raise allowed_targets=[tests]

`fail=raise` raises in the first training step; `fail=nan@K` makes the loss NaN from this
process's K-th training step on; `fail=blowup_and_stop@K` gives the K-th step a finite loss
with an infinite gradient (an overflow in backward: the weights diverge) and sends the
process SIGTERM during it; `fail=none` is plain cross-entropy.
"""

from __future__ import annotations

import os
import signal

import torch
from torch import nn

from runner.training.losses import CrossEntropyLoss

# The overrides that select it; a test adds `+loss.fail=<mode>`.
FAULTY_LOSS = ["loss._target_=tests.faults.FaultyLoss", "allowed_targets=[tests]"]


class FaultyLoss(nn.Module):
    """Cross-entropy, or the configured failure (see the module doc)."""

    def __init__(
        self,
        class_counts: torch.Tensor | None = None,
        fail: str = "raise",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.loss_fn = CrossEntropyLoss(label_smoothing=label_smoothing)
        self.fail = fail
        self.calls = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The cross-entropy, or the configured failure."""
        self.calls += 1
        loss = self.loss_fn(logits, target)
        if self.fail == "none":
            return loss
        if self.fail.startswith("nan@"):
            return loss * float("nan") if self.calls >= int(self.fail[4:]) else loss
        if self.fail.startswith("blowup_and_stop@"):
            if self.calls == int(self.fail.partition("@")[2]):
                loss.register_hook(lambda grad: grad * float("inf"))
                os.kill(os.getpid(), signal.SIGTERM)
            return loss
        raise RuntimeError(f"loss.fail={self.fail}: the test hook failed this training step")
