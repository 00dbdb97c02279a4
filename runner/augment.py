"""Batched augmentation and normalisation on the device (Kornia).

The loader hands out uint8 batches; `DeviceAugment` turns them into float images in
[0, 1] and applies the chosen Kornia pipeline to the whole batch at once, on whatever
device the batch is on. `Normalize` follows, for training and evaluation alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DeviceAugment(nn.Module):
    """A Kornia pipeline applied to a whole uint8 batch on its device.

    Args:
        transforms: Kornia augmentation modules, applied in order. Empty = none.
        differentiable: Keep the autograd graph through the augmentation (for learned
            or adversarial augmentation). Off by default: under no_grad it is about
            1.5x cheaper.
    """

    def __init__(self, transforms: Sequence[nn.Module] = (), differentiable: bool = False):
        super().__init__()
        self.differentiable = differentiable
        self.pipeline = None
        if transforms:
            import kornia.augmentation as K

            self.pipeline = K.AugmentationSequential(*transforms)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augments a batch.

        Args:
            images: (N, C, H, W) uint8 (0..255) or float (0..1) images.

        Returns:
            Float images in [0, 1] (the augmentation may move values slightly outside).
        """
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        if self.pipeline is None or not self.training:
            return images
        if self.differentiable:
            return self.pipeline(images)
        with torch.no_grad():
            return self.pipeline(images)


class Normalize(nn.Module):
    """Per-channel (x - mean) / std on the batch's device, optionally channels_last.

    Args:
        mean: Per-channel mean on the [0, 1] scale.
        std: Per-channel std on the [0, 1] scale.
        channels_last: Return the batch in channels_last memory format.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalises float images in [0, 1]; uint8 input is scaled first."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return ((images - self.mean) / self.std).contiguous(memory_format=self.memory_format)
