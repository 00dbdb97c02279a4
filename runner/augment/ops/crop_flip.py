"""Pad, random crop and horizontal flip (the CIFAR recipe) as one indexed copy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from kornia.augmentation import GeometricAugmentationBase2D

from runner.augment.device import to_unit_float
from runner.augment.ops.shared import (
    loops_per_sample,
    pair,
    probability,
    refuse_same_on_batch,
    scale_shift_flip,
)
from runner.config.errors import ConfigError


class RandomCropFlip(GeometricAugmentationBase2D):
    """Pads, crops a random window and flips it horizontally, in one indexed copy.

    The CIFAR recipe (`RandomCrop(size, padding=4)` + `RandomHorizontalFlip()`) as one op:
    the crop is read through a sliding-window view of the padded batch, so the whole
    batch is cropped by a single advanced-indexing copy, and only the flipped samples are
    copied once more. On the CPU, images of 128x128 pixels or more are instead copied
    window by window, and it takes the loader's uint8 batch as it is (`DeviceAugment`
    hands it over when this is the first module): padding and cropping move bytes, and
    only the kept pixels are converted to float in [0, 1] (128 images of 224x224 take
    9 ms here, against about 15 ms converting the batch first).

    Args:
        size: Output (height, width), or one int for a square.
        padding: Pixels added on every side before cropping.
        padding_mode: "reflect", "replicate" or "constant" (zeros), as `F.pad` names them.
        flip_p: Probability of a horizontal flip per sample.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        padding: int = 0,
        padding_mode: str = "reflect",
        flip_p: float = 0.5,
    ):
        super().__init__(p=1.0)
        self.size = pair(size, "size")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding={padding!r}: expected a whole number of pixels >= 0")
        if padding_mode not in ("reflect", "replicate", "constant"):
            raise ValueError(
                f"padding_mode={padding_mode!r}: expected 'reflect', 'replicate' or 'constant'"
            )
        self.padding, self.padding_mode = int(padding), padding_mode
        self.flip_p = probability(flip_p, "flip_p")

    accepts_uint8 = True  # see the class docstring; returns float images in [0, 1]

    def transform_tensor(
        self, input: torch.Tensor, *, shape: torch.Tensor | None = None, match_channel: bool = True
    ) -> torch.Tensor:
        """Kornia's shape handling, letting a (N, C, H, W) uint8 batch through as it is."""
        if input.dtype == torch.uint8 and shape is None and input.dim() == 4:
            return input
        return super().transform_tensor(input, shape=shape, match_channel=match_channel)

    def validate_tensor(self, input: torch.Tensor) -> None:
        """Kornia's check, with uint8 among the accepted dtypes."""
        if input.dtype != torch.uint8:
            super().validate_tensor(input)
        elif input.dim() != 4:
            raise ValueError(f"RandomCropFlip: expected (N, C, H, W) images, got {input.shape}")

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Draws the window offsets (in padded coordinates) and the flips on `self.device`."""
        refuse_same_on_batch(self)
        n, _, height, width = batch_shape
        room_y = height + 2 * self.padding - self.size[0]
        room_x = width + 2 * self.padding - self.size[1]
        # ConfigErrors: the first batch (the start-up preview) meets them, and the fix is
        # in the aug preset's keys.
        if min(room_y, room_x) < 0:
            raise ConfigError(
                f"RandomCropFlip (aug.transforms): crop {self.size} does not fit images of "
                f"{height}x{width} padded by {self.padding}; set a smaller size or more padding"
            )
        if self.padding_mode == "reflect" and self.padding >= min(height, width):
            raise ConfigError(  # torch's reflect pad needs a border the image can mirror
                f"RandomCropFlip (aug.transforms): padding={self.padding} with "
                f"padding_mode='reflect' needs images larger than the padding, and these are "
                f"{height}x{width}; set a smaller padding or another padding_mode (constant, "
                "replicate)"
            )
        return {
            "offset_y": torch.randint(0, room_y + 1, (n,), device=self.device),
            "offset_x": torch.randint(0, room_x + 1, (n,), device=self.device),
            "flip": torch.rand(n, device=self.device) < self.flip_p,
        }

    def compute_transformation(
        self, input: torch.Tensor, params: dict[str, torch.Tensor], flags: dict[str, Any]
    ) -> torch.Tensor:
        """Input pixel (x, y) -> output pixel: shift by padding - offset, then mirror."""
        # Only the dtype and device matter: a uint8 batch is not converted to read them.
        like = input if input.is_floating_point() else input.new_empty(0, dtype=torch.float32)
        shift_x = (self.padding - params["offset_x"]).to(like)
        shift_y = (self.padding - params["offset_y"]).to(like)
        one = torch.ones_like(shift_x)
        return scale_shift_flip(one, one, shift_x, shift_y, params["flip"], self.size[1], like)

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Crops (and flips) every sample of `input`; uint8 comes back as float in [0, 1]."""
        offset_y = params["offset_y"].to(input.device)
        offset_x = params["offset_x"].to(input.device)
        flip = params["flip"].to(input.device)
        per_sample = loops_per_sample(input)
        if not per_sample:  # uint8 indexing has no fast kernel: convert first
            input = to_unit_float(input)
        padded = input
        if self.padding:
            padded = F.pad(input, (self.padding,) * 4, mode=self.padding_mode)
        if per_sample:
            return self._per_sample(padded, offset_y, offset_x, flip)
        windows = padded.unfold(2, self.size[0], 1).unfold(3, self.size[1], 1)
        batch = torch.arange(input.shape[0], device=input.device)
        # Advanced indices around a slice put the batch first: (N, C, h, w), contiguous.
        return _flip_where(windows[batch, :, offset_y, offset_x], flip)

    def _per_sample(self, padded, offset_y, offset_x, flip) -> torch.Tensor:
        height, width = self.size
        dtype = torch.float32 if padded.dtype == torch.uint8 else padded.dtype
        out = torch.empty(*padded.shape[:2], height, width, dtype=dtype, device=padded.device)
        for index, (top, left, mirror) in enumerate(
            zip(offset_y.tolist(), offset_x.tolist(), flip.tolist(), strict=True)
        ):
            window = padded[index, :, top : top + height, left : left + width]
            out[index] = window.flip(-1) if mirror else window  # converts uint8 on the way
        return out.div_(255) if padded.dtype == torch.uint8 else out


def _flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirrors the samples where `flip` is set.

    On the CPU only the flipped samples are copied (about half a pass over the batch,
    where a blend costs two), one by one for large images; elsewhere a blend, which
    needs no host sync.
    """
    if images.device.type == "cpu" and not images.requires_grad:
        chosen = flip.nonzero().squeeze(1)
        if loops_per_sample(images):
            for index in chosen.tolist():
                images[index] = images[index].flip(-1)
        elif len(chosen):
            images[chosen] = images.index_select(0, chosen).flip(-1)
        return images
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
