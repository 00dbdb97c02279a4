"""Random uint8 images with a learnable per-class signal, for benchmarks and smoke tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from runner.data.splits import DataSplits, assemble_splits, index_ids


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
    """Random uint8 images whose class brightens its own band of rows (or run of pixels).

    The signal makes the task learnable (so a smoke test can check that training
    works) while the images stay random enough for throughput benchmarks. Sample ids
    are `synthetic:<index>` (the order the images are drawn in).

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
    if num_classes <= image_size:  # a band of rows per class
        place = rows * num_classes // image_size
    else:  # more classes than rows: a run of pixels in reading order per class
        cols = torch.arange(image_size).view(1, 1, 1, image_size)
        place = (rows * image_size + cols) * num_classes // image_size**2
    band = place == labels.view(-1, 1, 1, 1)
    images = (noise + band * 95).to(torch.uint8)
    class_names = [f"class_{c}" for c in range(num_classes)]
    return assemble_splits(
        name,
        images,
        labels,
        class_names,
        val_fraction,
        test_fraction,
        split_seed,
        mean,
        std,
        ids=index_ids("synthetic", num_samples),
    )
