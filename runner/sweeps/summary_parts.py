"""The parts of a sweep's summary.

The mean +- std over the repeats of a configuration (seeds, folds), the table's cells,
summary.csv and sweep_plot.png.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Overrides whose jobs repeat one configuration: the summary gives mean +- std over them.
REPEATS = {"seed": "seeds", "data.fold": "folds"}


def is_finite(value: Any) -> bool:
    """Whether `value` is a number other than NaN and infinity."""
    return isinstance(value, int | float) and math.isfinite(value)


def shorten(value: str) -> str:
    """A long float as 4 significant digits (the CSV keeps every digit)."""
    number = as_number(value)
    return f"{number:.4g}" if number is not None and len(value) > 8 else value


def format_value(value: Any) -> str:
    """A finite number with 4 decimals, None as an empty cell, anything else as its text."""
    return f"{value:.4f}" if is_finite(value) else ("" if value is None else str(value))


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table."""
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
        return " ".join(f"{n}={shorten(v)}" for n, v in zip(self.names, self.config, strict=True))

    def test_values(self, name: str) -> list[float]:
        """The members' values of a test metric (those that have it)."""
        return [m["test"][name] for m in self.members if is_finite(m["test"].get(name))]

    def row(self, shown: list[str]) -> list[str]:
        """The group's row of the mean +- std table."""
        cells = [mean_std(self.values), *(mean_std(self.test_values(n)) for n in shown)]
        return [*map(shorten, self.config), str(len(self.members)), *cells]

    def metrics(self, monitor: str, shown: list[str]) -> dict[str, float]:
        """`best/<metric>` and `best/<metric>_std` for the monitored and test metrics."""
        found = {}
        for name, values in [(monitor, self.values), *((n, self.test_values(n)) for n in shown)]:
            if values:
                found[f"best/{name}"] = statistics.fmean(values)
                found[f"best/{name}_std"] = std_or_nan(values)
        return found


def repeat_groups(jobs: list[dict[str, Any]], swept: list[str]) -> list[RepeatGroup]:
    """The complete jobs grouped by all swept but `seed` and `data.fold` (or none)."""
    if not any(n in swept for n in REPEATS):
        return []
    names = [n for n in swept if n not in REPEATS]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        groups[tuple(job["params"].get(n, "") for n in names)].append(job)
    return [RepeatGroup(names, config, members) for config, members in groups.items()]


def std_or_nan(values: list[float]) -> float:
    """The sample standard deviation; NaN for one value.

    One run has no spread to measure: NaN, not a perfect agreement of 0.
    """
    return statistics.stdev(values) if len(values) > 1 else math.nan


def mean_std(values: list[float]) -> str:
    """`mean +- std` as a table cell; empty for no values."""
    if not values:
        return ""
    return f"{statistics.fmean(values):.4f} +- {std_or_nan(values):.4f}"


def write_summary_csv(
    path: Path, jobs: list[dict[str, Any]], swept: list[str], monitor: str
) -> None:
    """summary.csv: every job, with each swept value, status and test metric."""
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


def read_earlier_test_metrics(path: Path) -> list[tuple[str, str, dict[str, float]]]:
    """The test metrics each job has in a summary.csv `write_summary_csv` wrote earlier.

    Read before a summary rewrites the file: a finished job's metrics.json may be gone
    since, and these are then the only copy of its test metrics.

    Returns:
        (job number, overrides as written, test metrics) for each row with a test
        metric; [] when there is no such file, or it is not one the summary wrote.
    """
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # nothing of it can be kept
    found = []
    for row in rows:
        test = {
            name: number
            for name, text in row.items()
            if isinstance(name, str) and name.startswith("test/") and isinstance(text, str)
            if (number := as_number(text)) is not None
        }
        if test:
            found.append((row.get("job") or "", row.get("overrides") or "", test))
    return found


def write_sweep_plot(
    jobs: list[dict[str, Any]], names: list[str], monitor: str, path: Path
) -> Path | None:
    """One panel per swept parameter: the monitored value of each finished job."""
    finished = [j for j in jobs if j.get("status") == "FINISHED" and is_finite(j.get("value"))]
    if not names or not finished:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        raw = [j["params"].get(name, "") for j in finished]
        numbers = [as_number(v) for v in raw]
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


def as_number(value: str) -> float | None:
    """An override's value as a number, or None when it is not one."""
    try:
        return float(value)
    except ValueError:
        return None
