"""Long-tailed digits: plain cross-entropy against the options for imbalance, 3 seeds each.

Runs one Hydra multirun of `run.py` on scikit-learn's digits made long-tailed with
`data.imbalance_ratio=20` (the train split keeps int(n_max * 20^(-c/9)) images of class
c; val and test stay balanced), with four variants (benchmarks/conf/imbalance_variant/):

* ce: cross-entropy, uniform sampling (the baseline);
* balanced_ce: class-weighted cross-entropy (scikit-learn's 'balanced' weights);
* balanced_sampler: cross-entropy, class-balanced sampling (sampler=balanced);
* balanced_softmax: balanced softmax (logits + log prior in the loss);

each with seeds 0, 1, 2 (model initialisation and sample order; the long-tailed subset
is the same). It reads every job's metrics.json and prints test balanced accuracy per
seed, its mean and standard deviation, and the mean test tail-class accuracy. The
balanced options should beat plain cross-entropy on balanced accuracy.

Small settings keep it within minutes on 2 CPU cores: timm resnet10t, batch 64,
`--epochs` (8) epochs, no tracking. Run it from the repository root::

    .venv/bin/python benchmarks/imbalance.py
    .venv/bin/python benchmarks/imbalance.py --epochs 20 --extra model=resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ["ce", "balanced_ce", "balanced_sampler", "balanced_softmax"]


def run_sweep(args: argparse.Namespace, sweep_dir: Path) -> None:
    """Runs the multirun; its output goes to sweep_dir/sweep.log."""
    command = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        f"hydra.searchpath=[file://{REPO / 'benchmarks' / 'conf'}]",
        f"hydra.sweep.dir={sweep_dir}",
        f"+imbalance_variant={','.join(VARIANTS)}",
        f"seed={','.join(str(s) for s in args.seeds)}",
        "data=digits",
        f"data.imbalance_ratio={args.ratio}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.batch_size=64",
        "model=timm",
        "model.name=resnet10t",
        "logger=none",
        *args.extra,
    ]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with (sweep_dir / "sweep.log").open("w") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"the sweep failed; see {sweep_dir / 'sweep.log'}")


def collect(sweep_dir: Path) -> dict[str, dict[int, dict[str, float]]]:
    """variant -> seed -> the job's test metrics."""
    results: dict[str, dict[int, dict[str, float]]] = {v: {} for v in VARIANTS}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / "metrics.json").is_file()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        settings = dict(o.lstrip("+").split("=", 1) for o in overrides)
        metrics = json.loads((job / "metrics.json").read_text())
        results[settings["imbalance_variant"]][int(settings["seed"])] = metrics
    return results


def print_table(results: dict, seeds: list[int]) -> None:
    header = (
        f"{'variant':18s}"
        + "".join(f"{'seed ' + str(s):>9s}" for s in seeds)
        + f"{'mean':>9s}{'std':>8s}{'acc':>8s}{'tail':>8s}"
    )
    print("test balanced accuracy (digits, imbalance ratio 20)")
    print(header)
    print("-" * len(header))
    means = {}
    for variant in VARIANTS:
        runs = [results[variant][s] for s in seeds]
        balanced = [r["test/balanced_acc"] for r in runs]
        means[variant] = statistics.mean(balanced)
        std = statistics.stdev(balanced) if len(balanced) > 1 else 0.0
        acc = statistics.mean(r["test/acc"] for r in runs)
        tail = statistics.mean(r["test/tail_acc"] for r in runs)
        cells = "".join(f"{b:9.4f}" for b in balanced)
        print(f"{variant:18s}{cells}{means[variant]:9.4f}{std:8.4f}{acc:8.4f}{tail:8.4f}")
    print("(acc: mean test accuracy; tail: mean test accuracy on the tail classes, < 20 train")
    print(" samples or the smallest third; see runner.reports.per_class.shot_groups)")
    for variant in VARIANTS[1:]:
        gain = means[variant] - means["ce"]
        verdict = "beats" if gain > 0 else "does NOT beat"
        print(f"{variant} {verdict} ce by {gain:+.4f} balanced accuracy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--sweep-dir",
        type=Path,
        default=REPO / "outputs" / "multirun" / f"imbalance_{time.strftime('%Y%m%d-%H%M%S')}",
    )
    parser.add_argument("--extra", nargs="*", default=[], help="more run.py overrides")
    parser.add_argument("--table-only", action="store_true", help="reread --sweep-dir")
    args = parser.parse_args()
    if not args.table_only:
        start = time.perf_counter()
        run_sweep(args, args.sweep_dir)
        jobs = len(VARIANTS) * len(args.seeds)
        print(f"{jobs} jobs in {time.perf_counter() - start:.0f}s; runs in {args.sweep_dir}")
    print_table(collect(args.sweep_dir), args.seeds)


if __name__ == "__main__":
    main()
