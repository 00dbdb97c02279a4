"""The files a sweep keeps in its dir, and how a job is named in them.

    <sweep_dir>/sweep.json     the parent MLflow run: id, tracking URI, experiment
    <sweep_dir>/manifest.json  one entry per job: overrides, status, run dir, run id, value
    <sweep_dir>/STOP           written by a failing job when `sweep.fail_fast=true`
    <sweep_dir>/.sweep.lock    held by the launching process while the sweep runs
    <run_dir>/.job.lock        held by a job's process while the job runs

Every piece of a sweep (the launching process's callback, each job, the summary) meets
the others only through these files, so a sweep works the same whichever launcher runs
its jobs: in this process, in local worker processes, or as SLURM jobs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from runner.config.value_checks import sqlite_path
from runner.tracking.protocol import Tracker
from runner.tracking.store import file_lock

log = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
MANIFEST_FILE = "manifest.json"
STOP_FILE = "STOP"
SUBMITTED_FILE = "slurm_jobs.json"  # written by hydra/launcher=slurm_submit
SUBMIT_ONLY_LAUNCHER = "hydra_plugins.runner_slurm.launcher.SubmitOnlySlurmLauncher"
# Overrides that steer the sweep itself; a resumed sweep may change them freely.
SWEEP_CONTROL_PREFIXES = ("sweep.", "+sweep.", "optuna.trial=", "+optuna.trial=")
SWEEP_LOCK_FILE = ".sweep.lock"
# The status of an Optuna trial's job that a signal stopped: the study ended the trial
# FAIL and draws new trials in its place, so no later launch continues this job.
ABANDONED = "ABANDONED"
JOB_LOCK_FILE = ".job.lock"


def _flock(handle: IO[str], wait: bool) -> bool:
    """Takes an exclusive lock on an open file; False when another process holds it.

    Always True where POSIX locks do not exist (Windows): there, nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _try_lock(path: Path) -> IO[str] | None:
    """One attempt at the lock at `path`: the open file that holds it, or None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    if _flock(handle, wait=False):
        return handle
    handle.close()
    return None


def hold_lock(path: Path, patience_s: float = 0.5) -> IO[str] | None:
    """Takes the lock at `path` for as long as the returned file stays open.

    None when another process holds it for `patience_s`: `is_locked` (collect) takes it
    for an instant, which must not pass for a running sweep. The lock ends with its
    process, however that ends, so a lock is never left behind by a killed process.
    """
    deadline = time.monotonic() + patience_s
    while (handle := _try_lock(path)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return handle


def is_locked(path: Path) -> bool:
    """Whether another process holds the lock at `path` (False when there is no file)."""
    if not path.is_file():
        return False
    handle = _try_lock(path)
    if handle is None:
        return True
    handle.close()
    return False


@contextlib.contextmanager
def job_lock(run_dir: Path, key: str) -> Iterator[None]:
    """Held while a job runs in `run_dir`; waits while another process holds it.

    A job of an earlier launch of the sweep can outlive its launcher (a killed local
    launcher leaves its worker processes running): a resumed sweep then waits for that
    job to end instead of training a second time in the same dir.
    """
    path = Path(run_dir) / JOB_LOCK_FILE
    handle = hold_lock(path)
    if handle is None:
        log.warning(
            "sweep job %s is still running in %s, started by an earlier launch of this "
            "sweep: waiting for it to end",
            key,
            run_dir,
        )
        handle = path.open("a")
        _flock(handle, wait=True)
    with handle:
        yield


@contextlib.contextmanager
def replaced_whole(path: Path) -> Iterator[Path]:
    """A temp path to write; it replaces `path` when the block ends without an error.

    A reader sees the old file or the new one, never half; a failure leaves the old one.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_json(path: Path, content: Any) -> None:
    """Writes JSON atomically (see `replaced_whole`)."""
    with replaced_whole(path) as temp:
        temp.write_text(json.dumps(content, indent=2, sort_keys=True))


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
        write_json(path, {"jobs": jobs})
    return entry


def setting_overrides(overrides: list[str]) -> list[str]:
    """A job's overrides without the sweep's own controls (sweep.resume=..., the trial)."""
    return [o for o in overrides if not o.startswith(SWEEP_CONTROL_PREFIXES)]


def job_key(overrides: list[str]) -> str:
    """The identity of a job: its overrides, sorted, without the sweep-control ones."""
    return " ".join(sorted(setting_overrides(overrides))) or "(no overrides)"


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """`["a.b=1", "+c=x"]` -> `{"a.b": "1", "c": "x"}`."""
    return {name: value for name, _, value in (o.lstrip("+~").partition("=") for o in overrides)}


def read_sweep_info(sweep_dir: Path) -> dict[str, Any]:
    """The parent run's record (sweep.json), or {} when the sweep has no tracking."""
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def reopen_parent_run(sweep_dir: Path) -> Tracker | None:
    """The sweep's MLflow parent run (sweep.json), reopened to log into after its jobs.

    None when the sweep has no tracking. The caller finishes the run.
    """
    info = read_sweep_info(sweep_dir)
    if not (info.get("parent_run_id") and info.get("tracking_uri")):
        return None
    from runner.tracking.mlflow_tracker import MlflowTracker

    store = sqlite_path(info["tracking_uri"])
    if store is not None and not store.expanduser().is_file():  # opening it would create it
        raise FileNotFoundError(f"the sweep's tracking store {store} is gone")
    tracker = MlflowTracker(tracking_uri=info["tracking_uri"])
    tracker.connect(experiment_name=info["experiment_name"])
    tracker.start(run_name=None, tags={}, resume_run_id=info["parent_run_id"])
    return tracker
