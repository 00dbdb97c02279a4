"""Start-up and end-of-run cost of the analysis reports, side by side.

Runs `python run.py` on tiny settings (synthetic data, resnet10t, 1 epoch, MLflow) with
`analysis.enabled=true` and `false`, alternating, and reads its log lines as they come:

* start-up: from launching the process to the log line of the first training step
  (`trainer.log_every_n_steps=1`); the reports run after training, so this should not
  differ (nothing of matplotlib or captum is imported before training);
* analysis: the time the reports take at the end (their own log line).

    .venv/bin/python benchmarks/analysis_cost.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_results import quick, record

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data=synthetic",
    "data.num_samples=320",
    "model=timm",
    "model.name=resnet10t",
    "trainer.max_epochs=1",
    "trainer.batch_size=32",
    "trainer.log_every_n_steps=1",
]


def one_run(enabled: bool, out: Path) -> tuple[float, float, float]:
    """(seconds to the first step, seconds of the analysis reports, total seconds)."""
    command = [
        sys.executable,
        str(REPO / "run.py"),
        *TINY,
        f"analysis.enabled={enabled}",
        f"paths.output_dir={out}",
    ]
    started = time.perf_counter()
    first_step, analysis = float("nan"), 0.0
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if first_step != first_step and re.search(r"epoch 1 step 1/", line):
            first_step = time.perf_counter() - started
        found = re.search(r"analysis: wrote .* in ([0-9.]+)s", line)
        if found:
            analysis = float(found.group(1))
    if proc.wait() != 0:
        raise SystemExit("".join(lines[-40:]))
    return first_step, analysis, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1 if quick() else 3)
    args = parser.parse_args()
    results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        one_run(False, Path(tmp))  # warm-up: creates the MLflow store, fills the OS cache
        for _ in range(args.rounds):
            for enabled in (True, False):
                results[enabled].append(one_run(enabled, Path(tmp)))
    median = {
        k: [statistics.median(col) for col in zip(*v, strict=True)] for k, v in results.items()
    }
    for enabled in (False, True):
        first, analysis, total = median[enabled]
        print(
            f"analysis.enabled={str(enabled).lower():5}  first step {first:6.2f} s  "
            f"reports {analysis:5.2f} s  whole run {total:6.2f} s"
        )
    ratio = median[True][0] / median[False][0]
    print(
        f"time to the first step, analysis on / off: {ratio:.3f} "
        f"(median of {args.rounds} alternating runs each)"
    )
    extra = median[True][2] - median[False][2]
    print(
        f"the reports add {median[True][1]:.2f} s at the end "
        f"(whole run +{extra:.2f} s, {median[True][2] / median[False][2]:.3f}x)"
    )
    record(
        "analysis_cost",
        "time to the first step, analysis.enabled=true / false",
        ratio,
        note=f"the reports add {median[True][1]:.2f} s at the end ({args.rounds} round(s))",
    )


if __name__ == "__main__":
    main()
