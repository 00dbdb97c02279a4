"""What `python run.py` does, by `mode`: train (the default), eval or predict."""

from __future__ import annotations

from omegaconf import DictConfig


def run(cfg: DictConfig) -> float:
    """Runs the mode the config names and returns its objective.

    Args:
        cfg: The composed config.

    Returns:
        train: the best monitored value (a sweeper's objective); eval: test accuracy;
        predict: the number of images labelled.
    """
    from runner.hostmem import keep_freed_memory

    if cfg.trainer.get("keep_host_memory", True):  # before any DataLoader worker forks
        keep_freed_memory()
    mode = cfg.get("mode", "train")
    if mode == "eval":
        from runner.evaluate import run_eval

        return run_eval(cfg)
    if mode == "predict":
        from runner.evaluate import run_predict

        return run_predict(cfg)
    from runner.train import run as train

    return train(cfg)
