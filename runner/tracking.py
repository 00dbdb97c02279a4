"""Experiment tracking: MLflow (SQLite file or server) or nothing.

Trackers buffer metrics and send them in one `log_batch` call per flush, so logging
costs one database round trip per epoch, never one per metric per step.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# MLflow limits per log_batch call.
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LENGTH = 6000


class NullTracker:
    """Tracks nothing; the run dir still gets metrics.json and checkpoints."""

    run_id: str | None = None

    def start(
        self,
        experiment_name: str,
        run_name: str | None,
        tags: dict[str, str],
        resume_run_id: str | None = None,
    ) -> None:
        """Does nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Does nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Does nothing."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Does nothing."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Does nothing."""

    def flush(self) -> None:
        """Does nothing."""

    def finish(self, status: str) -> None:
        """Does nothing."""

    def describe(self) -> str:
        """Where the run can be looked at."""
        return "not tracked (logger=none)"


class MlflowTracker(NullTracker):
    """Logs a run to MLflow through `MlflowClient` with explicit run ids.

    Args:
        tracking_uri: `sqlite:///path/to/mlflow.db` or a server URL.
        artifact_location: Local folder for the artifacts of experiments this tracker
            creates in a local store; a server chooses its own.
        experiment_name: Experiment to log into; None = the name the run passes in
            (the data set's name).
        run_name: Display name of the run; None = the run dir's name.
    """

    def __init__(
        self,
        tracking_uri: str,
        artifact_location: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.client = None
        self.run_id = None
        self.experiment_id = None
        self._metrics: list = []

    @property
    def is_local(self) -> bool:
        """Whether the store is a local database file rather than a server."""
        return not self.tracking_uri.startswith(("http://", "https://", "databricks"))

    def start(
        self,
        experiment_name: str,
        run_name: str | None,
        tags: dict[str, str],
        resume_run_id: str | None = None,
    ) -> None:
        """Creates (or reopens, for a resumed run) the MLflow run.

        Args:
            experiment_name: Experiment to use when none was configured.
            run_name: Display name when none was configured.
            tags: Tags of the run.
            resume_run_id: Id of this run's earlier MLflow run, to log into it again.
        """
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
                parents=True, exist_ok=True
            )
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        name = self.experiment_name or experiment_name
        self.experiment_id = self._experiment_id(name)
        if resume_run_id:
            self.client.update_run(resume_run_id, status="RUNNING")
            self.run_id = resume_run_id
            self.set_tags(tags)
            return
        run = self.client.create_run(
            self.experiment_id, run_name=self.run_name or run_name, tags=tags
        )
        self.run_id = run.info.run_id

    def _experiment_id(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.is_local and self.artifact_location:
            location = (Path(self.artifact_location).resolve() / name).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:
            # Another run created it first.
            return self.client.get_experiment_by_name(name).experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Logs params in batches of MLflow's maximum size; long values are truncated."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in params.items()]
        for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Buffers metrics; `flush` sends them."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics.extend(Metric(k, float(v), now, step) for k, v in metrics.items())

    def flush(self) -> None:
        """Sends the buffered metrics in as few calls as MLflow allows."""
        pending, self._metrics = self._metrics, []
        for start in range(0, len(pending), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=pending[start : start + _MAX_METRICS_PER_BATCH]
            )

    def set_tags(self, tags: dict[str, str]) -> None:
        """Sets tags on the run."""
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copies a file into the run's artifacts."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str) -> None:
        """Flushes and ends the run as FINISHED, FAILED or KILLED."""
        if self.run_id is None:
            return
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status=status)

    def describe(self) -> str:
        """Where the run can be looked at."""
        if self.is_local:
            return (
                f"run {self.run_id}; view with: mlflow ui --backend-store-uri {self.tracking_uri}"
            )
        base = self.tracking_uri.rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
