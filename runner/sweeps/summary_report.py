"""The sweep report's markdown: the table of every job, the means over repeats, the best.

`summary.summarize` chooses the best configuration and job and writes the files; this
module turns what it found into summary.md's sections and the parent run's `best.*`
tags and metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.sweeps.manifest import (
    ABANDONED,
    REPLACED,
    parse_overrides,
)
from runner.sweeps.summary_inputs import SummaryInputs
from runner.sweeps.summary_parts import (
    REPEATS,
    RepeatGroup,
    format_value,
    markdown_table,
    mean_std,
    shorten,
)

# Test metrics shown in the markdown table (the CSV has all of them).
SHOWN_TEST_METRICS = ("test/acc", "test/balanced_acc", "test/macro_f1")


@dataclass
class Columns:
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
class Choice:
    """The best configuration and job, and the jobs and groups they were chosen among.

    Attributes:
        maximize: Whether larger monitored values are better.
        finished: The finished jobs with a finite monitored value.
        complete: Those of them that were not pruned.
        groups: `complete` by configuration when seeds or folds are swept, else empty.
        ranked: The groups with the most finished runs, `most`: the ones ranked.
        best_group: The best of `ranked`, or None.
        best: The best job (of the best group, when there is one), or None.
    """

    maximize: bool
    finished: list[dict[str, Any]]
    complete: list[dict[str, Any]]
    groups: list[RepeatGroup]
    ranked: list[RepeatGroup]
    best_group: RepeatGroup | None
    best: dict[str, Any] | None

    @property
    def most(self) -> int:
        """The most finished runs of a group (0 without groups): the ranked groups' count."""
        return len(self.ranked[0].members) if self.ranked else 0

    @property
    def value(self) -> float | None:
        """The best group's mean, else the best job's value; None without either."""
        if self.best_group is not None:
            return self.best_group.mean
        return self.best["value"] if self.best else None


def report_markdown(
    sweep_dir: Path,
    inputs: SummaryInputs,
    columns: Columns,
    choice: Choice,
    best_lines: list[str],
) -> str:
    """The report (summary.md): every job, the means over repeats, the best, what did not finish.

    Args:
        sweep_dir: The sweep's directory.
        inputs: What the sweep dir holds.
        columns: What the tables show of each job.
        choice: The best configuration and job.
        best_lines: The report's "Best:" line, from `best_report`.
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
    lines += _tie_lines(choice, monitor)
    lines += _earlier_study_best(inputs.study_best, jobs, monitor)
    lines += _not_finished_lines(jobs)
    return "\n".join(lines) + "\n"


def _jobs_table(jobs: list[dict[str, Any]], columns: Columns) -> list[str]:
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


def _repeats_lines(choice: Choice, columns: Columns) -> list[str]:
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


def best_report(
    choice: Choice, columns: Columns
) -> tuple[list[str], dict[str, str], dict[str, float]]:
    """The report's "Best:" line, and the tags and metrics the parent run gets for it.

    Args:
        choice: The best configuration (when seeds or folds are swept) and job.
        columns: The swept overrides, the monitored metric and the test metrics shown.
    """
    best_group, best = choice.best_group, choice.best
    swept, monitor, shown = columns.swept, columns.monitor, columns.shown
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


def _tie_lines(choice: Choice, monitor: str) -> list[str]:
    """A line naming the configurations (or jobs) whose value equals the best one's.

    A val split of a few hundred images moves val/acc in steps of a fraction of a point,
    so equal values are common; the best is then the first listed, and the report says so
    instead of naming it alone.
    """
    best_group, best = choice.best_group, choice.best
    if best_group is not None:
        tied = [g for g in choice.ranked if g is not best_group and _same(g.mean, best_group.mean)]
        names = [
            f"jobs {', '.join(str(j.get('num')) for j in g.members)} ({g.label})" for g in tied
        ]
        advice = "more seeds"
    elif best is not None:
        tied = [j for j in choice.complete if j is not best and _same(j["value"], best["value"])]
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
