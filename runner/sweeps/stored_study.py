"""A stored Optuna study: what is kept of it, and what is checked when a command continues it.

A study in a storage (`hydra.sweeper.storage` not null) outlives the command that
started it: a later command with its `hydra.sweeper.study_name` adds trials to it. The
sweeper keeps in the study's user attributes the search space, the monitored metric and
the constant overrides its trials trained with, so that `stored_study_problem` can refuse
a continuation over another space, metric or direction before any trial runs, and
`settings_change_warning` can say when the trials' settings differ. A seeded sampler is
moved on by the trials the study has (`continued_sampler`) so a continuation draws new
points. Each sweep dir keeps `optuna/study.json` (`write_study_file`): the jobs reach
their trial through it, and a resumed sweep finds its study's name in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner.sweeps.manifest import parse_overrides, read_sweep_file
from runner.sweeps.optuna_parts import (
    SAMPLER_TARGETS,
    StudyPlan,
    allowed_prefixes,
    build_sampler,
    open_storage,
    option_node,
    shown_storage,
)
from runner.sweeps.search_space import describe_distribution, describe_space, space_to_json

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


def continued_sampler(config: DictConfig, plan: StudyPlan, trials_before: int) -> Any:
    """The sampler for a stored study that already has `trials_before` trials.

    A sampler seeded as in the first command would draw that command's points again (TPE
    draws at random for its first trials): the seed is moved by the trials the study
    has, so each continuation draws new points and stays reproducible.
    """
    node = option_node(config.hydra.sweeper.get("sampler"), SAMPLER_TARGETS)
    if not trials_before or not isinstance(node, dict) or node.get("seed") is None:
        return plan.sampler
    seed = (int(node["seed"]) * 1_000_003 + trials_before) % 2**32
    allowed = allowed_prefixes(config)
    return build_sampler({**node, "seed": seed}, plan.space, allowed)


def trial_settings(fixed: list[str]) -> dict[str, str]:
    """The constant overrides that shape what each trial trains, as key -> value.

    A key given twice has the value that applies: the last one, as Hydra applies them.
    """
    kept = [o for o in fixed if not o.lstrip("+~").startswith(OUTSIDE_TRIAL_PREFIXES)]
    return dict(sorted(parse_overrides(kept).items()))


def setting_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The keys whose values differ, as `key: a -> b` (`(not set)` for a missing one)."""
    return [
        f"{key}: {before.get(key, '(not set)')} -> {after.get(key, '(not set)')}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def settings_change_warning(stored: Any, plan: StudyPlan) -> str | None:
    """A warning when a stored study's trials ran with other constant overrides, or None."""
    now = trial_settings(plan.fixed)
    if not isinstance(stored, dict) or stored == now:
        return None
    changes = setting_changes(stored, now)
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
    """The sweep's study.json, or None outside an Optuna sweep.

    Raises:
        SweepFileError: study.json is cut short or not what the sweeper writes.
    """
    path = Path(sweep_dir) / "optuna" / STUDY_FILE
    if not path.exists():
        return None
    # Not to be deleted: a resumed sweep that names no study finds it by the name in it.
    fix = (
        "Restore it from a copy of the sweep dir: the sweep's Optuna jobs reach their "
        "study through it"
    )
    return read_sweep_file(path, fix)
