"""K-fold cross-validation: fold k of the train split becomes the run's validation split.

`data.num_folds=K` and `data.fold=k` cut the train split, after the real-world switches
and `data.exclude` / `data.relabel` (so every fold job sees the same labels), into K
stratified folds (scikit-learn's `StratifiedKFold`, shuffled with `data.split_seed`).
Fold k is the job's validation split and the other K - 1 folds its train split; the
test split is unchanged and the data set's own val split is not used. Each train
sample is held out by exactly one of the K jobs, which is what an audit of the labels
needs: a prediction for every sample from a model that did not train on it.

    python run.py -m data.num_folds=5 'data.fold=range(5)'
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from runner.config.choices import DATA_FOLD_KEYS
from runner.data.decoding import DataError
from runner.data.splits import DataSplits, some_of

log = logging.getLogger(__name__)

# Keys of the data group that `select_fold` consumes (the factories never see them).
KEYS = DATA_FOLD_KEYS


def fold_indices(
    labels: torch.Tensor, num_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, held-out indices) of each of the K stratified folds.

    Args:
        labels: The train split's labels.
        num_folds: K.
        seed: Seed of the shuffle before the cut (`data.split_seed`).

    Returns:
        K pairs of sorted int64 index arrays; the held-out parts cover every sample once.
    """
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    y = labels.cpu().numpy()
    return [(np.sort(a), np.sort(b)) for a, b in folds.split(np.zeros((len(y), 1)), y)]


def check_fold_counts(data: DataSplits, num_folds: int) -> None:
    """Refuses a K larger than a class's train sample count, naming the classes.

    Raises:
        DataError: A class has fewer than `num_folds` train samples.
    """
    counts = data.class_counts().tolist()
    small = [(data.class_names[c], n) for c, n in enumerate(counts) if n < num_folds]
    if small:
        listing = some_of([f"{name!r} has {n}" for name, n in small])
        fewest = min(n for _, n in small)
        where = (
            "check data.fraction, data.samples_per_class and data.imbalance_ratio, and "
            "whether a data.exclude or data.relabel file takes them away"
        )
        if fewest >= 2:
            fix = (
                f"Lower data.num_folds to at most {fewest}, or give those classes more "
                f"train samples: {where}."
            )
        else:
            # K is at least 2 and every fold holds out a sample of each class, so no K
            # fits a class of 0 or 1 samples: only more samples help.
            tiny = [(name, n) for name, n in small if n < 2]
            short = (
                f"class {tiny[0][0]!r} has {tiny[0][1]}: give it"
                if len(tiny) == 1
                else f"{len(tiny)} classes have fewer: give them"
            )
            fix = (
                "K-fold needs at least 2 train samples in every class, whatever "
                f"data.num_folds, and {short} more train samples ({where})."
            )
        raise DataError(
            f"data.num_folds={num_folds}: every class needs at least {num_folds} train "
            f"samples (one per fold), but {listing} after the switches, "
            f"data.exclude and data.relabel. {fix}"
        )


def select_fold(
    data: DataSplits, num_folds: int | None = None, fold: int | None = None, seed: int = 0
) -> DataSplits:
    """Makes fold `fold` of K the validation split and the other folds the train split.

    Args:
        data: The data set after the switches.
        num_folds: K; None = k-fold is off (the data set is returned as it is).
        fold: Which fold to hold out, 0 ... K - 1.
        seed: Seed of the folds (`data.split_seed`).

    Returns:
        The data set with the new train and val splits (clean labels follow train).

    Raises:
        DataError: A class has fewer than K train samples.
        ValueError: `fold` is missing or out of range (the config checks catch it first).
    """
    if num_folds is None:
        return data
    if fold is None or not 0 <= fold < num_folds:
        raise ValueError(f"data.fold={fold!r}: expected an integer in 0..{num_folds - 1}")
    check_fold_counts(data, num_folds)
    train_idx, held_idx = fold_indices(data.train.labels, num_folds, seed)[fold]
    train_idx, held_idx = torch.from_numpy(train_idx), torch.from_numpy(held_idx)
    log.info(
        "data.num_folds=%d, data.fold=%d: %d train samples, %d held out as the val split "
        "(the data set's own val split, %d samples, is not used)",
        num_folds,
        fold,
        len(train_idx),
        len(held_idx),
        len(data.val),
    )
    held_out = data.train.subset(held_idx)
    data = dataclasses.replace(data.subset_train(train_idx), val=held_out)
    data.extra_params["data.num_held_out"] = len(held_idx)
    return data
