"""What `python run.py` does, by `mode`: one recipe module per mode.

train (the default), eval, predict, preview or throughput; each recipe sits at the top of
the package and may import everything below it.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

from runner.config.errors import UserError
from runner.config.validation import job_mode


def main(cfg: DictConfig) -> float:
    """What `python run.py` calls: `run`, with a user's mistake shown as one line.

    A `UserError` (a bad key, file or value; its message says what to change) ends the
    command with "Error: <message>" and exit status 1, without a traceback, unless
    `HYDRA_FULL_ERROR=1` asks for it; every other exception keeps its traceback.
    """
    from runner.training import startup_clock

    startup_clock.job_start()
    try:
        return run(cfg)
    except Exception as err:
        mistake = user_error(err)
        if mistake is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"Error: {mistake}") from None


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
