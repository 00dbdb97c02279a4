"""How well a tested model's confidence matches its accuracy: ECE and a reliability diagram."""

from __future__ import annotations

from pathlib import Path

import torch

from runner.reports.drawing import pyplot


def expected_calibration_error(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int
) -> float:
    """ECE with `bins` equal-width confidence bins (torchmetrics, L1 norm)."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    if not len(labels):
        return float("nan")
    return float(
        multiclass_calibration_error(
            probabilities, labels, probabilities.shape[1], n_bins=bins, norm="l1"
        )
    )


def reliability_bins(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int
) -> tuple[torch.Tensor, ...]:
    """Per confidence bin: mean confidence, accuracy and sample count."""
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == labels).double()
    index = (confidence.double() * bins).long().clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    mean_conf = torch.bincount(index, confidence.double(), minlength=bins) / counts.clamp_min(1)
    accuracy = torch.bincount(index, correct, minlength=bins) / counts.clamp_min(1)
    return mean_conf, accuracy, counts


def plot_reliability(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int, path: Path
) -> float:
    """Saves the reliability diagram (accuracy per confidence bin); returns the ECE."""
    plt = pyplot()
    ece = expected_calibration_error(probabilities, labels, bins)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.5, 5.5), height_ratios=[3, 1], sharex=True)
    edges = torch.linspace(0, 1, bins + 1)
    width = 1 / bins
    if len(labels):
        mean_conf, accuracy, counts = (
            t.numpy() for t in reliability_bins(probabilities, labels, bins)
        )
        edges = edges.numpy()
        filled = counts > 0
        ax.bar(
            edges[:-1][filled],
            accuracy[filled],
            width=width,
            align="edge",
            edgecolor="black",
            label="accuracy",
        )
        ax.bar(
            edges[:-1][filled],
            (mean_conf - accuracy)[filled],
            bottom=accuracy[filled],
            width=width,
            align="edge",
            color="red",
            alpha=0.3,
            label="gap",
        )
        hist.bar(edges[:-1], counts, width=width, align="edge", edgecolor="black")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability diagram (ECE {ece:.4f}, {bins} bins)")
    ax.legend(loc="upper left", fontsize=7)
    hist.set_xlabel("confidence")
    hist.set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return ece
