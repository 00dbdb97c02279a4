"""Data-parallel training (DDP) across processes started by torchrun or SLURM.

The rank, world size and local rank come from torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or from SLURM's (SLURM_PROCID, SLURM_NTASKS,
SLURM_LOCALID; the master is the first node of SLURM_JOB_NODELIST, the port is derived
from the job id). One process per GPU with NCCL on CUDA, gloo on the CPU; a single
process needs none of this and runs as before.

Only rank 0 tracks to MLflow and writes files; the other ranks get a NullTracker and a
checkpoint writer that writes nothing. The samplers shard each epoch's order by rank
(runner/data/samplers.py), DDP averages the gradients, and the epoch's training sums are
added over the ranks before they are logged. Validation runs on every rank over the
whole split with rank 0's BatchNorm statistics (its torchmetrics states are synced on
compute, so every rank gets the same numbers), and rank 0's decision after the epoch
(improved, pruned, early stop) is every rank's; the test runs on rank 0 alone after the
others have left.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from runner.config.choices import LR_SCALING
from runner.config.modes import launched_by
from runner.training.engine import EpochStats, batch_index_of

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class World:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str = "none"
    launcher: str = "single"  # single | torchrun | slurm

    @property
    def is_main(self) -> bool:
        """Whether this process logs, writes checkpoints and runs the test."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1


def detect() -> World:
    """Reads rank, local rank and world size from torchrun's or SLURM's variables."""
    launcher, size = launched_by()
    if launcher == "torchrun":
        env = os.environ
        return World(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=size,
            launcher="torchrun",
        )
    if launcher == "slurm":
        rank, local_rank, size = _slurm_ranks()
        return World(rank=rank, local_rank=local_rank, world_size=size, launcher="slurm")
    return World()


def _slurm_ranks() -> tuple[int, int, int]:
    """(global rank, local rank, tasks) from submitit's JobEnvironment or SLURM's variables."""
    try:
        import submitit

        job = submitit.JobEnvironment()
        return job.global_rank, job.local_rank, job.num_tasks
    except (ImportError, RuntimeError):  # not started by submitit
        env = os.environ
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"])


def first_node(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[03-05,07],cpu1" -> "gpu03")."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # Without scontrol: the first name, with the first number of a bracketed range.
    match = re.match(r"([^,\[]+)(?:\[([^\],\-]+))?", nodelist)
    if not match:
        raise RuntimeError(f"cannot read the first node of SLURM_JOB_NODELIST={nodelist!r}")
    return match.group(1) + (match.group(2) or "")


_WORLD = World()


def current() -> World:
    """The World that `init` set up for this process (a single process before that)."""
    return _WORLD


def init(device: torch.device) -> tuple[World, torch.device]:
    """Joins the process group when there are several processes; picks this rank's device.

    Args:
        device: The resolved `trainer.device` (cuda becomes cuda:LOCAL_RANK under DDP).

    Returns:
        This process's World and the device it trains on.
    """
    global _WORLD
    _WORLD = world = detect()
    _limit_threads()
    if not world.distributed:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    _WORLD = world = replace(world, backend="nccl" if device.type == "cuda" else "gloo")
    if world.launcher == "slurm":
        os.environ.setdefault("MASTER_ADDR", first_node(os.environ["SLURM_JOB_NODELIST"]))
        job = os.environ.get("SLURM_JOB_ID", "0")
        os.environ.setdefault("MASTER_PORT", str(20000 + int(job) % 20000))
    if not dist.is_initialized():
        dist.init_process_group(
            world.backend,
            rank=world.rank,
            world_size=world.world_size,
            timeout=datetime.timedelta(minutes=10),
        )
    global _CONTROL
    # Stop decisions travel on a gloo group: a CPU tensor, no GPU sync per step.
    _CONTROL = dist.new_group(backend="gloo") if world.backend != "gloo" else None
    log.info(
        "DDP: rank %d of %d (local rank %d, %s, %s, master %s:%s)",
        world.rank,
        world.world_size,
        world.local_rank,
        world.backend,
        world.launcher,
        os.environ.get("MASTER_ADDR"),
        os.environ.get("MASTER_PORT"),
    )
    return world, device


_CONTROL: Any = None


def shared_run_dir(run_dir: Path) -> Path:
    """Rank 0's run dir, for every rank.

    Each process composes its own config, and a run dir made of the time and the process
    id differs between ranks started by torchrun or srun. Every rank uses rank 0's; the
    dir Hydra made for another rank is removed when it holds only Hydra's own files.
    """
    if not current().distributed:
        return run_dir
    shared = [str(run_dir)]
    dist.broadcast_object_list(shared, src=0, group=_CONTROL)
    if current().rank != 0:
        _log_beside(Path(shared[0]), run_dir)
    if shared[0] != str(run_dir):
        leftovers = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
        if leftovers <= {".hydra", "run.log"}:
            shutil.rmtree(run_dir, ignore_errors=True)
        log.info("rank %d uses rank 0's run dir %s", current().rank, shared[0])
    return Path(shared[0])


def _log_beside(shared: Path, own: Path) -> None:
    """Moves this rank's log file (Hydra's run.log) to run-rank<R>.log in rank 0's dir.

    Every rank wrote rank 0's run.log when they shared a dir (`hydra.run.dir`), each
    epoch twice and rank 1's share of the loss beside rank 0's, with nothing to tell
    them apart; and into a dir that is removed, otherwise.
    """
    root = logging.getLogger()
    folders = {shared.resolve(), own.resolve()}
    for handler in list(root.handlers):
        if not isinstance(handler, logging.FileHandler):
            continue
        if Path(handler.baseFilename).resolve().parent not in folders:
            continue
        try:
            moved = logging.FileHandler(shared / f"run-rank{current().rank}.log")
        except OSError as err:  # rank 0's dir is not on this node's disk: keep the old file
            log.warning("rank %d keeps its log in %s (%s)", current().rank, own, err)
            return
        moved.setFormatter(handler.formatter)
        moved.setLevel(handler.level)
        for log_filter in handler.filters:
            moved.addFilter(log_filter)
        root.removeHandler(handler)
        handler.close()
        root.addHandler(moved)


def _limit_threads() -> None:
    """Uses the CPUs SLURM gave the task, not every core of the node."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        torch.set_num_threads(int(cpus))


def wrap(model: torch.nn.Module, device: torch.device, compile: bool = False) -> torch.nn.Module:
    """The model to train: DDP-wrapped under DDP, then compiled when asked."""
    if current().distributed:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if compile else model


def reduce_epoch(done: EpochStats) -> EpochStats:
    """The epoch's training sums added over all ranks (loss/acc of the global batch).

    Throughput is all images over the slowest rank's time. A collective call: every
    rank makes it at the same point.
    """
    if not current().distributed:
        return done
    sums = torch.tensor([done.loss_sum, done.correct, float(done.seen)], dtype=torch.float64)
    seconds = torch.tensor([done.seconds], dtype=torch.float64)
    dist.all_reduce(sums, group=_CONTROL)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX, group=_CONTROL)
    loss_sum, correct, seen = sums.tolist()
    return replace(
        done, loss_sum=loss_sum, correct=correct, seen=int(seen), seconds=float(seconds.item())
    )


def finite_on_every_rank(finite: torch.Tensor) -> bool:
    """Whether a step's loss is finite on every rank; `finite` itself in one process.

    With `trainer.nan_policy=skip`, a batch that one rank skipped alone would leave its
    gradient all-reduce out of step with the other ranks'. A collective call.
    """
    if not current().distributed:
        return bool(finite)
    flag = torch.tensor([int(bool(finite))], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=_CONTROL)
    return bool(flag.item())


_NO_BAD_BATCH = 2**62


def first_bad_on_any_rank(first_bad: torch.Tensor | float) -> int:
    """The earliest batch whose loss was not finite on some rank, or -1 (see `NanGuard`).

    With `trainer.nan_policy=stop`, every rank then stops at the same check with the
    same message, instead of the others failing on a lost peer. A collective call.
    """
    index = batch_index_of(first_bad)
    if not current().distributed:
        return index
    earliest = torch.tensor([index if index >= 0 else _NO_BAD_BATCH], dtype=torch.int64)
    dist.all_reduce(earliest, op=dist.ReduceOp.MIN, group=_CONTROL)
    return -1 if int(earliest.item()) == _NO_BAD_BATCH else int(earliest.item())


def share_buffers(model: torch.nn.Module) -> None:
    """Gives every rank rank 0's buffers (BatchNorm statistics), before validation.

    Each rank's last training forward updates the buffers with its own batch, and DDP
    copies rank 0's only at the next training forward. Validating rank 0's buffers on
    every rank makes every rank's numbers those of the weights rank 0 checkpoints, so
    the ranks' decisions (best epoch, early stopping) agree. A collective call.
    """
    if not current().distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def from_main(value: T) -> T:
    """Rank 0's `value` on every rank (any picklable object); `value` in a single process.

    For what only rank 0 decides, e.g. Optuna's pruning (only rank 0 reports to the
    trial). A collective call.
    """
    if not current().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_CONTROL)
    return box[0]


def gather(value: T) -> list[T]:
    """Every rank's `value` (any picklable object), in rank order; `[value]` in a single process.

    For what each rank holds apart, e.g. its RNG states for last.pt (only rank 0 writes
    the file, so it must hold the other ranks' too). A collective call: every rank makes
    it at the same point.
    """
    if not current().distributed:
        return [value]
    values: list[Any] = [None] * current().world_size
    dist.all_gather_object(values, value, group=_CONTROL)
    return values


def gather_bad_files(loader: Any) -> None:
    """Gives `loader` the bad files that every rank's loader met, once each, in rank order.

    Under DDP each rank streams its own share of the training files: a file that only
    another rank decoded, and failed, was in that rank's log but not in the bad_files.txt
    rank 0 writes. A collective call (a loader that streams nothing has no bad files).
    """
    if not hasattr(loader, "bad_files"):
        return
    merged: dict[str, tuple[str, str]] = {}
    for bad_files in gather(list(loader.bad_files)):
        for name, reason in bad_files:
            merged.setdefault(name, (name, reason))
    loader.bad_files = list(merged.values())


def rank_share(progress: EpochStats) -> EpochStats:
    """This rank's part of a checkpointed (all-rank) partial epoch: rank 0 keeps the sums.

    A partial epoch is saved with the sums of all ranks (see `reduce_epoch`); giving
    them to rank 0 alone makes the next reduction count them once.
    """
    if current().rank == 0:
        return progress
    return replace(progress, loss_sum=0.0, correct=0.0, seen=0)


def seed_rank(seed: int, global_step: int) -> None:
    """Gives each rank its own random stream (augmentation draws), from step `global_step`.

    All ranks build the model from the same seed (identical weights and EMA); afterwards
    each needs different random augmentations. Called on a fresh start, and on a resume
    only when last.pt holds no RNG states for this world size (written before last.pt kept
    every rank's, or by another number of processes): an exact resume restores each
    rank's own states instead (runner/training/state.py). Nothing happens for a single
    process.
    """
    world = current()
    if not world.distributed:
        return
    import random

    import numpy as np

    mixed = (seed * 1_000_003 + world.rank * 7_919 + global_step) % 2**63
    random.seed(mixed)
    np.random.seed(mixed % 2**32)
    torch.manual_seed(mixed)


class StopAgreement:
    """Lets all ranks stop after the same optimizer step when any of them got a signal.

    Each call starts an asynchronous max-reduction of the ranks' signal numbers and
    returns the previous call's result, so no rank waits for the others on every step;
    the stop comes one step after the signal.
    """

    def __init__(self) -> None:
        self._pending = None
        self._flag = torch.zeros(1, dtype=torch.int64)

    def __call__(self, local_signal: int) -> int:
        """Returns the largest signal number any rank had one call ago (0 = none)."""
        agreed = 0
        if self._pending is not None:
            self._pending.wait()
            agreed = int(self._flag.item())
        self._flag = torch.tensor([local_signal], dtype=torch.int64)
        self._pending = dist.all_reduce(
            self._flag, op=dist.ReduceOp.MAX, group=_CONTROL, async_op=True
        )
        return agreed

    def settle(self) -> None:
        """Waits for the reduction still under way (before the process group ends)."""
        if self._pending is not None:
            self._pending.wait()
            self._pending = None


def stop_agreement(world: World) -> StopAgreement | None:
    """A StopAgreement under DDP; None for a single process (it decides alone)."""
    return StopAgreement() if world.distributed else None


def end_training(world: World, agreement: StopAgreement | None) -> None:
    """Waits for every rank to finish training, then leaves the process group.

    Rank 0 then tests and reports alone; the other ranks are done.
    """
    if not world.distributed:
        return
    if agreement is not None:
        agreement.settle()
    dist.barrier(group=_CONTROL)
    dist.destroy_process_group()


def scale_lr(optimizer: torch.optim.Optimizer, rule: str, world_size: int) -> float:
    """Scales every group's lr for the world size: none, linear (x N) or sqrt (x sqrt N).

    The configured `optim.lr` is meant for one process's batch (batch_size x
    accumulate_grad_batches); call before the scheduler is built, which reads the lr.

    Returns:
        The factor applied.
    """
    if rule not in LR_SCALING:
        raise ValueError(f"trainer.lr_scaling={rule!r}: use one of {', '.join(LR_SCALING)}")
    factor = {"none": 1.0, "linear": float(world_size), "sqrt": math.sqrt(world_size)}[rule]
    for group in optimizer.param_groups:
        group["lr"] *= factor
    return factor


def world_size_now() -> int:
    """The number of training processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Waits until every rank gets here (nothing to wait for in a single process)."""
    if current().distributed:
        dist.barrier(group=_CONTROL)


def tags(world: World, trainer: Any, batches_per_epoch: int, full_batch: int) -> dict[str, str]:
    """Tags that say how the run was spread and batched, and how often SLURM requeued it.

    Args:
        world: This process's World.
        trainer: The `trainer` config (accumulate_grad_batches, lr_scaling).
        batches_per_epoch: The batches one process trains an epoch on: an accumulation
            window larger than that is cut at the epoch's end, so a step sums no more.
        full_batch: The samples of one process's full batch: trainer.batch_size, or its
            epoch's when that is smaller (one batch of all of them).
    """
    window = min(trainer.accumulate_grad_batches, batches_per_epoch)
    effective = full_batch * world.world_size * window
    result = {
        "world_size": str(world.world_size),
        "distributed.backend": world.backend,
        "distributed.launcher": world.launcher,
        "effective_batch_size": str(effective),
        "lr_scaling": str(trainer.lr_scaling),
    }
    if "SLURM_JOB_ID" in os.environ:
        result["slurm.job_id"] = os.environ["SLURM_JOB_ID"]
        result["requeues"] = os.environ.get("SLURM_RESTART_COUNT", "0")
    return result
