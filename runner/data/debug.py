"""Debugging switches (conf/debug/) on the data: fewer batches, or overfitting a few."""

from __future__ import annotations

import dataclasses
import logging

import torch

from runner.data.splits import DataSplits

log = logging.getLogger(__name__)


def overfit_subset(
    data: DataSplits, overfit_batches: int | None, batch_size: int, seed: int = 0
) -> DataSplits:
    """`overfit_batches` batches of train samples as both train and val; None = unchanged.

    Validating on the same samples shows whether the model can fit them at all, which a
    working model, loss and optimizer always can (Karpathy's "overfit one batch"). The
    samples are drawn at random (seeded): the first ones of a data set stored class by
    class (an image folder) would be one class, which a constant prediction "fits".
    """
    if overfit_batches is None:
        return data
    count = min(overfit_batches * batch_size, len(data.train))
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(data.train), generator=generator)[:count].sort().values
    log.info(
        "trainer.overfit_batches=%d: training and validating on the same %d images",
        overfit_batches,
        len(keep),
    )
    data = data.subset_train(keep)
    return dataclasses.replace(data, val=data.train)


def limit_batches(loaders: list, limit: int | None) -> None:
    """Makes every loader yield at most `limit` batches per epoch; None = all."""
    for loader in loaders:
        loader.limit_batches = limit
