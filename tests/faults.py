"""Fault injection for the reliability and sweep tests: a loss that fails like a real run can.

Selected by config, from the command line of a test only:

    loss._target_=tests.faults.FaultyLoss +loss.fail=raise allowed_targets=[tests]

`fail=raise` raises in the first training step; `fail=nan@K` makes the loss NaN from this
process's K-th training step on; `fail=blowup_and_stop@K` gives the K-th step a finite loss
with an infinite gradient (an overflow in backward: the weights diverge) and sends the
process SIGTERM during it; `fail=sigterm_at_build@K` sends this process SIGTERM while
it builds its K-th loss, before that job's training installs its own handler (a sweep's
jobs run in one process: K=2 is the second job, stopped between jobs whatever the load);
`fail=none` is plain cross-entropy.
"""

from __future__ import annotations

import os
import signal

import torch
from torch import nn

from runner.training.losses import CrossEntropyLoss

# The overrides that select it; a test adds `+loss.fail=<mode>`.
FAULTY_LOSS = ["loss._target_=tests.faults.FaultyLoss", "allowed_targets=[tests]"]

_built = [0]  # the losses this process has built


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
        _built[0] += 1
        if fail.startswith("sigterm_at_build@") and _built[0] == int(fail.partition("@")[2]):
            os.kill(os.getpid(), signal.SIGTERM)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The cross-entropy, or the configured failure."""
        self.calls += 1
        loss = self.loss_fn(logits, target)
        if self.fail == "none" or self.fail.startswith("sigterm_at_build@"):
            return loss
        if self.fail.startswith("nan@"):
            return loss * float("nan") if self.calls >= int(self.fail[4:]) else loss
        if self.fail.startswith("blowup_and_stop@"):
            if self.calls == int(self.fail.partition("@")[2]):
                loss.register_hook(lambda grad: grad * float("inf"))
                os.kill(os.getpid(), signal.SIGTERM)
            return loss
        raise RuntimeError(f"loss.fail={self.fail}: the test hook failed this training step")
