"""Input pipeline at the limit: real data through the runner's loaders vs fixed synthetic tensors.

Two pairs, each timed side by side through the runner's real training step
(`runner.training.engine.train_one_epoch`: uint8 batch -> device -> Kornia aug -> normalise ->
timm resnet18 (channels_last) -> cross-entropy -> AdamW), on one model, in
interleaved rounds (the side that goes first alternates):

* digits: the default data set resident on the device, batched by index
  (`runner.data.loaders.ResidentLoader`, aug basic, 32x32, batch 128), vs one fixed random
  uint8 batch of the same shape fed again and again;
* image folder: 5,000 generated 64x64 JPEGs (10 classes) in a temporary folder, loaded
  with `runner.data.sets.imagefolder.load_imagefolder(resident=False)` and streamed by
  `runner.data.streaming.StreamingLoader` (2 decoding workers, as `data.num_workers`
  defaults; aug flip_crop, batch 128), vs a fixed batch of the same shape.

Goal: real / synthetic throughput >= 0.95 for each.

Then the augmentation stage alone, for the same two settings: the runner's Kornia
pipeline batched on the device vs the same augmentations with torchvision.transforms.v2
applied per sample in a conventional DataLoader with 2 workers (benchmarks/augment.py's
implementation): the speedup per image, goal >= 3x.

    .venv/bin/python benchmarks/input_pipeline.py [--rounds 6] [--steps 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from augment import build_kornia, build_v2, time_kornia, time_v2
from bench_results import quick, record
from hydra.utils import instantiate
from imagefolder_cache import write_gradient_jpeg
from step_overhead import load_group, synchronize, uniform_sampler

from runner.augment.normalize import Normalize
from runner.data.loaders import FixedBatches, ResidentLoader
from runner.data.sets.digits import load_digits
from runner.data.sets.imagefolder import load_imagefolder
from runner.data.sets.synthetic import make_synthetic
from runner.training import engine
from runner.training.optim import optimizer_from_config
from runner.training.parts import TrainingParts

GOAL_RATIO = 0.95
GOAL_SPEEDUP = 3.0
BATCH = 128


class Trainer:
    """The runner's training step with one model, fed by whichever loader it is given."""

    def __init__(self, aug: str, image_size: int, data, device: torch.device):
        model = instantiate(load_group("model", "resnet18"))(num_classes=data.num_classes)
        model = model.to(device, memory_format=torch.channels_last)
        optim_cfg = load_group("optim", "adamw")
        optimizer = optimizer_from_config(model, optim_cfg)
        self.device = device
        self.kwargs = dict(
            model=model,
            parts=TrainingParts(
                model=model,
                augment=build_kornia(aug, image_size, device),
                normalize=Normalize(data.mean, data.std, channels_last=True).to(device),
                loss_fn=torch.nn.CrossEntropyLoss(),
                optimizer=optimizer,
                scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
                scaler=torch.amp.GradScaler(device.type, enabled=False),
                ema=None,
            ),
            autocast=engine.make_autocast(device, "32"),
            device=device,
            settings=engine.StepSettings(log_every_n_steps=10),
            on_log=lambda *args: None,
        )

    def run(self, loader) -> float:
        """Trains one pass over `loader`; returns images per second."""
        synchronize(self.device)
        start = time.perf_counter()
        done = engine.train_one_epoch(loader=loader, **self.kwargs)
        synchronize(self.device)
        return done.seen / (time.perf_counter() - start)


def compare(name: str, trainer: Trainer, real, synthetic, rounds: int) -> tuple[float, ...]:
    """Interleaved rounds of real vs synthetic batches: median ratio, its spread, real img/s.

    `real(epoch)` and `synthetic()` return the loader of one round.
    """
    trainer.run(real(0))  # warm-up: allocator, workers, Kornia
    trainer.run(synthetic())
    rates = {"real": [], "synthetic": []}
    for round_index in range(1, rounds + 1):
        sides = ("real", "synthetic") if round_index % 2 else ("synthetic", "real")
        for side in sides:
            loader = real(round_index) if side == "real" else synthetic()
            rates[side].append(trainer.run(loader))
        real_rate, synthetic_rate = rates["real"][-1], rates["synthetic"][-1]
        ratio = real_rate / synthetic_rate
        print(
            f"  {name} round {round_index}: real {real_rate:7.1f} img/s, synthetic "
            f"{synthetic_rate:7.1f} img/s, ratio {ratio:.3f}",
            flush=True,
        )
    ratios = [r / s for r, s in zip(rates["real"], rates["synthetic"], strict=True)]
    return statistics.median(ratios), statistics.pstdev(ratios), statistics.median(rates["real"])


def write_jpegs(root: Path, count: int, size: int = 64, classes: int = 10) -> None:
    """root/train/class_k/i.jpg: smooth colour gradients plus noise, quality 90."""
    rng = np.random.default_rng(0)
    for i in range(count):
        path = root / "train" / f"class_{i % classes}" / f"{i:05d}.jpg"
        write_gradient_jpeg(path, rng, size, size)


def aug_speedup(preset: str, size: int, device: torch.device, repeats: int) -> tuple[float, float]:
    """Ms per batch of the Kornia preset (batched) and of per-sample v2 in 2 workers."""
    data = make_synthetic(
        num_samples=BATCH * 8, num_classes=10, image_size=size, val_fraction=0.0, test_fraction=0.0
    )
    images, labels = data.train.images, data.train.labels
    augment = build_kornia(preset, size, device)
    batch, batch_labels = images[:BATCH].to(device), labels[:BATCH].to(device)
    kornia_ms = time_kornia(augment, batch, batch_labels, device, repeats, warmup=2)
    v2_ms = time_v2(build_v2(preset, size), images, labels, BATCH, 2, batches=6)
    return kornia_ms, v2_ms


def main() -> None:
    """Runs both pairs and the aug-stage comparison; prints ratios and goals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3 if quick() else 6)
    parser.add_argument("--steps", type=int, default=4 if quick() else 6, help="batches/round")
    parser.add_argument("--images", type=int, default=5000, help="JPEGs in the folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    began = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
        f"resnet18, batch {BATCH}, {args.rounds} rounds x {args.steps} batches a side"
    )
    results = {}

    digits = load_digits(image_size=32)
    train = digits.train.to(device)
    trainer = Trainer("basic", 32, digits, device)
    fixed = torch.randint(0, 256, (BATCH, 3, 32, 32), dtype=torch.uint8, device=device)
    fixed_labels = torch.randint(0, 10, (BATCH,), device=device)

    def digits_real(epoch: int):
        sampler = uniform_sampler(train.labels.cpu(), args.steps, BATCH, seed=0)
        loader = ResidentLoader(train, BATCH, sampler, drop_last=True)
        loader.set_epoch(epoch)
        return loader

    results["digits (resident, 32x32, aug basic)"] = compare(
        "digits",
        trainer,
        digits_real,
        lambda: FixedBatches(fixed, fixed_labels, args.steps),
        args.rounds,
    )

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_jpegs(Path(tmp), args.images)
        print(f"wrote {args.images} 64x64 JPEGs in {time.perf_counter() - start:.1f} s")
        folder = load_imagefolder(tmp, image_size=64, resident=False, cache_dir=None, num_workers=2)
        trainer = Trainer("flip_crop", 64, folder, device)
        fixed = torch.randint(0, 256, (BATCH, 3, 64, 64), dtype=torch.uint8, device=device)
        sampler = uniform_sampler(folder.train.labels, args.steps, BATCH, seed=0)
        streaming = folder.train.loader(BATCH, device, sampler, drop_last=True)

        def folder_real(epoch: int):
            streaming.set_epoch(epoch)
            return streaming

        results["image folder (streamed JPEGs, 64x64, aug flip_crop)"] = compare(
            "folder",
            trainer,
            folder_real,
            lambda: FixedBatches(fixed, fixed_labels, args.steps),
            args.rounds,
        )

    print("\nreal / synthetic throughput (median of per-round ratios):")
    for name, (ratio, spread, real_rate) in results.items():
        ok = ratio >= GOAL_RATIO
        print(
            f"  {name}: {ratio:.3f} (spread {spread:.3f}; real {real_rate:.0f} img/s); "
            f"goal >= {GOAL_RATIO}: {'OK' if ok else 'MISSED'}"
        )
        record(
            "input_pipeline",
            f"real / synthetic img/s: {name}",
            ratio,
            goal=f">= {GOAL_RATIO}",
            passed=ok,
            note=f"spread {spread:.3f}, real {real_rate:.0f} img/s",
        )

    print("\naugmentation stage, batch 128: Kornia batched vs per-sample v2 (2 workers)")
    repeats = 5 if quick() else 10
    for preset, size in (("basic", 32), ("flip_crop", 64)):
        kornia_ms, v2_ms = aug_speedup(preset, size, device, repeats)
        speedup = v2_ms / kornia_ms
        ok = speedup >= GOAL_SPEEDUP
        times = f"kornia {kornia_ms:.1f} ms, v2 {v2_ms:.1f} ms per batch of {BATCH}"
        print(
            f"  {preset} {size}x{size}: {times}: {speedup:.1f}x; "
            f"goal >= {GOAL_SPEEDUP:.0f}x: {'OK' if ok else 'MISSED'}"
        )
        record(
            "input_pipeline",
            f"aug stage speedup vs per-sample v2: {preset} {size}x{size}",
            f"{speedup:.1f}x",
            goal=f">= {GOAL_SPEEDUP:.0f}x",
            passed=ok,
            note=times,
        )
    print(f"wall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
