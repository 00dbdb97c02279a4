"""What the ranks of a DDP run agree on and exchange while they train.

The samplers shard each epoch's order by rank (runner/data/samplers.py), DDP averages the
gradients, and the epoch's training sums are added over the ranks before they are logged.
Validation runs on every rank over the whole split with rank 0's BatchNorm statistics (its
torchmetrics states are synced on compute, so every rank gets the same numbers), and rank
0's decision after the epoch (improved, pruned, early stop) is every rank's; the test runs
on rank 0 alone after the others have left.

Apart from rank 0's buffers (`share_buffers`), what the ranks exchange travels on the
control group that `distributed.init` sets up (`distributed.control_group`). The world
itself (who is rank 0, how many ranks there are) is runner/training/distributed.py's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from runner.training.distributed import World, control_group, current
from runner.training.engine import EpochStats, batch_index_of

T = TypeVar("T")


def reduce_epoch(done: EpochStats) -> EpochStats:
    """The epoch's training sums added over all ranks (loss/acc of the global batch).

    Throughput is all images over the slowest rank's time. A collective call: every
    rank makes it at the same point.
    """
    if not current().distributed:
        return done
    sums = torch.tensor([done.loss_sum, done.correct, float(done.seen)], dtype=torch.float64)
    seconds = torch.tensor([done.seconds], dtype=torch.float64)
    dist.all_reduce(sums, group=control_group())
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX, group=control_group())
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
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=control_group())
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
    dist.all_reduce(earliest, op=dist.ReduceOp.MIN, group=control_group())
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
    dist.broadcast_object_list(box, src=0, group=control_group())
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
    dist.all_gather_object(values, value, group=control_group())
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
            self._flag, op=dist.ReduceOp.MAX, group=control_group(), async_op=True
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
    dist.barrier(group=control_group())
    dist.destroy_process_group()


def barrier() -> None:
    """Waits until every rank gets here (nothing to wait for in a single process)."""
    if current().distributed:
        dist.barrier(group=control_group())
