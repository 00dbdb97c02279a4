"""Debugging switches (conf/debug/): fewer batches, overfitting a few, a profiler trace."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from runner.data import DataSplits

log = logging.getLogger("runner")


def overfit_subset(data: DataSplits, overfit_batches: int | None, batch_size: int) -> DataSplits:
    """The first `overfit_batches` train batches as both train and val; None = unchanged.

    Validating on the same samples shows whether the model can fit them at all, which a
    working model, loss and optimizer always can (Karpathy's "overfit one batch").
    """
    if overfit_batches is None:
        return data
    keep = torch.arange(min(overfit_batches * batch_size, len(data.train)))
    train = data.train.subset(keep)
    clean = data.clean_train_labels
    log.info("trainer.overfit_batches=%d: training and validating on the same %d images",
             overfit_batches, len(keep))  # fmt: skip
    return dataclasses.replace(
        data, train=train, val=train, clean_train_labels=None if clean is None else clean[keep]
    )


def limit_batches(loaders: list, limit: int | None) -> None:
    """Makes every loader yield at most `limit` batches per epoch; None = all."""
    for loader in loaders:
        loader.limit_batches = limit


@contextlib.contextmanager
def profile(enabled: bool, run_dir: Path, tracker) -> Iterator[None]:
    """Records a torch.profiler trace of the enclosed code when enabled.

    Writes `profile/trace.json` (open it in chrome://tracing or Perfetto) and
    `profile/ops.txt` (the operators by total time) in the run dir, and logs both to
    the tracker under `profile/`.
    """
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    folder = run_dir / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    with torch_profile(activities=activities) as prof:
        yield
    trace, ops = folder / "trace.json", folder / "ops.txt"
    prof.export_chrome_trace(str(trace))
    sort_by = "cuda_time_total" if len(activities) > 1 else "cpu_time_total"
    ops.write_text(prof.key_averages().table(sort_by=sort_by, row_limit=40))
    for path in (trace, ops):
        tracker.log_artifact(path, "profile")
    log.info("profiler: wrote %s and %s", trace, ops)
