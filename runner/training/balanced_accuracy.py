"""Balanced accuracy as scikit-learn defines it: the mean recall of the classes present.

torchmetrics' `MulticlassAccuracy(average="macro")` drops a class only when it has no
true positive, false positive or false negative: a class absent from the split that the
model predicts even once counts as recall 0, so the figure depends on stray predictions
of a class that is not there (a rare class missing from a small val split or fold).
Imported when metrics are built (torchmetrics' import is heavy, see metrics.py).
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


class BalancedAccuracy(MulticlassConfusionMatrix):
    """Mean over the classes with samples of (correct / samples), updated with (preds, labels)."""

    def compute(self) -> torch.Tensor:
        """The balanced accuracy of everything seen since the last reset (NaN if nothing)."""
        confusion = super().compute().double()
        support = confusion.sum(1)
        present = support > 0
        if not present.any():
            return torch.tensor(float("nan"), device=confusion.device)
        return (confusion.diag()[present] / support[present]).mean().float()
