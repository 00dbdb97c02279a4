"""Where start-up time goes: a light clock from process start to the first training step.

`runner/__init__.py` imports this module first (stdlib only), so the clock knows when the
runner package was loaded. The mode dispatch (runner.cli) marks the end of composition,
the training recipe times its phases with `phase`, and `finish`, which the training loop
calls when everything its first step needs is built, turns the marks into
seconds per phase, logs them, writes them to `<run dir>/startup.json` (an artifact of the
tracked run) and hands the tracker one metric, `startup_s` (the total: `total_s` when the
process start is known, else the sum of this run's phases), so the phases stay out of the
run's metrics page. Phases:

    python_s    interpreter start and the entry point's imports (hydra, runner)
    compose_s   Hydra: command line, config composition, run dir
    imports_s   from the job's start to `run()`: the training stack (torch, ...); also
                the seconds the config check spent importing it during composition
                (it reads the targets' signatures: runner.config.group_keys)
    validate_s  the recipe's config validation
    data_s      building the data splits (lazy imports included, e.g. scikit-learn)
    model_s     model, optimizer, schedule, loss, EMA (timm's import included)
    mlflow_s    connecting to the store and starting the run (mlflow's import included)
    other_s     the rest before the first step (aug, loaders, recording the run's start,
                the training loop's set-up, ...)
    total_s     process start to the first training step

A process that runs several jobs (a sweep in one process, tests) reports `python_s`,
`compose_s`, `imports_s` and `total_s` for its first run only; later runs report their
own phases.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.tracking.protocol import Tracker

log = logging.getLogger(__name__)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc); None where the OS does not say."""
    try:
        with open(f"/proc/{os.getpid()}/stat") as handle:
            # The command name (field 2) may contain spaces: split after its ")".
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, ticks
    except (OSError, ValueError, IndexError):
        return None
    return max(uptime - started, 0.0)


class StartupClock:
    """Accumulates seconds per start-up phase until `finish` reports them."""

    def __init__(self) -> None:
        now = time.perf_counter()
        age = process_age_s()
        self.process_start = now - age if age is not None else None
        self.runner_imported = now
        self.job_started: float | None = None
        self.imports_in_compose = 0.0
        self.run_started: float | None = None
        self.phases: dict[str, float] = {}
        self.reported_once = False

    def job_start(self) -> None:
        """Marks the end of Hydra's composition."""
        from runner.config.group_keys import import_seconds

        self.job_started = time.perf_counter()
        # The config check during composition imported the training stack (see imports_s).
        self.imports_in_compose = import_seconds()

    def add(self, phase: str, seconds: float) -> None:
        """Adds `seconds` to `phase` (a phase may run more than once)."""
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def begin_run(self) -> None:
        """Marks the start of `run()`; a later run in this process starts from zero."""
        self.run_started = time.perf_counter()
        if self.reported_once:
            self.phases = {}

    def finish(self) -> dict[str, float]:
        """The phases of this run in seconds (see the module doc)."""
        now = time.perf_counter()
        run_start = self.run_started if self.run_started is not None else now
        report = {f"{name}_s": seconds for name, seconds in self.phases.items()}
        in_run = sum(self.phases.values())
        report["other_s"] = max(now - run_start - in_run, 0.0)
        if not self.reported_once:
            if self.process_start is not None:
                report["python_s"] = self.runner_imported - self.process_start
                report["total_s"] = now - self.process_start
            if self.job_started is not None:
                compose = max(self.job_started - self.runner_imported, 0.0)
                moved = min(self.imports_in_compose, compose)
                report["compose_s"] = compose - moved
                report["imports_s"] = max(run_start - self.job_started, 0.0) + moved
        self.reported_once = True
        self.phases, self.run_started = {}, None
        return dict(sorted(report.items()))


CLOCK = StartupClock()


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """The enclosed code's duration counts towards start-up phase `name`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        CLOCK.add(name, time.perf_counter() - start)


def job_start() -> None:
    """Marks the end of Hydra's composition: the job's function was called."""
    CLOCK.job_start()


def begin_run() -> None:
    """Marks the start of `run()`: what follows belongs to this run's phases."""
    CLOCK.begin_run()


def total(report: dict[str, float]) -> float:
    """Seconds from process start to the first step, else the sum of the run's phases."""
    return report.get("total_s", sum(v for k, v in report.items() if k != "total_s"))


def finish(run_dir: Path, tracker: Tracker, step: int = 0) -> dict[str, float]:
    """Reports the start-up phases: a log line, startup.json and one `startup_s` metric.

    Args:
        run_dir: The run dir (startup.json goes there and to the tracker's artifacts).
        tracker: The run's tracker; the metric is sent with the first epoch's.
        step: The optimizer step training starts from: a resumed run's start-up is a
            point of its own in the metric's history, not a second value at step 0.

    Returns:
        Seconds per phase.
    """
    report = CLOCK.finish()
    path = run_dir / "startup.json"
    path.write_text(json.dumps(report, indent=2))
    tracker.log_artifact(path)
    tracker.log_metrics({"startup_s": total(report)}, step=step)
    log.info("start-up: %s", ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in report.items()))
    return report
