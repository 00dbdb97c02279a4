"""Image folders in torchvision's ImageFolder layout, decoded once and cached, or streamed.

    root/train/<class>/<image>      required
    root/val/<class>/<image>        optional; else carved from train (stratified)
    root/test/<class>/<image>       optional; else carved from train (stratified)

A val/ or test/ folder may lack a class of train/ (a rare class with no held-out image:
its metrics are empty, and the run says so); a class train/ lacks is refused.

Every non-hidden file in a class folder (subfolders included) is a sample candidate;
one that does not decode is a bad file (skipped and listed, or an error). A sample's id
is its path under `data.root` (e.g. `train/cat/001.jpg`). Small data
sets are decoded once into uint8 tensors (kept in memory, and in a cache file keyed by
the folder's listing) and stay resident; large ones are decoded batch by batch by loader
workers (`runner.data.streaming`).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runner.data.decoding import (
    DataError,
    cache_key,
    cached,
    decode_all,
    file_stat,
    record_name,
    refused_bad_file,
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

SPLIT_FOLDERS = ("train", "val", "test")

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


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_class_files(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its files (sorted), for the class folders directly under `folder`.

    Hidden files and folders (".DS_Store", ".ipynb_checkpoints") are ignored; files in
    subfolders of a class folder belong to that class, as in torchvision's ImageFolder.
    """
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and _visible(e.name))
    return {name: visible_files(folder / name) for name in classes}


def visible_files(folder: Path, regular_only: bool = False) -> list[Path]:
    """The files under `folder`, recursively, sorted, hidden ones left out.

    Links are followed, each real folder once (a link back to a folder already listed is
    a loop, or a copy).

    Args:
        folder: Where to look.
        regular_only: Leave out broken links too. False keeps them, to be reported as
            bad files. A FIFO, socket or device is never listed: reading one can wait
            forever.
    """
    files, seen = [], set()
    for parent, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if _visible(d))
        files.extend(
            Path(parent) / n
            for n in sorted(names)
            if _visible(n) and _listed(os.path.join(parent, n), regular_only)
        )
    return files


def _listed(path: str, regular_only: bool) -> bool:
    """A regular file; or, unless `regular_only`, a broken link (a bad file to report)."""
    return os.path.isfile(path) or (not regular_only and not os.path.exists(path))


def scan_layout(
    root: str | os.PathLike, num_classes: int | None = None
) -> tuple[list[str], dict[str, tuple[list[Path], list[int]]]]:
    """Finds the split folders and checks that they agree before anything is decoded.

    Args:
        root: The data set folder (`data.root`).
        num_classes: The class count the config expects; None accepts what is found.

    Returns:
        (class names, {split folder: (files, labels)}) for the split folders present.

    Raises:
        DataError: No train/ folder, an empty train class folder, a val/test class that
            train lacks, or a class count other than `num_classes`.
    """
    root = Path(root).expanduser()
    if not (root / "train").is_dir():
        found = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else []
        where = f"it holds {found}" if root.is_dir() else "it does not exist"
        raise DataError(
            f"data.root={str(root)!r} has no train/ folder ({where}). Expected the "
            "ImageFolder layout root/train/<class>/<image>, with optional val/ and test/."
        )
    layout = {s: list_class_files(root / s) for s in SPLIT_FOLDERS if (root / s).is_dir()}
    class_names = list(layout["train"])
    if not class_names:
        raise DataError(f"{root / 'train'} has no class folders (expected train/<class>/<image>)")
    empty = [f"train/{cls}" for cls, files in layout["train"].items() if not files]
    if empty:
        raise DataError(
            f"{len(empty)} empty class folder(s) under {root}: {', '.join(empty)}. "
            "Add images or remove the folders."
        )
    for split in ("val", "test"):
        if split not in layout:
            continue
        # A small val or test set may lack a rare class (its metrics are then empty, as
        # the run says); a class the model never trains on may not be tested.
        extra = sorted(set(layout[split]) - set(class_names))
        missing = sorted(c for c in class_names if not layout[split].get(c))
        if extra:
            raise DataError(
                f"{root / split} has class folders that {root / 'train'} lacks: {extra} "
                "(the model could never predict them). Rename or move them to train/; "
                f"missing from {split}/ (allowed): {missing or 'none'}."
            )
        if not any(layout[split].values()):
            raise DataError(
                f"{root / split} holds no image (its class folders are empty): add images, "
                f"or remove it to carve {split} from train (data.{split}_fraction)."
            )
        if missing:
            log.warning("%s has no image of %d class(es): %s", root / split, len(missing), missing)
    if num_classes is not None and num_classes != len(class_names):
        raise DataError(
            f"data.num_classes={num_classes} but {root / 'train'} has {len(class_names)} class "
            f"folders ({', '.join(class_names[:20])}{', ...' if len(class_names) > 20 else ''}). "
            "Fix the folders or set data.num_classes=null."
        )
    result = {}
    for split, classes in layout.items():
        files, labels = [], []
        for label, name in enumerate(class_names):
            files.extend(classes.get(name, []))
            labels.extend([label] * len(classes.get(name, [])))
        result[split] = (files, labels)
    return class_names, result


def sniff(record: Any) -> str | None:
    """Why a record is not an image file (empty, unknown format), or None if it may be one.

    Reads only the first bytes of a file, so a large folder is checked in seconds.
    """
    name = record_name(record)
    if isinstance(record, dict) and record.get("bytes"):
        head = bytes(record["bytes"][:16])
    else:
        try:
            with open(name, "rb") as handle:
                head = handle.read(16)
        except OSError as err:
            return f"{name}: cannot read ({err.strerror or err})"
    if not head:
        return f"{name}: empty file (0 bytes)"
    if head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    if _pillow_knows(record, name):  # formats without a signature here (TGA, ICO, ...)
        return None
    return f"{name}: not an image (unknown format)"


def _pillow_knows(record: Any, name: str) -> bool:
    """Whether Pillow recognises the file's header (it reads no pixels).

    The decoder falls back to Pillow for the formats torchvision does not read.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        source = io.BytesIO(bytes(record["bytes"])) if isinstance(record, dict) else name
        with Image.open(source):
            return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def load_imagefolder(
    root: str,
    name: str = "imagefolder",
    image_size: int = 64,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    num_classes: int | None = None,
    resident: bool | str = "auto",
    resident_max_gb: float = 2.0,
    cache_dir: str | None = None,
    num_workers: int = 2,
    on_bad_file: str = "skip",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataSplits:
    """An image folder (see the module doc) as uint8 splits.

    Args:
        root: The folder holding train/ (and optionally val/, test/).
        name: Name of the data set (the MLflow experiment name by default).
        image_size: Images are resized (shorter side) and center-cropped to this.
        val_fraction: Share of each train class for val when there is no val/ folder.
        test_fraction: Share of each train class for test when there is no test/ folder.
        split_seed: Seed of the carved splits.
        num_classes: Expected class count; None = whatever train/ holds.
        resident: True decodes everything once and keeps it in memory; False streams
            through loader workers; "auto" decodes when the decoded size fits in
            `resident_max_gb`.
        resident_max_gb: Decoded size (3 * image_size^2 bytes per image) up to which
            "auto" keeps the data resident.
        cache_dir: Folder for the decode cache file; None = no cache file.
        num_workers: Decoding processes.
        on_bad_file: "skip" leaves undecodable files out and lists them; "error" stops.
        mean: Per-channel normalisation mean; None computes it from the train split.
        std: Per-channel normalisation std; None computes it from the train split.

    Returns:
        The splits (resident `Split`s or streaming `EncodedSplit`s) with the bad files.

    Raises:
        DataError: The layout is wrong (see `scan_layout`), a class has no images, or a
            file does not decode (found at start) and on_bad_file is "error".
        BadImageError: Streamed, a file whose content does not decode, when its batch is
            read, and on_bad_file is "error".
    """
    root = str(Path(root).expanduser())  # ids relative to the folder itself, not to "<cwd>/~"
    class_names, layout = scan_layout(root, num_classes)
    records = {split: [str(p) for p in files] for split, (files, _) in layout.items()}
    labels = {split: labels for split, (_, labels) in layout.items()}
    relative = {
        split: [os.path.relpath(p, root) for p in files] for split, (files, _) in layout.items()
    }
    ids = {split: [Path(r).as_posix() for r in paths] for split, paths in relative.items()}
    # The listing with sizes and modification times stands for the content: a changed,
    # added or removed file gives another key, and reading every byte is not needed.
    listing = [
        (split, [(r, *file_stat(p)) for r, p in zip(relative[split], files, strict=True)])
        for split, (files, _) in layout.items()
    ]
    return splits_from_records(
        name=name,
        records=records,
        labels=labels,
        ids=ids,
        class_names=class_names,
        content_key=(str(Path(root).resolve()), listing),
        where=str(root),
        image_size=image_size,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        resident=resident,
        resident_max_gb=resident_max_gb,
        cache_dir=cache_dir,
        num_workers=num_workers,
        on_bad_file=on_bad_file,
        mean=mean,
        std=std,
    )


def load_test_folder(
    root: str | os.PathLike,
    class_names: Sequence[str],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    name: str = "imagefolder",
    num_workers: int = 2,
    on_bad_file: str = "skip",
) -> DataSplits:
    """A labelled held-out folder without train/, as the test split of a model's classes.

    For `mode=eval eval.data=current`: `root/test/<class>/<image>`, or `root/<class>/
    <image>` when there is no test/. A class folder is matched to the model's classes by
    name; the folder may lack some of them. Train and val are empty; the mean and std
    are the model's.

    Raises:
        DataError: A class folder the model does not know, or no image at all.
    """
    root = Path(root).expanduser()
    folder = root / "test" if (root / "test").is_dir() else root
    classes = list_class_files(folder)
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise DataError(
            f"data.root={str(root)!r}: {folder} has class folders the checkpoint does not "
            f"know: {unknown[:10]} (its classes: {list(class_names)[:10]}). Test on folders "
            "named after the checkpoint's classes"
        )
    files, labels = [], []
    for label, class_name in enumerate(class_names):
        files.extend(classes.get(class_name, []))
        labels.extend([label] * len(classes.get(class_name, [])))
    if not files:
        raise DataError(
            f"data.root={str(root)!r}: no image under {folder}/<class>/ (expected "
            "root/test/<class>/<image> or root/<class>/<image>)"
        )
    images, kept, bad = decode_all([str(f) for f in files], image_size, "skip", num_workers)
    if bad and on_bad_file == "error":
        raise refused_bad_file(bad[0][1])
    for _, reason in bad:
        log.warning("skipped bad file %s", reason)
    ids = np.array([Path(os.path.relpath(f, root)).as_posix() for f in files], dtype=object)
    kept = torch.as_tensor(kept, dtype=torch.long)
    test = Split(images, torch.tensor(labels, dtype=torch.long)[kept], ids[kept.numpy()])
    empty = test.subset(torch.zeros(0, dtype=torch.long))
    return DataSplits(
        name=name,
        train=empty,
        val=empty,
        test=test,
        class_names=list(class_names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        bad_files=bad,
    )


def splits_from_records(
    *,
    name: str,
    records: dict[str, Sequence[Any]],
    labels: dict[str, Sequence[int]],
    ids: dict[str, Sequence[str]],
    class_names: list[str],
    content_key: Any,
    where: str,
    image_size: int,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    resident: bool | str,
    resident_max_gb: float,
    cache_dir: str | None,
    num_workers: int,
    on_bad_file: str,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
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

    Returns:
        The splits with the bad files listed.
    """
    total = sum(len(r) for r in records.values())
    decoded_gb = total * 3 * image_size**2 / 2**30
    keep = decoded_gb <= resident_max_gb if resident == "auto" else bool(resident)
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
        parts, bad = _decode_parts(
            records, labels, id_arrays, image_size, key, cache_dir, num_workers, name
        )
        if bad and on_bad_file == "error":
            raise refused_bad_file(bad[0][1])
    else:
        parts, bad = _stream_parts(records, labels, id_arrays, image_size, num_workers, on_bad_file)
    _check_classes_have_images(parts, class_names, where, bad)
    carved = _carve(
        labels["train"], id_arrays["train"], records, val_fraction, test_fraction, split_seed
    )
    train, val, test = _assemble(parts, carved)
    if mean is None or std is None:
        sample = train.images if keep else train.decode_sample(512, split_seed)
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
    )


def _decode_parts(records, labels, ids, image_size, key, cache_dir, num_workers, name):
    """Decodes every split (or reads them from the cache); bad files are left out."""

    def build() -> dict:
        value = {"bad": []}
        for split, split_records in records.items():
            images, kept, bad = decode_all(split_records, image_size, "skip", num_workers)
            kept = torch.as_tensor(kept, dtype=torch.long)
            value[split] = [images, torch.tensor(labels[split], dtype=torch.long)[kept], kept]
            value["bad"].extend([path, reason] for path, reason in bad)
        return value

    value = cached(key, build, cache_dir, name)
    parts = {}
    for split in records:
        images, split_labels, kept = value[split]
        parts[split] = Split(images, split_labels, ids[split][kept.numpy()])
    return parts, [(path, reason) for path, reason in value["bad"]]


def _stream_parts(records, labels, ids, image_size, num_workers, on_bad_file):
    """Checks each record's leading bytes now; content errors surface in batches."""
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


def _carve(train_labels, train_ids, records, val_fraction, test_fraction, split_seed):
    """The ids of the train records that go to val and to test, where those are carved.

    Drawn from the whole listing, before any file is decoded: which files turn out bad
    (a truncated file is found by decoding it resident, in a batch when streamed) does
    not move other samples between train, val and test.

    Returns:
        (train ids, val ids, test ids) as arrays, in the order the split draws them.
    """
    carve_val = 0.0 if "val" in records else val_fraction
    carve_test = 0.0 if "test" in records else test_fraction
    positions = stratified_split(np.asarray(train_labels), carve_val, carve_test, split_seed)
    return tuple(train_ids[p] for p in positions)


def _assemble(parts, carved):
    """Uses the val/test splits where present and carves the rest from train.

    A sample whose file was bad is absent from the part; a class left with no train
    sample that way takes one back from the carved val (or test) samples, so that no
    class is tested that the model could not learn.
    """
    train = parts["train"]
    if "val" in parts and "test" in parts:  # nothing to carve: no copy of train
        return train, parts["val"], parts["test"]
    index_of = {sample_id: i for i, sample_id in enumerate(train.ids)}
    train_idx, val_idx, test_idx = ([index_of[i] for i in ids if i in index_of] for ids in carved)
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
