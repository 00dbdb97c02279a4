"""The launching process's side of a sweep: the MLflow parent run, summary and exit status.

`SweepCallback` (a Hydra callback, conf/train.yaml) creates the parent run before the
first job and summarises the sweep after the last one; `finish_submitted_sweep` does the
summary later for sweeps whose jobs were submitted without waiting.
"""

from __future__ import annotations

import atexit
import logging
import signal
import time
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.config.callback import JOB_ERROR_FILE
from runner.config.modes import job_mode
from runner.config.redaction import public_uri, redacted_overrides
from runner.config.sweep_values import typed_overrides
from runner.sweeps.advice import failed_listing, failed_sweep_advice
from runner.sweeps.audit import audit_if_asked, partial_folds_warning
from runner.sweeps.manifest import (
    MANIFEST_FILE,
    PARENT_RUN,
    STOP_FILE,
    SUMMARISED,
    SWEEP_FILE,
    SWEEP_LOCK_FILE,
    SweepFileError,
    read_launch_config,
    read_sweep_info,
    reopen_parent_run,
    submits_only,
    write_json,
)
from runner.sweeps.optuna_study import is_optuna_sweep
from runner.sweeps.start_checks import check_sweep, refuse_changed_constants
from runner.sweeps.stores import cluster_store_warning
from runner.sweeps.summary import Summary, log_summary, summarize
from runner.tracking.protocol import Tracker, end_run
from runner.tracking.store import hold_lock

log = logging.getLogger(__name__)

_LAUNCH_FAILED: list[bool] = []  # the launcher could not start the jobs (launch_failed)
_SIGNALLED: list[int] = []  # the signal that is ending this process's sweep, once one has


def sweep_arguments(config: DictConfig) -> list[str]:
    """The sweep's command line as sweep.json and the parent run's `overrides` tag keep it.

    As typed (`${oc.env:...}`, not its value), as a job's own record keeps it: reading
    `hydra.overrides.task` item by item resolved each interpolation. Secrets redacted.
    """
    return redacted_overrides(typed_overrides(config))


class SweepCallback(Callback):
    """Hydra callback: the sweep's MLflow parent run, summary and exit status."""

    def __init__(self) -> None:
        self.tracker = None
        self.sweep_dir: Path | None = None
        self.sweep_lock: IO[str] | None = None  # open while this process runs the sweep
        self.sigterm_before: Any = None  # SIGTERM's handler before the sweep began
        # The sweep dir of a sweep of another mode than train, whose failed jobs are listed.
        self.untracked_sweep: Path | None = None

    def __getstate__(self) -> dict[str, Any]:
        """The callback without its lock: submitit pickles it into every job it sends."""
        return {**self.__dict__, "sweep_lock": None, "sigterm_before": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Creates (or, for `sweep.resume`, reopens) the parent run and writes sweep.json.

        The sweep is checked first (every grid job's config; an Optuna sweep's settings):
        a problem stops the command with one message, before any run or job exists.
        """
        check_sweep(config, kwargs.get("config_name"))
        mode = job_mode(config)
        if mode != "train":  # eval, predict, preview, throughput: their jobs track no runs
            log.info("a sweep of mode=%s: no parent MLflow run and no sweep summary", mode)
            self.untracked_sweep = Path(config.hydra.sweep.dir).resolve()
            return
        for warning in (cluster_store_warning(config), partial_folds_warning(config)):
            if warning:
                log.warning("%s", warning)
        self.sweep_dir = Path(config.hydra.sweep.dir).resolve()
        resume = OmegaConf.select(config, "sweep.resume", default=None)
        self._claim_sweep_dir(resume)
        info = _sweep_info(self.sweep_dir)
        arguments = sweep_arguments(config)
        if resume and not is_optuna_sweep(config):  # a study warns, and draws new trials
            refuse_changed_constants(resume, info.get("arguments"), arguments)
        (self.sweep_dir / STOP_FILE).unlink(missing_ok=True)
        tracker, name = self._start_parent_run(config, info, arguments, resume)
        self.tracker = tracker
        atexit.register(self._end_at_exit)
        self._catch_sigterm()
        write_json(
            self.sweep_dir / SWEEP_FILE,
            {
                **info,
                "arguments": arguments,
                "parent_run_id": tracker.run_id,
                "tracking_uri": getattr(tracker, "tracking_uri", None),
                "experiment_name": name,
                SUMMARISED: None,  # this launch has not ended yet
            },
        )
        log.info("sweep %s: parent MLflow run %s", self.sweep_dir, tracker.run_id)

    def _claim_sweep_dir(self, resume: Any) -> None:
        """Makes the sweep dir (an earlier sweep's, for `sweep.resume`) and takes its lock."""
        if resume and not (self.sweep_dir / MANIFEST_FILE).exists():
            raise SystemExit(
                f"Error: sweep.resume={resume!r}: {self.sweep_dir / MANIFEST_FILE} does not "
                "exist. Pass the directory of an earlier sweep (it holds manifest.json), or "
                "leave sweep.resume out to start a new sweep."
            )
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.sweep_lock = hold_lock(self.sweep_dir / SWEEP_LOCK_FILE)
        if self.sweep_lock is None:
            raise SystemExit(
                f"Error: the sweep dir {self.sweep_dir} is in use: another launch of this "
                "sweep is still running. Wait for it to end (or stop it), then run this "
                f"command again (with sweep.resume={self.sweep_dir} to continue that sweep)."
            )

    def _start_parent_run(
        self, config: DictConfig, info: dict[str, Any], arguments: list[str], resume: Any
    ) -> tuple[Tracker, str]:
        """Starts the parent run (reopens sweep.json's); returns its tracker and experiment.

        Raises:
            SystemExit: The store refused the run; for a resumed sweep whose parent run is
                in another store, naming that store.
        """
        from hydra.utils import instantiate

        tracker = instantiate(config.logger)
        name = config.logger.get("experiment_name") or config.data.name
        try:
            tracker.connect(experiment_name=name)
            tracker.start(
                run_name=self.sweep_dir.name,
                tags={
                    "sweep_dir": str(self.sweep_dir),
                    "overrides": " ".join(arguments),
                    "sweep.role": "parent",
                },
                resume_run_id=info.get("parent_run_id"),
                local_dir=self.sweep_dir,
            )
        except Exception as err:
            logged_to, now = info.get("tracking_uri"), getattr(tracker, "tracking_uri", None)
            if info.get("parent_run_id") and logged_to and logged_to != now:
                # The run-dir wording of the error ("start anew with trainer.resume=never")
                # does not fit a sweep: name the store its parent run is in.
                raise SystemExit(
                    f"Error: sweep.resume={resume}: its parent MLflow run "
                    f"{info['parent_run_id']} is in {public_uri(logged_to)}, and this command "
                    f"logs to {public_uri(str(now))}, which cannot reopen it. Pass "
                    f"logger.tracking_uri={public_uri(logged_to)} to continue it there, or "
                    "leave sweep.resume out to start a new sweep"
                ) from err
            raise SystemExit(f"Error: cannot start the sweep's MLflow run: {err}") from err
        return tracker, name

    def _catch_sigterm(self) -> None:
        """Makes SIGTERM between jobs end the sweep as Ctrl-C does (`_end_the_sweep`)."""
        # A job's training has a SIGTERM handler of its own; between jobs nothing caught
        # it: the launcher died at once, its Optuna trials and parent run left RUNNING.
        _SIGNALLED.clear()  # an earlier sweep's, in this process
        _LAUNCH_FAILED.clear()
        self.sigterm_before = signal.signal(signal.SIGTERM, self._end_the_sweep)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarises the jobs, logs the summary to the parent run, sets the exit status."""
        if self.sweep_dir is None:  # not a training sweep: nothing was tracked
            if self.untracked_sweep is not None and not submits_only(config):
                _refuse_failed_untracked_jobs(self.untracked_sweep, job_mode(config))
            return
        if self.sigterm_before is not None:
            signal.signal(signal.SIGTERM, self.sigterm_before)
            self.sigterm_before = None
        if submits_only(config):  # hydra/launcher=slurm_submit: the jobs run on
            log.info(
                "jobs submitted; when they are done, `python -m runner.sweeps collect %s` "
                "summarises them into the parent run",
                self.sweep_dir,
            )
            if self.tracker is not None:
                self.tracker.set_tags({"summary": "pending: python -m runner.sweeps collect"})
            if not self._finish_if_open("FINISHED"):
                raise SystemExit(130)
            return
        summary = _summarize(config, self.sweep_dir)
        audit_problem = _log_and_audit(config, self.sweep_dir, summary, self.tracker)
        ended = {**read_sweep_info(self.sweep_dir), SUMMARISED: time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.sweep_dir / SWEEP_FILE, ended)  # for `collect`
        delivered = self._finish_if_open("FAILED" if summary.failed else "FINISHED")
        if audit_problem and not summary.failed:
            raise SystemExit(f"Error: {audit_problem}")
        if summary.failed:
            listing = failed_listing(summary.failed)
            advice = failed_sweep_advice(config, self.sweep_dir, summary.failed)
            raise SystemExit(
                f"Error: {len(summary.failed)} of {len(summary.jobs)} sweep job(s) did not "
                f"finish:\n{listing}\n{advice}"
                + (f"\nAnd {audit_problem}" if audit_problem else "")
            )
        if not delivered:  # the sweep is done and summarised; its files are written
            raise SystemExit(130)

    def _end_the_sweep(self, signum: int, frame: Any) -> None:
        """SIGTERM between jobs: the sweep ends as after Ctrl-C (trials FAIL, run KILLED)."""
        _SIGNALLED.append(signum)
        log.warning(
            "%s: the sweep stops; continue it with sweep.resume=%s",
            signal.Signals(signum).name,
            self.sweep_dir,
        )
        raise SystemExit(128 + signum)

    def _end_at_exit(self) -> None:
        """The process ends before the sweep did: the launcher failed, or it was stopped."""
        self._finish_if_open("FAILED" if _LAUNCH_FAILED else "KILLED")

    def _finish_if_open(self, status: str) -> bool:
        """Ends the parent run, then lets another launch (or `collect`) have the sweep.

        Returns:
            False when Ctrl-C stopped the parent run's wait for the store (a finished
            sweep then exits 130; a failed or stopped one ends as it would have).
        """
        tracker, self.tracker = self.tracker, None
        try:
            return tracker is None or end_run(tracker, status, self.sweep_dir, PARENT_RUN)
        finally:
            lock, self.sweep_lock = self.sweep_lock, None
            if lock is not None:
                lock.close()


def _sweep_info(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's sweep.json (`read_sweep_info`); a damaged one stops the command."""
    try:
        return read_sweep_info(sweep_dir)
    except SweepFileError as err:  # a resumed sweep's damaged record: one line
        raise SystemExit(f"Error: {err}") from err


def launch_failed() -> None:
    """Notes that the launcher could not start the sweep's jobs (sbatch refused them).

    The launcher then ends the process: the sweep's parent run ends FAILED, not KILLED
    as after Ctrl-C.
    """
    _LAUNCH_FAILED.append(True)


def sweep_signal() -> int | None:
    """The signal that is ending this process's sweep, or None.

    Hydra wraps what a job's config composition raises, a signal's exit included, in a
    ConfigCompositionException: the sweeper asks this to tell the two apart.
    """
    return _SIGNALLED[-1] if _SIGNALLED else None


def finish_submitted_sweep(sweep_dir: Path) -> int:
    """Summarises a sweep whose jobs were submitted without waiting, into its parent run.

    For `python -m runner.sweeps collect` once the jobs are done: reads the sweep's config and
    sweep.json, reopens the parent MLflow run, logs the summary and ends it.

    Returns:
        1 when a job did not finish or the audit could not run; else 130 when Ctrl-C
        stopped the wait for the store to take the summary (it is saved to send later),
        else 0.

    Raises:
        SweepFileError: A file the summary reads is cut short or not what the runner
            writes; nothing was summarised, and the parent run was not reopened.
    """
    sweep_dir = Path(sweep_dir).resolve()  # the paths of logs saved to send later
    config = read_launch_config(sweep_dir)
    # Before the parent run is reopened: a damaged file stops it with that run untouched.
    summary = _summarize(config, sweep_dir)
    try:
        tracker = reopen_parent_run(sweep_dir)
    except Exception as err:  # the store moved or the server is down: the files stand
        log.warning(
            "the sweep's parent run cannot be reopened (%s: %s): the summary is written to "
            "the sweep dir only",
            type(err).__name__,
            err,
        )
        tracker = None
    audit_problem = _log_and_audit(config, sweep_dir, summary, tracker)
    status = "FAILED" if summary.failed else "FINISHED"
    delivered = tracker is None or end_run(tracker, status, sweep_dir, PARENT_RUN)
    if audit_problem:
        print(f"Error: {audit_problem}")
    if summary.failed or audit_problem:
        return 1
    return 0 if delivered else 130


def _summarize(config: DictConfig, sweep_dir: Path) -> Summary:
    """The sweep's summary (summary.md, summary.csv and the plot written), by its monitor."""
    return summarize(sweep_dir, config.trainer.monitor, config.trainer.monitor_mode == "max")


def _log_and_audit(
    config: DictConfig, sweep_dir: Path, summary: Summary, tracker: Tracker | None
) -> str | None:
    """Logs the summary to the parent run and audits the jobs; the audit's problem, if any.

    The audit runs only under experiment=audit; what ends the parent run is the caller's.
    """
    log_summary(summary, tracker)
    if summary.failed and len(summary.failed) == len(summary.jobs):
        if OmegaConf.select(config, "audit.enabled", default=False) is True:
            log.warning("audit skipped: no fold job finished (their errors follow)")
        return None
    return audit_if_asked(config, sweep_dir, tracker)


def _refuse_failed_untracked_jobs(sweep_dir: Path, mode: str) -> None:
    """Ends a sweep of eval, predict, preview or throughput with status 1 when a job failed.

    Its failed jobs left their error in their run dir (runner.cli): each is listed, as a
    training sweep lists its failed jobs.
    """
    failed = sorted(  # by job number: 2 before 10
        sweep_dir.glob(f"*/{JOB_ERROR_FILE}"), key=lambda p: (len(p.parent.name), p.parent.name)
    )
    if not failed:
        return
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()]
    listing = "\n".join(
        f"  {path.parent}: {path.read_text(encoding='utf-8').strip().splitlines()[0]}"
        for path in failed
    )
    raise SystemExit(
        f"Error: {len(failed)} of {len(jobs)} job(s) of this mode={mode} sweep failed (the "
        f"others ran):\n{listing}"
    )
