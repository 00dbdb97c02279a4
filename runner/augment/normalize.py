"""Per-channel normalisation on the device, for training and evaluation alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from runner.augment.device import to_unit_float


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
        images = to_unit_float(images)
        return ((images - self.mean) / self.std).contiguous(memory_format=self.memory_format)
