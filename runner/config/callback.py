"""The Hydra callback that rejects a bad config before Hydra creates any output dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.config.validation import ConfigError, job_mode, validate
from runner.config.value_checks import folder_problem


class ValidateConfigCallback(Callback):
    """Validates the config before Hydra creates the run dir.

    Hydra turns an `Exception` raised by a callback into a warning and goes on, so a
    bad config ends the program with `SystemExit` (message on stderr, exit status 1).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Validates a single run's config; `sweep.resume`, a search and a launcher need `-m`."""
        _check_writable(config, "hydra.run.dir")
        self._check(config)
        run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir", default="")))
        if job_mode(config) == "eval" and (run_dir / "checkpoints").is_dir():
            raise SystemExit(  # its metrics.json and reports would be replaced by eval's
                f"Error: hydra.run.dir={str(run_dir)!r} holds a training run (checkpoints/), "
                "whose metrics.json and reports mode=eval would overwrite: leave "
                "hydra.run.dir out (each eval gets a run dir of its own), or name a new folder"
            )
        choices = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
        search = choices.get("hparams_search")
        if search is not None:  # without -m: one run at the preset's defaults, no search
            raise SystemExit(
                f"Error: hparams_search={search} runs a search, which needs -m: "
                f"python run.py -m hparams_search={search} <your arguments>"
            )
        launcher = choices.get("hydra/launcher")
        if launcher is not None and launcher != "basic":  # without -m: trains right here
            raise SystemExit(
                f"Error: hydra/launcher={launcher} launches the jobs of a sweep, which needs "
                f"-m: python run.py -m hydra/launcher={launcher} <your arguments>"
            )
        resume = config.get("sweep", {}).get("resume")
        if resume is not None:  # without -m the run would ignore it and train from scratch
            raise SystemExit(
                f"Error: sweep.resume={resume!r} resumes a sweep, which needs -m: "
                f"python run.py -m sweep.resume={resume} <the sweep's own arguments>"
            )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Validates the sweep's base config; each job is validated again when it runs."""
        resume = OmegaConf.select(config, "sweep.resume", default=None)
        if resume is not None and Path(str(resume)).expanduser().is_file():
            # hydra.sweep.dir is the resumed sweep's folder: its check would name that key.
            raise SystemExit(
                f"Error: sweep.resume={resume!r} is a file: give the sweep's folder, the one "
                f"that holds manifest.json (sweep.resume={Path(str(resume)).parent})"
            )
        _check_writable(config, "hydra.sweep.dir")
        self._check(config)

    @staticmethod
    def _check(config: DictConfig) -> None:
        try:
            validate(config)
        except ConfigError as err:
            raise SystemExit(f"Error: {err}") from err


def _check_writable(config: DictConfig, key: str) -> None:
    """Refuses an output folder that cannot be made (Hydra failed in chained tracebacks)."""
    folder = OmegaConf.select(config, key, default=None)
    problem = None if folder is None else folder_problem(str(folder))
    if problem is not None:
        raise SystemExit(
            f"Error: {key}={str(folder)!r}: {problem}. Set paths.output_dir (or {key}) to a "
            "folder you can write to"
        )
