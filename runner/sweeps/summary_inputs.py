"""What a sweep's summary reads, every file before the summary writes anything.

Its jobs (manifest entries, test metrics), sweep.json and the Optuna files. A finished
job whose metrics.json is gone or damaged takes its test metrics from the summary.csv an
earlier summary wrote, when that holds its row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.config.redaction import redacted_overrides
from runner.sweeps.job import unescape
from runner.sweeps.manifest import (
    SweepFileError,
    entry_of,
    job_key,
    job_run_dir,
    parse_overrides,
    read_manifest,
    read_sweep_file,
    read_sweep_info,
    setting_overrides,
    submitted_jobs,
)
from runner.sweeps.stored_study import read_study_file
from runner.sweeps.summary_parts import read_earlier_test_metrics

# The status of a submitted job that left no manifest entry (cancelled before it started).
NOT_STARTED = "NOT STARTED"
SUMMARY_CSV = "summary.csv"


@dataclass
class SummaryInputs:
    """What a summary reads from the sweep dir: its jobs, sweep.json, the Optuna files."""

    jobs: list[dict[str, Any]]
    info: dict[str, Any]
    study_best: dict[str, Any]
    study: dict[str, Any] | None


def read_inputs(sweep_dir: Path) -> SummaryInputs:
    """Reads the sweep dir's files the summary needs (a job's metrics.json may be damaged).

    Raises:
        SweepFileError: manifest.json, sweep.json, slurm_jobs.json or an Optuna file is
            cut short or not what the runner writes.
    """
    path = sweep_dir / "optuna" / "best_params.json"
    fix = (
        "Restore it from a copy of the sweep dir, or delete it: the Optuna sweeper writes "
        "it again when a launch of the study ends (sweep.resume=<the sweep dir>), and the "
        "summary does without it"
    )
    study_best = read_sweep_file(path, fix) if path.is_file() else {}
    jobs = _read_jobs(sweep_dir)
    return SummaryInputs(jobs, read_sweep_info(sweep_dir), study_best, read_study_file(sweep_dir))


def _read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job of the sweep, by number: its manifest entry, parsed settings and test metrics.

    The jobs a `slurm_submit` launch submitted that never started are among them. A
    finished job whose metrics.json is gone or damaged takes its test metrics from the
    summary.csv an earlier summary wrote, when that has its row: the rewritten summary
    would otherwise lose them.
    """
    jobs = []
    manifest = read_manifest(sweep_dir)
    earlier = {
        (num, job_key(overrides.split())): test
        for num, overrides, test in read_earlier_test_metrics(sweep_dir / SUMMARY_CSV)
    }
    entries = [*manifest.values(), *never_started(sweep_dir, manifest)]
    for entry in sorted(entries, key=lambda e: e.get("num", 0)):
        metrics_file = job_run_dir(sweep_dir, entry) / "metrics.json"
        test, problem = _test_metrics(metrics_file)
        # The summary's files and tags go to the tracking server: no secret in the clear.
        overrides = redacted_overrides(entry.get("overrides", []))
        lost: dict[str, Any] = {}
        # A finished job's run dir that was moved or deleted, or a damaged metrics.json.
        if entry.get("status") == "FINISHED" and problem is not None:
            # summary.csv wrote the overrides joined by spaces: split alike to compare keys.
            kept = earlier.get((str(entry.get("num", "")), job_key(" ".join(overrides).split())))
            test = kept or {}
            lost = {
                "lost_metrics": str(metrics_file),
                "metrics_problem": problem,
                "kept_metrics": bool(kept),
            }
        jobs.append(
            {
                **entry,
                "overrides": overrides,
                "key": job_key(overrides),
                # A resumed sweep's jobs carry sweep.resume=..., no setting of theirs.
                "params": {
                    k: unescape(v) for k, v in parse_overrides(setting_overrides(overrides)).items()
                },
                "test": test,
                **lost,
            }
        )
    return jobs


def _test_metrics(path: Path) -> tuple[dict[str, Any], str | None]:
    """A job's test metrics from its metrics.json, and what is wrong with the file if anything.

    A damaged metrics.json is one job's loss, not the summary's: the job is summarised
    without it, and its line says why.
    """
    if not path.exists():
        return {}, "gone"
    fix = "Restore it from a copy of the run dir"
    try:
        content = read_sweep_file(path, fix)
    except SweepFileError as err:
        return {}, str(err)
    return {k: v for k, v in content.items() if k.startswith("test/")}, None


def never_started(sweep_dir: Path, manifest: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs `hydra/launcher=slurm_submit` submitted that have no manifest entry.

    A job cancelled before it started (or still queued) writes none; without these the
    summary counted only the jobs that ran, and a sweep of 3 seeds reported 2 as done.
    """
    return [
        {
            "num": record["num"],
            "overrides": str(record.get("overrides", "")).split(),
            "status": NOT_STARTED,
        }
        for record in submitted_jobs(sweep_dir)
        if entry_of(record, manifest) is None
    ]
