"""The decision after each epoch: improved? stop, and why?

`decide_after_epoch` makes every end-of-epoch decision in one small function, so the
epoch loop (runner/training/loop.py) only acts on its answer. It updates the
best-so-far record in the run's state, and its `prune` callable reports the epoch's value
to an Optuna trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from runner.training.state import TrainState


@dataclass(frozen=True)
class EpochDecision:
    """What to do after an epoch.

    Attributes:
        improved: The monitored value is the best so far: write best.pt.
        stop: Why training ends after this epoch's files are written: "interrupted" (a
            signal asked to stop), "non-finite" (the weights or the val loss are not
            finite under trainer.nan_policy=stop, or the weights under skip), "pruned",
            "patience"; None to go on.
    """

    improved: bool
    stop: str | None = None


def decide_after_epoch(
    state: TrainState,
    value: float,
    *,
    maximize: bool,
    patience: int | None,
    tie_break: float | None = None,
    interrupted: bool = False,
    finite: bool = True,
    stop_if_not_finite: bool = True,
    prune: Callable[[], bool] = lambda: False,
) -> EpochDecision:
    """Updates the best-so-far bookkeeping in `state` and decides what follows.

    Args:
        state: The training state after the epoch (`state.epoch` is that epoch).
        value: The epoch's monitored value.
        maximize: Whether larger values are better.
        patience: Epochs without a better monitored value before stopping; None = never.
        tie_break: The epoch's val/loss: when the monitored value ties with the best, the
            lower val/loss wins, so the tested weights are the best-trained ones (a metric
            like val/acc on a small val split ties often). None = ties keep the earlier.
            A tie won so still counts as an epoch without improvement for `patience`.
        interrupted: A signal asked the run to stop (the pruner is then not asked).
        finite: Whether the weights to save as best are finite; non-finite weights are
            never the best, however the metric came out.
        stop_if_not_finite: Whether a non-finite epoch stops the run.
        prune: Asked once per epoch whether a pruner stops the run here.

    Returns:
        Whether the epoch improved, and why training stops (None: it goes on).
    """
    tied_but_better = (
        value == state.best_value
        and tie_break is not None
        and (math.isnan(state.best_tie_break) or tie_break < state.best_tie_break)
    )
    improved = finite and (
        math.isnan(state.best_value)
        or (value > state.best_value if maximize else value < state.best_value)
        or tied_but_better
    )
    if improved:
        state.best_value, state.best_epoch = value, state.epoch
        state.best_tie_break = math.nan if tie_break is None else tie_break
    # Patience counts epochs without a better monitored value: a tie won on val/loss
    # moves best.pt, but a val/acc stuck while val/loss creeps down never stopped.
    if improved and not tied_but_better:
        state.epochs_since_best = 0
    else:
        state.epochs_since_best += 1
    # Non-finite first: a signal during the validation of a diverged epoch would save its
    # weights as last.pt, over the last good one.
    if not finite and stop_if_not_finite:
        return EpochDecision(improved, "non-finite")
    if interrupted:
        return EpochDecision(improved, "interrupted")
    if prune():
        return EpochDecision(improved, "pruned")
    if patience is not None and state.epochs_since_best >= patience:
        return EpochDecision(improved, "patience")
    return EpochDecision(improved)
