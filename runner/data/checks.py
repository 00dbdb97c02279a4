"""Checks of a built data set that no config check can make: empty splits, missing classes.

They run right after the data is built, before any model is, so a split left empty by
`data.val_fraction=0` (or by classes too small to give every split a sample) stops the
run at start instead of training with val metrics of 0 or crashing after training.
"""

from __future__ import annotations

import logging

from runner.data.decoding import DataError
from runner.data.splits import DataSplits, classes_without_samples, some_of

log = logging.getLogger(__name__)

# How a split gets its samples, for the message that says what to change.
_SOURCE = {
    "train": "the data set's train split (data.fraction / data.samples_per_class keep a share)",
    "val": "data.val_fraction of each class (or the data set's own val split)",
    "test": "data.test_fraction of each class (or the data set's own test split)",
}


def require_splits(data: DataSplits, names: tuple[str, ...] = ("train", "val", "test")) -> None:
    """Refuses one class and empty splits among `names`; logs classes a split lacks.

    Raises:
        DataError: Fewer than two classes (in the data set or in its train split), or a
            split is empty; the message says what to change.
    """
    if data.num_classes < 2:
        raise DataError(
            f"data {data.name!r} has one class ({', '.join(data.class_names)}): a classifier "
            "needs two or more. An image folder has one folder per class under "
            "data.root/train/ (or set data.root to the folder that holds them)"
        )
    for name in names:
        split = getattr(data, name)
        if len(split) == 0:
            raise DataError(
                f"the {name} split of data {data.name!r} is empty: it comes from "
                f"{_SOURCE[name]}: a class of n samples gives it round(n x fraction). Give "
                f"it samples: a larger data.{name}_fraction (0.1 by default), more samples "
                f"per class, or, for an image folder, a root/{name}/ folder."
                if name != "train"
                else f"the train split of data {data.name!r} is empty: it comes from "
                f"{_SOURCE[name]}; check data.root and the switches"
            )
        if name == "train" and len(split) == 1:
            raise DataError(
                f"the train split of data {data.name!r} has one sample: training needs two "
                "or more (BatchNorm needs two per batch). Raise data.fraction, "
                "data.samples_per_class or lower data.imbalance_ratio"
            )
        missing = classes_without_samples(split.labels, data.class_names)
        if name == "train" and len(missing) >= data.num_classes - 1:
            (only,) = set(data.class_names) - set(missing)
            raise DataError(
                f"the train split of data {data.name!r} holds samples of one class only "
                f"({only!r}; the other {len(missing)} have none): a model trained on it "
                "predicts that class for every image. Check what changed the train labels "
                "or dropped samples: a data.relabel file that gives every sample one label, "
                "data.exclude, data.fraction, data.samples_per_class or data.imbalance_ratio"
            )
        if missing:
            shown = some_of(missing)
            # On a long-tailed folder the val split held 25 of 200 classes: the best
            # weights were those of epoch 1, and half the test accuracy was lost.
            chooses = (
                " The best weights and early stopping are then chosen on the other classes "
                "alone: give the split samples of every class (a larger data.val_fraction, or "
                "a root/val/ folder for an image folder)"
                if name == "val"
                else ""
            )
            log.warning(
                "the %s split has no sample of %d class(es): %s. Their %s metrics are empty; "
                "classes with few samples round to none in a small split.%s",
                name,
                len(missing),
                shown,
                name,
                chooses,
            )
