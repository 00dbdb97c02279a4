"""experiment=airbench94: the network's whitening, its optimizer groups and schedule, a run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from runner.config.validation import ConfigError, validate
from runner.data.build import build_data
from runner.models.airbench import airbench94
from runner.training.optim import optimizer_from_config, triangle_schedule
from runner.training.parts import build_parts, init_from_data

# The experiment on a small synthetic set that a CPU trains in seconds.
SMALL = [
    "experiment=airbench94",
    "data=synthetic",
    "data.num_samples=600",
    "trainer.batch_size=64",
    "logger=none",
]


def correlated_images(count: int) -> torch.Tensor:
    """Normalised-looking images whose neighbouring pixels and channels are correlated."""
    images = torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images = images + 0.8 * images.roll(1, dims=3) + 0.5 * images.roll(1, dims=1)
    return images


def test_whitening_filters_decorrelate_the_patches_they_were_set_from():
    model = airbench94(num_classes=10)
    images = correlated_images(200)

    def patch_covariance() -> torch.Tensor:
        out = F.conv2d(images, model.whiten.weight).transpose(0, 1).flatten(1)
        return out @ out.T / out.shape[1]

    assert not torch.allclose(patch_covariance(), torch.eye(24), atol=0.1)  # PyTorch's init
    model.init_from_images(images)
    half = patch_covariance()[:12, :12]
    # Unit variance per direction (a little under 1: eps is added to the eigenvalues).
    assert torch.allclose(half, torch.eye(12), atol=5e-3), half
    weight = model.whiten.weight
    assert torch.equal(weight[12:], -weight[:12]), "each direction with both signs"
    assert not weight.requires_grad
    assert not model.whiten.bias.any(), "a +/- pair starts symmetric, as in airbench"
    in_batches = airbench94(num_classes=10)
    in_batches.init_from_images(iter(images.split(64)))  # the same, batch by batch
    assert torch.allclose(in_batches.whiten.weight, weight, atol=1e-3)


def test_the_network_has_airbenchs_shape():
    model = airbench94(num_classes=7)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 1.9e6 < trainable < 2.0e6
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and not any(n.weight.requires_grad for n in norms)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    first = model.layers[0].conv1.weight  # 24 -> 64: the first 24 filters are the identity
    assert torch.equal(first[:24, :, 1, 1], torch.eye(24))


def test_a_run_sets_the_whitening_from_its_first_train_images(make_cfg, monkeypatch):
    from runner.training import parts as parts_module

    monkeypatch.setattr(parts_module, "INIT_IMAGES", 100)  # of the 480 train images
    cfg = make_cfg(*SMALL, tiny=False)
    data = build_data(cfg.data)
    parts = build_parts(cfg, data, torch.nn.Identity(), torch.device("cpu"), "32", 10)
    init_from_data(parts.model, data, parts.normalize, torch.device("cpu"))
    expected = airbench94(num_classes=10)
    expected.init_from_images(parts.normalize(data.train.images[:100]))
    assert torch.allclose(parts.model.whiten.weight, expected.whiten.weight, atol=1e-5)
    other = airbench94(num_classes=10)
    other.init_from_images(parts.normalize(data.train.images[100:200]))
    assert not torch.allclose(parts.model.whiten.weight, other.whiten.weight, atol=1e-3)


def test_the_optimizer_scales_norm_lr_and_decays_every_parameter(make_cfg):
    cfg = make_cfg(*SMALL, tiny=False)
    model = airbench94(num_classes=10)
    optimizer = optimizer_from_config(model, cfg.optim)
    by_kind = {group["norm"]: group for group in optimizer.param_groups}
    assert len(optimizer.param_groups) == 2
    assert by_kind[False]["lr"] == 1.5 and by_kind[False]["weight_decay"] == 1.3304e-3
    # 64x the lr on BatchNorm shifts, and a decay / 64: the same shrinkage per step.
    assert by_kind[True]["lr"] == 96.0
    assert by_kind[True]["weight_decay"] * 64 == pytest.approx(1.3304e-3)
    norm_shifts = {id(m.bias) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert {id(p) for p in by_kind[True]["params"]} == norm_shifts
    others = {id(p) for p in by_kind[False]["params"]}
    assert id(model.whiten.bias) in others and id(model.whiten.weight) not in others


def test_the_triangle_schedule_rises_and_falls_linearly():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    scheduler = triangle_schedule(optimizer, total_steps=100, steps_per_epoch=10)
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.4) and lrs[23] == pytest.approx(2.0)
    assert lrs[10] == pytest.approx(2.0 * (0.2 + 0.8 * 10 / 23))
    assert lrs[100] == pytest.approx(0.14) and max(lrs) == lrs[23]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.norm_lr_mult=0", "optim.norm_lr_mult=0 is invalid"),
        ("optim.filter_bias_and_bn=maybe", "optim.filter_bias_and_bn='maybe' is invalid"),
        ("sched.peak_pct=1.5", "sched.peak_pct=1.5 is invalid"),
    ],
)
def test_bad_settings_of_the_recipe_are_refused(make_cfg, override, expected):
    with pytest.raises(ConfigError, match=expected):
        validate(make_cfg(*SMALL, override, tiny=False))


def test_the_recipe_trains_and_resumes_on_the_cpu(make_cfg, tmp_path):
    from runner.cli import run
    from runner.training.checkpoint_io import load_checkpoint, save_checkpoint

    overrides = [*SMALL, "trainer.max_epochs=2", "analysis.enabled=false"]
    assert run(make_cfg(*overrides, tiny=False)) > 0.5  # val/acc of a learnable signal
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    last = load_checkpoint(path)
    # Filters the data would not give: the resumed run must take last.pt's, not its own.
    last["model"]["whiten.weight"] *= 2
    save_checkpoint(last, path)
    run(make_cfg(*overrides[:-2], "trainer.max_epochs=3", "analysis.enabled=false", tiny=False))
    resumed = load_checkpoint(path)
    assert resumed["state"]["epoch"] == 3
    assert torch.equal(resumed["model"]["whiten.weight"], last["model"]["whiten.weight"])
