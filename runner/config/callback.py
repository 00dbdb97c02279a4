"""The Hydra callback that rejects a bad config before Hydra creates any output dir."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.config.errors import traceback_wanted
from runner.config.location_checks import folder_problem
from runner.config.modes import MODE_OUTPUTS, job_mode, one_process_problem
from runner.config.sweep_values import swept_values_of
from runner.config.validation import ConfigError, validate


class ValidateConfigCallback(Callback):
    """Validates the config before Hydra creates the run dir.

    Hydra turns an `Exception` raised by a callback into a warning and goes on, so a
    bad config ends the program with `SystemExit` (message on stderr, exit status 1).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Validates a single run's config; `sweep.resume`, a search and a launcher need `-m`."""
        _check_writable(config, "hydra.run.dir")
        _check_writable(config, "paths.run_dir")  # when set apart from Hydra's dir
        _refuse_training_run_dir(config)
        self._check(config)
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
        several = one_process_problem("a -m sweep")
        if several:  # each process ran the whole sweep: two parent runs, one study drawn twice
            raise SystemExit(
                f"Error: {several}; for jobs that train as N processes each, use "
                "hydra/launcher=slurm with hydra.launcher.tasks_per_node=N"
            )
        resume = OmegaConf.select(config, "sweep.resume", default=None)
        if resume is not None and Path(str(resume)).expanduser().is_file():
            # hydra.sweep.dir is the resumed sweep's folder: its check would name that key.
            raise SystemExit(
                f"Error: sweep.resume={resume!r} is a file: give the sweep's folder, the one "
                f"that holds manifest.json (sweep.resume={Path(str(resume)).parent})"
            )
        _check_writable(config, "hydra.sweep.dir")
        _refuse_training_sweep_dir(config)
        _refuse_training_run_dir(config, keys=("paths.run_dir",))  # one dir for every job
        self._check(config)

    @staticmethod
    def _check(config: DictConfig) -> None:
        try:
            validate(config)
        except ConfigError as err:
            # Printed, not raised: Hydra turns a callback's exception into a warning and
            # goes on to make the run dir and start the job.
            if traceback_wanted():
                traceback.print_exc()
            raise SystemExit(f"Error: {err}") from err


# What eval, predict, preview and throughput leave in their run dir (a run that failed
# before its results leaves none of them: the same command may run there again).
EARLIER_RESULTS = tuple(output for output, _ in MODE_OUTPUTS.values())
# What a failed job of a sweep of those modes leaves in its run dir instead (its error):
# those sweeps keep no manifest, and their other jobs go on (runner.cli).
JOB_ERROR_FILE = "error.txt"


def _refuse_training_run_dir(
    config: DictConfig, keys: tuple[str, ...] = ("hydra.run.dir", "paths.run_dir")
) -> None:
    """Refuses a run dir whose earlier run's files the command would overwrite.

    For any mode but train: a dir holding a training run, or another run's results. Eval
    would replace its metrics.json and reports, and every mode its config record
    (.hydra/, which Hydra rewrites) and run.log; a training run in its own dir resumes.
    For train: a dir holding the results of an eval, predict, preview or throughput run
    (results and no checkpoints), which a training run would replace with its own.
    """
    mode = job_mode(config)
    for key in keys:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(config, parent_key, default=None)
        if not isinstance(parent, DictConfig) or OmegaConf.is_interpolation(parent, leaf):
            continue  # paths.run_dir follows hydra.run.dir unless given
        folder = parent.get(leaf)
        if folder is None:
            continue
        where = Path(str(folder)).expanduser()
        trained = (where / "checkpoints").is_dir()
        results = [name for name in EARLIER_RESULTS if (where / name).is_file()]
        if mode == "train":
            if results and not trained:
                raise SystemExit(
                    f"Error: {key}={str(folder)!r} holds the results of an earlier run "
                    f"that did not train ({', '.join(results)}), which a training run would "
                    f"overwrite: leave {key} out (each run gets a run dir of its own), or "
                    "name a new folder"
                )
            continue
        if trained:
            raise SystemExit(
                f"Error: {key}={str(folder)!r} holds a training run (checkpoints/), whose "
                f"metrics.json, reports and config record (.hydra/) mode={mode} would "
                f"overwrite: leave {key} out (each {mode} run gets a run dir of its own), or "
                "name a new folder"
            )
        if results:  # an earlier eval's metrics.json and reports went without a word
            raise SystemExit(
                f"Error: {key}={str(folder)!r} holds the results of an earlier run "
                f"({', '.join(results)}), which mode={mode} would overwrite with its own and "
                f"its config record (.hydra/): leave {key} out (each {mode} run gets a run "
                "dir of its own), or name a new folder"
            )


def _refuse_training_sweep_dir(config: DictConfig) -> None:
    """Refuses, for a sweep with a job of any mode but train, a sweep dir holding training runs.

    Its jobs' dirs are numbered as the training sweep's were (hydra.sweep.subdir), or are
    the sweep dir itself (`hydra.sweep.subdir=.`): an eval, predict or preview job there
    would overwrite the training jobs' files. Hydra writes a job's .hydra/ before the job
    starts, so no job could refuse it itself.
    """
    modes = [str(m) for m in swept_values_of(config, "mode") or [job_mode(config)]]
    mode = next((m for m in modes if m != "train"), None)
    folder = OmegaConf.select(config, "hydra.sweep.dir", default=None)
    if mode is None or folder is None:
        return
    base = Path(str(folder)).expanduser()
    trained = [base / "checkpoints"] if (base / "checkpoints").is_dir() else []
    trained += sorted(base.glob("*/checkpoints"))
    if trained:
        raise SystemExit(
            f"Error: hydra.sweep.dir={str(folder)!r} holds training runs "
            f"({trained[0].relative_to(base)}/), whose files the mode={mode} jobs "
            "would overwrite: leave hydra.sweep.dir out (the sweep gets a dir of its own), "
            "or name a new folder"
        )
    # An earlier sweep's jobs: their results would be replaced, and an error one of them
    # left would be listed as this sweep's.
    earlier = [
        path
        for name in (*EARLIER_RESULTS, JOB_ERROR_FILE)
        for path in (base / name, *base.glob(f"*/{name}"))
        if path.is_file()
    ]
    if earlier:
        raise SystemExit(
            f"Error: hydra.sweep.dir={str(folder)!r} holds an earlier sweep's jobs "
            f"({sorted(earlier)[0].relative_to(base)}), whose files the mode={mode} jobs "
            "would overwrite: leave hydra.sweep.dir out (the sweep gets a dir of its own), "
            "or name a new folder"
        )


def _check_writable(config: DictConfig, key: str) -> None:
    """Refuses an output folder that cannot be made, or that holds more than runs.

    Hydra failed on the first in chained tracebacks. Into the second (`/`, the
    repository, an empty value: the current folder) a run wrote its checkpoints, .hydra/
    and run.log beside everything else.
    """
    # None where it cannot be resolved yet (paths.run_dir is Hydra's dir until set).
    folder = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
    if folder is None:
        return
    if problem := folder_problem(str(folder)):
        raise SystemExit(
            f"Error: {key}={str(folder)!r}: {problem}. Set paths.output_dir (or {key}) to a "
            "folder you can write to"
        )
    if problem := _shared_folder_problem(config, str(folder)):
        raise SystemExit(
            f"Error: {key}={str(folder)!r}: {problem}. Name a folder of its own (e.g. "
            "outputs/runs/mine), or leave the key out"
        )


def _shared_folder_problem(config: DictConfig, folder: str) -> str | None:
    """Why `folder` is no place for a run's or sweep's own files (None when it is)."""
    if not folder.strip():
        return "it is empty, which is the current folder"
    path = Path(folder).expanduser().resolve()
    repository = OmegaConf.select(config, "paths.root_dir", default=None)
    shared = {Path(path.anchor): "the file system's root", Path.home(): "your home folder"}
    if repository is not None:
        shared[Path(str(repository)).expanduser().resolve()] = "the repository"
    if path in shared:
        return f"it is {shared[path]}, which holds other things than this run's files"
    return None
