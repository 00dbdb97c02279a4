"""Options that should speed training up, each measured on and off, side by side.

Every option is timed through the runner's training step (`runner.training.engine.train_one_epoch`
on one fixed uint8 batch resident on the device: Kornia aug basic, normalisation, timm
resnet18, cross-entropy, AdamW) or its evaluation pass (`runner.training.engine.evaluate`), in
interleaved rounds (the side that goes first alternates), and reported as on/off
throughput (> 1 = the option pays):

* trainer.channels_last: NHWC model and batches vs NCHW;
* trainer.precision=bf16: bf16 autocast vs float32;
* trainer.compile: `torch.compile(model)` vs eager; the compile time (the first compiled
  steps, which trace and generate code) is reported apart;
* trainer.eval_batch_size: evaluation of the digits val+test images in batches of 512
  (the default) vs 64;
* torch.backends.cudnn.benchmark (CUDA only; "n/a on CPU" otherwise): the cuDNN
  autotuner on vs off;
* trainer.keep_host_memory: glibc malloc keeps freed blocks (the runner's default) vs
  glibc's own adaptive thresholds, on the step above and on 224x224 images in batches of
  32. glibc cannot switch back within a process, so each round times both sides in a
  fresh child process (warm-up first), in alternating order.

    .venv/bin/python benchmarks/options.py [--rounds 5] [--steps 4] [--skip-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from augment import build_kornia
from bench_results import quick, record
from hydra.utils import instantiate
from step_overhead import load_group, synchronize

from runner.augment.normalize import Normalize
from runner.data.loaders import FixedBatches
from runner.data.sets.digits import load_digits
from runner.training import engine
from runner.training.host_memory import keep_freed_memory
from runner.training.metrics import build_metrics
from runner.training.optim import optimizer_from_config
from runner.training.parts import TrainingParts

BATCH, SIZE, CLASSES = 128, 32, 10


def make_step(
    device: torch.device,
    channels_last=True,
    precision="32",
    compile_=False,
    size: int = SIZE,
    batch: int = BATCH,
):
    """A function that trains `steps` batches with these options; returns img/s."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = instantiate(load_group("model", "resnet18"))(num_classes=CLASSES)
    model = model.to(device, memory_format=memory_format)
    optim_cfg = load_group("optim", "adamw")
    optimizer = optimizer_from_config(model, optim_cfg)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, CLASSES, (batch,), device=device)
    kwargs = dict(
        model=torch.compile(model) if compile_ else model,
        parts=TrainingParts(
            model=model,
            augment=build_kornia("basic", size, device),
            normalize=Normalize((0.5,) * 3, (0.25,) * 3, channels_last=channels_last).to(device),
            loss_fn=torch.nn.CrossEntropyLoss(),
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
            scaler=torch.amp.GradScaler(device.type, enabled=False),
            ema=None,
        ),
        autocast=engine.make_autocast(device, precision),
        device=device,
    )

    def run(steps: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        engine.train_one_epoch(loader=FixedBatches(images, labels, steps), **kwargs)
        synchronize(device)
        return steps * batch / (time.perf_counter() - start)

    return run


def make_eval(device: torch.device, batch_size: int):
    """A function that evaluates the digits val+test images in `batch_size` batches."""
    data = load_digits(image_size=SIZE)
    images = torch.cat([data.val.images, data.test.images]).to(device)
    labels = torch.cat([data.val.labels, data.test.labels]).to(device)
    torch.manual_seed(0)
    model = instantiate(load_group("model", "resnet18"))(num_classes=CLASSES)
    model = model.to(device, memory_format=torch.channels_last)
    metrics = build_metrics(CLASSES).to(device)
    normalize = Normalize(data.mean, data.std, channels_last=True).to(device)
    batches = [
        (images[i : i + batch_size], labels[i : i + batch_size])
        for i in range(0, len(labels), batch_size)
    ]

    def run(_steps: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        engine.evaluate(
            model=model,
            loader=batches,
            normalize=normalize,
            metrics=metrics,
            autocast=contextlib.nullcontext,
            device=device,
        )
        synchronize(device)
        return len(labels) / (time.perf_counter() - start)

    return run


def inductor_cache_state() -> str:
    """Whether inductor's on-disk cache already holds compiled code (a warm cache)."""
    default = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    folder = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR", default))
    files = sum(1 for _ in folder.rglob("*.so")) if folder.is_dir() else 0
    if files:
        return f"inductor cache warm: {files} compiled modules in {folder} from earlier runs"
    return "inductor cache cold"


def compare(
    name: str, on: Callable, off: Callable, rounds: int, steps: int, warm_up: bool = True
) -> float:
    """Interleaved rounds; prints and returns the median per-round on/off throughput."""
    if warm_up:
        on(1), off(1)
    ratios, rates = [], {"on": [], "off": []}
    for round_index in range(rounds):
        sides = (("on", on), ("off", off)) if round_index % 2 else (("off", off), ("on", on))
        for side, run in sides:
            rates[side].append(run(steps))
        ratios.append(rates["on"][-1] / rates["off"][-1])
    ratio = statistics.median(ratios)
    on_rate, off_rate = statistics.median(rates["on"]), statistics.median(rates["off"])
    spread = statistics.pstdev(ratios)
    print(
        f"{name:<34} on {on_rate:8.1f} img/s  off {off_rate:8.1f} img/s  "
        f"on/off {ratio:.3f} (spread {spread:.3f})",
        flush=True,
    )
    verdict = "pays" if ratio > 1.03 else "does not pay" if ratio < 0.97 else "no difference"
    record(
        "options",
        f"{name}: on/off img/s",
        ratio,
        note=f"{verdict} here; on {on_rate:.0f}, off {off_rate:.0f} img/s, spread {spread:.3f}",
    )
    return ratio


def host_memory_child(device: torch.device, keep: bool, steps: int, size: int, batch: int):
    """One side of the keep_host_memory comparison: prints the img/s of warm steps."""
    if keep:
        keep_freed_memory()
    step = make_step(device, size=size, batch=batch)
    step(2)  # warm-up
    print(json.dumps({"img_per_s": statistics.median(step(steps) for _ in range(3))}))


def compare_host_memory(device: torch.device, rounds: int, steps: int, size: int, batch: int):
    """keep_host_memory on/off, each side in a fresh process per round; prints the ratio."""

    def child(side: str) -> float:
        command = [
            sys.executable,
            __file__,
            "--device",
            str(device),
            "--steps",
            str(steps),
            "--host-memory-child",
            side,
            str(size),
            str(batch),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])["img_per_s"]

    return compare(
        f"keep_host_memory ({size}x{size}, batch {batch})",
        lambda _steps: child("keep"),
        lambda _steps: child("default"),
        rounds,
        steps,
        warm_up=False,
    )


def main() -> None:
    """Measures each option on and off."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3 if quick() else 6)
    parser.add_argument("--steps", type=int, default=3 if quick() else 5)
    parser.add_argument("--skip-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--host-memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.host_memory_child:  # keep|default SIZE BATCH
        side, size, batch = args.host_memory_child
        host_memory_child(device, side == "keep", args.steps, int(size), int(batch))
        return
    keep_freed_memory()  # as a run sets it (trainer.keep_host_memory)
    began = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
        f"resnet18 {SIZE}x{SIZE} batch {BATCH}; {args.rounds} rounds x {args.steps} steps"
    )
    rounds, steps = args.rounds, args.steps
    compare(
        "channels_last", make_step(device), make_step(device, channels_last=False), rounds, steps
    )
    compare("bf16 autocast", make_step(device, precision="bf16"), make_step(device), rounds, steps)
    compare("eval batch 512 vs 64", make_eval(device, 512), make_eval(device, 64), rounds, 1)
    if args.skip_compile:
        print("torch.compile: skipped (--skip-compile)")
    else:
        cache = inductor_cache_state()
        compiled = make_step(device, compile_=True)
        start = time.perf_counter()
        compiled(2)  # the first steps trace and compile (train mode, forward and backward)
        compile_s = time.perf_counter() - start
        print(
            f"torch.compile: first 2 steps took {compile_s:.1f} s (tracing and code "
            f"generation; {cache})"
        )
        record("options", "torch.compile: compile time (first 2 steps, s)", compile_s, note=cache)
        compare("torch.compile", compiled, make_step(device), rounds, steps)
    compare_host_memory(device, rounds, steps, SIZE, BATCH)
    compare_host_memory(device, rounds, max(1, steps // 2), 224, 32)
    if device.type == "cuda":

        def with_benchmark(flag: bool) -> Callable:
            step = make_step(device)

            def run(steps: int) -> float:
                torch.backends.cudnn.benchmark = flag
                return step(steps)

            return run

        compare("cudnn.benchmark", with_benchmark(True), with_benchmark(False), rounds, steps)
    else:
        print("cudnn.benchmark: n/a on CPU")
        record("options", "cudnn.benchmark: on/off img/s", "n/a on CPU")
    print(f"wall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
