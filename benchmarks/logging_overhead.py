"""What MLflow logging costs relative to training, measured side by side.

Two measurements in one process:

1. The runner's real fit loop (`runner.training.loop.fit`: train epochs, validation,
   checkpoints, per-epoch logging) on the default run's config (digits, timm resnet18,
   aug basic, batch 128), with `logger=mlflow` (a SQLite store) against `logger=none`.
   Each round builds both sides afresh exactly as `runner.train.run` does (model,
   optimizer, schedule, tracker connected and started) and times only `fit` plus the
   wait for its checkpoint writes; the side that goes first alternates. Goal: the
   logged run keeps >= 0.99x the throughput of the untracked one (median of the
   per-round ratios of untracked time / tracked time).
2. The per-epoch logging call alone (buffer the epoch's metrics, one `log_batch`)
   against the training step it accompanies, as a share of the default epoch.

    .venv/bin/python benchmarks/logging_overhead.py [--rounds 8] [--fit-epochs 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
from bench_results import quick, record
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from runner.data.build import build_data, build_loaders
from runner.tracking.mlflow_tracker import MlflowTracker
from runner.tracking.run_record import start_run
from runner.training.checkpoint_io import AsyncCheckpointWriter
from runner.training.context import RunContext, resolve_device, resolve_precision, seed_everything
from runner.training.distributed import World
from runner.training.loop import fit
from runner.training.parts import build_parts
from runner.training.state import TrainState

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
FIT_GOAL = 0.99

EPOCH_METRICS = (
    "train/loss",
    "train/acc",
    "train/throughput",
    "epoch_time_s",
    "lr",
    "val/loss",
    "val/acc",
    "val/balanced_acc",
    "val/macro_f1",
    "val/top5",
)


def time_logging(epochs: int) -> list[float]:
    """Seconds per epoch of logging: buffer the epoch's metrics and flush them."""
    with tempfile.TemporaryDirectory() as tmp:
        tracker = MlflowTracker(f"sqlite:///{tmp}/mlflow.db", artifact_location=f"{tmp}/art")
        tracker.connect("bench")
        tracker.start("bench", tags={})
        times = []
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            tracker.log_metrics({name: 0.5 + epoch for name in EPOCH_METRICS}, step=epoch)
            tracker.flush()
            times.append(time.perf_counter() - start)
        tracker.finish("FINISHED")
    return times


def time_steps(steps: int, device: torch.device) -> list[float]:
    """Seconds per training step of resnet18 at batch 128, 32x32."""
    model = timm.create_model("resnet18", num_classes=10).to(
        device, memory_format=torch.channels_last
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(128, 3, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, 10, (128,), device=device)
    times = []
    for step in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:  # the first steps warm up allocators and kernels
            times.append(time.perf_counter() - start)
    return times


def time_fit(logger: str, out: Path, run_name: str, epochs: int, data) -> tuple[float, int]:
    """Builds a run as `runner.train.run` does and times its `fit` (logger mlflow|none).

    Returns:
        Seconds of `fit` plus the wait for its checkpoint writes, and images trained.
    """
    overrides = [
        f"logger={logger}",
        f"paths.output_dir={out}",
        f"paths.run_dir={out}/{run_name}",
        f"trainer.max_epochs={epochs}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    ctx = RunContext(
        cfg=cfg,
        device=device,
        precision=resolve_precision(cfg.trainer.precision, device),
        world=World(),
        run_dir=run_dir,
        tracker=instantiate(cfg.logger),
        writer=AsyncCheckpointWriter(),
    )
    ctx.tracker.connect(experiment_name=cfg.data.name)
    augment = instantiate(cfg.aug, num_classes=data.num_classes).to(device)
    train_loader, val_loader, _ = build_loaders(data, cfg.sampler, cfg.trainer, cfg.seed, device)
    parts = build_parts(cfg, data, augment, device, ctx.precision, len(train_loader))
    start_run(ctx.tracker, cfg, run_dir, device=str(device), run_name=run_name, tags={}, params={})
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit(ctx, TrainState(), parts, (train_loader, val_loader), data)
    ctx.writer.wait()
    seconds = time.perf_counter() - start
    ctx.writer.close()
    ctx.tracker.finish("FINISHED")
    return seconds, epochs * train_loader.batches_per_epoch() * cfg.trainer.batch_size


def compare_fit(rounds: int, epochs: int) -> float:
    """Interleaved rounds of fit with logger=mlflow and logger=none; returns the ratio."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        data = build_data(compose("train", overrides=["paths.run_dir=unused"]).data)
    rates: dict[str, list[float]] = {"mlflow": [], "none": []}
    print(f"fit loop, default run (digits, resnet18, batch 128), {epochs} epochs per fit")
    print(f"{'round':>5}  {'first':<6}  {'mlflow img/s':>12}  {'none img/s':>10}  {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds + 1):  # round 0 warms up (and creates the store)
            order = ("mlflow", "none") if round_index % 2 else ("none", "mlflow")
            for logger in order:
                seconds, images = time_fit(
                    logger, Path(tmp) / logger, f"r{round_index}", epochs, data
                )
                if round_index:
                    rates[logger].append(images / seconds)
            if round_index:
                on, off = rates["mlflow"][-1], rates["none"][-1]
                row = f"{round_index:>5}  {order[0]:<6}  {on:>12.1f}  {off:>10.1f}"
                print(f"{row}  {on / off:>6.3f}", flush=True)
    ratios = [on / off for on, off in zip(rates["mlflow"], rates["none"], strict=True)]
    ratio = statistics.median(ratios)
    spread = statistics.pstdev(ratios)
    of_medians = statistics.median(rates["mlflow"]) / statistics.median(rates["none"])
    ok = ratio >= FIT_GOAL
    print(
        f"MLflow on / off throughput of the fit loop: median of per-round ratios {ratio:.3f} "
        f"(spread {spread:.3f}; ratio of medians {of_medians:.3f}); goal >= {FIT_GOAL}: "
        f"{'OK' if ok else 'MISSED'}"
    )
    record(
        "logging_overhead",
        "fit loop img/s, logger=mlflow / logger=none",
        ratio,
        goal=f">= {FIT_GOAL}",
        passed=ok,
        note=f"{rounds} interleaved rounds of {epochs} epochs; spread {spread:.3f}",
    )
    return ratio


def main() -> None:
    """Measures both sides and prints the share of an epoch that logging takes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4 if quick() else 8, help="fit rounds")
    parser.add_argument("--fit-epochs", type=int, default=1 if quick() else 2, help="epochs a fit")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of logging to time")
    parser.add_argument("--steps", type=int, default=8, help="training steps to time")
    parser.add_argument("--steps-per-epoch", type=int, default=9, help="digits: 1259 // 128")
    args = parser.parse_args()
    compare_fit(args.rounds, args.fit_epochs)
    print()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log_times = time_logging(args.epochs)
    step_times = time_steps(args.steps, device)
    log_ms = statistics.median(log_times) * 1000
    step_ms = statistics.median(step_times) * 1000
    epoch_ms = step_ms * args.steps_per_epoch
    print(f"device: {device}; store: SQLite; torch {torch.__version__}")
    print(
        f"logging per epoch ({len(EPOCH_METRICS)} metrics, one log_batch): {log_ms:.2f} ms (median)"
    )
    print(f"training step (resnet18, batch 128, 32x32): {step_ms:.1f} ms (median)")
    print(f"epoch of {args.steps_per_epoch} steps: {epoch_ms:.0f} ms")
    share = log_ms / epoch_ms
    print(f"logging share of an epoch: {100 * share:.3f}% (goal < 1%)")
    record(
        "logging_overhead",
        "per-epoch log_batch share of a default epoch",
        f"{share:.3%}",
        goal="< 1%",
        passed=share < 0.01,
        note=f"{log_ms:.2f} ms per epoch into SQLite",
    )
    print(f"logging share if it ran every step: {100 * log_ms / step_ms:.2f}%")


if __name__ == "__main__":
    main()
