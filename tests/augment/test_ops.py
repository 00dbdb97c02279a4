"""The fused Kornia modules of runner/augment/ops/: what they compute, both code paths.

Small images (32x32) take the batched path on the CPU, 128x128 and larger the
per-sample path; both are checked against a plain reference on the same parameters.
"""

from __future__ import annotations

import kornia.augmentation as K
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from runner.augment.device import DeviceAugment
from runner.augment.ops.color_jitter import ColorJitterAffine
from runner.augment.ops.crop_flip import RandomCropFlip
from runner.augment.ops.erasing import RandomBoxErasing
from runner.augment.ops.resized_crop_flip import RandomResizedCropFlip
from runner.config.errors import ConfigError

SMALL, LARGE = 32, 128  # batched path / per-sample path on the CPU


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def images(size: int, n: int = 6) -> torch.Tensor:
    return torch.rand(n, 3, size, size)


def pixel(transform_matrix: torch.Tensor, x: float, y: float) -> tuple[int, int]:
    """Where the matrix sends input pixel (x, y): (column, row) of the output."""
    out = transform_matrix @ torch.tensor([x, y, 1.0])
    return round(out[0].item()), round(out[1].item())


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_crop_flip_matches_pad_slice_and_flip_and_its_matrix(size):
    x = images(size)
    op = RandomCropFlip(size, padding=4, padding_mode="reflect", flip_p=0.5)
    out = op(x)
    params = op._params
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    assert params["flip"].any() and not params["flip"].all()  # both branches are checked
    for n in range(len(x)):
        top, left = params["offset_y"][n].item(), params["offset_x"][n].item()
        expected = padded[n, :, top : top + size, left : left + size]
        if params["flip"][n]:
            expected = expected.flip(-1)
        assert torch.equal(out[n], expected)
        col, row = pixel(op.transform_matrix[n], 10, 12)
        assert torch.equal(out[n, :, row, col], x[n, :, 12, 10])


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_crop_flip_takes_uint8_and_returns_the_same_floats(size):
    x = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    op = RandomCropFlip(size, padding=4)
    from_uint8 = op(x)
    from_float = op(x.float() / 255, params=op._params)
    assert from_uint8.dtype == torch.float32
    assert op.transform_matrix.dtype == torch.float32
    torch.testing.assert_close(from_uint8, from_float)


def test_crop_flip_without_padding_or_flip_is_the_identity_and_all_flips_mirror():
    x = images(SMALL)
    assert torch.equal(RandomCropFlip(SMALL, flip_p=0.0)(x), x)
    assert torch.equal(RandomCropFlip(SMALL, flip_p=1.0)(x), x.flip(-1))


def test_device_augment_hands_uint8_to_a_first_module_that_takes_it():
    augment = DeviceAugment([RandomCropFlip(LARGE, padding=4)], image_size=LARGE).train()
    batch = torch.randint(0, 256, (2, 3, LARGE, LARGE), dtype=torch.uint8)
    out = augment(batch)
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert augment._first_takes_uint8
    assert not DeviceAugment([ColorJitterAffine(0.2)], image_size=LARGE)._first_takes_uint8


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_resized_crop_of_the_whole_image_is_the_identity_or_the_mirror(size):
    x = images(size)
    whole = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}
    torch.testing.assert_close(RandomResizedCropFlip(size, flip_p=0.0, **whole)(x), x)
    torch.testing.assert_close(RandomResizedCropFlip(size, flip_p=1.0, **whole)(x), x.flip(-1))


def test_resized_crop_paths_agree_and_match_crop_then_interpolate():
    x = images(LARGE, n=4)
    op = RandomResizedCropFlip(LARGE, scale=(0.3, 0.9))
    per_sample = op(x)  # the CPU path for this size
    params = op._params
    batched = op._batched(x, params["box"], params["flip"])
    torch.testing.assert_close(per_sample, batched, atol=1e-4, rtol=0)
    top, left, height, width = params["box"][0].tolist()
    crop = x[:1, :, top : top + height, left : left + width]
    expected = F.interpolate(crop, size=(LARGE, LARGE), mode="bilinear", align_corners=False)
    if params["flip"][0]:
        expected = expected.flip(-1)
    torch.testing.assert_close(per_sample[:1], expected, atol=1e-5, rtol=0)


def test_resized_crop_boxes_follow_scale_and_ratio_and_stay_inside():
    op = RandomResizedCropFlip(16, scale=(0.25, 0.5), ratio=(0.5, 2.0))
    params = op.forward_parameters((2000, 3, 64, 48))
    top, left, height, width = params["box"].unbind(1)
    area = (height * width).float() / (64 * 48)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 64).all() and (left + width <= 48).all()
    assert area.min() > 0.2 and area.max() < 0.56  # rounding to whole pixels
    aspect = width.float() / height.float()
    assert aspect.min() > 0.45 and aspect.max() < 2.2
    assert 0.35 < params["flip"].float().mean() < 0.65


def test_resized_crop_matrix_sends_box_corners_to_output_corners():
    op = RandomResizedCropFlip(32, scale=(0.3, 0.6), flip_p=0.0)
    op(images(64, n=2))
    top, left, height, width = op._params["box"][0].tolist()
    # Pixel centres: the box's first and last pixel land half a source pixel inside.
    col, row = pixel(op.transform_matrix[0], left - 0.5 + width / 64, top - 0.5 + height / 64)
    assert (col, row) == (0, 0)


def test_colour_jitter_single_factors_match_torchvision():
    x = images(SMALL)
    op = ColorJitterAffine(brightness=0.4)
    out = op(x)
    for n in range(len(x)):
        factor = op._params["brightness"][n].item()
        torch.testing.assert_close(out[n], TF.adjust_brightness(x[n], factor), atol=1e-5, rtol=0)
    op = ColorJitterAffine(contrast=0.4)
    out = op(x)
    for n in range(len(x)):
        factor = op._params["contrast"][n].item()
        torch.testing.assert_close(out[n], TF.adjust_contrast(x[n], factor), atol=1e-5, rtol=0)
    op = ColorJitterAffine(saturation=0.4)
    out = op(x)
    for n in range(len(x)):
        factor = op._params["saturation"][n].item()
        torch.testing.assert_close(out[n], TF.adjust_saturation(x[n], factor), atol=1e-5, rtol=0)


def test_colour_jitter_hue_keeps_gray_and_turns_colour_like_torchvision():
    gray = images(SMALL).mean(1, keepdim=True).expand(-1, 3, -1, -1)
    torch.testing.assert_close(ColorJitterAffine(hue=0.5)(gray), gray, atol=1e-5, rtol=0)
    x = images(SMALL)
    op = ColorJitterAffine(hue=0.1)
    out = op(x)
    to_reference, moved = [], []
    for n in range(len(x)):
        hue = op._params["hue"][n].item()
        reference = TF.adjust_hue(x[n], hue)
        to_reference.append((out[n] - reference).abs().mean())
        moved.append((reference - x[n]).abs().mean())
        # The same direction of turn: closer to torchvision's turn than to the opposite.
        opposite = TF.adjust_hue(x[n], -hue)
        assert to_reference[-1] < (out[n] - opposite).abs().mean()
    # The same amount: nearer to torchvision's result than torchvision's is to the input
    # (random colours are the worst case for the difference between the two hue models).
    assert sum(to_reference) < 0.9 * sum(moved)


def test_colour_jitter_of_one_channel_jitters_gray_and_other_counts_name_the_fix():
    """aug=strong crashed on one-channel data (torchvision's jitter takes it) with a raw
    ValueError; four channels now name data.channels and the presets to use."""
    gray = images(SMALL)[:, :1]
    op = ColorJitterAffine(0.4, 0.4, 0.4, 0.1)
    out = op(gray)
    assert out.shape == gray.shape
    for n in range(len(gray)):
        # Brightness and contrast in the drawn order, clamped once (the op is one affine
        # map, where torchvision clamps after each step); hue and saturation leave gray.
        reference = gray[n]
        for step in op._params["order"].tolist():
            if step == 0:
                reference = reference * op._params["brightness"][n]
            elif step == 1:
                factor = op._params["contrast"][n]
                reference = factor * reference + (1 - factor) * reference.mean()
        torch.testing.assert_close(out[n], reference.clamp(0, 1), atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match=r"data\.channels=4.*aug=basic"):
        op(images(SMALL).repeat(1, 2, 1, 1)[:, :4])


def test_colour_jitter_skips_samples_by_p_and_handles_channels_last():
    x = images(SMALL, n=64)
    op = ColorJitterAffine(0.4, 0.4, 0.4, 0.05, p=0.5)
    out = op(x)
    jittered = op._params["jitter"]
    assert 10 < jittered.sum() < 54
    assert torch.equal(out[~jittered], x[~jittered])
    assert not torch.allclose(out[jittered], x[jittered])
    channels_last = op(x.contiguous(memory_format=torch.channels_last), params=op._params)
    torch.testing.assert_close(channels_last, out)


def test_box_erasing_fills_one_box_per_chosen_sample():
    x = images(SMALL, n=200) + 0.01  # no zero pixels before erasing
    op = RandomBoxErasing(p=0.5, scale=(0.05, 0.2), value=0.0)
    out = op(x)
    erased = (out == 0).all(1)  # (N, H, W)
    counts = erased.flatten(1).sum(1)
    _, _, height, width = op._params["box"].unbind(1)
    assert torch.equal(counts, height * width)
    share = counts.float() / (SMALL * SMALL)
    chosen = counts > 0
    assert 70 < chosen.sum() < 130
    assert share[chosen].min() > 0.03 and share[chosen].max() < 0.23
    assert torch.equal(out[~chosen], x[~chosen])
    assert torch.equal(RandomBoxErasing(p=1.0, value=0.5)(x).eq(0.5).any(), torch.tensor(True))


def test_gradients_reach_the_input_through_every_module():
    for op, size in [
        (RandomCropFlip(SMALL, padding=4), SMALL),
        (RandomCropFlip(LARGE, padding=4), LARGE),
        (RandomResizedCropFlip(SMALL, scale=(0.3, 1.0)), SMALL),
        (RandomResizedCropFlip(LARGE, scale=(0.3, 1.0)), LARGE),
        (ColorJitterAffine(0.4, 0.4, 0.4, 0.05), SMALL),
        (RandomBoxErasing(p=1.0), SMALL),
    ]:
        x = images(size, n=2).requires_grad_()
        op(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, type(op).__name__


def test_same_seed_same_draws_and_params_replay():
    x = images(SMALL)
    op = RandomResizedCropFlip(SMALL, scale=(0.3, 1.0))
    torch.manual_seed(5)
    first = op(x)
    replay = op(x, params=op._params)
    torch.manual_seed(5)
    again = op(x)
    assert torch.equal(first, replay) and torch.equal(first, again)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RandomCropFlip(32, padding=-1), "padding=-1"),
        (lambda: RandomCropFlip(32, padding_mode="wrap"), "padding_mode='wrap'"),
        (lambda: RandomCropFlip(32, flip_p=2), "flip_p=2"),
        (lambda: RandomResizedCropFlip(32, scale=(0.9, 0.1)), "scale="),
        (lambda: ColorJitterAffine(hue=0.7), "hue=0.7"),
        (lambda: ColorJitterAffine(brightness=-1), "brightness=-1"),
        (lambda: RandomBoxErasing(p=1.5), "p=1.5"),
        # Cut to 4 pixels, and True taken as 1, without a word.
        (lambda: RandomCropFlip(32, padding=4.5), "padding=4.5"),
        (lambda: RandomCropFlip((24.5, 24)), "size=.24.5, 24.: expected"),
        (lambda: RandomCropFlip(32, flip_p=True), "flip_p=True"),
    ],
)
def test_bad_arguments_name_the_argument_and_value(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build()


def test_a_crop_larger_than_the_padded_image_says_so():
    with pytest.raises(ConfigError, match="does not fit"):
        RandomCropFlip(48, padding=4)(images(SMALL))


def test_reflect_padding_as_wide_as_the_image_names_the_padding():
    """torch's pad refused it with a traceback that named neither key nor fix."""
    side = images(SMALL).shape[-1]
    with pytest.raises(ConfigError, match=f"padding={side} with padding_mode='reflect'"):
        RandomCropFlip(side, padding=side)(images(SMALL))
    out = RandomCropFlip(side, padding=side, padding_mode="constant")(images(SMALL))
    assert out.shape[-1] == side


def test_jitter_factors_never_go_negative_and_an_empty_batch_passes():
    op = ColorJitterAffine(brightness=1.5, contrast=1.5, saturation=1.5)
    params = op.forward_parameters((500, 3, 8, 8))
    for name in ("brightness", "contrast", "saturation"):
        assert params[name].min() >= 0, name
    empty = torch.rand(0, 3, 8, 8)
    assert op(empty).shape == empty.shape


def test_same_on_batch_is_refused_rather_than_ignored():

    pipeline = K.AugmentationSequential(RandomResizedCropFlip(SMALL), same_on_batch=True)
    with pytest.raises(ValueError, match="same_on_batch"):
        pipeline(images(SMALL))


def test_batched_resized_crop_keeps_the_input_dtype():
    x = images(SMALL).double()
    assert RandomResizedCropFlip(SMALL, scale=(0.3, 1.0))(x).dtype == torch.float64
