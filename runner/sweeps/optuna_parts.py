"""The parts an Optuna study is made of, each built from a sweeper setting and checked.

The sampler (`hydra.sweeper.sampler`), the pruner (`hydra.sweeper.pruner`) and the
storage (`hydra.sweeper.storage`). `optuna_study.plan_study` gathers their problems with
the others of the sweep; the jobs build the same pruner and open the same storage.
`StudyPlan` holds them built, with the rest of what the sweep will do: the planning
(optuna_study.py) makes one and the stored study's checks (stored_study.py) take one, so
it sits here, below both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config.errors import ConfigError
from runner.config.location_checks import database_driver_problem, store_file_problem
from runner.config.redaction import public_uri
from runner.sweeps.search_space import describe_distribution, override_value

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


JOURNAL_PREFIX = "journal:///"


# Seconds a job waits for another's lock on a SQLite study (see `open_storage`).
SQLITE_BUSY_TIMEOUT_S = 60


class SweepConfigError(ConfigError):
    """A sweeper setting that cannot run; the message lists every problem found."""


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


def storage_problems(storage: Any) -> list[str]:
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
        # Else Optuna's traceback when the sweep starts (a folder it cannot make or write,
        # a text file where the database should be).
        elif problem := store_file_problem(Path(path), sqlite=storage.startswith("sqlite:")):
            problems.append(f"hydra.sweeper.storage={shown_storage(storage)!r}: {problem}")
    elif isinstance(storage, str) and (problem := database_driver_problem(storage)):
        problems.append(f"hydra.sweeper.storage={shown_storage(storage)!r} needs {problem}")
    return problems


def option_node(value: Any, names: dict[str, str]) -> Any:
    """A sampler/pruner node as a plain dict; a group option's name becomes its node."""
    if isinstance(value, str) and value in names:
        return {"_target_": names[value]}
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def allowed_prefixes(config: DictConfig) -> tuple[str, ...]:
    """`<module>.` of each module in `allowed_targets`: samplers and pruners may come from them."""
    return tuple(f"{m}." for m in (OmegaConf.select(config, "allowed_targets") or []))


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

    # Options that follow another key (seed: ${seed}): a bad value is that key's to fix.
    followed = (
        {k: v for k, v in OmegaConf.to_container(node).items() if isinstance(v, str) and "${" in v}
        if OmegaConf.is_dict(node)
        else {}
    )
    node = option_node(node, SAMPLER_TARGETS)
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
        following = [f"{k}={node[k]!r} follows {v}" for k, v in followed.items()]
        if following:
            problem += f" (of its options, {', '.join(following)})"
        raise SweepConfigError(problem)
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise SweepConfigError(f"hydra.sweeper.sampler built {sampler!r}, not an Optuna sampler")
    return sampler


def build_pruner(node: Any, allowed: tuple[str, ...] = ()) -> Any:
    """The pruner a `hydra.sweeper.pruner` node (or option name) describes.

    Raises:
        SweepConfigError: The node names no Optuna pruner, or it cannot be built.
    """
    import optuna

    node = option_node(node, PRUNER_TARGETS)
    if node is None:
        return optuna.pruners.NopPruner()
    pruner, problem = _build("pruner", node, "optuna.pruners", PRUNER_TARGETS, allowed)
    if problem:
        raise SweepConfigError(problem)
    if not isinstance(pruner, optuna.pruners.BasePruner):
        raise SweepConfigError(f"hydra.sweeper.pruner built {pruner!r}, not an Optuna pruner")
    return pruner


def trial_run_problems(
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

    sampler_node = option_node(sampler, SAMPLER_TARGETS)
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
    monitor: str = ""

    def job_overrides(self, trial: Any) -> list[str]:
        """The overrides of the job that runs `trial`: the fixed ones, its params, its number."""
        params = [
            f"{self.spelled.get(key, key)}={override_value(v)}" for key, v in trial.params.items()
        ]
        return [*self.fixed, *params, f"{self.trial_override}={trial.number}"]
