"""What `python run.py` does, by `mode`: one recipe module per mode.

train (the default), eval, predict, preview or throughput; each recipe sits at the top of
the package and may import everything below it.
"""

from __future__ import annotations

import logging
import math
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig

from runner.config.errors import UserError, traceback_wanted
from runner.config.modes import job_mode

log = logging.getLogger(__name__)


def main(cfg: DictConfig) -> float:
    """What `python run.py` calls: `run`, with a user's mistake shown as one line.

    A `UserError` (a bad key, file or value; its message says what to change) ends the
    command with "Error: <message>" and exit status 1, without a traceback, unless
    `HYDRA_FULL_ERROR=1` asks for it; every other exception keeps its traceback. In a
    `-m` sweep of eval, predict, preview or throughput, a failed job's error is recorded
    in its run dir and the sweep goes on (a training job's `SweepJob` records its own).
    """
    from runner.training import startup_clock

    startup_clock.job_start()
    try:
        return run(cfg)
    except Exception as err:
        mistake = user_error(err)
        if traceback_wanted():
            raise
        if job_mode(cfg) != "train" and _in_a_sweep():  # a train job's SweepJob records it
            return _failed_sweep_job(cfg, err, mistake)
        if mistake is None:
            raise
        raise SystemExit(f"Error: {mistake}") from None


def _in_a_sweep() -> bool:
    """Whether this job is one of a `-m` sweep's."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _failed_sweep_job(cfg: DictConfig, err: Exception, mistake: UserError | None) -> float:
    """Reports a failed job of an eval, predict, preview or throughput sweep; returns NaN.

    Such a sweep keeps no manifest: the job's error goes to its run dir
    (`JOB_ERROR_FILE`), the other jobs go on, and the sweep's end
    (`runner.sweeps.callback`) lists the failed ones and exits 1.
    """
    from runner.config.callback import JOB_ERROR_FILE

    text = str(mistake) if mistake is not None else f"{type(err).__name__}: {err}"
    if mistake is None:  # not a user's mistake: the traceback says where
        log.error("%s", "".join(traceback.format_exception(err)))
    print(f"Error: {text}", file=sys.stderr, flush=True)
    run_dir = Path(str(cfg.paths.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JOB_ERROR_FILE).write_text(text + "\n", encoding="utf-8")
    return math.nan


def user_error(err: BaseException | None) -> UserError | None:
    """The user's mistake behind `err` (also when Hydra's instantiate wrapped it), or None."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__
    return None


def run(cfg: DictConfig) -> float:
    """Runs the recipe the config's `mode` names and returns its objective.

    Args:
        cfg: The composed config.

    Returns:
        train: the best monitored value (a sweeper's objective); eval: test accuracy;
        predict: the number of images labelled; throughput: the highest img/s;
        preview: NaN.
    """
    from runner.training.host_memory import keep_freed_memory

    if cfg.trainer.get("keep_host_memory", True):  # before any DataLoader worker forks
        keep_freed_memory()
    mode = job_mode(cfg)
    if mode == "eval":
        from runner.evaluate import run_eval

        return run_eval(cfg)
    if mode == "predict":
        from runner.predict import run_predict

        return run_predict(cfg)
    if mode == "preview":
        from runner.preview import run as preview

        return preview(cfg)
    if mode == "throughput":
        from runner.throughput import run as throughput

        return throughput(cfg)
    from runner.train import run as train

    return train(cfg)
