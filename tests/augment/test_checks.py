"""`check_transforms`: every bad `aug.transforms` entry is named, with its value and the
fix, before the data is built (each test here was a traceback, a late error or a silent
run before the check covered it)."""

from __future__ import annotations

import pytest
import torch

import runner.train
from runner.augment.checks import check_transforms
from runner.cli import main
from runner.config.errors import ConfigError
from runner.config.validation import validate


def check(make_cfg, *overrides: str) -> None:
    """Composes the run's config and checks its transforms as a run does at its start."""
    cfg = make_cfg(*overrides)
    validate(cfg)
    check_transforms(cfg.aug, cfg.data)


def refused(make_cfg, *overrides: str) -> str:
    """The check's error for `overrides`."""
    with pytest.raises(ConfigError) as info:
        check(make_cfg, *overrides)
    return str(info.value)


# --- the list and its entries ------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "5"])
def test_transforms_that_are_not_a_list_are_refused(make_cfg, value):
    """`node.get` on a str or int raised AttributeError."""
    message = refused(make_cfg, f"aug.transforms={value}")
    assert message.startswith("aug.transforms must be a list of {_target_: ...} entries; got ")
    assert "e.g. aug.transforms=[{_target_: kornia.augmentation.RandomAffine" in message


def test_an_entry_that_is_not_a_mapping_is_named_with_its_value(make_cfg):
    affine = "{_target_: kornia.augmentation.RandomAffine, degrees: 5}"
    message = refused(make_cfg, f"aug.transforms=[{affine},2]")
    assert message.startswith("aug.transforms.1=2 is not a transform: each entry of")


def test_an_entry_without_a_target_is_refused_at_check_time(make_cfg):
    """It reached the data and failed in Kornia ("Only nn.Module are supported")."""
    message = refused(make_cfg, "aug.transforms=[{p: 0.5}]")
    assert message.startswith(
        "aug.transforms.0 has no _target_: name the class, e.g. _target_: "
        "kornia.augmentation.RandomAffine"
    )


@pytest.mark.parametrize("mix", ["RandomMixUpV2", "RandomCutMixV2", "RandomMosaic"])
def test_a_kornia_mix_in_the_transforms_is_refused_for_the_labels_it_leaves(make_cfg, mix):
    """RandomMixUpV2 in aug.transforms mixed the images and trained on unmixed labels."""
    message = refused(make_cfg, f"aug.transforms=[{{_target_: kornia.augmentation.{mix}}}]")
    assert message.startswith(f"aug.transforms.0 ({mix}) mixes images of the batch")
    assert "use aug.mixup_alpha and aug.cutmix_alpha (with aug.mix_prob)" in message


def test_a_list_where_kornia_takes_a_tuple_is_told_to_be_one_number(make_cfg):
    """CenterCrop refused size=[32, 32] ("Expected int or tuple"), which no config can
    write as a tuple, without saying that one number does."""
    crop = "{_target_: kornia.augmentation.CenterCrop, size: [32,32]}"
    message = refused(make_cfg, "data.image_size=32", f"aug.transforms=[{crop}]")
    assert message.endswith(
        "It takes a tuple where aug.transforms.0.size is a list, which a config cannot write "
        "as a tuple: give one number where it takes one (aug.transforms.0.size=32)"
    )
    check(
        make_cfg,
        "data.image_size=32",
        "aug.transforms=[{_target_: kornia.augmentation.CenterCrop, size: 32}]",
    )


def test_a_class_that_cannot_be_imported_names_the_target(make_cfg):
    """It said "cannot be built: ImportError ... Fix its parameters"."""
    message = refused(make_cfg, "aug.transforms=[{_target_: kornia.augmentation.NoSuchThing}]")
    assert message.startswith(
        "aug.transforms.0: _target_='kornia.augmentation.NoSuchThing' cannot be imported: "
        "check the class name"
    )
    assert "kornia.augmentation.<Name>" in message
    assert "Fix its parameters" not in message


# --- parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["aug=strong", "aug.transforms.1.brightness=[1.5,0.5]"],
            "aug.transforms.1.brightness=[1.5, 0.5] (a list; its default is the number 0.0)",
        ),
        (
            ["aug=strong", "aug.transforms.1.contrast=abc"],
            "aug.transforms.1.contrast='abc' (a str; its default is the number 0.0)",
        ),
        (
            ["aug=randaugment", "aug.transforms.1.m=abc"],
            "aug.transforms.1.m='abc' (a str; it takes an int)",
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_named_by_its_key(make_cfg, overrides, expected):
    """A comparison inside the constructor failed with a TypeError that named no key."""
    message = refused(make_cfg, *overrides)
    assert "cannot be built: TypeError" in message
    assert f"These values look like the wrong type: {expected}" in message


def test_a_type_error_without_a_telling_signature_lists_the_values_given(make_cfg):
    message = refused(make_cfg, "aug.transforms.0.degrees=abc")
    assert "aug.transforms.0 (RandomAffine) cannot be built: TypeError" in message
    assert "Check the types of its values: aug.transforms.0.degrees='abc', " in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "aug.transforms.0.scale=[1.1,0.9]",
            "aug.transforms.0 (RandomAffine): scale=[1.1, 0.9]: expected (min, max) with "
            "min <= max; swap them (aug.transforms.0.scale=[0.9, 1.1])",
        ),
        (  # RandomAffine's scale for x, then y
            "aug.transforms.0.scale=[0.9,1.1,1.2,0.8]",
            "scale=[0.9, 1.1, 1.2, 0.8]: expected (min_x, max_x, min_y, max_y) with min <= max",
        ),
        (
            "aug.transforms=[{_target_: kornia.augmentation.RandomErasing, ratio: [3.3, 0.3]}]",
            "aug.transforms.0 (RandomErasing): ratio=[3.3, 0.3]: expected (min, max)",
        ),
    ],
)
def test_a_reversed_range_is_refused(make_cfg, override, expected):
    """Kornia's RandomAffine took scale=[1.1, 0.9] in silence."""
    assert expected in refused(make_cfg, override)


# --- a small batch through the built transforms -------------------------------------------


def test_a_module_that_fails_on_images_is_refused_with_its_error(make_cfg):
    """It passed the check and failed with a traceback in the preview, after the data."""
    linear = "{_target_: torch.nn.Linear, in_features: 3, out_features: 3}"
    message = refused(make_cfg, f"aug.transforms=[{linear}]")
    assert message.startswith(
        "aug.transforms.0 (Linear) fails on a batch of 3x32x32 images (data.image_size=32, "
        "data.channels=3): RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    )


def test_a_module_that_changes_the_image_shape_is_refused(make_cfg):
    """AvgPool2d trained on 16x16 images and tested on 32x32 ones, in silence."""
    message = refused(make_cfg, "aug.transforms=[{_target_: torch.nn.AvgPool2d, kernel_size: 2}]")
    assert message.startswith(
        "aug.transforms.0 (AvgPool2d) returns images of shape (3, 16, 16) from images of "
        "shape (3, 32, 32) (data.image_size=32, data.channels=3)"
    )


def test_a_torchvision_transform_is_refused_and_another_module_warned_of(make_cfg, caplog):
    """torchvision's RandomHorizontalFlip got the whole batch in one call and flipped all
    of its images or none, in silence; README's list is of Kornia augmentations."""
    flip = "{_target_: torchvision.transforms.RandomHorizontalFlip}"
    message = refused(make_cfg, f"aug.transforms=[{flip}]")
    assert message.startswith("aug.transforms.0 (RandomHorizontalFlip) is torchvision's: ")
    assert "(kornia.augmentation.RandomHorizontalFlip, where Kornia has that name)" in message
    check(make_cfg, "aug.transforms=[{_target_: torch.nn.Identity}]")
    assert "aug.transforms.0 (Identity) (torch.nn.modules.linear.Identity) is no Kornia " in (
        caplog.text
    )
    caplog.clear()
    check(make_cfg, "aug=basic")  # Kornia's own and the runner's fused ops: no word
    assert "is no Kornia augmentation" not in caplog.text


def test_a_padding_the_images_cannot_mirror_is_refused_at_check_time(make_cfg):
    """The same error came from the first batch, after the data was built."""
    message = refused(make_cfg, "aug=flip_crop", "aug.transforms.0.padding=100")
    assert message.startswith(
        "aug.transforms.0 (RandomCropFlip): padding=100 with padding_mode='reflect' needs "
        "images larger than the padding, and these are 32x32"
    )


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "preset", ["basic", "strong", "randaugment", "autoaugment", "trivialaugment", "flip_crop"]
)
def test_the_presets_pass_and_leave_the_runs_random_draws_alone(make_cfg, preset, channels):
    """The check draws from a forked RNG: a seeded run draws what it drew without it."""
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    check(make_cfg, f"aug={preset}", "data.image_size=24", f"data.channels={channels}")
    assert torch.equal(torch.rand(4), expected)


def test_a_run_refuses_a_bad_transform_before_building_the_data(make_cfg, monkeypatch):
    """The run's own order: the error is one line, and the data is never built."""

    def build_data(*args, **kwargs):
        raise AssertionError("the data was built before the transforms were checked")

    monkeypatch.setattr(runner.train, "build_data", build_data)
    cfg = make_cfg("aug.transforms=[{_target_: torch.nn.AvgPool2d, kernel_size: 2}]")
    with pytest.raises(SystemExit) as info:
        main(cfg)
    message = str(info.value.code)
    assert message.startswith("Error: aug.transforms.0 (AvgPool2d) returns images of shape")
