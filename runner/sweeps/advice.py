"""What to tell the user about a sweep's jobs that did not finish, and how to rerun them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.sweeps.optuna_study import is_optuna_sweep


def failed_listing(failed: list[dict[str, Any]]) -> str:
    """A line per job that did not finish, with its error; an error they all share, once.

    Jobs that fail on their data (a class too small for K folds, an exclude file of
    another data set) fail alike: the same long message once per job hid the jobs.
    """
    lines = [
        f"  job {e.get('num')} {e.get('status', '?')}: {e['label'] or e['key']}" for e in failed
    ]
    errors = [e.get("error") for e in failed]
    if share_one_error(failed):
        return "\n".join([*lines, f"  each of them: {errors[0]}"])
    return "\n".join(
        line + (f"\n    {error}" if error else "")
        for line, error in zip(lines, errors, strict=True)
    )


def share_one_error(failed: list[dict[str, Any]]) -> bool:
    """Whether the jobs that did not finish (more than one) all failed with one error."""
    errors = [e.get("error") for e in failed]
    return len(failed) > 1 and bool(errors[0]) and all(error == errors[0] for error in errors)


def failed_sweep_advice(config: DictConfig, sweep_dir: Path, failed: list[dict[str, Any]]) -> str:
    """What to do about a sweep's failed jobs: mend an error they share, then resume."""
    advice = resume_advice(config, sweep_dir)
    if not share_one_error(failed):
        return advice
    # Jobs refused alike (their data, a key) fail the same way on a resume until it is mended.
    return f"Mend the error they share first, then: {advice[0].lower()}{advice[1:]}"


def resume_advice(config: DictConfig, sweep_dir: Path) -> str:
    """What runs a sweep's failed jobs again, or (Optuna) what continues its study."""
    if not is_optuna_sweep(config):
        return f"Run them again with sweep.resume={sweep_dir}"
    if OmegaConf.select(config, "hydra.sweeper.storage", default=None) is None:
        return (
            "An Optuna study in memory (hydra.sweeper.storage=null) ends with its sweep: "
            "run the command again for a new study, or set hydra.sweeper.storage to keep one"
        )
    return (
        f"Continue the study with sweep.resume={sweep_dir}: the sampler draws new trials "
        "in place of the failed ones (they do not count towards hydra.sweeper.n_trials), "
        "so a failed point is tried again only if it is drawn again"
    )
