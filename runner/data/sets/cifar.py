"""CIFAR-10 and CIFAR-100 from their python pickle files, as uint8 tensors.

torchvision downloads and unpacks the archives (`data.download=true`); the batches are
then read directly into one NCHW uint8 tensor. Reading them here rather than through
`torchvision.datasets.CIFAR10` skips its per-sample PIL path and its checksum of the
archive's files, so a copy made elsewhere (or a small file in the same layout, as the
tests write) loads as well.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from runner.config.choices import CIFAR_VARIANTS
from runner.data.decoding import DataError
from runner.data.splits import DataSplits, Split, channel_stats, index_ids, stratified_split

# Folder, train files, test file, meta file, label key, class-name key, per variant.
_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError) as err:
        raise DataError(
            f"{path} is not a whole CIFAR file ({type(err).__name__}: {err}): a truncated "
            "copy or an interrupted download. Delete the folder under data.root and run "
            "again with data.download=true, or copy it again"
        ) from err
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _missing(folder: Path, files: list[str]) -> list[str]:
    return [f for f in files if not (folder / f).is_file()]


def _ensure_files(variant: str, root: Path, download: bool) -> Path:
    folder_name, train_files, test_file, meta_file, *_ = _LAYOUT[variant]
    folder = root / folder_name
    needed = [*train_files, test_file, meta_file]
    if not _missing(folder, needed):
        return folder
    if download:
        from torchvision import datasets

        tv_class = datasets.CIFAR10 if variant == "cifar10" else datasets.CIFAR100
        try:
            tv_class(str(root), train=True, download=True)
        except Exception as err:  # no network, a proxy, a full disk: say what to do
            raise DataError(
                f"{variant}: the files are not under data.root={str(root)!r} and the download "
                f"failed ({type(err).__name__}: {err}). Download {folder_name} on a machine "
                f"with network and copy it into {root}, or point data.root at it."
            ) from err
        if not _missing(folder, needed):
            return folder
    raise DataError(
        f"{variant}: missing {', '.join(_missing(folder, needed))} in {folder} "
        f"(data.root={str(root)!r}). Set data.download=true where there is network, or copy "
        f"the unpacked {folder_name} folder into data.root."
    )


def read_cifar(variant: str, root: str, download: bool = False) -> tuple:
    """Reads the train and test arrays of a CIFAR variant.

    Args:
        variant: "cifar10" or "cifar100".
        root: Folder holding (or to receive) the unpacked archive folder.
        download: Download through torchvision when the files are missing.

    Returns:
        (train images, train labels, test images, test labels, class names), images as
        uint8 (N, 3, 32, 32) tensors, labels as int64.

    Raises:
        DataError: The files are missing and cannot be downloaded.
    """
    _, train_files, test_file, meta_file, label_key, names_key = _LAYOUT[variant]
    folder = _ensure_files(variant, Path(root).expanduser(), download)

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        entries = [_unpickle(folder / f) for f in files]
        data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
        labels = np.concatenate([np.asarray(e[label_key], dtype=np.int64) for e in entries])
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        return images, torch.from_numpy(labels)

    train_images, train_labels = read(train_files)
    test_images, test_labels = read([test_file])
    class_names = [str(n) for n in _unpickle(folder / meta_file)[names_key]]
    return train_images, train_labels, test_images, test_labels, class_names


def _resize(images: torch.Tensor, size: int, chunk: int = 1024) -> torch.Tensor:
    """The images at `size` (bilinear, antialiased), resized `chunk` at a time.

    At once, the float copy of 50,000 images at 224 px alone would take 30 GB.
    """
    if images.shape[-1] == size:
        return images
    resized = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True)
        resized[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return resized


def load_cifar(
    variant: str = "cifar10",
    root: str = "data",
    name: str | None = None,
    download: bool = False,
    image_size: int = 32,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataSplits:
    """CIFAR-10 or CIFAR-100: train split (val carved from it, stratified) and test split.

    Sample ids are `<variant>:train:<i>` and `<variant>:test:<i>`, the index in the
    archive's train batches (concatenated) and test batch.

    Args:
        variant: "cifar10" or "cifar100".
        root: Folder with the unpacked archive (e.g. root/cifar-10-batches-py/).
        name: Name of the data set; None = the variant.
        download: Download through torchvision when the files are missing.
        image_size: Output size (32 is native; others are resized, batched).
        val_fraction: Share of each train class held out for validation.
        split_seed: Seed of the val split.
        mean: Per-channel normalisation mean; None computes it from the train split.
        std: Per-channel normalisation std; None computes it from the train split.

    Returns:
        The splits.

    Raises:
        DataError: The files are missing and cannot be downloaded.
    """
    if variant not in CIFAR_VARIANTS:
        raise ValueError(f"variant={variant!r}: expected one of {', '.join(CIFAR_VARIANTS)}")
    train_images, train_labels, test_images, test_labels, class_names = read_cifar(
        variant, root, download
    )
    train_idx, val_idx, _ = stratified_split(train_labels.numpy(), val_fraction, 0.0, split_seed)
    full = Split(
        _resize(train_images, image_size),
        train_labels,
        index_ids(f"{variant}:train", len(train_labels)),
    )
    train = full.subset(torch.from_numpy(train_idx))
    if mean is None or std is None:
        stat_mean, stat_std = channel_stats(train.images)
        mean = stat_mean if mean is None else mean
        std = stat_std if std is None else std
    return DataSplits(
        name=name or variant,
        train=train,
        val=full.subset(torch.from_numpy(val_idx)),
        test=Split(
            _resize(test_images, image_size),
            test_labels,
            index_ids(f"{variant}:test", len(test_labels)),
        ),
        class_names=class_names,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
