"""Shared by the benchmark scripts: quick mode and the figures `run_all.py` collects.

A script calls `record(...)` for each figure it measures; when `make bench` runs it
(through benchmarks/run_all.py), the figures go to the JSON-lines file named by the
environment variable RUNNER_BENCH_RESULTS and end up in benchmarks/RESULTS.md. Run on
its own, a script only prints. RUNNER_BENCH_QUICK=1 asks every script for its quick
settings (fewer rounds; the same measurements).
"""

from __future__ import annotations

import json
import os


def quick() -> bool:
    """Whether the quick settings were asked for (RUNNER_BENCH_QUICK=1)."""
    return os.environ.get("RUNNER_BENCH_QUICK", "") not in ("", "0")


def record(
    benchmark: str,
    figure: str,
    value: float | str,
    goal: str = "",
    passed: bool | None = None,
    note: str = "",
) -> None:
    """Notes one measured figure for benchmarks/RESULTS.md.

    Args:
        benchmark: The script's name, e.g. "startup".
        figure: What was measured, e.g. "runner / hand-written throughput".
        value: The figure, formatted as it should appear (a float gets 3 decimals).
        goal: The goal, e.g. ">= 0.97"; empty when the figure is informative only.
        passed: Whether the goal was met; None when there is no goal.
        note: A short remark (conditions, why a goal is missed).
    """
    path = os.environ.get("RUNNER_BENCH_RESULTS")
    if not path:
        return
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    row = {
        "benchmark": benchmark,
        "figure": figure,
        "value": text,
        "goal": goal,
        "passed": passed,
        "note": note,
    }
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
