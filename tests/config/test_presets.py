"""experiment= and debug= presets, the mode keys, and `python run.py --help`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from runner.cli import run
from runner.config.validation import ConfigError, validate
from runner.data.build import build_data
from runner.data.decoding import DataError
from tests.conftest import group_options, query, run_cli
from tests.datagen import make_imagefolder


def preset_inputs(option: str, tmp_path: Path) -> list[str]:
    """What a preset needs besides its own settings, to compose and validate here: the
    image folder a train run's config is checked to have."""
    if option != "imagefolder_finetune":
        return []
    return [f"data.root={make_imagefolder(tmp_path / 'flowers', per_class=1)}"]


@pytest.mark.parametrize("option", group_options("experiment"))
def test_every_experiment_composes_and_validates(make_cfg, tmp_path, option):
    cfg = make_cfg(f"experiment={option}", *preset_inputs(option, tmp_path), tiny=False)
    validate(cfg)
    assert cfg.trainer.max_epochs >= 5


@pytest.mark.parametrize("option", ["digits_quick", "audit", "imagefolder_finetune"])
def test_a_model_option_on_the_command_line_replaces_the_presets_model(make_cfg, tmp_path, option):
    """The preset set model.name on top of model=timm: `model=convnext_tiny` still trained
    its resnet, while the run's choices said convnext_tiny."""
    overrides = [f"experiment={option}", "model=convnext_tiny", *preset_inputs(option, tmp_path)]
    cfg = make_cfg(*overrides, tiny=False)
    assert cfg.model.name == "convnext_tiny"
    validate(cfg)


def test_finetune_preset_asks_for_its_data(make_cfg):
    cfg = make_cfg("experiment=imagefolder_finetune", tiny=False)
    with pytest.raises(ConfigError, match=r"data\.root is required"):
        validate(cfg)
    assert cfg.optim.backbone_lr_mult == 0.1 and cfg.model.pretrained


@pytest.mark.parametrize("option", ["cifar10_resnet18", "cifar10_lt", "airbench94"])
def test_cifar_presets_fail_offline_naming_data_root(make_cfg, tmp_path, option):
    cfg = make_cfg(f"experiment={option}", f"data.root={tmp_path}", tiny=False)
    validate(cfg)
    with pytest.raises(Exception, match=r"missing data_batch_1.*data\.root=") as err:
        build_data(cfg.data)
    assert isinstance(err.value.__cause__ or err.value, DataError)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["mode=eval"], "mode=eval needs a checkpoint: set ckpt="),
        (["mode=predict", "ckpt=x.pt"], "mode=predict needs images: set predict.input="),
        # A train run ignored them: `ckpt=best.pt` meant as a fine-tune trained from scratch.
        (["ckpt=x.pt"], "ckpt is read by mode=eval and mode=predict only, and mode=train"),
        (["predict.input=pics"], "add mode=predict to use it"),
        (["mode=serve"], "mode='serve' is invalid: expected one of train, eval, predict"),
        (["eval.tta=rotate"], "eval.tta='rotate' is invalid: expected one of none, flip"),
        (["predict.topk=0"], "predict.topk=0 is invalid: expected an integer >= 1"),
        (["+analysis.gradcam=1"], "analysis.gradcam is not a known key of analysis"),
        (["trainer.limit_batches=0"], "trainer.limit_batches=0 is invalid"),
        (["optim.backbone_lr_mult=0"], "optim.backbone_lr_mult=0 is invalid"),
        # Epochs, as torch's MultiStepLR takes them, lay past the end: the lr never decayed.
        (["sched=step", "sched.milestones=[30,60]"], "sched.milestones=[30, 60] is invalid"),
        (["sampler=sqrt", "sampler.power=-0.5"], "sampler.power=-0.5 is invalid"),
    ],
)
def test_mode_and_analysis_keys_are_validated(make_cfg, overrides, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate(make_cfg(*overrides))


@pytest.mark.slow
def test_digits_quick_with_debug_fast_runs_one_batch_per_split(make_cfg, tmp_path):
    run(
        make_cfg(
            "experiment=digits_quick",
            "debug=fast",
            "logger=none",
            "trainer.eval_batch_size=100",
            tiny=False,
        )
    )
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["state"]["global_step"] == 1 and last["state"]["epoch"] == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    support = sum(
        int(line.split(",")[-1])
        for line in (tmp_path / "run" / "per_class.csv").read_text().splitlines()[1:]
    )
    assert support == 100, "debug=fast tests one batch (of 100; the test split has 359)"
    assert 0 <= metrics["test/acc"] <= 1


@pytest.mark.slow
def test_imagefolder_finetune_loads_local_weights_and_slows_the_backbone(make_cfg, tmp_path):
    import timm
    from safetensors.torch import save_file

    root = make_imagefolder(tmp_path / "flowers", per_class=10)
    pretrained = timm.create_model("resnet10t", num_classes=1000)
    weights = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, str(weights))
    run(
        make_cfg(
            "experiment=imagefolder_finetune",
            f"data.root={root}",
            "data.image_size=32",
            "data.num_workers=0",
            "data.cache_dir=null",
            "model=resnet10t",
            f"model.pretrained_file={weights}",
            "debug=fast",
            "logger=none",
            tiny=False,
        )
    )
    ckpt = tmp_path / "run" / "checkpoints"
    best = torch.load(ckpt / "best.pt", weights_only=True)
    # The pretrained stem, after one small step, is still the file's (random init is not).
    stem = "conv1.0.weight"
    assert (best["model"][stem] - pretrained.state_dict()[stem]).abs().max() < 0.01
    assert best["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406], abs=1e-3)
    groups = torch.load(ckpt / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    head_lr = groups[0]["lr"]
    assert not groups[0]["backbone"] and head_lr > 0
    for group in groups:
        expected = head_lr * (0.1 if group["backbone"] else 1.0)
        assert group["lr"] == pytest.approx(expected)


@pytest.mark.slow
def test_debug_overfit_fits_a_few_batches(make_cfg, tmp_path):
    # A few epochs suffice here (it fits them by epoch 3); the preset runs 40.
    run(
        make_cfg(
            "debug=overfit",
            "trainer.batch_size=16",
            "trainer.max_epochs=6",
            "logger=none",
            "analysis.enabled=false",
        )
    )
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    history = last["state"]["history"]
    assert last["state"]["global_step"] == 2 * 6, "two batches per epoch"
    assert history[-1]["train/acc"] >= 0.97, [round(h["train/acc"], 3) for h in history]
    # debug= goes on top of any schedule: the preset set sched.warmup_epochs, which the
    # one-cycle schedule has not (a TypeError at the start of training).
    from hydra.utils import instantiate

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    for sched in group_options("sched"):
        instantiate(make_cfg("debug=overfit", f"sched={sched}").sched)(optimizer, 12, 2)


@pytest.mark.slow
def test_debug_profile_logs_a_trace_to_mlflow(make_cfg, tmp_path):
    run(make_cfg("debug=profile", "trainer.limit_batches=1", "analysis.enabled=false"))
    trace = json.loads((tmp_path / "run" / "profile" / "trace.json").read_text())
    assert any("conv" in str(event.get("name", "")) for event in trace["traceEvents"])
    ((uri,),) = query(tmp_path / "outputs" / "mlflow.db", "SELECT artifact_uri FROM runs")
    for name in ("trace.json", "ops.txt"):
        assert (Path(uri.removeprefix("file://")) / "profile" / name).is_file(), name


@pytest.mark.slow
def test_sweep_resume_without_multirun_is_refused_before_anything_is_written(tmp_path):
    """It was ignored: the command trained one run from scratch."""
    done = run_cli(f"paths.output_dir={tmp_path}/out", f"sweep.resume={tmp_path}/sweep")
    assert done.returncode == 1
    assert "sweep.resume=" in done.stderr and "needs -m" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_help_shows_the_header_groups_and_completion(tmp_path):
    done = run_cli("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hydra-image-runner: compose an image-classification run" in done.stdout
    for line in (
        "debug (default: none)",
        "  fast             One batch of train, val and test in one epoch",
        "aug (default: basic)",
        "  basic            Small random affine",
        "experiment (default: none)",
        "hydra/sweeper/sampler (default: none, with hparams_search=optuna)",
        "  cmaes            ",
        "mode: train",
        "-sc install=bash",
        # One sentence: the file's next comment lines stay out of the description.
        "Bayesian search with pruning (python run.py -m hparams_search=optuna)\n",
    ):
        assert line in done.stdout, line
    assert "_shared" not in done.stdout and "_switches" not in done.stdout, "not options"
