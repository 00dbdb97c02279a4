"""An Optuna sweep's settings, checked and turned into a plan before anything starts.

The project's sweeper (hydra_plugins/runner_optuna_sweeper) is configured as Hydra's
Optuna sweeper is: `hydra.sweeper.sampler` and `hydra.sweeper.pruner` are `_target_`
nodes naming Optuna classes (groups hydra/sweeper/sampler and hydra/sweeper/pruner),
`params` is the search space in Hydra's override grammar, `storage: null` is a fresh
in-memory study. `plan_study` checks every setting at once and says what is wrong; the
sweep's callback calls it before the sweep's MLflow parent run exists, and the sweeper
again before its first trial.

Search spaces use Hydra's override grammar; a range given on the command line replaces
the preset's range of the same key, and a single value there fixes the key:

    optim.lr: tag(log, interval(1e-5, 1e-1))     # float, log-uniform
    trainer.batch_size: choice(32, 64, 128)      # categorical
    model.drop_rate: interval(0.0, 0.5)          # float, uniform
    trainer.batch_size: tag(int, log, interval(16, 256))   # int, log-uniform
    trainer.max_epochs: range(2, 10, 2)          # int, step 2 (10 excluded)

What is kept of a study, and checked when a command continues it, is in
runner/sweeps/stored_study.py; the plan and the parts it holds are in optuna_parts.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.config.command_line import missing_key
from runner.sweeps.manifest import submits_only
from runner.sweeps.optuna_parts import (
    PRUNER_TARGETS,
    SAMPLER_TARGETS,
    StudyPlan,
    SweepConfigError,
    allowed_prefixes,
    build_pruner,
    build_sampler,
    option_node,
    storage_problems,
    trial_run_problems,
)
from runner.sweeps.search_space import SearchSpace, describe_distribution, search_space
from runner.sweeps.stored_study import read_study_file, stored_study_problem
from runner.sweeps.summary_parts import REPEATS

SWEEPER_TARGET = "hydra_plugins.runner_optuna_sweeper.runner_optuna_sweeper.RunnerOptunaSweeper"
DIRECTIONS = ("maximize", "minimize")


def is_optuna_sweep(config: DictConfig) -> bool:
    """Whether the config's sweeper is the project's Optuna sweeper."""
    target = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
    return target == SWEEPER_TARGET


def _positive_int(name: str, value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return None
    return f"hydra.sweeper.{name}={value!r} is invalid: expected an integer >= 1"


def plan_study(
    config: DictConfig,
    arguments: list[str],
    *,
    open_store: bool = True,
    group_options: Callable[[str], list[str]] | None = None,
    compose_job: Callable[[list[str]], DictConfig] | None = None,
) -> StudyPlan:
    """Checks every sweeper setting and returns the sweep's plan.

    Args:
        config: The sweep's composed config (with its `hydra` node).
        arguments: The command line's task overrides.
        open_store: Also open the storage and check a stored study of the same name
            (its search space and direction must be this command's).
        group_options: The options of a config group (Hydra's config loader), to check
            the choices of a searched group (`model=choice(resnet18, convnext_tiny)`);
            None checks none.
        compose_job: Composes a job's config from its overrides, to check a key of a
            searched group (`optim.lr` beside `optim=choice(adamw, sgd)`) against the
            options the search reaches; None leaves such keys to the trials.

    Raises:
        SweepConfigError: Naming every bad setting, its value and the fix.
    """
    sweeper = config.hydra.sweeper
    direction, problems = _settings_problems(config)
    storage = sweeper.get("storage")
    resume = OmegaConf.select(config, "sweep.resume", default=None)
    study_name = _study_name(sweeper, resume)
    searched = search_space(sweeper.get("params"), arguments)
    space = searched.space
    problems += _space_problems(config, searched, group_options, compose_job)
    allowed = allowed_prefixes(config)
    sampler = pruner = None
    try:
        sampler = build_sampler(sweeper.get("sampler"), space, allowed)
    except SweepConfigError as err:
        problems.append(str(err))
    pruner_node = option_node(sweeper.get("pruner"), PRUNER_TARGETS)
    try:
        pruner = build_pruner(pruner_node, allowed)
    except SweepConfigError as err:
        problems.append(str(err))
    if not problems:
        problems += trial_run_problems(
            sweeper.get("sampler"), pruner_node, space, allowed, direction
        )
    if problems:
        _raise(problems)
    plan = StudyPlan(
        study_name=study_name,
        storage=storage,
        direction=direction,
        space=space,
        fixed=searched.fixed,
        sampler=sampler,
        pruner=pruner,
        pruner_node=pruner_node or {"_target_": PRUNER_TARGETS["none"]},
        n_trials=int(sweeper.n_trials),
        n_jobs=int(sweeper.n_jobs),
        trial_override="optuna.trial" if "optuna" in config else "+optuna.trial",
        spelled=searched.spelled,
        monitor=str(config.trainer.monitor),
    )
    if open_store and storage is not None and study_name is not None:
        # A resumed sweep may still have a summary to write when its study is complete.
        problem = stored_study_problem(plan, complete_is_a_problem=resume is None)
        if problem:
            _raise([problem])
    return plan


def _settings_problems(config: DictConfig) -> tuple[str, list[str]]:
    """The study's direction, and what is wrong with the sweeper's settings but its space."""
    sweeper = config.hydra.sweeper
    problems = [
        p
        for p in (
            _positive_int("n_trials", sweeper.get("n_trials")),
            _positive_int("n_jobs", sweeper.get("n_jobs")),
        )
        if p
    ]
    direction, direction_problems = _direction(config)
    problems += direction_problems
    if submits_only(config):
        problems.append(
            "hydra/launcher=slurm_submit returns before the jobs ran, and the Optuna sweeper "
            "needs each batch's results before it asks for the next: use "
            "hydra/launcher=slurm (it waits for the jobs) with hparams_search=optuna"
        )
    problems += storage_problems(sweeper.get("storage"))
    study_name = sweeper.get("study_name")
    if study_name is not None and not (isinstance(study_name, str) and study_name):
        problems.append(f"hydra.sweeper.study_name={study_name!r}: expected a name or null")
    return direction, problems


def _study_name(sweeper: DictConfig, resume: Any) -> Any:
    """The study's name: `hydra.sweeper.study_name`, or the one a resumed sweep recorded."""
    study_name = sweeper.get("study_name")
    if study_name is None and sweeper.get("storage") is not None and resume:
        # Optuna names a new study at each launch: a resumed sweep continues its own.
        recorded = read_study_file(Path(str(resume)).expanduser()) or {}
        study_name = recorded.get("study_name")
    return study_name


def _space_problems(
    config: DictConfig,
    searched: SearchSpace,
    group_options: Callable[[str], list[str]] | None,
    compose_job: Callable[[list[str]], DictConfig] | None,
) -> list[str]:
    """What is wrong with the search space: its ranges, keys, group options and repeats."""
    space = searched.space
    problems: list[str | None] = [*searched.problems]
    groups = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    # A group (experiment is one) need not be a key of the composed config; nor need a
    # key of a searched group (model.depth beside model=choice(resnet32, resnet10t)) be
    # one of the default option's: a point that composes no config fails its trial.
    searched_groups = {key for key in space if key in groups}
    problems += [
        missing_key(config, key)
        for key in [*space, *searched.preset_fixed]
        if key not in {*searched.spelled, *groups} and key.split(".")[0] not in searched_groups
    ]
    problems += _unknown_options(config, space, group_options)
    problems += _keys_no_searched_option_has(searched, searched_groups, compose_job)
    problems += _searched_repeats(space, config.hydra.sweeper.get("sampler"))
    found = [p for p in problems if p]
    if not space and not searched.problems:
        found.append(
            "the search space is empty: set hydra.sweeper.params, or give ranges on the "
            "command line ('optim.lr=interval(1e-4, 1e-2)')"
        )
    return found


def _direction(config: DictConfig) -> tuple[str, list[str]]:
    """The study's direction (null = from trainer.monitor_mode), and what is wrong with it."""
    problems: list[str] = []
    direction = config.hydra.sweeper.get("direction")
    if isinstance(direction, ListConfig | list):
        problems.append(
            f"hydra.sweeper.direction={list(direction)!r}: multi-objective studies are not "
            "supported; give one direction (maximize or minimize) or null"
        )
        direction = None
    follows = "maximize" if config.trainer.monitor_mode == "max" else "minimize"
    if direction is None:
        direction = follows
    elif direction not in DIRECTIONS:
        problems.append(
            f"hydra.sweeper.direction={direction!r} is invalid: expected maximize, minimize or "
            "null (= from trainer.monitor_mode)"
        )
    elif direction != follows:  # each job returns its best value by monitor_mode
        problems.append(
            f"hydra.sweeper.direction={direction} contradicts trainer.monitor_mode="
            f"{config.trainer.monitor_mode} ({config.trainer.monitor}): each job returns its "
            "best value by monitor_mode. Leave hydra.sweeper.direction out (null), or set "
            "trainer.monitor_mode"
        )
    return direction, problems


def _keys_no_searched_option_has(
    searched: SearchSpace,
    groups: set[str],
    compose_job: Callable[[list[str]], DictConfig] | None,
) -> list[str]:
    """A searched key of a searched group that none of the options the search reaches has.

    E.g. `optim.lrr` beside `optim=choice(adamw, sgd)`. Only a key some option lacks
    fails the trials that draw that option; one that no option has is misspelt, and
    every trial failed on it, advising `+optim.lrr`.
    """
    problems = []
    for key in searched.space:
        group = key.split(".")[0]
        if compose_job is None or key == group or group not in groups or key in searched.spelled:
            continue
        options = [str(option) for option in getattr(searched.space[group], "choices", ())]
        first = None
        for option in options:
            try:
                problem = missing_key(compose_job([*searched.fixed, f"{group}={option}"]), key)
            except Exception:  # an option that does not compose is the trial's to report
                continue
            if problem is None:
                break
            first = first or problem
        else:
            if first is not None:
                problems.append(
                    f"{first}; none of the options the search reaches has it "
                    f"({group}={', '.join(options)})"
                )
    return problems


def _searched_repeats(space: dict[str, Any], sampler: Any) -> list[str]:
    """`seed` or `data.fold` in a search whose sampler draws its points (all but grid).

    Such a sampler draws one seed (fold) a trial and steers towards the lucky ones: no
    configuration was repeated, best_params named a seed, and the summary's "mean +- std
    over seeds" had one run a row. The grid sampler runs every seed of each point.
    """
    node = option_node(sampler, SAMPLER_TARGETS)
    if isinstance(node, dict) and node.get("_target_") == SAMPLER_TARGETS["grid"]:
        return []
    return [
        f"{key}: the search space {describe_distribution(space[key])} makes the {key} a "
        f"searched value: the sampler draws one {key} a trial and favours the lucky ones, "
        f"so no configuration is repeated over {plural}. Search with one {key}, then run "
        f"the best configuration over {plural} (python run.py -m <its overrides> "
        f"{key}=...), or use hydra/sweeper/sampler=grid, which runs every {key} of each point"
        for key, plural in REPEATS.items()
        if key in space
    ]


def _unknown_options(
    config: DictConfig, space: dict[str, Any], group_options: Callable[[str], list[str]] | None
) -> list[str]:
    """A searched config group's choices that are no option of the group.

    Found here, before any trial: the trial that drew one failed to compose, and with it
    the whole sweep.
    """
    groups = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    problems = []
    for key, distribution in space.items():
        if group_options is None or key not in groups or not hasattr(distribution, "choices"):
            continue
        options = group_options(key)
        unknown = [str(choice) for choice in distribution.choices if str(choice) not in options]
        if unknown:
            problems.append(
                f"{key}: the search space {describe_distribution(distribution)} reaches "
                f"{', '.join(unknown)}, which the {key} group does not have (its options: "
                f"{', '.join(options)})"
            )
    return problems


def _raise(problems: list[str]) -> None:
    plural = "" if len(problems) == 1 else "s"
    listing = "\n  - ".join(problems)
    raise SweepConfigError(
        f"Invalid Optuna sweep ({len(problems)} problem{plural}):\n  - {listing}"
    )
