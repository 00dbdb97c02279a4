"""The state and results of a sweep's jobs, read from the sweep dir and SLURM's queue.

For sweeps submitted with `hydra/launcher=slurm_submit`: `python -m runner.sweeps collect
<sweep dir>` lists every job and, once all are done, summarises them into the parent run.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from runner.config.callback import JOB_ERROR_FILE
from runner.config.modes import MODE_OUTPUTS
from runner.sweeps.manifest import (
    ABANDONED,
    JOB_LOCK_FILE,
    REPLACED,
    SweepFileError,
    entry_of,
    job_run_dir,
    read_manifest,
    read_sweep_file,
    setting_overrides,
    submitted_jobs,
)
from runner.tracking.store import is_locked

# Manifest statuses that end a job (RUNNING without a lock is a killed job: UNKNOWN).
FINAL_STATES = ("FINISHED", "FAILED", "SKIPPED", "INTERRUPTED", ABANDONED, REPLACED)
# A job of another mode than train records no state (no manifest entry, no lock): the
# file it leaves in its run dir (MODE_OUTPUTS) is all there is.
# The states of such a job without SLURM's: its file there, written as it goes, or none.
WROTE_OUTPUT, NO_OUTPUT = "HAS OUTPUT", "NO OUTPUT"


def sweep_jobs(sweep_dir: Path, mode: str = "train") -> list[dict]:
    """The jobs of a sweep dir: their number, run dir, SLURM job id, state and results.

    The state is SLURM's while the job is known to the scheduler (PENDING, RUNNING, ...),
    else RUNNING while a process on this machine holds the job's lock, FINISHED when the
    run wrote metrics.json, FAILED when it wrote traceback.txt, else what the sweep's
    manifest recorded for it when that is final (a job that failed before its run
    started, one fail_fast skipped), and UNKNOWN otherwise (e.g. a job cancelled before
    it started). A damaged metrics.json leaves the job FINISHED without results, and
    its `unreadable` says what is wrong.

    A sweep of another `mode` than train records nothing of its jobs: SLURM's state, else
    FAILED with a traceback.txt, else FINISHED, HAS OUTPUT or NO OUTPUT by the file the
    mode writes (`MODE_OUTPUTS`).

    Raises:
        FileNotFoundError: `sweep_dir` is not a directory.
        SlurmUnavailableError: SLURM did not answer `squeue`.
        SweepFileError: manifest.json or slurm_jobs.json is cut short or not what the
            runner writes.
    """
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep_dir} does not exist")
    sweep_dir = sweep_dir.resolve()  # the manifest's run dirs are absolute
    manifest = read_manifest(sweep_dir)
    jobs = [dict(record) for record in submitted_jobs(sweep_dir)]
    if jobs:  # a job's entry holds its run dir, moved with the sweep dir (job_run_dir)
        entries = [entry_of(job, manifest) or {} for job in jobs]
    else:
        numbered = sorted(
            (p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        jobs = [{"num": int(p.name), "run_dir": str(p), "job_id": None} for p in numbered]
        recorded = [entry for entry in manifest.values() if entry.get("run_dir")]
        by_dir = {job_run_dir(sweep_dir, entry).resolve(): entry for entry in recorded}
        # A job fail_fast skipped has an entry without a run dir: found by its number.
        by_num = {entry["num"]: entry for entry in manifest.values() if "num" in entry}
        entries = [by_dir.get(Path(job["run_dir"])) or by_num.get(job["num"]) or {} for job in jobs]
    for job, entry in zip(jobs, entries, strict=True):
        # A job that never started has no run dir: shown where the default subdir puts it.
        started = entry.get("run_dir")
        run_dir = job_run_dir(sweep_dir, entry) if started else sweep_dir / str(job["num"])
        job["run_dir"] = str(run_dir)
        if not job.get("overrides") and entry.get("overrides"):
            job["overrides"] = " ".join(setting_overrides(entry["overrides"]))
        queued = _squeue_state(job.get("job_id"))
        metrics = run_dir / "metrics.json"
        if queued:
            job["state"] = queued
        elif mode in MODE_OUTPUTS:
            job["state"] = _output_state(run_dir, mode)
        elif is_locked(run_dir / JOB_LOCK_FILE):
            job["state"] = "RUNNING"
        elif metrics.exists():
            job["state"] = "FINISHED"
        elif (run_dir / "traceback.txt").exists():
            job["state"] = "FAILED"
        elif entry.get("status") in FINAL_STATES:
            job["state"] = entry["status"]
        else:
            job["state"] = "UNKNOWN"
        job["results"] = None
        if metrics.exists():
            try:
                job["results"] = read_sweep_file(metrics, "Restore it from a copy of the run dir")
            except SweepFileError as err:  # one job's loss: the others are still listed
                job["unreadable"] = str(err)
    return jobs


def _output_state(run_dir: Path, mode: str) -> str:
    """The state of a job of another mode than train, by what its run dir holds."""
    output, whole = MODE_OUTPUTS[mode]
    if (run_dir / "traceback.txt").exists() or (run_dir / JOB_ERROR_FILE).exists():
        return "FAILED"  # eval writes a traceback as train does; any mode its error
    if not (run_dir / output).exists():
        return NO_OUTPUT
    return "FINISHED" if whole else WROTE_OUTPUT


def output_legend(mode: str) -> str:
    """What the states `sweep_jobs` gives the jobs of a sweep of `mode` (not train) mean."""
    output, whole = MODE_OUTPUTS[mode]
    wrote = "FINISHED" if whole else WROTE_OUTPUT
    when = "written as it ends" if whole else "written as it goes (a stopped job leaves part)"
    elsewhere = " (with predict.output set: not there, but where it points)" * (mode == "predict")
    return (
        f"a sweep of mode={mode}: its jobs keep their results in their own dirs and record "
        "no state, and there is no sweep summary (nor manifest) to finish. "
        f"{wrote} means the job's dir holds its {output}, {when}; {NO_OUTPUT} that it holds "
        f"none{elsewhere}: running, failed or stopped (its run.log, if any, says which)"
    )


class SlurmUnavailableError(RuntimeError):
    """`squeue` did not answer: the jobs' states cannot be known."""


def _squeue_state(job_id: str | None) -> str:
    """SLURM's state of a job it still knows ("" when it does not, or without SLURM).

    Raises:
        SlurmUnavailableError: `squeue` failed otherwise than on a job id SLURM has
            forgotten (its controller is down): a queued job would be taken for one that
            ended, and the sweep summarised without it.
    """
    if not job_id or shutil.which("squeue") is None:
        return ""
    command = ["squeue", "-h", "-j", str(job_id), "-o", "%T"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        done = subprocess.CompletedProcess(command, 1, "", "no answer in 60 s")
    if done.returncode != 0 and "invalid job id" not in done.stderr.lower():
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        raise SlurmUnavailableError(
            f"squeue could not be asked about job {job_id} ({reason}): the jobs' states are "
            "unknown, so nothing was summarised. Collect again once SLURM answers"
        )
    return (
        done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    )


def print_sweep(jobs: list[dict[str, Any]]) -> int:
    """Prints one line per job (`sweep_jobs`' rows); returns 1 when a job failed, else 0."""
    for job in jobs:
        results = job["results"] or {}
        shown = "  ".join(f"{k}={v:.4f}" for k, v in results.items() if k.startswith("test/acc"))
        best = results.get("best_value")
        print(
            f"#{job['num']} job {job.get('job_id') or '-'} {job['state']:<10} "
            f"{job.get('overrides', '')}  {shown}"
            + (f"  best={best:.4f}" if best is not None else "")
            + f"  {job['run_dir']}"
            + (f"\n    {job['unreadable']}" if job.get("unreadable") else "")
        )
    return int(any(job["state"] == "FAILED" for job in jobs))
