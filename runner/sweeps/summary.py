"""The end-of-sweep report: every job, seed and fold aggregates, the best job and a plot.

Reads only the sweep dir (manifest.json and each job's metrics.json), so it gives the
same answer wherever the jobs ran, and can be rerun on a finished sweep:
`python -m runner.sweeps summary <sweep_dir>`.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.config.redaction import public_uri, redacted_overrides
from runner.sweeps.job import constant_keys, unescape
from runner.sweeps.manifest import (
    ABANDONED,
    REPLACED,
    entry_of,
    job_key,
    job_run_dir,
    parse_overrides,
    read_manifest,
    read_sweep_info,
    setting_overrides,
    submitted_jobs,
    write_json,
)
from runner.sweeps.optuna_study import STUDY_FILE
from runner.tracking.protocol import Tracker

# Test metrics shown in the markdown table (the CSV has all of them).
_SHOWN_TEST_METRICS = ("test/acc", "test/balanced_acc", "test/macro_f1")
# Overrides whose jobs repeat one configuration: the summary gives mean +- std over them.
_REPEATS = {"seed": "seeds", "data.fold": "folds"}
# The status of a submitted job that left no manifest entry (cancelled before it started).
NOT_STARTED = "NOT STARTED"


@dataclass
class Summary:
    """What `summarize` found and wrote.

    Attributes:
        jobs: The manifest entries, each with its key, parsed overrides and test metrics.
        markdown: The report (also in summary.md).
        files: The files written into the sweep dir.
        best_tags: Tags for the parent run: the best job's overrides and run id.
        best_value: The best monitored value among finished jobs, or None; with seeds
            (or folds) swept, the best configuration's mean over them.
        failed: The jobs that did not finish (failed, skipped, interrupted), but not
            the abandoned trials of an Optuna study, which went on without them.
        best_metrics: Metrics for the parent run: `best/<monitor>` (and, with seeds or
            folds swept, `best/<monitor>_std` and the test metrics' mean and std).
    """

    jobs: list[dict[str, Any]]
    markdown: str
    files: list[Path] = field(default_factory=list)
    best_tags: dict[str, str] = field(default_factory=dict)
    best_value: float | None = None
    failed: list[dict[str, Any]] = field(default_factory=list)
    best_metrics: dict[str, float] = field(default_factory=dict)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def summarize(sweep_dir: Path, monitor: str, maximize: bool) -> Summary:
    """Builds the sweep's report and writes summary.md, summary.csv and sweep_plot.png.

    Args:
        sweep_dir: The sweep's directory.
        monitor: The monitored metric (`trainer.monitor`), the value each job returned.
        maximize: Whether larger monitored values are better.

    Returns:
        The summary.
    """
    sweep_dir = Path(sweep_dir)
    jobs = _read_jobs(sweep_dir)
    # The command line's constants tell no job apart, even in a sweep of one job.
    swept = _swept_names(jobs, constant_keys(read_sweep_info(sweep_dir).get("arguments", [])))
    varied = [n for n in swept if n not in _REPEATS]  # what a repeat group is keyed by
    for job in jobs:  # what tells the jobs apart, for people reading the report
        job["label"] = " ".join(
            f"{n}={_short(job['params'][n])}" for n in swept if n in job["params"]
        )
    finished = [j for j in jobs if j.get("status") == "FINISHED" and _finite(j.get("value"))]
    # A pruned job stopped early: its value does not stand for its configuration.
    complete = [j for j in finished if not j.get("pruned")]
    # With seeds (or folds) swept, a configuration is judged by its mean, not its luckiest.
    groups = _repeat_groups(complete, swept)
    # Only the configurations with the most finished repeats are ranked: one whose other
    # seeds failed (often because it diverged) would win on its one lucky run.
    most = max((len(g.members) for g in groups), default=0)
    ranked = [g for g in groups if len(g.members) == most]
    pick = max if maximize else min
    best_group = pick(ranked, key=lambda g: g.mean) if ranked else None
    if best_group is not None:
        best = pick(best_group.members, key=lambda j: j["value"])
    else:
        best = pick(complete, key=lambda j: j["value"]) if complete else None

    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{len(jobs)} job(s), {len(finished)} finished; "
        f"monitored: {monitor} ({'max' if maximize else 'min'})",
        "",
    ]
    shown = [m for m in _SHOWN_TEST_METRICS if any(m in j["test"] for j in jobs)]
    header = ["job", *swept, "status", monitor, *shown, "mlflow run"]
    rows = [
        [
            str(j.get("num", "")),
            *(_short(j["params"].get(n, "")) for n in swept),
            _status(j),
            _fmt(j.get("value")),
            *(_fmt(j["test"].get(m)) for m in shown),
            j.get("mlflow_run_id") or "",
        ]
        for j in jobs
    ]
    lines += _markdown_table(header, rows)
    if groups:
        repeats = [_REPEATS[n] for n in _REPEATS if n in swept]
        lines += ["", f"## Mean +- std over {' and '.join(repeats)}", ""]
        agg_header = [*varied, "+".join(repeats), monitor, *shown]
        lines += _markdown_table(agg_header, [g.row(shown) for g in groups])
        if len(ranked) < len(groups):
            lines += [
                "",
                f"Ranked: the configurations with {most} finished runs; those with fewer "
                "(a failed or pruned repeat) are listed, not ranked.",
            ]
    best_lines, best_tags, best_metrics = _best_report(best_group, best, swept, monitor, shown)
    lines += best_lines
    lines += _earlier_study_best(sweep_dir, jobs, monitor)
    not_done = [j for j in jobs if j.get("status") != "FINISHED"]
    lines += _not_finished_lines(not_done)
    markdown = "\n".join(lines) + "\n"

    files = [sweep_dir / "summary.md", sweep_dir / "summary.csv"]
    files[0].write_text(markdown, encoding="utf-8")
    _write_csv(files[1], jobs, swept, monitor)
    plot = _plot(jobs, varied, monitor, sweep_dir / "sweep_plot.png")
    if plot is not None:
        files.append(plot)
    files += _optuna_files(sweep_dir)
    best_value = best_group.mean if best_group is not None else (best["value"] if best else None)
    failed = [j for j in not_done if j.get("status") not in (ABANDONED, REPLACED)]
    return Summary(jobs, markdown, files, best_tags, best_value, failed, best_metrics)


def _read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job of the sweep, by number: its manifest entry, parsed settings and test metrics.

    The jobs a `slurm_submit` launch submitted that never started are among them.
    """
    jobs = []
    manifest = read_manifest(sweep_dir)
    entries = [*manifest.values(), *never_started(sweep_dir, manifest)]
    for entry in sorted(entries, key=lambda e: e.get("num", 0)):
        metrics_file = job_run_dir(sweep_dir, entry) / "metrics.json"
        test = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        test = {k: v for k, v in test.items() if k.startswith("test/")}
        # The summary's files and tags go to the tracking server: no secret in the clear.
        overrides = redacted_overrides(entry.get("overrides", []))
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
            }
        )
    return jobs


def _best_report(
    best_group: RepeatGroup | None,
    best: dict[str, Any] | None,
    swept: list[str],
    monitor: str,
    shown: list[str],
) -> tuple[list[str], dict[str, str], dict[str, float]]:
    """The report's "Best:" line, and the tags and metrics the parent run gets for it.

    Args:
        best_group: The best configuration when seeds or folds are swept, else None.
        best: The best job (of the best group, when there is one), or None.
        swept: The overrides that differ between jobs.
        monitor: The monitored metric.
        shown: The test metrics the report shows.
    """
    lines: list[str] = []
    best_tags: dict[str, str] = {}
    best_metrics: dict[str, float] = {}
    if best_group is not None:
        members = best_group.members
        described = best_group.label or "the only configuration"
        numbers = ", ".join(str(j.get("num")) for j in members)
        lines += [
            "",
            f"Best: jobs {numbers} ({described}, {len(members)} runs): {monitor} = "
            f"{_mean_std(best_group.values)}",
        ]
        chosen = zip(best_group.names, best_group.config, strict=True)
        best_tags = {f"best.{name}": value for name, value in chosen}
        for key, plural in _REPEATS.items():  # best.seeds, best.folds: what was averaged
            if key in swept:
                best_tags[f"best.{plural}"] = ",".join(
                    str(j["params"].get(key, "")) for j in members
                )
        best_tags["best.run_ids"] = ",".join(j.get("mlflow_run_id") or "" for j in members)
        best_metrics = best_group.metrics(monitor, shown)
    elif best is not None:
        described = best["label"] or "the only job"
        value = _fmt(best["value"])
        lines += ["", f"Best: job {best.get('num')} ({described}): {monitor} = {value}"]
        best_tags = {f"best.{n}": best["params"][n] for n in swept if n in best["params"]}
        best_metrics = {f"best/{monitor}": best["value"]}
    if best is not None:  # the best job itself (of the best group, when there is one)
        best_tags["best.run_id"] = best.get("mlflow_run_id") or ""
        best_tags["best.job"] = str(best.get("num"))
    return lines, best_tags, best_metrics


def _not_finished_lines(not_done: list[dict[str, Any]]) -> list[str]:
    """The report's "Not finished" section: each such job, its status and why."""
    if not not_done:
        return []
    lines = ["", "## Not finished", ""]
    lines += [
        f"- job {j.get('num')} {j.get('status')}: {j['label'] or j['key']}"
        + (f" ({j['error']})" if j.get("error") else "")
        + (
            " (stopped by a signal; the Optuna study went on with new trials)"
            if j.get("status") == ABANDONED
            else " (an earlier launch's; the continued Optuna study drew new trials)"
            if j.get("status") == REPLACED
            else ""
        )
        for j in not_done
    ]
    return lines


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


def _earlier_study_best(sweep_dir: Path, jobs: list[dict[str, Any]], monitor: str) -> list[str]:
    """A line on the Optuna study's best trial when an earlier launch ran it.

    A continued study's sweep summarises its own trials; the study's best (in
    optuna/best_params.json) may be one of another sweep's, which the table cannot show.
    """
    path = sweep_dir / "optuna" / "best_params.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    trial = report.get("best_trial")
    own = {parse_overrides(job["overrides"]).get("optuna.trial") for job in jobs}
    if trial is None or str(trial) in own:
        return []
    return [
        "",
        f"The study's best is trial {trial}, of an earlier sweep: {monitor} = "
        f"{_fmt(report.get('best_value'))} with {report.get('best_params')} "
        "(optuna/best_params.json); the table and the best tags are this sweep's trials.",
    ]


def _optuna_files(sweep_dir: Path) -> list[Path]:
    """The Optuna sweeper's files, to log; study.json as a copy without a storage password.

    The jobs reach their trial through the storage URL in study.json, so the file itself
    keeps the URL whole; the copy logged to the tracking server does not.
    """
    folder = sweep_dir / "optuna"
    if not folder.is_dir():
        return []
    files = sorted(path for path in folder.iterdir() if path.is_file())
    study = folder / STUDY_FILE
    if study.is_file():
        content = json.loads(study.read_text())
        if content.get("storage"):
            content["storage"] = public_uri(str(content["storage"]))
        public = folder / "public" / STUDY_FILE
        public.parent.mkdir(exist_ok=True)
        write_json(public, content)
        files[files.index(study)] = public
    return files


def summarize_and_log(
    sweep_dir: Path, monitor: str, maximize: bool, tracker: Tracker | None = None
) -> Summary:
    """Summarises a sweep dir, prints the summary and logs it to the parent run.

    Args:
        sweep_dir: The sweep's directory.
        monitor: The monitored metric.
        maximize: Whether larger values of it are better.
        tracker: The parent run's open tracker, or None for no logging.

    Returns:
        The summary.
    """
    summary = summarize(sweep_dir, monitor=monitor, maximize=maximize)
    print(summary.markdown)
    if tracker is not None:
        for path in summary.files:
            tracker.log_artifact(path, "summary")
        tracker.set_tags({**summary.best_tags, "summary": "summary/summary.md"})
        if summary.best_metrics:
            tracker.log_metrics(summary.best_metrics, step=0)
    return summary


def _swept_names(jobs: list[dict[str, Any]], constant: set[str]) -> list[str]:
    """Override names whose values differ between jobs.

    For a single job: its names but the command line's `constant` ones (what an Optuna
    trial drew).
    """
    names: dict[str, set[str]] = defaultdict(set)
    all_names = {name for job in jobs for name in job["params"]}
    for job in jobs:
        for name in all_names:
            names[name].add(job["params"].get(name, ""))
    if len(jobs) == 1:
        return sorted(n for n in names if n not in constant)
    return sorted(n for n, values in names.items() if len(values) > 1 and n != "optuna.trial")


def _status(job: dict[str, Any]) -> str:
    return job.get("status", "?") + (" (pruned)" if job.get("pruned") else "")


def _short(value: str) -> str:
    """A long float as 4 significant digits (the CSV keeps every digit)."""
    number = _as_number(value)
    return f"{number:.4g}" if number is not None and len(value) > 8 else value


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if _finite(value) else ("" if value is None else str(value))


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


@dataclass
class RepeatGroup:
    """The complete jobs of one configuration that differ only by `seed` or `data.fold`.

    Attributes:
        names: The swept parameters other than seed and data.fold.
        config: Their values for this group.
        members: The group's jobs.
    """

    names: list[str]
    config: tuple[str, ...]
    members: list[dict[str, Any]]

    @property
    def values(self) -> list[float]:
        """The monitored value of each member."""
        return [m["value"] for m in self.members]

    @property
    def mean(self) -> float:
        """The mean monitored value."""
        return statistics.fmean(self.values)

    @property
    def label(self) -> str:
        """`a=1 b=x`: what tells this configuration apart."""
        return " ".join(f"{n}={_short(v)}" for n, v in zip(self.names, self.config, strict=True))

    def test_values(self, name: str) -> list[float]:
        """The members' values of a test metric (those that have it)."""
        return [m["test"][name] for m in self.members if _finite(m["test"].get(name))]

    def row(self, shown: list[str]) -> list[str]:
        """The group's row of the mean +- std table."""
        cells = [_mean_std(self.values), *(_mean_std(self.test_values(n)) for n in shown)]
        return [*map(_short, self.config), str(len(self.members)), *cells]

    def metrics(self, monitor: str, shown: list[str]) -> dict[str, float]:
        """`best/<metric>` and `best/<metric>_std` for the monitored and test metrics."""
        found = {}
        for name, values in [(monitor, self.values), *((n, self.test_values(n)) for n in shown)]:
            if values:
                found[f"best/{name}"] = statistics.fmean(values)
                found[f"best/{name}_std"] = _std(values)
        return found


def _repeat_groups(jobs: list[dict[str, Any]], swept: list[str]) -> list[RepeatGroup]:
    """The complete jobs grouped by all swept but `seed` and `data.fold` (or none)."""
    if not any(n in swept for n in _REPEATS):
        return []
    names = [n for n in swept if n not in _REPEATS]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        groups[tuple(job["params"].get(n, "") for n in names)].append(job)
    return [RepeatGroup(names, config, members) for config, members in groups.items()]


def _std(values: list[float]) -> float:
    # One run has no spread to measure: NaN, not a perfect agreement of 0.
    return statistics.stdev(values) if len(values) > 1 else math.nan


def _mean_std(values: list[float]) -> str:
    if not values:
        return ""
    return f"{statistics.fmean(values):.4f} +- {_std(values):.4f}"


def _write_csv(path: Path, jobs: list[dict[str, Any]], swept: list[str], monitor: str) -> None:
    test_names = sorted({name for job in jobs for name in job["test"]})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "job",
                *swept,
                "status",
                "pruned",
                monitor,
                *test_names,
                "mlflow_run_id",
                "run_dir",
                "overrides",
                "error",
            ]
        )
        for job in jobs:
            writer.writerow(
                [
                    job.get("num", ""),
                    *(job["params"].get(n, "") for n in swept),
                    job.get("status", ""),
                    bool(job.get("pruned")),
                    job.get("value", ""),
                    *(job["test"].get(name, "") for name in test_names),
                    job.get("mlflow_run_id") or "",
                    job.get("run_dir", ""),
                    " ".join(job.get("overrides", [])),
                    job.get("error", ""),
                ]
            )


def _plot(jobs: list[dict[str, Any]], names: list[str], monitor: str, path: Path) -> Path | None:
    """One panel per swept parameter: the monitored value of each finished job."""
    finished = [j for j in jobs if j.get("status") == "FINISHED" and _finite(j.get("value"))]
    if not names or not finished:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        raw = [j["params"].get(name, "") for j in finished]
        numbers = [_as_number(v) for v in raw]
        values = [j["value"] for j in finished]
        if all(n is not None for n in numbers):
            ax.scatter(numbers, values)
            positive = [n for n in numbers if n > 0]
            if len(positive) == len(numbers) and max(numbers) / min(positive) >= 10:
                ax.set_xscale("log")
        else:
            categories = sorted(set(raw))
            ax.scatter([categories.index(v) for v in raw], values)
            ax.set_xticks(range(len(categories)), categories, rotation=30)
        ax.set_xlabel(name)
        ax.set_ylabel(monitor)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{monitor} by swept parameter")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None
