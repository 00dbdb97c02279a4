"""The end-of-sweep report: every job, seed and fold aggregates, the best job and a plot.

Reads only the sweep dir (manifest.json and each job's metrics.json), so it gives the
same answer wherever the jobs ran, and can be rerun on a finished sweep:
`python -m runner.sweeps summary <sweep_dir>`. A rerun keeps what the earlier summary.csv
held of a job whose metrics.json is gone since.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.config.redaction import public_uri
from runner.sweeps.job import constant_keys
from runner.sweeps.manifest import (
    ABANDONED,
    REPLACED,
    parse_overrides,
    write_json,
)
from runner.sweeps.optuna_study import STUDY_FILE
from runner.sweeps.summary_inputs import (
    SUMMARY_CSV,
    SummaryInputs,
    read_inputs,
)
from runner.sweeps.summary_parts import (
    REPEATS,
    RepeatGroup,
    format_value,
    is_finite,
    markdown_table,
    mean_std,
    repeat_groups,
    shorten,
    write_summary_csv,
    write_sweep_plot,
)
from runner.tracking.protocol import Tracker

# Test metrics shown in the markdown table (the CSV has all of them).
_SHOWN_TEST_METRICS = ("test/acc", "test/balanced_acc", "test/macro_f1")


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
    # Every file is read before any is written: a damaged one stops the summary whole.
    inputs = read_inputs(sweep_dir)
    jobs = inputs.jobs
    # The command line's constants tell no job apart, even in a sweep of one job.
    arguments = inputs.info.get("arguments")
    swept = _swept_names(jobs, None if arguments is None else constant_keys(arguments))
    _label_jobs(jobs, swept)
    choice = _choose_best(jobs, swept, maximize)
    shown = [m for m in _SHOWN_TEST_METRICS if any(m in j["test"] for j in jobs)]
    columns = _Columns(swept, monitor, shown)
    best_lines, best_tags, best_metrics = _best_report(
        choice.best_group, choice.best, swept, monitor, shown
    )
    markdown = _markdown(sweep_dir, inputs, columns, choice, best_lines)
    files = _write_files(sweep_dir, inputs, columns, markdown)
    failed = [j for j in jobs if j.get("status") not in ("FINISHED", ABANDONED, REPLACED)]
    return Summary(jobs, markdown, files, best_tags, choice.value, failed, best_metrics)


@dataclass
class _Columns:
    """What the report's tables show of each job.

    Attributes:
        swept: The overrides that tell the jobs apart.
        monitor: The monitored metric.
        shown: The test metrics the report shows (those some job has).
    """

    swept: list[str]
    monitor: str
    shown: list[str]

    @property
    def varied(self) -> list[str]:
        """The swept overrides but seed and data.fold: what a repeat group is keyed by."""
        return [n for n in self.swept if n not in REPEATS]


@dataclass
class _Choice:
    """The best configuration and job, and the jobs and groups they were chosen among.

    Attributes:
        maximize: Whether larger monitored values are better.
        finished: The finished jobs with a finite monitored value.
        complete: Those of them that were not pruned.
        groups: `complete` by configuration when seeds or folds are swept, else empty.
        ranked: The groups with the most finished runs, `most`: the ones ranked.
        most: The most finished runs of a group (0 without groups).
        best_group: The best of `ranked`, or None.
        best: The best job (of the best group, when there is one), or None.
    """

    maximize: bool
    finished: list[dict[str, Any]]
    complete: list[dict[str, Any]]
    groups: list[RepeatGroup]
    ranked: list[RepeatGroup]
    most: int
    best_group: RepeatGroup | None
    best: dict[str, Any] | None

    @property
    def value(self) -> float | None:
        """The best group's mean, else the best job's value; None without either."""
        if self.best_group is not None:
            return self.best_group.mean
        return self.best["value"] if self.best else None


def _label_jobs(jobs: list[dict[str, Any]], swept: list[str]) -> None:
    """Gives each job its `label`: its swept overrides, as `name=value` pairs."""
    for job in jobs:  # what tells the jobs apart, for people reading the report
        job["label"] = " ".join(
            f"{n}={shorten(job['params'][n])}" for n in swept if n in job["params"]
        )


def _choose_best(jobs: list[dict[str, Any]], swept: list[str], maximize: bool) -> _Choice:
    """Picks the best configuration (with seeds or folds swept) and the best job."""
    finished = [j for j in jobs if j.get("status") == "FINISHED" and is_finite(j.get("value"))]
    # A pruned job stopped early: its value does not stand for its configuration.
    complete = [j for j in finished if not j.get("pruned")]
    # With seeds (or folds) swept, a configuration is judged by its mean, not its luckiest.
    groups = repeat_groups(complete, swept)
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
    return _Choice(maximize, finished, complete, groups, ranked, most, best_group, best)


def _markdown(
    sweep_dir: Path,
    inputs: SummaryInputs,
    columns: _Columns,
    choice: _Choice,
    best_lines: list[str],
) -> str:
    """The report (summary.md): every job, the means over repeats, the best, what did not finish.

    Args:
        sweep_dir: The sweep's directory.
        inputs: What the sweep dir holds.
        columns: What the tables show of each job.
        choice: The best configuration and job.
        best_lines: The report's "Best:" line, from `_best_report`.
    """
    jobs, monitor = inputs.jobs, columns.monitor
    finished, maximize = choice.finished, choice.maximize
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"{len(jobs)} job(s), {len(finished)} finished; "
        f"monitored: {monitor} ({'max' if maximize else 'min'})",
        "",
    ]
    lines += _jobs_table(jobs, columns)
    lines += _lost_metrics_lines(jobs)
    lines += _repeats_lines(choice, columns)
    lines += best_lines
    lines += _tie_lines(choice.ranked, choice.best_group, choice.complete, choice.best, monitor)
    lines += _earlier_study_best(inputs.study_best, jobs, monitor)
    lines += _not_finished_lines(jobs)
    return "\n".join(lines) + "\n"


def _jobs_table(jobs: list[dict[str, Any]], columns: _Columns) -> list[str]:
    """The report's table of every job: its swept values, status and metrics."""
    swept, monitor, shown = columns.swept, columns.monitor, columns.shown
    header = ["job", *swept, "status", monitor, *shown, "mlflow run"]
    rows = [
        [
            str(j.get("num", "")),
            *(shorten(j["params"].get(n, "")) for n in swept),
            _status(j),
            format_value(j.get("value")),
            *(format_value(j["test"].get(m)) for m in shown),
            j.get("mlflow_run_id") or "",
        ]
        for j in jobs
    ]
    return markdown_table(header, rows)


def _repeats_lines(choice: _Choice, columns: _Columns) -> list[str]:
    """The report's mean +- std over seeds (or folds) of each configuration, if any were swept."""
    groups, ranked, most = choice.groups, choice.ranked, choice.most
    if not groups:
        return []
    repeats = [REPEATS[n] for n in REPEATS if n in columns.swept]
    lines = ["", f"## Mean +- std over {' and '.join(repeats)}", ""]
    agg_header = [*columns.varied, "+".join(repeats), columns.monitor, *columns.shown]
    lines += markdown_table(agg_header, [g.row(columns.shown) for g in groups])
    if len(ranked) < len(groups):
        lines += [
            "",
            f"Ranked: the configurations with {most} finished runs; those with fewer "
            "(a failed or pruned repeat) are listed, not ranked.",
        ]
    return lines


def _write_files(
    sweep_dir: Path, inputs: SummaryInputs, columns: _Columns, markdown: str
) -> list[Path]:
    """Writes summary.md, summary.csv and the plot; returns them and the Optuna files to log."""
    files = [sweep_dir / "summary.md", sweep_dir / SUMMARY_CSV]
    files[0].write_text(markdown, encoding="utf-8")
    write_summary_csv(files[1], inputs.jobs, columns.swept, columns.monitor)
    plot = write_sweep_plot(
        inputs.jobs, columns.varied, columns.monitor, sweep_dir / "sweep_plot.png"
    )
    if plot is not None:
        files.append(plot)
    files += _optuna_files(sweep_dir, inputs.study)
    return files


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
            f"Best: {'jobs' if len(members) > 1 else 'job'} {numbers} ({described}, "
            f"{len(members)} run{'s' if len(members) > 1 else ''}): {monitor} = "
            f"{mean_std(best_group.values)}",
        ]
        chosen = zip(best_group.names, best_group.config, strict=True)
        best_tags = {f"best.{name}": value for name, value in chosen}
        for key, plural in REPEATS.items():  # best.seeds, best.folds: what was averaged
            if key in swept:
                best_tags[f"best.{plural}"] = ",".join(
                    str(j["params"].get(key, "")) for j in members
                )
        best_tags["best.run_ids"] = ",".join(j.get("mlflow_run_id") or "" for j in members)
        best_metrics = best_group.metrics(monitor, shown)
    elif best is not None:
        described = best["label"] or "the only job"
        value = format_value(best["value"])
        lines += ["", f"Best: job {best.get('num')} ({described}): {monitor} = {value}"]
        best_tags = {f"best.{n}": best["params"][n] for n in swept if n in best["params"]}
        best_metrics = {f"best/{monitor}": best["value"]}
    if best is not None:  # the best job itself (of the best group, when there is one)
        best_tags["best.run_id"] = best.get("mlflow_run_id") or ""
        best_tags["best.job"] = str(best.get("num"))
    return lines, best_tags, best_metrics


def _tie_lines(
    ranked: list[RepeatGroup],
    best_group: RepeatGroup | None,
    complete: list[dict[str, Any]],
    best: dict[str, Any] | None,
    monitor: str,
) -> list[str]:
    """A line naming the configurations (or jobs) whose value equals the best one's.

    A val split of a few hundred images moves val/acc in steps of a fraction of a point,
    so equal values are common; the best is then the first listed, and the report says so
    instead of naming it alone.
    """
    if best_group is not None:
        tied = [g for g in ranked if g is not best_group and _same(g.mean, best_group.mean)]
        names = [
            f"jobs {', '.join(str(j.get('num')) for j in g.members)} ({g.label})" for g in tied
        ]
        advice = "more seeds"
    elif best is not None:
        tied = [j for j in complete if j is not best and _same(j["value"], best["value"])]
        names = [f"job {j.get('num')} ({j['label']})" for j in tied]
        advice = "seeds (seed=0,1,2)"
    else:
        return []
    if not names:
        return []
    return [
        "",
        f"Tied with the best: {'; '.join(names)}, the same {'mean ' if best_group else ''}"
        f"{monitor}; the first in job order is named best. Tell them apart with {advice} or "
        "a larger val split (data.val_fraction).",
    ]


def _same(value: float, other: float) -> bool:
    """Equal but for float rounding: (0.91 + 0.93) / 2 against (0.92 + 0.92) / 2."""
    return math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-12)


def _not_finished_lines(jobs: list[dict[str, Any]]) -> list[str]:
    """The report's "Not finished" section: each job that did not finish, its status and why."""
    not_done = [j for j in jobs if j.get("status") != "FINISHED"]
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


def _earlier_study_best(
    report: dict[str, Any], jobs: list[dict[str, Any]], monitor: str
) -> list[str]:
    """A line on the Optuna study's best trial when an earlier launch ran it.

    A continued study's sweep summarises its own trials; the study's best (in
    optuna/best_params.json, `report`) may be one of another sweep's, which the table
    cannot show.
    """
    trial = report.get("best_trial")
    own = {parse_overrides(job["overrides"]).get("optuna.trial") for job in jobs}
    if trial is None or str(trial) in own:
        return []
    return [
        "",
        f"The study's best is trial {trial}, of an earlier sweep: {monitor} = "
        f"{format_value(report.get('best_value'))} with {report.get('best_params')} "
        "(optuna/best_params.json); the table and the best tags are this sweep's trials.",
    ]


def _optuna_files(sweep_dir: Path, content: dict[str, Any] | None) -> list[Path]:
    """The Optuna sweeper's files, to log; study.json as a copy without a storage password.

    The jobs reach their trial through the storage URL in study.json (`content`), so the
    file itself keeps the URL whole; the copy logged to the tracking server does not.
    """
    folder = sweep_dir / "optuna"
    if not folder.is_dir():
        return []
    files = sorted(path for path in folder.iterdir() if path.is_file())
    study = folder / STUDY_FILE
    if content is not None:  # read from `study`, which was there
        if content.get("storage"):
            content["storage"] = public_uri(str(content["storage"]))
        public = folder / "public" / STUDY_FILE
        public.parent.mkdir(exist_ok=True)
        write_json(public, content)
        files[files.index(study)] = public
    return files


def log_summary(summary: Summary, tracker: Tracker | None) -> None:
    """Prints a sweep's summary and logs it to the parent run: its files, tags and metrics.

    Args:
        summary: What `summarize` found and wrote.
        tracker: The parent run's open tracker, or None for no logging.
    """
    print(summary.markdown)
    if tracker is not None:
        for path in summary.files:
            tracker.log_artifact(path, "summary")
        tracker.set_tags({**summary.best_tags, "summary": "summary/summary.md"})
        if summary.best_metrics:
            tracker.log_metrics(summary.best_metrics, step=0)


def _swept_names(jobs: list[dict[str, Any]], constant: set[str] | None) -> list[str]:
    """Override names whose values differ between jobs, and the other non-`constant` ones.

    `constant` holds the command line's constant keys (None: it was not recorded). A
    searched key that every trial drew alike (cmaes, a small choice) is still one the
    best configuration needs: it was left out of the `best.*` tags, whose reader then
    got the key's default.
    """
    names: dict[str, set[str]] = defaultdict(set)
    all_names = {name for job in jobs for name in job["params"]}
    for job in jobs:
        for name in all_names:
            names[name].add(job["params"].get(name, ""))
    if constant is None and len(jobs) == 1:
        constant = set()
    return sorted(
        n
        for n, values in names.items()
        if (len(values) > 1 or (constant is not None and n not in constant)) and n != "optuna.trial"
    )


def _lost_metrics_lines(jobs: list[dict[str, Any]]) -> list[str]:
    """A line per finished job whose metrics.json is gone or damaged, so that its cells are read.

    Its test metrics are the earlier summary.csv's when that held them, else lost.
    """
    lines = []
    for job in jobs:
        if "lost_metrics" not in job:
            continue
        problem = job["metrics_problem"]
        if problem == "gone":
            why = f"its {job['lost_metrics']} is gone (its run dir was moved or deleted):"
        else:  # the reader's message: the file, what is wrong, the fix
            why = f"{problem}; until then"
        kept = "the earlier summary.csv's" if job.get("kept_metrics") else "lost"
        lines.append(
            f"Job {job.get('num')} finished, but {why} its monitored value is the "
            f"manifest's, its test metrics are {kept}."
        )
    return ["", *lines] if lines else []


def _status(job: dict[str, Any]) -> str:
    marks = ["pruned"] if job.get("pruned") else []
    if job.get("lost_metrics"):
        marks.append("test metrics of summary.csv" if job.get("kept_metrics") else "no metrics")
    return job.get("status", "?") + (f" ({', '.join(marks)})" if marks else "")
