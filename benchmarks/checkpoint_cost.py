"""What reliability costs: checkpoint saves and the per-step NaN check, side by side.

* Checkpoint: the runner's last.pt for timm resnet18 with AdamW state (model, optimizer,
  scheduler, RNG), written atomically (temp file, fsync, os.replace): the full save
  time, and the time training actually waits with the background writer (the snapshot).
* NaN check: the device ops the loop adds per step under `trainer.nan_policy=stop`
  (isfinite, a counter, a where) against the training step they ride on; they never
  read the value on the host (tests/training/test_engine.py counts host reads).

    .venv/bin/python benchmarks/checkpoint_cost.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch

from runner.training.checkpoint_io import AsyncCheckpointWriter, save_checkpoint
from runner.training.optim import cosine_schedule


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    """Measures and prints both figures."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = cosine_schedule(optimizer, total_steps=100, steps_per_epoch=10)
    images = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (128,))

    def step() -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return loss

    step()
    state = lambda: {  # noqa: E731
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        sync, blocking = [], []
        writer = AsyncCheckpointWriter()
        for _ in range(5):
            start = time.perf_counter()
            save_checkpoint(state(), path, keep_previous=True)
            sync.append(time.perf_counter() - start)
            start = time.perf_counter()
            writer.submit({path: state()}, keep_previous={path})
            blocking.append(time.perf_counter() - start)
            writer.wait()
        size_mb = path.stat().st_size / 2**20

    steps = []
    for _ in range(6):
        start = time.perf_counter()
        step()
        steps.append(time.perf_counter() - start)
    loss = step().detach()
    counter = torch.zeros((), dtype=torch.long)
    first_bad = torch.full((), -1, dtype=torch.long)
    checks = []
    for _ in range(2000):
        start = time.perf_counter()
        finite = torch.isfinite(loss)
        counter += 1
        first_bad = torch.where(~finite & (first_bad < 0), counter, first_bad)
        checks.append(time.perf_counter() - start)

    step_ms = median_ms(steps)
    print(f"torch {torch.__version__}, CPU, resnet18 + AdamW, batch 128 at 32x32")
    print(f"last.pt size: {size_mb:.0f} MB")
    print(f"checkpoint save (temp + fsync + replace): {median_ms(sync):.0f} ms per save")
    print(f"time training waits with the background writer: {median_ms(blocking):.1f} ms per save")
    foreground, background = median_ms(sync) / step_ms, median_ms(blocking) / step_ms
    print(
        f"training step: {step_ms:.0f} ms; one save costs {foreground:.2f} steps in the "
        f"foreground, {background:.3f} steps with the writer"
    )
    check_us = statistics.median(checks) * 1e6
    print(
        f"NaN check per step: {check_us:.1f} us = {100 * check_us / 1000 / step_ms:.3f}% of a "
        "step; host syncs per step: 0"
    )


if __name__ == "__main__":
    main()
