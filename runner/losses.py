"""Classification losses that accept hard labels or soft targets (MixUp/CutMix).

Every loss is built the same way, `instantiate(cfg.loss)(class_counts=...)`, so losses
for imbalanced data get the train split's class counts from the data, never from the user.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _soft_targets(target: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    if target.ndim == 1:
        target = F.one_hot(target, num_classes).float()
    if label_smoothing:
        target = target * (1 - label_smoothing) + label_smoothing / num_classes
    return target


class CrossEntropyLoss(nn.Module):
    """Cross-entropy with optional label smoothing.

    Args:
        class_counts: Unused; every loss accepts it so all are built alike.
        label_smoothing: Share of the target mass spread uniformly over the classes.
    """

    def __init__(self, class_counts: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch; `target` is (N,) class ids or (N, C) probabilities."""
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)


class FocalLoss(nn.Module):
    """Focal loss, -(1 - p_t)^gamma log p_t (Lin et al., 2017), for soft targets too.

    Args:
        class_counts: Unused; every loss accepts it so all are built alike.
        gamma: Focusing parameter; 0 gives cross-entropy.
        label_smoothing: Share of the target mass spread uniformly over the classes.
    """

    def __init__(
        self,
        class_counts: torch.Tensor | None = None,
        gamma: float = 2.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch; `target` is (N,) class ids or (N, C) probabilities."""
        log_p = F.log_softmax(logits.float(), dim=-1)
        q = _soft_targets(target, logits.shape[-1], self.label_smoothing)
        return -(q * (1 - log_p.exp()).pow(self.gamma) * log_p).sum(-1).mean()
