"""Peak memory of `mode=eval` on a held-out image folder: decoded whole vs streamed.

Trains a small checkpoint at 224 px (synthetic data, one epoch, `logger=none`), writes a
held-out folder of `--num-images` PNGs (10 classes) beside it, then evaluates the
checkpoint on that folder with `eval.data=current data=imagefolder`, each side in its own
process:

* resident: `data.resident=true`, the folder decoded into memory whole (what every
  held-out folder got before);
* streamed: `data.resident=false`, decoded batch by batch in loader workers (what
  `data.resident=auto` now chooses past `data.resident_max_gb`).

It reports each side's peak resident set size (the eval process's, and the largest of
its decoding workers') and its wall time, and the ratio of the two peaks; evaluation runs
in batches of 32. Both sides must give the same test accuracy. The decoded folder takes
3 x 224 x 224 bytes per image (0.42 GB at the default 3000). Run from the repository
root::

    .venv/bin/python benchmarks/eval_memory.py [--num-images 3000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_results import quick, record
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# Runs a command and prints the peak RSS (KiB) of its process tree's largest member:
# getrusage(RUSAGE_CHILDREN) covers the waited-for children and their waited-for children.
MEASURE = (
    "import resource, subprocess, sys; "
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)"
)


def write_held_out(root: Path, num_images: int, num_classes: int = 10, seed: int = 0) -> None:
    """Writes root/test/class_k/i.png: noisy colour fields of 224 x 224."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        folder = root / "test" / f"class_{i % num_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, size=3)
        pixels = np.clip(base + rng.normal(0, 30, size=(224, 224, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.png", compress_level=1)


def run(args: list[str]) -> None:
    """Runs `python run.py <args>`; stops the benchmark with its output if it fails."""
    done = subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args], capture_output=True, text=True, cwd=REPO
    )
    if done.returncode != 0:
        raise SystemExit(f"run.py {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")


def measured_eval(args: list[str]) -> tuple[float, float]:
    """Runs an eval in a measuring parent; returns (peak RSS in GB, wall seconds)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, str(REPO / "run.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"eval failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return int(done.stdout.split()[-1]) / 2**20, wall


def main() -> None:
    """Trains, writes the folder, evaluates both ways and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=1000 if quick() else 3000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="eval_memory_") as tmp:
        tmp = Path(tmp)
        # Batches of 32: at 224 px the activations of the default 512 take several GB,
        # which would hide the data's own share.
        common = [
            f"paths.output_dir={tmp}/outputs",
            "logger=none",
            "analysis.enabled=false",
            "trainer.eval_batch_size=32",
        ]
        run(
            [
                *common,
                f"hydra.run.dir={tmp}/train",
                "data=synthetic",
                "data.image_size=224",
                "data.num_samples=200",
                "model=timm",
                "model.name=resnet10t",
                "trainer.max_epochs=1",
            ]
        )
        write_held_out(tmp / "held_out", options.num_images)
        results = {}
        for side, resident in (("resident", "true"), ("streamed", "false")):
            run_dir = tmp / f"eval_{side}"
            peak_gb, wall = measured_eval(
                [
                    *common,
                    f"hydra.run.dir={run_dir}",
                    "mode=eval",
                    f"ckpt={tmp}/train/checkpoints/best.pt",
                    "eval.data=current",
                    "data=imagefolder",
                    f"data.root={tmp}/held_out",
                    f"data.resident={resident}",
                ]
            )
            accuracy = json.loads((run_dir / "metrics.json").read_text())["test/acc"]
            results[side] = (peak_gb, wall, accuracy)
    decoded_gb = options.num_images * 3 * 224**2 / 2**30
    print(f"held-out folder: {options.num_images} PNGs of 224 px, {decoded_gb:.2f} GB decoded")
    for side, (peak_gb, wall, accuracy) in results.items():
        print(f"  {side:9s} peak RSS {peak_gb:.2f} GB  wall {wall:.1f} s  test/acc {accuracy:.4f}")
    ratio = results["streamed"][0] / results["resident"][0]
    same = results["streamed"][2] == results["resident"][2]
    saved = results["resident"][0] - results["streamed"][0]
    print(f"streamed / resident peak RSS: {ratio:.2f} ({saved:.2f} GB less); same test/acc: {same}")
    record("eval_memory", "held-out eval peak RSS, streamed / resident", ratio)
    record("eval_memory", "held-out eval, same test/acc both ways", str(same))
    if not same:
        raise SystemExit("the two sides gave different test accuracies")


if __name__ == "__main__":
    main()
