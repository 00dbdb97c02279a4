"""Augmentation on the device: presets, MixUp/CutMix, gradients, eval path, preview, seeds."""

from __future__ import annotations

import math
from pathlib import Path

import kornia.augmentation as K
import matplotlib.image
import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from kornia.augmentation.base import _BasicAugmentationBase
from kornia.augmentation.container.params import ParamItem
from torch import nn

from runner.augment.device import DeviceAugment, resize_center_crop
from runner.augment.mixing import MixUpCutMix
from runner.cli import run
from runner.config.validation import ConfigError, validate
from runner.data.sets.synthetic import make_synthetic
from runner.reports.aug_preview import augment_preview, save_preview_grid
from runner.training import engine
from runner.training.parts import build_normalize
from tests.conftest import group_options, run_cli, runs_in

PRESETS = group_options("aug")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
MIX = ["aug.mixup_alpha=0.8", "aug.cutmix_alpha=1.0"]


def build(make_cfg, preset: str, *overrides: str, num_classes: int = 10) -> DeviceAugment:
    cfg = make_cfg(f"aug={preset}", *overrides)
    validate(cfg)
    return instantiate(cfg.aug, num_classes=num_classes)


def uint8_batch(n: int = 16, size: int = 32, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return images.to(device)


def param_tensors(params) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in kornia's recorded parameters (nested ParamItem lists and dicts)."""
    found = []

    def walk(node, path: str) -> None:
        if isinstance(node, ParamItem):
            walk(node.data, f"{path}/{node.name}")
        elif isinstance(node, list | tuple):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, torch.Tensor):
            found.append((path, node))

    walk(params, "")
    return found


# --- presets on the device --------------------------------------------------------------

# The policies' brightness, contrast and colour ops: Kornia returns their factor on the
# device their range was built on, the host, whichever device drew it (README: the policy
# presets' host syncs on CUDA). Seen on an H200; the runner does not patch Kornia for it.
HOST_FACTORS = (".brightness_factor", ".contrast_factor", ".saturation_factor")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_with_its_random_parameters_on_the_batch_device(make_cfg, preset, device):
    """Each preset augments a uint8 batch on `device` and samples its parameters there.

    Built on the CPU and not moved: DeviceAugment moves kornia's generators to the
    batch's device itself. On the CPU the device checks cannot tell devices apart (there
    is only one, and kornia cannot sample on `meta`: it reads values while building its
    samplers), so the `gpu`-marked CUDA case is the one that exercises the move.
    """
    # logger=none: nothing is tracked, and the device machine has no MLflow.
    augment = build(make_cfg, preset, "data.image_size=32", "logger=none").train()
    batch = uint8_batch(device=device)
    out = augment(batch)
    assert out.dtype == torch.float32 and out.shape == batch.shape
    assert out.device == batch.device and torch.isfinite(out).all()
    if augment.pipeline is None:
        return
    modules = augment.pipeline.modules()
    kornia_modules = [m for m in modules if isinstance(m, _BasicAugmentationBase)]
    assert kornia_modules, preset
    for module in kornia_modules:
        assert module.device == batch.device, type(module).__name__
        generator = module._param_generator
        if generator is not None:
            assert generator.device == batch.device, type(module).__name__
    tensors = param_tensors(augment.pipeline._params)
    assert tensors, preset
    off_device = [
        path for path, t in tensors if t.device != batch.device and not path.endswith(HOST_FACTORS)
    ]
    assert not off_device, f"parameters not on {batch.device}: {off_device}"


POLICY_RUNS = [
    ("randaugment", ("aug.transforms.1.n=15",)),  # every op of the policy in every batch
    ("randaugment", ()),
    ("trivialaugment", ()),
    ("autoaugment", ()),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("preset", "overrides"), POLICY_RUNS)
def test_a_policy_preset_runs_every_op_on_the_batch_device(make_cfg, preset, overrides, device):
    """Many batches, so every op of the policy is drawn: on CUDA, RandAugment's brightness,
    contrast and color ops failed at the first batch that drew one (their factor on the
    host, Kornia's magnitude on the GPU), which one batch of the test above can miss."""
    augment = build(make_cfg, preset, "data.image_size=32", "logger=none", *overrides).train()
    torch.manual_seed(0)
    for step in range(40):
        batch = uint8_batch(device=device)
        out = augment(batch)
        assert out.device == batch.device and out.shape == batch.shape, step
        assert torch.isfinite(out).all(), step


@pytest.mark.parametrize("preset", ["randaugment", "autoaugment", "trivialaugment"])
def test_a_policy_preset_augments_one_channel_images(make_cfg, preset):
    """Kornia's saturation op takes RGB only: on gray images the run died at whichever
    step drew it (about one batch in five for randaugment)."""
    augment = build(make_cfg, preset, "data.image_size=32").train()
    gray = uint8_batch(n=8)[:, :1]
    torch.manual_seed(0)
    for _ in range(40):
        out = augment(gray)
        assert out.shape == (8, 1, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("preset", ["randaugment", "autoaugment"])
def test_a_policy_preset_refuses_two_channel_images_at_the_first_batch(make_cfg, preset):
    """Two- and four-channel images died at whichever training step first drew a colour
    op (epoch 3 of a seed-1 run); now the first batch (the start-up preview) says so."""
    augment = build(make_cfg, preset, "data.image_size=32").train()
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"data\.channels=2: choose an aug preset without"):
        augment(uint8_batch(n=4)[:, :2])


def test_an_rgb_only_kornia_module_on_one_channel_images_names_the_key_and_the_fix(make_cfg):
    """A Kornia colour module in aug.transforms on one-channel data (data=synthetic
    data.channels=1) failed the start-up preview with Kornia's bare shape error."""
    transforms = "aug.transforms=[{_target_: kornia.augmentation.RandomHue, hue: [-0.1, 0.1]}]"
    augment = build(make_cfg, "basic", "data.image_size=32", transforms).train()
    with pytest.raises(ConfigError, match=r"aug\.transforms \(RandomHue\).*data\.channels=1"):
        augment(uint8_batch(n=4)[:, :1])
    assert augment(uint8_batch(n=4)).shape == (4, 3, 32, 32)  # RGB images it takes


def test_mix_prob_without_mixup_or_cutmix_is_reported_as_ignored(make_cfg, caplog):
    build(make_cfg, "basic", "aug.mix_prob=0.5")
    assert "aug.mix_prob=0.5 is ignored: MixUp and CutMix are off" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["aug.mixup_alpha=0.4"], "aug.mixup_alpha=0.4 has no effect"),
        (
            ["aug.mixup_alpha=0.4", "aug.cutmix_alpha=1.0"],
            "aug.mixup_alpha=0.4 and aug.cutmix_alpha=1.0 have no effect",
        ),
    ],
)
def test_mixup_or_cutmix_with_mix_prob_zero_is_reported_as_having_no_effect(
    make_cfg, caplog, overrides, expected
):
    """It trained without mixing and said nothing (the converse warns, above)."""
    build(make_cfg, "basic", "aug.mix_prob=0", *overrides)
    assert f"{expected} with aug.mix_prob=0: no sample is mixed" in caplog.text


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_sizes_follow_the_data_image_size(make_cfg, preset):
    augment = build(make_cfg, preset, "data.image_size=24").train()
    assert augment.image_size == 24
    assert augment(uint8_batch(n=4, size=24)).shape == (4, 3, 24, 24)


@pytest.mark.parametrize("device", DEVICES)
def test_mixing_runs_on_the_batch_device(make_cfg, device):
    augment = build(make_cfg, "flip_crop", *MIX, "logger=none", num_classes=4).train()
    batch = uint8_batch(device=device)
    labels = torch.arange(16, device=device) % 4
    images, targets = augment.mix(augment(batch), labels)
    assert images.device == targets.device == batch.device
    assert targets.shape == (16, 4)


# --- MixUp and CutMix -------------------------------------------------------------------


def constant_images(n: int, size: int = 16) -> torch.Tensor:
    """Image i is filled with the value i, so a mixed image's mean tells its mixture."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()


@pytest.mark.parametrize(
    ("mixup_alpha", "cutmix_alpha"),
    [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)],
    ids=["mixup", "cutmix", "both"],
)
def test_mixing_targets_match_the_mixed_images_exactly(mixup_alpha, cutmix_alpha):
    n = 64
    mixer = MixUpCutMix(n, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    torch.manual_seed(0)
    images, targets = mixer(constant_images(n), torch.arange(n))
    assert targets.shape == (n, n) and torch.allclose(targets.sum(1), torch.ones(n))
    assert ((targets > 0).sum(1) <= 2).all(), "each target mixes at most two classes"
    # Label i means value i, so each image's mean is its target's expected class id.
    expected = targets @ torch.arange(n, dtype=torch.float32)
    assert torch.allclose(images.mean(dim=(1, 2, 3)), expected, atol=1e-4)
    if mixup_alpha == 0:
        # CutMix pastes pixels: every pixel is one of the two source values.
        assert torch.equal(images, images.round())
    assert (targets.max(1).values < 1).float().mean() > 0.5, "most samples must be mixed"


def test_mix_prob_leaves_that_share_of_samples_alone():
    n = 2000
    mixer = MixUpCutMix(10, mixup_alpha=1.0, prob=0.3)
    torch.manual_seed(0)
    images = torch.rand(n, 3, 4, 4)
    labels = torch.arange(n) % 10
    mixed, targets = mixer(images, labels)
    unchanged = (mixed == images).flatten(1).all(1)
    assert abs(unchanged.float().mean().item() - 0.7) < 0.05
    one_hot = torch.nn.functional.one_hot(labels, 10).float()
    assert torch.equal(targets[unchanged], one_hot[unchanged])
    off = MixUpCutMix(10, mixup_alpha=1.0, prob=0.0)
    mixed, targets = off(images, labels)
    assert torch.equal(mixed, images) and torch.equal(targets, one_hot)


def test_mixing_is_off_by_default_and_in_eval_mode(make_cfg):
    augment = build(make_cfg, "strong")
    assert augment.mixer is None
    images, labels = torch.rand(4, 3, 32, 32), torch.arange(4)
    assert augment.train().mix(images, labels)[1] is labels
    mixing = build(make_cfg, "strong", *MIX)
    assert mixing.eval().mix(images, labels)[1] is labels


def test_mixing_without_num_classes_says_how_to_build_it(make_cfg):
    with pytest.raises(InstantiationException, match=r"instantiate\(cfg.aug, num_classes="):
        instantiate(make_cfg("aug=basic", "aug.mixup_alpha=0.2").aug)


def test_training_with_mixing_feeds_soft_targets_to_the_loss(make_cfg):
    """The loss gets (N, C) soft targets; train accuracy counts the dominant class."""
    from tests.training.test_engine import setup_loop

    kwargs = setup_loop(make_cfg, aug="flip_crop", batches=4, aug_overrides=MIX)
    seen = []
    loss_fn = kwargs["parts"].loss_fn

    def spy(logits, target):
        seen.append(target)
        return loss_fn(logits, target)

    kwargs["parts"].loss_fn = spy
    stats = engine.train_one_epoch(**kwargs)
    assert all(t.shape == (8, 4) and t.dtype == torch.float32 for t in seen)
    assert math.isfinite(stats.loss) and 0 <= stats.acc <= 1


def test_dominant_class_of_hard_and_soft_targets():
    labels = torch.tensor([2, 0])
    assert torch.equal(engine.dominant_class(labels), labels)
    soft = torch.tensor([[0.3, 0.0, 0.7], [0.6, 0.4, 0.0]])
    assert engine.dominant_class(soft).tolist() == [2, 0]


# --- differentiable ---------------------------------------------------------------------


def test_differentiable_augmentation_passes_gradients_to_input_and_learnable_range():
    brightness = nn.Parameter(torch.tensor([0.7, 1.3]))
    augment = DeviceAugment(
        transforms=[K.ColorJiggle(brightness=brightness, p=1.0), K.RandomAffine(degrees=15, p=1.0)],
        differentiable=True,
        mixup_alpha=0.5,
        num_classes=3,
    ).train()
    assert any(p is brightness for p in augment.parameters()), "the range is a module parameter"
    images = torch.rand(6, 3, 16, 16, requires_grad=True)
    out, _ = augment.mix(augment(images), torch.arange(6) % 3)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert brightness.grad is not None and brightness.grad.abs().sum() > 0
    assert torch.isfinite(images.grad).all() and torch.isfinite(brightness.grad).all()


@pytest.mark.parametrize("preset", ["strong", "randaugment"])
def test_differentiable_flag_from_the_config_keeps_or_drops_the_graph(make_cfg, preset):
    images = torch.rand(4, 3, 32, 32, requires_grad=True)
    default = build(make_cfg, preset).train()
    assert not default.differentiable
    assert not default(images).requires_grad, "the default runs under no_grad"
    graph = build(make_cfg, preset, "aug.differentiable=true").train()
    out = graph(images)
    assert out.requires_grad
    out.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()


# --- eval path --------------------------------------------------------------------------


def test_eval_path_resizes_and_center_crops_only():
    augment = DeviceAugment(
        transforms=[K.RandomHorizontalFlip(p=1.0)], image_size=4, eval_crop_pct=0.5
    )
    images = torch.rand(2, 3, 8, 8)
    out = augment.eval()(images)
    # floor(4 / 0.5) = 8 = the short side already: no resize, the central 4x4 only.
    assert torch.equal(out, images[..., 2:6, 2:6])
    assert torch.equal(augment(images), out), "no randomness in eval mode"
    wide = augment(torch.rand(2, 3, 16, 24))
    assert wide.shape == (2, 3, 4, 4)
    same = DeviceAugment(image_size=8).eval()
    assert torch.equal(same(images), images)
    uint8 = uint8_batch(n=2, size=8)
    assert torch.equal(same(uint8), uint8.float() / 255)


def test_resize_center_crop_keeps_the_center_of_an_image():
    images = torch.zeros(1, 1, 40, 60)
    images[..., 15:25, 25:35] = 1.0  # a bright square in the middle
    out = resize_center_crop(images, size=20, crop_pct=0.8)
    assert out.shape == (1, 1, 20, 20)
    assert out[..., 8:12, 8:12].min() > 0.9 and out[..., :3, :3].max() < 0.1


def test_evaluate_uses_the_eval_path(make_cfg):
    data = make_synthetic(num_samples=40, num_classes=4, image_size=20, val_fraction=0.5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))  # only takes 16x16
    augment = DeviceAugment(image_size=16, eval_crop_pct=1.0)
    from runner.augment.normalize import Normalize
    from runner.data.loaders import ResidentLoader
    from runner.training.metrics import build_metrics

    results = engine.evaluate(
        model=model,
        loader=ResidentLoader(data.val, 8),
        augment=augment,
        normalize=Normalize(data.mean, data.std),
        metrics=build_metrics(4),
        autocast=engine.make_autocast(torch.device("cpu"), "32"),
        device=torch.device("cpu"),
    )
    assert math.isfinite(results["loss"]) and not augment.training


def test_normalisation_uses_pretrained_stats_when_the_model_has_them():
    data = make_synthetic(num_samples=40, num_classes=4, image_size=8)
    plain = nn.Linear(2, 2)
    normalize = build_normalize(plain, data, torch.device("cpu"), channels_last=False)
    assert torch.allclose(normalize.mean.flatten(), torch.tensor(data.mean))
    pretrained = nn.Linear(2, 2)
    pretrained.runner_normalization = ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    normalize = build_normalize(pretrained, data, torch.device("cpu"), channels_last=False)
    assert torch.allclose(normalize.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))


def test_a_data_mean_set_beside_pretrained_weights_is_said_not_to_be_used(caplog):
    """data.mean/data.std given with a pretrained model were replaced without a word."""
    from omegaconf import OmegaConf

    data = make_synthetic(num_samples=40, num_classes=4, image_size=8)
    pretrained = nn.Linear(2, 2)
    pretrained.runner_normalization = ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    given = OmegaConf.create({"mean": [0.3, 0.3, 0.3], "std": None})
    build_normalize(pretrained, data, torch.device("cpu"), False, given)
    assert "data.mean not used: the pretrained weights expect their own" in caplog.text
    # One-channel data for a three-channel model: the gray channel is repeated, said so.
    gray = make_synthetic(num_samples=40, num_classes=4, image_size=8, channels=1)
    with caplog.at_level("INFO"):
        build_normalize(pretrained, gray, torch.device("cpu"), False)
    assert "one-channel images go to the pretrained model as 3 equal channels" in caplog.text


# --- reproducibility --------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_same_seed_augments_identically(make_cfg, preset):
    augment = build(make_cfg, preset, *MIX).train()
    batch, labels = uint8_batch(), torch.arange(16) % 10
    outputs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outputs.append(augment.mix(augment(batch), labels))
    (first, first_t), (again, again_t), (other, _) = outputs
    assert torch.equal(first, again) and torch.equal(first_t, again_t)
    assert not torch.equal(first, other), "another seed must augment differently"


# --- preview ----------------------------------------------------------------------------


def read_png(path: Path) -> np.ndarray:
    return matplotlib.image.imread(str(path))


def test_preview_grid_is_seeded_and_leaves_the_rng_alone(make_cfg, tmp_path):
    data = make_synthetic(num_samples=200, num_classes=5, image_size=32)
    augment = build(make_cfg, "strong", *MIX, num_classes=5).eval()
    state = torch.get_rng_state()
    paths = [
        save_preview_grid(augment, data.train, data.class_names, tmp_path / f"{i}.png", seed=seed)
        for i, seed in enumerate((0, 0, 1))
    ]
    assert torch.equal(torch.get_rng_state(), state), "a preview must not shift training's RNG"
    first, again, other = (read_png(p) for p in paths)
    assert first.ndim == 3 and first.shape[0] > 100 and first.shape[1] > 100
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not augment.training, "the module's mode is restored"


def test_a_rare_class_leaves_blank_cells_and_the_other_rows_full(make_cfg):
    """One class with a single image cut every row to one image."""
    data = make_synthetic(num_samples=200, num_classes=5, image_size=32)
    rare = (data.train.labels == 1).nonzero().flatten()[1:]
    keep = torch.ones(len(data.train), dtype=torch.bool)
    keep[rare] = False
    split = data.train.subset(keep.nonzero().flatten())
    augment = build(make_cfg, "basic", num_classes=5).eval()
    preview = augment_preview(augment, split, data.class_names, seed=0, per_class=8)
    assert preview.columns == 8 and preview.images.shape[0] == 5 * 8
    rows = preview.images.view(5, 8, *preview.images.shape[1:])
    assert (rows[1, 1:] == 1).all() and not (rows[1, 0] == 1).all()
    assert not any((rows[0, i] == 1).all() for i in range(8))


def test_a_streamed_file_that_does_not_decode_leaves_a_blank_in_its_own_row(make_cfg, tmp_path):
    """Every row after it shifted: the next class's images were drawn in its row."""
    from runner.data.sets.imagefolder import load_imagefolder
    from tests.datagen import make_imagefolder

    root = make_imagefolder(tmp_path / "pics", classes=("cat", "dog"), per_class=6, size=16)
    bad = sorted((root / "train" / "cat").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:200])  # a valid header: found only when decoded
    data = load_imagefolder(
        str(root),
        image_size=16,
        val_fraction=0.0,
        test_fraction=0.0,
        resident=False,
        num_workers=0,
        cache_dir=None,
    )
    augment = build(make_cfg, "none", num_classes=2).eval()
    preview = augment_preview(augment, data.train, data.class_names, seed=0, per_class=8)
    rows = preview.images.view(2, 6, *preview.images.shape[1:])  # 6 images of each class
    blank = [[bool((cell == 1).all()) for cell in row] for row in rows]
    assert blank == [[False] * 5 + [True], [False] * 6]


def test_preview_only_run_writes_the_grid_and_trains_nothing(make_cfg, tmp_path):
    grids = []
    for name in ("a", "b"):
        cfg = make_cfg(
            "+preview_only=true", "aug=randaugment", *MIX, f"paths.run_dir={tmp_path}/{name}"
        )
        assert math.isnan(run(cfg))
        run_dir = tmp_path / name
        assert not (run_dir / "checkpoints").exists()
        grids.append(read_png(run_dir / "aug_preview.png"))
    assert np.array_equal(*grids), "two runs with the same seed augment identically"
    assert runs_in(tmp_path / "outputs" / "mlflow.db") == 0, "no MLflow run for a preview"


def test_validation_names_bad_augmentation_values(make_cfg):
    cfg = make_cfg(
        "aug.mix_prob=1.5", "aug.mixup_alpha=-1", "aug.eval_crop_pct=0", "+preview_only=yes"
    )
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    for text in ("aug.mix_prob=1.5", "aug.mixup_alpha=-1", "aug.eval_crop_pct=0", "preview_only"):
        assert text in message


@pytest.mark.slow
def test_cli_preview_mode_writes_a_png_and_exits(tmp_path):
    """A sweep of previews too: a PNG per job, and no MLflow run (it made a parent run)."""
    result = run_cli(
        "-m",
        f"paths.output_dir={tmp_path}",
        "mode=preview",
        "trainer.device=cpu",  # of the trainer's keys, the one that preview reads
        "aug=strong,flip_crop",
        "data=synthetic",
        "data.num_samples=100",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    pngs = list(tmp_path.glob("**/aug_preview.png"))
    assert len(pngs) == 2 and all(read_png(png).shape[0] > 50 for png in pngs)
    assert not list(tmp_path.glob("**/checkpoints"))
    assert runs_in(tmp_path / "mlflow.db") == 0 and not list(tmp_path.glob("**/sweep.json"))


@pytest.mark.slow
def test_two_training_runs_with_mixing_are_identical(make_cfg, tmp_path):
    histories = []
    for name in ("a", "b"):
        cfg = make_cfg(
            "aug=strong",
            *MIX,
            "logger=none",
            "trainer.max_epochs=2",
            f"paths.run_dir={tmp_path}/{name}",
        )
        run(cfg)
        last = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)
        histories.append(
            [(h["train/loss"], h["train/acc"], h["val/loss"]) for h in last["state"]["history"]]
        )
    assert histories[0] == histories[1]
    assert all(math.isfinite(loss) for loss, _, _ in histories[0])


def test_which_presets_train_on_mirror_images(make_cfg):
    """Flip TTA is warned against for a model trained without them (runner/from_checkpoint)."""
    # The shipped presets by name: a preset of your own needs no entry here.
    flipping = {"autoaugment", "flip_crop", "randaugment", "strong", "trivialaugment"}
    for preset in [*flipping, "basic", "none"]:
        assert build(make_cfg, preset).flips_horizontally() == (preset in flipping), preset
    assert not build(make_cfg, "strong", "aug.transforms.0.flip_p=0").flips_horizontally()
    assert DeviceAugment([K.RandomHorizontalFlip(p=0.5)]).flips_horizontally()
    assert not DeviceAugment([K.RandomHorizontalFlip(p=0.0)]).flips_horizontally()
