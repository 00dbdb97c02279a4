"""The policy presets' RandAugment, drawing its op indices on the host.

TrivialAugment and AutoAugment are Kornia's own (`kornia.augmentation.auto`): they pick
their sub-policy with a `Categorical` built on the host at construction, so they never
read a device tensor back. Kornia's RandAugment draws its op indices with `randperm` on the
default device, which is the batch's device while `DeviceAugment` draws parameters; the
indices then choose Python modules, which on a GPU would read them back every step.

Kornia's RandAugment also builds each op's magnitude from a vector on the default device
and the op's range, which the move to the batch's device has put there, read back to the
host per op and step. Three ops (brightness, contrast, color) return their factor on the
device Kornia built their range on, the host, so on CUDA the magnitude (on the GPU) and
the factor (on the host) did not add up: a run failed at the first batch that drew one of
them. Ours takes the magnitudes as host numbers, computed once from the ranges.
"""

from __future__ import annotations

import torch
from kornia.augmentation.auto import RandAugment as KorniaRandAugment
from kornia.augmentation.auto.operations import Posterize, TranslateX, TranslateY
from kornia.augmentation.container.params import ParamItem


class RandAugment(KorniaRandAugment):
    """Kornia's `RandAugment` (same arguments and ops) with its op indices drawn on the host.

    Args:
        n: Ops per batch, an integer (Kornia checks only its range: n=1.5 failed at the
            first augmented batch, slicing the op indices).
        m: Magnitude, 0..30.
        policy: Kornia's policy (None = its default).
        transformation_matrix_mode: As Kornia's.
    """

    def __init__(
        self,
        n: int,
        m: int,
        policy: list | None = None,
        transformation_matrix_mode: str = "silent",
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"n={n!r}: expected a whole number of ops per batch (1..15)")
        super().__init__(n, m, policy, transformation_matrix_mode)
        # Read once, while the ranges are on the host (the pipeline is built there).
        self._magnitude_ranges = {
            name: low_and_scale(module[0].magnitude_range) for name, module in self.named_children()
        }

    def rand_selector(self, n: int) -> torch.Tensor:
        """`n` distinct op indices, drawn on the host (on the CPU: Kornia's draws exactly)."""
        return torch.randperm(len(self), device="cpu")[:n]

    def forward_parameters(self, batch_shape: torch.Size) -> list[ParamItem]:
        """Kornia's parameters (ops, magnitudes, factors), with each magnitude a host scalar.

        The magnitude is `low + (high - low) * m / 30` over the op's range, as Kornia's
        (posterize counts down from its high end; a translation's range is a fraction of
        the image side), in float32 as Kornia computes it. A 0-dim host tensor adds to an
        op's factor on any device.

        Args:
            batch_shape: Shape of the batch to augment, (N, C, H, W).

        Returns:
            One ParamItem per drawn op, as Kornia records them.
        """
        params = []
        share = torch.tensor(self.m / 30, device="cpu")
        for name, module in self.get_forward_sequence():
            op = module[0]
            magnitude = None
            if self._magnitude_ranges[name] is not None:
                low, scale = self._magnitude_ranges[name]
                magnitude = (1 - share if isinstance(op, Posterize) else share) * scale + low
                if isinstance(op, TranslateX):
                    magnitude = magnitude * batch_shape[-1]
                elif isinstance(op, TranslateY):
                    magnitude = magnitude * batch_shape[-2]
            drawn = op.forward_parameters(batch_shape, mag=magnitude)
            op_name = next(iter(module.named_children()))[0]
            params.append(ParamItem(name, [ParamItem(op_name, drawn)]))
        return params


def low_and_scale(magnitude_range: tuple | torch.Tensor | None) -> tuple | None:
    """An op's range start and width as Kornia computes them, copied off the module.

    Args:
        magnitude_range: The op's `magnitude_range`: None, a pair of numbers, or a
            2-element tensor (Kornia's range buffer).

    Returns:
        None, or (low, high - low): low a number or a 0-dim host tensor of the range's
        dtype (a copy, which a later move of the module leaves on the host), the width a
        float from the range's own dtype, as Kornia's `float(maxval - minval)`.
    """
    if magnitude_range is None:
        return None
    low, high = magnitude_range
    width = float(high - low)
    return (low.detach().clone() if isinstance(low, torch.Tensor) else low), width
