"""Classification metrics computed on the device with torchmetrics."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)


def build_metrics(num_classes: int, with_auroc: bool = False) -> MetricCollection:
    """The metric collection for val (per epoch) or test (once, with AUROC).

    Args:
        num_classes: Number of classes.
        with_auroc: Add one-vs-rest macro AUROC (keeps every prediction; test only).

    Returns:
        Metrics named acc, top5, balanced_acc (mean per-class recall), macro_f1
        [and auroc], updated with (logits, labels).
    """
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
        "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
        "macro_f1": MulticlassF1Score(num_classes, average="macro"),
    }
    if with_auroc:
        metrics["auroc"] = MulticlassAUROC(num_classes, average="macro")
    return MetricCollection(metrics)


def build_confusion_matrix(num_classes: int) -> MulticlassConfusionMatrix:
    """A confusion matrix metric (rows: true class, columns: predicted class)."""
    return MulticlassConfusionMatrix(num_classes)


def per_class_table(confusion: torch.Tensor, class_names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class from a confusion matrix.

    Args:
        confusion: (C, C) counts, rows = true class, columns = predicted class.
        class_names: Name of each class.

    Returns:
        One dict per class with keys class, precision, recall, f1, support.
    """
    confusion = confusion.double().cpu()
    true_positive = confusion.diag()
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    precision = true_positive / predicted.clamp_min(1)
    recall = true_positive / support.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return [
        {
            "class": name,
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
