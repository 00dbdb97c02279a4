"""K-fold: stratified folds of the train split after the switches; its config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.config.validation import ConfigError, validate
from runner.data.build import build_data
from runner.data.decoding import DataError
from runner.data.folds import fold_indices, select_fold
from runner.data.sets.digits import load_digits
from runner.data.sets.synthetic import make_synthetic
from runner.data.switches import apply_switches
from tests.conftest import run_cli


def test_folds_partition_the_train_split_stratified_and_reproducibly():
    labels = torch.arange(4).repeat_interleave(torch.tensor([50, 30, 20, 10]))
    folds = fold_indices(labels, 5, seed=0)
    held = np.concatenate([held for _, held in folds])
    assert sorted(held.tolist()) == list(range(110)), "every sample held out exactly once"
    for train, held in folds:
        assert not set(train) & set(held) and len(train) + len(held) == 110
        assert torch.bincount(labels[held], minlength=4).tolist() == [10, 6, 4, 2]
    again = fold_indices(labels, 5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    other = fold_indices(labels, 5, seed=1)
    assert not np.array_equal(folds[0][1], other[0][1])


def test_fold_k_is_the_val_split_and_every_fold_sees_the_same_noisy_labels(make_cfg):
    base = ["data=digits", "data.label_noise=0.2", "data.num_folds=3"]
    jobs = [build_data(make_cfg(*base, f"data.fold={k}", tiny=False).data) for k in range(3)]
    plain = build_data(make_cfg("data=digits", "data.label_noise=0.2", tiny=False).data)
    train_ids = {str(i) for i in plain.train.ids}
    noisy = {str(i): int(y) for i, y in zip(plain.train.ids, plain.train.labels, strict=True)}
    held = [str(i) for data in jobs for i in data.val.ids]
    assert sorted(held) == sorted(train_ids), "the folds cut the train split after the noise"
    for data in jobs:
        assert torch.equal(data.test.labels, plain.test.labels)
        assert [str(i) for i in data.test.ids] == [str(i) for i in plain.test.ids]
        for split in (data.train, data.val):
            assert all(
                noisy[str(i)] == int(y) for i, y in zip(split.ids, split.labels, strict=True)
            )
        clean = data.clean_train_labels
        assert clean is not None and len(clean) == len(data.train)
        assert data.extra_params["data.num_held_out"] == len(data.val)
        assert len(data.val) in (len(train_ids) // 3, len(train_ids) // 3 + 1)


def test_a_class_with_fewer_samples_than_folds_is_refused_naming_the_key():
    data = apply_switches(load_digits(), seed=0, imbalance_ratio=4, samples_per_class=12)
    counts = data.class_counts().tolist()
    assert min(counts) < 5
    with pytest.raises(DataError, match=r"data\.num_folds=5: every class needs at least 5") as err:
        select_fold(data, num_folds=5, fold=0)
    assert "Lower data.num_folds to at most 3" in str(err.value)
    # data.exclude takes samples away; it was listed as a way to give a class more.
    assert "whether a data.exclude or data.relabel file takes them away" in str(err.value)
    assert "data.imbalance_ratio, data.exclude)" not in str(err.value)


@pytest.mark.parametrize(
    ("ratio", "short"),
    [(10, "2 classes have fewer: give them"), (6, "class 'class_9' has 1: give it")],
)
def test_a_class_too_small_for_any_k_is_refused_in_whole_sentences(ratio, short):
    """With a class of one sample the fix read "K-fold needs at least 2 train samples per
    class, or leave those classes more train samples": half a sentence, no fix."""
    data = make_synthetic(num_samples=160, num_classes=10)
    data = apply_switches(data, seed=0, imbalance_ratio=ratio)
    if ratio == 6:  # 2 samples in the smallest class: take one away (as data.exclude would)
        keep = torch.ones(len(data.train), dtype=torch.bool)
        keep[(data.train.labels == 9).nonzero()[0]] = False
        data = data.subset_train(keep.nonzero().flatten())
    assert sorted(data.class_counts().tolist())[:2] == ([1, 1] if ratio == 10 else [1, 2])
    with pytest.raises(DataError) as err:
        select_fold(data, num_folds=5, fold=0)
    message = str(err.value)
    assert message.endswith(
        "after the switches, data.exclude and data.relabel. K-fold needs at least 2 train "
        f"samples in every class, whatever data.num_folds, and {short} more train samples "
        "(check data.fraction, data.samples_per_class and data.imbalance_ratio, and whether "
        "a data.exclude or data.relabel file takes them away)."
    )
    assert "Lower data.num_folds" not in message and ", or leave" not in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.num_folds=1", "data.fold=0"], "data.num_folds=1 is invalid: expected null"),
        (["data.fold=2"], "data.fold=2 needs data.num_folds"),
        (["data.num_folds=5"], "data.num_folds=5 needs data.fold=<0..4>"),
        (["data.num_folds=5", "data.fold=5"], "data.fold=5 is outside 0..4"),
        (["data.num_folds=5", "data.fold=-1"], "data.fold=-1 is invalid"),
        (
            ["data.num_folds=5", "data.fold=0", "debug=overfit"],
            "a k-fold job would hold out no fold",
        ),
    ],
)
def test_bad_fold_settings_fail_validation_with_the_key_and_the_fix(make_cfg, overrides, expected):
    with pytest.raises(ConfigError, match="1 problem") as err:
        validate(make_cfg(*overrides))
    assert expected in str(err.value)


def test_a_fold_sweep_beyond_k_is_refused_before_any_job_runs(tmp_path):
    out = tmp_path / "outputs"
    done = run_cli("-m", f"paths.output_dir={out}", "data.num_folds=3", "data.fold=range(4)")
    assert done.returncode == 1
    assert "data.fold=3 is outside 0..2 (data.num_folds=3)" in done.stderr
    assert not out.exists(), "refused before Hydra made a sweep dir"
