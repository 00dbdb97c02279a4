"""Brightness, contrast, saturation and hue as one colour matrix and offset per image."""

from __future__ import annotations

import math
from typing import Any

import torch
from kornia.augmentation import IntensityAugmentationBase2D

from runner.augment.ops.shared import probability, refuse_same_on_batch, uniform
from runner.config.errors import ConfigError

# ITU-R BT.601 luma weights as torchvision's rgb_to_grayscale rounds them.
_LUMA = (0.2989, 0.587, 0.114)


class ColorJitterAffine(IntensityAugmentationBase2D):
    """ColorJitter as one affine colour transform per sample: x -> A x + t, then clamp.

    Brightness (scale by b), saturation (blend with the luma image by s), contrast (blend
    with the mean luma by c) and hue (rotation by 2*pi*h about the gray axis) are all
    affine maps of the RGB vector, so in any order they compose into one 3x3 matrix and
    an offset per sample, applied to the batch in a single matmul. Factors are drawn as
    torchvision draws them (b, c, s uniform in [1 - x, 1 + x], h uniform in [-x, x]), in
    a random order per batch. Two differences from torchvision's ColorJitter: values are
    clamped to [0, 1] once at the end rather than after every step, and hue is a rotation
    about the gray axis rather than a shift of HSV hue (both turn the colour wheel by the
    same angle; they differ in how saturated colours move: for hue 0.05 on random colours
    the two results differ by 0.040 on average where either moves a pixel by 0.05).

    Args:
        brightness: Brightness jitter x >= 0.
        contrast: Contrast jitter x >= 0.
        saturation: Saturation jitter x >= 0.
        hue: Hue jitter x in [0, 0.5] (a fraction of a full turn).
        p: Probability that a sample is jittered at all.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        p: float = 1.0,
    ):
        super().__init__(p=1.0)
        for name, value in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if value < 0:
                raise ValueError(f"{name}={value!r}: expected a jitter >= 0")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue={hue!r}: expected a jitter in [0, 0.5]")
        probability(p, "p")
        self.brightness, self.contrast = float(brightness), float(contrast)
        # Constants live on the module's device: building them from Python lists per call
        # would copy from pageable host memory, which waits for the GPU every step.
        self.register_buffer("luma", torch.tensor(_LUMA), persistent=False)
        cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])
        self.register_buffer("gray_axis_cross", cross / math.sqrt(3), persistent=False)
        self.saturation, self.hue, self.prob = float(saturation), float(hue), float(p)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Draws the four factors per sample, the order of the steps and who is jittered."""
        refuse_same_on_batch(self)
        n, device = batch_shape[0], self.device

        def factor(jitter: float) -> torch.Tensor:  # torchvision's range, never negative
            return uniform(n, max(0.0, 1 - jitter), 1 + jitter, device)

        return {
            "brightness": factor(self.brightness),
            "contrast": factor(self.contrast),
            "saturation": factor(self.saturation),
            "hue": uniform(n, -self.hue, self.hue, device),
            "order": torch.randperm(4, device=device),
            "jitter": torch.rand(n, device=device) < self.prob,
        }

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Jitters every sample with its own matrix (the identity where it is skipped).

        A one-channel image is jittered as the gray RGB image it stands for: saturation
        and hue leave gray unchanged, as torchvision's ColorJitter leaves such an image.
        """
        if input.shape[1] == 1:
            gray = input.expand(-1, 3, -1, -1).contiguous()
            return self.apply_transform(gray, params, flags, transform)[:, :1]
        if input.shape[1] != 3:
            raise ConfigError(
                f"the aug preset's colour jitter (ColorJitterAffine) needs RGB or one-channel "
                f"images, and data.channels={input.shape[1]}: choose an aug preset without "
                "colour jitter (aug=basic, aug=none)"
            )
        matrix, offset = self.colour_transform(input, params)
        n, channels = input.shape[:2]
        # (N, 3, HW): a channels_last batch is copied to this layout first, because a
        # matmul over rows of 3 pixels values is five times slower than over rows of HW.
        flat = input.reshape(n, channels, input.shape[-2] * input.shape[-1])
        out = torch.baddbmm(offset.unsqueeze(-1), matrix, flat).view(input.shape)
        return out.clamp_(0, 1) if not out.requires_grad else out.clamp(0, 1)

    def colour_transform(
        self, input: torch.Tensor, params: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (N, 3, 3) matrices A and (N, 3) offsets t of x -> A x + t.

        Composed as 4x4 homogeneous matrices [A t; 0 1], step by step in the drawn order;
        the step is picked on the device (no host read of the order).
        """
        n, device, dtype = input.shape[0], input.device, input.dtype
        luma = self.luma.to(device=device, dtype=dtype)
        eye = torch.eye(3, device=device, dtype=dtype)
        factors = {
            k: params[k].to(device=device, dtype=dtype)
            for k in ("brightness", "contrast", "saturation", "hue")
        }
        brightness = _homogeneous(factors["brightness"].view(n, 1, 1) * eye)
        saturation = _homogeneous(_blend(eye, luma.expand(3, 3), factors["saturation"]))
        cross = self.gray_axis_cross.to(device=device, dtype=dtype)
        hue = _homogeneous(_hue_rotation(factors["hue"], cross))
        # Contrast blends with the mean luma of the image as it is at that step: the
        # channel means pushed through the steps before it.
        channel_mean = torch.ones(n, 4, 1, device=device, dtype=dtype)
        if self.contrast > 0:
            channel_mean[:, :3, 0] = input.mean((2, 3))
        contrast = factors["contrast"].view(n, 1, 1)
        order = params["order"].to(device)
        current = torch.eye(4, device=device, dtype=dtype).expand(n, 4, 4)
        for position in range(4):
            mean_luma = (current @ channel_mean)[:, :3, 0] @ luma
            contrast_step = _homogeneous(
                contrast * eye, (1 - contrast.view(n, 1)) * mean_luma.view(n, 1)
            )
            steps = torch.stack([brightness, contrast_step, saturation, hue])
            # index_select with a tensor index: indexing with a 0-d tensor reads it back.
            step = steps.index_select(0, order[position : position + 1]).squeeze(0)
            current = step @ current
        jitter = params["jitter"].to(device).view(n, 1, 1)
        current = torch.where(jitter, current, torch.eye(4, device=device, dtype=dtype))
        return current[:, :3, :3], current[:, :3, 3]


def _homogeneous(matrix: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, 3) matrices and (N, 3) offsets -> (N, 4, 4) [[A, t], [0, 1]]."""
    out = torch.zeros(matrix.shape[0], 4, 4, device=matrix.device, dtype=matrix.dtype)
    out[:, :3, :3] = matrix
    out[:, 3, 3] = 1
    if offset is not None:
        out[:, :3, 3] = offset.expand(-1, 3)
    return out


def _blend(eye: torch.Tensor, target: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * I + (1 - factor) * target, per sample."""
    factor = factor.view(-1, 1, 1)
    return factor * eye + (1 - factor) * target


def _hue_rotation(hue: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """Rotation by 2*pi*hue about the gray axis (R = G = B) of the RGB cube (Rodrigues).

    Of the linear hue rotations this one is the closest to torchvision's HSV hue shift
    (mean absolute difference 0.040 vs 0.049 for the YIQ rotation at hue 0.05, on random
    colours, where the shift itself moves pixels by 0.050). `cross` is the cross-product
    matrix of the unit gray axis.
    """
    device, dtype = cross.device, cross.dtype
    angle = 2 * math.pi * hue.view(-1, 1, 1)
    axis = torch.full((3,), 1 / math.sqrt(3), device=device, dtype=dtype)
    eye = torch.eye(3, device=device, dtype=dtype)
    return (
        torch.cos(angle) * eye
        + torch.sin(angle) * cross
        + (1 - torch.cos(angle)) * torch.outer(axis, axis)
    )
