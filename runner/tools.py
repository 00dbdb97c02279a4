"""Maintenance commands.

python -m runner.tools reap [--tracking-uri URI]   # stale RUNNING runs -> KILLED
python -m runner.tools replay FILE                 # send logs a server missed
python -m runner.tools collect SWEEP_DIR           # state and results of a sweep's jobs
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
from pathlib import Path

from runner.config import REPO_ROOT
from runner.tracking import reap_stale_runs, replay_pending

DEFAULT_URI = f"sqlite:///{REPO_ROOT / 'outputs' / 'mlflow.db'}"


def main(argv: list[str] | None = None) -> int:
    """Runs a maintenance command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m runner.tools", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    reap = commands.add_parser(
        "reap", help="mark RUNNING runs of processes on this host that are gone as KILLED"
    )
    reap.add_argument("--tracking-uri", default=DEFAULT_URI, help=f"default: {DEFAULT_URI}")
    replay = commands.add_parser(
        "replay", help="send the logs saved in a run dir's mlflow_pending.jsonl to the server"
    )
    replay.add_argument("file", type=Path)
    collect = commands.add_parser(
        "collect",
        help="state and results of the jobs of a sweep dir (e.g. one submitted "
        "with hydra/launcher=slurm_submit)",
    )
    collect.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "collect":
        status = print_sweep(args.sweep_dir)
        if any(job["state"] not in ("FINISHED", "FAILED", "UNKNOWN")
               for job in sweep_jobs(args.sweep_dir)):  # fmt: skip
            print("jobs still queued or running: collect again when they are done")
            return status
        from runner.sweep import finish_submitted_sweep

        return max(status, finish_submitted_sweep(args.sweep_dir))
    if args.command == "replay":
        print(f"{replay_pending(args.file)} logging operation(s) sent")
        return 0

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=args.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    reaped = reap_stale_runs(client, experiments) if experiments else []
    print(f"{len(reaped)} stale run(s) marked KILLED")
    return 0


def sweep_jobs(sweep_dir: Path) -> list[dict]:
    """The jobs of a sweep dir: their number, run dir, SLURM job id, state and results.

    The state is SLURM's while the job is known to the scheduler (PENDING, RUNNING, ...),
    else FINISHED when the run wrote metrics.json, FAILED when it wrote traceback.txt,
    and UNKNOWN otherwise (e.g. a job cancelled before it started).

    Raises:
        FileNotFoundError: `sweep_dir` is not a directory.
    """
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep_dir} does not exist")
    listing = sweep_dir / "slurm_jobs.json"
    if listing.exists():
        jobs = json.loads(listing.read_text())
    else:
        numbered = sorted(
            (p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        jobs = [{"num": int(p.name), "run_dir": str(p), "job_id": None} for p in numbered]
    for job in jobs:
        run_dir = Path(job["run_dir"])
        queued = _squeue_state(job.get("job_id"))
        metrics = run_dir / "metrics.json"
        if queued:
            job["state"] = queued
        elif metrics.exists():
            job["state"] = "FINISHED"
        elif (run_dir / "traceback.txt").exists():
            job["state"] = "FAILED"
        else:
            job["state"] = "UNKNOWN"
        job["results"] = json.loads(metrics.read_text()) if metrics.exists() else None
    return jobs


def _squeue_state(job_id: str | None) -> str:
    """SLURM's state of a job it still knows ("" when it does not, or without SLURM)."""
    if not job_id or shutil.which("squeue") is None:
        return ""
    done = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    return (
        done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    )


def print_sweep(sweep_dir: Path) -> int:
    """Prints one line per job of the sweep; returns 1 when a job failed, else 0."""
    jobs = sweep_jobs(sweep_dir)
    for job in jobs:
        results = job["results"] or {}
        shown = "  ".join(f"{k}={v:.4f}" for k, v in results.items() if k.startswith("test/acc"))
        best = results.get("best_value")
        print(f"#{job['num']} job {job.get('job_id') or '-'} {job['state']:<10} "
              f"{job.get('overrides', '')}  {shown}"
              + (f"  best={best:.4f}" if best is not None else "")
              + f"  {job['run_dir']}")  # fmt: skip
    return int(any(job["state"] == "FAILED" for job in jobs))


if __name__ == "__main__":
    raise SystemExit(main())
