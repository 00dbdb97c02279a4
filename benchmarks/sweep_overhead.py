"""Launcher overhead per sweep job: Hydra's basic launcher vs submitit's local launcher.

Runs the same small sweep (`seed=0,1,2`, tiny synthetic data, timm resnet10t, one job
per batch so jobs never overlap) once with each launcher, side by side in one
invocation, and reads each job's own run time (from entering the job to its end:
data, model, training, test, tracking) from the sweep's manifest.json. Overhead per job
= (sweep wall time - sum of the jobs' own times) / jobs: the launching process's start
(imports, composing), and for submitit a fresh Python process per job with its imports
and the pickling of the job. Run from the repository root::

    .venv/bin/python benchmarks/sweep_overhead.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_results import record  # noqa: E402

TINY = [
    "trainer.max_epochs=2",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    "data=synthetic",
    "data.num_samples=320",
    "data.image_size=32",
    "model=timm",
    "model.name=resnet10t",
]


def run_sweep(work: Path, launcher: str, jobs: int) -> dict:
    """Runs the sweep with `launcher`; returns wall time and the jobs' own times."""
    sweep_dir = work / launcher
    command = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        f"hydra/launcher={launcher}",
        f"paths.output_dir={work}",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweeper.max_batch_size=1",
        f"seed={','.join(map(str, range(jobs)))}",
        *TINY,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{launcher} sweep failed:\n{(done.stdout + done.stderr)[-4000:]}")
    entries = json.loads((sweep_dir / "manifest.json").read_text())["jobs"].values()
    own = [e["seconds"] for e in entries]
    return {"wall": wall, "own": own, "overhead": (wall - sum(own)) / len(own)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            name: run_sweep(Path(tmp), name, args.jobs) for name in ("basic", "submitit_local")
        }
    print(f"{args.jobs} jobs per sweep, one at a time (tiny synthetic, resnet10t, 2 epochs)")
    print(
        f"{'launcher':<16}{'wall s':>8}{'job own s':>11}{'overhead/job s':>16}{'overhead/own':>14}"
    )
    for name, r in results.items():
        own = sum(r["own"]) / len(r["own"])
        print(
            f"{name:<16}{r['wall']:>8.1f}{own:>11.2f}{r['overhead']:>16.2f}"
            f"{r['overhead'] / own:>14.2f}"
        )
    ratio = results["submitit_local"]["overhead"] / results["basic"]["overhead"]
    print(f"overhead per job, submitit_local / basic: {ratio:.2f}")
    for name, r in results.items():
        own = sum(r["own"]) / len(r["own"])
        record(
            "sweep_overhead",
            f"launcher overhead per job, {name} (s)",
            r["overhead"],
            note=f"job's own time {own:.2f} s; {args.jobs} jobs one at a time",
        )


if __name__ == "__main__":
    main()
