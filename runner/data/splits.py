"""A data set's splits as uint8 tensors, and the stratified split that makes them.

Every data set factory (runner/data/sets/) returns a `DataSplits`: uint8 NCHW images and
int64 labels for the train, val and test splits, plus the class names and normalisation
statistics. Augmentation and normalisation happen later, batched on the device.

A split is either resident (`Split`: decoded uint8 tensors) or encoded
(`runner.data.streaming.EncodedSplit`: image files decoded by loader workers). Both offer
`labels`, `ids`, `image_size`, `subset`, `with_labels` and `loader`, so the rest of a run,
and the real-world switches in `runner.data.switches`, treat them alike.

Every sample carries a stable id (`ids`, a numpy array of str): the file's path under
`data.root` for image folders and Hugging Face files, `<set>:<index in the source>` for
the bundled sets (`digits:17`, `synthetic:3`, `cifar10:train:49999`). Ids survive every
subset, so a file of ids (`data.exclude`, `data.relabel`, an audit's label_issues.csv)
names the same images in every run of the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from runner.config.errors import ConfigError
from runner.data.decoding import printable
from runner.data.loaders import ResidentLoader


def index_ids(prefix: str, count: int) -> np.ndarray:
    """Ids `<prefix>:<i>` for samples 0 ... `count - 1` of a source."""
    return np.array([f"{prefix}:{i}" for i in range(count)], dtype=object)


def path_id(relative_path: str) -> str:
    """The sample id of a file: its path under the data set's folder, posix, `printable`.

    A name that is not valid UTF-8 keeps its bytes as backslash escapes: one id per file
    still.
    """
    return printable(Path(relative_path).as_posix())


@dataclass
class Split:
    """One split: uint8 images (N, C, H, W), int64 labels (N,) and sample ids (N,).

    `ids` is None only for a split a custom factory built without them;
    `DataSplits.ensure_ids` fills them in.
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: np.ndarray | None = None

    def take(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels at `indices` (same interface as a streaming split)."""
        return self.images[indices.to(self.images.device)], self.labels[
            indices.to(self.labels.device)
        ]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> int:
        """Height (= width) of the images."""
        return int(self.images.shape[-1])

    def to(self, device: torch.device) -> Split:
        """Moves the split to `device` (images stay uint8: 4x less traffic than float)."""
        return Split(self.images.to(device), self.labels.to(device), self.ids)

    def subset(self, indices: torch.Tensor) -> Split:
        """The samples at `indices` (int64), in that order."""
        return Split(
            self.images[indices].contiguous(),
            self.labels[indices].contiguous(),
            None if self.ids is None else self.ids[indices.cpu().numpy()],
        )

    def with_labels(self, labels: torch.Tensor) -> Split:
        """The same images with other labels (label noise)."""
        return Split(self.images, labels, self.ids)

    def loader(
        self,
        batch_size: int,
        device: torch.device,
        sampler=None,
        drop_last: bool = False,
    ) -> ResidentLoader:
        """A loader over the split, moved to `device` once and batched by index there."""
        return ResidentLoader(self.to(device), batch_size, sampler, drop_last=drop_last)


# A train split whose largest class has this many times the smallest's samples reports
# head/medium/tail accuracy as a switched one does (the CIFAR-LT literature's mildest
# imbalance ratio is 10); a long-tailed folder of 22.5 reported none.
LONG_TAIL_RATIO = 10


def imbalance_ratio(counts: Sequence[int] | torch.Tensor) -> float:
    """The largest class count over the smallest present one (1.0 without any)."""
    present = [int(c) for c in counts if int(c) > 0]
    return max(present) / min(present) if present else 1.0


def is_long_tailed(counts: Sequence[int] | torch.Tensor) -> bool:
    """Whether train class counts are long-tailed: the largest / the smallest present >= 10."""
    return imbalance_ratio(counts) >= LONG_TAIL_RATIO


@dataclass
class DataSplits:
    """The splits of a data set and what the rest of a run needs to know about it."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Params to log with the run (e.g. the actual noise rate after the switches).
    extra_params: dict = field(default_factory=dict)
    # (path, reason) of every file that was skipped because it could not be decoded.
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    # The sample ids those files would have had (a data.exclude file may name them).
    bad_ids: list[str] = field(default_factory=list)
    # data.exclude / data.relabel -> the file it read, copied into the run dir: the
    # file may change later (an audit redone, rows flagged by hand).
    curation_files: dict[str, str] = field(default_factory=dict)
    # The train labels before label noise (aligned with `train`); None = no noise.
    clean_train_labels: torch.Tensor | None = None
    # Whether the train split was made, or is, long-tailed (head/medium/tail accuracy).
    long_tailed: bool = False
    # Whether the test split was carved from the train listing (no test split of its
    # own): split another way, it may then hold what a model of the first split learnt.
    test_carved: bool = False

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Height (= width) of the images."""
        return self.train.image_size

    def subset_train(self, index: torch.Tensor) -> DataSplits:
        """These splits with only the train samples at `index` (clean labels alike)."""
        clean = self.clean_train_labels
        return dataclasses.replace(
            self,
            train=self.train.subset(index),
            clean_train_labels=None if clean is None else clean[index],
        )

    def note_noise_rate(self) -> float | None:
        """The share of train labels that differ from the clean ones; None without noise.

        Kept as the `data.actual_noise_rate` param (extra_params).
        """
        if self.clean_train_labels is None:
            return None
        noisy = self.clean_train_labels.cpu() != self.train.labels.cpu()
        rate = float(noisy.double().mean())
        self.extra_params["data.actual_noise_rate"] = round(rate, 6)
        return rate

    def class_counts(self) -> torch.Tensor:
        """Number of training samples per class (int64, on the CPU)."""
        return torch.bincount(self.train.labels.cpu(), minlength=self.num_classes)

    def ensure_ids(self) -> DataSplits:
        """Gives `<name>:<split>:<i>` ids to the splits a factory built without ids."""
        for split_name in ("train", "val", "test"):
            split = getattr(self, split_name)
            if split.ids is None:
                split.ids = index_ids(f"{self.name}:{split_name}", len(split))
        return self


def ids_digest(ids: Sequence[str] | np.ndarray) -> str:
    """A short fingerprint of a split's sample ids (their set, not their order).

    A best.pt keeps its test split's, so that eval can tell whether the split it
    rebuilds from the stored config is the one the run was tested on.
    """
    text = "\n".join(sorted(str(sample_id) for sample_id in ids))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def splits_digest(data: DataSplits) -> str:
    """A short fingerprint of a run's data: each split's ids, in order, and train labels.

    last.pt keeps it, so that a resumed run can tell whether it continues on the data it
    began with: files added to an image folder reshuffle its carved splits, and an edited
    `data.relabel` file changes labels, under the same config.
    """
    digest = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        digest.update("\n".join(str(sample_id) for sample_id in split.ids).encode() + b"\0")
    digest.update(data.train.labels.cpu().numpy().astype(np.int64).tobytes())
    return digest.hexdigest()[:16]


def classes_without_samples(labels: torch.Tensor, class_names: Sequence[str]) -> list[str]:
    """The names of the classes that none of `labels` has."""
    counts = torch.bincount(labels.cpu(), minlength=len(class_names))
    return [class_names[c] for c in (counts == 0).nonzero().flatten().tolist()]


def some_of(names: Sequence[str], limit: int = 10) -> str:
    """The first `limit` names, and how many more.

    A message stays one readable line with a thousand classes: a test/ folder of 300 stray
    classes gave a 12,675-character one.
    """
    more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits indices into train/val/test, keeping each class's share in every split.

    Args:
        labels: Integer class label per sample.
        val_fraction: Share of samples for validation.
        test_fraction: Share of samples for testing.
        seed: Seed of the split; the same seed gives the same split.

    Returns:
        Index arrays for train, val and test; every class has at least one train sample.
    """
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * val_fraction)
        # A rare class keeps one train sample (val gives way first, then test): without
        # it the model could never learn the class it is tested on.
        n_val = min(n_val, max(len(idx) - n_test - 1, 0))
        n_test = min(n_test, len(idx) - n_val - 1)
        test.append(idx[:n_test])
        val.append(idx[n_test : n_test + n_val])
        train.append(idx[n_test + n_val :])
    return tuple(np.sort(np.concatenate(part)) for part in (train, val, test))


def channel_stats(
    images: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the [0, 1] scale.

    Counts each channel's 256 values (a histogram) and takes the moments from it: exact,
    no float copy of the images, and about 10x faster than float sums (start-up time).
    """
    channels = images.shape[1]
    histogram = torch.zeros(channels, 256, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].transpose(0, 1).reshape(channels, -1)
        for c in range(channels):
            histogram[c] += torch.from_numpy(np.bincount(part[c].numpy(), minlength=256))
    values = torch.arange(256, dtype=torch.float64) / 255
    count = histogram[0].sum()
    mean = (histogram * values).sum(1) / count
    squares = (histogram * values.square()).sum(1)
    variance = (squares - count * mean.square()) / max(float(count) - 1, 1)
    std = variance.clamp_min(0).sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())


def assemble_splits(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    ids: np.ndarray | None = None,
) -> DataSplits:
    """Splits a whole data set stratified into train/val/test and fills in mean/std.

    The data set factories (runner/data/sets/) end with this.

    Args:
        name: Name of the data set.
        images: All images, uint8 (N, C, H, W).
        labels: All labels, int64 (N,).
        class_names: Name per class id.
        val_fraction: Share of each class for validation.
        test_fraction: Share of each class for testing.
        split_seed: Seed of the split.
        mean: Per-channel mean; None computes it from the train split.
        std: Per-channel std; None computes it from the train split.
        ids: Sample id of each image; None = `<name>:<index>`.

    Raises:
        ConfigError: The images are not uint8 (N, C, H, W).
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ConfigError(
            f"assemble_splits({name!r}, ...) takes uint8 (N, C, H, W) images, and got "
            f"{images.dtype} of shape {tuple(images.shape)} (floats in [0, 1]: "
            "(images * 255).round().to(torch.uint8))"
        )
    train_idx, val_idx, test_idx = stratified_split(
        labels.numpy(), val_fraction, test_fraction, split_seed
    )
    full = Split(images, labels, index_ids(name, len(labels)) if ids is None else ids)
    train = full.subset(torch.from_numpy(train_idx))
    if mean is None or std is None:
        stat_mean, stat_std = channel_stats(train.images)
        mean = stat_mean if mean is None else mean
        std = stat_std if std is None else std
    return DataSplits(
        name=name,
        train=train,
        val=full.subset(torch.from_numpy(val_idx)),
        test=full.subset(torch.from_numpy(test_idx)),
        class_names=list(class_names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        test_carved=bool(test_fraction),
    )
