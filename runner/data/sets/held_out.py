"""A labelled held-out set, without train and val, as the test split of a model's classes.

For `mode=eval eval.data=current`: an image folder without train/ (`imagefolder.py`), or
a Hugging Face data set with `data.split_train=null` (`hf_held_out.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from runner.data.decoding import decode_all, refused_bad_file
from runner.data.sets.records import RecordSettings, stays_resident, stream_parts
from runner.data.splits import DataSplits, Split

log = logging.getLogger(__name__)


def held_out_settings(
    data_cfg: Mapping[str, Any], image_size: int, mean: Sequence[float], std: Sequence[float]
) -> RecordSettings:
    """How a held-out set is read: nothing is carved or cached.

    The model's size and normalisation, and the data config's memory, workers and
    bad-file keys.
    """
    return RecordSettings(
        image_size=image_size,
        val_fraction=0.0,
        test_fraction=0.0,
        split_seed=0,
        resident=data_cfg.get("resident", "auto"),
        resident_max_gb=data_cfg.get("resident_max_gb", 2.0),
        cache_dir=None,
        num_workers=data_cfg.get("num_workers", 2),
        on_bad_file=data_cfg.get("on_bad_file", "skip"),
        mean=mean,
        std=std,
    )


def held_out_splits(
    name: str,
    *,
    records: Sequence[Any],
    labels: Sequence[int],
    ids: Sequence[str],
    class_names: Sequence[str],
    where: str,
    settings: RecordSettings,
) -> DataSplits:
    """A labelled held-out set as the test split of a model's classes (mode=eval).

    Train and val are empty. Like a training set, it is decoded into memory while it fits
    (`stays_resident`), else streamed through loader workers.

    Args:
        name: Name of the data set.
        records: Paths, bytes or image dicts.
        labels: The model's class index of each record.
        ids: Sample id of each record.
        class_names: The model's classes.
        where: What the set is, for the log.
        settings: Size, memory, workers, bad files, and the model's mean and std (not
            None); its carving and cache settings are not read.

    Returns:
        The splits with the bad records listed.
    """
    keep, decoded_gb = stays_resident(
        len(records), settings.image_size, settings.resident, settings.resident_max_gb
    )
    log.info(
        "%s: %d images; %.2f GB decoded -> %s",
        where,
        len(records),
        decoded_gb,
        "resident" if keep else "streaming",
    )
    id_array = np.array(list(ids), dtype=object)
    if keep:
        images, kept, bad = decode_all(records, settings.image_size, "skip", settings.num_workers)
        if bad and settings.on_bad_file == "error":
            raise refused_bad_file(bad[0][1])
        kept = torch.as_tensor(kept, dtype=torch.long)
        test = Split(images, torch.tensor(labels, dtype=torch.long)[kept], id_array[kept.numpy()])
    else:
        parts, bad = stream_parts(
            {"test": records},
            {"test": labels},
            {"test": id_array},
            settings.image_size,
            settings.num_workers,
            settings.on_bad_file,
        )
        test = parts["test"]
    for _, reason in bad:
        log.warning("skipped bad file %s", reason)
    empty = test.subset(torch.zeros(0, dtype=torch.long))
    return DataSplits(
        name=name,
        train=empty,
        val=empty,
        test=test,
        class_names=list(class_names),
        mean=tuple(float(m) for m in settings.mean),
        std=tuple(float(s) for s in settings.std),
        bad_files=bad,
    )
