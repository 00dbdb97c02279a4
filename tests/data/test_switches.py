"""Real-world switches: long tail, label noise, subsets; the class-count report; config checks."""

from __future__ import annotations

import csv

import pytest
import torch

from runner.config.validation import ConfigError, validate
from runner.data.build import build_data
from runner.data.sets.digits import load_digits
from runner.data.sets.synthetic import make_synthetic
from runner.data.switches import (
    apply_switches,
    long_tail_counts,
    long_tail_indices,
    noisy_labels,
    subset_indices,
)
from runner.reports.aug_preview import Preview
from runner.reports.data_report import draw_start_plots
from runner.reports.data_report import report_train_data as report_data
from runner.tracking.null import NullTracker

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_long_tail_profile_matches_the_cifar10_lt_counts():
    counts = long_tail_counts(torch.full((10,), 5000), ratio=100)
    assert counts.tolist() == CIFAR10_LT_100
    assert long_tail_counts(torch.full((5,), 500), ratio=10).tolist() == [500, 281, 158, 88, 50]


def test_a_whole_number_of_samples_is_not_cut_by_rounding():
    # 49 * (1/49) is 0.99999... in floats: the tail class got no sample, though the guard
    # allows a ratio up to the largest class.
    assert long_tail_counts(torch.full((10,), 49), ratio=49).tolist()[-1] == 1
    assert long_tail_counts(torch.full((3,), 98), ratio=49).tolist() == [98, 14, 2]


def test_long_tail_indices_draw_exact_counts_reproducibly():
    labels = torch.arange(10).repeat_interleave(5000)
    picked = long_tail_indices(labels, ratio=100, seed=0)
    assert torch.bincount(labels[picked]).tolist() == CIFAR10_LT_100
    assert torch.equal(picked, long_tail_indices(labels, ratio=100, seed=0))
    assert not torch.equal(picked, long_tail_indices(labels, ratio=100, seed=1))
    assert len(picked.unique()) == len(picked), "a subsample, without repeats"


def test_long_tail_never_asks_a_class_for_more_than_it_has():
    counts = long_tail_counts(torch.tensor([100, 10, 100]), ratio=4)
    assert counts.tolist() == [100, 10, 25]


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_symmetric_noise_flips_about_the_rate_to_other_classes(rate):
    clean = torch.arange(10).repeat(2000)
    noisy = noisy_labels(clean, rate, "symmetric", 10, seed=0)
    flipped = noisy != clean
    assert abs(float(flipped.float().mean()) - rate) < 0.015
    # Flipped labels spread over the other nine classes about evenly.
    targets = torch.bincount(noisy[flipped & (clean == 0)], minlength=10)
    assert targets[0] == 0 and targets[1:].min() > 0.5 * targets[1:].float().mean()
    assert torch.equal(noisy, noisy_labels(clean, rate, "symmetric", 10, seed=0))


def test_asymmetric_noise_flips_to_the_next_class():
    clean = torch.arange(5).repeat(2000)
    noisy = noisy_labels(clean, 0.3, "asymmetric", 5, seed=0)
    flipped = noisy != clean
    assert abs(float(flipped.float().mean()) - 0.3) < 0.02
    assert torch.equal(noisy[flipped], (clean[flipped] + 1) % 5)


def test_fraction_and_samples_per_class_are_stratified():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 8)
    by_fraction = subset_indices(labels, fraction=0.1, seed=0)
    assert torch.bincount(labels[by_fraction]).tolist() == [10, 5, 1]
    by_count = subset_indices(labels, samples_per_class=20, seed=0)
    assert torch.bincount(labels[by_count]).tolist() == [20, 20, 8]


def test_samples_per_class_above_every_class_warns_that_it_keeps_everything(caplog):
    """It was a silent no-op: the run trained on the whole set, thought to be a subset."""
    data = make_synthetic(num_samples=120, num_classes=3, image_size=8)
    largest = int(torch.bincount(data.train.labels).max())
    before = len(data.train)
    with caplog.at_level("WARNING", logger="runner.data.switches"):
        data = apply_switches(data, seed=0, samples_per_class=1000)
    assert len(data.train) == before
    assert (
        f"data.samples_per_class=1000 is more than any train class has (the largest has "
        f"{largest})" in caplog.text
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="runner.data.switches"):
        apply_switches(make_synthetic(num_samples=120, num_classes=3), samples_per_class=5)
    assert "data.samples_per_class" not in caplog.text


def test_apply_switches_changes_train_only_and_keeps_clean_labels():
    data = load_digits()
    val, test = data.val.labels.clone(), data.test.labels.clone()
    data = apply_switches(data, seed=0, imbalance_ratio=10, label_noise=0.3)
    assert data.long_tailed
    assert torch.equal(data.val.labels, val) and torch.equal(data.test.labels, test)
    clean = data.clean_train_labels
    assert clean is not None and len(clean) == len(data.train)
    clean_counts = torch.bincount(clean, minlength=10)
    assert int(clean_counts.max()) / int(clean_counts.min()) == pytest.approx(10, rel=0.1)
    assert clean_counts[0] == clean_counts.max() and clean_counts[9] == clean_counts.min()
    rate = data.extra_params["data.actual_noise_rate"]
    assert rate == pytest.approx(float((clean != data.train.labels).float().mean()))
    assert 0.2 < rate < 0.4


def test_switches_off_leave_the_data_alone():
    data = make_synthetic(num_samples=200)
    before = data.train.labels.clone()
    data = apply_switches(data, seed=0)
    assert torch.equal(data.train.labels, before)
    assert data.clean_train_labels is None and not data.long_tailed


def test_label_noise_on_one_class_is_refused_as_without_noise():
    """Noise flips a label to another class: one class ends with the one-class message."""
    from runner.data.decoding import DataError

    data = make_synthetic(num_classes=1, num_samples=64)
    with pytest.raises(DataError, match=r"has one class .*needs two or more"):
        apply_switches(data, seed=0, label_noise=0.2)


def test_symmetric_noise_that_leaves_the_own_class_no_majority_is_refused():
    """Only asymmetric noise of 0.5 was refused; symmetric 0.7 on 2 classes inverted
    most labels (actual noise rate 0.75) without a word."""
    from runner.data.decoding import DataError

    data = make_synthetic(num_classes=2, num_samples=320)
    with pytest.raises(DataError, match=r"label_noise=0.7 .* 2 classes .*below 0.5"):
        apply_switches(data, seed=0, label_noise=0.7)
    apply_switches(make_synthetic(num_classes=10, num_samples=320), seed=0, label_noise=0.7)


def test_build_data_applies_switches_from_the_config(make_cfg):
    cfg = make_cfg("data.samples_per_class=30", "data.label_noise=0.2", tiny=False)
    data = build_data(cfg.data)
    assert torch.bincount(data.clean_train_labels).tolist() == [30] * 10
    assert (data.clean_train_labels != data.train.labels).any()


def test_the_noise_rate_is_the_final_train_splits_after_exclusion(make_cfg, tmp_path):
    """data.actual_noise_rate kept the rate before data.exclude dropped the flipped labels."""
    noisy = build_data(make_cfg("data.label_noise=0.3", tiny=False).data)
    flipped = [
        str(i)
        for i, clean, label in zip(
            noisy.train.ids, noisy.clean_train_labels, noisy.train.labels, strict=True
        )
        if clean != label
    ]
    assert noisy.extra_params["data.actual_noise_rate"] > 0.25
    listing = tmp_path / "flipped.csv"
    listing.write_text("sample_id\n" + "\n".join(flipped) + "\n")
    cleaned_cfg = make_cfg("data.label_noise=0.3", f"data.exclude={listing}", tiny=False)
    cleaned = build_data(cleaned_cfg.data)
    assert len(cleaned.train) == len(noisy.train) - len(flipped)
    assert cleaned.extra_params["data.actual_noise_rate"] == 0.0


class RecordingTracker(NullTracker):
    def __init__(self):
        self.params, self.artifacts = {}, []

    def log_params(self, params):
        self.params.update(params)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(path.name)


def test_report_logs_counts_noise_and_bad_files(tmp_path):
    data = apply_switches(load_digits(), seed=0, imbalance_ratio=20, label_noise=0.2)
    data.bad_files = [("/x/a.jpg", "/x/a.jpg: empty file (0 bytes)")]
    tracker = RecordingTracker()
    report_data(data, tmp_path, tracker)
    counts = data.class_counts().tolist()
    assert tracker.params["data.train_class_counts"] == ",".join(map(str, counts))
    assert tracker.params["data.num_bad_files"] == 1
    # The long tail the switch built (of the clean labels): the noisy ones fill the tail.
    built = torch.bincount(data.clean_train_labels, minlength=10).tolist()
    assert tracker.params["data.actual_imbalance_ratio"] == pytest.approx(
        max(built) / min(built), abs=1e-4
    )
    assert max(built) / min(built) > 20 > 2 * max(counts) / min(counts)
    assert 0.1 < tracker.params["data.actual_noise_rate"] < 0.3
    assert set(tracker.artifacts) == {"bad_files.txt", "label_noise.csv"}
    # The bar chart is drawn beside the first training steps, with the augmentation preview.
    preview = Preview(torch.rand(4, 3, 8, 8), 2, ["0", "1"], "none")
    written = draw_start_plots(preview, data, tmp_path)
    assert [p.name for p in written] == ["aug_preview.png", "class_counts.png"]
    assert (tmp_path / "class_counts.png").stat().st_size > 1000
    assert (tmp_path / "bad_files.txt").read_text() == "/x/a.jpg: empty file (0 bytes)\n"
    with (tmp_path / "label_noise.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(data.train)
    assert [int(r["noisy_label"]) for r in rows] == data.train.labels.tolist()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.imbalance_ratio=0.5", "data.imbalance_ratio=0.5 is invalid"),
        ("data.label_noise=1.5", "data.label_noise=1.5 is invalid"),
        ("data.noise_type=pairs", "symmetric, asymmetric"),
        ("data.fraction=0", "data.fraction=0 is invalid"),
        ("data.samples_per_class=-3", "data.samples_per_class=-3 is invalid"),
    ],
)
def test_bad_switch_values_fail_validation_with_the_key(make_cfg, override, expected):
    with pytest.raises(ConfigError, match="1 problem") as info:
        validate(make_cfg(override))
    assert expected in str(info.value)


def test_fraction_and_samples_per_class_together_fail_validation(make_cfg):
    with pytest.raises(ConfigError, match="choose one"):
        validate(make_cfg("data.fraction=0.5", "data.samples_per_class=3"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.on_bad_file=ignore", "skip, error"),
        ("data.resident=maybe", "auto, true, false"),
        ("data.num_workers=-1", "an integer >= 0"),
    ],
)
def test_bad_imagefolder_values_fail_validation(make_cfg, tmp_path, override, expected):
    cfg = make_cfg("data=imagefolder", f"data.root={tmp_path}", override, tiny=False)
    with pytest.raises(ConfigError, match=expected):
        validate(cfg)


def test_imagefolder_without_root_fails_validation(make_cfg):
    with pytest.raises(ConfigError, match=r"data.root is required"):
        validate(make_cfg("data=imagefolder", tiny=False))


def test_an_imbalance_ratio_above_the_largest_class_is_refused_before_tails_vanish():
    """R=200 on digits' ~125 per class floored the last classes to 0 samples, silently."""
    from runner.data.decoding import DataError

    with pytest.raises(DataError, match=r"data.imbalance_ratio=200 .* use a ratio of at most"):
        apply_switches(load_digits(image_size=8), seed=0, imbalance_ratio=200)


def test_a_train_split_of_one_sample_is_refused_naming_the_switches():
    """It crashed in BatchNorm at the first step ("Expected more than 1 value per channel")."""
    from runner.data.checks import require_splits
    from runner.data.decoding import DataError

    data = make_synthetic(num_samples=60, num_classes=2, image_size=8)
    data.train = data.train.subset(torch.tensor([0]))
    with pytest.raises(DataError, match="has one sample: training needs two"):
        require_splits(data)


def test_a_data_set_long_tailed_as_it_comes_reports_head_medium_and_tail(caplog):
    """A folder of 5 classes of 100 images and 175 of 4 (ratio 25) reported no head,
    medium or tail accuracy: only data.imbalance_ratio turned them on."""
    from runner.reports.per_class import shot_accuracies

    data = load_digits(image_size=8)
    data.train = data.train.subset(long_tail_indices(data.train.labels, 20, seed=0))
    assert apply_switches(data, seed=0).long_tailed
    assert not apply_switches(load_digits(image_size=8), seed=0).long_tailed
    with caplog.at_level("INFO", logger="runner.reports.per_class"):
        shot_accuracies(torch.eye(3, dtype=torch.long), torch.tensor([300, 50, 3]))
        shot_accuracies(torch.eye(3, dtype=torch.long), torch.tensor([30, 20, 3]))
    assert "head/medium/tail: classes of > 100, 20-100 and < 20 train samples" in caplog.text
    assert "head/medium/tail: thirds of the classes ranked by train samples" in caplog.text
