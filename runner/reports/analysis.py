"""Reports on a tested model: what it confuses, where it looks, how well it is calibrated.

Written after training (on the best weights) and after `mode=eval`, into the run dir and
the tracked run: the per-class table (`per_class.csv`, always) and, with
`analysis.enabled=true`, the normalised confusion matrix, a grid of the most confidently
misclassified test images, Grad-CAM overlays (captum's `LayerGradCam`), a reliability
diagram with the expected calibration error (metric `test/ece`) and the learning curves.

Plotting and captum are imported inside the functions, so `analysis.enabled=false` (or a
run that never reaches its end) pays nothing for them at start-up.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from runner.reports.calibration import plot_reliability
from runner.reports.drawing import draw_each, drawable, fitted, pyplot
from runner.reports.gradcam import find_gradcam_layer, gradcam_maps
from runner.reports.per_class import per_class_table
from runner.tracking.protocol import Tracker

log = logging.getLogger(__name__)


class PredictionCollector:
    """Keeps the test predictions in order, passed to the evaluation loop as a metric.

    `runner.training.engine.evaluate` calls `update(probabilities, labels)` for every batch; the
    tensors stay on their device until `result()`.
    """

    def __init__(self) -> None:
        self._probabilities: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, probabilities: torch.Tensor, labels: torch.Tensor) -> None:
        """Appends a batch of class probabilities (N, C) and labels (N,)."""
        self._probabilities.append(probabilities.detach().float())
        self._labels.append(labels.detach())

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All probabilities (N, C) and labels (N,) so far, on the CPU."""
        if not self._labels:
            return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
        return torch.cat(self._probabilities).cpu(), torch.cat(self._labels).cpu()


@dataclass
class AnalysisInputs:
    """What the reports are made from.

    Attributes:
        model: The tested model (not wrapped for test-time augmentation).
        augment: The run's augmentation; its eval path (resize, center-crop) is used.
        normalize: The normalisation the model was trained with.
        split: The test split (images are read with `take(indices)`).
        probabilities: (N, C) test probabilities in the split's order.
        labels: (N,) test labels in the split's order.
        confusion: (C, C) test counts, rows = true class.
        class_names: Name per class id.
        device: Where the model is.
        history: Per-epoch metrics of the training run (empty after eval).
    """

    model: nn.Module
    augment: nn.Module
    normalize: nn.Module
    split: Any
    probabilities: torch.Tensor
    labels: torch.Tensor
    confusion: torch.Tensor
    class_names: list[str]
    device: torch.device
    history: list[dict[str, float]] = field(default_factory=list)


# What `write_reports` may write into a run dir (some files under some settings only).
REPORT_FILES = (
    "per_class.csv",
    "confusion_matrix.png",
    "reliability.png",
    "misclassified.png",
    "gradcam.png",
    "learning_curves.png",
)


def write_reports(
    settings: DictConfig, inputs: AnalysisInputs, run_dir: Path, tracker: Tracker
) -> dict[str, float]:
    """Writes and logs the reports; returns the metrics they add (`test/ece`).

    Args:
        settings: The `analysis` node of the config.
        inputs: The tested model and its test predictions.
        run_dir: Where the files are written.
        tracker: Where they are logged (artifacts; the metrics are returned).

    Returns:
        {"test/ece": ...} when enabled, else {}.
    """
    started = time.perf_counter()
    files = [run_dir / "per_class.csv"]
    write_per_class_csv(per_class_table(inputs.confusion, inputs.class_names), files[0])
    metrics: dict[str, float] = {}
    if settings.enabled:

        def reliability(path: Path) -> None:
            bins = settings.calibration_bins
            metrics["test/ece"] = plot_reliability(inputs.probabilities, inputs.labels, bins, path)

        plots: dict[str, Callable[[Path], Any]] = {
            "confusion_matrix.png": partial(
                plot_confusion_matrix, inputs.confusion, inputs.class_names
            ),
            "reliability.png": reliability,
        }
        lost = len(inputs.split) - len(inputs.labels)
        if lost:  # a streamed file failed to decode while testing: positions no longer match
            log.warning(
                "analysis: %d of the %d test images did not decode while testing; "
                "misclassified.png and gradcam.png are left out, as their images would not "
                "line up with the predictions (see the bad-file list)",
                lost,
                len(inputs.split),
            )
        elif settings.num_misclassified > 0:  # 0 = off, as for Grad-CAM
            plots["misclassified.png"] = partial(
                plot_misclassified, inputs, settings.num_misclassified
            )
        if settings.num_gradcam > 0 and len(inputs.labels) and not lost:
            layer, min_size = settings.gradcam_layer, settings.gradcam_min_size
            plots["gradcam.png"] = partial(
                plot_gradcam, inputs, settings.num_gradcam, layer, min_size
            )
        if inputs.history:
            plots["learning_curves.png"] = partial(plot_learning_curves, inputs.history)
        files += draw_each(plots, run_dir, "analysis")
    for path in files:
        tracker.log_artifact(path)
    log.info(
        "analysis: wrote %s in %.1fs",
        ", ".join(p.name for p in files),
        time.perf_counter() - started,
    )
    return metrics


# --- tables and plots -----------------------------------------------------------------------


def write_per_class_csv(rows: list[dict], path: Path) -> None:
    """Writes the per-class precision/recall/F1/support table."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# The figure grows with the classes up to this side (about 2,900 px at dpi 120): uncapped,
# 300 classes drew a 16,440 px canvas (12.6 GB of memory) and 1,000 could not be drawn.
MAX_CONFUSION_INCHES = 24.0
# Above this many classes the names no longer fit beside the rows: the axes show indices.
MAX_NAMED_CLASSES = 50


def plot_confusion_matrix(matrix: torch.Tensor, class_names: list[str], path: Path) -> None:
    """Saves the row-normalised confusion matrix as a PNG with class names on the axes.

    Beyond `MAX_NAMED_CLASSES` classes the axes show class indices (the order of
    per_class.csv) instead of names, and the figure stops growing at
    `MAX_CONFUSION_INCHES`.
    """
    plt = pyplot()
    normalized = (matrix.double() / matrix.sum(1, keepdim=True).clamp_min(1)).numpy()
    size = min(max(4.0, 0.45 * len(class_names) + 2), MAX_CONFUSION_INCHES)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ticks = range(len(class_names))
    named = len(class_names) <= MAX_NAMED_CLASSES
    if named:
        ax.set_xticks(ticks, class_names, rotation=90 if len(class_names) > 10 else 0)
        ax.set_yticks(ticks, class_names)
    index_note = "" if named else " (class index, as in per_class.csv)"
    ax.set_xlabel("predicted" + index_note)
    ax.set_ylabel("true" + index_note)
    ax.set_title("confusion matrix (row-normalised)")
    if len(class_names) <= 20:
        for i in ticks:
            for j in ticks:
                color = "white" if normalized[i, j] > 0.5 else "black"
                ax.text(
                    j,
                    i,
                    f"{normalized[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=color,
                )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def most_confident_mistakes(
    probabilities: torch.Tensor, labels: torch.Tensor, count: int
) -> torch.Tensor:
    """Indices of the misclassified samples, most confident prediction first (at most count)."""
    if not len(labels):
        return torch.empty(0, dtype=torch.long)
    confidence, predicted = probabilities.max(-1)
    wrong = (predicted != labels).nonzero().flatten()
    order = confidence[wrong].argsort(descending=True)
    return wrong[order[:count]]


def _image_grid(count: int, plt, cell: float = 1.6):
    columns = min(8, max(count, 1))
    rows = max(1, math.ceil(count / columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(cell * columns, cell * rows + 0.4), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    return fig, list(axes.flat)


def _as_rgb(image: torch.Tensor):
    """(C, H, W) uint8 or [0, 1] float -> (H, W, 3) NumPy for imshow."""
    image = drawable(image.detach().cpu())
    if image.dtype == torch.uint8:
        image = image.float() / 255
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    return image.clamp(0, 1).permute(1, 2, 0).numpy()


def plot_misclassified(inputs: AnalysisInputs, count: int, path: Path) -> list[int]:
    """Saves a grid of the most confidently misclassified test images; returns their indices.

    Each image is titled with its true class, the predicted class and the confidence.
    """
    plt = pyplot()
    chosen = most_confident_mistakes(inputs.probabilities, inputs.labels, count)
    fig, axes = _image_grid(len(chosen), plt)
    if len(chosen):
        images, _ = inputs.split.take(chosen)
        confidence, predicted = inputs.probabilities[chosen].max(-1)
        names = inputs.class_names
        for ax, image, index, pred, conf in zip(
            axes, images, chosen, predicted, confidence, strict=False
        ):
            ax.imshow(_as_rgb(image))
            ax.set_title(
                f"true {fitted(names[int(inputs.labels[index])])}\n"
                f"pred {fitted(names[int(pred)])} ({float(conf):.2f})",
                fontsize=7,
            )
        fig.suptitle(f"the {len(chosen)} most confidently misclassified test images", fontsize=9)
    else:
        axes[0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [int(i) for i in chosen]


def spread_indices(length: int, count: int) -> torch.Tensor:
    """`count` indices spread evenly over `length` (all of them when fewer).

    A test folder lists its classes in order: its first 8 images were of 3 of 200 classes.
    """
    if length <= count:
        return torch.arange(length)
    return torch.linspace(0, length - 1, count).round().long().unique()


def plot_gradcam(
    inputs: AnalysisInputs, count: int, layer_name: str, min_size: int, path: Path
) -> str:
    """Saves Grad-CAM overlays for `count` test images; returns the layer used.

    Each image shows where the evidence for the predicted class lies, titled with the
    true and predicted classes.
    """
    plt = pyplot()
    indices = spread_indices(len(inputs.labels), count)
    images, _ = inputs.split.take(indices)
    model = inputs.model.eval()
    inputs.augment.eval()
    with torch.no_grad():
        shown = inputs.augment(images.to(inputs.device))  # eval path: float, resized, cropped
    batch = inputs.normalize(shown).contiguous()
    name, layer = find_gradcam_layer(model, batch[:1], layer_name, min_size)
    predicted = inputs.probabilities[indices].argmax(-1).to(inputs.device)
    cams = gradcam_maps(model, batch, predicted, layer)
    fig, axes = _image_grid(len(indices), plt, cell=1.8)
    names = inputs.class_names
    for ax, image, cam, index, pred in zip(axes, shown, cams, indices, predicted, strict=False):
        ax.imshow(_as_rgb(image))
        ax.imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(
            f"true {fitted(names[int(inputs.labels[index])])}\npred {fitted(names[int(pred)])}",
            fontsize=7,
        )
    fig.suptitle(f"Grad-CAM of the predicted class at layer '{name}'", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return name


def plot_learning_curves(history: Sequence[dict[str, float]], path: Path) -> None:
    """Saves loss, accuracy and learning rate per epoch from a run's history."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    panels = [
        ("loss", ["train/loss", "val/loss"]),
        ("accuracy", ["train/acc", "val/acc", "val/balanced_acc"]),
        ("learning rate", ["lr"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            values = [row.get(key, float("nan")) for row in history]
            if not all(math.isnan(v) for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
