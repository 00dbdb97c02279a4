"""What a sweep checks before its parent run or any job exists.

Every grid job's config, or an Optuna sweep's settings; the launcher's resource counts;
and, for `sweep.resume`, that the command line's constants are the sweep's own. A
problem stops the command with one message (`SweepCallback.on_multirun_start`).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config.errors import ConfigError
from runner.config.sweep_values import typed_overrides
from runner.sweeps.grid import group_options, job_composer, refuse_bad_jobs
from runner.sweeps.job import constant_keys
from runner.sweeps.manifest import SweepFileError
from runner.sweeps.optuna_study import is_optuna_sweep, plan_study
from runner.sweeps.stored_study import setting_changes, trial_settings


def changed_constants(before: list[str] | None, now: list[str]) -> list[str]:
    """The constant overrides (but paths, hydra, logger, sweep) that differ, as `key: a -> b`.

    `before` is the sweep's recorded command line (None: not recorded, nothing differs).
    A key swept in either launch is no constant: fewer or more of its values choose fewer
    or more of the sweep's jobs. An interpolation (`${oc.env:...}`) is not compared: a
    sweep of an earlier version recorded its value.
    """
    if before is None:
        return []
    first, second = trial_settings(before), trial_settings(now)
    swept = (first.keys() - constant_keys(before)) | (second.keys() - constant_keys(now))
    compared = {
        key
        for key in first.keys() | second.keys()
        if key not in swept and "${" not in first.get(key, "") + second.get(key, "")
    }
    return setting_changes(
        {k: v for k, v in first.items() if k in compared},
        {k: v for k, v in second.items() if k in compared},
    )


def check_sweep(config: DictConfig, config_name: str | None) -> None:
    """Stops the command on a problem in the sweep's configs, before any run or job exists.

    Args:
        config: The sweep's composed config (with its `hydra` node).
        config_name: The command's primary config (Hydra hands it to the callback).

    Raises:
        SystemExit: Naming every problem found: an Optuna sweep's settings, or each grid
            job's config, and the launcher's resource counts.
    """
    try:
        if is_optuna_sweep(config):  # its searched values are the sweeper's to check
            arguments = typed_overrides(config)
            plan_study(
                config,
                arguments,
                group_options=group_options(config),
                compose_job=job_composer(config, config_name),
            )
        else:  # every job's config
            refuse_bad_jobs(config, config_name)
        check_launcher(config)
    except (ConfigError, SweepFileError) as err:  # a SweepConfigError is one too
        raise SystemExit(f"Error: {err}") from err


def refuse_changed_constants(resume: Any, before: list[str] | None, now: list[str]) -> None:
    """Stops a resumed grid sweep whose constant overrides are not its recorded ones.

    Args:
        resume: The `sweep.resume` value, for the message.
        before: The command line sweep.json recorded (None: not recorded).
        now: This command line.

    Raises:
        SystemExit: Naming each changed constant, `key: a -> b`.
    """
    changed = changed_constants(before, now)
    if changed:
        raise SystemExit(
            f"Error: sweep.resume={resume}: the sweep's jobs ran with other constant "
            f"overrides ({'; '.join(changed)}). A resume runs the same sweep again: "
            "with these, each job would be a new one, mixed into its summary. Give "
            "the sweep's own values, or leave sweep.resume out to start a new sweep"
        )


# The submitit launchers' resource counts (slurm, slurm_submit, local) and their least
# value; None may stand for "the cluster's default" where the preset has it null.
LAUNCHER_COUNTS = {
    "timeout_min": 1,
    "nodes": 1,
    "tasks_per_node": 1,
    "cpus_per_task": 1,
    "gpus_per_node": 0,
    "mem_gb": 0,  # --mem=0: all of a node's memory
    "array_parallelism": 1,
    "max_num_timeout": 0,
    "signal_delay_s": 0,
}


def check_launcher(config: DictConfig) -> None:
    """Refuses resource counts a launcher would pass on to sbatch (`--nodes=0`).

    Raises:
        ConfigError: Naming every bad `hydra.launcher.*` key.
    """
    launcher = OmegaConf.select(config, "hydra.launcher", default=None) or {}
    problems = []
    for key, least in LAUNCHER_COUNTS.items():
        value = launcher.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            problems.append(f"hydra.launcher.{key}={value!r}: expected an integer >= {least}")
    delay, limit = launcher.get("signal_delay_s"), launcher.get("timeout_min")
    if not problems and isinstance(delay, int) and isinstance(limit, int) and delay >= limit * 60:
        # SLURM would signal each job at its start: it checkpoints, is requeued and
        # signalled again, until max_num_timeout is spent.
        problems.append(
            f"hydra.launcher.signal_delay_s={delay} is not shorter than "
            f"hydra.launcher.timeout_min={limit} ({limit * 60} s): every job would be told "
            "to stop as it starts. Give a signal_delay_s of a few steps plus a checkpoint "
            f"(e.g. hydra.launcher.signal_delay_s={min(120, limit * 15)}), or a longer "
            "timeout_min"
        )
    if problems:
        raise ConfigError("the launcher's settings are invalid:\n  - " + "\n  - ".join(problems))
