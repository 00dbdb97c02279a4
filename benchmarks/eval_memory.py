"""Peak memory of `mode=eval` on a held-out image folder: decoded whole vs streamed.

Trains a small checkpoint at 224 px (synthetic data, one epoch, `logger=none`), writes a
held-out folder of `--num-images` PNGs (10 classes) beside it, then evaluates the
checkpoint on that folder with `eval.data=current data=imagefolder`, each side in its own
process:

* resident: `data.resident=true`, the folder decoded into memory whole (what every
  held-out folder got before);
* streamed: `data.resident=false`, decoded batch by batch in loader workers (what
  `data.resident=auto` now chooses past `data.resident_max_gb`).

Each side's memory is sampled every 0.1 s as the proportional set size (PSS: shared
pages split between the processes that share them) of the eval process and of its whole
process tree (the decoding workers included). Both sides run at each folder size
(`--num-images`, 1500 and 9000 by default: 0.21 and 1.26 GB decoded, at 3 x 224 x 224
bytes an image); the script reports each side's peaks and wall time, how much each
side's peak grows with the folder, and the ratio of the two trees' peaks at the larger
size. Evaluation runs in batches of 32. Both sides must give the same test accuracy.
Run from the repository root (about 7 minutes on 2 cores)::

    .venv/bin/python benchmarks/eval_memory.py [--num-images 1500 9000]
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
import psutil
from bench_results import record
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


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


def pss(process: psutil.Process) -> int:
    """A process's proportional set size in bytes; 0 once it has gone."""
    try:
        return process.memory_full_info().pss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def measured_eval(args: list[str], log_file: Path) -> tuple[float, float, float]:
    """Runs an eval (its output to `log_file`), sampling its memory.

    Returns:
        The peak PSS of the eval process and of its process tree (GB), and the wall time.
    """
    start = time.perf_counter()
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "run.py"), *args], stdout=log, stderr=log, cwd=REPO
        )
        main, peak_main, peak_tree = psutil.Process(proc.pid), 0, 0
        while proc.poll() is None:
            own = pss(main)
            try:
                workers = main.children(recursive=True)
            except psutil.NoSuchProcess:
                workers = []
            peak_main = max(peak_main, own)
            peak_tree = max(peak_tree, own + sum(pss(w) for w in workers))
            time.sleep(0.1)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"eval failed:\n{log_file.read_text()[-3000:]}")
    return peak_main / 2**30, peak_tree / 2**30, wall


def main() -> None:
    """Trains, writes the folder, evaluates both ways at each size and prints the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, nargs="+", default=[1500, 9000])
    options = parser.parse_args()
    sizes = sorted(options.num_images)
    rows = []
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
        for count in sizes:
            write_held_out(tmp / f"held_out_{count}", count)
            for side, resident in (("resident", "true"), ("streamed", "false")):
                run_dir = tmp / f"eval_{side}_{count}"
                peak_main, peak_tree, wall = measured_eval(
                    [
                        *common,
                        f"hydra.run.dir={run_dir}",
                        "mode=eval",
                        f"ckpt={tmp}/train/checkpoints/best.pt",
                        "eval.data=current",
                        "data=imagefolder",
                        f"data.root={tmp}/held_out_{count}",
                        f"data.resident={resident}",
                    ],
                    tmp / f"eval_{side}_{count}.log",
                )
                accuracy = json.loads((run_dir / "metrics.json").read_text())["test/acc"]
                rows.append((count, side, peak_main, peak_tree, wall, accuracy))
    print("held-out folder of 224-px PNGs, eval in batches of 32; peak PSS in GB")
    print("images  decoded  side      eval process  with workers  wall    test/acc")
    for count, side, peak_main, peak_tree, wall, accuracy in rows:
        decoded = count * 3 * 224**2 / 2**30
        print(
            f"{count:6d}  {decoded:7.2f}  {side:8s}  {peak_main:12.2f}  {peak_tree:12.2f}  "
            f"{wall:5.1f} s  {accuracy:.4f}"
        )
    tree = {(count, side): peak_tree for count, side, _, peak_tree, _, _ in rows}
    accuracy = {(count, side): acc for count, side, _, _, _, acc in rows}
    same = all(accuracy[(n, "resident")] == accuracy[(n, "streamed")] for n in sizes)
    small, large = sizes[0], sizes[-1]
    for side in ("resident", "streamed"):
        growth = tree[(large, side)] - tree[(small, side)]
        print(f"{side}: the process tree's peak grows {growth:+.2f} GB from {small} to {large}")
        record("eval_memory", f"{side} peak PSS growth, {small} -> {large} images (GB)", growth)
    ratio = tree[(large, "streamed")] / tree[(large, "resident")]
    print(f"streamed / resident peak PSS of the process tree at {large} images: {ratio:.2f}")
    print(f"same test/acc both ways at every size: {same}")
    record("eval_memory", f"streamed / resident peak PSS at {large} images", ratio)
    if not same:
        raise SystemExit("the two sides gave different test accuracies")


if __name__ == "__main__":
    main()
