"""MixUp and CutMix per sample on the device, with soft targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MixUpCutMix(nn.Module):
    """MixUp (Zhang et al., 2018) and CutMix (Yun et al., 2019), per sample, on the device.

    Each sample is paired with another of the batch (a random permutation) and, with
    probability `prob`, mixed with its own lambda ~ Beta(alpha, alpha): blended (MixUp)
    or with a box pasted in (CutMix, lambda corrected to the box actually pasted). With
    both on, each mixed sample uses one of the two, with equal chance. Every random draw
    is on the batch's device and nothing is read back, so a step adds no host sync.

    Written here rather than taken from kornia's RandomMixUpV2/RandomCutMixV2: those
    draw MixUp's lambda uniformly (no alpha), pair on the host, gate the batch with a
    host sync, and paste CutMix boxes by boolean-mask indexing (another sync on CUDA).

    Args:
        num_classes: Size of the soft targets.
        mixup_alpha: MixUp's Beta concentration; 0 = off.
        cutmix_alpha: CutMix's Beta concentration; 0 = off.
        prob: Probability that a sample is mixed.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
    ):
        super().__init__()
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1:
            raise ValueError(
                f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}, prob={prob}: "
                "expected alphas >= 0 and prob in [0, 1]"
            )
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob

    def describe(self) -> str:
        """E.g. "MixUp(0.8) or CutMix(1.0), p=1.0"."""
        parts = [f"MixUp({self.mixup_alpha:g})"] if self.mixup_alpha > 0 else []
        parts += [f"CutMix({self.cutmix_alpha:g})"] if self.cutmix_alpha > 0 else []
        return " or ".join(parts) + f", p={self.prob:g}"

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixes a batch.

        Args:
            images: (N, C, H, W) float images.
            labels: (N,) int64 class ids.

        Returns:
            Mixed images and (N, num_classes) soft targets (rows sum to 1).
        """
        n, device = images.shape[0], images.device
        pairs = torch.randperm(n, device=device)
        partners = images.index_select(0, pairs)
        mixed, lam = None, None
        if self.mixup_alpha > 0:
            lam = _beta(self.mixup_alpha, n, device)
            mixed = torch.lerp(partners, images, lam.view(-1, 1, 1, 1).to(images.dtype))
        if self.cutmix_alpha > 0:
            cut, cut_lam = _cutmix(images, partners, _beta(self.cutmix_alpha, n, device))
            if mixed is None:
                mixed, lam = cut, cut_lam
            else:
                use_cut = torch.rand(n, device=device) < 0.5
                mixed = torch.where(use_cut.view(-1, 1, 1, 1), cut, mixed)
                lam = torch.where(use_cut, cut_lam, lam)
        if self.prob < 1:
            apply = torch.rand(n, device=device) < self.prob
            mixed = torch.where(apply.view(-1, 1, 1, 1), mixed, images)
            lam = torch.where(apply, lam, torch.ones_like(lam))
        one_hot = F.one_hot(labels, self.num_classes).to(lam.dtype)
        lam = lam.unsqueeze(1)
        return mixed, lam * one_hot + (1 - lam) * one_hot.index_select(0, pairs)


def _beta(alpha: float, n: int, device: torch.device) -> torch.Tensor:
    concentration = torch.full((n,), float(alpha), device=device)
    # validate_args=False: validation reads the tensors back to the host.
    beta = torch.distributions.Beta(concentration, concentration, validate_args=False)
    return beta.sample()


def _cutmix(
    images: torch.Tensor, partners: torch.Tensor, lam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pastes a box of area ~(1 - lam) from `partners` into each image, vectorised.

    Returns the images and lambda recomputed from the box after clipping at the border.
    """
    n, device = images.shape[0], images.device
    height, width = images.shape[-2:]
    side = torch.sqrt(1 - lam)
    half_h = (side * height).long() // 2
    half_w = (side * width).long() // 2
    cy = torch.randint(0, height, (n,), device=device)
    cx = torch.randint(0, width, (n,), device=device)
    y0, y1 = (cy - half_h).clamp(0, height), (cy + half_h).clamp(0, height)
    x0, x1 = (cx - half_w).clamp(0, width), (cx + half_w).clamp(0, width)
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    inside = (
        (rows >= y0.view(-1, 1, 1))
        & (rows < y1.view(-1, 1, 1))
        & (cols >= x0.view(-1, 1, 1))
        & (cols < x1.view(-1, 1, 1))
    )
    out = torch.where(inside.unsqueeze(1), partners, images)
    pasted = ((y1 - y0) * (x1 - x0)).to(lam.dtype) / (height * width)
    return out, 1 - pasted
