"""Sweeps: one MLflow parent run per sweep, a manifest of every job, resume, fail-fast.

The pieces meet only through the sweep dir, so they work whichever launcher runs the
jobs (in this process, in local worker processes, or as SLURM jobs on other machines):

    <sweep_dir>/sweep.json     the parent MLflow run: id, tracking URI, experiment
    <sweep_dir>/manifest.json  one entry per job: overrides, status, run dir, run id, value
    <sweep_dir>/STOP           written by a failing job when `sweep.fail_fast=true`

`SweepCallback` (a Hydra callback in the launching process) creates the parent run
before the first job and summarises the sweep after the last one. Each job wraps its
training in `SweepJob.run`, which records it in the manifest, skips it when a resumed
sweep already finished it, and turns a failure into a FAILED entry instead of an
exception, so one failing job never stops the others.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.tracking import file_lock

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
MANIFEST_FILE = "manifest.json"
STOP_FILE = "STOP"
SUBMITTED_FILE = "slurm_jobs.json"  # written by hydra/launcher=slurm_submit
# Overrides that steer the sweep itself; a resumed sweep may change them freely.
_SWEEP_CONTROL_PREFIXES = ("sweep.", "+sweep.", "optuna.trial=", "+optuna.trial=")


# --- files in the sweep dir -----------------------------------------------------------


def _write_json(path: Path, content: Any) -> None:
    """Writes JSON atomically: a reader sees the old file or the new one, never half."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(content, indent=2, sort_keys=True))
    os.replace(temp, path)


def read_manifest(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The manifest's entries by job key ({} when the sweep has none yet)."""
    path = Path(sweep_dir) / MANIFEST_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())["jobs"]


def update_manifest(sweep_dir: Path, key: str, **fields: Any) -> dict[str, Any]:
    """Merges `fields` into the job's manifest entry under a lock; returns the entry."""
    path = Path(sweep_dir) / MANIFEST_FILE
    with file_lock(path.with_name(path.name + ".lock")):
        jobs = read_manifest(sweep_dir)
        entry = {**jobs.get(key, {}), **fields, "updated": time.time()}
        jobs[key] = entry
        _write_json(path, {"jobs": jobs})
    return entry


def job_key(overrides: list[str]) -> str:
    """The identity of a job: its overrides, sorted, without the sweep-control ones."""
    kept = [o for o in overrides if not o.startswith(_SWEEP_CONTROL_PREFIXES)]
    return " ".join(sorted(kept)) or "(no overrides)"


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """`["a.b=1", "+c=x"]` -> `{"a.b": "1", "c": "x"}`."""
    return {name: value for name, _, value in (o.lstrip("+~").partition("=") for o in overrides)}


def read_sweep_info(sweep_dir: Path) -> dict[str, Any]:
    """The parent run's record (sweep.json), or {} when the sweep has no tracking."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else {}


# --- the job side --------------------------------------------------------------------


@dataclass
class SweepJob:
    """One job of a sweep, as seen from inside the job's process.

    Attributes:
        sweep_dir: The sweep's directory (Hydra's `hydra.sweep.dir`).
        num: Hydra's job number.
        overrides: The job's task overrides.
        key: The job's identity in the manifest.
        info: The parent run's record from sweep.json.
        fail_fast: Whether a failure stops the jobs that have not started yet.
        pruned: Set when the Optuna pruner stopped the job early.
    """

    sweep_dir: Path
    num: int
    overrides: list[str]
    key: str
    info: dict[str, Any] = field(default_factory=dict)
    fail_fast: bool = False
    pruned: bool = False
    trial: Any = None

    @classmethod
    def current(cls, cfg: DictConfig) -> SweepJob | None:
        """The job Hydra is running now, or None outside a multirun."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        sweep_dir = Path(hydra_cfg.sweep.dir).resolve()
        overrides = list(hydra_cfg.overrides.task)
        return cls(
            sweep_dir=sweep_dir,
            num=int(hydra_cfg.job.num),
            overrides=overrides,
            key=job_key(overrides),
            info=read_sweep_info(sweep_dir),
            fail_fast=bool(OmegaConf.select(cfg, "sweep.fail_fast", default=False)),
        )

    @property
    def experiment_name(self) -> str | None:
        """The parent's experiment: children must share it to nest under it in the UI."""
        return self.info.get("experiment_name")

    @property
    def swept_overrides(self) -> list[str]:
        """The job's overrides that the sweep varies (not given as-is on the command line)."""
        given = set(self.info.get("arguments", []))
        return [o for o in self.overrides
                if o not in given and not o.startswith(_SWEEP_CONTROL_PREFIXES)]  # fmt: skip

    @property
    def run_name(self) -> str:
        """The MLflow run name: the job number and what it varies."""
        return " ".join([f"job{self.num}", *self.swept_overrides])[:250]

    def tracking_tags(self) -> dict[str, str]:
        """Tags that make the job's MLflow run a child of the sweep's parent run."""
        tags = {"sweep_dir": str(self.sweep_dir), "sweep.job": str(self.num)}
        if self.info.get("parent_run_id"):
            tags["mlflow.parentRunId"] = self.info["parent_run_id"]
        tags.update({f"override.{n}": v for n, v in parse_overrides(self.overrides).items()})
        return tags

    def run(self, cfg: DictConfig, train: Callable[[DictConfig, SweepJob], float]) -> float:
        """Runs `train` as this job: skips, records and contains failures.

        Returns:
            The job's objective; NaN when it failed or was skipped, so the sweep goes on.
        """
        recorded = read_manifest(self.sweep_dir).get(self.key, {})
        if recorded.get("status") == "FINISHED":
            log.info("sweep job %s finished earlier (%s): kept", self.key, recorded["run_dir"])
            return float(recorded.get("value", math.nan))
        stop = self.sweep_dir / STOP_FILE
        if stop.exists():
            log.warning("sweep.fail_fast: not starting %s (%s)", self.key, stop.read_text())
            update_manifest(self.sweep_dir, self.key, status="SKIPPED", overrides=self.overrides,
                            num=self.num)  # fmt: skip
            return math.nan
        if recorded.get("run_dir") and recorded["run_dir"] != str(cfg.paths.run_dir):
            # A resumed sweep whose jobs were listed in another order: continue where this
            # job's checkpoints are.
            with open_dict(cfg):
                cfg.paths.run_dir = recorded["run_dir"]
        update_manifest(self.sweep_dir, self.key, status="RUNNING", overrides=self.overrides,
                        num=self.num, run_dir=str(cfg.paths.run_dir),
                        attempts=recorded.get("attempts", 0) + 1)  # fmt: skip
        started = time.time()
        try:
            value = train(cfg, self)
        except Exception as err:
            update_manifest(self.sweep_dir, self.key, status="FAILED",
                            error=f"{type(err).__name__}: {err}", started=started,
                            seconds=time.time() - started,
                            traceback=traceback.format_exc())  # fmt: skip
            log.error("sweep job %s failed: %s: %s (the sweep goes on)", self.key,
                      type(err).__name__, err)  # fmt: skip
            if self.fail_fast:
                stop.write_text(f"job {self.num} ({self.key}) failed")
            return math.nan
        except BaseException:  # a signal or Ctrl-C: the job resumes when the sweep does
            update_manifest(self.sweep_dir, self.key, status="INTERRUPTED")
            raise
        update_manifest(self.sweep_dir, self.key, status="FINISHED", value=value,
                        pruned=self.pruned, started=started,
                        seconds=time.time() - started)  # fmt: skip
        return value

    def record_run(self, mlflow_run_id: str | None) -> None:
        """Notes the job's MLflow run id in the manifest."""
        update_manifest(self.sweep_dir, self.key, mlflow_run_id=mlflow_run_id)

    def should_prune(self, cfg: DictConfig, epoch: int, value: float) -> bool:
        """Reports the monitored value to the job's Optuna trial; True = stop early."""
        trial_number = OmegaConf.select(cfg, "optuna.trial", default=None)
        if trial_number is None:
            return False
        from runner.optuna_trial import report_and_check

        self.pruned = report_and_check(cfg.optuna, int(trial_number), epoch, value)
        return self.pruned


# --- the launching side --------------------------------------------------------------


class SweepCallback(Callback):
    """Hydra callback: the sweep's MLflow parent run, summary and exit status."""

    def __init__(self) -> None:
        self.tracker = None
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Creates (or, for `sweep.resume`, reopens) the parent run and writes sweep.json."""
        from hydra.utils import instantiate

        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()
        resume = OmegaConf.select(config, "sweep.resume", default=None)
        if resume and not (self.sweep_dir / MANIFEST_FILE).exists():
            raise SystemExit(
                f"Error: sweep.resume={resume!r}: {self.sweep_dir / MANIFEST_FILE} does not "
                "exist. Pass the directory of an earlier sweep (it holds manifest.json), or "
                "leave sweep.resume out to start a new sweep."
            )
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        (self.sweep_dir / STOP_FILE).unlink(missing_ok=True)
        info = read_sweep_info(self.sweep_dir)
        arguments = [str(a) for a in config.hydra.overrides.task]
        tracker = instantiate(config.logger)
        name = config.logger.get("experiment_name") or config.data.name
        try:
            tracker.connect(experiment_name=name)
            tracker.start(
                run_name=self.sweep_dir.name,
                tags={"sweep_dir": str(self.sweep_dir), "overrides": " ".join(arguments),
                      "sweep.role": "parent"},
                resume_run_id=info.get("parent_run_id"),
                local_dir=self.sweep_dir,
            )  # fmt: skip
        except Exception as err:
            raise SystemExit(f"Error: cannot start the sweep's MLflow run: {err}") from err
        self.tracker = tracker
        atexit.register(self._finish_if_open, "KILLED")
        _write_json(self.sweep_dir / SWEEP_FILE, {
            **info, "arguments": arguments, "parent_run_id": tracker.run_id,
            "tracking_uri": getattr(tracker, "tracking_uri", None), "experiment_name": name,
        })  # fmt: skip
        log.info("sweep %s: parent MLflow run %s", self.sweep_dir, tracker.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarises the jobs, logs the summary to the parent run, sets the exit status."""
        if (self.sweep_dir / SUBMITTED_FILE).exists():  # hydra/launcher=slurm_submit
            log.info("jobs submitted; when they are done, `python -m runner.tools collect %s` "
                     "summarises them into the parent run", self.sweep_dir)  # fmt: skip
            if self.tracker is not None:
                self.tracker.set_tags({"summary": "pending: python -m runner.tools collect"})
            self._finish_if_open("FINISHED")
            return
        summary = report(self.sweep_dir, config.trainer.monitor,
                         config.trainer.monitor_mode == "max", self.tracker)  # fmt: skip
        self._finish_if_open("FAILED" if summary.failed else "FINISHED")
        if summary.failed:
            listing = "\n".join(
                f"  job {e.get('num')} {e.get('status', '?')}: {e['label'] or e['key']}"
                for e in summary.failed
            )
            raise SystemExit(
                f"Error: {len(summary.failed)} of {len(summary.jobs)} sweep job(s) did not "
                f"finish:\n{listing}\nRun them again with sweep.resume={self.sweep_dir}"
            )

    def _finish_if_open(self, status: str) -> None:
        tracker, self.tracker = self.tracker, None
        if tracker is not None:
            tracker.finish(status)


def report(sweep_dir: Path, monitor: str, maximize: bool, tracker: Any = None) -> Any:
    """Summarises a sweep dir, prints the summary and logs it to the parent run.

    Args:
        sweep_dir: The sweep's directory.
        monitor: The monitored metric.
        maximize: Whether larger values of it are better.
        tracker: The parent run's open tracker, or None for no logging.

    Returns:
        The `runner.sweep_summary.Summary`.
    """
    from runner.sweep_summary import summarize

    summary = summarize(sweep_dir, monitor=monitor, maximize=maximize)
    print(summary.markdown)
    if tracker is not None:
        for path in summary.files:
            tracker.log_artifact(path, "summary")
        tracker.set_tags({**summary.best_tags, "summary": "summary/summary.md"})
        if summary.best_value is not None:
            tracker.log_metrics({f"best/{monitor}": summary.best_value}, step=0)
    return summary


def finish_submitted_sweep(sweep_dir: Path) -> int:
    """Summarises a sweep whose jobs were submitted without waiting, into its parent run.

    For `runner.tools collect` once the jobs are done: reads the sweep's config and
    sweep.json, reopens the parent MLflow run, logs the summary and ends it.

    Returns:
        1 when a job did not finish, else 0.
    """
    sweep_dir = Path(sweep_dir)
    config = OmegaConf.load(sweep_dir / "multirun.yaml")
    info = read_sweep_info(sweep_dir)
    tracker = None
    if info.get("parent_run_id") and info.get("tracking_uri"):
        from runner.tracking import MlflowTracker

        tracker = MlflowTracker(tracking_uri=info["tracking_uri"])
        tracker.connect(experiment_name=info["experiment_name"])
        tracker.start(run_name=None, tags={}, resume_run_id=info["parent_run_id"])
    summary = report(sweep_dir, config.trainer.monitor, config.trainer.monitor_mode == "max",
                     tracker)  # fmt: skip
    if tracker is not None:
        tracker.finish("FAILED" if summary.failed else "FINISHED")
    return int(bool(summary.failed))
