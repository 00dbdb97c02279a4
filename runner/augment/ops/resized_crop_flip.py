"""torchvision's RandomResizedCrop and a horizontal flip as one resampling per image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from kornia.augmentation import GeometricAugmentationBase2D

from runner.augment.ops.shared import (
    box_tries,
    first_fit,
    loops_per_sample,
    pair,
    probability,
    random_corner,
    refuse_same_on_batch,
    scale_shift_flip,
    value_range,
)


class RandomResizedCropFlip(GeometricAugmentationBase2D):
    """torchvision's RandomResizedCrop followed by a horizontal flip, as one resampling.

    Boxes are drawn as torchvision draws them (area share from `scale`, aspect ratio
    log-uniform in `ratio`, up to 10 tries, else the central crop of the nearest allowed
    ratio), vectorised over the batch. On the CPU with images of 128x128 pixels or more,
    each box is resampled with bilinear `F.interpolate` (antialiased where it shrinks);
    otherwise the whole batch is resampled by one separable bilinear gather with the flip
    folded into the column indices, which does not antialias: where a box is larger than
    `size` (images bigger than the output) the two paths differ, on CUDA too.

    Args:
        size: Output (height, width), or one int for a square.
        scale: Range of the box's share of the image area.
        ratio: Range of the box's aspect ratio (width / height).
        flip_p: Probability of a horizontal flip per sample.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
    ):
        super().__init__(p=1.0)
        self.size = pair(size, "size")
        self.scale = value_range(scale, "scale", 0.0, 1.0)
        self.ratio = value_range(ratio, "ratio", 1e-6, math.inf)
        self.flip_p = probability(flip_p, "flip_p")

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Draws boxes (top, left, height, width) and flips on `self.device`."""
        refuse_same_on_batch(self)
        n, _, height, width = batch_shape
        device = self.device
        box_w, box_h = box_tries(n, height, width, self.scale, self.ratio, device)
        fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
        any_fit, box_w, box_h = first_fit(fits, box_w, box_h)
        # No try fits: torchvision's fallback, the central crop of the nearest ratio.
        low, high = self.ratio
        if width / height < low:
            fallback = (width, min(height, round(width / low)))
        elif width / height > high:
            fallback = (min(width, round(height * high)), height)
        else:
            fallback = (width, height)
        box_w = torch.where(any_fit, box_w, fallback[0])
        box_h = torch.where(any_fit, box_h, fallback[1])
        top, left = random_corner(height, width, box_h, box_w, device)
        top = torch.where(any_fit, top, (height - box_h) // 2)
        left = torch.where(any_fit, left, (width - box_w) // 2)
        return {
            "box": torch.stack([top, left, box_h, box_w], 1),
            "flip": torch.rand(n, device=device) < self.flip_p,
        }

    def compute_transformation(
        self, input: torch.Tensor, params: dict[str, torch.Tensor], flags: dict[str, Any]
    ) -> torch.Tensor:
        """Input pixel (x, y) -> output pixel, with pixel centres at +0.5 (align_corners=False)."""
        top, left, box_h, box_w = params["box"].to(input).unbind(1)
        out_h, out_w = self.size
        scale_x, scale_y = out_w / box_w, out_h / box_h
        shift_x = (0.5 - left) * scale_x - 0.5
        shift_y = (0.5 - top) * scale_y - 0.5
        return scale_shift_flip(scale_x, scale_y, shift_x, shift_y, params["flip"], out_w, input)

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Resamples every sample's box to `size`, mirrored where its flip is set."""
        box, flip = params["box"].to(input.device), params["flip"].to(input.device)
        if loops_per_sample(input):
            return self._per_sample(input, box, flip)
        return self._batched(input, box, flip)

    def _per_sample(self, input: torch.Tensor, box: torch.Tensor, flip: torch.Tensor):
        out_h, out_w = self.size
        crops = []
        for index, ((top, left, box_h, box_w), mirror) in enumerate(
            zip(box.tolist(), flip.tolist(), strict=True)
        ):
            crop = input[index : index + 1, :, top : top + box_h, left : left + box_w]
            crop = F.interpolate(
                crop,
                size=self.size,
                mode="bilinear",
                align_corners=False,
                antialias=box_h > out_h or box_w > out_w,
            )
            crops.append(crop.flip(-1) if mirror else crop)
        return torch.cat(crops)

    def _batched(self, input: torch.Tensor, box: torch.Tensor, flip: torch.Tensor):
        n, channels, _, width = input.shape
        out_h, out_w = self.size
        top, left, box_h, box_w = box.unbind(1)
        rows_lo, rows_hi, row_weight = _bilinear_taps(top, box_h, out_h)
        cols_lo, cols_hi, col_weight = _bilinear_taps(left, box_w, out_w)
        mirrored = flip.view(-1, 1)
        cols_lo = torch.where(mirrored, cols_lo.flip(1), cols_lo)
        cols_hi = torch.where(mirrored, cols_hi.flip(1), cols_hi)
        col_weight = torch.where(mirrored, col_weight.flip(1), col_weight)

        def rows(index):
            return input.gather(2, index.view(n, 1, out_h, 1).expand(n, channels, out_h, width))

        resized = torch.lerp(
            rows(rows_lo), rows(rows_hi), row_weight.to(input.dtype).view(n, 1, out_h, 1)
        )

        def cols(index):
            return resized.gather(3, index.view(n, 1, 1, out_w).expand(n, channels, out_h, out_w))

        return torch.lerp(
            cols(cols_lo), cols(cols_hi), col_weight.to(input.dtype).view(n, 1, 1, out_w)
        )


def _bilinear_taps(start: torch.Tensor, length: torch.Tensor, out: int):
    """Per sample and output index: the two source indices and the weight of the second.

    Pixel centres follow align_corners=False; positions are clamped to the box's own
    pixels, as cropping first and then resizing would.
    """
    steps = (torch.arange(out, device=start.device, dtype=torch.float32) + 0.5) / out
    position = start.view(-1, 1) + steps * length.view(-1, 1) - 0.5
    first, last = start.view(-1, 1).float(), (start + length - 1).view(-1, 1).float()
    position = torch.minimum(position.maximum(first), last)
    low = position.floor()
    weight = position - low
    high = torch.minimum(low + 1, last)
    return low.long(), high.long(), weight
