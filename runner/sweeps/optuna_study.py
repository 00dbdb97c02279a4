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
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.config.errors import ConfigError
from runner.config.redaction import public_uri
from runner.sweeps.grid import missing_key
from runner.sweeps.manifest import parse_overrides
from runner.sweeps.search_space import (
    describe_distribution,
    describe_space,
    override_value,
    search_space,
    space_to_json,
)

log = logging.getLogger(__name__)

SWEEPER_TARGET = "hydra_plugins.runner_optuna_sweeper.runner_optuna_sweeper.RunnerOptunaSweeper"
# The group options of hydra/sweeper/sampler, for `hydra.sweeper.sampler=<name>`.
SAMPLER_TARGETS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "grid": "optuna.samplers.GridSampler",
    "qmc": "optuna.samplers.QMCSampler",
}
PRUNER_TARGETS = {
    "median": "optuna.pruners.MedianPruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
    "successive_halving": "optuna.pruners.SuccessiveHalvingPruner",
    "none": "optuna.pruners.NopPruner",
}
STORAGE_FORMS = ("sqlite:///", "postgresql", "mysql", "oracle", "mssql", "journal:///")
DIRECTIONS = ("maximize", "minimize")
# Where a study's search space is kept, to refuse continuing it over another space.
SPACE_ATTR = "runner.search_space"
# The metric the study's trial values are (trainer.monitor): a study is continued only on it.
MONITOR_ATTR = "runner.monitor"
# The command line's constant overrides that change what a trial trains (see
# `trial_settings`): a study continued with others compares unlike trials, and says so.
SETTINGS_ATTR = "runner.fixed_settings"
# Constant overrides that leave a trial's value alone: where outputs go, how it is tracked
# and launched, and the sweep's own controls.
OUTSIDE_TRIAL_PREFIXES = ("paths.", "hydra.", "logger.", "sweep.", "hydra/")
STUDY_FILE = "study.json"
JOURNAL_PREFIX = "journal:///"
# The password of an RDB URL (`postgresql://user:password@host/db`).
SQLITE_BUSY_TIMEOUT_S = 60


class SweepConfigError(ConfigError):
    """A sweeper setting that cannot run; the message lists every problem found."""


@dataclass
class StudyPlan:
    """What the sweep will do, from its checked settings.

    Attributes:
        study_name: The study's name (None: Optuna names a new one).
        storage: The storage URL (None: a fresh in-memory study).
        direction: maximize or minimize.
        space: Parameter name -> Optuna distribution.
        fixed: The command line's constant overrides, given to every job.
        sampler: The sampler, built.
        pruner: The pruner, built.
        pruner_node: The pruner's node (resolved), for the jobs to build the same one.
        n_trials: Finished (complete or pruned) trials the study should have.
        n_jobs: Trials launched per batch.
        trial_override: How a job is told its trial: `optuna.trial` or `+optuna.trial`.
        spelled: A space key as the jobs' overrides write it, where that is not the key
            itself (`+loss.fail`: a key the command line adds to the config).
    """

    study_name: str | None
    storage: str | None
    direction: str
    space: dict[str, Any]
    fixed: list[str]
    sampler: Any
    pruner: Any
    pruner_node: dict[str, Any]
    n_trials: int
    n_jobs: int
    trial_override: str = "optuna.trial"
    spelled: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    monitor: str = ""

    def job_overrides(self, trial: Any) -> list[str]:
        """The overrides of the job that runs `trial`: the fixed ones, its params, its number."""
        params = [
            f"{self.spelled.get(key, key)}={override_value(v)}" for key, v in trial.params.items()
        ]
        return [*self.fixed, *params, f"{self.trial_override}={trial.number}"]


def shown_storage(url: Any) -> str:
    """A storage URL as logs and messages show it: its password, if any, as `***`."""
    return public_uri(str(url))


def open_storage(url: str) -> Any:
    """An Optuna storage for `url`.

    Args:
        url: An RDB URL (`sqlite:///outputs/optuna.db`, `postgresql://...`) or
            `journal:////abs/path/study.log` for a journal file on a shared file system
            (clusters where SQLite's locking over NFS is not safe). As in sqlite URLs,
            the path after `journal:///` is relative unless it starts with `/`.
    """
    import optuna

    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix(JOURNAL_PREFIX))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Concurrent jobs write their reports to one file; on busy cores a writer can hold
        # the lock longer than SQLite's default 5 s wait.
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    # Heartbeats are off: a trial's job reports every epoch, and a job that dies is
    # marked failed by the sweeper when its launcher returns.
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def is_optuna_sweep(config: DictConfig) -> bool:
    """Whether the config's sweeper is the project's Optuna sweeper."""
    target = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
    return target == SWEEPER_TARGET


def _node(value: Any, names: dict[str, str]) -> Any:
    """A sampler/pruner node as a plain dict; a group option's name becomes its node."""
    if isinstance(value, str) and value in names:
        return {"_target_": names[value]}
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _build(
    what: str, node: Any, module: str, names: dict[str, str], allowed: tuple[str, ...], **extra: Any
) -> tuple[Any, str | None]:
    """Instantiates a sampler or pruner node; returns it or the problem with it."""
    from hydra.utils import instantiate

    group = f"hydra/sweeper/{what}=" + "|".join(names)
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        return None, (
            f"hydra.sweeper.{what}={node!r} is not an Optuna {what}: choose one with {group}, "
            f"or give a node with _target_: {module}.<Class> and its options"
        )
    target = node["_target_"]
    if not target.startswith(f"{module}.") and not target.startswith(allowed):
        return None, (
            f"hydra.sweeper.{what}._target_={target!r} is not an Optuna {what} ({module}.*); "
            f"choose one with {group}, or list its module in allowed_targets"
        )
    try:
        return instantiate(node, **extra), None
    except Exception as err:  # an unknown class or option: say which
        cause = err.__cause__ or err
        return None, (
            f"hydra.sweeper.{what} ({target}) cannot be built: {cause}. Fix its options "
            f"(hydra.sweeper.{what}.<option>=...) or choose another with {group}"
        )


def _grid_values(space: dict[str, Any]) -> tuple[dict[str, list[Any]], list[str]]:
    """The finite values of every parameter, for GridSampler; problems for intervals."""
    import optuna.distributions as dist

    grid, infinite = {}, []
    for key, distribution in space.items():
        if isinstance(distribution, dist.CategoricalDistribution):
            grid[key] = list(distribution.choices)
        elif isinstance(distribution, dist.IntDistribution) and not distribution.log:
            grid[key] = list(range(distribution.low, distribution.high + 1, distribution.step))
        else:
            infinite.append(f"{key} is {describe_distribution(distribution)}")
    if not infinite:
        return grid, []
    return grid, [
        f"hydra/sweeper/sampler=grid needs finite values, but {', '.join(infinite)}: use "
        "choice(...) or range(...) for them, or another sampler"
    ]


def build_sampler(node: Any, space: dict[str, Any], allowed: tuple[str, ...] = ()) -> Any:
    """The sampler a `hydra.sweeper.sampler` node (or option name) describes.

    GridSampler gets its grid from the search space when the node has none.

    Raises:
        SweepConfigError: The node names no Optuna sampler, or it cannot be built.
    """
    import optuna

    node = _node(node, SAMPLER_TARGETS)
    extra = {}
    is_grid = isinstance(node, dict) and node.get("_target_") == SAMPLER_TARGETS["grid"]
    if is_grid and node.get("search_space") is None:
        grid, problems = _grid_values(space)
        if problems:
            raise SweepConfigError("; ".join(problems))
        node = {k: v for k, v in node.items() if k != "search_space"}
        extra["search_space"] = grid
    sampler, problem = _build("sampler", node, "optuna.samplers", SAMPLER_TARGETS, allowed, **extra)
    if problem:
        raise SweepConfigError(problem)
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise SweepConfigError(f"hydra.sweeper.sampler built {sampler!r}, not an Optuna sampler")
    return sampler


def _allowed_prefixes(config: DictConfig) -> tuple[str, ...]:
    """`<module>.` of each module in `allowed_targets`: samplers and pruners may come from them."""
    return tuple(f"{m}." for m in (OmegaConf.select(config, "allowed_targets") or []))


def continued_sampler(config: DictConfig, plan: StudyPlan, trials_before: int) -> Any:
    """The sampler for a stored study that already has `trials_before` trials.

    A sampler seeded as in the first command would draw that command's points again (TPE
    draws at random for its first trials): the seed is moved by the trials the study
    has, so each continuation draws new points and stays reproducible.
    """
    node = _node(config.hydra.sweeper.get("sampler"), SAMPLER_TARGETS)
    if not trials_before or not isinstance(node, dict) or node.get("seed") is None:
        return plan.sampler
    seed = (int(node["seed"]) * 1_000_003 + trials_before) % 2**32
    allowed = _allowed_prefixes(config)
    return build_sampler({**node, "seed": seed}, plan.space, allowed)


def build_pruner(node: Any, allowed: tuple[str, ...] = ()) -> Any:
    """The pruner a `hydra.sweeper.pruner` node (or option name) describes.

    Raises:
        SweepConfigError: The node names no Optuna pruner, or it cannot be built.
    """
    import optuna

    node = _node(node, PRUNER_TARGETS)
    if node is None:
        return optuna.pruners.NopPruner()
    pruner, problem = _build("pruner", node, "optuna.pruners", PRUNER_TARGETS, allowed)
    if problem:
        raise SweepConfigError(problem)
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise SweepConfigError(f"hydra.sweeper.pruner built {pruner!r}, not an Optuna pruner")
    return pruner


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

    Raises:
        SweepConfigError: Naming every bad setting, its value and the fix.
    """
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
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if launcher.endswith("SubmitOnlySlurmLauncher"):
        problems.append(
            "hydra/launcher=slurm_submit returns before the jobs ran, and the Optuna sweeper "
            "needs each batch's results before it asks for the next: use "
            "hydra/launcher=slurm (it waits for the jobs) with hparams_search=optuna"
        )
    storage = sweeper.get("storage")
    problems += _storage_problems(storage)
    study_name = sweeper.get("study_name")
    if study_name is not None and not (isinstance(study_name, str) and study_name):
        problems.append(f"hydra.sweeper.study_name={study_name!r}: expected a name or null")
    resume = OmegaConf.select(config, "sweep.resume", default=None)
    if study_name is None and storage is not None and resume:
        # Optuna names a new study at each launch: a resumed sweep continues its own.
        recorded = read_study_file(Path(str(resume)).expanduser()) or {}
        study_name = recorded.get("study_name")
    searched = search_space(sweeper.get("params"), arguments)
    space = searched.space
    problems += searched.problems
    groups = OmegaConf.select(config, "hydra.runtime.choices", default=None) or {}
    # A group (experiment is one) need not be a key of the composed config; nor need a
    # key of a searched group (model.depth beside model=choice(resnet32, resnet10t)) be
    # one of the default option's: a point that composes no config fails its trial.
    searched_groups = {key for key in space if key in groups}
    problems += [
        missing_key(config, key)
        for key in space
        if key not in {*searched.spelled, *groups} and key.split(".")[0] not in searched_groups
    ]
    problems += _unknown_options(config, space, group_options)
    problems = [p for p in problems if p]
    if not space and not searched.problems:
        problems.append(
            "the search space is empty: set hydra.sweeper.params, or give ranges on the "
            "command line ('optim.lr=interval(1e-4, 1e-2)')"
        )
    allowed = _allowed_prefixes(config)
    sampler = pruner = None
    try:
        sampler = build_sampler(sweeper.get("sampler"), space, allowed)
    except SweepConfigError as err:
        problems.append(str(err))
    pruner_node = _node(sweeper.get("pruner"), PRUNER_TARGETS)
    try:
        pruner = build_pruner(pruner_node, allowed)
    except SweepConfigError as err:
        problems.append(str(err))
    if not problems:
        problems += _trial_run(sweeper.get("sampler"), pruner_node, space, allowed, direction)
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


def _trial_run(
    sampler: Any, pruner_node: Any, space: dict[str, Any], allowed: tuple[str, ...], direction: str
) -> list[str]:
    """What Optuna refuses when the sampler and pruner are used, not when they are built.

    TPE's `n_ei_candidates=0` failed at its first own draw, after its startup trials had
    trained, and left the sweep without a summary; Hyperband's `reduction_factor=1` failed
    at every report, so nothing was pruned. Fresh copies draw and prune a few made-up
    trials in a study in memory, quietly.

    Returns:
        The problems, naming the sampler or the pruner; [] when both work.
    """
    import optuna

    sampler_node = _node(sampler, SAMPLER_TARGETS)
    if isinstance(sampler_node, dict) and sampler_node.get("_target_") == SAMPLER_TARGETS["grid"]:
        return []  # its grid is the search space, checked already; it stops when drawn out
    startup = sampler_node.get("n_startup_trials") if isinstance(sampler_node, dict) else None
    rounds = min(int(startup) + 2, 50) if isinstance(startup, int) and startup >= 0 else 12
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    part = "sampler"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(
                direction=direction,
                sampler=build_sampler(sampler_node, space, allowed),
                pruner=build_pruner(pruner_node, allowed),
            )
            for number in range(rounds):
                part = "sampler"
                trial = study.ask(space)
                part = "pruner"
                for step in (1, 2):
                    trial.report(1.0 / (number + step), step)
                    trial.should_prune()
                study.tell(trial, 1.0 / (number + 2))
    except Exception as err:
        return [
            f"hydra.sweeper.{part}: Optuna refuses its settings when it is used "
            f"({type(err).__name__}: {err}); change them"
        ]
    finally:
        optuna.logging.set_verbosity(verbosity)
    return []


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


def _storage_problems(storage: Any) -> list[str]:
    """What is wrong with `hydra.sweeper.storage`: a form Optuna does not take, or no file."""
    problems: list[str] = []
    if storage is not None and (
        not isinstance(storage, str) or not storage.startswith(STORAGE_FORMS)
    ):
        shown = shown_storage(storage) if isinstance(storage, str) else storage
        problems.append(
            f"hydra.sweeper.storage={shown!r} is invalid: expected null (an in-memory study), "
            "an RDB URL (sqlite:///path/optuna.db, postgresql://...) or "
            "journal:////abs/path/study.log"
        )
    elif isinstance(storage, str) and storage.startswith(("sqlite:", "journal:")):
        path = storage.partition(":///")[2]
        if path == ":memory:":  # a database of its own for each connection: of each job
            problems.append(
                f"hydra.sweeper.storage={storage!r} is a new empty database for each "
                "connection, so the jobs could not reach the study: use "
                "hydra.sweeper.storage=null for a study in memory, or a file"
            )
        elif not path or path.endswith("/") or Path(path).is_dir():  # no file to keep it in
            problems.append(
                f"hydra.sweeper.storage={shown_storage(storage)!r} names no file: give one, "
                "e.g. sqlite:///outputs/optuna.db or journal:////abs/path/study.log"
            )
    return problems


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


def stored_study_problem(plan: StudyPlan, complete_is_a_problem: bool = False) -> str | None:
    """Why the stored study of the plan's name cannot be continued by it, or None.

    A stored study is continued only over the same search space and direction: trials
    from another space would mislead the sampler and the summary. With
    `complete_is_a_problem`, a study that already has `n_trials` finished trials is one
    too: the command would make an empty sweep and parent run, and say nothing.
    """
    from optuna.distributions import json_to_distribution
    from optuna.trial import TrialState

    storage = open_storage(plan.storage)
    try:
        study_id = storage.get_study_id_from_name(plan.study_name)
    except KeyError:
        return None  # a new study
    directions = [d.name.lower() for d in storage.get_study_directions(study_id)]
    attrs = storage.get_study_user_attrs(study_id)
    stored = attrs.get(SPACE_ATTR)
    if stored is not None:
        stored_space = {k: json_to_distribution(v) for k, v in stored.items()}
    else:  # a study started before the space was kept: its trials' distributions
        stored_space = {}
        for trial in storage.get_all_trials(study_id, deepcopy=False):
            stored_space.update(trial.distributions)
    where = f"hydra.sweeper.study_name={plan.study_name!r} in {shown_storage(plan.storage)}"
    fix = (
        "Give this search a new study (hydra.sweeper.study_name=<new name>), or continue "
        "it with the space it was started with"
    )
    monitor = attrs.get(MONITOR_ATTR)
    if monitor and plan.monitor and monitor != plan.monitor:
        return (
            f"{where} holds {monitor} values (its trainer.monitor); this command's jobs would "
            f"return {plan.monitor}, and the sampler and pruner would compare the two. {fix}"
        )
    if directions != [plan.direction]:
        return (
            f"{where} was started to {' and '.join(directions)}; this command would "
            f"{plan.direction} (trainer.monitor_mode / hydra.sweeper.direction). {fix}"
        )
    if stored_space and space_to_json(stored_space) != space_to_json(plan.space):
        return (
            f"{where} was searched over {describe_space(stored_space)}; this command searches "
            f"{describe_space(plan.space)}. {fix}"
        )
    done = (TrialState.COMPLETE, TrialState.PRUNED)  # as the sweeper counts them
    finished = sum(t.state in done for t in storage.get_all_trials(study_id, deepcopy=False))
    if complete_is_a_problem and finished >= plan.n_trials:
        return (
            f"{where} already has {finished} finished trial(s), and hydra.sweeper.n_trials="
            f"{plan.n_trials} is the study's total, so no trial would run. Raise "
            f"hydra.sweeper.n_trials (e.g. {finished + plan.n_trials}) to add trials, or "
            "give this search a new study (hydra.sweeper.study_name=<new name>)"
        )
    return None


def trial_settings(fixed: list[str]) -> dict[str, str]:
    """The constant overrides that shape what each trial trains, as key -> value.

    A key given twice has the value that applies: the last one, as Hydra applies them.
    """
    kept = [o for o in fixed if not o.lstrip("+~").startswith(OUTSIDE_TRIAL_PREFIXES)]
    return dict(sorted(parse_overrides(kept).items()))


def settings_change_warning(stored: Any, plan: StudyPlan) -> str | None:
    """A warning when a stored study's trials ran with other constant overrides, or None."""
    now = trial_settings(plan.fixed)
    if not isinstance(stored, dict) or stored == now:
        return None
    changes = [
        f"{key}: {stored.get(key, '(not set)')} -> {now.get(key, '(not set)')}"
        for key in sorted(stored.keys() | now.keys())
        if stored.get(key) != now.get(key)
    ]
    return (
        f"hydra.sweeper.study_name={plan.study_name!r}: its earlier trials ran with other "
        f"fixed overrides ({'; '.join(changes)}), and the sampler, the pruner and the best "
        "trial now compare them with this sweep's as one study. Give a search with other "
        "settings a study of its own (hydra.sweeper.study_name=<new name>)"
    )


def write_study_file(sweep_dir: Path, plan: StudyPlan) -> Path:
    """Writes what the jobs need to reach their trial: `<sweep dir>/optuna/study.json`."""
    path = Path(sweep_dir) / "optuna" / STUDY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "study_name": plan.study_name,
        "storage": plan.storage,
        "pruner": plan.pruner_node,
        "direction": plan.direction,
        "search_space": {k: describe_distribution(v) for k, v in sorted(plan.space.items())},
    }
    path.write_text(json.dumps(content, indent=2, default=str))
    return path


def read_study_file(sweep_dir: Path) -> dict[str, Any] | None:
    """The sweep's study.json, or None outside an Optuna sweep."""
    path = Path(sweep_dir) / "optuna" / STUDY_FILE
    return json.loads(path.read_text()) if path.exists() else None
