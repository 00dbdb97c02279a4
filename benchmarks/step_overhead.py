"""Step overhead of the runner's training loop against a hand-written PyTorch loop.

Measures steady-state training throughput (images/s) of two loops that do the same work:

* runner: the real `runner.training.engine.train_one_epoch`, called as
  `runner.training.loop.fit` calls
  it with the default trainer settings: fed by a `runner.data.loaders.ResidentLoader` with a
  runner sampler, logging through `runner.reports.console.ProgressDisplay.on_log` every 10
  batches, stepping a `runner.training.optim.cosine_schedule`, asking a
  `runner.training.signals.GracefulStop` after every step, with the default NaN guard;
* hand-written: a minimal loop that indexes the batch, divides by 255, runs the Kornia
  pipeline under no_grad, normalises, runs forward, cross-entropy, backward, the
  optimizer step and the scheduler step, and nothing else.

Both sides train their own copy of the same model (timm resnet18 from conf/model, with
the data's 10 classes, channels_last) with the same augmentation (conf/aug/basic.yaml:
Kornia RandomAffine, built through `runner.augment.device.DeviceAugment`), the same
normalisation, optimizer (conf/optim/adamw.yaml with the runner's weight-decay parameter
groups), schedule (conf/sched/cosine.yaml), precision and batch size, on the digits data
(`runner.data.sets.digits.load_digits`, 32x32) resident on the device and batched by index. Every
round both sides draw the same sample order (uniform draws of `runner.data.samplers`'
WeightedClassSampler with power 0, so an epoch has exactly `--steps` batches).

The machine may be noisy, so both sides run in one process, interleaved: each round runs
both sides once, and the side that goes first alternates (ABBA...). Each side first runs
`--warmup-steps` untimed batches. The reported ratio is the median runner throughput over
the median hand-written throughput; the goal is >= 0.97, i.e. the runner's loop (metric
accumulation, logging hook, loader, scaler, accumulation logic) costs at most 3%. On the
CPU the minor page faults per batch of each side are printed too: they do not depend on
how busy the machine is, and memory that the allocator hands back to the OS between
steps (to be faulted in and zeroed again) shows up there.

Run it from the repository root (about 2 minutes on 2 idle CPU cores with the defaults)::

    .venv/bin/python benchmarks/step_overhead.py
    .venv/bin/python benchmarks/step_overhead.py --device cuda --steps 200
    .venv/bin/python benchmarks/step_overhead.py --device cuda --model resnet50 \
        --data synthetic --image-size 224 --batch-size 256 --precision bf16

`--data synthetic` trains on `runner.data.sets.synthetic.make_synthetic` at
`--image-size` (conf/data/synthetic.yaml's other defaults) instead of digits at 32x32;
`--model` names a file of conf/model.

On CUDA the timings are bracketed by `torch.cuda.synchronize`. On an interactive
terminal `ProgressDisplay` draws a rich progress bar (its refresh thread is part of what
is measured); elsewhere it writes log lines, which are not shown here because the
benchmark configures no logging handler.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from augment import build_kornia
from bench_results import record
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from runner.augment.normalize import Normalize
from runner.data.loaders import ResidentLoader
from runner.data.samplers import WeightedClassSampler
from runner.data.sets.digits import load_digits
from runner.data.sets.synthetic import make_synthetic
from runner.data.splits import DataSplits, Split
from runner.reports import console
from runner.training import engine
from runner.training.optim import optimizer_from_config
from runner.training.parts import TrainingParts
from runner.training.signals import GracefulStop

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GOAL = 0.97
LOG_EVERY_N_STEPS = 10
DIGITS_SIZE = 32  # conf/data/digits.yaml's image_size


def load_group(group: str, option: str) -> DictConfig:
    """One config group's node as a run composes it, e.g. ("optim", "adamw").

    Composed, not read as a file: an option's defaults list brings in keys of its own
    (conf/optim/_shared.yaml's), which a file read alone would leave out or mistake.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"{group}={option}"])[group]


def resolve_device(device: str) -> torch.device:
    """Turns --device into a torch device; auto = CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_model(name: str, num_classes: int, device: torch.device) -> nn.Module:
    """conf/model/<name>.yaml's model, channels_last on the device (as the runner builds it)."""
    model = instantiate(load_group("model", name))(num_classes=num_classes)
    return model.to(device, memory_format=torch.channels_last)


def minor_faults() -> int | None:
    """Minor page faults of this process so far; None where the OS does not say."""
    if sys.platform == "win32":
        return None
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def synchronize(device: torch.device) -> None:
    """Waits for queued device work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def uniform_sampler(
    labels: torch.Tensor, num_batches: int, batch_size: int, seed: int
) -> WeightedClassSampler:
    """A runner sampler whose epochs are `num_batches` full batches of uniform draws.

    Args:
        labels: Train labels (on the CPU).
        num_batches: Batches per epoch.
        batch_size: Samples per batch.
        seed: Base seed; epoch e draws with seed + e.

    Returns:
        A `WeightedClassSampler` with power 0 (every sample equally likely).
    """
    return WeightedClassSampler(labels, seed=seed, power=0.0, num_samples=num_batches * batch_size)


@dataclass
class Side:
    """One side of the comparison: its model and training objects."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    augment: nn.Module


def build_side(
    model: nn.Module,
    device: torch.device,
    total_steps: int,
    steps_per_epoch: int,
    image_size: int,
) -> Side:
    """Builds the optimizer, schedule and augmentation of one side from conf/.

    Args:
        model: This side's model, on the device.
        device: Where the augmentation runs.
        total_steps: Optimizer steps this side will take (warm-up and rounds).
        steps_per_epoch: Optimizer steps per round.
        image_size: Side of the data's images (the augmentation's output size).

    Returns:
        The side.
    """
    optim_cfg = load_group("optim", "adamw")
    optimizer = optimizer_from_config(model, optim_cfg)
    scheduler = instantiate(load_group("sched", "cosine"))(
        optimizer=optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch
    )
    # Composed as a run composes it: the preset's defaults list and ${data.image_size}.
    augment = build_kornia("basic", image_size, device)
    return Side(model, optimizer, scheduler, augment)


class RunnerLoop:
    """The runner's training loop: `engine.train_one_epoch` as `runner.training.loop.fit` calls it.

    Args:
        side: Model and training objects.
        data: The data set (for the normalisation statistics and class counts).
        train: The train split, resident on the device.
        device: The device.
        precision: "32" or "bf16".
        batch_size: Samples per batch.
        rounds: Number of timed rounds (for the progress label).
        seed: Seed of the sampler.
    """

    name = "runner"

    def __init__(
        self,
        side: Side,
        data: DataSplits,
        train: Split,
        device: torch.device,
        precision: str,
        batch_size: int,
        rounds: int,
        seed: int,
    ):
        self.side = side
        self.train = train
        self.device = device
        self.batch_size = batch_size
        self.seed = seed
        self.normalize = Normalize(data.mean, data.std, channels_last=True).to(device)
        self.loss_fn = instantiate(load_group("loss", "ce"))(
            class_counts=data.class_counts().to(device)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)
        self.autocast = engine.make_autocast(device, precision)
        self.parts = TrainingParts(
            model=side.model,
            augment=side.augment,
            normalize=self.normalize,
            loss_fn=self.loss_fn,
            optimizer=side.optimizer,
            scheduler=side.scheduler,
            scaler=self.scaler,
            ema=None,
        )
        self.progress = console.ProgressDisplay(max_epochs=rounds)
        # Not entered (no signal handlers): only its per-step check is part of the loop.
        self.stop = GracefulStop()
        self.nan_guard = engine.NanGuard()  # trainer.nan_policy's default, "stop"

    def run(self, epoch: int, num_batches: int) -> float:
        """Trains `num_batches` batches of epoch `epoch`; returns the seconds taken."""
        sampler = uniform_sampler(self.train.labels.cpu(), num_batches, self.batch_size, self.seed)
        loader = ResidentLoader(self.train, self.batch_size, sampler, drop_last=True)
        loader.set_epoch(epoch)
        self.progress.start_epoch(epoch, len(loader), self.batch_size)
        synchronize(self.device)
        start = time.perf_counter()
        done = engine.train_one_epoch(
            model=self.side.model,
            loader=loader,
            parts=self.parts,
            autocast=self.autocast,
            device=self.device,
            settings=engine.StepSettings(log_every_n_steps=LOG_EVERY_N_STEPS),
            on_log=self.progress.on_log,
            should_stop=self.stop.requested,
            nan_guard=self.nan_guard,
        )
        synchronize(self.device)
        seconds = time.perf_counter() - start
        self.progress.end_epoch(f"train loss {done.loss:.4f} acc {done.acc:.4f}")
        if done.batches != num_batches:
            raise RuntimeError(f"runner ran {done.batches} batches, expected {num_batches}")
        return seconds


class HandWrittenLoop:
    """A minimal plain PyTorch loop doing the same work as the runner's.

    Args:
        side: Model and training objects; only the Kornia pipeline of `side.augment`
            is used (the loop divides by 255, disables autograd and draws the Kornia
            parameters on the batch's device itself).
        data: The data set (for the normalisation statistics).
        train: The train split, resident on the device.
        device: The device.
        precision: "32" or "bf16".
        batch_size: Samples per batch.
        seed: Seed of the sampler.
    """

    name = "hand-written"

    def __init__(
        self,
        side: Side,
        data: DataSplits,
        train: Split,
        device: torch.device,
        precision: str,
        batch_size: int,
        seed: int,
    ):
        self.side = side
        self.train = train
        self.device = device
        self.batch_size = batch_size
        self.seed = seed
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.kornia = side.augment.pipeline
        self.autocast: Callable[[], contextlib.AbstractContextManager] = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            if precision == "bf16"
            else contextlib.nullcontext
        )

    def run(self, epoch: int, num_batches: int) -> float:
        """Trains `num_batches` batches of epoch `epoch`; returns the seconds taken."""
        model, optimizer, scheduler = self.side.model, self.side.optimizer, self.side.scheduler
        images, labels = self.train.images, self.train.labels
        sampler = uniform_sampler(labels.cpu(), num_batches, self.batch_size, self.seed)
        model.train()
        self.kornia.train()
        synchronize(self.device)
        start = time.perf_counter()
        order = sampler.indices(epoch).to(self.device, non_blocking=True)
        for first in range(0, num_batches * self.batch_size, self.batch_size):
            index = order[first : first + self.batch_size]
            x, y = images[index].float().div_(255.0), labels[index]
            with torch.no_grad(), torch.device(self.device):
                # Parameters drawn with the batch's device as the default device, as
                # DeviceAugment does (else Kornia copies them via the host on CUDA).
                x = self.kornia(x, params=self.kornia.forward_parameters(x.shape))
            x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
            with self.autocast():
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        synchronize(self.device)
        return time.perf_counter() - start


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per side")
    parser.add_argument("--steps", type=int, default=15, help="timed batches per round")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed batches per side")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "32", "bf16"),
        help="auto = the runner's default: bf16 autocast on CUDA that supports it, else 32",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="resnet18", help="a file of conf/model")
    parser.add_argument("--data", default="digits", choices=("digits", "synthetic"))
    parser.add_argument("--image-size", type=int, default=None, help="synthetic only (default 224)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1 or args.warmup_steps < 0 or args.batch_size < 1:
        parser.error("--rounds, --steps and --batch-size must be >= 1, --warmup-steps >= 0")
    if not (CONF_DIR / "model" / f"{args.model}.yaml").is_file():
        parser.error(f"--model {args.model}: no conf/model/{args.model}.yaml")
    if args.data == "digits" and args.image_size not in (None, DIGITS_SIZE):
        parser.error(f"--image-size applies to --data synthetic; digits are {DIGITS_SIZE} px")
    args.image_size = args.image_size or (DIGITS_SIZE if args.data == "digits" else 224)
    return args


def main(argv: list[str] | None = None) -> float:
    """Runs the benchmark, prints the table and returns the throughput ratio."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.precision == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        args.precision = "bf16" if bf16 else "32"
    torch.manual_seed(args.seed)
    if args.data == "digits":
        data = load_digits(image_size=DIGITS_SIZE)  # conf/data/digits.yaml's defaults
    else:
        data = make_synthetic(image_size=args.image_size)  # conf/data/synthetic.yaml's
    train = data.train.to(device)
    model = build_model(args.model, data.num_classes, device)
    total_steps = args.warmup_steps + args.rounds * args.steps
    runner_side, hand_side = (
        build_side(m, device, total_steps, args.steps, args.image_size)
        for m in (model, copy.deepcopy(model))
    )
    loops = (
        RunnerLoop(
            runner_side,
            data,
            train,
            device,
            args.precision,
            args.batch_size,
            args.rounds,
            args.seed,
        ),
        HandWrittenLoop(hand_side, data, train, device, args.precision, args.batch_size, args.seed),
    )

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    display = "rich progress bar" if console.is_terminal() else "log lines (not shown)"
    print(
        f"device {device} ({where}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, precision {args.precision}"
    )
    print(
        f"{args.model} channels_last, aug basic, batch {args.batch_size}, {len(train)} "
        f"{args.data} train images at {args.image_size} px; {args.rounds} rounds x "
        f"{args.steps} batches per side after "
        f"{args.warmup_steps} warm-up batches; on_log every {LOG_EVERY_N_STEPS}: {display}"
    )
    began = time.perf_counter()
    if args.warmup_steps:
        for loop in loops:
            loop.run(epoch=0, num_batches=args.warmup_steps)

    rates: dict[str, list[float]] = {loop.name: [] for loop in loops}
    faults: dict[str, list[float]] = {loop.name: [] for loop in loops}
    header = f"{'round':>5}  {'first':<12}  {'runner img/s':>12}  {'hand img/s':>10}  {'ratio':>6}"
    print(header)
    print("-" * len(header))
    images_per_round = args.steps * args.batch_size
    for round_index in range(1, args.rounds + 1):
        order = loops if round_index % 2 else loops[::-1]
        for loop in order:
            faults_before = minor_faults()
            seconds = loop.run(epoch=round_index, num_batches=args.steps)
            rates[loop.name].append(images_per_round / seconds)
            if faults_before is not None:
                faults[loop.name].append((minor_faults() - faults_before) / args.steps)
        runner_rate, hand_rate = rates["runner"][-1], rates["hand-written"][-1]
        print(
            f"{round_index:>5}  {order[0].name:<12}  {runner_rate:>12.1f}  {hand_rate:>10.1f}"
            f"  {runner_rate / hand_rate:>6.3f}",
            flush=True,
        )
    runner_median = statistics.median(rates["runner"])
    hand_median = statistics.median(rates["hand-written"])
    ratio = runner_median / hand_median
    paired = statistics.median(
        r / h for r, h in zip(rates["runner"], rates["hand-written"], strict=True)
    )
    print("-" * len(header))
    print(f"{'median':>5}  {'':<12}  {runner_median:>12.1f}  {hand_median:>10.1f}  {ratio:>6.3f}")
    print(
        f"median of per-round ratios: {paired:.3f}; wall time {time.perf_counter() - began:.0f} s"
    )
    if device.type == "cpu" and faults["runner"]:
        print(
            f"minor page faults per batch (median): runner "
            f"{statistics.median(faults['runner']):.0f}, hand-written "
            f"{statistics.median(faults['hand-written']):.0f}"
        )
    print(f"runner/hand-written throughput ratio: {ratio:.3f} (goal >= {GOAL})")
    record(
        "step_overhead",
        "runner loop / hand-written loop img/s",
        ratio,
        goal=f">= {GOAL}",
        passed=ratio >= GOAL,
        note=f"median of per-round ratios {paired:.3f}; {args.model}, {args.data} "
        f"{args.image_size} px, batch {args.batch_size}, {args.precision}; "
        f"{args.rounds} rounds x {args.steps} batches, {where}",
    )
    return ratio


if __name__ == "__main__":
    main()
