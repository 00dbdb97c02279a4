"""A Hydra sweeper on the current Optuna release, with pruning across processes.

`python run.py -m hparams_search=optuna` selects it (conf/hparams_search/optuna.yaml).
It is configured as Hydra's own Optuna sweeper is (a `hparams_search` file written for
that sweeper works after `override /hydra/sweeper: optuna` becomes `runner_optuna`):
`sampler` and `pruner` are `_target_` nodes (groups hydra/sweeper/sampler and
hydra/sweeper/pruner in conf/), `params` the search space in Hydra's override grammar,
`storage: null` a fresh in-memory study.

Each batch asks the study for `n_jobs` trials, launches them through the configured
launcher (in this process, local worker processes or SLURM), and tells the study each
job's result. Jobs report their monitored value every epoch to their trial through the
study's storage and stop early when the pruner says so (see runner/sweeps/optuna_trial.py).
Every setting is checked (runner/sweeps/optuna_study.py, optuna_parts.py) before the sweep
starts, and a stored study is continued only as runner/sweeps/stored_study.py allows.
"""

# No `from __future__ import annotations`: Hydra loads plugin modules without putting
# them in sys.modules, and OmegaConf reads the config dataclass's real types.
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from runner.sweeps.optuna_parts import StudyPlan, open_storage, shown_storage
from runner.sweeps.optuna_study import plan_study
from runner.sweeps.search_space import space_to_json
from runner.sweeps.stored_study import (
    MONITOR_ATTR,
    SETTINGS_ATTR,
    SPACE_ATTR,
    continued_sampler,
    settings_change_warning,
    trial_settings,
    write_study_file,
)

log = logging.getLogger(__name__)

__all__ = ["RunnerOptunaSweeper", "RunnerOptunaSweeperConf"]


@dataclass
class RunnerOptunaSweeperConf:
    """Settings of `hydra/sweeper=runner_optuna` (set them in conf/hparams_search/)."""

    _target_: str = "hydra_plugins.runner_optuna_sweeper.runner_optuna_sweeper.RunnerOptunaSweeper"
    # Hydra hands the sampler and pruner nodes over as they are: the sweeper checks and
    # builds them itself (GridSampler's grid comes from the search space).
    _recursive_: bool = False
    # The sampler and pruner nodes come from conf/hydra/sweeper/{sampler,pruner}/.
    defaults: List[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "median"}]
    )
    # null = Optuna names a new study (nothing to continue).
    study_name: Optional[str] = None
    # null = an in-memory study; an RDB URL; or journal:////abs/path/file.log (a shared
    # file system on a cluster; journal:///rel/path is relative, as in sqlite URLs).
    storage: Optional[str] = None
    sampler: Any = None
    pruner: Any = None
    # Trials the study should have finished (complete or pruned) when the sweep ends;
    # running the same command again continues a stored study up to this number.
    n_trials: int = 20
    # Trials launched together in one batch of the launcher.
    n_jobs: int = 1
    # maximize | minimize; null = from trainer.monitor_mode.
    direction: Any = None
    # The search space (null = only what the command line sweeps).
    params: Optional[Dict[str, Any]] = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="runner_optuna", node=RunnerOptunaSweeperConf, provider="runner"
)


def _abandon(study: Any, trials: list, keys: list[str], jobs: list[str], sweep_dir: Path) -> None:
    """Ends a batch that a signal or Ctrl-C stopped.

    Its finished jobs' trials are told, the others end FAIL (a stored study must not keep
    them RUNNING), and their jobs are ABANDONED.
    """
    from runner.sweeps.manifest import ABANDONED, read_manifest, update_manifest

    _tell_finished_jobs(study, trials, keys, sweep_dir)
    _fail_unfinished(study, trials)
    # The study draws new trials in their place: no later launch continues these.
    recorded = read_manifest(sweep_dir)
    for key in jobs:
        if recorded.get(key, {}).get("status") in ("RUNNING", "INTERRUPTED"):
            update_manifest(sweep_dir, key, status=ABANDONED)


def _record_failed(
    sweep_dir: Path, key: str, overrides: List[str], number: int, error: str
) -> Dict[str, Any]:
    """Records in the manifest a job that failed before it could record itself."""
    from runner.sweeps.manifest import update_manifest

    return update_manifest(
        sweep_dir,
        key,
        status="FAILED",
        overrides=overrides,
        num=number,
        error=" ".join(error.split())[:500],
    )


def _job_error(result: JobReturn) -> BaseException | None:
    """The exception a failed job raised: Hydra's JobReturn raises it when read."""
    try:
        _ = result.return_value
    except Exception as err:
        return err
    return None


@dataclass
class _Tally:
    """The study's finished (complete or pruned) trials, and this sweep's finished and failed."""

    finished: int
    # This sweep's trials (a stored study has older ones).
    finished_here: int = 0
    failed_here: int = 0

    @classmethod
    def of(cls, study: Any) -> "_Tally":
        """The tally of a study as this sweep finds it (a stored study has trials already)."""
        return cls(finished=len(study.get_trials(states=_done_states())))

    def add(self, study: Any, trials: List[Any]) -> None:
        """Counts a batch's trials, once the study has been told their results."""
        from optuna.trial import TrialState

        done_states = _done_states()
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        self.failed_here += sum(states[t.number] == TrialState.FAIL for t in trials)
        self.finished_here += sum(states[t.number] in done_states for t in trials)
        self.finished = sum(state in done_states for state in states.values())


def _done_states() -> tuple[Any, ...]:
    """The trial states that count towards n_trials: complete and pruned."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def _open_study(config: DictConfig, plan: StudyPlan, sweep_dir: Path) -> Any:
    """Creates the plan's study, or loads the stored one of its name to continue it.

    A new study keeps its search space, monitor and settings; a continued one gets a
    sampler that draws new points, and the trials a killed launch left RUNNING end FAIL.
    """
    import optuna

    from runner.sweeps.optuna_trial import retire_abandoned_trials, retire_unfinished_jobs

    study = optuna.create_study(
        study_name=plan.study_name,
        storage=open_storage(plan.storage) if plan.storage else None,
        sampler=plan.sampler,
        pruner=plan.pruner,
        direction=plan.direction,
        load_if_exists=True,
    )
    if SPACE_ATTR not in study.user_attrs:  # refuses continuing over another space
        study.set_user_attr(SPACE_ATTR, space_to_json(plan.space))
    if MONITOR_ATTR not in study.user_attrs:  # ... or on another metric
        study.set_user_attr(MONITOR_ATTR, plan.monitor)
    if SETTINGS_ATTR not in study.user_attrs:  # ... and warns about other settings
        study.set_user_attr(SETTINGS_ATTR, trial_settings(plan.fixed))
    elif warning := settings_change_warning(study.user_attrs[SETTINGS_ATTR], plan):
        log.warning("%s", warning)
    if study.trials:  # a continued study: its sampler must not redraw the same points
        study.sampler = continued_sampler(config, plan, len(study.trials))
        ended = retire_unfinished_jobs(study, sweep_dir) + retire_abandoned_trials(study, sweep_dir)
        if ended:
            log.warning("optuna: trial(s) %s, left RUNNING by a killed launch, end FAIL", ended)
    return study


def _ask_trials(study: Any, plan: StudyPlan, count: int, sweep_dir: Path) -> List[Any]:
    """Asks the study for `count` trials of the plan's space, marked as this sweep's."""
    from runner.sweeps.optuna_trial import SWEEP_DIR_ATTR, keep_in_memory

    trials = [study.ask(plan.space) for _ in range(count)]
    for trial in trials:  # which launch runs it, for a later one to tell it was killed
        trial.set_user_attr(SWEEP_DIR_ATTR, str(sweep_dir.resolve()))
    if plan.storage is None:
        for trial in trials:
            keep_in_memory(study, trial)
    return trials


def _should_stop(study: Any, plan: StudyPlan, tally: _Tally, sweep_dir: Path) -> bool:
    """Whether the sweep ends short of `n_trials` (the grid is done, or trials keep failing).

    Logs why it ends.
    """
    from optuna.samplers import GridSampler

    if (
        isinstance(study.sampler, GridSampler)
        and study.sampler.is_exhausted(study)
        and tally.finished < plan.n_trials
    ):  # the study ends as study.optimize ends it: more trials would repeat points
        log.warning(
            "optuna: every point of the grid has a finished trial; %d of "
            "hydra.sweeper.n_trials=%d finished as COMPLETE or PRUNED",
            tally.finished,
            plan.n_trials,
        )
        return True
    # Failed trials do not count towards n_trials, so failures need their own end.
    if not tally.finished_here and tally.failed_here >= 3 * plan.n_jobs:
        log.error(
            "optuna: all %d trials of this sweep failed; stopping the study (the jobs' "
            "errors are in %s)",
            tally.failed_here,
            sweep_dir / "manifest.json",
        )
        return True
    if tally.failed_here >= plan.n_trials:
        log.error(
            "optuna: %d trials of this sweep failed, as many as hydra.sweeper.n_trials; "
            "stopping the study with %d of %d finished (the jobs' errors are in %s)",
            tally.failed_here,
            tally.finished,
            plan.n_trials,
            sweep_dir / "manifest.json",
        )
        return True
    return False


class RunnerOptunaSweeper(Sweeper):
    """Optuna search over Hydra jobs; see the module docstring."""

    def __init__(
        self,
        study_name: Optional[str],
        storage: Optional[str],
        sampler: Any,
        pruner: Any,
        n_trials: int,
        n_jobs: int,
        direction: Any,
        params: Optional[Dict[str, Any]] = None,
    ) -> None:
        # The settings are read from the config in `sweep`, where all of them are checked.
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

    def sweep(self, arguments: List[str]) -> List[Any]:
        """Runs trials until the study has `n_trials` finished ones.

        Args:
            arguments: The command line's overrides: fixed ones go to every job, sweep
                ones (`a=1,2`, `interval(...)`) join the search space and replace the
                preset's range of the same key.
        """
        from runner.sweeps.manifest import STOP_FILE, read_manifest

        plan = plan_study(self.config, list(arguments))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = _open_study(self.config, plan, sweep_dir)
        plan.study_name = study.study_name
        write_study_file(sweep_dir, plan)
        tally = _Tally.of(study)
        log.info(
            "optuna study %r in %s: %d finished trial(s), target %d",
            study.study_name,
            shown_storage(plan.storage) if plan.storage else "memory (hydra.sweeper.storage=null)",
            tally.finished,
            plan.n_trials,
        )
        # A resumed sweep's new jobs are numbered after its earlier ones: numbered from 0
        # again, two jobs shared a number, a run name, and (suffixed) a run dir.
        earlier = [entry.get("num", -1) for entry in read_manifest(sweep_dir).values()]
        returns, job_index = [], 1 + max(earlier, default=-1)
        while (left := plan.n_trials - tally.finished) > 0:
            stop = sweep_dir / STOP_FILE
            if stop.exists():
                log.warning("sweep.fail_fast: no more trials (%s)", stop.read_text())
                break
            trials = _ask_trials(study, plan, min(plan.n_jobs, left), sweep_dir)
            results = self._launch_and_tell(study, plan, trials, job_index, sweep_dir)
            job_index += len(results)
            tally.add(study, trials)
            returns.append(results)
            if _should_stop(study, plan, tally, sweep_dir):
                break
        self._report(study, sweep_dir / "optuna")
        return returns

    def _launch_and_tell(
        self, study: Any, plan: Any, trials: List[Any], job_index: int, sweep_dir: Path
    ) -> List[Any]:
        """Runs the trials' jobs through the launcher and tells the study their results.

        A sampler may draw one point twice (a grid with fewer points left than n_jobs, a
        small categorical space): such trials share one job, as two jobs with the same
        overrides would share one run dir.

        Returns:
            The launcher's results, one per job launched.
        """
        from runner.sweeps.callback import sweep_signal
        from runner.sweeps.manifest import job_key, read_manifest
        from runner.sweeps.optuna_trial import tell_trial, trial_result

        jobs: Dict[str, List[str]] = {}
        keys = []
        for trial in trials:
            overrides = plan.job_overrides(trial)
            keys.append(job_key(overrides))
            jobs.setdefault(keys[-1], overrides)
        try:
            results = self.launcher.launch(list(jobs.values()), initial_job_idx=job_index)
        except ConfigCompositionException as err:
            signum = sweep_signal()
            if signum is not None:  # SIGTERM while a job's config was composed
                _abandon(study, trials, keys, list(jobs), sweep_dir)
                raise SystemExit(128 + signum) from err
            # A drawn point that composes no config (`model=choice(resnet32, ...)` with a
            # key only other models have): those trials fail, the study goes on (it
            # stopped the whole sweep).
            log.error("optuna: the trials %s compose no config: %s", keys, err)
            done = _tell_finished_jobs(study, trials, keys, sweep_dir)
            _fail_unfinished(study, trials)
            returns = []
            for number, (key, overrides) in enumerate(jobs.items(), start=job_index):
                if key in done:  # it ran before the one that failed to compose
                    finished = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
                    finished.return_value = done[key].get("value")
                    returns.append(finished)
                    continue
                _record_failed(sweep_dir, key, overrides, number, str(err))
                returns.append(JobReturn(overrides=overrides, status=JobStatus.FAILED))
            return returns
        except BaseException:  # a signal or Ctrl-C: a stored study must not keep them RUNNING
            _abandon(study, trials, keys, list(jobs), sweep_dir)
            raise
        result_of = dict(zip(jobs, results, strict=True))
        recorded = read_manifest(sweep_dir)
        for number, (key, overrides) in enumerate(jobs.items(), start=job_index):
            if result_of[key].status == JobStatus.FAILED and key not in recorded:
                # It failed before the job recorded itself (an import error): it went unseen,
                # and the sweep ended as if nothing had failed.
                err = _job_error(result_of[key])
                log.error("optuna: job %d failed as it started", number, exc_info=err)
                error = f"{type(err).__name__}: {err}"
                recorded[key] = _record_failed(sweep_dir, key, overrides, number, error)
        states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
        for trial, key in zip(trials, keys, strict=True):
            if states[trial.number].is_finished():  # the job pruned it itself
                continue
            result = result_of[key]
            value = result.return_value if result.status == JobStatus.COMPLETED else None
            tell_trial(study, trial, **trial_result(value, recorded.get(key)))
        return results

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


def _tell_finished_jobs(
    study: Any, trials: List[Any], keys: List[str], sweep_dir: Path
) -> Dict[str, Any]:
    """Tells the trials whose jobs finished before their batch stopped what they found.

    The basic launcher runs a batch's jobs one after another: when a later one composes
    no config, or Ctrl-C comes, the earlier ones have their results in the manifest.

    Returns:
        The manifest entries of those jobs, by job key.
    """
    from runner.sweeps.manifest import read_manifest
    from runner.sweeps.optuna_trial import tell_trial, trial_result

    recorded = read_manifest(sweep_dir)
    done = {k: recorded[k] for k in keys if recorded.get(k, {}).get("status") == "FINISHED"}
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    for trial, key in zip(trials, keys, strict=True):
        if key in done and not states[trial.number].is_finished():
            tell_trial(study, trial, **trial_result(done[key].get("value"), done[key]))
    return done


def _fail_unfinished(study: Any, trials: List[Any]) -> None:
    """Ends FAIL those of `trials` that no job ended (pruned) before."""
    from optuna.trial import TrialState

    from runner.sweeps.optuna_trial import tell_trial

    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    for trial in trials:
        if not states[trial.number].is_finished():
            tell_trial(study, trial, state=TrialState.FAIL)


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
