"""The jobs a grid sweep's command line asks for, checked before any of them starts.

`python run.py -m optim.lr=1e-3,-1 seed=0,1` is four jobs; a bad value in any of them is
reported at start, before the sweep's MLflow parent run exists or any job trains.
Ranges a sweeper searches (Optuna's `interval(...)`) are the sweeper's to check.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from runner.config.command_line import missing_key
from runner.config.errors import ConfigError, UserError
from runner.config.location_checks import predictions_file
from runner.config.sweep_values import flatten_params, override_parser, typed_overrides


def grid_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of every job of a grid (the product of its value lists), in order.

    As Hydra's basic sweeper: a key given twice keeps its first place and its last
    values (`hydra.sweeper.params`, then the command line).

    Raises:
        ConfigError: An `interval(...)`, a range that only a search samples.
    """
    axes: dict[str, list[str]] = {}
    for override in override_parser().parse_overrides(overrides):
        key = override.input_line.partition("=")[0]
        if override.is_interval_sweep():
            raise ConfigError(
                f"{override.input_line}: interval() is a range that a search samples, and "
                "this sweep is a grid: add hparams_search=optuna to search it, or give the "
                "values to try (a,b,c or range(...))"
            )
        if override.is_sweep_override():
            values = [str(value) for value in override.sweep_string_iterator()]
            axes[key] = [f"{key}={value}" for value in values]
        else:
            axes[key] = [override.input_line]
    return [list(job) for job in itertools.product(*axes.values())]


def _composition(err: Exception, config: DictConfig) -> str:
    """Hydra's composition error in a line; for a key the config lacks, `missing_key`'s."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    key = re.match(r"Could not override '([^']+)'", first)
    return (key and missing_key(config, key.group(1).lstrip("+~"))) or first


def searchpath_overrides(config: DictConfig) -> list[str]:
    """The command line's config dirs (hydra.searchpath=...), to compose as it does.

    Without them a group they add (+my_group=x) would compose as an unknown key.
    """
    return [str(o) for o in config.hydra.overrides.hydra if str(o).startswith("hydra.searchpath=")]


def group_options(config: DictConfig) -> Callable[[str], list[str]]:
    """The options of a config group, those of the command line's config dirs included.

    Asks the config loader of the Hydra app that runs (the sweep's own process).
    """
    from hydra.core.global_hydra import GlobalHydra

    search = searchpath_overrides(config)
    loader = GlobalHydra.instance().config_loader()
    return lambda group: loader.get_group_options(group, overrides=search)


def job_composer(config: DictConfig, config_name: str | None) -> Callable[[list[str]], DictConfig]:
    """Composes a job's config from its overrides, as the sweep's jobs are composed.

    Uses the Hydra app that runs (the sweep's own process) and the command line's config
    dirs.
    """
    from hydra import compose

    search = searchpath_overrides(config)
    name = config_name or "train"
    return lambda overrides: compose(config_name=name, overrides=[*search, *overrides])


def refuse_bad_jobs(config: DictConfig, config_name: str | None) -> None:
    """Composes and validates every job of the sweep's grid.

    A training job's model name, weights file and transforms are checked too, as the job
    itself checks them before its data. What depends on the host a job runs on (its
    device and precision) is left to the job: a SLURM job may have a GPU that this
    process lacks.

    Raises:
        ConfigError: Naming each bad job by its overrides and its problems.
    """
    from runner.augment.checks import check_transforms
    from runner.config.modes import job_mode
    from runner.config.validation import validate
    from runner.models.checks import check_model_config

    overrides = typed_overrides(config)
    # A sweep a config file sets (`hydra.sweeper.params` of an experiment) is in the grid.
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    in_config = [f"{k}={v}" for k, v in flatten_params(params).items()] if params else []
    compose = job_composer(config, config_name)
    problems = []
    monitors: dict[str, str] = {}  # what each job is ranked by -> the first job that is
    outputs: dict[str, list[str]] = {}  # a predictions file -> the jobs that would write it
    for number, job in enumerate(grid_jobs([*in_config, *overrides])):
        swept = " ".join(o for o in job if o not in overrides)
        named = f"job {number} ({swept or 'its only job'})"
        try:
            cfg = compose(job)
        except Exception as err:  # Hydra's composition error: a key the config lacks
            problems.append(f"{named}: {_composition(err, config)}")
            continue
        try:
            validate(cfg)
            if job_mode(cfg) == "train":  # what a job checks at its start, without the data
                check_model_config(cfg.model)
                check_transforms(cfg.aug, cfg.data)
        except UserError as err:
            problems.append(f"{named}: {err}")
            continue
        monitors.setdefault(f"{cfg.trainer.monitor} ({cfg.trainer.monitor_mode})", named)
        if cfg.mode == "predict" and cfg.predict.output:
            path = str(predictions_file(str(cfg.predict.output)).resolve())
            outputs.setdefault(path, []).append(named)
    if len(monitors) > 1:  # an experiment preset sets its own trainer.monitor
        listing = ", ".join(f"{job} by {monitor}" for monitor, job in monitors.items())
        problems.append(
            f"the jobs of one sweep are ranked by one metric, and these would be ranked by "
            f"different ones: {listing}. Give trainer.monitor=<metric> on the command line "
            "for all of them, or run one sweep per metric"
        )
    for path, jobs in outputs.items():
        if len(jobs) > 1:
            problems.append(
                f"{', '.join(jobs)} would all write predict.output {path}, each replacing "
                "the one before: leave predict.output out (each job writes predictions.csv "
                "in its own run dir), or sweep it too"
            )
    if problems:
        raise ConfigError("the sweep was not started:\n" + "\n".join(problems))
