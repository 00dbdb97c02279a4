"""The end-of-sweep report: every job, seed and fold aggregates, the best job and a plot.

Reads only the sweep dir (manifest.json and each job's metrics.json), so it gives the
same answer wherever the jobs ran, and can be rerun on a finished sweep:
`python -m runner.sweeps summary <sweep_dir>`. A rerun keeps what the earlier summary.csv
held of a job whose metrics.json is gone since.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.config.redaction import public_uri
from runner.sweeps.job import constant_keys
from runner.sweeps.manifest import (
    ABANDONED,
    REPLACED,
    write_json,
)
from runner.sweeps.stored_study import STUDY_FILE
from runner.sweeps.summary_inputs import (
    SUMMARY_CSV,
    SummaryInputs,
    read_inputs,
)
from runner.sweeps.summary_parts import (
    is_finite,
    repeat_groups,
    shorten,
    write_summary_csv,
    write_sweep_plot,
)
from runner.sweeps.summary_report import (
    SHOWN_TEST_METRICS,
    Choice,
    Columns,
    best_report,
    report_markdown,
)
from runner.tracking.protocol import Tracker


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
    shown = [m for m in SHOWN_TEST_METRICS if any(m in j["test"] for j in jobs)]
    columns = Columns(swept, monitor, shown)
    best_lines, best_tags, best_metrics = best_report(choice, columns)
    markdown = report_markdown(sweep_dir, inputs, columns, choice, best_lines)
    files = _write_files(sweep_dir, inputs, columns, markdown)
    failed = [j for j in jobs if j.get("status") not in ("FINISHED", ABANDONED, REPLACED)]
    return Summary(jobs, markdown, files, best_tags, choice.value, failed, best_metrics)


def _label_jobs(jobs: list[dict[str, Any]], swept: list[str]) -> None:
    """Gives each job its `label`: its swept overrides, as `name=value` pairs."""
    for job in jobs:  # what tells the jobs apart, for people reading the report
        job["label"] = " ".join(
            f"{n}={shorten(job['params'][n])}" for n in swept if n in job["params"]
        )


def _choose_best(jobs: list[dict[str, Any]], swept: list[str], maximize: bool) -> Choice:
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
    return Choice(maximize, finished, complete, groups, ranked, best_group, best)


def _write_files(
    sweep_dir: Path, inputs: SummaryInputs, columns: Columns, markdown: str
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
