"""The final test of a model and its reports: the one block that training and eval share."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runner.config.files import replaced_whole
from runner.data.decoding import record_name
from runner.data.splits import DataSplits
from runner.data.streaming import EncodedSplit
from runner.reports import analysis
from runner.reports.per_class import shot_accuracies
from runner.tracking.inputs import DatasetRecord
from runner.training import engine
from runner.training.context import RunContext
from runner.training.metrics import build_confusion_matrix, build_metrics


class FlipTTA(nn.Module):
    """Test-time augmentation: the mean of the logits of the images and their mirror images."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits averaged over the image and its horizontal flip."""
        return (self.model(images) + self.model(images.flip(-1))) / 2


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """The model wrapped for `tta` ("none" or "flip")."""
    return FlipTTA(model) if tta == "flip" else model


def evaluate_and_report(
    ctx: RunContext,
    model: nn.Module,
    augment: nn.Module,
    normalize: nn.Module,
    data: DataSplits,
    loader: Iterable,
    *,
    tta: str = "none",
    history: Sequence[dict[str, float]] = (),
    step: int = 0,
    train_counts: Sequence[int] | None = None,
    long_tailed: bool | None = None,
    model_id: str | None = None,
    dataset: DatasetRecord | None = None,
) -> dict[str, float]:
    """Tests `model` on the test split, writes the analysis reports, logs the metrics.

    Args:
        ctx: The run (device, precision, run dir, tracker, `analysis` settings).
        model: The model to test, with the weights to test.
        augment: The run's augmentation (its eval path: resize, center-crop).
        normalize: The normalisation the model was trained with.
        data: The data set (test split, class names; train class counts when long-tailed).
        loader: The test split's loader.
        tta: Test-time augmentation ("none" or "flip").
        history: Per-epoch metrics of the training run, for the learning curves.
        step: The step the test metrics are logged at.
        train_counts: Train samples per class the model was trained on, for the
            head/medium/tail groups; None = those of `data`'s train split.
        long_tailed: Whether the model was trained long-tailed (head/medium/tail
            accuracy is reported); None = whether `data` is.
        model_id: The logged MLflow model being tested: the metrics become its too.
        dataset: The test split as the run logged it as an input: the metrics name it.

    Returns:
        The `test/*` metrics: those of `engine.evaluate`, head/medium/tail accuracy for
        a long-tailed train split, and `test/ece` when the reports are on.
    """
    device = ctx.device
    confusion = build_confusion_matrix(data.num_classes).to(device)
    predictions = analysis.PredictionCollector()
    results = engine.evaluate(
        model=with_tta(model, tta),
        loader=loader,
        augment=augment,
        normalize=normalize,
        metrics=build_metrics(data.num_classes, with_auroc=True).to(device),
        autocast=engine.make_autocast(device, ctx.precision),
        device=device,
        extra_metrics=[confusion, predictions],
    )
    metrics = {f"test/{name}": value for name, value in results.items()}
    matrix = confusion.compute().cpu()
    if data.long_tailed if long_tailed is None else long_tailed:
        counts = data.class_counts() if train_counts is None else torch.tensor(train_counts)
        shots = shot_accuracies(matrix, counts)
        metrics.update({f"test/{name}": value for name, value in shots.items()})
    probabilities, labels = predictions.result()
    tested = data.test
    limit = getattr(loader, "limit_batches", None)
    if limit is not None:  # trainer.limit_batches: the first batches only, in order
        tested = tested.subset(torch.arange(min(len(tested), limit * loader.batch_size)))
    tested = _without_bad_files(tested, getattr(loader, "bad_files", []), len(labels))
    inputs = analysis.AnalysisInputs(
        model=model,
        augment=augment,
        normalize=normalize,
        split=tested,
        probabilities=probabilities,
        labels=labels,
        confusion=matrix,
        class_names=list(data.class_names),
        device=device,
        history=list(history),
    )
    metrics.update(analysis.write_reports(ctx.cfg.analysis, inputs, ctx.run_dir, ctx.tracker))
    ctx.tracker.log_metrics(metrics, step=step, model_id=model_id, dataset=dataset)
    return metrics


def write_metrics_file(path: Path, results: dict[str, Any]) -> Path:
    """Writes a run's metrics.json: strict JSON, whole or not at all.

    A value that is not a finite number (the tail accuracy of a test split without tail
    classes is NaN) is written as null: strict JSON readers refuse NaN. A reader never
    sees half of it (`replaced_whole`).
    """
    finite = {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in results.items()
    }
    with replaced_whole(path) as temp:
        temp.write_text(json.dumps(finite, indent=2, allow_nan=False))
    return path


def _without_bad_files(tested: Any, bad_files: list[tuple[str, str]], predicted: int) -> Any:
    """The tested split without the streamed files that did not decode while testing.

    The predictions skip them, so the per-image reports (misclassified.png, gradcam.png)
    line up with the split only without them. Unchanged where the files' names do not
    tell the samples apart (records of bytes): the reports are left out then.
    """
    if len(tested) == predicted or not isinstance(tested, EncodedSplit) or not bad_files:
        return tested
    bad = {name for name, _ in bad_files}
    kept = [
        i
        for i, position in enumerate(tested.positions.tolist())
        if record_name(tested.records[position]) not in bad
    ]
    return tested.subset(torch.tensor(kept, dtype=torch.long)) if len(kept) == predicted else tested
