"""Commands on a sweep dir: `collect` (state and results of its jobs), `summary`, `audit`.

python -m runner.sweeps collect SWEEP_DIR
python -m runner.sweeps summary SWEEP_DIR [METRIC] [max|min]   (METRIC: the sweep's monitor)
python -m runner.sweeps audit SWEEP_DIR [--thumbnails N]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from omegaconf import OmegaConf

from runner.config.choices import MONITOR_MODES
from runner.config.modes import MODE_OUTPUTS
from runner.config.resolvers import monitor_mode_for, register_resolvers
from runner.sweeps.audit import NUM_THUMBNAILS
from runner.sweeps.collect import (
    FINAL_STATES,
    SlurmUnavailableError,
    output_legend,
    print_sweep,
    sweep_jobs,
)
from runner.sweeps.manifest import (
    LAUNCH_CONFIG_FILE,
    MANIFEST_FILE,
    SUBMITTED_FILE,
    SUMMARISED,
    SWEEP_LOCK_FILE,
    SweepFileError,
    read_launch_config,
    read_sweep_info,
)
from runner.tracking.store import is_locked


def _count(text: str) -> int:
    """An integer >= 0, for argparse (which names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return value


def _is_sweep_dir(sweep_dir: Path, marker: str) -> bool:
    """Whether `sweep_dir` holds `marker` (a file every sweep dir has); says so when not."""
    if (sweep_dir / marker).is_file():
        return True
    if not sweep_dir.exists():
        print(
            f"Error: {sweep_dir} does not exist: pass the sweep dir (hydra.sweep.dir) as "
            "its launch printed it"
        )
    elif not sweep_dir.is_dir():
        print(f"Error: {sweep_dir} is a file, not a sweep dir: pass its folder (hydra.sweep.dir)")
    elif marker == MANIFEST_FILE and (mode := _sweep_mode(sweep_dir)) not in (None, "train"):
        # Such a sweep's jobs record nothing in the sweep dir: there is nothing to summarise.
        print(
            f"Error: {sweep_dir} is the sweep dir of a sweep of mode={mode}, which has no "
            "summary (only a sweep of mode=train records its jobs in a manifest.json to "
            f"summarise): each job's results are in its own dir. `python -m runner.sweeps "
            f"collect {sweep_dir}` lists its jobs"
        )
    else:
        print(
            f"Error: {sweep_dir} is not a sweep dir (it has no {marker}): pass the sweep dir "
            "itself (hydra.sweep.dir)"
        )
    return False


def _sweep_mode(sweep_dir: Path) -> str | None:
    """The mode of the sweep launched in `sweep_dir` (its multirun.yaml), or None without one."""
    from runner.config.modes import job_mode

    launched = read_launch_config(sweep_dir)
    return job_mode(launched) if launched is not None else None


class SummaryArgumentError(ValueError):
    """A summary was asked for a metric the sweep's jobs did not record."""


def sweep_monitor(sweep_dir: Path, monitor: str | None, mode: str | None) -> tuple[str, str]:
    """The metric and mode a summary ranks the jobs by.

    The sweep's own (`trainer.monitor` and `trainer.monitor_mode` in its multirun.yaml),
    else the one given, else val/acc; a metric without a mode goes the way it improves.

    Raises:
        SummaryArgumentError: Another metric than the sweep's monitor was given: each
            job recorded only its best monitored value, so the jobs cannot be ranked by it.
    """
    register_resolvers()  # multirun.yaml's monitor_mode is the runner's interpolation
    config = read_launch_config(sweep_dir) or OmegaConf.create()
    own = OmegaConf.select(config, "trainer.monitor", default=None)
    if monitor and own and monitor != own:
        raise SummaryArgumentError(
            f"the jobs of {sweep_dir} recorded their best {own} (the sweep's trainer.monitor), "
            f"not {monitor}: the summary ranks by {own}. Leave the metric out, or compare "
            f"{monitor} across the child runs in MLflow"
        )
    monitor = monitor or own or "val/acc"
    own_mode = OmegaConf.select(config, "trainer.monitor_mode") if monitor == own else None
    if mode is not None and own_mode is not None and mode != own_mode:
        raise SummaryArgumentError(
            f"{monitor} was {own_mode}imised by the sweep of {sweep_dir}: ranking its jobs "
            f"the other way ({mode}) would call the worst the best. Leave the mode out"
        )
    return monitor, mode or own_mode or monitor_mode_for(monitor)


def main(argv: list[str] | None = None) -> int:
    """Runs a command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m runner.sweeps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the docstring's command lines
    )
    commands = parser.add_subparsers(dest="command", required=True)
    collect = commands.add_parser(
        "collect",
        help="state and results of the jobs of a sweep dir (e.g. one submitted with "
        "hydra/launcher=slurm_submit); summarises them into the parent run once all are done",
    )
    collect.add_argument("sweep_dir", type=Path)
    summary = commands.add_parser("summary", help="rebuild summary.md and summary.csv")
    summary.add_argument("sweep_dir", type=Path)
    summary.add_argument("monitor", nargs="?", default=None, help="default: the sweep's own")
    summary.add_argument("mode", nargs="?", default=None, choices=MONITOR_MODES)
    audit = commands.add_parser(
        "audit",
        help="redo the audit of a k-fold sweep (experiment=audit) from its fold jobs' "
        "out_of_fold.npz files: <sweep dir>/audit/, logged to the parent run",
    )
    audit.add_argument("sweep_dir", type=Path)
    audit.add_argument(
        "--thumbnails",
        type=_count,
        default=None,
        help="suspects in label_issues.png (>= 0; default: the sweep's audit.num_thumbnails, "
        f"else {NUM_THUMBNAILS})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "audit":
        from runner.sweeps.audit import configured_thumbnails, redo_audit
        from runner.sweeps.out_of_fold import AuditError

        try:
            thumbnails = args.thumbnails
            if thumbnails is None:
                thumbnails = configured_thumbnails(args.sweep_dir)
            result, delivered = redo_audit(args.sweep_dir, thumbnails)
        except (AuditError, SweepFileError) as err:
            print(f"Error: {err}")
            return 1
        print((args.sweep_dir / "audit" / "summary.md").read_text(encoding="utf-8"))
        print("files: " + ", ".join(str(p) for p in result.files))
        return 0 if delivered else 130
    try:
        if args.command == "summary":
            return _summary(args.sweep_dir, args.monitor, args.mode)
        return _collect(args.sweep_dir)
    except SweepFileError as err:  # a damaged file of the sweep: named, with its fix
        print(f"Error: {err}")
        return 1


def _summary(sweep_dir: Path, monitor: str | None, mode: str | None) -> int:
    """`summary`: rewrites summary.md and summary.csv and prints the summary."""
    from runner.sweeps.summary import summarize

    if not _is_sweep_dir(sweep_dir, MANIFEST_FILE):
        return 1
    try:
        monitor, mode = sweep_monitor(sweep_dir, monitor, mode)
    except SummaryArgumentError as err:
        print(f"Error: {err}")
        return 1
    print(summarize(sweep_dir, monitor, mode == "max").markdown)
    return 0


def _collect(sweep_dir: Path) -> int:
    """`collect`: lists the jobs, and summarises a finished sweep into its parent run."""
    if not _is_sweep_dir(sweep_dir, LAUNCH_CONFIG_FILE):
        return 1
    from runner.config.modes import job_mode

    launched = read_launch_config(sweep_dir)
    mode = job_mode(launched)
    try:
        jobs = sweep_jobs(sweep_dir, mode)  # one squeue per job: asked once
    except SlurmUnavailableError as err:
        print(f"Error: {err}")
        return 1
    status = print_sweep(jobs)
    if mode in MODE_OUTPUTS:  # its jobs recorded nothing: what their dirs hold is all
        print(output_legend(mode))
        return status
    if is_locked(sweep_dir / SWEEP_LOCK_FILE):
        print(
            "the sweep is still running in the process that launched it, which summarises "
            "it when its jobs are done"
        )
        return status
    if any(job["state"] not in (*FINAL_STATES, "UNKNOWN") for job in jobs):
        print("jobs still queued or running: collect again when they are done")
        return status
    from runner.sweeps.advice import resume_advice
    from runner.sweeps.callback import finish_submitted_sweep
    from runner.sweeps.manifest import submits_only

    if not (sweep_dir / SUBMITTED_FILE).exists():  # its launcher waited for its jobs
        if submits_only(launched):
            print(
                f"Error: {sweep_dir} was launched with hydra/launcher=slurm_submit and no "
                f"job was submitted (it has no {SUBMITTED_FILE}): the launch failed, with its "
                "error on its console. Fix it and launch the sweep again"
            )
            return 1
        summary, manifest = sweep_dir / "summary.md", sweep_dir / MANIFEST_FILE
        info = read_sweep_info(sweep_dir)
        if SUMMARISED in info:  # `summary` rewrites summary.md: the launcher's own record
            ended = info[SUMMARISED] is not None
        else:  # a sweep dir from before that record: summarised after the last job?
            ended = summary.is_file() and (
                not manifest.is_file() or summary.stat().st_mtime >= manifest.stat().st_mtime
            )
        if ended:  # ... to the end: it summarised them after the last one
            print(f"this sweep's launcher ran it to the end and summarised it: {summary}")
            return status
        # ... and was stopped before the end: jobs it had not started are in no listing.
        print(
            "this sweep's launcher waited for its jobs (not hydra/launcher=slurm_submit) and "
            "was stopped before it summarised them, so some may not have run. "
            f"{resume_advice(launched, sweep_dir)}, added to the command that launched "
            f"it; `python -m runner.sweeps summary {sweep_dir}` shows its jobs so far"
        )
        return 1

    summarised = finish_submitted_sweep(sweep_dir)
    return status or summarised  # a job the listing found unfinished comes first


if __name__ == "__main__":
    raise SystemExit(main())
