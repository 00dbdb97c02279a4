"""Entry point: `python run.py [group=option ...] [key=value ...]` (see README.md)."""

import gc
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import runner  # noqa: F401  (registers the config resolvers)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Runs one job (`mode=`: train, eval, predict, preview, throughput); returns its objective."""
    from runner.cli import main as run_job

    return run_job(cfg)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exit_:
        if exit_.code == 1:  # Hydra's exit after its own error (the runner exits with text)
            from runner.config.command_line import unknown_key_hint, unreadable_argument_hint

            hint = unreadable_argument_hint(sys.argv[1:]) or unknown_key_hint(
                sys.argv[1:], Path(__file__).parent / "conf"
            )
            if hint:
                print(hint, file=sys.stderr)
        raise
    finally:
        # The job is over and its files are written. Without this, the interpreter's exit
        # runs full garbage collections over the heap of torch, timm and mlflow objects
        # while it tears the modules down: 2-3 s (benchmarks/exit_time.py). The atexit
        # handlers (MLflow's, logging's) still run; the OS takes back the memory.
        gc.freeze()
