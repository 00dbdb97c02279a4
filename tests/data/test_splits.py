"""Data sets as uint8 tensors, stratified splits, index-batched loaders, samplers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.data.loaders import ResidentLoader
from runner.data.samplers import RandomSampler, WeightedClassSampler
from runner.data.sets.digits import load_digits
from runner.data.sets.synthetic import make_synthetic
from runner.data.splits import Split, stratified_split


def test_digits_is_the_full_set_upscaled_to_three_uint8_channels():
    data = load_digits(image_size=32)
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    assert data.class_names == [str(d) for d in range(10)]
    images = data.train.images
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    assert int(images.max()) == 255 and int(images.min()) == 0


def test_digits_split_is_stratified_and_fixed_by_its_seed():
    data = load_digits(val_fraction=0.1, test_fraction=0.2, split_seed=0)
    for split, share in ((data.val, 0.1), (data.test, 0.2)):
        counts = torch.bincount(split.labels, minlength=10)
        assert (counts > 0).all()
        assert abs(len(split) / 1797 - share) < 0.01
    again = load_digits(val_fraction=0.1, test_fraction=0.2, split_seed=0)
    other = load_digits(val_fraction=0.1, test_fraction=0.2, split_seed=1)
    assert torch.equal(data.test.images, again.test.images)
    assert not torch.equal(data.test.images, other.test.images)


def test_stratified_split_has_no_overlap():
    labels = torch.randint(0, 5, (500,)).numpy()
    train, val, test = stratified_split(labels, 0.2, 0.2, seed=3)
    assert len(set(train) | set(val) | set(test)) == 500
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))


def test_a_rare_class_keeps_a_train_sample():
    """Two samples at val = test = 0.3 went to val and test, leaving none to learn from."""
    labels = np.array([0] * 50 + [1] * 2 + [2] * 1)
    train, val, test = stratified_split(labels, 0.3, 0.3, seed=0)
    assert set(labels[train]) == {0, 1, 2}
    assert (labels[test] == 1).sum() == 1 and (labels[val] == 0).sum() == 15
    assert len(train) + len(val) + len(test) == len(labels)


@pytest.mark.parametrize("num_classes", [6, 20])
def test_every_synthetic_class_has_its_own_signal(num_classes):
    """With more classes than rows (20 at 8 px), classes beyond the 8th had no signal."""
    data = make_synthetic(num_samples=40 * num_classes, num_classes=num_classes, image_size=8)
    images = torch.cat([data.train.images, data.val.images, data.test.images]).float()
    labels = torch.cat([data.train.labels, data.val.labels, data.test.labels])
    overall = images.mean(0)
    for c in range(num_classes):
        lift = images[labels == c].mean(0) - overall
        assert lift.max() > 40, f"class {c} is not brighter anywhere"
    if num_classes == 6:  # fewer classes than rows: bands of rows, as always
        lift = images[labels == 0].mean(0) - overall
        assert lift[:, :1].mean() > 40 and lift[:, 2:].mean() < 0


def test_synthetic_has_the_requested_shape_and_classes():
    data = make_synthetic(num_samples=300, num_classes=3, image_size=16)
    assert data.num_classes == 3 and data.image_size == 16
    assert len(data.train) + len(data.val) + len(data.test) == 300


def test_resident_loader_batches_by_index():
    split = Split(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    loader = ResidentLoader(
        split, batch_size=4, sampler=RandomSampler(split.labels), drop_last=True
    )
    loader.set_epoch(1)
    batches = list(loader)
    assert len(loader) == len(batches) == 2 and all(b[0].shape[0] == 4 for b in batches)
    for images, labels in batches:
        assert torch.equal(images.view(-1).long(), labels), "images and labels stay paired"
    sequential = list(ResidentLoader(split, batch_size=4))
    assert [len(labels) for _, labels in sequential] == [4, 4, 2]
    assert torch.equal(torch.cat([labels for _, labels in sequential]), torch.arange(10))


def test_an_epoch_smaller_than_a_batch_keeps_its_one_batch_with_drop_last():
    # 200 samples but 50 draws an epoch (a weighted sampler's num_samples), or one rank's
    # share of 100 samples over 2 ranks: below one batch of 64, dropping the incomplete
    # batch would leave no training batch at all.
    split = Split(torch.zeros(200, 1, 1, 1, dtype=torch.uint8), torch.arange(200) % 4)
    draws = WeightedClassSampler(split.labels, num_samples=50)
    loader = ResidentLoader(split, batch_size=64, sampler=draws, drop_last=True)
    assert len(loader) == 1 and [len(y) for _, y in loader] == [50]
    half = Split(split.images[:100], split.labels[:100])
    share = RandomSampler(half.labels, rank=0, world_size=2)
    assert len(ResidentLoader(half, batch_size=64, sampler=share, drop_last=True)) == 1
    # Larger epochs still drop their incomplete batch.
    whole = RandomSampler(split.labels)
    assert len(ResidentLoader(split, batch_size=64, sampler=whole, drop_last=True)) == 3


def test_balanced_sampler_draws_classes_about_equally():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    draws = WeightedClassSampler(labels, seed=0).indices(0)
    shares = torch.bincount(labels[draws], minlength=3).float() / len(draws)
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.05), shares


def test_overfit_batches_draw_every_class_of_a_folder_stored_class_by_class(tmp_path):
    """The first 32 samples of a class-sorted folder were one class: a constant "fits" them."""
    from runner.data.debug import overfit_subset
    from runner.data.sets.imagefolder import load_imagefolder
    from tests.datagen import make_imagefolder

    root = make_imagefolder(tmp_path / "pics", per_class=40, splits=("train", "test"))
    data = load_imagefolder(str(root), image_size=16, num_workers=0, val_fraction=0.1)
    assert data.train.labels[:32].unique().tolist() == [0], "stored class by class"
    picked = overfit_subset(data, overfit_batches=2, batch_size=16, seed=0)
    assert len(picked.train) == 32 and picked.val is picked.train
    assert picked.train.labels.unique().tolist() == [0, 1, 2]
    again = overfit_subset(data, overfit_batches=2, batch_size=16, seed=0)
    assert list(again.train.ids) == list(picked.train.ids), "seeded"


def own_data_set(image_size: int = 16, kind: str = "ok"):
    """A user's data set function, as README's "Extending" describes one (and three ways
    of getting it wrong)."""
    from runner.data.splits import assemble_splits

    size = 28 if kind == "size" else image_size
    images = torch.rand(60, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    images = images.to(torch.uint8) if kind != "float" else images / 255
    splits = assemble_splits("own", images, torch.arange(60) % 3, "abc", 0.2, 0.2, 0, None, None)
    return (splits,) if kind == "tuple" else splits


@pytest.mark.parametrize(
    "kind, told",
    [
        # Each failed later without naming the function: an AttributeError ('tuple' object
        # has no attribute 'ensure_ids'), a TypeError of numpy's casting, or (size) none
        # at all, the run training at 28 px while eval resized to 16.
        ("tuple", "returned tuple, not runner.data.splits.DataSplits: end the function with"),
        ("float", "assemble_splits('own', ...) takes uint8 (N, C, H, W) images, and got"),
        ("size", "made 28x28 images, and data.image_size=16, to which eval and predict resize"),
    ],
)
def test_a_data_set_function_that_returns_what_the_run_cannot_use_is_named(kind, told):
    from runner.config.errors import ConfigError
    from runner.data.build import source_splits

    target = f"{__name__}.own_data_set"
    assert len(source_splits({"_target_": target, "image_size": 16}).train) == 36
    with pytest.raises(Exception) as refused:
        source_splits({"_target_": target, "image_size": 16, "kind": kind})
    cause = refused.value if isinstance(refused.value, ConfigError) else refused.value.__cause__
    assert isinstance(cause, ConfigError) and told in str(cause)
