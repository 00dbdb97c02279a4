"""The tracker of `logger=none` (and of DDP ranks other than 0): it records nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.tracking.inputs import DatasetRecord


class NullTracker:
    """Tracks nothing; the run dir still gets metrics.json and checkpoints."""

    run_id: str | None = None
    export_model: bool = False

    def prepare(self, experiment_name: str) -> None:
        """Does nothing."""

    def connect(self, experiment_name: str) -> None:
        """Does nothing."""

    def start(
        self,
        run_name: str | None,
        tags: dict[str, str],
        resume_run_id: str | None = None,
        local_dir: Path | None = None,
    ) -> None:
        """Does nothing."""

    def wait_connected(self) -> None:
        """Does nothing."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Does nothing."""

    def log_metrics(
        self,
        metrics: dict[str, float],
        step: int,
        model_id: str | None = None,
        dataset: DatasetRecord | None = None,
    ) -> None:
        """Does nothing."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Does nothing."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Does nothing."""

    def log_inputs(self, inputs: list[DatasetRecord], model_ids: tuple[str, ...] = ()) -> None:
        """Does nothing."""

    def log_model(
        self,
        model: Any,
        input_example: Any,
        metadata: dict[str, Any],
        files: list[Path],
        fallback: Path | None = None,
        tags: dict[str, str] | None = None,
    ) -> str | None:
        """Logs nothing; the weights stay in the run dir."""
        return None

    def register_model(self, model_id: str | None) -> None:
        """Registers nothing."""

    def find_model(self, tags: dict[str, str], run_id: str | None = None) -> str | None:
        """None: no model is logged."""
        return None

    def flush(self) -> None:
        """Does nothing."""

    def finish(self, status: str) -> None:
        """Does nothing."""

    def describe(self) -> str:
        """Where the run can be looked at."""
        return "not tracked (logger=none)"
