"""Data-parallel training (DDP): the processes started by torchrun or SLURM, and their world.

The rank, world size and local rank come from torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or from SLURM's (SLURM_PROCID, SLURM_NTASKS,
SLURM_LOCALID; the master is the first node of SLURM_JOB_NODELIST, the port is derived
from the job id). One process per GPU with NCCL on CUDA, gloo on the CPU; a single
process needs none of this and runs as before.

Only rank 0 tracks to MLflow and writes files; the other ranks get a NullTracker and a
checkpoint writer that writes nothing. Besides joining the process group, this module
wraps the model in DDP, scales the lr for the world size and tags the run with how it was
spread. What the ranks agree on and exchange while they train is in
runner/training/rank_sync.py.
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
from typing import Any

import torch
import torch.distributed as dist

from runner.config.choices import LR_SCALING
from runner.config.modes import launched_by

log = logging.getLogger(__name__)


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


def control_group() -> Any:
    """The process group the ranks' agreements travel on (set up by `init`).

    A gloo group beside NCCL's, so that a stop decision is a CPU tensor with no GPU sync
    per step. None means the default group: gloo already, or none at all (a single
    process, or before `init`).
    """
    return _CONTROL


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
