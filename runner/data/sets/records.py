"""Encoded images (file paths, bytes, image dicts) to uint8 splits.

Shared by the image folder and the Hugging Face data sets. Small sets are decoded once
(kept in memory, and in a cache file keyed by their listing); large ones are wrapped for
loader workers to decode batch by batch, after a look at each record's leading bytes
(`sniff`). Missing val/test splits are carved from train, stratified, from the whole
listing before anything is decoded.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runner.data.decode_cache import cache_key, cached
from runner.data.decoding import (
    DataError,
    decode_all,
    record_name,
    refused_bad_file,
    unreadable,
)
from runner.data.splits import (
    DataSplits,
    Split,
    channel_stats,
    classes_without_samples,
    stratified_split,
)
from runner.data.streaming import EncodedSplit

log = logging.getLogger(__name__)

# Leading bytes of the formats the decoders read; the streaming path checks them up
# front (cheap) so that non-image files are listed before training starts.
_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"P1",
    b"P2",
    b"P3",
    b"P4",
    b"P5",
    b"P6",  # PBM/PGM/PPM
)


def sniff(record: Any) -> str | None:
    """Why a record is not an image file (empty, unknown format), or None if it may be one.

    Reads only the first bytes of a file, so a large folder is checked in seconds.
    """
    name = record_name(record)  # printable; the file is opened by its own path
    if isinstance(record, dict) and record.get("bytes"):
        head = bytes(record["bytes"][:16])
    elif isinstance(record, dict) and not record.get("path"):
        return f"{name}: no image (an empty record)"
    else:
        try:
            with open(_path_of(record), "rb") as handle:
                head = handle.read(16)
        except OSError as err:
            return unreadable(record, err)
    if not head:
        return f"{name}: empty file (0 bytes)"
    if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    if _pillow_knows(record):  # formats without a signature here (TGA, ICO, ...)
        return None
    return f"{name}: not an image (unknown format)"


def _path_of(record: Any) -> str:
    """The file a path record, or an image dict without bytes, is read from."""
    return record["path"] if isinstance(record, dict) else os.fspath(record)


def _pillow_knows(record: Any) -> bool:
    """Whether Pillow recognises the file's header (it reads no pixels).

    The decoder falls back to Pillow for the formats torchvision does not read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(record, dict) and record.get("bytes"):
            source = io.BytesIO(bytes(record["bytes"]))
        else:
            source = _path_of(record)
        with Image.open(source):
            return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


@dataclass(frozen=True)
class RecordSettings:
    """How a loader's encoded records become splits: its data keys, passed on as they are.

    Attributes:
        image_size: Output height and width.
        val_fraction: Share of each train class for val when there is no "val" split.
        test_fraction: Share of each train class for test when there is no "test" split.
        split_seed: Seed of the carved splits.
        resident: True, False or "auto" (see `load_imagefolder`).
        resident_max_gb: Decoded size up to which "auto" means resident.
        cache_dir: Folder for the decode cache file; None = no cache file.
        num_workers: Decoding processes.
        on_bad_file: "skip" or "error".
        mean: Per-channel normalisation mean; None computes it from the train split.
        std: Per-channel normalisation std; None computes it from the train split.
    """

    image_size: int
    val_fraction: float
    test_fraction: float
    split_seed: int
    resident: bool | str
    resident_max_gb: float
    cache_dir: str | None
    num_workers: int
    on_bad_file: str
    mean: Sequence[float] | None
    std: Sequence[float] | None


def splits_from_records(
    *,
    name: str,
    records: dict[str, Sequence[Any]],
    labels: dict[str, Sequence[int]],
    ids: dict[str, Sequence[str]],
    class_names: list[str],
    content_key: Any,
    where: str,
    settings: RecordSettings,
) -> DataSplits:
    """Decodes (resident) or wraps (streaming) encoded images per split, then assembles.

    Shared by the image-folder and Hugging Face data sets.

    Args:
        name: Name of the data set.
        records: Split ("train", optionally "val", "test") -> paths/bytes/image dicts.
        labels: Split -> class index of each record.
        ids: Split -> sample id of each record (see `runner.data.splits`).
        class_names: Name of each class.
        content_key: What identifies the content, for the decode cache.
        where: Where the data comes from, for error messages.
        settings: The loader's settings (size, carved fractions, memory, cache, workers).

    Returns:
        The splits with the bad files listed.
    """
    image_size, mean, std = settings.image_size, settings.mean, settings.std
    total = sum(len(r) for r in records.values())
    keep, decoded_gb = stays_resident(
        total, image_size, settings.resident, settings.resident_max_gb
    )
    log.info(
        "data %s: %d images in %s, %d classes; %.2f GB decoded -> %s",
        name,
        total,
        "/".join(records),
        len(class_names),
        decoded_gb,
        "resident" if keep else "streaming",
    )
    id_arrays = {split: np.array(list(split_ids), dtype=object) for split, split_ids in ids.items()}
    if keep:
        # "kept": the cache holds which records decoded, so that the ids follow the images.
        key = cache_key(content_key, image_size, "kept")
        parts, bad = _decode_parts(records, labels, id_arrays, key, settings, name)
        if bad and settings.on_bad_file == "error":
            raise refused_bad_file(bad[0][1])
    else:
        parts, bad = stream_parts(
            records, labels, id_arrays, image_size, settings.num_workers, settings.on_bad_file
        )
    _check_classes_have_images(parts, class_names, where, bad)
    train, val, test = _assemble(parts, labels["train"], id_arrays["train"], settings)
    if mean is None or std is None:
        sample = train.images if keep else train.decode_sample(512, settings.split_seed)
        stat_mean, stat_std = channel_stats(sample)
        mean = stat_mean if mean is None else mean
        std = stat_std if std is None else std
    for _, reason in bad:
        log.warning("skipped bad file %s", reason)
    return DataSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        class_names=list(class_names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        bad_files=bad,
        bad_ids=_left_out(id_arrays, parts) if bad else [],
        test_carved="test" not in parts and bool(settings.test_fraction),
    )


def _decode_parts(records, labels, ids, key, settings: RecordSettings, name):
    """Decodes every split (or reads them from the cache); bad files are left out."""
    image_size, num_workers = settings.image_size, settings.num_workers

    def build() -> dict:
        value = {"bad": []}
        for split, split_records in records.items():
            images, kept, bad = decode_all(split_records, image_size, "skip", num_workers)
            kept = torch.as_tensor(kept, dtype=torch.long)
            value[split] = [images, torch.tensor(labels[split], dtype=torch.long)[kept], kept]
            value["bad"].extend([path, reason] for path, reason in bad)
        return value

    value = cached(key, build, settings.cache_dir, name)
    parts = {}
    for split in records:
        images, split_labels, kept = value[split]
        parts[split] = Split(images, split_labels, ids[split][kept.numpy()])
    return parts, [(path, reason) for path, reason in value["bad"]]


def _left_out(listed: dict[str, np.ndarray], parts: dict[str, Any]) -> list[str]:
    """The ids of the splits' listings that their parts (decoded or streamed) left out."""
    left_out = []
    for split, part in parts.items():
        kept = set(part.ids.tolist())
        left_out += [str(i) for i in listed[split].tolist() if i not in kept]
    return left_out


def stays_resident(
    count: int, image_size: int, resident: bool | str, resident_max_gb: float
) -> tuple[bool, float]:
    """Whether `count` images are decoded and kept in memory, and their decoded GB.

    Args:
        count: Number of images.
        image_size: Height (= width) they are decoded to, 3 channels of uint8.
        resident: True, False or "auto" (resident while the decoded size fits).
        resident_max_gb: Decoded size up to which "auto" means resident.
    """
    decoded_gb = count * 3 * image_size**2 / 2**30
    return (decoded_gb <= resident_max_gb if resident == "auto" else bool(resident)), decoded_gb


def stream_parts(
    records: dict[str, Sequence[Any]],
    labels: dict[str, Sequence[int]],
    ids: dict[str, np.ndarray],
    image_size: int,
    num_workers: int,
    on_bad_file: str,
) -> tuple[dict[str, EncodedSplit], list[tuple[str, str]]]:
    """Wraps each split's records for loader workers, after a look at their leading bytes.

    A record whose leading bytes are no image format is left out and listed (or refused
    with on_bad_file="error"); content errors surface when a batch is decoded.

    Returns:
        The streaming splits by name, and the (name, reason) of each record left out.
    """
    parts, bad = {}, []
    for split, split_records in records.items():
        keep = []
        for position in range(len(split_records)):
            reason = sniff(split_records[position])
            if reason is None:
                keep.append(position)
            elif on_bad_file == "error":
                raise refused_bad_file(reason)
            else:
                bad.append((record_name(split_records[position]), reason))
        positions = torch.tensor(keep, dtype=torch.long)
        parts[split] = EncodedSplit(
            records=split_records,
            positions=positions,
            labels=torch.tensor(labels[split], dtype=torch.long)[positions],
            size=image_size,
            num_workers=num_workers,
            on_bad_file=on_bad_file,
            ids=ids[split][positions.numpy()],
        )
    return parts, bad


def _check_classes_have_images(parts, class_names, where, bad) -> None:
    """Refuses a class with no readable train image (a val or test split may lack one)."""
    empty = classes_without_samples(parts["train"].labels, class_names)
    if empty:
        folders = ", ".join(f"train/{c}" for c in empty)
        # The run stops here, before the bad-file list is written: name the first ones.
        examples = "; ".join(reason for _, reason in bad[:3])
        raise DataError(
            f"{len(empty)} class(es) of {where} have no readable image: {folders} "
            f"({len(bad)} bad file(s) skipped in all"
            + (f", e.g. {examples}" if examples else "")
            + ")."
        )


def _assemble(parts, train_labels, train_ids, settings: RecordSettings):
    """Uses the val/test splits where present and carves the rest from train.

    The carve is drawn from the whole train listing (`train_labels`, `train_ids`), before
    any file is decoded: which files turn out bad (a truncated file is found by decoding
    it resident, in a batch when streamed) does not move other samples between train,
    val and test. A sample whose file was bad is absent from the part; a class left with
    no train sample that way takes one back from the carved val (or test) samples, so
    that no class is tested that the model could not learn.
    """
    train = parts["train"]
    val_fraction, test_fraction = settings.val_fraction, settings.test_fraction
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        if split in parts and fraction:  # the group's default fraction too: said, not acted on
            log.info(
                "data: the %s split is the data's own %s/ (data.%s_fraction=%s is not used)",
                split,
                split,
                split,
                fraction,
            )
    if "val" in parts and "test" in parts:  # nothing to carve: no copy of train
        return train, parts["val"], parts["test"]
    carve_val = 0.0 if "val" in parts else val_fraction
    carve_test = 0.0 if "test" in parts else test_fraction
    drawn = stratified_split(np.asarray(train_labels), carve_val, carve_test, settings.split_seed)
    index_of = {sample_id: i for i, sample_id in enumerate(train.ids)}
    train_idx, val_idx, test_idx = (
        [index_of[i] for i in train_ids[positions] if i in index_of] for positions in drawn
    )
    labels = train.labels.tolist()
    learnt = {labels[i] for i in train_idx}
    for carved_idx in (val_idx, test_idx):
        for i in list(carved_idx):
            if labels[i] not in learnt:
                carved_idx.remove(i)
                train_idx.append(i)
                learnt.add(labels[i])
    train_idx.sort()
    train_idx, val_idx, test_idx = (
        torch.tensor(i, dtype=torch.long) for i in (train_idx, val_idx, test_idx)
    )
    val = parts["val"] if "val" in parts else train.subset(val_idx)
    test = parts["test"] if "test" in parts else train.subset(test_idx)
    return train.subset(train_idx), val, test
