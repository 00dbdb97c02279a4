"""The default run's wall time and test accuracy: today's default vs the one it replaced.

Runs `python run.py` (the default config) and the former default spelled out as overrides
(`model=resnet18 aug=basic optim=adamw sched=cosine trainer.max_epochs=20
trainer.batch_size=128`), each in a fresh process with a fresh output dir (a new MLflow
store), taking turns round by round, and prints the wall time of each, their ratio and
their test accuracy (goal: the default reaches test/acc >= 0.985 in <= 0.5x the former's
wall). The default run is repeated with each of `--seeds` (0, 1, 2): the lowest accuracy
counts, and the wall is the median over seeds and rounds.

With `--compare-with <checkout>` (e.g. a git worktree of an earlier commit) it also
times that checkout's own default run (`python run.py` there), and an image-folder run
(the digits written as PNG files, resnet18 at 32 px, 6 epochs) in both checkouts, side
by side, for their wall times before and after.

Run from the repository root::

    .venv/bin/python benchmarks/default_run.py [--rounds 2] [--seeds 0 1 2]
        [--compare-with /path/to/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_results import quick, record

REPO = Path(__file__).resolve().parent.parent
FORMER_DEFAULT = [
    "model=resnet18",
    "aug=basic",
    "optim=adamw",
    "sched=cosine",
    "trainer.max_epochs=20",
    "trainer.batch_size=128",
]
GOAL_RATIO, GOAL_ACC = 0.5, 0.985
FOLDER_RUN = [
    "data=imagefolder",
    "data.image_size=32",
    "model=resnet18",
    "trainer.max_epochs=6",
    "trainer.batch_size=128",
]


def timed_run(repo: Path, out: Path, *overrides: str) -> tuple[float, dict]:
    """Runs `repo`'s run.py in a fresh process; its wall seconds and metrics.json."""
    run_dir = out / "run"
    command = [
        sys.executable,
        str(repo / "run.py"),
        f"paths.output_dir={out}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(repo)}  # that checkout's runner package
    start = time.perf_counter()
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds, json.loads((run_dir / "metrics.json").read_text())


def write_digits_folder(root: Path) -> Path:
    """scikit-learn's digits as 8x8 PNG files, root/train/<digit>/<index>.png."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits
    from torchvision.io import write_png

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        pixels = torch.from_numpy((image * 255 / 16).round().astype(np.uint8))
        path = root / "train" / str(label) / f"{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(pixels[None].expand(3, -1, -1).contiguous(), str(path))
    return root


def main() -> None:
    """Runs the rounds and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1 if quick() else 2)
    parser.add_argument("--compare-with", type=Path, default=None)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0] if quick() else [0, 1, 2],
        help="the default run is timed once per seed, each round: its accuracy must hold "
        "for every seed, not one lucky one",
    )
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"default": [], "former": []}
    accs: dict[str, list[float]] = {"default": [], "former": []}
    with tempfile.TemporaryDirectory(prefix="default_run_") as tmp:
        for round_index in range(args.rounds):
            order = ("default", "former") if round_index % 2 == 0 else ("former", "default")
            for side in order:
                for seed in args.seeds if side == "default" else [args.seeds[0]]:
                    out = Path(tmp) / f"{side}{round_index}-{seed}"
                    overrides = FORMER_DEFAULT if side == "former" else []
                    seconds, metrics = timed_run(REPO, out, *overrides, f"seed={seed}")
                    walls[side].append(seconds)
                    accs[side].append(metrics["test/acc"])
                    print(
                        f"round {round_index} {side:<8} seed {seed} {seconds:6.1f} s  "
                        f"test/acc {metrics['test/acc']:.4f}  epochs {metrics['epochs']}",
                        flush=True,
                    )
        default, former = statistics.median(walls["default"]), statistics.median(walls["former"])
        ratio, acc = default / former, min(accs["default"])
        ok = ratio <= GOAL_RATIO and acc >= GOAL_ACC
        print(
            f"default {default:.1f} s, former default {former:.1f} s: {ratio:.2f}x; "
            f"test/acc default {acc:.4f} (lowest of seeds {args.seeds}), "
            f"former {min(accs['former']):.4f}: "
            f"{'OK' if ok else 'MISSED'} (goal <= {GOAL_RATIO}x at >= {GOAL_ACC})"
        )
        record(
            "default_run",
            "default run wall / former default's wall",
            ratio,
            goal=f"<= {GOAL_RATIO}",
            passed=ratio <= GOAL_RATIO,
            note=f"{default:.1f} s vs {former:.1f} s, medians of {args.rounds} round(s)",
        )
        record(
            "default_run",
            "default run test/acc (lowest of the rounds)",
            acc,
            goal=f">= {GOAL_ACC}",
            passed=acc >= GOAL_ACC,
            note=f"former default {min(accs['former']):.4f}",
        )
        if args.compare_with is not None:
            # The other checkout's own default (`python run.py` there): the default as it
            # was, with that code's start-up and end of run.
            for round_index in range(args.rounds):
                out = Path(tmp) / f"compared_default{round_index}"
                seconds, metrics = timed_run(args.compare_with, out)
                walls.setdefault("compared default", []).append(seconds)
                print(
                    f"round {round_index} default of {args.compare_with}: {seconds:6.1f} s  "
                    f"test/acc {metrics['test/acc']:.4f}  epochs {metrics['epochs']}",
                    flush=True,
                )
            then = statistics.median(walls["compared default"])
            print(f"default run: {default:.1f} s here, {then:.1f} s there: {default / then:.2f}x")
            record(
                "default_run",
                "default run wall, this checkout's default / compared checkout's default",
                default / then,
                note=f"{default:.1f} s vs {then:.1f} s ({args.compare_with})",
            )
            folder = write_digits_folder(Path(tmp) / "digits_png")
            folder_run = [*FOLDER_RUN, f"data.root={folder}"]
            for round_index in range(args.rounds):
                for label, repo in (("this checkout", REPO), ("compared", args.compare_with)):
                    out = Path(tmp) / f"folder{round_index}{label[0]}"
                    seconds, metrics = timed_run(repo, out, *folder_run)
                    print(
                        f"image-folder run, {label:<13} {seconds:6.1f} s  "
                        f"test/acc {metrics['test/acc']:.4f}",
                        flush=True,
                    )
                    walls.setdefault(label, []).append(seconds)
            now = statistics.median(walls["this checkout"])
            before = statistics.median(walls["compared"])
            print(
                f"image-folder run: {now:.1f} s here, {before:.1f} s in {args.compare_with}: "
                f"{now / before:.2f}x"
            )
            record(
                "default_run",
                "image-folder run wall, this checkout / compared",
                now / before,
                note=f"{now:.1f} s vs {before:.1f} s ({args.compare_with})",
            )


if __name__ == "__main__":
    main()
