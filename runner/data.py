"""Data sets as uint8 tensors, stratified splits, and loaders that batch by index.

Every data set factory returns a `DataSplits`: uint8 NCHW images and int64 labels for the
train, val and test splits, plus the class names and normalisation statistics.
Augmentation and normalisation happen later, batched on the device.

A split is either resident (`Split`: decoded uint8 tensors) or encoded
(`runner.streaming.EncodedSplit`: image files decoded by loader workers). Both offer
`labels`, `image_size`, `subset`, `with_labels` and `loader`, so the rest of a run, and
the real-world switches in `runner.realworld`, treat them alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Split:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def take(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels at `indices` (same interface as a streaming split)."""
        return self.images[indices.to(self.images.device)], self.labels[
            indices.to(self.labels.device)
        ]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        """Height (= width) of the images."""
        return int(self.images.shape[-1])

    def to(self, device: torch.device) -> Split:
        """Moves the split to `device` (images stay uint8: 4x less traffic than float)."""
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, indices: torch.Tensor) -> Split:
        """The samples at `indices` (int64), in that order."""
        return Split(self.images[indices].contiguous(), self.labels[indices].contiguous())

    def with_labels(self, labels: torch.Tensor) -> Split:
        """The same images with other labels (label noise)."""
        return Split(self.images, labels)

    def loader(
        self,
        batch_size: int,
        device: torch.device,
        sampler=None,
        drop_last: bool = False,
    ) -> ResidentLoader:
        """A loader over the split, moved to `device` once and batched by index there."""
        return ResidentLoader(self.to(device), batch_size, sampler, drop_last=drop_last)


@dataclass
class DataSplits:
    """The splits of a data set and what the rest of a run needs to know about it."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Params to log with the run (e.g. the actual noise rate after the switches).
    extra_params: dict = field(default_factory=dict)
    # (path, reason) of every file that was skipped because it could not be decoded.
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    # The train labels before label noise (aligned with `train`); None = no noise.
    clean_train_labels: torch.Tensor | None = None
    # Whether the train split was made long-tailed (reports head/medium/tail accuracy).
    long_tailed: bool = False

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Height (= width) of the images."""
        return self.train.image_size

    def class_counts(self) -> torch.Tensor:
        """Number of training samples per class (int64, on the CPU)."""
        return torch.bincount(self.train.labels.cpu(), minlength=self.num_classes)


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits indices into train/val/test, keeping each class's share in every split.

    Args:
        labels: Integer class label per sample.
        val_fraction: Share of samples for validation.
        test_fraction: Share of samples for testing.
        seed: Seed of the split; the same seed gives the same split.

    Returns:
        Index arrays for train, val and test.
    """
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * val_fraction)
        test.append(idx[:n_test])
        val.append(idx[n_test : n_test + n_val])
        train.append(idx[n_test + n_val :])
    return tuple(np.sort(np.concatenate(part)) for part in (train, val, test))


def channel_stats(
    images: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the [0, 1] scale.

    Counts each channel's 256 values (a histogram) and takes the moments from it: exact,
    no float copy of the images, and about 10x faster than float sums (start-up time).
    """
    channels = images.shape[1]
    histogram = torch.zeros(channels, 256, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].transpose(0, 1).reshape(channels, -1)
        for c in range(channels):
            histogram[c] += torch.from_numpy(np.bincount(part[c].numpy(), minlength=256))
    values = torch.arange(256, dtype=torch.float64) / 255
    count = histogram[0].sum()
    mean = (histogram * values).sum(1) / count
    squares = (histogram * values.square()).sum(1)
    variance = (squares - count * mean.square()) / max(float(count) - 1, 1)
    std = variance.clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


def _finish(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> DataSplits:
    train_idx, val_idx, test_idx = stratified_split(
        labels.numpy(), val_fraction, test_fraction, split_seed
    )
    train = Split(images[train_idx].contiguous(), labels[train_idx].contiguous())
    if mean is None or std is None:
        stat_mean, stat_std = channel_stats(train.images)
        mean = stat_mean if mean is None else mean
        std = stat_std if std is None else std
    return DataSplits(
        name=name,
        train=train,
        val=Split(images[val_idx].contiguous(), labels[val_idx].contiguous()),
        test=Split(images[test_idx].contiguous(), labels[test_idx].contiguous()),
        class_names=list(class_names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def load_digits(
    name: str = "digits",
    image_size: int = 32,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataSplits:
    """scikit-learn's handwritten digits, upscaled to `image_size`, 3 channels, uint8.

    The 1,797 8x8 images ship with scikit-learn, so this works offline.

    Args:
        name: Name of the data set (the MLflow experiment name by default).
        image_size: Output height and width.
        val_fraction: Share of each class for validation.
        test_fraction: Share of each class for testing.
        split_seed: Seed of the stratified split.
        mean: Per-channel normalisation mean; None computes it from the train split.
        std: Per-channel normalisation std; None computes it from the train split.

    Returns:
        The stratified splits.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixel values are 0..16; scale to 0..255 before resizing so interpolation is exact.
    small = torch.from_numpy(bunch.images).float().mul_(255.0 / 16.0).unsqueeze(1)
    large = F.interpolate(
        small, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    images = large.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(bunch.target).long()
    class_names = [str(c) for c in bunch.target_names]
    return _finish(
        name,
        images,
        labels,
        class_names,
        val_fraction,
        test_fraction,
        split_seed,
        mean,
        std,
    )


def make_synthetic(
    name: str = "synthetic",
    num_samples: int = 2048,
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataSplits:
    """Random uint8 images whose class shifts the mean of one colour band.

    The signal makes the task learnable (so a smoke test can check that training
    works) while the images stay random enough for throughput benchmarks.

    Args:
        name: Name of the data set.
        num_samples: Total number of images over all splits.
        num_classes: Number of classes.
        image_size: Height and width.
        channels: Number of channels.
        val_fraction: Share of each class for validation.
        test_fraction: Share of each class for testing.
        split_seed: Seed of the images, labels and split.
        mean: Per-channel normalisation mean; None computes it from the train split.
        std: Per-channel normalisation std; None computes it from the train split.

    Returns:
        The stratified splits.
    """
    generator = torch.Generator().manual_seed(split_seed)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=generator)]
    noise = torch.randint(
        0, 160, (num_samples, channels, image_size, image_size), generator=generator
    )
    rows = torch.arange(image_size).view(1, 1, image_size, 1)
    band = (rows * num_classes // image_size) == labels.view(-1, 1, 1, 1)
    images = (noise + band * 95).to(torch.uint8)
    class_names = [f"class_{c}" for c in range(num_classes)]
    return _finish(
        name,
        images,
        labels,
        class_names,
        val_fraction,
        test_fraction,
        split_seed,
        mean,
        std,
    )


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
        self.drop_last = drop_last and len(split) > batch_size
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

    def batches_per_epoch(self) -> int:
        """Batches in a whole epoch."""
        n = self._num_samples()
        batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
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
