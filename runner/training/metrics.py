"""Classification metrics computed on the device with torchmetrics.

torchmetrics is imported when metrics are built, not with this module: importing it
loads its whole functional API (scipy.signal, matplotlib, torchvision's models), about
1.5 s on 2 CPU cores beyond what the model libraries load, which runs that stop early
(`+preview_only=true`, a tracking server that is down) never need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassConfusionMatrix


TOP_K = 5


def build_metrics(num_classes: int, with_auroc: bool = False) -> MetricCollection:
    """The metric collection for val (per epoch) or test (once, with AUROC).

    Args:
        num_classes: Number of classes.
        with_auroc: Add one-vs-rest macro AUROC over the classes present (keeps every
            prediction; test only).

    Returns:
        Metrics named acc, top5 (only with more than 5 classes, where it differs from
        a certain 1.0), balanced_acc (mean recall of the classes present, as
        scikit-learn's balanced_accuracy_score), macro_f1 [and auroc],
        updated with (logits, labels).
    """
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    from runner.training.auroc import PresentClassesAUROC
    from runner.training.balanced_accuracy import BalancedAccuracy

    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "balanced_acc": BalancedAccuracy(num_classes),
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if num_classes > TOP_K:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=TOP_K, average="micro")
    if with_auroc:
        metrics["auroc"] = PresentClassesAUROC(num_classes)
    return MetricCollection(metrics)


def build_confusion_matrix(num_classes: int) -> MulticlassConfusionMatrix:
    """A confusion matrix metric (rows: true class, columns: predicted class)."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    return MulticlassConfusionMatrix(num_classes)
