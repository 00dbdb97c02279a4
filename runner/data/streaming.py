"""Splits too large to keep decoded: image files decoded by loader workers, batch by batch.

`EncodedSplit` holds records (paths or encoded bytes) and labels; its `StreamingLoader`
has the interface of `runner.data.loaders.ResidentLoader` (`set_epoch`, `__len__`, `__iter__`
yielding uint8 (images, labels)) and follows the sampler's `indices(epoch)` order. Each
worker decodes a whole batch (one inter-process transfer per batch), batches are pinned
when the device is CUDA, and the next batch is copied to the device while the current
one is used. Images stay uint8 until the device.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from runner.data.decoding import (
    BadImageError,
    DataError,
    decode_record,
    record_name,
    refused_bad_file,
    to_grayscale,
)
from runner.data.loaders import EpochBatches

log = logging.getLogger(__name__)


@dataclass
class EncodedSplit:
    """A split of encoded images, decoded when batches are drawn.

    Attributes:
        records: Paths, bytes objects or image dicts (anything
            `runner.data.decoding.read_record` reads), in any indexable sequence (a list,
            a lazy Hugging Face column); shared, never copied, by subsets.
        positions: int64 (N,): sample i is `records[positions[i]]`.
        labels: int64 labels (N,).
        size: Height (= width) images are decoded to.
        num_workers: Decoding processes per loader.
        on_bad_file: "skip" drops undecodable samples from their batch; "error" stops.
        prefetch_factor: Batches each worker decodes ahead.
        ids: Sample id of each sample (N,), see `runner.data.splits`; None = not given.
        channels: 3 (RGB; gray files are repeated) or 1 (the luma of each decoded image,
            for a model trained on gray images).
    """

    records: Sequence[Any]
    positions: torch.Tensor
    labels: torch.Tensor
    size: int
    num_workers: int = 2
    on_bad_file: str = "skip"
    prefetch_factor: int = 2
    ids: np.ndarray | None = None
    channels: int = 3

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        """Height (= width) of the decoded images."""
        return self.size

    def subset(self, indices: torch.Tensor) -> EncodedSplit:
        """The samples at `indices` (int64), in that order."""
        ids = None if self.ids is None else self.ids[indices.cpu().numpy()]
        return replace(
            self, positions=self.positions[indices], labels=self.labels[indices], ids=ids
        )

    def with_labels(self, labels: torch.Tensor) -> EncodedSplit:
        """The same records with other labels (label noise)."""
        return replace(self, labels=labels)

    def _dataset(self) -> _DecodeBatches:
        """The split as batches to decode; files that do not decode are returned apart."""
        return _DecodeBatches(
            self.records, self.positions, self.labels.cpu(), self.size, self.channels
        )

    def take(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decodes the samples at `indices`: uint8 images and their labels (bad ones dropped)."""
        images, labels, _ = self._dataset()[indices.cpu()]
        return images, labels

    def decode_sample(self, count: int, seed: int = 0) -> torch.Tensor:
        """Decodes up to `count` random images (e.g. for normalisation statistics)."""
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=generator)[:count]
        images, _, _ = self._dataset()[order]
        return images

    def loader(
        self,
        batch_size: int,
        device: torch.device,
        sampler=None,
        drop_last: bool = False,
    ) -> StreamingLoader:
        """A streaming loader over the split that delivers batches on `device`."""
        return StreamingLoader(self, batch_size, device, sampler, drop_last=drop_last)


class _DecodeBatches(torch.utils.data.Dataset):
    """Item `indices` (a batch of sample ids) is that batch decoded: one task per batch."""

    def __init__(
        self,
        records: Sequence[Any],
        positions: torch.Tensor,
        labels: torch.Tensor,
        size: int,
        channels: int = 3,
    ):
        self.records = records
        self.positions = positions
        self.labels = labels
        self.size = size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(
        self, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
        images = torch.empty((len(indices), 3, self.size, self.size), dtype=torch.uint8)
        keep = torch.ones(len(indices), dtype=torch.bool)
        bad = []
        for row, position in enumerate(self.positions[indices].tolist()):
            record = self.records[position]
            try:
                images[row] = decode_record(record, self.size)
            except BadImageError as err:  # under on_bad_file=error the loader raises it
                keep[row] = False
                bad.append((record_name(record), str(err)))
        labels = self.labels[indices]
        if not bool(keep.all()):
            images, labels = images[keep], labels[keep]
        if self.channels == 1:
            images = to_grayscale(images)
        return images, labels, bad


class _OrderedBatchSampler:
    """Batch sampler: the current epoch's order, cut into batches.

    It runs in the main process, so a new epoch takes effect with persistent workers too.
    """

    def __init__(self, loader: StreamingLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        order = self.loader.order()
        size = self.loader.batch_size
        first = self.loader.start_batch * size
        for start in range(first, self.loader.batches_per_epoch() * size, size):
            # A list of one item: DataLoader hands the batch's ids to __getitem__ whole.
            yield [order[start : start + size]]


def _first(items: list) -> Any:
    return items[0]


class StreamingLoader(EpochBatches):
    """Decodes batches in worker processes in the sampler's order; see the module doc.

    Args:
        split: The encoded split.
        batch_size: Samples per batch.
        device: Where batches are delivered (pinned memory and prefetch on CUDA).
        sampler: Gives the sample order of an epoch (`indices(epoch)`); None means
            sequential order, for evaluation.
        drop_last: Whether to drop the last incomplete batch.
    """

    def __init__(
        self,
        split: EncodedSplit,
        batch_size: int,
        device: torch.device,
        sampler=None,
        drop_last: bool = False,
    ):
        super().__init__(split, batch_size, sampler, drop_last)
        self.device = torch.device(device)
        self.bad_files: list[tuple[str, str]] = []
        self._seen_bad: set[str] = set()
        workers = split.num_workers
        self._loader = torch.utils.data.DataLoader(
            split._dataset(),
            # A weak reference: loader -> DataLoader -> sampler -> loader was a cycle, so
            # a dropped loader kept its persistent workers until a garbage collection.
            batch_sampler=_OrderedBatchSampler(weakref.proxy(self)),
            collate_fn=_first,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=split.prefetch_factor if workers > 0 else None,
            # Its own generator: each iteration draws the workers' base seed, and from the
            # global one that draw shifted every later augmentation draw (a streamed run
            # then differed from the resident run of the same seed). Decoding draws nothing.
            generator=torch.Generator(),
        )

    def order(self) -> torch.Tensor:
        """The sample order of the current epoch (int64, on the CPU)."""
        if self.sampler is None:
            return torch.arange(len(self.split))
        return self.sampler.indices(self.epoch).cpu()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from _prefetch(self._batches(), self.device)

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # Under DDP every rank must take every step (each backward and agreement is a
        # collective call): a training batch is never left out by one rank alone.
        lockstep = self.sampler is not None and getattr(self.sampler, "world_size", 1) > 1
        spare = None  # this rank's last full batch, for one that bad files emptied
        owed = 0  # emptied batches before the first full one: it is given again for them
        for images, labels, bad in self._loader:
            if bad and self.split.on_bad_file == "error":  # here, not in a worker: one line
                raise refused_bad_file(bad[0][1])
            for name, reason in bad:
                if name not in self._seen_bad:
                    self._seen_bad.add(name)
                    self.bad_files.append((name, reason))
                    log.warning("skipped a bad image file: %s", reason)
            # A training batch that bad files left with one sample is left out, like a last
            # batch of one (BatchNorm needs two); an empty one has nothing to give.
            if labels.numel() > (1 if self.sampler is not None else 0):
                spare = (images, labels)
                for _ in range(1 + owed):
                    yield images, labels
                owed = 0
            elif lockstep and labels.numel() == 1:  # its one sample, twice
                yield images.repeat(2, 1, 1, 1), labels.repeat(2)
            elif lockstep and spare is not None:
                yield spare
            elif lockstep:
                owed += 1
        if owed:
            raise DataError(
                f"every training file of this process's share failed to decode (e.g. "
                f"{self.bad_files[-1][1] if self.bad_files else '?'}), and under DDP each "
                "process must take every step: fix or remove the bad files"
            )


def _prefetch(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Starts copying batch i+1 to the device before batch i is handed out."""
    pending = None
    for images, labels in batches:
        moved = (
            images.to(device, non_blocking=True),
            labels.to(device, non_blocking=True),
        )
        if pending is not None:
            yield pending
        pending = moved
    if pending is not None:
        yield pending
