"""`trainer.profile` (debug=profile): a torch.profiler trace of the training loop."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from runner.tracking.protocol import Tracker
from runner.training import distributed

log = logging.getLogger(__name__)


@contextlib.contextmanager
def profile(enabled: bool, run_dir: Path, tracker: Tracker) -> Iterator[None]:
    """Records a torch.profiler trace of the enclosed code when enabled.

    Writes `profile/trace.json` (open it in chrome://tracing or Perfetto) and
    `profile/ops.txt` (the operators by total time) in the run dir, and logs both to
    the tracker under `profile/`. Under DDP only rank 0 records: every rank shares rank
    0's run dir, and the ranks' files would overwrite each other there.
    """
    if not enabled or not distributed.current().is_main:
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
