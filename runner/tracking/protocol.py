"""What a run asks of its tracker; `MlflowTracker` and `NullTracker` both provide it.

`end_run` ends a run, and tells its caller when Ctrl-C cut the last wait for the store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from runner.tracking.inputs import DatasetRecord

log = logging.getLogger(__name__)


class DeliveryInterrupted(KeyboardInterrupt):
    """Ctrl-C while `finish` waited for a store to take the run's last logs.

    The run had ended and its status was queued; what the store did not take is saved
    to `mlflow_pending.jsonl` in the run dir (a sweep's parent run: the sweep dir), and
    the log names the command that sends it.
    """


@runtime_checkable
class Tracker(Protocol):
    """An experiment tracker as the recipes, reports and sweeps use it.

    `prepare` may come first (it fails fast when a server is down and starts what can
    run beside the data and model build), then `connect` (it fails fast too when nothing
    was prepared), then `start`; every other call belongs to the started run, and
    `finish` ends it with a status.
    """

    run_id: str | None
    # Whether `log_model` exports a model; when not, the run skips building one to export.
    export_model: bool

    def prepare(self, experiment_name: str) -> None:
        """Checks the server and starts what may run beside the data and model build."""

    def connect(self, experiment_name: str) -> None:
        """Opens the store and the experiment (the data set's name when none is set)."""

    def start(
        self,
        run_name: str | None,
        tags: dict[str, str],
        resume_run_id: str | None = None,
        local_dir: Path | None = None,
    ) -> None:
        """Creates the run, or reopens `resume_run_id` to log into it again."""

    def wait_connected(self) -> None:
        """Returns once what `start` left opening on a thread is open.

        Called before the run imports a library that thread may import too (two threads
        importing the same modules at once can leave one of them without a module).
        """

    def log_params(self, params: dict[str, Any]) -> None:
        """Logs params (once each: MLflow refuses to change a logged param)."""

    def log_metrics(
        self,
        metrics: dict[str, float],
        step: int,
        model_id: str | None = None,
        dataset: DatasetRecord | None = None,
    ) -> None:
        """Buffers metrics for the next `flush`.

        `model_id` and `dataset` say what the metrics measure: a logged model, on one of
        the data sets the run logged as inputs (MLflow 3 shows them on the model's page
        and finds the model by them).
        """

    def set_tags(self, tags: dict[str, str]) -> None:
        """Sets tags on the run."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copies a file into the run's artifacts."""

    def log_inputs(self, inputs: list[DatasetRecord], model_ids: tuple[str, ...] = ()) -> None:
        """Records the data sets the run used (its splits) and the logged models it tested."""

    def log_model(
        self,
        model: Any,
        input_example: Any,
        metadata: dict[str, Any],
        files: list[Path],
        fallback: Path | None = None,
        tags: dict[str, str] | None = None,
    ) -> str | None:
        """Logs a torch module as the run's model; returns its id (None: not logged).

        `input_example` is a batch the model takes; `metadata` and `files` travel with
        the model, and `tags` (which weights it holds) are the model's. When the model
        cannot be logged, `fallback` (a file) is uploaded as a run artifact instead, so
        the weights are never lost.
        """

    def register_model(self, model_id: str | None) -> None:
        """Registers the logged model as a new version, once; None (none logged): nothing.

        Called after the test passed: a registered version is a tested model.
        """

    def find_model(self, tags: dict[str, str], run_id: str | None = None) -> str | None:
        """The id of a model this run (or `run_id`) logged with `tags`; None: none."""

    def flush(self) -> None:
        """Sends the buffered metrics."""

    def finish(self, status: str) -> None:
        """Flushes and ends the run as FINISHED, FAILED or KILLED.

        Raises:
            DeliveryInterrupted: Ctrl-C ended the wait for the store; what it did not
                take is saved.
        """

    def describe(self) -> str:
        """Where the run can be looked at, for the summary."""


def end_run(tracker: Tracker, status: str, files_in: Path | None, what: str = "the run") -> bool:
    """Ends a tracked run with `status` (`tracker.finish`).

    Args:
        tracker: The run's tracker.
        status: FINISHED, FAILED or KILLED.
        files_in: Where the run's files (and its saved logs) are, for the message.
        what: The run, as the message names it.

    Returns:
        False when Ctrl-C stopped the wait for the store to take the last logs: they are
        saved, and the tracker printed the command that sends them. The caller decides
        how the process ends (a finished run: exit status 130).
    """
    try:
        tracker.finish(status)
    except DeliveryInterrupted:
        log.warning(
            "Ctrl-C: stopped waiting for the tracking store; %s ended %s, its files are in %s",
            what,
            status,
            files_in,
        )
        return False
    return True
