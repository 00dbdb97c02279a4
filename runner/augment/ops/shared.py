"""What the fused ops share: argument checks, box draws, the crop-and-flip matrix.

Boxes are drawn as torchvision draws them; `loops_per_sample` says when a per-sample loop
beats the batched kernel on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Per-sample loops pay ~20 us of Python per image; below this many pixels per image the
# batched gather is cheaper on the CPU (measured at 32x32, 64x64 and 224x224).
PER_SAMPLE_MIN_PIXELS = 128 * 128


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """A size as (height, width), checked; `name` is the argument, for the error."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
    if len(pair) != 2 or not whole or min(pair) <= 0:  # 24.5 was cut to 24, True taken as 1
        raise ValueError(f"{name}={value!r}: expected a positive size or a (height, width) pair")
    return int(pair[0]), int(pair[1])


def value_range(value: Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
    """A (min, max) pair within [low, high], checked; `name` is the argument, for the error."""
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
        raise ValueError(
            f"{name}={value!r}: expected (min, max) with {low} <= min <= max <= {high}"
        )
    return pair


def probability(value: float, name: str) -> float:
    """A probability in [0, 1], checked; `name` is the argument, for the error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r}: expected a probability in [0, 1]")
    return float(value)


def uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    """`n` draws from U(low, high) on `device`."""
    return torch.rand(n, device=device) * (high - low) + low


def refuse_same_on_batch(module: torch.nn.Module) -> None:
    """These modules draw per sample; Kornia containers can set `same_on_batch` on them."""
    if module.same_on_batch:
        raise ValueError(
            f"{type(module).__name__} draws its parameters per sample and does not support "
            "same_on_batch=True; use the Kornia module it fuses for that"
        )


def loops_per_sample(images: torch.Tensor) -> bool:
    """Whether a per-sample loop beats the batched kernel: large images on the CPU."""
    pixels = images.shape[-2] * images.shape[-1]
    return images.device.type == "cpu" and pixels >= PER_SAMPLE_MIN_PIXELS


def box_tries(
    n: int, height: int, width: int, scale, ratio, device: torch.device, tries: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """`tries` candidate box sides per sample, drawn as torchvision draws them.

    The area share is uniform in `scale` and the aspect log-uniform in `ratio`; returns
    sqrt(area * aspect) and sqrt(area / aspect), rounded, each (n, tries).
    """
    area = height * width * uniform(n * tries, *scale, device).view(n, tries)
    log_ratio = uniform(n * tries, *(math.log(r) for r in ratio), device)
    aspect = torch.exp(log_ratio).view(n, tries)
    return torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()


def first_fit(fits: torch.Tensor, *sides: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Whether any try fits, then each side of the first try that fits (per sample)."""
    first = fits.long().argmax(1, keepdim=True)  # argmax returns the first maximum
    return fits.any(1), *(side.gather(1, first).squeeze(1) for side in sides)


def random_corner(height: int, width: int, box_h, box_w, device) -> tuple[torch.Tensor, ...]:
    """A uniformly random top-left corner per sample that keeps the box inside."""
    top = (torch.rand(len(box_h), device=device) * (height - box_h + 1)).long()
    left = (torch.rand(len(box_w), device=device) * (width - box_w + 1)).long()
    return top, left


def scale_shift_flip(scale_x, scale_y, shift_x, shift_y, flip, out_width, like):
    """(N, 3, 3): x -> scale_x x + shift_x, y -> scale_y y + shift_y, then mirrored where flip.

    The mirror maps x to out_width - 1 - x; `like` gives the device and dtype.
    """
    matrix = torch.eye(3, device=like.device, dtype=like.dtype).repeat(len(flip), 1, 1)
    matrix[:, 0, 0] = torch.where(flip, -scale_x, scale_x)
    matrix[:, 0, 2] = torch.where(flip, out_width - 1 - shift_x, shift_x)
    matrix[:, 1, 1] = scale_y
    matrix[:, 1, 2] = shift_y
    return matrix
