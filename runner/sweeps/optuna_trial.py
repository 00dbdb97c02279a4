"""Optuna from inside a job: the study's storage, the pruner, and per-epoch reports.

The sweeper (hydra_plugins/runner_optuna_sweeper) asks the study for a trial, passes its
number as `optuna.trial=N`, and writes `<sweep dir>/optuna/study.json` (the study's name,
storage and pruner node). The job reaches the same trial through the storage (a
database or a journal file), so reporting and pruning work when the job runs in another
process or on another machine of the cluster. A study without storage (`storage: null`)
lives in the sweeper's process: jobs launched in that process report to it; jobs in
other processes cannot reach it and are not pruned.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.sweeps.manifest import (
    JOB_LOCK_FILE,
    REPLACED,
    SWEEP_LOCK_FILE,
    parse_overrides,
    read_manifest,
    update_manifest,
)
from runner.sweeps.optuna_parts import build_pruner, open_storage, shown_storage
from runner.tracking.store import is_locked

log = logging.getLogger(__name__)

# A trial's user attribute: the sweep dir of the launch that asked for it.
SWEEP_DIR_ATTR = "runner.sweep_dir"

# Trials of studies without storage, by (study name, trial number), for the jobs that
# run in the sweeper's own process.
_IN_MEMORY: dict[tuple[str, int], Any] = {}


def keep_in_memory(study: Any, trial: Any) -> None:
    """Makes a trial of a study without storage reachable by the jobs of this process."""
    _IN_MEMORY[(study.study_name, trial.number)] = (study, trial)


def tell_trial(study: Any, trial: Any, **result: Any) -> None:
    """`study.tell(trial, **result)`, also when it is the last point of a grid.

    Optuna's GridSampler calls `study.stop()` once every point of its grid has a
    finished trial, and `stop()` raises RuntimeError outside `study.optimize` (Optuna
    documents this for the ask-and-tell interface). The trial's state is stored before
    that, so the error only means the grid is done; the sweeper ends the study there,
    as `study.optimize` would, by `GridSampler.is_exhausted` after each batch.

    Args:
        study: The Optuna study.
        trial: The trial to end.
        **result: What `Study.tell` takes: `values` or `state`.
    """
    import optuna

    try:
        study.tell(trial, **result)
    except RuntimeError:
        sampler = study.sampler
        grid_done = isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)
        if not grid_done:
            raise


def retire_unfinished_jobs(study: Any, sweep_dir: Path) -> list[int]:
    """Marks an earlier launch's unfinished jobs REPLACED when a resumed sweep goes on.

    A continued study never runs a failed or killed trial again: it draws new ones. Those
    jobs counted as failures at every later launch (whose advice, to resume, could then
    never be followed to the end), and a trial a killed launcher left RUNNING stayed a
    pending point for the sampler. A job whose process still runs (its lock is held) is
    left alone. A job that finished before its launcher was killed gets its result told
    (its value was lost, and its trial stayed RUNNING). Called while this process holds
    the sweep's lock.

    Returns:
        The numbers of the trials ended FAIL here (those left RUNNING).
    """
    from optuna.trial import TrialState

    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    ended = []
    entries = read_manifest(sweep_dir)
    for key, entry in entries.items():
        status = entry.get("status")
        trial = _trial_of(entry)
        running = trial.isdigit() and states.get(int(trial)) == TrialState.RUNNING
        if status == "FINISHED" and running:
            # Its launcher was killed before it told the study: the job's result stands.
            tell_trial(study, int(trial), **trial_result(entry.get("value"), entry))
            continue
        if status not in ("FAILED", "SKIPPED", "RUNNING", "INTERRUPTED"):
            continue
        if _job_running(entry):
            continue
        if running:
            tell_trial(study, int(trial), state=TrialState.FAIL)
            ended.append(int(trial))
        update_manifest(sweep_dir, key, status=REPLACED)
    # A trial this sweep's killed launch drew whose job never started (no entry): this
    # process holds the sweep's lock, so no launch of this dir still runs it.
    named = {_trial_of(entry) for entry in entries.values()}
    here = str(Path(sweep_dir).resolve())
    for left in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if left.user_attrs.get(SWEEP_DIR_ATTR) == here and str(left.number) not in named:
            tell_trial(study, left.number, state=TrialState.FAIL)
            ended.append(left.number)
    return ended


def retire_abandoned_trials(study: Any, sweep_dir: Path) -> list[int]:
    """Ends FAIL the RUNNING trials that killed launches in other sweep dirs left.

    A stored study is also continued by the same command with a new sweep dir, where
    `retire_unfinished_jobs` does not look: such trials stayed RUNNING, a pending point
    for the sampler for ever. A trial whose launcher still runs (it holds its sweep
    dir's lock), whose job still runs (its run dir's lock), or whose sweep dir is not
    on this machine, is left alone.

    Returns:
        The numbers of the trials ended FAIL.
    """
    from optuna.trial import TrialState

    ended = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        other = trial.user_attrs.get(SWEEP_DIR_ATTR)
        # A sweep dir not on this machine may be another host's live launch (a shared
        # database study): only what can be seen here is retired.
        if not other or Path(other) == Path(sweep_dir).resolve() or not Path(other).is_dir():
            continue
        if is_locked(Path(other) / SWEEP_LOCK_FILE):
            continue
        jobs = read_manifest(Path(other)).values()
        if any(_trial_of(e) == str(trial.number) and _job_running(e) for e in jobs):
            continue
        tell_trial(study, trial.number, state=TrialState.FAIL)
        ended.append(trial.number)
    return ended


def _trial_of(entry: Mapping[str, Any]) -> str:
    """The trial number a manifest entry's job ran ("" when none)."""
    return parse_overrides(entry.get("overrides", [])).get("optuna.trial", "")


def _job_running(entry: Mapping[str, Any]) -> bool:
    """Whether a manifest entry's job still runs (its process holds its run dir's lock)."""
    run_dir = entry.get("run_dir")
    return bool(run_dir) and is_locked(Path(run_dir) / JOB_LOCK_FILE)


def trial_result(value: Any, recorded: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the sweeper tells a trial, as keyword arguments of `Study.tell`.

    A job that was pruned (by its own trial, or by another trial with the same overrides
    that it shares) is PRUNED: its value is that of an unfinished training. Otherwise a
    finite value completes the trial and anything else fails it.

    Args:
        value: The job's return value; None when the job did not complete.
        recorded: The job's manifest entry (see runner/sweeps/manifest.py), if any.
    """
    from optuna.trial import TrialState

    if recorded and recorded.get("status") == "FINISHED" and recorded.get("pruned"):
        return {"state": TrialState.PRUNED}
    if isinstance(value, int | float) and math.isfinite(value):
        return {"values": float(value)}
    return {"state": TrialState.FAIL}


def _trial(storage_url: str | None, study_name: str, trial_number: int, pruner_json: str) -> tuple:
    """The study and the job's trial; (None, None) for one in another process's memory."""
    if storage_url is None:
        return _IN_MEMORY.get((study_name, trial_number), (None, None))
    return _stored_trial(storage_url, study_name, trial_number, pruner_json)


@functools.lru_cache(maxsize=8)
def _stored_trial(storage_url: str, study_name: str, trial_number: int, pruner_json: str) -> tuple:
    """The stored study (with the pruner) and the job's trial, opened once per job."""
    import optuna

    storage = open_storage(storage_url)
    study = optuna.load_study(
        study_name=study_name, storage=storage, pruner=build_pruner(json.loads(pruner_json))
    )
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
    return study, optuna.trial.Trial(study, trial_id)


def report_and_check(
    settings: dict[str, Any], trial_number: int, epoch: int, value: float, last_epoch: int
) -> bool:
    """Reports the epoch's monitored value; marks the trial PRUNED when the pruner says so.

    A trial at its last epoch is never pruned: it has trained as long as a complete one,
    so it ends COMPLETE with its value.

    Args:
        settings: The sweep's study.json (study name, storage, pruner node).
        trial_number: The job's trial, from `optuna.trial`.
        epoch: The epoch just finished (the report's step).
        value: The monitored value after that epoch.
        last_epoch: The job's last epoch (`trainer.max_epochs`).

    Returns:
        True when the job should stop training now.
    """
    from optuna.trial import TrialState

    try:
        study, trial = _trial(
            settings.get("storage"),
            str(settings.get("study_name")),
            trial_number,
            json.dumps(settings.get("pruner"), sort_keys=True),
        )
        if trial is None:
            return False
        trial.report(value, step=epoch)
        if epoch >= last_epoch or not trial.should_prune():
            return False
        tell_trial(study, trial, state=TrialState.PRUNED)
    except Exception as err:  # the storage is busy or away: the job trains on, unpruned
        log.warning(
            "optuna: trial %d could not report epoch %d to %s (%s: %s); it trains on",
            trial_number,
            epoch,
            shown_storage(settings.get("storage")),
            type(err).__name__,
            shown_storage(err),
        )
        return False
    log.info("optuna: trial %d pruned at epoch %d", trial_number, epoch)
    return True
