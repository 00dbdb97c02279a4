"""Per-class results from a confusion matrix: precision/recall/F1, and head/medium/tail accuracy."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def per_class_table(confusion: torch.Tensor, class_names: list[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class from a confusion matrix.

    Args:
        confusion: (C, C) counts, rows = true class, columns = predicted class.
        class_names: Name of each class.

    Returns:
        One dict per class with keys index, class, precision, recall, f1, support. A value with
        nothing to measure is NaN, not 0: recall of a class without test samples,
        precision of a class never predicted, F1 (2TP / (2TP + FP + FN)) of a class
        neither in the test split nor predicted.
    """
    confusion = confusion.double().cpu()
    true_positive = confusion.diag()
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    precision = true_positive / predicted  # 0 / 0 = NaN
    recall = true_positive / support
    f1 = 2 * true_positive / (support + predicted)
    return [
        {
            "index": i,  # the confusion matrix's axes show it beyond 50 classes
            "class": name,
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]


# Liu et al. (2019): many-shot classes have > 100 train samples, few-shot < 20.
MANY_SHOT_MIN = 100
FEW_SHOT_MAX = 20


def shot_groups(train_counts: torch.Tensor) -> tuple[dict[str, torch.Tensor], str]:
    """Splits classes into head, medium and tail by their train sample counts.

    Uses the literature's thresholds (head > 100, tail < 20 samples) when every group
    gets a class; otherwise (small data sets) thirds of the classes ranked by count.

    Args:
        train_counts: Train samples per class.

    Returns:
        ({"head": class ids, "medium": ..., "tail": ...}, the rule used: "thresholds"
        or "thirds").
    """
    counts = train_counts.cpu()
    groups = {
        "head": (counts > MANY_SHOT_MIN).nonzero().flatten(),
        "medium": ((counts >= FEW_SHOT_MAX) & (counts <= MANY_SHOT_MIN)).nonzero().flatten(),
        "tail": (counts < FEW_SHOT_MAX).nonzero().flatten(),
    }
    if all(len(ids) for ids in groups.values()):
        return groups, "thresholds"
    ranked = torch.sort(counts, descending=True, stable=True).indices
    third = len(ranked) / 3
    head, tail = round(third), len(ranked) - round(third)
    return {"head": ranked[:head], "medium": ranked[head:tail], "tail": ranked[tail:]}, "thirds"


def shot_accuracies(confusion: torch.Tensor, train_counts: torch.Tensor) -> dict[str, float]:
    """Test accuracy on head, medium and tail classes (see `shot_groups`).

    Args:
        confusion: (C, C) test counts, rows = true class.
        train_counts: Train samples per class.

    Returns:
        {"head_acc", "medium_acc", "tail_acc"}: the mean test accuracy of the group's
        classes that have test samples (NaN when none has), as the long-tailed
        literature reports them (Liu et al. 2019's `shot_acc`): on a test split with
        more samples of some classes, pooling the group's samples would weight those.
    """
    confusion = confusion.double().cpu()
    groups, rule = shot_groups(train_counts)
    log.info(
        "head/medium/tail: %s",
        f"classes of > {MANY_SHOT_MIN}, {FEW_SHOT_MAX}-{MANY_SHOT_MIN} and < {FEW_SHOT_MAX} train "
        "samples"
        if rule == "thresholds"
        else "thirds of the classes ranked by train samples (a group of > "
        f"{MANY_SHOT_MIN}, {FEW_SHOT_MAX}-{MANY_SHOT_MIN}, < {FEW_SHOT_MAX} would be empty)",
    )
    recalls = confusion.diag() / confusion.sum(dim=1)  # NaN for a class without test samples
    results = {}
    for name, ids in groups.items():
        tested = recalls[ids][~recalls[ids].isnan()]
        results[f"{name}_acc"] = float(tested.mean()) if len(tested) else float("nan")
    return results
