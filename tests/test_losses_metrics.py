"""Losses on hard and soft targets; metrics and the per-class table."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runner.losses import CrossEntropyLoss, FocalLoss
from runner.metrics import build_metrics, per_class_table


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(16, 5), torch.randint(0, 5, (16,))
    focal = FocalLoss(gamma=0.0)(logits, target)
    assert torch.allclose(focal, F.cross_entropy(logits, target), atol=1e-6)


def test_focal_down_weights_easy_examples():
    confident = torch.tensor([[8.0, 0.0], [0.0, 8.0]])
    target = torch.tensor([0, 1])
    assert FocalLoss(gamma=2.0)(confident, target) < 0.01 * CrossEntropyLoss()(confident, target)


def test_label_smoothing_matches_torch():
    logits, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    ours = CrossEntropyLoss(label_smoothing=0.1)(logits, target)
    assert torch.allclose(ours, F.cross_entropy(logits, target, label_smoothing=0.1))


def test_metrics_on_known_predictions():
    metrics = build_metrics(3, with_auroc=True)
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 1, 2, 2])
    values = {k: float(v) for k, v in metrics(probs, labels).items()}
    assert values["acc"] == 0.75
    assert abs(values["balanced_acc"] - (1 + 1 + 0.5) / 3) < 1e-6
    assert values["top5"] == 1.0 and 0 < values["auroc"] <= 1


def test_per_class_table_from_a_confusion_matrix():
    confusion = torch.tensor([[8, 2], [1, 9]])
    rows = per_class_table(confusion, ["cat", "dog"])
    precision, recall = 8 / 9, 0.8
    f1 = 2 * precision * recall / (precision + recall)
    expected = {"class": "cat", "precision": round(precision, 6), "recall": recall}
    assert rows[0] == {**expected, "f1": round(f1, 6), "support": 10}
    assert rows[1]["recall"] == 0.9 and rows[1]["support"] == 10
