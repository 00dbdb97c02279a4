"""The end-of-epoch decisions: improved? stop for a signal, the pruner or patience?"""

from __future__ import annotations

import math

import pytest
import torch

from runner.training.decision import decide_after_epoch
from runner.training.state import TrainState


def epochs(values, *, maximize=True, patience=None, prune_at=None, interrupted_at=None):
    """Feeds `values` epoch by epoch; returns each decision and the final state."""
    state, decisions = TrainState(), []
    for epoch, value in enumerate(values, start=1):
        state.epoch = epoch
        decision = decide_after_epoch(
            state,
            value,
            maximize=maximize,
            patience=patience,
            interrupted=epoch == interrupted_at,
            prune=lambda epoch=epoch: epoch == prune_at,
        )
        decisions.append(decision)
        if decision.stop:
            break
    return decisions, state


def test_the_first_epoch_always_improves_and_a_tie_does_not():
    decisions, state = epochs([0.5, 0.7, 0.7, 0.6])
    assert [d.improved for d in decisions] == [True, True, False, False]
    assert (state.best_value, state.best_epoch, state.epochs_since_best) == (0.7, 2, 2)


def test_min_mode_keeps_the_lowest_value():
    decisions, state = epochs([1.0, 0.8, 0.9], maximize=False)
    assert [d.improved for d in decisions] == [True, True, False]
    assert state.best_value == 0.8 and state.best_epoch == 2


def test_patience_stops_after_that_many_epochs_without_improvement():
    decisions, state = epochs([0.5, 0.6, 0.6, 0.6, 0.9], patience=2)
    assert [d.stop for d in decisions] == [None, None, None, "patience"]
    assert state.epoch == 4 and state.best_epoch == 2


def test_a_signal_comes_before_the_pruner_and_the_pruner_before_patience():
    decisions, _ = epochs([0.5, 0.4], patience=1, prune_at=2, interrupted_at=2)
    assert decisions[-1].stop == "interrupted"
    decisions, _ = epochs([0.5, 0.4], patience=1, prune_at=2)
    assert decisions[-1].stop == "pruned"


def test_an_improving_epoch_may_still_be_the_last_one():
    decisions, state = epochs([0.5, 0.9], prune_at=2)
    assert decisions[-1].improved and decisions[-1].stop == "pruned"
    assert not math.isnan(state.best_value) and state.best_epoch == 2


def test_a_tie_on_the_monitor_goes_to_the_lower_val_loss():
    """val/acc 0.994 at epoch 2 and again at 4 with a lower val/loss: epoch 4's weights."""
    state, improved = TrainState(), []
    for epoch, (acc, loss) in enumerate([(0.9, 0.5), (0.994, 0.2), (0.99, 0.1), (0.994, 0.05)]):
        state.epoch = epoch + 1
        decision = decide_after_epoch(state, acc, maximize=True, patience=None, tie_break=loss)
        improved.append(decision.improved)
    assert improved == [True, True, False, True]
    assert state.best_epoch == 4 and state.best_tie_break == 0.05
    assert state.epochs_since_best == 2, "no better val/acc since epoch 2"
    # A tie with a higher val/loss does not move the best.
    state.epoch = 5
    assert not decide_after_epoch(
        state, 0.994, maximize=True, patience=None, tie_break=0.3
    ).improved


def test_ties_won_on_val_loss_do_not_hold_off_patience():
    """val/acc stuck at 0.375 while val/loss fell: every epoch was *best* and a patience
    of 2 never stopped the run."""
    state, decisions = TrainState(), []
    for epoch, loss in enumerate([0.9, 0.8, 0.7, 0.6, 0.5], start=1):
        state.epoch = epoch
        decisions.append(
            decide_after_epoch(state, 0.375, maximize=True, patience=2, tie_break=loss)
        )
        if decisions[-1].stop:
            break
    assert [d.improved for d in decisions] == [True, True, True]  # best.pt: the lowest loss
    assert decisions[-1].stop == "patience" and state.best_epoch == 3


@pytest.mark.slow
def test_a_run_whose_patience_was_met_trains_no_more_epochs_when_resumed(tmp_path):
    """A stop during the validation that met the patience (or a rerun after an early
    stop) resumes with the patience met: it ends there, as the uninterrupted run did,
    instead of training another epoch."""
    from runner.cli import run
    from tests.conftest import compose_run

    slow = ["logger=none", "optim.lr=1e-9"]  # no epoch beats the first
    run(compose_run(tmp_path, "r", *slow, "trainer.max_epochs=2"))
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    before = torch.load(last, weights_only=True)["state"]
    assert (before["epoch"], before["epochs_since_best"]) == (2, 1), "the case needs this"
    more = ["trainer.max_epochs=4", "trainer.early_stopping_patience=1"]  # may change
    run(compose_run(tmp_path, "r", *slow, *more))
    assert torch.load(last, weights_only=True)["state"]["epoch"] == 2


def test_a_diverged_epoch_stops_as_diverged_even_when_a_signal_came_too():
    """As "interrupted", its non-finite weights were saved as last.pt over the last good."""
    state = TrainState(epoch=3)
    decision = decide_after_epoch(
        state, math.nan, maximize=True, patience=None, interrupted=True, finite=False
    )
    assert decision.stop == "non-finite" and not decision.improved
    skipping = decide_after_epoch(
        TrainState(epoch=3),
        0.5,
        maximize=True,
        patience=None,
        interrupted=True,
        finite=False,
        stop_if_not_finite=False,
    )
    assert skipping.stop == "interrupted"  # nan_policy=skip goes on: the signal stops it


def test_the_first_validation_waits_for_the_thread_opening_the_mlflow_client(make_cfg, monkeypatch):
    """mlflow's import on that thread (a fresh process's) and torchmetrics' on the main one
    both import scipy: together they once failed with KeyError: 'scipy' at the first
    validation. The race itself cannot be reproduced at will; the order that rules it
    out is checked: the run waits for the tracker before torchmetrics is first needed."""
    from runner.cli import run
    from runner.tracking.mlflow_tracker import MlflowTracker
    from runner.training import loop

    calls = []
    waiting, building = MlflowTracker.wait_connected, loop.build_metrics

    def recording_wait(self):
        calls.append("wait_connected")
        return waiting(self)

    def recording_build(*args, **kwargs):
        calls.append("build_metrics")
        return building(*args, **kwargs)

    monkeypatch.setattr(MlflowTracker, "wait_connected", recording_wait)
    monkeypatch.setattr(loop, "build_metrics", recording_build)
    run(make_cfg("trainer.max_epochs=2", "logger.system_metrics=false"))
    assert calls[:2] == ["wait_connected", "build_metrics"], calls
