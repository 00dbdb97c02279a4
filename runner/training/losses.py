"""Classification losses that accept hard labels or soft targets (MixUp/CutMix).

Every loss is built the same way, `instantiate(cfg.loss)(class_counts=...)`, so losses
for imbalanced data get the train split's class counts from the data, never from the user.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runner.config.choices import CLASS_WEIGHTS


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
        # 1 - p as -expm1(log p): exact near p = 1. Clamped above 0, where x^gamma with
        # gamma < 1 has an infinite slope (a NaN gradient once p rounds to 1).
        modulation = (-torch.expm1(log_p)).clamp_min(1e-12).pow(self.gamma)
        return -(q * modulation * log_p).sum(-1).mean()


def balanced_class_weights(class_counts: torch.Tensor) -> torch.Tensor:
    """scikit-learn's 'balanced' weights, n_samples / (n_classes * n_c).

    Classes absent from the train split get weight 0 (scikit-learn refuses them).
    """
    counts = class_counts.double()
    present = counts > 0
    weights = counts.sum() / (int(present.sum()) * counts.clamp_min(1))
    return torch.where(present, weights, 0.0).float()


def effective_number_weights(class_counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Class-balanced weights (1 - beta) / (1 - beta^n_c) of Cui et al. (2019).

    Normalised to sum to the number of present classes, as in the paper; beta -> 1
    approaches inverse frequency, beta = 0 gives equal weights.
    """
    counts = class_counts.double()
    present = counts > 0
    weights = (1 - beta) / (1 - torch.pow(beta, counts.clamp_min(1)))
    weights = torch.where(present, weights, 0.0)
    return (weights * int(present.sum()) / weights.sum()).float()


class BalancedCrossEntropyLoss(nn.Module):
    """Cross-entropy with per-class weights from the train split's class counts.

    The loss of a sample is its target-weighted log-loss, sum_c w_c q_c (-log p_c),
    averaged over the batch (so hard and soft targets give the same value).

    Args:
        class_counts: Train samples per class (from the data).
        weights: "balanced" (scikit-learn's `compute_class_weight`) or "effective"
            (effective number of samples, Cui et al. 2019, with `beta`).
        beta: Hyperparameter of the effective-number weights (e.g. 0.999, 0.9999).
        label_smoothing: Share of the target mass spread uniformly over the classes.
    """

    def __init__(
        self,
        class_counts: torch.Tensor,
        weights: str = "balanced",
        beta: float = 0.9999,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if weights == "balanced":
            weight = balanced_class_weights(class_counts)
        elif weights == "effective":
            weight = effective_number_weights(class_counts, beta)
        else:
            raise ValueError(
                f"loss.weights={weights!r}: expected one of {', '.join(CLASS_WEIGHTS)}"
            )
        self.register_buffer("weight", weight.to(class_counts.device))
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch; `target` is (N,) class ids or (N, C) probabilities."""
        log_p = F.log_softmax(logits.float(), dim=-1)
        q = _soft_targets(target, logits.shape[-1], self.label_smoothing)
        return -(q * self.weight * log_p).sum(-1).mean()


class BalancedSoftmaxLoss(nn.Module):
    """Balanced softmax (Ren et al. 2020): cross-entropy on logits + log(class prior).

    Training shifts the logits by the train split's log prior, so the model's own
    (unshifted) logits estimate the balanced posterior; prediction uses them as they are.
    Equal to the logit-adjusted loss of Menon et al. (2021) with tau = 1.

    Args:
        class_counts: Train samples per class (from the data).
        label_smoothing: Share of the target mass spread over the classes, in proportion
            to the prior: uniform in the balanced posterior the model predicts with. (Spread
            uniformly over the shifted logits, it gave each rare class a share 1/prior
            times larger there: a head class's optimum predicted the rarest class.)
    """

    def __init__(self, class_counts: torch.Tensor, label_smoothing: float = 0.0):
        super().__init__()
        # An absent class gets one pseudo-sample: log 0 would make its logit -inf.
        prior = class_counts.double().clamp_min(1)
        self.register_buffer("log_prior", (prior / prior.sum()).log().float())
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch; `target` is (N,) class ids or (N, C) probabilities."""
        adjusted = logits.float() + self.log_prior
        if not self.label_smoothing:
            return F.cross_entropy(adjusted, target)
        t = _soft_targets(target, logits.shape[-1], 0.0)
        t = (1 - self.label_smoothing) * t + self.label_smoothing * self.log_prior.exp()
        return -(t * F.log_softmax(adjusted, dim=-1)).sum(-1).mean()


class GeneralizedCrossEntropyLoss(nn.Module):
    """Generalized cross-entropy (Zhang & Sabuncu 2018), robust to noisy labels.

    The loss of a sample is (1 - p_y^q) / q, the negative Box-Cox transform of p_y: q -> 0
    gives cross-entropy, q = 1 the mean absolute error (robust to noise, slow to fit).
    A soft target q_c weighs each class's term: sum_c t_c (1 - p_c^q) / q.

    Args:
        class_counts: Unused; every loss accepts it so all are built alike.
        q: The Box-Cox exponent, in (0, 1]; the paper uses 0.7.
        label_smoothing: Share of the target mass spread uniformly over the classes.
    """

    def __init__(
        self,
        class_counts: torch.Tensor | None = None,
        q: float = 0.7,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if not 0 < q <= 1:
            raise ValueError(f"loss.q={q!r}: expected a number in (0, 1]")
        self.q = q
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch; `target` is (N,) class ids or (N, C) probabilities."""
        # 1 - p^q as -expm1(q log p): exact where p underflows to 0, its gradient finite,
        # and no cancellation for a small q (q -> 0 is cross-entropy).
        one_minus_p_q = -torch.expm1(self.q * F.log_softmax(logits.float(), dim=-1))
        t = _soft_targets(target, logits.shape[-1], self.label_smoothing)
        return (t * one_minus_p_q / self.q).sum(-1).mean()


class SymmetricCrossEntropyLoss(nn.Module):
    """Symmetric cross-entropy (Wang et al. 2019): alpha * CE + beta * reverse CE.

    The reverse cross-entropy -sum_c p_c log t_c swaps prediction and target; the
    target's zeros are clamped to 1e-4 (log = -9.2), as in the authors' code, so a
    confident wrong prediction costs a bounded amount, which makes it robust to noise.

    Args:
        class_counts: Unused; every loss accepts it so all are built alike.
        alpha: Weight of the cross-entropy term (0.1 in the paper for CIFAR-10).
        beta: Weight of the reverse cross-entropy term (1.0 in the paper for CIFAR-10).
        label_smoothing: Share of the target mass spread uniformly over the classes.
    """

    def __init__(
        self,
        class_counts: torch.Tensor | None = None,
        alpha: float = 0.1,
        beta: float = 1.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch; `target` is (N,) class ids or (N, C) probabilities."""
        log_p = F.log_softmax(logits.float(), dim=-1)
        t = _soft_targets(target, logits.shape[-1], self.label_smoothing)
        ce = -(t * log_p).sum(-1)
        rce = -(log_p.exp() * t.clamp(min=1e-4, max=1.0).log()).sum(-1)
        return (self.alpha * ce + self.beta * rce).mean()
