"""Out-of-fold outputs of a k-fold job: what an audit of the labels is made from.

A fold job (`data.num_folds` set) holds out one fold as its val split. After training it
runs its best weights over that fold and writes, keyed by sample id, into
`<run dir>/out_of_fold.npz` (numpy arrays; no pickle needed to read them):

    sample_id      (N,)   str      the sample ids (runner.data.splits)
    label          (N,)   int64    the label the job trained with (after noise/relabel)
    probabilities  (N, C) float32  softmax of the logits
    embeddings     (N, D) float32  the classifier layer's input (penultimate layer)
    class_names    (C,)   str
    fold, num_folds       int64    which fold of how many

Fold 0's job also embeds its train samples (the other folds), by the same weights:

    space_sample_id   (M,)   str
    space_embeddings  (M, D) float32

so that every train sample has an embedding in one model's space, where the audit looks
for near duplicates and outliers: each fold's own embeddings come from another model.

The audit (`runner.sweeps.audit`) merges these files over the K jobs of a sweep: every
train sample then has a prediction from a model that never trained on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from runner.config.errors import ConfigError
from runner.data.splits import DataSplits
from runner.models.heads import classifier_layer
from runner.sweeps.out_of_fold import OOF_FILE, OutOfFold, save_out_of_fold
from runner.training import engine
from runner.training.context import RunContext

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_split(
    model: nn.Module,
    split,
    num_classes: int,
    augment: nn.Module,
    normalize: nn.Module,
    device: torch.device,
    precision: str,
    batch_size: int,
) -> OutOfFold:
    """Softmax probabilities and penultimate-layer embeddings of every sample of `split`.

    Images take the evaluation path (the augmentation's eval mode: resize, center-crop).
    A streamed sample whose file no longer decodes is left out, with its id.
    """
    model.eval()
    augment.eval()
    autocast = engine.make_autocast(device, precision)
    features: list[torch.Tensor] = []

    def keep_input(_module: nn.Module, inputs: tuple) -> None:
        features.append(inputs[0].detach().flatten(1).float().cpu())

    hook = classifier_layer(model, num_classes, trainable=True).register_forward_pre_hook(
        keep_input
    )
    ids, labels, probabilities = [], [], []
    try:
        for start in range(0, len(split), batch_size):
            batch = torch.arange(start, min(start + batch_size, len(split)))
            for indices, images, batch_labels in _decoded_batches(split, batch):
                images = augment(images.to(device, non_blocking=True))
                with autocast():
                    logits = model(normalize(images))
                probabilities.append(logits.float().softmax(-1).cpu())
                labels.append(batch_labels.cpu())
                ids.extend(str(i) for i in split.ids[indices.numpy()])
    finally:
        hook.remove()
    return OutOfFold(
        sample_id=np.array(ids, dtype=str),
        label=torch.cat(labels).numpy().astype(np.int64),
        probabilities=torch.cat(probabilities).numpy().astype(np.float32),
        embeddings=torch.cat(features).numpy().astype(np.float32),
    )


def _decoded_batches(
    split, indices: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(indices, uint8 images, labels) of a batch, each image with its own index.

    A streamed split leaves a file that fails to decode out of its batch without saying
    which; that batch is then taken again sample by sample, so every id keeps its image.
    """
    images, labels = split.take(indices)
    if len(labels) == len(indices):
        yield indices, images, labels
        return
    for index in indices:
        one = index.view(1)
        images, labels = split.take(one)
        if len(labels):
            yield one, images, labels


def check_embedding_layer(data_cfg, model: nn.Module, num_classes: int) -> None:
    """Refuses, before training, a k-fold job whose model has no embedding layer.

    The held-out fold's embeddings are the input of the classifier layer; without one
    the job would fail after training, when it writes them.

    Raises:
        ConfigError: data.num_folds is set and the model has no classifier layer.
    """
    if data_cfg.get("num_folds") is None:
        return
    try:
        classifier_layer(model, num_classes, trainable=True)
    except ValueError as err:
        raise ConfigError(
            f"data.num_folds={data_cfg.num_folds}: {err}. Choose a model with such a head "
            "(any timm or torchvision classifier), or leave data.num_folds out"
        ) from None


def write_out_of_fold(ctx: RunContext, model: nn.Module, parts, data: DataSplits) -> Path | None:
    """Writes the held-out fold's outputs (see the module doc) for a k-fold job.

    Does nothing for a run without `data.num_folds`. Logs the file to the job's run.

    Args:
        ctx: The run (config, device, precision, run dir, tracker).
        model: The model with the best weights loaded.
        parts: The run's parts (augmentation and normalisation).
        data: The data set; its val split is the held-out fold.

    Returns:
        The file written, or None.
    """
    data_cfg = ctx.cfg.data
    if data_cfg.get("num_folds") is None:
        return None

    def predict(split) -> OutOfFold:
        return predict_split(
            model,
            split,
            data.num_classes,
            parts.augment,
            parts.normalize,
            ctx.device,
            ctx.precision,
            ctx.cfg.trainer.eval_batch_size,
        )

    outputs = predict(data.val)
    space = predict(data.train) if int(data_cfg.fold) == 0 else None
    path = save_out_of_fold(
        ctx.run_dir / OOF_FILE,
        outputs,
        class_names=list(data.class_names),
        fold=int(data_cfg.fold),
        num_folds=int(data_cfg.num_folds),
        space=space,
    )
    ctx.tracker.log_artifact(path)
    log.info(
        "fold %d of %d: out-of-fold outputs of %d samples (%d-wide embeddings) in %s",
        data_cfg.fold,
        data_cfg.num_folds,
        len(outputs.sample_id),
        outputs.embeddings.shape[1],
        path,
    )
    return path
