"""The data audit and the noise-robust losses, measured on scikit-learn's digits.

Four measurements, each from runs of `run.py` made here (no tracking):

1. The audit at 10% symmetric label noise: `python run.py -m experiment=audit
   data.label_noise=0.1` (5 fold jobs, the preset's resnet10t and epochs, then cleanlab's
   Datalab). Precision and recall of `is_label_issue` (audit/label_issues.csv) against
   the labels the runs flipped (the fold jobs' label_noise.csv). Goal: >= 0.8 each.
2. Acting on it: test accuracy of cross-entropy on the noisy labels, after
   `data.exclude=<sweep>/audit/label_issues.csv`, and on clean labels, 3 seeds each.
   Goal: the cleaned runs recover at least half of the noisy-to-clean gap. One more row,
   for scale: excluding exactly the flipped samples (what a perfect audit would drop);
   it shows what is lost with the excluded samples rather than through the audit. And
   one for the other way to act on it: `data.relabel=<sweep>/audit/label_issues.csv`
   (the flagged samples given the audit's suggested class instead of dropped).
3. 40% symmetric noise: test accuracy mean +- std over 3 seeds for loss=ce, gce, sce.
   Goal: the best robust loss >= 3 points over cross-entropy.
4. The audit's own time (Datalab on the merged outputs, timed here again) against the
   fold jobs' training time (their wall time in the sweep's manifest).

The fold jobs train `--epochs` (the preset's 8); the runs of 2 and 3 train
`--train-epochs` (15: long enough for cross-entropy to suffer from 40% noise).

The val split stays clean in every run (the switches change train only), so every run
keeps the weights of its best epoch by a clean val/acc. Run it from the repository root::

    .venv/bin/python benchmarks/audit.py                  # 29 runs: minutes on a CPU
    .venv/bin/python benchmarks/audit.py --train-epochs 8 --seeds 0 1
    .venv/bin/python benchmarks/audit.py --seeds 0 1 2 3 4 5 6 7 8 9 --skip-robust
    .venv/bin/python benchmarks/audit.py --seeds $(seq 10 39) --skip-robust --skip-context

With more than two seeds, measurement 2 also prints a 90% interval of the share
recovered: a bootstrap over seeds, each resampled seed keeping its runs together.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_results import quick, record  # noqa: E402

LOSSES = ("ce", "gce", "sce")
CLEANING = ("noisy", "excluded", "clean")  # the runs the share recovered is made of
ARMS = ("noisy", "excluded", "flipped", "relabeled", "clean")  # the runs of measurement 2


def run_sweep(sweep_dir: Path, overrides: list[str]) -> float:
    """Runs `python run.py -m ...` into `sweep_dir` (log: sweep.log); returns its wall time."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        "logger=none",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    with (sweep_dir / "sweep.log").open("w") as log:
        done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed; see {sweep_dir / 'sweep.log'}")
    return time.perf_counter() - start


def job_results(sweep_dir: Path) -> list[tuple[dict[str, str], dict[str, float], float]]:
    """(overrides, metrics.json, seconds) of every job in the sweep's manifest."""
    jobs = json.loads((sweep_dir / "manifest.json").read_text())["jobs"]
    results = []
    for entry in jobs.values():
        overrides = dict(o.lstrip("+").split("=", 1) for o in entry["overrides"])
        metrics = json.loads((Path(entry["run_dir"]) / "metrics.json").read_text())
        results.append((overrides, metrics, float(entry.get("seconds", 0.0))))
    return results


def flagged_and_flipped(sweep_dir: Path) -> tuple[set[str], set[str], int]:
    """Flagged ids (label_issues.csv), flipped ids (the jobs' label_noise.csv), audited."""
    with (sweep_dir / "audit" / "label_issues.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    flagged = {r["sample_id"] for r in rows if r["is_label_issue"] == "True"}
    flipped = set()
    for noise_file in sweep_dir.glob("*/label_noise.csv"):
        with noise_file.open(newline="") as handle:
            flipped |= {
                r["sample_id"]
                for r in csv.DictReader(handle)
                if r["clean_label"] != r["noisy_label"]
            }
    audited = {r["sample_id"] for r in rows}
    return flagged, flipped & audited, len(audited)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def recovered_share(noisy: list[float], excluded: list[float], clean: list[float]) -> float:
    """(excluded - noisy) / (clean - noisy) of the means; nan when there is no gap."""
    gap = statistics.mean(clean) - statistics.mean(noisy)
    return (statistics.mean(excluded) - statistics.mean(noisy)) / gap if gap > 0 else float("nan")


def bootstrap_interval(
    by_seed: dict[str, dict[str, float]], rounds: int = 10000, level: float = 0.9
) -> tuple[float, float, float]:
    """A paired bootstrap over seeds of the share recovered.

    Args:
        by_seed: Per seed, the test accuracy of the noisy, excluded and clean runs.
        rounds: Bootstrap resamples.
        level: The interval's coverage.

    Returns:
        The interval's low and high ends, and the fraction of resamples with no gap
        (clean not above noisy), which count as below any share.
    """
    seeds = sorted(by_seed)
    draw = random.Random(0)
    shares = []
    for _ in range(rounds):
        picked = [by_seed[draw.choice(seeds)] for _ in seeds]
        share = recovered_share(*([run[name] for run in picked] for name in CLEANING))
        shares.append(share if share == share else float("-inf"))
    shares.sort()
    tail = (1 - level) / 2
    low, high = shares[int(tail * rounds)], shares[int((1 - tail) * rounds) - 1]
    return low, high, sum(s == float("-inf") for s in shares) / rounds


def train_settings(args: argparse.Namespace) -> list[str]:
    """The runs of measurements 2 and 3: the audit preset's model, `--train-epochs`."""
    return [
        "data=digits",
        "model=timm",
        "model.name=resnet10t",
        "aug=basic",
        f"trainer.max_epochs={args.train_epochs}",
        "trainer.batch_size=64",
        "analysis.enabled=false",
        f"seed={','.join(str(s) for s in args.seeds)}",
    ]


def measure_audit(args: argparse.Namespace, root: Path) -> dict:
    from runner.sweeps.audit import find_issues
    from runner.sweeps.out_of_fold import merge_folds

    sweep = root / "audit"
    wall = run_sweep(
        sweep,
        [
            "experiment=audit",
            f"data.label_noise={args.noise}",
            f"data.num_folds={args.folds}",
            f"trainer.max_epochs={args.epochs}",
        ],
    )
    flagged, flipped, audited = flagged_and_flipped(sweep)
    with (root / "flipped.csv").open("w", newline="") as handle:  # the perfect audit's list
        writer = csv.writer(handle)
        writer.writerow(["sample_id"])
        writer.writerows([sample_id] for sample_id in sorted(flipped))
    hits = len(flagged & flipped)
    merged = merge_folds(sweep)
    _, datalab = find_issues(merged)
    return {
        "sweep": sweep,
        "wall": wall,
        "audited": audited,
        "flagged": len(flagged),
        "flipped": len(flipped),
        "precision": hits / max(len(flagged), 1),
        "recall": hits / max(len(flipped), 1),
        "datalab": datalab,
        "fold_seconds": merged.train_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8, help="fold jobs (the preset's 8)")
    parser.add_argument(
        "--train-epochs", type=int, default=15, help="the runs of measurements 2 and 3"
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0] if quick() else [0, 1, 2])
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--high-noise", type=float, default=0.4)
    parser.add_argument(
        "--skip-robust", action="store_true", help="leave out measurement 3 (40%% noise)"
    )
    parser.add_argument(
        "--skip-context",
        action="store_true",
        help="leave out the flipped and relabeled runs of measurement 2 (not in its goal)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO / "outputs" / "multirun" / f"bench_audit_{time.strftime('%Y%m%d-%H%M%S')}",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    audit = measure_audit(args, args.root)
    label_issues = audit["sweep"] / "audit" / "label_issues.csv"

    settings = train_settings(args)
    cleaning = {}
    by_seed: dict[str, dict[str, float]] = {}
    arm_overrides = {
        "noisy": [f"data.label_noise={args.noise}"],
        "excluded": [f"data.label_noise={args.noise}", f"data.exclude={label_issues}"],
        "flipped": [f"data.label_noise={args.noise}", f"data.exclude={args.root}/flipped.csv"],
        "relabeled": [f"data.label_noise={args.noise}", f"data.relabel={label_issues}"],
        "clean": ["data.label_noise=0"],
    }
    arms = CLEANING if args.skip_context else ARMS
    for name in arms:
        extra = arm_overrides[name]
        run_sweep(args.root / f"ce_{name}", [*settings, *extra])
        cleaning[name] = []
        for overrides, metrics, _ in job_results(args.root / f"ce_{name}"):
            cleaning[name].append(metrics["test/acc"])
            by_seed.setdefault(overrides["seed"], {})[name] = metrics["test/acc"]
    robust: dict[str, list[float]] = {loss: [] for loss in LOSSES}
    if not args.skip_robust:
        run_sweep(
            args.root / "robust",
            [*settings, f"loss={','.join(LOSSES)}", f"data.label_noise={args.high_noise}"],
        )
        for overrides, metrics, _ in job_results(args.root / "robust"):
            robust[overrides["loss"]].append(metrics["test/acc"])

    print(
        f"digits, resnet10t, fold jobs {args.epochs} epochs, other runs {args.train_epochs} "
        f"epochs, seeds {args.seeds}; runs in {args.root}"
    )
    print()
    print(f"1. audit at {args.noise:.0%} symmetric noise, {args.folds} folds:")
    print(
        f"   {audit['audited']} train samples, {audit['flipped']} flipped, "
        f"{audit['flagged']} flagged as label issues"
    )
    precision, recall = audit["precision"], audit["recall"]
    ok_pr = precision >= 0.8 and recall >= 0.8
    print(
        f"   precision {precision:.3f}  recall {recall:.3f}  (goal >= 0.8 each: "
        f"{'met' if ok_pr else 'NOT met'})"
    )
    print()
    print(f"2. cross-entropy test accuracy, {args.noise:.0%} noise, mean +- std over seeds:")
    means = {}
    for name in arms:
        means[name], std = mean_std(cleaning[name])
        cells = " ".join(f"{a:.4f}" for a in cleaning[name])
        print(f"   {name:9s} {means[name]:.4f} +- {std:.4f}   ({cells})")
    gap = means["clean"] - means["noisy"]
    recovered = recovered_share(*(cleaning[name] for name in CLEANING))
    ok_gap = gap > 0 and recovered >= 0.5
    context = {
        "flipped": "excluding exactly the flipped samples",
        "relabeled": "data.relabel of the flagged samples to their suggested class",
    }
    shares = {
        name: recovered_share(cleaning["noisy"], cleaning[name], cleaning["clean"])
        for name in arms
        if name in context
    }
    print(
        f"   gap clean - noisy {gap * 100:+.2f} points; data.exclude recovers "
        f"{recovered:.0%} of it (goal >= 50%: {'met' if ok_gap else 'NOT met'})"
        + "".join(f"; {context[name]} recovers {share:.0%}" for name, share in shares.items())
    )
    if len(by_seed) > 2:
        low, high, no_gap = bootstrap_interval(by_seed)
        ends = " .. ".join(
            "no gap" if end == float("-inf") else f"{end:.0%}" for end in (low, high)
        )
        print(
            f"   90% bootstrap interval over seeds of the share recovered: {ends} "
            f"({no_gap:.0%} of resamples have no gap)"
        )
    print()
    if args.skip_robust:
        print("3. left out (--skip-robust)")
    else:
        print(f"3. test accuracy at {args.high_noise:.0%} symmetric noise, mean +- std:")
        robust_means = {}
        for loss in LOSSES:
            robust_means[loss], std = mean_std(robust[loss])
            cells = " ".join(f"{a:.4f}" for a in robust[loss])
            print(f"   loss={loss:4s} {robust_means[loss]:.4f} +- {std:.4f}   ({cells})")
        best = max(("gce", "sce"), key=robust_means.get)
        margin = (robust_means[best] - robust_means["ce"]) * 100
        print(
            f"   best robust loss {best}: {margin:+.2f} points over ce (goal >= +3: "
            f"{'met' if margin >= 3 else 'NOT met'})"
        )
    print()
    ratio = audit["datalab"] / max(audit["fold_seconds"], 1e-9)
    print("4. the audit's own time:")
    print(
        f"   Datalab {audit['datalab']:.2f} s; the {args.folds} fold jobs "
        f"{audit['fold_seconds']:.1f} s "
        f"(ratio {ratio:.4f}); the whole audit sweep {audit['wall']:.1f} s wall"
    )
    print(f"wall time {time.perf_counter() - started:.0f} s")

    record(
        "audit",
        f"precision of is_label_issue at {args.noise:.0%} noise",
        precision,
        ">= 0.8",
        precision >= 0.8,
    )
    record(
        "audit",
        f"recall of is_label_issue at {args.noise:.0%} noise",
        recall,
        ">= 0.8",
        recall >= 0.8,
    )
    record(
        "audit",
        "share of the noisy-to-clean gap data.exclude recovers",
        recovered,
        ">= 0.5",
        ok_gap,
        "ce test acc "
        + ", ".join(f"{name} {means[name]:.4f}" for name in means)
        + f"; {len(by_seed)} seeds",
    )
    if "relabeled" in shares:
        record(
            "audit",
            "share of the noisy-to-clean gap data.relabel (suggested class) recovers",
            shares["relabeled"],
            note=f"the flagged samples of the same audit; {len(by_seed)} seeds",
        )
    if not args.skip_robust:
        record(
            "audit",
            f"best robust loss - ce at {args.high_noise:.0%} noise (points)",
            margin,
            ">= 3",
            margin >= 3,
            " ".join(f"{k} {v:.4f}" for k, v in robust_means.items()),
        )
    record(
        "audit",
        "Datalab s / fold jobs' training s",
        ratio,
        "",
        None,
        f"{audit['datalab']:.2f} s vs {audit['fold_seconds']:.1f} s",
    )
    record(
        "audit",
        "audit sweep wall time (s)",
        audit["wall"],
        "",
        None,
        f"{args.folds} folds, {args.epochs} epochs",
    )


if __name__ == "__main__":
    main()
