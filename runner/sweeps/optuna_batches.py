"""An Optuna sweep's study and its batches of trials, as the sweeper runs them.

The sweeper (hydra_plugins/runner_optuna_sweeper) opens the study (`open_study`: a new
one, or a stored one to continue), then asks it for one batch of trials after another
(`ask_trials`) and launches their jobs. `Tally` counts the finished and failed trials
after each batch, and `should_stop` ends the sweep short of `n_trials` when the grid is
done or trials keep failing. When a batch stops early (a drawn point composes no config,
a signal, Ctrl-C), `tell_finished_jobs` tells the trials whose jobs finished,
`fail_unfinished` ends the others FAIL, and `abandon` does both and marks the jobs
ABANDONED; `record_failed` records a job that failed before it could record itself.
`plot_history` draws the study's optimisation history.

Nothing here imports Hydra: the launcher, the JobReturns it gives back and the
sweeper's config dataclass stay in the plugin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner.sweeps.optuna_parts import StudyPlan, open_storage
from runner.sweeps.search_space import space_to_json
from runner.sweeps.stored_study import (
    MONITOR_ATTR,
    SETTINGS_ATTR,
    SPACE_ATTR,
    continued_sampler,
    settings_change_warning,
    trial_settings,
)

log = logging.getLogger(__name__)


def abandon(study: Any, trials: list, keys: list[str], jobs: list[str], sweep_dir: Path) -> None:
    """Ends a batch that a signal or Ctrl-C stopped.

    Its finished jobs' trials are told, the others end FAIL (a stored study must not keep
    them RUNNING), and their jobs are ABANDONED.
    """
    from runner.sweeps.manifest import ABANDONED, read_manifest, update_manifest

    tell_finished_jobs(study, trials, keys, sweep_dir)
    fail_unfinished(study, trials)
    # The study draws new trials in their place: no later launch continues these.
    recorded = read_manifest(sweep_dir)
    for key in jobs:
        if recorded.get(key, {}).get("status") in ("RUNNING", "INTERRUPTED"):
            update_manifest(sweep_dir, key, status=ABANDONED)


def record_failed(
    sweep_dir: Path, key: str, overrides: list[str], number: int, error: str
) -> dict[str, Any]:
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


@dataclass
class Tally:
    """The study's finished (complete or pruned) trials, and this sweep's finished and failed."""

    finished: int
    # This sweep's trials (a stored study has older ones).
    finished_here: int = 0
    failed_here: int = 0

    @classmethod
    def of(cls, study: Any) -> Tally:
        """The tally of a study as this sweep finds it (a stored study has trials already)."""
        return cls(finished=len(study.get_trials(states=_done_states())))

    def add(self, study: Any, trials: list[Any]) -> None:
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


def open_study(config: DictConfig, plan: StudyPlan, sweep_dir: Path) -> Any:
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


def ask_trials(study: Any, plan: StudyPlan, count: int, sweep_dir: Path) -> list[Any]:
    """Asks the study for `count` trials of the plan's space, marked as this sweep's."""
    from runner.sweeps.optuna_trial import SWEEP_DIR_ATTR, keep_in_memory

    trials = [study.ask(plan.space) for _ in range(count)]
    for trial in trials:  # which launch runs it, for a later one to tell it was killed
        trial.set_user_attr(SWEEP_DIR_ATTR, str(sweep_dir.resolve()))
    if plan.storage is None:
        for trial in trials:
            keep_in_memory(study, trial)
    return trials


def should_stop(study: Any, plan: StudyPlan, tally: Tally, sweep_dir: Path) -> bool:
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


def tell_finished_jobs(
    study: Any, trials: list[Any], keys: list[str], sweep_dir: Path
) -> dict[str, Any]:
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


def fail_unfinished(study: Any, trials: list[Any]) -> None:
    """Ends FAIL those of `trials` that no job ended (pruned) before."""
    from optuna.trial import TrialState

    from runner.sweeps.optuna_trial import tell_trial

    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    for trial in trials:
        if not states[trial.number].is_finished():
            tell_trial(study, trial, state=TrialState.FAIL)


def plot_history(trials: list[Any], direction: str, path: Path) -> None:
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
