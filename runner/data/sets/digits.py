"""scikit-learn's handwritten digits: 1,797 8x8 images that ship with the package."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from runner.data.splits import DataSplits, assemble_splits, index_ids


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

    The 1,797 8x8 images ship with scikit-learn, so this works offline. Sample ids are
    `digits:<index in scikit-learn's array>`.

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
        ids=index_ids("digits", len(labels)),
    )
