"""One-vs-rest macro AUROC over the classes present, as scikit-learn computes it.

torchmetrics' `MulticlassAUROC(average="macro")` scores a class without a sample in the
split as 0 (it has no positive to rank), so a test split that lacks a rare class, which
the data sets allow, lowered test/auroc by 1/num_classes per missing class. Imported
when metrics are built (torchmetrics' import is heavy, see metrics.py).
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAUROC


class PresentClassesAUROC(MulticlassAUROC):
    """Mean over the classes with samples of their one-vs-rest AUROC (probabilities, labels)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, average="none")
        self.add_state("support", torch.zeros(num_classes, dtype=torch.long), "sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Adds a batch: (N, C) probabilities or logits, (N,) labels."""
        super().update(preds, target)
        self.support += torch.bincount(target.flatten(), minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        """The macro AUROC of the classes seen in the labels (NaN if none can be scored).

        A class that every sample belongs to has no negative to rank either: a split
        of one class (a held-out folder may be one) has no AUROC, not 0.
        """
        # float32 trapezoids put a perfect ranking a hair above 1 (1.0000001) at times.
        per_class = super().compute().clamp(0.0, 1.0)
        present = (self.support > 0) & (self.support < self.support.sum())
        if not present.any():
            return torch.tensor(float("nan"), device=per_class.device)
        return per_class[present].mean()
