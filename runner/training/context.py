"""What every step of a run shares (`RunContext`), and the run's one lifecycle (`tracked_run`).

A recipe builds one `RunContext` after validating its config and passes it down, instead
of handing device, precision, tracker, run dir, writer and stop flag to every call.
`tracked_run` gives every tracked run (train and eval alike) an end: FINISHED, FAILED
with its traceback saved next to it and in the tracker, or KILLED, followed by the
requeue hand-over when SLURM asked the job to stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shlex
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
from omegaconf import DictConfig

from runner.config.errors import ConfigError
from runner.sweeps.job import SweepJob
from runner.tracking.protocol import Tracker, end_run
from runner.tracking.run_record import hydra_overrides
from runner.tracking.store import hold_lock
from runner.training import distributed
from runner.training.checkpoint_io import AsyncCheckpointWriter, NullCheckpointWriter
from runner.training.signals import GracefulStop, TrainingInterrupted

log = logging.getLogger(__name__)

RUN_LOCK_FILE = ".run.lock"
_claimed: dict[Path, IO[str]] = {}  # the run dir this process trains in, and its lock


@dataclass
class RunContext:
    """The state one run shares between its steps.

    Attributes:
        cfg: The composed, validated config.
        device: Where the run computes.
        precision: The resolved precision ("32", "bf16" or "16").
        world: This process's place among the training processes (DDP).
        run_dir: Where the run's files go.
        tracker: The run's tracker (a NullTracker on ranks other than 0).
        writer: Writes checkpoints in the background (writes nothing on other ranks).
        stop: Turns SIGTERM/SIGUSR2/Ctrl-C into a stop at the next step boundary.
        job: The sweep job this run is, or None outside a sweep.
    """

    cfg: DictConfig
    device: torch.device
    precision: str
    world: distributed.World
    run_dir: Path
    tracker: Tracker
    writer: AsyncCheckpointWriter | NullCheckpointWriter = field(
        default_factory=NullCheckpointWriter
    )
    stop: GracefulStop = field(default_factory=GracefulStop)
    job: SweepJob | None = None

    @property
    def is_main(self) -> bool:
        """Whether this process logs, writes the run's files and tests (rank 0)."""
        return self.world.is_main


def claim_run_dir(run_dir: Path, main: bool = True) -> None:
    """Makes the run dir; refuses one another process trains in, else holds it.

    Two runs in one dir would continue the same last.pt side by side, overwrite each
    other's checkpoints and log every epoch twice into one MLflow run. The lock
    (`run_dir/.run.lock`) ends with the run (`release_run_dir`), or with this process,
    however it ends.

    Args:
        run_dir: The run dir.
        main: Whether this is the run's main process (rank 0), which holds the lock.

    Raises:
        ConfigError: Another process holds the run dir.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if not main or run_dir in _claimed:
        return
    handle = hold_lock(run_dir / RUN_LOCK_FILE)
    if handle is None:
        raise ConfigError(
            f"{run_dir} is in use: another process is training in it (it holds "
            f"{RUN_LOCK_FILE} there). Wait for that run to end, or run in another dir "
            "(leave hydra.run.dir out)"
        )
    release_run_dir()  # the one this process trained in before (a sweep's earlier job)
    _claimed[run_dir] = handle


def release_run_dir() -> None:
    """Lets other processes run in the run dir this process claimed (its run ended)."""
    for handle in _claimed.values():
        handle.close()
    _claimed.clear()


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """Turns `trainer.device` into a torch device; auto = CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={device!r} but CUDA is not available: use trainer.device=auto or cpu"
        )
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ConfigError(
            f"trainer.device={device!r} but this machine has {torch.cuda.device_count()} CUDA "
            f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}: pick one of them"
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.device='mps' but this machine has no usable Apple GPU (MPS): use "
            "trainer.device=auto or cpu"
        )
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turns `trainer.precision` into "32", "bf16" or "16" for this device.

    auto picks bf16 on CUDA devices that support it and 32 elsewhere: bf16 autocast on
    CPUs without native bf16 units is slower than float32.
    """
    precision = str(precision)
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32"
    if precision == "16" and device.type != "cuda":
        raise ConfigError(
            f"trainer.precision=16 needs a CUDA device, and this run is on {device.type}: "
            "use trainer.precision=bf16 or 32"
        )
    return precision


@contextlib.contextmanager
def tracked_run(ctx: RunContext) -> Iterator[None]:
    """Ends the tracked run with a status whatever happens inside the block.

    FINISHED when the block returns; KILLED when a signal stopped training (the process
    then exits with 128 + the signal, after the requeue hand-over for SLURM's USR2) or
    on Ctrl-C; FAILED otherwise, with the traceback in `<run dir>/traceback.txt` and the
    tracker (another DDP rank's in `traceback-rank<R>.txt`). The checkpoint writer is
    drained first, so a write error is reported too. Ctrl-C while the tracker waits for a
    store to take the last logs ends a finished run with exit status 130 and no traceback
    (it has ended by then); a failed or stopped one ends as it would have.
    """
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except TrainingInterrupted as stopped:
        status = "KILLED"
        log.warning("run stopped (%s); continue it with: %s", stopped, resume_command(ctx))
        raise SystemExit(stopped.exit_code) from None
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        save_traceback(ctx.tracker, ctx.run_dir, rank=ctx.world.rank)
        raise
    finally:
        write_error = ctx.writer.close()
        if write_error is not None:
            log.error("%s", write_error)
        # Ctrl-C in the wait for the store: the run's files are written and what the store
        # did not take is saved. A run that failed or was stopped goes on ending so.
        if not end_run(ctx.tracker, status, ctx.run_dir) and status == "FINISHED":
            raise SystemExit(130) from None
        if status == "KILLED":
            ctx.stop.hand_over()  # after USR2 under SLURM: requeue the job


def resume_command(ctx: RunContext) -> str:
    """The command that continues this run where it stopped (a sweep: the whole sweep).

    With the launcher that started it: run as one process, a DDP run would go on with a
    smaller effective batch and a rebuilt schedule (and a partial epoch is refused).
    """
    if ctx.job is not None and ctx.job.study_settings is not None:
        return (
            f"the sweep's command with sweep.resume={ctx.job.sweep_dir}, which continues "
            "the Optuna study with new trials (this trial ends FAIL and is not continued)"
        )
    if ctx.job is not None:
        return f"the sweep's command with sweep.resume={ctx.job.sweep_dir}"
    # Continues (auto) whatever this run started with: never, typed or from a config file
    # (a requeued job's is auto by now), would start over.
    typed = hydra_overrides()
    drop = ("hydra.run.dir=", "trainer.resume=")
    overrides = [o for o in typed if not o.lstrip("+").startswith(drop)]
    args = ["run.py", *overrides, "trainer.resume=auto"]
    args.append(f"hydra.run.dir={ctx.run_dir}")
    world = ctx.world
    if world.launcher == "torchrun":
        return f"torchrun {torchrun_options(world.world_size)} {shlex.join(args)}"
    if world.launcher == "slurm":
        return (
            f"the same SLURM job again ({world.world_size} tasks, the same run dir), which "
            f"runs: {shlex.join(['python', *args])}"
        )
    return shlex.join(["python", *args])


def torchrun_options(world_size: int) -> str:
    """torchrun's process-count options for `world_size` processes, as this run was started.

    LOCAL_WORLD_SIZE (set by torchrun) tells the processes per node; across several nodes
    the rendezvous options are the user's own and cannot be known here.
    """
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or world_size)
    if per_node == world_size:
        return f"--nproc_per_node={world_size}"
    return (
        f"--nnodes={world_size // per_node} --nproc_per_node={per_node} "
        "<the same rendezvous options, on every node>"
    )


def save_traceback(tracker: Tracker, run_dir: Path, rank: int = 0) -> None:
    """Saves the traceback of a failed run next to it and into the tracker.

    Args:
        tracker: The run's tracker (under DDP only rank 0's uploads).
        run_dir: Where the file goes (rank 0's, shared by every rank).
        rank: This process's DDP rank: rank 0 writes `traceback.txt`, another rank
            `traceback-rank<R>.txt`, so a failure on one rank alone is kept and no rank
            overwrites another's.
    """
    path = run_dir / ("traceback.txt" if rank == 0 else f"traceback-rank{rank}.txt")
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(traceback.format_exc(), encoding="utf-8")
    log.error("run failed; traceback in %s", path)
    try:
        tracker.log_artifact(path)
    except Exception:  # the original error matters more than a failed upload
        log.exception("could not upload %s", path)
