"""Losses on hard and soft targets; metrics and the per-class table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runner.config.validation import ConfigError, validate
from runner.reports.per_class import per_class_table, shot_accuracies, shot_groups
from runner.training.losses import (
    BalancedCrossEntropyLoss,
    BalancedSoftmaxLoss,
    CrossEntropyLoss,
    FocalLoss,
    GeneralizedCrossEntropyLoss,
    SymmetricCrossEntropyLoss,
    effective_number_weights,
)
from runner.training.metrics import build_metrics


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(16, 5), torch.randint(0, 5, (16,))
    focal = FocalLoss(gamma=0.0)(logits, target)
    assert torch.allclose(focal, F.cross_entropy(logits, target), atol=1e-6)


def test_focal_down_weights_easy_examples():
    confident = torch.tensor([[8.0, 0.0], [0.0, 8.0]])
    target = torch.tensor([0, 1])
    assert FocalLoss(gamma=2.0)(confident, target) < 0.01 * CrossEntropyLoss()(confident, target)


@pytest.mark.parametrize("target", [0, 1])
def test_focal_with_gamma_below_one_keeps_finite_gradients_when_p_rounds_to_one(target):
    """(1 - p)^gamma has an infinite slope at 0 for gamma < 1: once p rounds to 1.0 (a
    margin of 17 in float32), the gradient was NaN and the next step wrote NaN weights."""
    logits = torch.tensor([[20.0, 0.0, 0.0]], requires_grad=True)
    loss = FocalLoss(gamma=0.5)(logits, torch.tensor([target]))
    loss.backward()
    assert torch.isfinite(logits.grad).all(), logits.grad


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
    assert 0 < values["auroc"] <= 1
    assert "top5" not in values, "top-5 of 3 classes is always 1.0: not reported"
    assert "top5" in build_metrics(6)(torch.rand(4, 6).softmax(-1), torch.tensor([0, 1, 2, 5]))


def test_per_class_table_from_a_confusion_matrix():
    confusion = torch.tensor([[8, 2], [1, 9]])
    rows = per_class_table(confusion, ["cat", "dog"])
    precision, recall = 8 / 9, 0.8
    f1 = 2 * precision * recall / (precision + recall)
    expected = {"index": 0, "class": "cat", "precision": round(precision, 6), "recall": recall}
    assert rows[0] == {**expected, "f1": round(f1, 6), "support": 10}
    assert rows[1]["recall"] == 0.9 and rows[1]["support"] == 10


def test_balanced_accuracy_is_scikit_learns_whatever_is_predicted():
    """A stray prediction of a class absent from the split counted as its recall 0."""
    from sklearn.metrics import balanced_accuracy_score

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 1, 1, 2, 3])  # class 3 has no sample here
    metrics = build_metrics(4)
    metrics.update(torch.nn.functional.one_hot(predicted, 4).float(), labels)
    expected = balanced_accuracy_score(labels.numpy(), predicted.numpy())
    assert metrics.compute()["balanced_acc"].item() == pytest.approx(expected)  # 0.8333
    metrics.reset()
    metrics.update(torch.nn.functional.one_hot(labels, 4).float(), labels)
    assert metrics.compute()["balanced_acc"].item() == 1.0


def test_auroc_averages_the_classes_present_as_scikit_learn_does():
    """A class without test samples was scored 0: four classes, one absent, perfect
    ranking, and test/auroc said 0.75."""
    from sklearn.metrics import roc_auc_score

    labels = torch.tensor([0, 0, 1, 1, 2, 2, 1, 0])
    probs = torch.rand(8, 4, generator=torch.Generator().manual_seed(0)).softmax(-1)
    metrics = build_metrics(4, with_auroc=True)
    metrics.update(probs[:4], labels[:4])
    metrics.update(probs[4:], labels[4:])
    # scikit-learn's one-vs-rest macro AUROC over the three classes that have samples
    expected = sum(roc_auc_score(labels == c, probs[:, c]) for c in range(3)) / 3
    assert metrics.compute()["auroc"].item() == pytest.approx(expected)
    metrics.reset()
    metrics.update(torch.nn.functional.one_hot(labels, 4).float(), labels)
    assert metrics.compute()["auroc"].item() == 1.0
    # A split of one class (a held-out folder) has no negatives: no AUROC, not 0.
    metrics.reset()
    metrics.update(probs[:3], torch.tensor([2, 2, 2]))
    assert math.isnan(metrics.compute()["auroc"].item())


def test_auroc_of_a_perfect_ranking_is_never_above_one():
    """A perfect 14-image test split logged test/auroc 1.0000001192092896."""
    generator = torch.Generator().manual_seed(0)
    highest = 0.0
    for _ in range(60):  # the 41st draw of this generator came out above 1
        count = int(torch.randint(5, 40, (1,), generator=generator))
        labels = torch.randint(0, 4, (count,), generator=generator)
        logits = torch.randn(count, 4, generator=generator)
        logits[torch.arange(count), labels] += 10  # every sample ranked right
        metrics = build_metrics(4, with_auroc=True)
        metrics.update(logits.softmax(-1), labels)
        highest = max(highest, metrics.compute()["auroc"].item())
    assert highest == 1.0


def test_per_class_table_leaves_what_cannot_be_measured_as_nan_not_zero():
    """A class without test samples has no recall; one never predicted has no precision."""
    confusion = torch.tensor([[5, 0, 1, 0], [2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 3]])
    rows = {row["class"]: row for row in per_class_table(confusion, ["a", "b", "c", "d"])}
    # b: 2 test samples, never predicted; c: no test samples, predicted once (wrongly).
    assert math.isnan(rows["b"]["precision"]) and rows["b"]["recall"] == 0 and rows["b"]["f1"] == 0
    assert rows["c"]["precision"] == 0 and math.isnan(rows["c"]["recall"]) and rows["c"]["f1"] == 0
    assert rows["c"]["support"] == 0
    absent = per_class_table(torch.tensor([[3, 0], [0, 0]]), ["a", "never"])[1]
    assert all(math.isnan(absent[key]) for key in ("precision", "recall", "f1"))
    expected = {"index": 3, "class": "d", "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert rows["d"] == {**expected, "support": 3}


def test_balanced_ce_weights_equal_scikit_learns_compute_class_weight():
    from sklearn.utils.class_weight import compute_class_weight

    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)
    counts = torch.bincount(labels)
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels.numpy())
    loss = BalancedCrossEntropyLoss(counts, weights="balanced")
    assert torch.allclose(loss.weight, torch.from_numpy(expected).float())


def test_balanced_ce_is_the_weighted_per_sample_log_loss():
    counts = torch.tensor([60, 30, 10])
    logits, target = torch.randn(12, 3), torch.randint(0, 3, (12,))
    loss = BalancedCrossEntropyLoss(counts)
    per_sample = F.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(loss(logits, target), (loss.weight[target] * per_sample).mean())
    uniform = BalancedCrossEntropyLoss(torch.tensor([5, 5, 5]))
    assert torch.allclose(uniform(logits, target), F.cross_entropy(logits, target))


def test_effective_number_weights_follow_cui_et_al():
    counts = torch.tensor([1000, 100, 10])
    beta = 0.999
    raw = (1 - beta) / (1 - beta ** counts.double())
    expected = raw / raw.sum() * 3
    assert torch.allclose(effective_number_weights(counts, beta).double(), expected, atol=1e-6)
    loss = BalancedCrossEntropyLoss(counts, weights="effective", beta=beta)
    assert loss.weight[2] > loss.weight[1] > loss.weight[0]
    assert torch.allclose(effective_number_weights(counts, 0.0), torch.ones(3))


def test_balanced_softmax_is_cross_entropy_on_logits_plus_log_prior():
    counts = torch.tensor([500, 50, 5])
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    prior = counts.double() / counts.sum()
    expected = F.cross_entropy(logits + prior.log().float(), target)
    assert torch.allclose(BalancedSoftmaxLoss(counts)(logits, target), expected, atol=1e-6)


def test_balanced_softmax_smoothing_keeps_each_classs_optimum_on_its_class():
    """Smoothing spread uniformly over the prior-shifted logits gave a rare class a share
    1/prior times larger in the model's own logits: on CIFAR-10-LT counts, the loss's
    optimum for a head-class sample predicted the rarest class."""
    counts = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    loss = BalancedSoftmaxLoss(counts, label_smoothing=0.1)
    logits = torch.zeros(10, 10, requires_grad=True)  # free logits, one sample per class
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(500):
        optimizer.zero_grad()
        loss(logits, torch.arange(10)).backward()
        optimizer.step()
    assert logits.argmax(-1).tolist() == list(range(10))
    # Soft targets (mixup) are smoothed the same way: a one-hot row is the class id's.
    one_hot = F.one_hot(torch.arange(10), 10).float()
    assert torch.allclose(loss(logits, one_hot), loss(logits, torch.arange(10)))


def test_shot_groups_use_the_literature_thresholds_or_thirds():
    groups, rule = shot_groups(torch.tensor([500, 150, 60, 30, 10, 5]))
    assert rule == "thresholds"
    assert [groups[g].tolist() for g in ("head", "medium", "tail")] == [[0, 1], [2, 3], [4, 5]]
    small = torch.tensor([95, 80, 60, 40, 30, 20, 15, 10, 8, 6])  # no class > 100
    groups, rule = shot_groups(small)
    assert rule == "thirds"
    assert [len(groups[g]) for g in ("head", "medium", "tail")] == [3, 4, 3]
    assert groups["head"].tolist() == [0, 1, 2] and groups["tail"].tolist() == [7, 8, 9]


def test_shot_accuracies_from_a_confusion_matrix():
    confusion = torch.tensor([[9, 1, 0], [2, 8, 0], [5, 0, 5]])
    accuracies = shot_accuracies(confusion, torch.tensor([300, 50, 3]))
    assert accuracies == {"head_acc": 0.9, "medium_acc": 0.8, "tail_acc": 0.5}


def test_a_groups_accuracy_is_the_mean_of_its_classes_not_of_its_samples():
    """Pooled, a tail class with 90 test samples outweighed one with 10 (0.9 here),
    where the long-tailed literature's shot accuracy is the classes' mean (0.5); a
    class without test samples does not count."""
    confusion = torch.zeros(4, 4, dtype=torch.long)
    confusion[0, 0] = 10  # head: 10 of 10
    confusion[1, 1], confusion[1, 0] = 5, 5  # medium: 5 of 10
    confusion[2, 2] = 90  # tail: 90 of 90 ...
    confusion[3, 0] = 10  # ... and 0 of 10
    accuracies = shot_accuracies(confusion, torch.tensor([500, 50, 5, 5]))
    assert accuracies == {"head_acc": 1.0, "medium_acc": 0.5, "tail_acc": 0.5}
    confusion[3] = 0  # class 3 has no test sample: the tail is class 2's accuracy
    assert shot_accuracies(confusion, torch.tensor([500, 50, 5, 5]))["tail_acc"] == 1.0


def test_gce_is_one_minus_p_to_the_q_over_q_and_tends_to_cross_entropy():
    logits, target = torch.randn(32, 6), torch.randint(0, 6, (32,))
    p_y = logits.softmax(-1).gather(1, target[:, None]).squeeze(1)
    gce = GeneralizedCrossEntropyLoss(q=0.7)(logits, target)
    assert torch.allclose(gce, ((1 - p_y**0.7) / 0.7).mean(), atol=1e-6)
    assert torch.allclose(GeneralizedCrossEntropyLoss(q=1.0)(logits, target), (1 - p_y).mean())
    near_ce = GeneralizedCrossEntropyLoss(q=1e-4)(logits, target)
    assert torch.allclose(near_ce, F.cross_entropy(logits, target), rtol=1e-3)
    # 1 - p^q cancelled in float32 for a tiny q: 1.79 for a cross-entropy of 1.57.
    tiny = GeneralizedCrossEntropyLoss(q=1e-7)(logits, target)
    assert torch.allclose(tiny, F.cross_entropy(logits, target), rtol=1e-4)


def test_sce_is_alpha_ce_plus_beta_reverse_ce_with_log_zero_clamped():
    logits, target = torch.randn(32, 6), torch.randint(0, 6, (32,))
    ce = F.cross_entropy(logits, target)
    assert torch.allclose(SymmetricCrossEntropyLoss(alpha=1, beta=0)(logits, target), ce)
    p_y = logits.softmax(-1).gather(1, target[:, None]).squeeze(1)
    # -sum_c p_c log t_c with t one-hot and log 0 -> log 1e-4: -log(1e-4) * (1 - p_y).
    reverse = (-torch.log(torch.tensor(1e-4)) * (1 - p_y)).mean()
    sce = SymmetricCrossEntropyLoss(alpha=0.1, beta=1.0)(logits, target)
    assert torch.allclose(sce, 0.1 * ce + reverse, atol=1e-5)


def test_robust_losses_take_soft_targets_and_bound_a_confident_mistake():
    logits, target = torch.randn(8, 4), torch.randint(0, 4, (8,))
    soft = F.one_hot(target, 4).float()
    for loss in (GeneralizedCrossEntropyLoss(q=0.5), SymmetricCrossEntropyLoss()):
        assert torch.allclose(loss(logits, target), loss(logits, soft), atol=1e-6)
        mixed = 0.7 * soft + 0.3 * F.one_hot((target + 1) % 4, 4).float()
        assert torch.isfinite(loss(logits, mixed))
    # A confidently wrong (e.g. mislabeled) sample: CE grows without bound, GCE/SCE do not.
    wrong = torch.tensor([[40.0, 0.0, 0.0, 0.0]])
    label = torch.tensor([1])
    assert F.cross_entropy(wrong, label) > 39
    assert GeneralizedCrossEntropyLoss(q=0.7)(wrong, label) <= 1 / 0.7 + 1e-6
    assert SymmetricCrossEntropyLoss(alpha=0.0, beta=1.0)(wrong, label) <= 9.22
    gradient = wrong.clone().requires_grad_()
    GeneralizedCrossEntropyLoss(q=0.7)(gradient, label).backward()
    assert torch.isfinite(gradient.grad).all()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["loss=gce", "loss.q=0"], "loss.q=0 is invalid: expected a number in (0, 1]"),
        (["loss=gce", "loss.q=1.5"], "loss.q=1.5 is invalid"),
        (["loss=sce", "loss.alpha=-1"], "loss.alpha=-1 is invalid"),
        (["loss=sce", "loss.beta=-0.5"], "loss.beta=-0.5 is invalid: expected a number >= 0"),
        (["loss=sce", "loss.alpha=0", "loss.beta=0"], "leave loss=sce with no loss"),
        # beta keeps its [0, 1) meaning for the effective-number weights of balanced_ce.
        (["loss=balanced_ce", "loss.beta=1.0"], "loss.beta=1.0 is invalid: expected a number"),
    ],
)
def test_robust_loss_settings_are_validated(make_cfg, overrides, expected):
    with pytest.raises(ConfigError, match="1 problem") as err:
        validate(make_cfg(*overrides))
    assert expected in str(err.value)


def test_the_papers_settings_validate_and_build(make_cfg):
    from hydra.utils import instantiate

    for option, expected in (
        ("gce", GeneralizedCrossEntropyLoss),
        ("sce", SymmetricCrossEntropyLoss),
    ):
        cfg = make_cfg(f"loss={option}")
        validate(cfg)
        assert isinstance(instantiate(cfg.loss)(class_counts=torch.ones(3)), expected)
    assert make_cfg("loss=sce").loss.beta == 1.0 and make_cfg("loss=gce").loss.q == 0.7


def test_metrics_json_is_strict_json_with_null_for_what_has_no_value(tmp_path):
    """A test split without tail classes wrote "test/tail_acc": NaN, which strict JSON
    readers (jq, JavaScript, json.loads with parse_constant) refuse."""
    import json

    from runner.training.final_eval import write_metrics_file

    def strict(text: str):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the file"))

    path = write_metrics_file(
        tmp_path / "metrics.json", {"test/acc": 0.9, "test/tail_acc": float("nan"), "epochs": 3}
    )
    assert strict(path.read_text()) == {"test/acc": 0.9, "test/tail_acc": None, "epochs": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
