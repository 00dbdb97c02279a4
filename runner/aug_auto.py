"""Kornia's RandAugment, TrivialAugment and AutoAugment with their operations in fewer passes.

The policies here are Kornia's own (`kornia.augmentation.auto`): the same op tables, the
same magnitude mapping, the same parameter draws on the batch's device, the same `params`
replay. Two things change, both in how pixels are computed, not which:

* Kornia wraps every operation in an `OperationBase` whose forward blends the op's output
  with its input, `p * out + (1 - p) * x`, for a gate `p` that a drawn sample makes 0 or 1
  (the wrapped op already leaves a gated-off image untouched). That blend is three passes
  over the batch per operation, as much as many of the operations themselves; the
  operations here apply the hard gate only.
* Five operations whose Kornia implementation makes many passes (or goes through HSV) are
  computed with fewer: sharpness as slice sums instead of a convolution, posterize as one
  bit mask, solarize as one interpolation by the mask, saturation in closed form (scaling
  HSV saturation keeps each pixel's max and moves the other channels towards it), and
  auto-contrast with plain min/max reductions. tests/test_aug_auto.py checks each against
  Kornia's on the same parameters.

Only the gate differs when a caller passes its own fractional gates (Kornia's soft blend for
differentiable policy search): here any gate above zero applies the operation.
"""

from __future__ import annotations

from typing import Any

import kornia.augmentation as K
import torch
from kornia.augmentation.auto import AutoAugment as KorniaAutoAugment
from kornia.augmentation.auto import RandAugment as KorniaRandAugment
from kornia.augmentation.auto import TrivialAugment as KorniaTrivialAugment
from kornia.augmentation.auto.operations import OperationBase
from kornia.augmentation.auto.operations import ops as kornia_ops

from runner.aug_ops import FastWarp


class _HardGate:
    """`OperationBase.forward` with the gate applied by the wrapped op alone (no blend pass).

    On the CPU an operation whose gate picks some rows but not all (AutoAugment's p < 1)
    runs on those rows only and writes them back into a copy of the batch. Kornia computes
    it on the whole batch and then picks rows with `torch.where`; the pixels are the same.
    On other devices the whole-batch way stays: choosing rows means reading the gate on
    the host, a device sync per operation.
    """

    def forward(
        self, input: torch.Tensor, params: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if params is None:
            params = self.forward_parameters(input.shape)
        gated = dict(params)
        gated["batch_prob"] = (params["batch_prob"] > 0).to(params["batch_prob"].dtype)
        if input.device.type == "cpu" and input.ndim == 4:
            rows = gated["batch_prob"].nonzero().flatten()
            if 0 < len(rows) < len(input):
                return self._apply_to_rows(input, gated, rows)
        return self.op(input, params=gated)

    def _apply_to_rows(
        self, input: torch.Tensor, params: dict[str, torch.Tensor], rows: torch.Tensor
    ) -> torch.Tensor:
        """The op on `input[rows]`, written into a copy of `input`; state as for the batch."""
        batch = len(input)
        subset = input.index_select(0, rows)
        sub_params = {
            key: value.index_select(0, rows)
            if torch.is_tensor(value) and value.ndim and len(value) == batch
            else value
            for key, value in params.items()
        }
        if "forward_input_shape" in params:  # a shape, not per sample (even if batch == 4)
            sub_params["forward_input_shape"] = torch.tensor(subset.shape)
        out = input.clone().index_copy_(0, rows, self.op(subset, params=sub_params))
        # What the op records (read by the policy for matrices, and for replay) describes the
        # whole batch, as after Kornia's whole-batch call: gated-off rows keep the identity.
        matrix = getattr(self.op, "_transform_matrix", None)
        lazy = getattr(self.op, "_lazy_matrix_args", None)
        if torch.is_tensor(matrix) and len(matrix) == len(rows):
            identity = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
            self.op._transform_matrix = identity.repeat(batch, 1, 1).index_copy_(0, rows, matrix)
        elif lazy is not None:  # the matrix is computed when first read: from the whole batch
            self.op._lazy_matrix_args = (input, params, lazy[2])
        self.op._params = params
        return out


class _Sharpness(K.RandomSharpness):
    """Kornia's sharpness (PIL's 3x3 smoothing, border kept) with the kernel as slice sums."""

    def apply_transform(self, input, params, flags, transform=None):
        if input.shape[-2] < 3 or input.shape[-1] < 3:
            return super().apply_transform(input, params, flags, transform)
        images = input.clamp(0.0, 1.0)
        # The kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 is a 3x3 box sum plus 4x the centre.
        rows = images[..., :-2, :] + images[..., 1:-1, :]
        rows += images[..., 2:, :]
        smooth = rows[..., :-2] + rows[..., 1:-1]
        smooth += rows[..., 2:]
        centre = images[..., 1:-1, 1:-1]
        smooth.add_(centre, alpha=4.0).div_(13.0).clamp_(0.0, 1.0)
        factor = params["sharpness"].to(images.device, images.dtype).view(-1, 1, 1, 1)
        out = images.clone()
        out[..., 1:-1, 1:-1] = torch.lerp(smooth, centre, factor).clamp_(0.0, 1.0)
        return out


class _Posterize(K.RandomPosterize):
    """Kornia's posterize (8-bit levels, keep the top `bits`) as one bit mask per image."""

    def apply_transform(self, input, params, flags, transform=None):
        images = input.clamp(0.0, 1.0)
        bits = params["bits_factor"].to(images.device).long().clamp(0, 8).view(-1, 1, 1, 1)
        # 8 bits keep the input exactly; fewer keep the top bits of its 8-bit level.
        mask = (255 - ((1 << (8 - bits)) - 1)).to(torch.uint8)
        levels = images.mul(255.0).to(torch.uint8).bitwise_and_(mask)
        posterized = levels.to(images.dtype).div_(255.0)
        # Kornia returns 8-bit images unquantized; a per-image lerp picks them without a host read.
        return torch.lerp(posterized, images, (bits == 8).to(images.dtype))


class _Solarize(K.RandomSolarize):
    """Kornia's solarize (after an optional addition): invert the pixels at or above a threshold."""

    def apply_transform(self, input, params, flags, transform=None):
        images = input.clamp(0.0, 1.0)
        n = images.shape[0]
        additions = params.get("additions")
        if additions is not None:
            shift = additions.to(images.device, images.dtype).view(n, 1, 1, 1)
            images = images.add_(shift).clamp_(0.0, 1.0)
        thresholds = params["thresholds"].to(images.device, images.dtype).view(n, 1, 1, 1)
        keep = (images < thresholds).to(images.dtype)
        return torch.lerp(1.0 - images, images, keep)


class _Saturation(K.RandomSaturation):
    """Kornia's saturation (scale HSV saturation, clamp to 1) without the HSV round trip.

    With hue and value fixed, every channel is `v - (v - c) * s' / s`: the maximum stays and
    the other channels move towards it, so `s' = min(factor * s, 1)` needs only the per-pixel
    maximum and minimum.
    """

    def apply_transform(self, input, params, flags, transform=None):
        if input.shape[-3] != 3:
            return super().apply_transform(input, params, flags, transform)
        images = input.clamp(0.0, 1.0)
        factor = params["saturation_factor"].to(images.device, images.dtype).view(-1, 1, 1, 1)
        red, green, blue = images[:, 0:1], images[:, 1:2], images[:, 2:3]
        value = torch.maximum(torch.maximum(red, green), blue)
        spread = value - torch.minimum(torch.minimum(red, green), blue)
        # s' / s = min(factor, 1 / s) with s = spread / value; gray pixels (spread 0) stay.
        scale = torch.minimum(value / spread.clamp_min_(1e-12), factor)
        out = (value - images).mul_(scale)
        return torch.sub(value, out).clamp_(0.0, 1.0)


class _AutoContrast(K.RandomAutoContrast):
    """Kornia's auto-contrast (stretch each channel to [0, 1]) with plain min/max reductions."""

    def apply_transform(self, input, params, flags, transform=None):
        flat = input.flatten(-2)
        low = flat.amin(-1, keepdim=True)
        scale = (flat.amax(-1, keepdim=True) - low).add_(1e-6).reciprocal_()
        out = (flat - low).mul_(scale).view_as(input)
        return out.clamp_(0.0, 1.0) if self.clip_output else out


class _Rotate(FastWarp, K.RandomRotation):
    """Kornia's rotation with the sampling grid built in fewer passes (same grid)."""


class _Shear(FastWarp, K.RandomShear):
    """Kornia's shear with the sampling grid built in fewer passes (same grid)."""

    _PADDING = None


class _Translate(FastWarp, K.RandomTranslate):
    """Kornia's translation with the sampling grid built in fewer passes (same grid)."""

    _PADDING = None


# Kornia's operation class -> the same class computed in fewer passes. Exact type match:
# a user's subclass of a Kornia op keeps its own apply_transform.
_FAST_OPS: dict[type, type] = {
    K.RandomSharpness: _Sharpness,
    K.RandomPosterize: _Posterize,
    K.RandomSolarize: _Solarize,
    K.RandomSaturation: _Saturation,
    K.RandomAutoContrast: _AutoContrast,
    K.RandomRotation: _Rotate,
    K.RandomShear: _Shear,
    K.RandomTranslate: _Translate,
}


_GATED: dict[type, type] = {}


def _hard_gated(cls: type) -> type:
    """The hard-gated subclass of an operation wrapper class, one per class.

    Kornia's wrappers get theirs at import under a module-level name, so a pickled policy
    finds them by name; another class's keeps a name of its own only if it is still free.
    """
    gated = _GATED.get(cls)
    if gated is None:
        name = f"HardGated{cls.__name__}"
        gated = type(name, (_HardGate, cls), {"__module__": __name__, "__qualname__": name})
        _GATED[cls] = gated
        globals().setdefault(name, gated)
    return gated


# Defined at import, so that an unpickling process finds them before any policy is built.
_WRAPPERS = [w for w in vars(kornia_ops).values() if isinstance(w, type) and w is not OperationBase]
for _wrapper in _WRAPPERS:
    if issubclass(_wrapper, OperationBase):
        _hard_gated(_wrapper)


def accelerate(policy: torch.nn.Module) -> torch.nn.Module:
    """Switch a Kornia auto-augment policy's operations to the hard gate and the fast ops.

    The modules keep their state (parameters, generators, magnitudes): only their classes
    change, to subclasses that compute the same pixels in fewer passes.

    Args:
        policy: a `kornia.augmentation.auto` policy (or any module holding its operations).

    Returns:
        The same module, changed in place.
    """
    for module in policy.modules():
        if isinstance(module, OperationBase) and not isinstance(module, _HardGate):
            module.__class__ = _hard_gated(type(module))
            fast = _FAST_OPS.get(type(module.op))
            if fast is not None:
                module.op.__class__ = fast
    return policy


class RandAugment(KorniaRandAugment):
    """Kornia's `RandAugment` (same arguments) with `accelerate`'d operations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        accelerate(self)

    def rand_selector(self, n: int) -> torch.Tensor:
        """`n` distinct op indices, drawn on the host.

        Kornia draws them on the default device, which is the batch's device while
        DeviceAugment runs; the indices then pick Python modules, so on a GPU each step
        would read them back (a sync). On the CPU the draws are Kornia's exactly.
        """
        return torch.randperm(len(self._modules), device="cpu")[:n]


class TrivialAugment(KorniaTrivialAugment):
    """Kornia's `TrivialAugment` (same arguments) with `accelerate`'d operations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        accelerate(self)


class AutoAugment(KorniaAutoAugment):
    """Kornia's `AutoAugment` (same arguments) with `accelerate`'d operations."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        accelerate(self)
