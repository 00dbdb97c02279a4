"""The policy presets' RandAugment, drawing its op indices on the host.

TrivialAugment and AutoAugment are Kornia's own (`kornia.augmentation.auto`): they pick
their sub-policy with a `Categorical` built on the host at construction, so they never
read a device tensor back. Kornia's RandAugment draws its op indices with `randperm` on the
default device, which is the batch's device while `DeviceAugment` draws parameters; the
indices then choose Python modules, which on a GPU would read them back every step.
"""

from __future__ import annotations

import torch
from kornia.augmentation.auto import RandAugment as KorniaRandAugment


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

    def rand_selector(self, n: int) -> torch.Tensor:
        """`n` distinct op indices, drawn on the host (on the CPU: Kornia's draws exactly)."""
        return torch.randperm(len(self), device="cpu")[:n]
