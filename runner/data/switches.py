"""Real-world switches for any data set: long tail, label noise, little data; and the report.

The switches change the train split only, with a fixed seed, after the data set is
built, so every data set gets them the same way (`runner.train.build_data` applies them):

- `data.fraction=F` / `data.samples_per_class=N`: a stratified subset;
- `data.imbalance_ratio=R`: a long-tailed subsample with an exponential profile,
  n_c = n_max * R^(-c / (C - 1)) for class index c (the CIFAR-10-LT convention of
  Cui et al. 2019 and Cao et al. 2019), so largest / smallest = R (a little more on
  small data: each count is rounded down);
- `data.label_noise=P`, `data.noise_type`: each label flips with probability P, to a
  uniformly drawn other class (symmetric) or to the next class, c -> c + 1 mod C
  (asymmetric, "pair flipping" of Han et al. 2018). The clean labels are kept.

They apply in that order: subset, then long tail, then noise, so the noise rate is the
rate of the final train split.
"""

from __future__ import annotations

import logging

import torch

from runner.config.choices import DATA_SWITCHES, NOISE_TYPES
from runner.data.checks import require_splits
from runner.data.decoding import DataError
from runner.data.splits import DataSplits, is_long_tailed

log = logging.getLogger(__name__)

# Keys of the data group that `apply_switches` consumes (the factories never see them).
SWITCHES = DATA_SWITCHES


def _shuffled_class_members(labels: torch.Tensor, cls: int, generator) -> torch.Tensor:
    members = (labels == cls).nonzero().flatten()
    return members[torch.randperm(len(members), generator=generator)]


def long_tail_counts(counts: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per-class sample counts of the exponential long-tail profile.

    Args:
        counts: Available samples per class (class 0 becomes the head).
        ratio: Largest / smallest class count.

    Returns:
        int64 counts n_c = int(n_max * ratio ** (-c / (C - 1))), at most what a class has.
    """
    num_classes = len(counts)
    n_max = int(counts.max())
    if num_classes < 2:
        return counts.clone()
    # Python floats, in the order the reference implementations compute them, so the
    # counts match theirs exactly (CIFAR-10, R=100: 5000, 2997, 1796, ..., 50); the
    # tolerance keeps a whole number whole (49 * (1/49) is 0.99999... in floats).
    target = [
        int(n_max * (1 / ratio) ** (c / (num_classes - 1)) + 1e-6) for c in range(num_classes)
    ]
    return torch.minimum(torch.tensor(target, dtype=torch.long), counts.long())


def long_tail_indices(labels: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """Indices of a long-tailed subsample of `labels` (see `long_tail_counts`), sorted."""
    num_classes = int(labels.max()) + 1
    targets = long_tail_counts(torch.bincount(labels, minlength=num_classes), ratio)
    generator = torch.Generator().manual_seed(seed)
    picked = [
        _shuffled_class_members(labels, c, generator)[: int(targets[c])] for c in range(num_classes)
    ]
    return torch.cat(picked).sort().values


def subset_indices(
    labels: torch.Tensor,
    fraction: float | None = None,
    samples_per_class: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of a stratified subset, sorted: a fraction of each class or N per class.

    Args:
        labels: Class of each sample.
        fraction: Share of each class to keep (at least one sample per class).
        samples_per_class: Samples to keep per class (all of a class that has fewer).
        seed: Seed of the draw.

    Returns:
        int64 indices into `labels`.
    """
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(int(labels.max()) + 1):
        members = _shuffled_class_members(labels, c, generator)
        if not len(members):
            continue
        keep = samples_per_class if fraction is None else max(1, round(len(members) * fraction))
        picked.append(members[:keep])
    return torch.cat(picked).sort().values


def noisy_labels(
    labels: torch.Tensor, rate: float, noise_type: str, num_classes: int, seed: int
) -> torch.Tensor:
    """Flips each label with probability `rate` (symmetric or asymmetric, see module doc).

    Args:
        labels: The clean labels.
        rate: Probability that a label flips.
        noise_type: "symmetric" or "asymmetric".
        num_classes: Number of classes.
        seed: Seed of the flips.

    Returns:
        The noisy labels (a new tensor; a flipped label always differs from the clean one).
    """
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"data.noise_type={noise_type!r}: expected one of {NOISE_TYPES}")
    generator = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(labels), generator=generator) < rate
    if noise_type == "symmetric":
        shift = torch.randint(1, num_classes, (len(labels),), generator=generator)
    else:
        shift = torch.ones(len(labels), dtype=torch.long)
    return torch.where(flip, (labels + shift) % num_classes, labels)


def dropping_settings(
    imbalance_ratio: float | None = None,
    fraction: float | None = None,
    samples_per_class: int | None = None,
    **_others,
) -> list[str]:
    """The switches set to drop train samples, as `data.<key>=<value>`.

    Takes `apply_switches`' keyword arguments; those that drop nothing (the label noise)
    are passed over.
    """
    settings = [("fraction", fraction), ("samples_per_class", samples_per_class)]
    if imbalance_ratio is not None and imbalance_ratio > 1:
        settings.append(("imbalance_ratio", imbalance_ratio))
    return [
        f"data.{key}={value:g}" if isinstance(value, float) else f"data.{key}={value}"
        for key, value in settings
        if value is not None
    ]


def apply_switches(
    data: DataSplits,
    seed: int = 0,
    imbalance_ratio: float | None = None,
    label_noise: float = 0.0,
    noise_type: str = "symmetric",
    fraction: float | None = None,
    samples_per_class: int | None = None,
) -> DataSplits:
    """Applies the real-world switches to the train split (see the module doc).

    Args:
        data: The data set as its factory built it.
        seed: Seed of every draw (the data group's `split_seed`).
        imbalance_ratio: Largest / smallest train class; None or 1 = off.
        label_noise: Probability that a train label flips; 0 = off.
        noise_type: "symmetric" or "asymmetric".
        fraction: Share of each train class to keep; None = all.
        samples_per_class: Train samples to keep per class; None = all (more than the
            largest class has keeps all too, with a warning).

    Returns:
        The data set with the changed train split; when noisy, the clean labels and the
        actual noise rate (in `extra_params`).
    """
    train = data.train
    if fraction is not None and samples_per_class is not None:
        raise ValueError("set data.fraction or data.samples_per_class, not both")
    if samples_per_class is not None and len(train.labels):
        largest = int(torch.bincount(train.labels).max())
        if samples_per_class > largest:  # keeps every sample: the user thinks it subsampled
            log.warning(
                "data.samples_per_class=%d is more than any train class has (the largest has "
                "%d): every train sample is kept. Set it below %d to subsample, or to null",
                samples_per_class,
                largest,
                largest,
            )
    if fraction is not None or samples_per_class is not None:
        train = train.subset(subset_indices(train.labels, fraction, samples_per_class, seed))
    if imbalance_ratio is not None and imbalance_ratio > 1:
        largest = int(torch.bincount(train.labels).max())
        if largest < imbalance_ratio:  # the smallest class would round to no sample
            raise DataError(
                f"data.imbalance_ratio={imbalance_ratio:g} asks for a smallest train class of "
                f"{largest}/{imbalance_ratio:g} < 1 sample (the largest has {largest}), which "
                f"would drop the tail classes: use a ratio of at most {largest}"
            )
        train = train.subset(long_tail_indices(train.labels, imbalance_ratio, seed))
        data.long_tailed = True
    data.train = train
    if len(train.labels) and is_long_tailed(torch.bincount(train.labels)):
        data.long_tailed = True  # a data set long-tailed as it comes
    if label_noise:
        require_splits(data, names=())  # one class: no other class to flip a label to
        classes = data.num_classes
        if noise_type == "symmetric" and label_noise >= (classes - 1) / classes:
            # Each wrong class then gets P/(C-1) of a class's labels, at least the 1-P
            # its own keeps: the labels no longer name the images' class most often.
            raise DataError(
                f"data.label_noise={label_noise:g} with data.noise_type=symmetric and "
                f"{classes} classes leaves fewer labels on each image's own class than on "
                f"another: use a rate below {(classes - 1) / classes:.3g}"
            )
        clean = train.labels.clone()
        noisy = noisy_labels(clean, label_noise, noise_type, data.num_classes, seed)
        data.train = train.with_labels(noisy)
        data.clean_train_labels = clean
        rate = data.note_noise_rate()
        log.info("label noise: %.4f of %d train labels flipped (%s)", rate, len(clean), noise_type)
    return data
