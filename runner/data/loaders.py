"""Loaders that cut an epoch's sample order into batches and index a split with them."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class EpochBatches:
    """What every training loader shares: an epoch's order cut into batches.

    The order depends only on (sampler seed, epoch), so an epoch interrupted after
    `start_batch` batches continues exactly where it stopped.

    Args:
        split: The split (anything with a length).
        batch_size: Samples per batch.
        sampler: Gives the sample order of an epoch (`indices(epoch)`); None means
            sequential order, for evaluation.
        drop_last: Whether to drop the last incomplete batch.
    """

    def __init__(self, split, batch_size: int, sampler=None, drop_last: bool = False):
        self.split = split
        self.batch_size = batch_size
        self.sampler = sampler
        # An epoch (of a sampler's draws, or of this rank's share) smaller than one batch
        # keeps its one incomplete batch rather than dropping it and training on nothing.
        self.drop_last = drop_last and self._num_samples() > batch_size
        self.epoch = 0
        self.start_batch = 0
        self.limit_batches: int | None = None  # trainer.limit_batches (debugging)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Chooses the epoch whose sample order the next iteration yields.

        Args:
            epoch: The epoch (the sampler's order depends only on seed and epoch).
            start_batch: Batches of that epoch to leave out, to continue an epoch
                that was interrupted after them.
        """
        self.epoch = epoch
        self.start_batch = start_batch

    def _num_samples(self) -> int:
        return len(self.split) if self.sampler is None else self.sampler.num_samples

    def full_batch(self) -> int:
        """Samples in a full batch: `batch_size`, or the epoch's when it is smaller."""
        return min(self.batch_size, self._num_samples())

    def batches_per_epoch(self) -> int:
        """Batches in a whole epoch."""
        n = self._num_samples()
        batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        if self.sampler is not None and not self.drop_last and n > 1 and n % self.batch_size == 1:
            # A training batch of one sample fails in BatchNorm: leave the last one out
            # (the order changes every epoch, so it is another sample each time).
            batches -= 1
        return batches if self.limit_batches is None else min(batches, self.limit_batches)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch


class ResidentLoader(EpochBatches):
    """Batches a split that lives in (device) memory by indexing: no per-sample Python.

    Args:
        split: The split, already on the device where batches are wanted.
        batch_size: Samples per batch.
        sampler: Gives the sample order of an epoch (`indices(epoch)`); None means
            sequential order, for evaluation.
        drop_last: Whether to drop the last incomplete batch.
    """

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.split.images, self.split.labels
        starts = range(
            self.start_batch * self.batch_size,
            self.batches_per_epoch() * self.batch_size,
            self.batch_size,
        )
        if self.sampler is None:
            for start in starts:
                yield (
                    images[start : start + self.batch_size],
                    labels[start : start + self.batch_size],
                )
            return
        order = self.sampler.indices(self.epoch).to(images.device, non_blocking=True)
        for start in starts:
            batch = order[start : start + self.batch_size]
            yield images[batch], labels[batch]


class FixedBatches:
    """A loader that yields one batch, already on the device, `count` times.

    For measuring the training step alone (the throughput mode and benchmarks/).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, count: int):
        self.images, self.labels, self.count = images, labels, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.count):
            yield self.images, self.labels
