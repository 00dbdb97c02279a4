"""What MLflow logging costs relative to training, measured side by side.

Times the runner's real per-epoch logging (buffer the epoch's metrics, one `log_batch`
into a fresh SQLite store) against the real training step it accompanies (timm
resnet18, batch 128, 32x32, AdamW, channels_last, CPU or CUDA), and prints the share of
an epoch spent logging for the default run's epoch length.

    .venv/bin/python benchmarks/logging_overhead.py [--epochs 30] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import timm
import torch

from runner.tracking import MlflowTracker

EPOCH_METRICS = (
    "train/loss", "train/acc", "train/throughput", "epoch_time_s", "lr",
    "val/loss", "val/acc", "val/balanced_acc", "val/macro_f1", "val/top5",
)  # fmt: skip


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


def main() -> None:
    """Measures both sides and prints the share of an epoch that logging takes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs of logging to time")
    parser.add_argument("--steps", type=int, default=8, help="training steps to time")
    parser.add_argument("--steps-per-epoch", type=int, default=9, help="digits: 1259 // 128")
    args = parser.parse_args()
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
    print(f"logging share of an epoch: {100 * log_ms / epoch_ms:.3f}% (goal < 1%)")
    print(f"logging share if it ran every step: {100 * log_ms / step_ms:.2f}%")


if __name__ == "__main__":
    main()
