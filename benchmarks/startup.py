"""Start-up: from process start to the first training step of the default run, by phase.

Runs `python run.py` (the default config: digits, timm resnet10t, aug basic, MLflow into
a SQLite store) in fresh processes and reads the runner's own start-up report
(`<run dir>/startup.json`, see runner/training/startup_clock.py), written just before the first
training step; the process is then stopped with SIGTERM. Two kinds of process take
turns, round by round (the machine may be shared):

* plain: `python run.py`, exactly as a user starts it;
* preloaded: the same run in a process that has imported the third-party libraries the
  run needs (torch, torchvision, timm, kornia, mlflow's SQLite store, scikit-learn's
  data sets, torchmetrics, matplotlib) before the clock of the runner starts; its phases
  are what start-up costs beyond the unavoidable imports.

Round 0 creates the MLflow store (its tables) and is reported apart; the medians come
from the later rounds, with the store in place as for every run after a user's first.

Goal: compose + validate + building the data, aug, model + MLflow start <= 0.5 s beyond
the imports (the preloaded process's phases).

Then the start-up of a first run on a new MLflow store (its tables are created), as the
run reports it: total_s - python_s - imports_s of startup.json (goal <= 4 s), each round
with a fresh output dir, after one warm-up run (OS and font caches warm). These runs
also print when the training loop first calls its epoch function ("first step", the
process's age then), seen from outside the runner's clock, so that a checkout whose
clock ended earlier is compared by when it really starts training. With
`--compare-with <checkout>` the same is measured, taking turns, in another checkout (e.g. a
git worktree of an earlier commit), for the phases before and after. The same run with
`logger=none` (no tracking at all) takes turns with them: the floor of any way of starting
MLflow. Run it from the repository root::

    .venv/bin/python benchmarks/startup.py [--rounds 3] [--compare-with /path/to/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_results import quick, record

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 0.5
FRESH_GOAL_S = 4.0
PRELOAD = (
    "torch",
    "torchvision",
    "timm",
    "kornia.augmentation",
    "mlflow.tracking",
    "mlflow.store.tracking.sqlalchemy_store",
    "sklearn.datasets",
    "torchmetrics",
    "matplotlib.pyplot",
)
PHASES = ("python", "compose", "imports", "validate", "data", "model", "mlflow", "other")
# What the goal counts: composing, checking and building the run, and starting MLflow.
BEYOND = ("compose", "validate", "data", "model", "mlflow")


# Runs run.py as a user does, and prints the process's age when the training loop first
# calls its epoch function (the first step is that call's first batch): the start of
# training as seen from outside, whatever the checkout's startup.json says. The wrapper
# is installed when runner.training.engine is imported, so no phase moves.
FIRST_STEP_PROBE = """
import importlib.abc, importlib.util, runpy, sys

class FirstStep(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "runner.training.engine":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            epoch = module.train_one_epoch

            def first_epoch(*args, **kwargs):
                from runner.training.startup_clock import process_age_s

                module.train_one_epoch = epoch
                print(f"first step at {process_age_s():.3f} s", flush=True)
                return epoch(*args, **kwargs)

            module.train_one_epoch = first_epoch

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, FirstStep())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def command(
    kind: str, out: Path, run_dir: Path, repo: Path = REPO, overrides: tuple[str, ...] = ()
) -> list[str]:
    """The command line of one start-up measurement."""
    args = [f"paths.output_dir={out}", f"hydra.run.dir={run_dir}", *overrides]
    if kind == "plain":
        return [sys.executable, str(repo / "run.py"), *args]
    if kind == "first step":
        return [sys.executable, "-c", FIRST_STEP_PROBE, str(repo / "run.py"), *args]
    code = (
        "import time; t = time.perf_counter()\n"
        f"for name in {PRELOAD!r}: __import__(name)\n"
        "print(f'preloaded imports {time.perf_counter() - t:.3f} s', flush=True)\n"
        "import runpy, sys\n"
        f"sys.argv = [{str(REPO / 'run.py')!r}, *{args!r}]\n"
        f"runpy.run_path({str(REPO / 'run.py')!r}, run_name='__main__')\n"
    )
    return [sys.executable, "-c", code]


def measure(
    kind: str, out: Path, run_dir: Path, repo: Path = REPO, overrides: tuple[str, ...] = ()
) -> tuple[dict[str, float], float | None]:
    """Starts one run, stops it at its first training step; its phases and preload time."""
    proc = subprocess.Popen(
        command(kind, out, run_dir, repo, overrides),
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},  # that checkout's runner package
    )
    lines, preload, first_step = [], None, None
    # The probed run goes on to its first step, wherever its checkout's clock ends.
    stop_at = "first step at" if kind == "first step" else "start-up:"
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("preloaded imports"):
            preload = float(line.split()[2])
        if line.startswith("first step at"):
            first_step = float(line.split()[3])
        if stop_at in line:
            proc.send_signal(signal.SIGTERM)  # stops at the next step, checkpoint saved
            break
    proc.stdout.close()
    proc.wait(timeout=300)
    report = run_dir / "startup.json"
    if not report.exists():
        raise RuntimeError(f"{kind} run wrote no startup.json:\n{''.join(lines)[-3000:]}")
    phases = {k.removesuffix("_s"): v for k, v in json.loads(report.read_text()).items()}
    if first_step is not None:
        phases["first step"] = first_step
    return phases, preload


def main() -> dict[str, float]:
    """Runs the rounds, prints the phases and the goal; returns the medians (plain)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2 if quick() else 4)
    parser.add_argument("--compare-with", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"plain": [], "preloaded": []}
    preloads: list[float] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds + 1):
            kinds = ("plain", "preloaded") if round_index % 2 else ("preloaded", "plain")
            for kind in kinds:
                out = Path(tmp) / kind  # one store per kind: round 0 creates it
                phases, preload = measure(kind, out, out / f"run{round_index}")
                if round_index == 0:
                    print(
                        f"round 0 ({kind}, new MLflow store): mlflow {phases['mlflow']:.2f} s, "
                        f"total {phases.get('total', float('nan')):.2f} s"
                    )
                    if kind == "plain":
                        first_store = phases["mlflow"]
                    continue
                results[kind].append(phases)
                if preload is not None:
                    preloads.append(preload)
            print(f"round {round_index} done", flush=True)

    medians = {
        kind: {
            p: statistics.median(r.get(p, float("nan")) for r in rows) for p in (*PHASES, "total")
        }
        for kind, rows in results.items()
    }
    print(f"\nmedian of {args.rounds} rounds (s); python = interpreter + hydra/runner imports")
    print(f"{'phase':<10} {'plain':>8} {'preloaded':>10}")
    for phase in (*PHASES, "total"):
        print(f"{phase:<10} {medians['plain'][phase]:8.2f} {medians['preloaded'][phase]:10.2f}")
    preload_s = statistics.median(preloads)
    beyond = sum(medians["preloaded"][p] for p in BEYOND)
    beyond_plain = sum(medians["plain"][p] for p in BEYOND)
    print(f"preloaded third-party imports: {preload_s:.2f} s ({', '.join(PRELOAD)})")
    print(f"MLflow start with a new store (tables created): {first_store:.2f} s")
    ok = beyond <= GOAL_S
    print(
        f"compose + validate + data + model + mlflow: {beyond_plain:.2f} s in the plain run, "
        f"{beyond:.2f} s beyond the imports (goal <= {GOAL_S} s): "
        f"{'OK' if ok else 'MISSED'}"
    )
    print(f"wall time {time.perf_counter() - began:.0f} s")
    plain = medians["plain"]
    record(
        "startup",
        "process start -> first training step, default run (s)",
        plain["total"],
        note="; ".join(f"{p} {plain[p]:.2f}" for p in PHASES),
    )
    record("startup", "third-party imports the default run needs (s)", preload_s)
    record(
        "startup",
        "MLflow start with a new SQLite store (s)",
        first_store,
        note="first run only: creates the tables",
    )
    record(
        "startup",
        "compose+validate+data+model+MLflow beyond imports (s)",
        beyond,
        goal=f"<= {GOAL_S}",
        passed=ok,
        note="; ".join(f"{p} {medians['preloaded'][p]:.2f}" for p in BEYOND),
    )
    fresh_store(args.rounds, args.compare_with)
    return plain


def fresh_store(rounds: int, compare_with: Path | None) -> None:
    """Start-up beyond the imports of a first run on a new store, here (and elsewhere).

    One more column, taking turns with the others, is the same run with `logger=none`: no
    tracking at all, the floor that no way of starting MLflow can go below.
    """
    setups = {
        "this checkout": (REPO, ()),
        **({"compared": (compare_with, ())} if compare_with else {}),
        "logger=none": (REPO, ("logger=none",)),
    }
    found: dict[str, list[dict[str, float]]] = {label: [] for label in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds + 1):  # round 0 warms the OS and font caches
            for index, (label, (repo, overrides)) in enumerate(setups.items()):
                out = Path(tmp) / f"{index}-{round_index}"  # a new MLflow store each time
                phases, _ = measure("first step", out, out / "run", repo, overrides)
                if round_index:
                    found[label].append(phases)
    print(f"\nfirst run on a new MLflow store, median of {rounds} rounds (s)")
    print(f"{'phase':<10} " + " ".join(f"{label:>14}" for label in setups))
    medians = {
        label: {
            p: statistics.median(r.get(p, 0.0) for r in rows)
            for p in (*PHASES, "total", "first step")
        }
        for label, rows in found.items()
    }
    for phase in (*PHASES, "total", "first step"):
        print(f"{phase:<10} " + " ".join(f"{medians[label][phase]:14.2f}" for label in setups))
    for label in setups:
        rows = found[label]
        values = [r["total"] - r["python"] - r["imports"] for r in rows]
        beyond = statistics.median(values)
        goal = label == "this checkout"
        print(
            f"{label}: total - python - imports = {beyond:.2f} s "
            f"(rounds {min(values):.2f}-{max(values):.2f}; goal <= {FRESH_GOAL_S} s)"
        )
        real = [r["first step"] - r["python"] - r["imports"] for r in rows]
        late = [r["first step"] - r["total"] for r in rows]
        print(
            f"{label}: first step - python - imports = {statistics.median(real):.2f} s; "
            f"the first step came {statistics.median(late):.2f} s after startup.json's total"
        )
        phases = medians[label]
        record(
            "startup",
            f"first run on a new store, total - python - imports (s), {label}",
            beyond,
            goal=f"<= {FRESH_GOAL_S}" if goal else "",
            passed=beyond <= FRESH_GOAL_S if goal else None,
            note="; ".join(f"{p} {phases[p]:.2f}" for p in (*PHASES, "total")),
        )


if __name__ == "__main__":
    main()
