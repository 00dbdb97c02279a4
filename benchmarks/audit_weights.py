"""Does the fold jobs' choice of weights bias the audit toward the given labels?

A fold job of `experiment=audit` writes the out-of-fold outputs of its best weights, and
by default `trainer.monitor=val/acc` picks them: the agreement with the held-out fold's
own labels, noisy ones included. That choice looks at the very labels the audit judges,
so it might favour weights that agree with some wrong labels, and flag fewer of them.

This runs the audit at 10% symmetric noise on digits twice for each seed:
`trainer.monitor=val/acc` (the preset) and `trainer.monitor=train/loss`, which picks
the weights without looking at the held-out fold (on the preset's cosine schedule, a
late epoch). Each pair shares its noisy labels, folds and seed; only the choice of
weights differs. It prints the precision and recall of `is_label_issue` against the
flipped samples, per seed and as means, the epochs the folds chose, and the difference
(train/loss - val/acc) with its range over seeds.

Run from the repository root (about 45 s a sweep on 2 cores)::

    .venv/bin/python benchmarks/audit_weights.py                 # seeds 0..4
    .venv/bin/python benchmarks/audit_weights.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.audit import flagged_and_flipped, job_results, run_sweep  # noqa: E402
from benchmarks.bench_results import quick, record  # noqa: E402

MONITORS = ("val/acc", "train/loss")


def audit_once(sweep: Path, monitor: str, seed: int, args: argparse.Namespace) -> dict:
    """Runs one audit sweep; returns its precision, recall and the folds' best epochs."""
    run_sweep(
        sweep,
        [
            "experiment=audit",
            f"data.label_noise={args.noise}",
            f"data.num_folds={args.folds}",
            f"trainer.max_epochs={args.epochs}",
            f"trainer.monitor={monitor}",
            f"seed={seed}",
        ],
    )
    flagged, flipped, _ = flagged_and_flipped(sweep)
    hits = len(flagged & flipped)
    return {
        "flagged": len(flagged),
        "flipped": len(flipped),
        "precision": hits / max(len(flagged), 1),
        "recall": hits / max(len(flipped), 1),
        "epochs": sorted(int(metrics["best_epoch"]) for _, metrics, _ in job_results(sweep)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0] if quick() else [0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=8, help="fold jobs (the preset's 8)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO / "outputs" / "multirun" / f"bench_weights_{time.strftime('%Y%m%d-%H%M%S')}",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict[str, list[dict]] = {monitor: [] for monitor in MONITORS}
    for seed in args.seeds:
        for monitor in MONITORS:
            sweep = args.root / f"seed{seed}_{monitor.replace('/', '_')}"
            results[monitor].append(audit_once(sweep, monitor, seed, args))

    print(
        f"digits, resnet10t, {args.folds} folds x {args.epochs} epochs, "
        f"{args.noise:.0%} symmetric noise, seeds {args.seeds}; runs in {args.root}"
    )
    print()
    print("seed  trainer.monitor  flagged  flipped  precision  recall  best epochs")
    for i, seed in enumerate(args.seeds):
        for monitor in MONITORS:
            r = results[monitor][i]
            print(
                f"{seed:4d}  {monitor:15s}  {r['flagged']:7d}  {r['flipped']:7d}  "
                f"{r['precision']:9.3f}  {r['recall']:6.3f}  {r['epochs']}"
            )
    print()
    for name in ("precision", "recall"):
        means = {m: statistics.fmean(r[name] for r in results[m]) for m in MONITORS}
        diffs = [
            after[name] - before[name]
            for before, after in zip(results["val/acc"], results["train/loss"], strict=True)
        ]
        print(
            f"{name:9s}  val/acc {means['val/acc']:.3f}  train/loss {means['train/loss']:.3f}  "
            f"difference {statistics.fmean(diffs):+.3f} (per seed {min(diffs):+.3f} .. "
            f"{max(diffs):+.3f})"
        )
        for monitor in MONITORS:
            record(
                "audit_weights",
                f"{name} of is_label_issue, fold weights by {monitor}",
                means[monitor],
                note=f"{len(args.seeds)} seeds, {args.noise:.0%} noise",
            )
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
