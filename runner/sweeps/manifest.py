"""The files a sweep keeps in its dir, and how a job is named in them.

    <sweep_dir>/multirun.yaml  the config the sweep was launched with (Hydra writes it)
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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config.errors import UserError
from runner.config.files import replaced_whole
from runner.tracking.protocol import Tracker
from runner.tracking.store import file_lock, hold_lock, missing_store_file

log = logging.getLogger(__name__)

# How the messages of `runner.tracking.protocol.end_run` name a sweep's own MLflow run.
PARENT_RUN = "the sweep's parent run"

LAUNCH_CONFIG_FILE = "multirun.yaml"
SWEEP_FILE = "sweep.json"
# sweep.json's record of the launch's end: when its launcher summarised the jobs (null
# while a launch runs, or when it was stopped before).
SUMMARISED = "summarised_by_launcher"
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
# The status of an earlier launch's Optuna job that did not finish (failed, skipped, or
# left RUNNING by a killed launcher) once a resumed sweep continues the study: the study
# draws new trials in its place, so no launch runs it again.
REPLACED = "REPLACED"
JOB_LOCK_FILE = ".job.lock"


@contextlib.contextmanager
def job_lock(run_dir: Path, key: str) -> Iterator[None]:
    """Held while a job runs in `run_dir`; waits while another process holds it.

    A job of an earlier launch of the sweep can outlive its launcher (a killed local
    launcher leaves its worker processes running): a resumed sweep then waits for that
    job to end instead of training a second time in the same dir.
    """
    path = Path(run_dir) / JOB_LOCK_FILE
    handle = hold_lock(path)
    if handle is not None:
        with handle:
            yield
        return
    log.warning(
        "sweep job %s is still running in %s, started by an earlier launch of this "
        "sweep: waiting for it to end",
        key,
        run_dir,
    )
    with file_lock(path):
        yield


def submits_only(config: DictConfig) -> bool:
    """Whether this launch submitted its jobs without waiting (hydra/launcher=slurm_submit).

    Read from the launch's own launcher: a sweep submitted once and resumed with another
    launcher has the earlier launch's slurm_jobs.json, and is summarised when it ends.
    """
    target = OmegaConf.select(config, "hydra.launcher._target_", default=None)
    return target == SUBMIT_ONLY_LAUNCHER


def write_json(path: Path, content: Any) -> None:
    """Writes JSON atomically (see `replaced_whole`)."""
    with replaced_whole(path) as temp:
        temp.write_text(json.dumps(content, indent=2, sort_keys=True))


class SweepFileError(UserError, ValueError):
    """A JSON file of a sweep dir (or a job's metrics.json) that cannot be read.

    Cut short (a copy that stopped early, a full disk) or not what the runner writes
    there; the message names the file and what makes it readable again.
    """


def _is_object(content: Any) -> bool:
    return isinstance(content, dict)


def read_sweep_file(
    path: Path, fix: str, expected: str = "a JSON object", valid: Callable[[Any], bool] = _is_object
) -> Any:
    """The content of one of a sweep's JSON files, checked to be what the runner writes.

    Every reader of manifest.json, sweep.json, slurm_jobs.json, a job's metrics.json and
    the Optuna files goes through here, so a damaged file is named, not a JSONDecodeError
    or a KeyError of the code that read it.

    Args:
        path: The file, which exists.
        fix: What makes the file readable again (the end of the error's message).
        expected: What the runner writes there, in words, for the error.
        valid: Whether a parsed content is of that shape.

    Returns:
        The parsed content.

    Raises:
        SweepFileError: The file is empty, is not JSON (or stops before its end), or is
            JSON of another shape.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
        content = json.loads(text)
    except UnicodeDecodeError as err:
        raise SweepFileError(
            f"{path} is not the JSON the runner writes there (not UTF-8 text: {err.reason} at "
            f"byte {err.start}). {fix}"
        ) from None
    except json.JSONDecodeError as err:
        if not text.strip():
            raise SweepFileError(f"{path} is empty: it was cut short. {fix}") from None
        raise SweepFileError(
            f"{path} is cut short or is not the JSON the runner writes there ({err.msg}: "
            f"line {err.lineno} column {err.colno}). {fix}"
        ) from None
    if not valid(content):
        if isinstance(content, dict):
            found = "another object" if content else "an empty object"
        else:
            found = f"a JSON {type(content).__name__}"
        raise SweepFileError(
            f"{path} is not what the runner writes there: it holds {found}, not {expected}. {fix}"
        )
    return content


def read_launch_config(sweep_dir: Path) -> DictConfig | None:
    """The config the sweep in `sweep_dir` was launched with (multirun.yaml), or None.

    Raises:
        SweepFileError: multirun.yaml is empty, cut short, not YAML, or not a mapping.
    """
    import yaml

    path = Path(sweep_dir) / LAUNCH_CONFIG_FILE
    if not path.is_file():
        return None
    fix = "Restore it from a copy of the sweep dir: it is the config the sweep was launched with"
    try:
        config = OmegaConf.load(path) if path.read_text(encoding="utf-8").strip() else None
    except UnicodeDecodeError as err:
        raise SweepFileError(
            f"{path} is not the YAML Hydra writes there (not UTF-8 text: {err.reason} at "
            f"byte {err.start}). {fix}"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f": line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise SweepFileError(
            f"{path} is cut short or is not the YAML Hydra writes there ({problem}{where}). {fix}"
        ) from None
    except OSError as err:  # OmegaConf's word for YAML of a scalar ("Invalid loaded object")
        raise SweepFileError(
            f"{path} cannot be read as the config Hydra writes ({err}). {fix}"
        ) from None
    if config is None:
        raise SweepFileError(f"{path} is empty: it was cut short. {fix}")
    if not isinstance(config, DictConfig):
        raise SweepFileError(
            f"{path} is not what Hydra writes there: it holds a list, not a config. {fix}"
        )
    return config


def _is_manifest(content: Any) -> bool:
    jobs = content.get("jobs") if isinstance(content, dict) else None
    return isinstance(jobs, dict) and all(isinstance(entry, dict) for entry in jobs.values())


def read_manifest(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The manifest's entries by job key ({} when the sweep has none yet).

    Raises:
        SweepFileError: manifest.json is cut short or not what the runner writes.
    """
    path = Path(sweep_dir) / MANIFEST_FILE
    if not path.exists():
        return {}
    # The jobs replace it whole (write_json): a damaged one was damaged afterwards, and
    # neither a summary nor sweep.resume (whose jobs read it) can do without it.
    fix = (
        "Restore it from a copy of the sweep dir (the one this dir was copied from, or a "
        "backup): it is the sweep's only record of its jobs' statuses and monitored values, "
        "and nothing rebuilds it (sweep.resume reads it too). Each finished job's test "
        "metrics are still in its run dir's metrics.json"
    )
    expected = 'a "jobs" object with one entry per job'
    return read_sweep_file(path, fix, expected, _is_manifest)["jobs"]


def _is_submitted(content: Any) -> bool:
    return isinstance(content, list) and all(
        isinstance(record, dict) and "num" in record for record in content
    )


def submitted_records(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every record of slurm_jobs.json, in the order the launches wrote them ([] without it).

    `hydra/launcher=slurm_submit` writes one record per submitted job; a resumed sweep's
    launch adds its own after the earlier ones (`write_json` of the whole list).

    Raises:
        SweepFileError: slurm_jobs.json is cut short or not what the launcher writes.
    """
    path = Path(sweep_dir) / SUBMITTED_FILE
    if not path.is_file():
        return []
    fix = (
        "Restore it from a copy of the sweep dir: it is the record of the jobs "
        "hydra/launcher=slurm_submit submitted (their numbers, SLURM job ids and overrides)"
    )
    expected = 'a list of the submitted jobs, each with its "num"'
    return read_sweep_file(path, fix, expected, _is_submitted)


def submitted_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The jobs `hydra/launcher=slurm_submit` submitted (slurm_jobs.json), by number.

    A resumed sweep appends its launch's records: a job's latest record stands.

    Raises:
        SweepFileError: slurm_jobs.json is cut short or not what the launcher writes.
    """
    latest = {record["num"]: record for record in submitted_records(sweep_dir)}
    return [latest[num] for num in sorted(latest)]


def entry_of(record: dict[str, Any], manifest: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The manifest entry of a submitted job: by its overrides, else by its number.

    None for a job that never started (cancelled in the queue, or still queued). Its run
    dir is not looked at: the launcher records `<sweep dir>/<num>`, which another
    `hydra.sweep.subdir` does not use.
    """
    key = job_key(str(record.get("overrides", "")).split())
    if key in manifest:
        return manifest[key]
    return next((e for e in manifest.values() if e.get("num") == record.get("num")), None)


def job_run_dir(sweep_dir: Path, entry: dict[str, Any]) -> Path:
    """A job's run dir in `sweep_dir`, where the sweep dir was moved or copied to.

    The manifest records absolute paths, so a copy of a sweep dir read the original's
    files and a moved one none. A job records its sweep dir beside its run dir: a run dir
    under it is found at the same place under `sweep_dir`. Entries written before (no
    `sweep_dir`), or a run dir outside the sweep dir (`paths.run_dir` set), stand as
    recorded.
    """
    recorded = Path(entry.get("run_dir", "/nonexistent"))
    if "sweep_dir" not in entry:
        return recorded
    try:
        return Path(sweep_dir) / recorded.resolve().relative_to(entry["sweep_dir"])
    except ValueError:
        return recorded


def update_manifest(sweep_dir: Path, key: str, /, **fields: Any) -> dict[str, Any]:
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
    """The parent run's record (sweep.json), or {} when the sweep has no tracking.

    Raises:
        SweepFileError: sweep.json is cut short or not what the runner writes.
    """
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.exists():
        return {}
    # Without it a sweep goes on untracked: each reader takes a missing one as {}.
    fix = (
        "Restore it from a copy of the sweep dir, or delete it: the summary does without "
        "it, but the sweep's parent MLflow run is then forgotten (collect logs the summary "
        "into no run, and sweep.resume starts a new parent run)"
    )
    return read_sweep_file(path, fix)


def reopen_parent_run(sweep_dir: Path) -> Tracker | None:
    """The sweep's MLflow parent run (sweep.json), reopened to log into after its jobs.

    None when the sweep has no tracking. The caller finishes the run.
    """
    info = read_sweep_info(sweep_dir)
    if not (info.get("parent_run_id") and info.get("tracking_uri")):
        return None
    from runner.tracking.mlflow_tracker import MlflowTracker

    store = missing_store_file(info["tracking_uri"])
    if store is not None:
        raise FileNotFoundError(f"the sweep's tracking store {store} is gone")
    # What it logs is the sweep's; this command's own CPU and memory use is not.
    tracker = MlflowTracker(tracking_uri=info["tracking_uri"], system_metrics=False)
    tracker.connect(experiment_name=info["experiment_name"])
    # local_dir: logs the server does not take are saved in the sweep dir, as the
    # launch's own parent run does.
    tracker.start(
        run_name=None,
        tags={},
        resume_run_id=info["parent_run_id"],
        local_dir=Path(sweep_dir).resolve(),
    )
    return tracker
