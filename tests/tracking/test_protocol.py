"""Both trackers provide the Tracker protocol, method by method, with its signatures."""

from __future__ import annotations

import inspect

import pytest

from runner.tracking.mlflow_tracker import MlflowTracker
from runner.tracking.null import NullTracker
from runner.tracking.protocol import Tracker

METHODS = [
    name for name, value in vars(Tracker).items() if callable(value) and not name.startswith("_")
]


@pytest.mark.parametrize("tracker", [NullTracker(), MlflowTracker("sqlite:///unused.db")])
def test_each_tracker_has_the_protocols_methods_and_signatures(tracker):
    assert isinstance(tracker, Tracker)
    assert {"connect", "start", "log_metrics", "finish", "describe"} <= set(METHODS)
    for name in METHODS:
        ours = inspect.signature(getattr(type(tracker), name))
        assert list(ours.parameters) == list(inspect.signature(getattr(Tracker, name)).parameters)
    assert tracker.run_id is None  # nothing started
