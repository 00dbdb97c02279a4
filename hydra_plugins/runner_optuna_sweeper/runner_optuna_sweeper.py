"""A Hydra sweeper on the current Optuna release, with pruning across processes.

`python run.py -m hparams_search=optuna` selects it (conf/hparams_search/optuna.yaml).
Each batch asks the study for `n_jobs` trials, launches them through the configured
launcher (in this process, local worker processes or SLURM), and tells the study each
job's result. Jobs report their monitored value every epoch to their trial through the
study's storage and stop early when the pruner says so (see runner/sweeps/optuna_trial.py).

Search spaces use Hydra's override grammar:

    optim.lr: tag(log, interval(1e-5, 1e-1))     # float, log-uniform
    trainer.batch_size: choice(32, 64, 128)      # categorical
    model.drop_rate: interval(0.0, 0.5)          # float, uniform
    trainer.batch_size: tag(int, log, interval(16, 256))   # int, log-uniform
    trainer.max_epochs: range(2, 10, 2)          # int, step 2 (10 excluded)
"""

# No `from __future__ import annotations`: Hydra loads plugin modules without putting
# them in sys.modules, and OmegaConf reads the config dataclass's real types.
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "cmaes", "grid")


@dataclass
class RunnerOptunaSweeperConf:
    """Settings of `hydra/sweeper=runner_optuna` (set them in conf/hparams_search/)."""

    _target_: str = "hydra_plugins.runner_optuna_sweeper.runner_optuna_sweeper.RunnerOptunaSweeper"
    study_name: str = "runner"
    # An RDB URL or journal:///path/to/file.log (a shared file system on a cluster).
    storage: str = "sqlite:///outputs/optuna.db"
    sampler: str = "tpe"
    seed: Optional[int] = None
    # Trials the study should have finished (complete or pruned) when the sweep ends;
    # running the same command again continues the study up to this number.
    n_trials: int = 20
    # Trials launched together in one batch of the launcher.
    n_jobs: int = 1
    # maximize | minimize; null = from trainer.monitor_mode.
    direction: Optional[str] = None
    # The search space (null = only what the command line sweeps, as choices).
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="runner_optuna", node=RunnerOptunaSweeperConf, provider="runner"
)


def distribution_of(override: Override) -> Any:
    """The Optuna distribution of one search-space entry in Hydra's override grammar.

    Raises:
        ValueError: The entry is a single value or an unsupported form.
    """
    import optuna.distributions as dist

    value = override.value()
    name = override.get_key_element()
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:  # Hydra's intervals are floats unless tagged
            return dist.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return dist.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, RangeSweep):
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            last = value.start + (value.stop - 1 - value.start) // value.step * value.step
            return dist.IntDistribution(value.start, last, step=value.step)
        return dist.CategoricalDistribution(list(value.range()))
    if isinstance(value, ChoiceSweep):
        return dist.CategoricalDistribution(list(value.list))
    raise ValueError(
        f"hydra.sweeper.params.{name}={override.get_value_element_as_str()!r} is not a search "
        "space: use interval(a, b), tag(log, interval(a, b)), choice(a, b, ...) or "
        "range(start, stop, step)"
    )


def build_sampler(name: str, seed: Optional[int], space: Dict[str, Any]) -> Any:
    """The sampler `hydra.sweeper.sampler` names; grid needs a finite space."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "grid":
        grid = {}
        for key, distribution in space.items():
            if isinstance(distribution, optuna.distributions.CategoricalDistribution):
                grid[key] = list(distribution.choices)
            elif isinstance(distribution, optuna.distributions.IntDistribution):
                grid[key] = list(range(distribution.low, distribution.high + 1, distribution.step))
            else:
                raise ValueError(
                    f"hydra.sweeper.sampler=grid needs finite values, but {key} is an interval: "
                    "use choice(...) or range(...) for it, or another sampler"
                )
        return optuna.samplers.GridSampler(grid, seed=seed)
    raise ValueError(f"hydra.sweeper.sampler={name!r} is unknown: use one of {', '.join(SAMPLERS)}")


def _as_override_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class RunnerOptunaSweeper(Sweeper):
    """Optuna search over Hydra jobs; see the module docstring."""

    def __init__(
        self,
        study_name: str,
        storage: str,
        sampler: str,
        seed: Optional[int],
        n_trials: int,
        n_jobs: int,
        direction: Optional[str],
        params: Optional[Dict[str, str]] = None,
    ) -> None:
        self.study_name = study_name
        self.storage = storage
        self.sampler = sampler
        self.seed = seed
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.direction = direction
        self.params = dict(params or {})
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keeps the config and instantiates the launcher."""
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _check(self) -> str:
        """Validates the settings; returns the study's direction."""
        problems = []
        if OmegaConf.select(self.config, "optuna") is None:
            problems.append(
                "the config has no `optuna` node: select the search with "
                "hparams_search=optuna rather than hydra/sweeper=runner_optuna"
            )
        if self.n_trials < 1:
            problems.append(f"hydra.sweeper.n_trials={self.n_trials}: must be >= 1")
        if self.n_jobs < 1:
            problems.append(f"hydra.sweeper.n_jobs={self.n_jobs}: must be >= 1")
        direction = self.direction or (
            "maximize" if self.config.trainer.monitor_mode == "max" else "minimize"
        )
        if direction not in ("maximize", "minimize"):
            problems.append(f"hydra.sweeper.direction={direction!r}: use maximize or minimize")
        if problems:
            raise ValueError("; ".join(problems))
        return direction

    def sweep(self, arguments: List[str]) -> List[Any]:
        """Runs trials until the study has `n_trials` finished ones.

        Args:
            arguments: The command line's overrides: fixed ones go to every job, sweep
                ones (`a=1,2`) join the search space as choices.
        """
        import optuna
        from optuna.trial import TrialState

        from runner.sweeps.manifest import STOP_FILE
        from runner.sweeps.optuna_trial import open_storage

        direction = self._check()
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        fixed, space = [], {}
        for override in parser.parse_overrides(arguments):
            if override.is_sweep_override():
                space[override.get_key_element()] = distribution_of(override)
            else:
                fixed.append(override.input_line)
        for key, value in self.params.items():
            space[key] = distribution_of(parser.parse_override(f"{key}={value}"))
        if not space:
            raise ValueError("hydra.sweeper.params is empty: there is nothing to search")

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = optuna.create_study(
            study_name=self.study_name,
            storage=open_storage(self.storage),
            sampler=build_sampler(self.sampler, self.seed, space),
            direction=direction,
            load_if_exists=True,
        )
        done_states = (TrialState.COMPLETE, TrialState.PRUNED)
        log.info(
            "optuna study %r in %s: %d finished trial(s), target %d",
            self.study_name,
            self.storage,
            len(study.get_trials(states=done_states)),
            self.n_trials,
        )
        returns, job_index = [], 0
        while (left := self.n_trials - len(study.get_trials(states=done_states))) > 0:
            stop = sweep_dir / STOP_FILE
            if stop.exists():
                log.warning("sweep.fail_fast: no more trials (%s)", stop.read_text())
                break
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            batch = [
                [
                    *fixed,
                    *(f"{k}={_as_override_value(v)}" for k, v in t.params.items()),
                    f"optuna.trial={t.number}",
                ]
                for t in trials
            ]
            results = self.launcher.launch(batch, initial_job_idx=job_index)
            job_index += len(batch)
            states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
            for trial, result in zip(trials, results, strict=True):
                if states[trial.number].is_finished():  # the job pruned it itself
                    continue
                value = result.return_value if result.status == JobStatus.COMPLETED else None
                if isinstance(value, int | float) and math.isfinite(value):
                    study.tell(trial, float(value))
                else:
                    study.tell(trial, state=TrialState.FAIL)
            returns.append(results)
            if (
                not study.get_trials(states=done_states)
                and all(t.state == TrialState.FAIL for t in study.get_trials())
                and len(study.get_trials()) >= 3 * self.n_jobs
            ):
                log.error("optuna: every trial so far failed; stopping the study")
                break
        self._report(study, sweep_dir / "optuna")
        return returns

    def _report(self, study: Any, out: Path) -> None:
        """Writes the best trial's params and an optimisation-history plot."""
        from optuna.trial import TrialState

        out.mkdir(parents=True, exist_ok=True)
        trials = study.get_trials()
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        counts = {state.name.lower(): sum(t.state == state for t in trials) for state in states}
        report: dict[str, Any] = {"study_name": study.study_name, "trials": counts}
        if counts["complete"]:
            best = study.best_trial
            report.update(best_value=best.value, best_params=best.params, best_trial=best.number)
            log.info(
                "optuna: best trial %d, value %.4f, params %s", best.number, best.value, best.params
            )
        (out / "best_params.json").write_text(json.dumps(report, indent=2))
        _plot_history(trials, study.direction.name.lower(), out / "optimization_history.png")


def _plot_history(trials: List[Any], direction: str, path: Path) -> None:
    """Each trial's value (pruned ones: their last report) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    fig, ax = plt.subplots(figsize=(6, 4))
    best, best_line = None, []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state == TrialState.COMPLETE:
            ax.scatter(trial.number, trial.value, color="tab:blue")
            better = best is None or (
                trial.value > best if direction == "maximize" else trial.value < best
            )
            best = trial.value if better else best
        elif trial.state == TrialState.PRUNED and trial.intermediate_values:
            last = trial.intermediate_values[max(trial.intermediate_values)]
            ax.scatter(trial.number, last, color="tab:gray", marker="x")
        best_line.append((trial.number, best))
    points = [(n, b) for n, b in best_line if b is not None]
    if points:
        ax.step(*zip(*points, strict=True), where="post", color="tab:red", label="best so far")
        ax.legend()
    ax.set_xlabel("trial")
    ax.set_ylabel("objective (x = pruned, last report)")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
