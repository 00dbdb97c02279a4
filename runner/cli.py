"""What `python run.py` does, by `mode`: one recipe module per mode.

train (the default), eval, predict, preview or throughput; each recipe sits at the top of
the package and may import everything below it.
"""

from __future__ import annotations

from omegaconf import DictConfig


def run(cfg: DictConfig) -> float:
    """Runs the recipe the config's `mode` names and returns its objective.

    Args:
        cfg: The composed config.

    Returns:
        train: the best monitored value (a sweeper's objective); eval: test accuracy;
        predict: the number of images labelled; throughput: the highest img/s;
        preview: NaN.
    """
    from runner.training import startup_clock

    startup_clock.job_start()
    from runner.training.host_memory import keep_freed_memory

    if cfg.trainer.get("keep_host_memory", True):  # before any DataLoader worker forks
        keep_freed_memory()
    mode = cfg.get("mode", "train")
    if cfg.get("preview_only"):  # `+preview_only=true`, the older spelling of mode=preview
        mode = "preview"
    if mode == "eval":
        from runner.evaluate import run_eval

        return run_eval(cfg)
    if mode == "predict":
        from runner.evaluate import run_predict

        return run_predict(cfg)
    if mode == "preview":
        from runner.preview import run as preview

        return preview(cfg)
    if mode == "throughput":
        from runner.throughput import run as throughput

        return throughput(cfg)
    from runner.train import run as train

    return train(cfg)
