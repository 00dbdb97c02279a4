"""Optuna on digits: the same 12-trial study with the median pruner and without pruning.

Runs `python run.py -m hparams_search=optuna` twice, side by side in one invocation,
with the same TPE seed and search space (optim.lr, optim.weight_decay,
loss.label_smoothing), each into its own study and sweep dir, and prints for each: best
val accuracy, trials pruned, wall time; then the wall-time ratio pruned / unpruned.

The two studies sample the same first trials (TPE's random start-up uses the seed), and
then diverge, because the pruned study's history holds pruned trials. Small settings
keep it within minutes on 2 CPU cores (timm resnet10t, batch 128, `--epochs` epochs,
MLflow off). Run from the repository root::

    .venv/bin/python benchmarks/optuna_pruning.py
    .venv/bin/python benchmarks/optuna_pruning.py --trials 12 --epochs 6
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_results import record  # noqa: E402


def run_study(work: Path, name: str, pruner: str, args: argparse.Namespace) -> dict:
    """Runs one study; returns its wall time and outcome."""
    sweep_dir = work / name
    command = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        "hparams_search=optuna",
        f"paths.output_dir={work}",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.sweeper.study_name={name}",
        # median: 3 start-up trials, 1 warm-up epoch (conf/hydra/sweeper/pruner/median.yaml)
        f"hydra/sweeper/pruner={pruner}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.sampler.seed={args.seed}",
        "data=digits",
        f"trainer.max_epochs={args.epochs}",
        "trainer.batch_size=128",
        "model=timm",
        "model.name=resnet10t",
        "logger=none",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{(done.stdout + done.stderr)[-4000:]}")
    with sqlite3.connect(work / "optuna.db") as conn:
        states = [
            s
            for (s,) in conn.execute(
                "SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = ?",
                (name,),
            )
        ]
    best = json.loads((sweep_dir / "optuna" / "best_params.json").read_text())
    if "best_value" not in best:  # written only when a trial completed
        sys.exit(f"{name}: no trial completed (states {states}); see the logs in {sweep_dir}")
    return {
        "seconds": seconds,
        "best": best["best_value"],
        "pruned": states.count("PRUNED"),
        "trials": len(states),
        "params": best["best_params"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {
            "median pruner": run_study(work, "pruned", "median", args),
            "no pruning": run_study(work, "unpruned", "none", args),
        }
    print(
        f"Optuna on digits: {args.trials} trials, {args.epochs} epochs each, TPE seed "
        f"{args.seed}, resnet10t"
    )
    print(f"{'study':<15}{'best val/acc':>14}{'pruned':>8}{'wall s':>9}")
    for name, result in results.items():
        print(f"{name:<15}{result['best']:>14.4f}{result['pruned']:>8}{result['seconds']:>9.1f}")
    ratio = results["median pruner"]["seconds"] / results["no pruning"]["seconds"]
    print(f"wall time pruned / unpruned: {ratio:.2f}")
    pruned, unpruned = results["median pruner"], results["no pruning"]
    setting = f"{args.trials} trials x {args.epochs} epochs, digits, resnet10t"
    record(
        "optuna_pruning",
        "best val/acc, median pruner / no pruning",
        f"{pruned['best']:.4f} / {unpruned['best']:.4f}",
        note=setting,
    )
    record("optuna_pruning", "trials pruned", f"{pruned['pruned']} of {pruned['trials']}")
    record(
        "optuna_pruning",
        "wall time, pruned / unpruned",
        ratio,
        note=f"{pruned['seconds']:.0f} s vs {unpruned['seconds']:.0f} s",
    )


if __name__ == "__main__":
    main()
