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

This module is the Hydra side: the config dataclass and its registration, and the sweeper,
which runs the launcher and reads the JobReturns it gives back. The study's side of each
batch (opening the study, asking it for trials, ending a batch that stopped early, when
to stop) and the history plot are in runner/sweeps/optuna_batches.py.
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

from runner.sweeps.optuna_batches import (
    Tally,
    abandon,
    ask_trials,
    fail_unfinished,
    open_study,
    plot_history,
    record_failed,
    should_stop,
    tell_finished_jobs,
)
from runner.sweeps.optuna_parts import shown_storage
from runner.sweeps.optuna_study import plan_study
from runner.sweeps.stored_study import write_study_file

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


def _job_error(result: JobReturn) -> BaseException | None:
    """The exception a failed job raised: Hydra's JobReturn raises it when read."""
    try:
        _ = result.return_value
    except Exception as err:
        return err
    return None


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
        study = open_study(self.config, plan, sweep_dir)
        plan.study_name = study.study_name
        write_study_file(sweep_dir, plan)
        tally = Tally.of(study)
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
            trials = ask_trials(study, plan, min(plan.n_jobs, left), sweep_dir)
            results = self._launch_and_tell(study, plan, trials, job_index, sweep_dir)
            job_index += len(results)
            tally.add(study, trials)
            returns.append(results)
            if should_stop(study, plan, tally, sweep_dir):
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
                abandon(study, trials, keys, list(jobs), sweep_dir)
                raise SystemExit(128 + signum) from err
            # A drawn point that composes no config (`model=choice(resnet32, ...)` with a
            # key only other models have): those trials fail, the study goes on (it
            # stopped the whole sweep).
            log.error("optuna: the trials %s compose no config: %s", keys, err)
            done = tell_finished_jobs(study, trials, keys, sweep_dir)
            fail_unfinished(study, trials)
            returns = []
            for number, (key, overrides) in enumerate(jobs.items(), start=job_index):
                if key in done:  # it ran before the one that failed to compose
                    finished = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
                    finished.return_value = done[key].get("value")
                    returns.append(finished)
                    continue
                record_failed(sweep_dir, key, overrides, number, str(err))
                returns.append(JobReturn(overrides=overrides, status=JobStatus.FAILED))
            return returns
        except BaseException:  # a signal or Ctrl-C: a stored study must not keep them RUNNING
            abandon(study, trials, keys, list(jobs), sweep_dir)
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
                recorded[key] = record_failed(sweep_dir, key, overrides, number, error)
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
        plot_history(trials, study.direction.name.lower(), out / "optimization_history.png")
