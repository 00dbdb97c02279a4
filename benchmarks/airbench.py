"""Epoch time of `experiment=airbench94` in the runner against the same network trained by hand.

* runner: `python run.py experiment=airbench94 data=synthetic ...` in a subprocess
  (logger=none, no reports), as a user runs it. Its train time per epoch is the
  `epoch_time_s` of each epoch in last.pt's history: from the epoch's first batch to its
  loss read back to the host, so all its GPU work is done. Its whole epoch (train,
  validation, checkpoint, logging) is the time between two epochs' summary lines in
  run.log (millisecond stamps).
* hand-written: in this process, the same network (conf/model/airbench94.yaml, whitened
  from the same first 5000 train images), airbench's two optimizer groups (BatchNorm
  shifts at 64x the lr and 1/64 of the decay) and its triangular schedule written out,
  label-smoothed cross-entropy, autocast, channels_last, the train split resident on the
  device, and per batch one indexed copy that flips and translates by up to 2 pixels
  (reflect padding). No logging, no validation, no host sync before the epoch's end.

Both sides train on the same synthetic CIFAR-shaped split (conf/data/synthetic.yaml with
`--num-samples` images: 45010 train images with the default 56250), 32x32, 10 classes,
batches of 1024 with the incomplete last one dropped, for `--epochs` epochs per round. The
first epoch of every round is not timed (cuDNN autotuning, allocator, compile). The rounds
alternate the order (runner, hand, hand, runner, ...). The ratio is the hand-written
side's median train epoch time over the runner's: the goal is >= 0.95 (the runner's loop
costs at most 5%). The data are synthetic, so no CIFAR-10 accuracy is measured here.

    .venv/bin/python benchmarks/airbench.py                       # CPU, a small check
    python benchmarks/airbench.py --device cuda --num-samples 56250 --epochs 6 --rounds 2
    python benchmarks/airbench.py --device cuda --compile         # both sides compiled

Where the difference comes from: `--hand-augment runner` gives the hand-written loop the
runner's augmentation module (conf/aug via the recipe: Kornia's container around
`RandomCropFlip`) in place of its own indexed copy, and `--runner-set KEY=VALUE` adds an
override to the runner's command line (e.g. trainer.log_every_n_steps=1000).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_results import record
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from step_overhead import synchronize

import runner  # noqa: F401  (registers the config resolvers)
from runner.data.build import build_data
from runner.data.splits import DataSplits
from runner.training.checkpoint_io import load_checkpoint
from runner.training.host_memory import keep_freed_memory

REPO = Path(__file__).resolve().parent.parent
GOAL = 0.95
PAD = 2  # the recipe's translation: reflect padding, then a crop back to 32x32
# An epoch's summary line in run.log: "[2026-01-01 10:00:00,123][runner.reports.console]..."
EPOCH_LINE = re.compile(r"^\[([\d-]+ [\d:,]+)\]\[runner\.reports\.console\]\[INFO\] - epoch \d+/\d")


def overrides(args: argparse.Namespace) -> list[str]:
    """The command line of the runner side (and the config the hand-written side reads)."""
    return [
        "experiment=airbench94",
        "data=synthetic",
        f"data.num_samples={args.num_samples}",
        "logger=none",
        "analysis.enabled=false",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.device={args.device}",
        f"trainer.precision={args.precision}",
        f"trainer.compile={str(args.compile).lower()}",
        *args.runner_set,
    ]


def run_runner(args: argparse.Namespace, run_dir: Path) -> tuple[list[float], list[float]]:
    """Runs the runner once; returns its train epoch times and its whole-epoch times."""
    command = [sys.executable, "run.py", *overrides(args), f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the runner failed ({done.returncode}):\n{done.stderr[-3000:]}")
    history = load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"]["history"]
    train = [row["epoch_time_s"] for row in history]
    stamps = [
        datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for line in (run_dir / "run.log").read_text().splitlines()
        if (m := EPOCH_LINE.match(line))
    ]
    # Without the first epoch; the stamps' differences begin with the second one.
    return train[1:], list(np.diff(stamps))


def hand_crop_flip(
    images: torch.Tensor, generator: torch.Generator
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Returns a function: batch indices -> flipped, translated uint8 images, one copy."""
    _, channels, size, _ = images.shape
    device = images.device
    # Reflect padding as indices into the unpadded image: -1 -> 1, size -> size - 2.
    reflect = torch.arange(-PAD, size + PAD, device=device).abs()
    reflect = torch.where(reflect >= size, 2 * (size - 1) - reflect, reflect)
    steps = torch.arange(size, device=device)
    chan = torch.arange(channels, device=device).view(1, -1, 1, 1)

    def crop_flip(index: torch.Tensor) -> torch.Tensor:
        batch = index.numel()
        dy, dx = torch.randint(0, 2 * PAD + 1, (2, batch, 1), device=device, generator=generator)
        cols = steps + dx
        flip = torch.rand(batch, 1, device=device, generator=generator) < 0.5
        cols = torch.where(flip, cols.flip(-1), cols)
        rows, cols = reflect[steps + dy], reflect[cols]
        return images[index.view(-1, 1, 1, 1), chan, rows[:, None, :, None], cols[:, None, None, :]]

    return crop_flip


class HandWritten:
    """airbench's training loop, written out, on the runner's data and network config."""

    def __init__(
        self, cfg: DictConfig, data: DataSplits, device: torch.device, compiled: bool, augment: str
    ):
        self.images = data.train.images.to(device)
        self.labels = data.train.labels.to(device)
        self.device = device
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        model = instantiate(cfg.model)(num_classes=data.num_classes)
        model = model.to(device, memory_format=torch.channels_last)
        model.init_from_images(self.normalize(self.images[:5000]))
        self.model = torch.compile(model) if compiled else model
        lr, decay, mult = cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.norm_lr_mult
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        norms = [p for name, p in named if ".norm" in name]
        others = [p for name, p in named if ".norm" not in name]
        self.optimizer = torch.optim.SGD(
            [
                {"params": norms, "lr": lr * mult, "weight_decay": decay / mult},
                {"params": others, "lr": lr, "weight_decay": decay},
            ],
            momentum=cfg.optim.momentum,
            nesterov=True,
        )
        self.batch_size = cfg.trainer.batch_size
        self.batches = len(self.labels) // self.batch_size
        total = self.batches * cfg.trainer.max_epochs
        sched = cfg.sched
        points = [0, int(sched.peak_pct * total), total]
        factors = np.interp(np.arange(total + 1), points, [sched.start_ratio, 1, sched.end_ratio])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: float(factors[min(step, total)])
        )
        self.smoothing = cfg.loss.label_smoothing
        self.generator = torch.Generator(device).manual_seed(0)
        self.crop_flip = hand_crop_flip(self.images, self.generator)
        if augment == "runner":  # the runner's module, fed the uint8 batch as the runner does
            module = instantiate(cfg.aug, num_classes=data.num_classes).to(device).train()
            self.crop_flip = lambda index: module(self.images[index])
        bf16 = cfg.trainer.precision == "bf16"
        self.autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled=bf16)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in [0, 1]) -> normalised float, channels_last."""
        images = images.float() / 255 if images.dtype == torch.uint8 else images
        images = (images - self.mean) / self.std
        return images.contiguous(memory_format=torch.channels_last)

    def epoch(self) -> float:
        """Trains one epoch; returns its seconds (the device's work included)."""
        synchronize(self.device)
        start = time.perf_counter()
        self.model.train()
        order = torch.randperm(len(self.labels), device=self.device, generator=self.generator)
        for i in range(self.batches):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            inputs = self.normalize(self.crop_flip(index))
            with self.autocast():
                logits = self.model(inputs)
                loss = F.cross_entropy(logits, self.labels[index], label_smoothing=self.smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
        synchronize(self.device)
        return time.perf_counter() - start


def main() -> None:
    """Runs the comparison and prints the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default=None, help="32 | bf16 (default: bf16 on CUDA)")
    parser.add_argument("--num-samples", type=int, default=None, help="default 56250 on CUDA")
    parser.add_argument("--epochs", type=int, default=None, help="per round; default 6 on CUDA")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile both sides")
    parser.add_argument("--hand-augment", choices=["gather", "runner"], default="gather")
    parser.add_argument("--runner-set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.precision = args.precision or ("bf16" if cuda else "32")
    args.num_samples = args.num_samples or (56250 if cuda else 5000)
    args.epochs = args.epochs or (6 if cuda else 3)
    device = torch.device(args.device)
    keep_freed_memory()  # as a run sets it (trainer.keep_host_memory): a CPU step's memory
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides(args), "paths.run_dir=unused"])
    data = build_data(cfg.data)  # the hand-written side's, once for every round
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"{name}: airbench94, {args.precision}, compile={args.compile}, {args.epochs} epochs")

    times: dict[str, list[float]] = {"runner": [], "hand": [], "runner whole": []}
    images = 0
    with tempfile.TemporaryDirectory(prefix="airbench-") as tmp:
        for round_ in range(args.rounds):
            for side in ("runner", "hand") if round_ % 2 == 0 else ("hand", "runner"):
                if side == "runner":
                    train, whole = run_runner(args, Path(tmp) / f"round{round_}")
                    times["runner"] += train
                    times["runner whole"] += whole
                else:
                    hand = HandWritten(cfg, data, device, args.compile, args.hand_augment)
                    images = len(hand.labels)
                    times["hand"] += [hand.epoch() for _ in range(args.epochs)][1:]
                    del hand
                print(f"round {round_} {side}: " + ", ".join(f"{t:.3f}" for t in times[side]))
    runner_s, hand_s = statistics.median(times["runner"]), statistics.median(times["hand"])
    whole_s = statistics.median(times["runner whole"]) if times["runner whole"] else float("nan")
    ratio = hand_s / runner_s
    print(f"train epoch: runner {runner_s:.3f} s, hand-written {hand_s:.3f} s ({images} images)")
    print(f"runner's whole epoch (train, val, checkpoint, logs): {whole_s:.3f} s")
    print(f"hand-written / runner epoch time: {ratio:.3f} (goal >= {GOAL})")
    where = ", ".join(
        [name, args.precision]
        + ["compiled"] * args.compile
        + ["hand-written with the runner's augmentation"] * (args.hand_augment == "runner")
        + args.runner_set
    )
    record(
        "airbench",
        f"runner / hand-written train epoch speed ({where})",
        ratio,
        f">= {GOAL}",
        ratio >= GOAL,
        f"epoch {runner_s:.3f} s vs {hand_s:.3f} s, {images} images",
    )
    record(
        "airbench",
        f"runner whole epoch / its train time ({where})",
        whole_s / runner_s,
        note="per-epoch validation, checkpoint and logging on top of training",
    )


if __name__ == "__main__":
    main()
