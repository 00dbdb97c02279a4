"""Decode throughput of an image folder: the first run (decode + write the cache) vs a
cached run (read the cache file).

Writes a folder of `--num-images` JPEGs (10 classes, sizes 96..160 px, smooth colour
fields plus noise, so they compress like photos rather than like random pixels) into a
temporary folder, then loads it with `runner.data.sets.imagefolder.load_imagefolder` as a run
would (`resident=true`, `--workers` decoding processes, `image_size` 64):

* first run: every file is decoded and resized, and the uint8 tensor is written to the
  cache folder;
* cached run: the in-process cache is cleared, so the data comes from the cache file,
  as in a new run (or a new sweep job) on the same folder;
* in-process: a second load in the same process (Hydra's basic launcher and Optuna run
  sweep jobs in one process).

Each is timed `--repeats` times (median reported); the first run gets a fresh cache
folder each time. The first run's data phase is then compared with the way it was done
before, side by side on the same files: decoding in 2 DataLoader worker processes (each
starts, and imports torchvision, anew) and writing the cache file before returning, vs
decoding on 2 threads (torchvision's and Pillow's decoders let other threads run) with
the cache file written on a thread of its own while training starts.
Run from the repository root (about a minute on 2 CPU cores)::

    .venv/bin/python benchmarks/imagefolder_cache.py
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_results import record
from PIL import Image

from runner.data import decode_cache, decoding
from runner.data.sets.imagefolder import load_imagefolder


def write_folder(root: Path, num_images: int, num_classes: int = 10, seed: int = 0) -> int:
    """Writes root/train/class_k/i.jpg; returns the total size in bytes."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(num_images):
        height, width = rng.integers(96, 161, size=2)
        path = root / "train" / f"class_{i % num_classes}" / f"{i:05d}.jpg"
        total += write_gradient_jpeg(path, rng, height, width)
    return total


def write_gradient_jpeg(path: Path, rng: np.random.Generator, height: int, width: int) -> int:
    """A smooth colour gradient plus noise, as a JPEG of quality 90; returns its size."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(0, 255, size=3)
    slope = rng.uniform(-120, 120, size=(2, 3))
    image = base + y[..., None] * slope[0] + x[..., None] * slope[1]
    image += rng.normal(0, 12, size=image.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path.stat().st_size


def decode_in_processes(records, image_size: int, workers: int) -> torch.Tensor:
    """The earlier decoder: a DataLoader over the records with `workers` processes."""
    images = torch.empty((len(records), 3, image_size, image_size), dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(
        records, batch_size=64, num_workers=workers, collate_fn=_DecodeChunk(image_size)
    )
    start = 0
    for chunk in loader:
        images[start : start + len(chunk)] = chunk
        start += len(chunk)
    return images


class _DecodeChunk:
    """Decodes a list of records in a worker process (picklable for DataLoader)."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, records) -> torch.Tensor:
        return torch.stack([decoding.decode_record(r, self.image_size) for r in records])


def compare_decoders(records, image_size: int, workers: int, out: Path, rounds: int) -> None:
    """The data phase before (processes + cache written first) and now (threads)."""
    before, now = [], []
    for index in range(rounds):
        start = time.perf_counter()
        images = decode_in_processes(records, image_size, workers)
        torch.save({"train": images}, out / f"before{index}.pt")
        before.append(time.perf_counter() - start)
        start = time.perf_counter()
        images, _, _ = decoding.decode_all(records, image_size, "skip", workers)
        now.append(time.perf_counter() - start)  # the cache file is written beside training
    b, n = statistics.median(before), statistics.median(now)
    print(
        f"data phase, {len(records)} files, {workers} workers: before {b:.2f} s "
        f"(processes, cache written first), now {n:.2f} s (threads, cache beside "
        f"training): {b / n:.1f}x"
    )
    record(
        "imagefolder_cache",
        f"data phase of a first run, {len(records)} files: before / now",
        b / n,
        note=f"before {b:.2f} s (decode in {workers} processes + write the cache), "
        f"now {n:.2f} s (decode on {workers} threads; the cache written beside training)",
    )


def timed_load(root: Path, cache_dir: Path, workers: int, image_size: int) -> float:
    start = time.perf_counter()
    data = load_imagefolder(
        str(root),
        image_size=image_size,
        resident=True,
        cache_dir=str(cache_dir),
        num_workers=workers,
        val_fraction=0.1,
        test_fraction=0.1,
    )
    seconds = time.perf_counter() - start
    assert len(data.train) + len(data.val) + len(data.test) > 0
    decode_cache.wait_for_cache_writes()  # a later load in this benchmark reads the file
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="imagefolder_bench_") as tmp:
        root = Path(tmp) / "folder"
        size = write_folder(root, args.num_images)
        print(
            f"{args.num_images} JPEGs, 96..160 px, {size / 2**20:.1f} MiB; decoded to "
            f"{args.image_size}x{args.image_size}, {args.workers} workers"
        )
        first, cached, in_process = [], [], []
        for repeat in range(args.repeats):
            cache_dir = Path(tmp) / f"cache{repeat}"
            decode_cache.clear_memory_cache()
            first.append(timed_load(root, cache_dir, args.workers, args.image_size))
            decode_cache.clear_memory_cache()
            cached.append(timed_load(root, cache_dir, args.workers, args.image_size))
            in_process.append(timed_load(root, cache_dir, args.workers, args.image_size))
            (cache_file,) = cache_dir.glob("*.pt")
            cache_mib = cache_file.stat().st_size / 2**20
            shutil.rmtree(cache_dir)

    n = args.num_images
    rows = [
        ("first run (decode + write cache)", statistics.median(first)),
        ("cached run (read cache file)", statistics.median(cached)),
        ("same process (in-memory cache)", statistics.median(in_process)),
    ]
    print(f"cache file: {cache_mib:.1f} MiB")
    print(f"{'':34s} {'seconds':>9s} {'img/s':>10s}")
    for name, seconds in rows:
        print(f"{name:34s} {seconds:9.3f} {n / seconds:10.0f}")
    print(f"cached / first throughput: {rows[0][1] / rows[1][1]:.1f}x")
    with tempfile.TemporaryDirectory(prefix="imagefolder_bench_") as tmp:
        root = Path(tmp) / "folder"
        write_folder(root, args.num_images)
        records = sorted(str(p) for p in root.rglob("*.jpg"))
        compare_decoders(records, args.image_size, args.workers, Path(tmp), args.repeats)


if __name__ == "__main__":
    main()
