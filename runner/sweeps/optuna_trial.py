"""Optuna from inside a job: the study's storage, the pruner, and per-epoch reports.

The sweeper (hydra_plugins/runner_optuna_sweeper) asks the study for a trial and passes
its number as `optuna.trial=N`. The job reaches the same trial through the storage (a
database or a journal file), so reporting and pruning work when the job runs in another
process or on another machine of the cluster.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from runner.config.choices import PRUNERS

log = logging.getLogger(__name__)

JOURNAL_PREFIX = "journal:///"


def open_storage(url: str) -> Any:
    """An Optuna storage for `url`.

    Args:
        url: An RDB URL (`sqlite:///outputs/optuna.db`, `postgresql://...`) or
            `journal:///path/to/study.log` for a journal file on a shared file system
            (clusters where SQLite's locking over NFS is not safe).
    """
    import optuna

    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix(JOURNAL_PREFIX))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # Heartbeats are off: a trial's job reports every epoch, and a job that dies is
    # marked failed by the sweeper when its launcher returns.
    return optuna.storages.RDBStorage(url)


def build_pruner(name: str, startup_trials: int, warmup_epochs: int, max_epochs: int) -> Any:
    """The pruner `optuna.pruner` names.

    Args:
        name: median (stop a trial whose value is below the median of earlier trials at
            the same epoch), hyperband, or none.
        startup_trials: Trials that run to the end before median pruning starts.
        warmup_epochs: Epochs of each trial that are never pruned.
        max_epochs: The longest a trial trains (hyperband's max resource).
    """
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs
        )
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, warmup_epochs), max_resource=max_epochs
        )
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"optuna.pruner={name!r} is not a pruner: use one of {', '.join(PRUNERS)}")


@functools.lru_cache(maxsize=8)
def _trial(storage_url: str, study_name: str, trial_number: int, pruner_key: tuple) -> tuple:
    """The study (with the pruner) and the job's trial, opened once per job."""
    import optuna

    storage = open_storage(storage_url)
    study = optuna.load_study(
        study_name=study_name, storage=storage, pruner=build_pruner(*pruner_key)
    )
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
    return study, optuna.trial.Trial(study, trial_id)


def report_and_check(settings: Any, trial_number: int, epoch: int, value: float) -> bool:
    """Reports the epoch's monitored value; marks the trial PRUNED when the pruner says so.

    Args:
        settings: The config's `optuna` node (storage, study_name, pruner settings).
        trial_number: The job's trial, from `optuna.trial`.
        epoch: The epoch just finished (the report's step).
        value: The monitored value after that epoch.

    Returns:
        True when the job should stop training now.
    """
    from optuna.trial import TrialState

    pruner_key = (
        str(settings.pruner),
        int(settings.pruner_startup_trials),
        int(settings.pruner_warmup_epochs),
        int(settings.max_epochs),
    )
    study, trial = _trial(str(settings.storage), str(settings.study_name), trial_number, pruner_key)
    trial.report(value, step=epoch)
    if not trial.should_prune():
        return False
    study.tell(trial, state=TrialState.PRUNED)
    log.info("optuna: trial %d pruned at epoch %d", trial_number, epoch)
    return True
