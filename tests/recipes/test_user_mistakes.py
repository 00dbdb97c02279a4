"""Every mistake a user can make is caught at start, in one clear line (issue: nothing wrong
in silence). Each test feeds the bad input and checks the message, the exit status and that
nothing was spent or lost: no MLflow run, no checkpoint, earlier files as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from torchvision.io import write_png

from runner.cli import main
from runner.config.errors import ConfigError
from runner.config.validation import validate
from runner.data.loaders import ResidentLoader
from runner.data.samplers import RandomSampler
from runner.data.splits import Split
from runner.sweeps.job import SweepJob, own_run_dir
from runner.sweeps.manifest import update_manifest
from tests.conftest import REPO, TINY, query, run_cli, runs_in, seed_store
from tests.datagen import make_imagefolder
from tests.faults import FAULTY_LOSS


def refused(cfg, *expected: str) -> str:
    """Runs `cfg` as the command line does; returns the one-line error it ends with."""
    with pytest.raises(SystemExit) as info:
        main(cfg)
    message = str(info.value.code)
    assert message.startswith("Error: ") and "Traceback" not in message, message
    for text in expected:
        assert text in message, (text, message)
    return message


def nothing_spent(tmp_path: Path) -> None:
    """No tracked run and no checkpoint came of the command."""
    assert runs_in(tmp_path / "outputs" / "mlflow.db") == 0
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- silent wrong results ------------------------------------------------------------------


def test_monitor_mode_follows_the_metric_and_a_contradiction_is_refused(make_cfg):
    assert make_cfg("trainer.monitor=val/loss").trainer.monitor_mode == "min"
    assert make_cfg("trainer.monitor=train/loss").trainer.monitor_mode == "min"
    assert make_cfg().trainer.monitor_mode == "max"
    validate(make_cfg("trainer.monitor=val/loss", "trainer.monitor_mode=min"))
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("trainer.monitor=val/loss", "trainer.monitor_mode=max"))
    assert "trainer.monitor_mode=max contradicts trainer.monitor=val/loss" in str(info.value)
    assert "leave trainer.monitor_mode out" in str(info.value)


@pytest.mark.slow
def test_a_loss_is_monitored_as_the_lowest(make_cfg, tmp_path):
    from runner.cli import run

    best = run(make_cfg("trainer.monitor=val/loss", "trainer.max_epochs=3"))
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    val_losses = [
        row[0]
        for row in query(
            tmp_path / "outputs" / "mlflow.db", "SELECT value FROM metrics WHERE key = 'val/loss'"
        )
    ]
    assert best == pytest.approx(min(val_losses)) and history["best_value"] == best


@pytest.mark.slow
def test_a_run_dir_is_not_resumed_with_another_config(make_cfg, tmp_path):
    from runner.cli import run

    run(make_cfg())
    run_dir = tmp_path / "run"
    before = {p: p.read_bytes() for p in (run_dir / "checkpoints").glob("*.pt")}
    saved = (run_dir / "config_resolved.yaml").read_text()
    message = refused(make_cfg("optim.lr=0.01", "model.name=resnet14t"), "optim.lr", "model.name")
    assert "trainer.resume=never" in message and "another dir" in message
    assert {p: p.read_bytes() for p in (run_dir / "checkpoints").glob("*.pt")} == before
    assert (run_dir / "config_resolved.yaml").read_text() == saved
    db = tmp_path / "outputs" / "mlflow.db"
    assert [s for (s,) in query(db, "SELECT status FROM runs")] == ["FINISHED"]
    # SLURM's requeue of a job started with trainer.resume=never continues its own run (it
    # set the checkpoints aside at each requeue and started over). SLURM_RESTART_COUNT is
    # set here by hand, as SLURM sets it in a requeued job.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SLURM_RESTART_COUNT", "1")
        run(make_cfg("trainer.max_epochs=2", "trainer.resume=never"))
    assert not list(run_dir.glob("checkpoints.replaced-*"))
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2
    assert query(db, "SELECT COUNT(*) FROM metrics WHERE key='val/acc'") == [(2,)]
    # trainer.max_epochs may change on resume; trainer.resume=never starts over.
    run(make_cfg("trainer.max_epochs=2"))
    earlier = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").glob("*.pt")}
    # Starting over sets the earlier checkpoints aside first: a run that dies before it
    # writes one (here in its first step) leaves none that `auto` would take for its own.
    with pytest.raises(RuntimeError, match=r"loss\.fail=raise"):
        run(make_cfg("optim.lr=0.01", "trainer.resume=never", *FAULTY_LOSS, "+loss.fail=raise"))
    assert not list((run_dir / "checkpoints").glob("*.pt"))
    (aside,) = run_dir.glob("checkpoints.replaced-*")
    assert {p.name: p.read_bytes() for p in aside.glob("*.pt")} == earlier
    # Their record went with them (this run overwrote it in place).
    assert json.loads((aside / "metrics.json").read_text())["epochs"] == 2
    assert "lr: 0.003" in (aside / "config_resolved.yaml").read_text()
    run(make_cfg("optim.lr=0.01"))  # auto: a fresh start, not epoch 3 of the earlier run
    assert len(query(db, "SELECT status FROM runs")) == 3
    last = json.loads((run_dir / "metrics.json").read_text())
    assert last["best_epoch"] == 1 and len(list(run_dir.glob("checkpoints.replaced-*"))) == 1


def test_a_run_is_not_resumed_on_data_that_changed_since(make_cfg, tmp_path):
    """Images added to the folder reshuffled its carved splits under the same config, and
    trainer.resume=auto went on training, on some images the run had been tested on."""
    from runner.cli import run

    root = make_imagefolder(tmp_path / "pics", per_class=12)
    folder = (
        *("data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path}/cache"),
        *("model=timm", "model.name=test_resnet", "analysis.enabled=false", "logger=none"),
    )
    run(make_cfg(*folder, "trainer.max_epochs=1", tiny=False))
    run(make_cfg(*folder, "trainer.max_epochs=2", tiny=False))  # the same data resumes
    checkpoints = tmp_path / "run" / "checkpoints"
    before = {p.name: p.read_bytes() for p in checkpoints.glob("*.pt")}
    make_imagefolder(tmp_path / "more", per_class=3)
    for image in (tmp_path / "more" / "train").glob("*/*.jpg"):
        image.rename(root / "train" / image.parent.name / f"new_{image.name}")
    message = refused(
        make_cfg(*folder, "trainer.max_epochs=3", tiny=False), "was trained on other data"
    )
    assert "trainer.resume=never" in message and "model.pretrained_file" in message
    assert {p.name: p.read_bytes() for p in checkpoints.glob("*.pt")} == before


def test_a_resumed_sweep_job_never_takes_another_jobs_dir(tmp_path, make_cfg):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    update_manifest(sweep, "seed=0", run_dir=str(sweep / "0"), status="FAILED")
    taken = {"seed=0": {"run_dir": str(sweep / "0")}}
    assert own_run_dir(str(sweep / "0"), "seed=1", taken) == str(sweep / "0-1")
    assert own_run_dir(str(sweep / "0"), "seed=0", taken) == str(sweep / "0")
    job = SweepJob(sweep_dir=sweep, num=0, overrides=["seed=1"], key="seed=1")
    cfg = make_cfg()
    with open_dict(cfg):
        cfg.paths.run_dir = str(sweep / "0")
    seen = []
    job.run(cfg, lambda cfg, job: seen.append(cfg.paths.run_dir) or 0.5)
    assert seen == [str(sweep / "0-1")], "the new grid's job 0 is another job: its own dir"


@pytest.mark.parametrize(
    ("override", "key"), [("data.val_fraction=0", "val"), ("data.test_fraction=0", "test")]
)
def test_an_empty_split_is_refused_at_start(make_cfg, tmp_path, override, key):
    message = refused(make_cfg(override), f"the {key} split", f"data.{key}_fraction")
    assert "is empty" in message
    nothing_spent(tmp_path)


def test_a_split_that_small_classes_leave_empty_is_told_how_the_fraction_rounds(make_cfg):
    """32 samples of 10 classes and the default val_fraction=0.1: the message advised
    data.val_fraction=0.1, the value that left it empty."""
    message = refused(make_cfg("data.num_samples=32"), "the val split", "is empty")
    assert "a class of n samples gives it round(n x fraction)" in message
    assert "a larger data.val_fraction (0.1 by default)" in message


def test_a_class_missing_from_a_split_is_reported_at_start(make_cfg, caplog):
    from runner.data.build import build_data
    from runner.data.checks import require_splits

    # 45 samples of 10 classes: 5 of classes 0-4 (12% gives one), 4 of 5-9 (12% gives none).
    data = build_data(make_cfg("data.num_samples=45", "data.val_fraction=0.12").data)
    require_splits(data, ("val",))
    assert "the val split has no sample of 5 class(es): class_5, class_6" in caplog.text
    # A long-tailed folder lost half its test accuracy to weights chosen on head classes.
    assert "The best weights and early stopping are then chosen on the other classes" in (
        caplog.text
    )


# --- crashes after the work is done ---------------------------------------------------------


@pytest.fixture(scope="module")
def best_pt(tmp_path_factory):
    from runner.cli import run
    from tests.conftest import CONF

    tmp = tmp_path_factory.mktemp("trained")
    seed_store(tmp / "outputs")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"paths.output_dir={tmp}/outputs", f"paths.run_dir={tmp}/run", *TINY],
        )
    run(cfg)
    return tmp / "run" / "checkpoints" / "best.pt"


@pytest.mark.slow
def test_predict_output_naming_a_folder_writes_predictions_csv_into_it(make_cfg, best_pt, tmp_path):
    from runner.cli import run

    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    write_png(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), str(image))
    folder = tmp_path / "out"
    folder.mkdir()
    predict = ("mode=predict", f"ckpt={best_pt}", f"predict.input={image}")
    assert run(make_cfg(*predict, f"predict.output={folder}")) == 1
    assert (folder / "predictions.csv").read_text().count("\n") == 2
    assert sorted(p.name for p in folder.iterdir()) == ["predictions.csv"], "no temp file left"
    # A folder that does not exist yet, named with a trailing slash, is a folder too.
    assert run(make_cfg(*predict, f"predict.output={tmp_path / 'new'}/")) == 1
    assert (tmp_path / "new" / "predictions.csv").is_file()
    # The image itself as the output would be overwritten: refused before it is read.
    before = image.read_bytes()
    refused(make_cfg(*predict, f"predict.output={image}"), "is one of the images to label")
    assert image.read_bytes() == before
    # Into the folder it labels, again and again: the second time once took the first
    # CSV for an image (and refused to overwrite it).
    into_input = ("mode=predict", f"ckpt={best_pt}", f"predict.input={image.parent}")
    for _ in range(2):
        assert run(make_cfg(*into_input, f"predict.output={image.parent}/")) == 1
    assert (image.parent / "predictions.csv").read_text().count("\n") == 2


def test_an_ema_too_slow_for_the_runs_steps_is_refused_before_training(make_cfg, tmp_path):
    """0.999 (the example of conf/trainer/default.yaml) over a short run tested weights
    that were 86% the random initial ones: chance accuracy, and no word about it."""
    refused(make_cfg("trainer.ema_decay=0.999"), "trainer.ema_decay=0.999 would keep", "<= 0.")
    nothing_spent(tmp_path)


def test_a_model_name_or_weights_file_that_does_not_exist_is_refused_before_the_data(
    make_cfg, tmp_path
):
    """Each was found when the model was built: after the folder was decoded and cached,
    and for torchvision as a traceback."""
    root = make_imagefolder(tmp_path / "pics", per_class=12)
    cache = tmp_path / "cache"
    folder = ("data=imagefolder", f"data.root={root}", f"data.cache_dir={cache}", "logger=none")
    for model, expected in (
        (("model=timm", "model.name=resnet_nope"), "model.name='resnet_nope' is not a timm"),
        (("model=tv_resnet50", "model.name=resnet_nope"), "is not a torchvision model"),
        (("model.pretrained_file=/nonexistent/m.safetensors",), "no such file"),
        (
            ("model=tv_resnet50", "model.weights=IMAGENET1K_V9"),
            "model.weights='IMAGENET1K_V9': torchvision has no such weights for 'resnet50'",
        ),
    ):
        refused(make_cfg(*folder, *model, tiny=False), expected)
    assert not cache.exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["aug.transforms.0.degrees=-5"], "aug.transforms.0 (RandomAffine) cannot be built"),
        (["aug.transforms.0.p=1.5"], "aug.transforms.0 (RandomAffine): p=1.5 is a probability"),
        (["aug=randaugment", "aug.transforms.1.m=100"], "aug.transforms.1 (RandAugment)"),
        # Kornia checks only its range: a TypeError slicing the op indices at the preview.
        (["aug=randaugment", "aug.transforms.1.n=1.5"], "n=1.5: expected a whole number"),
    ],
)
def test_a_bad_transform_parameter_is_named_before_the_data(
    make_cfg, tmp_path, overrides, expected
):
    """Kornia refused them when the augmentation was built, after the data, through
    Hydra's wrapper; p=1.5 trained."""
    refused(make_cfg(*overrides), expected)
    nothing_spent(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # One process trained on half the split, without a word.
        (["+sampler.world_size=2"], "sampler.world_size is the number of processes"),
        # A ValueError traceback after the data was built.
        (["+sampler.rank=3"], "sampler.rank is the process's rank"),
        # One batch of one sample: BatchNorm's ValueError at the first step.
        (["sampler=balanced", "+sampler.num_samples=1"], "sampler.num_samples=1 is invalid"),
    ],
)
def test_sampler_keys_that_come_from_the_processes_or_starve_batchnorm_are_refused(
    make_cfg, tmp_path, overrides, expected
):
    refused(make_cfg(*overrides), expected, "Error: ")
    nothing_spent(tmp_path)


def test_a_bad_transform_parameter_is_named_in_preview_mode_before_the_data(make_cfg, tmp_path):
    """mode=preview built the data, then failed in Hydra's wrapper; p=1.5 drew a grid."""
    message = refused(
        make_cfg("mode=preview", "aug.transforms.0.p=1.5"), "aug.transforms.0 (RandomAffine)"
    )
    assert "p=1.5 is a probability" in message
    assert not list(tmp_path.rglob("aug_preview.png"))


def test_the_transform_check_builds_them_as_the_group_does(make_cfg):
    """Built without the group's _convert_, a size list reached Kornia as a ListConfig,
    which RandomResizedCrop refuses: a preset that trains was refused."""
    from runner.augment.checks import check_transforms

    crop = "{_target_:kornia.augmentation.RandomResizedCrop,size:[32,32],scale:[0.5,1.0]}"
    cfg = make_cfg(f"aug.transforms=[{crop}]")
    check_transforms(cfg.aug, cfg.data)


def test_mode_throughput_without_its_preset_names_the_preset(make_cfg, tmp_path):
    refused(make_cfg("mode=throughput"), "mode=throughput", "experiment=throughput")


def test_an_unknown_throughput_model_is_refused_before_the_first_is_timed(make_cfg, tmp_path):
    """It became an error row after the models before it were timed, naming model.name."""
    refused(
        make_cfg("experiment=throughput", "throughput.models=[resnet10t,resnet_nope]", tiny=False),
        "throughput.models.1='resnet_nope' is not a timm model",
    )
    assert not list(tmp_path.rglob("throughput.json"))
    nothing_spent(tmp_path)


def test_a_throughput_run_whose_every_row_failed_ends_with_an_error(make_cfg, tmp_path):
    """A ViT too large for the images failed in its row, and the command exited 0."""
    refused(
        make_cfg(
            *("experiment=throughput", "throughput.models=[vit_tiny_patch16_224]"),
            *("data.image_size=8", "throughput.batch_sizes=[2]", "throughput.steps=1"),
            tiny=False,
        ),
        "no model could be timed: every row of the table failed",
        "Check throughput.models against data.image_size",
    )
    assert (tmp_path / "run" / "throughput.json").is_file()  # the rows, with their errors


def test_throughput_refuses_model_keys_it_would_ignore(tmp_path):
    """It timed throughput.models and dropped model=... without a word."""
    done = run_cli(
        "experiment=throughput", "model=resnet32", f"paths.output_dir={tmp_path}", timeout=300
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "  - model=resnet32: mode=throughput times the timm models" in done.stderr
    assert not list(tmp_path.rglob("throughput.json"))


@pytest.mark.slow
def test_eval_with_stored_data_refuses_data_keys_and_names_eval_data_current(best_pt, tmp_path):
    command = ("mode=eval", f"ckpt={best_pt}", f"paths.output_dir={tmp_path}")
    done = run_cli(*command, "data.val_fraction=0.3", timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Error: data.val_fraction=0.3: eval.data=stored" in done.stderr
    assert "Add eval.data=current" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists(), "refused before any tracking"
    # The model and its augmentation come from the checkpoint: they were ignored silently.
    done = run_cli(*command, "model=resnet50", "aug.eval_crop_pct=0.5", timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Error: model=resnet50 aug.eval_crop_pct=0.5: mode=eval uses the model" in done.stderr
    # The keys that change only train were ignored silently with eval.data=current; without
    # it, their advice to add eval.data=current led to that second refusal.
    done = run_cli(*command, "data.exclude=x.csv", "data.label_noise=0.2")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Error: data.exclude=x.csv data.label_noise=0.2: mode=eval tests on" in done.stderr
    # An lr, a loss or an epoch count was ignored silently.
    done = run_cli(*command, "optim.lr=0.5", "loss=focal", "trainer.max_epochs=5")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Error: optim.lr=0.5 loss=focal trainer.max_epochs=5: mode=eval tests the" in (
        done.stderr
    )
    assert "reads only trainer.device, trainer.precision, trainer.eval_batch_size" in done.stderr


def test_a_training_batch_of_one_sample_is_refused_or_left_out(make_cfg, tmp_path):
    refused(make_cfg("trainer.batch_size=1"), "trainer.batch_size=1", ">= 2")
    nothing_spent(tmp_path)
    split = Split(torch.zeros(9, 3, 4, 4, dtype=torch.uint8), torch.arange(9) % 3)
    loader = ResidentLoader(split, 4, RandomSampler(split.labels), drop_last=False)
    assert [len(labels) for _, labels in loader] == [4, 4], "the lone ninth sample is left out"
    assert len(ResidentLoader(split, 4)) == 3, "evaluation keeps every sample"


# --- one clear line, not a traceback --------------------------------------------------------


def test_the_command_line_shows_a_mistake_as_one_line_and_exit_status_1(tmp_path):
    done = run_cli(f"paths.output_dir={tmp_path}", "trainer.device=cuda", *TINY, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Error: trainer.device='cuda' but CUDA is not available" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "mlflow.db").exists() or runs_in(tmp_path / "mlflow.db") == 0
    full = subprocess.run(
        [
            sys.executable,
            str(REPO / "run.py"),
            f"paths.output_dir={tmp_path}",
            "trainer.device=cuda",
            *TINY,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert full.returncode == 1 and "Traceback" in full.stderr, "HYDRA_FULL_ERROR=1 shows it"
    # A mistake the config checks find before the job: the variable was ignored there.
    full = subprocess.run(
        [sys.executable, str(REPO / "run.py"), f"paths.output_dir={tmp_path}/x", "optim.lr=abc"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
    )
    assert full.returncode == 1 and "Traceback" in full.stderr, full.stderr[-2000:]
    assert "ConfigError: Invalid config (1 problem)" in full.stderr
    assert "Error: Invalid config" in full.stderr and not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.precision=16"], ["trainer.precision=16 needs a CUDA device", "bf16 or 32"]),
        (["model.name=resnet_18"], ["model.name='resnet_18' is not a timm model", "resnet18"]),
        (["data.mean=[0.5,0.5]"], ["data.mean=[0.5, 0.5] is invalid", "3 numbers"]),
        (["trainer.resume=nevr"], ["trainer.resume='nevr'", "auto, never"]),
        (["data.std=[0.2,0.2]"], ["data.std=[0.2, 0.2] is invalid", "3 numbers"]),
        (["mode=eval", "ckpt=/nope/best.pt"], ["ckpt='/nope/best.pt': no such file"]),
        (
            ["mode=predict", "ckpt=/nope/best.pt", f"predict.input={REPO / 'README.md'}"],
            ["ckpt='/nope/best.pt': no such file"],
        ),
    ],
)
def test_mistakes_end_in_one_line_naming_the_key_and_the_fix(
    make_cfg, tmp_path, overrides, expected
):
    refused(make_cfg(*overrides), *expected)
    nothing_spent(tmp_path)


def test_a_tracking_store_under_a_file_is_named_before_anything_runs(make_cfg, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    uri = f"sqlite:///{blocker}/mlflow.db"
    refused(
        make_cfg(f"logger.tracking_uri={uri}"),
        f"logger.tracking_uri='{uri}' is invalid",
        f"{blocker} is a file",
        "choose another path",
    )
    nothing_spent(tmp_path)
    validate(make_cfg(f"logger.tracking_uri=sqlite:///{tmp_path}/new/folders/mlflow.db"))


def test_a_registered_model_without_the_export_is_refused(make_cfg, tmp_path):
    refused(
        make_cfg("logger.registered_model_name=digits-net", "logger.export_model=false"),
        "logger.registered_model_name='digits-net' needs logger.export_model=true",
        "registered_model_name=null",
    )
    nothing_spent(tmp_path)
    refused(make_cfg("logger.export_model=maybe"), "logger.export_model='maybe' is invalid")
    validate(make_cfg("logger.registered_model_name=digits-net", "logger.export_model=true"))


def test_weights_of_another_architecture_are_named(make_cfg, tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet14t.safetensors"
    save_file(timm.create_model("resnet14t").state_dict(), str(weights))
    refused(
        make_cfg(f"model.pretrained_file={weights}"),
        "model.pretrained_file=",
        "does not fit model.name='test_resnet'",
    )
    nothing_spent(tmp_path)


def test_a_model_that_cannot_take_the_images_is_refused_before_the_tracked_run(make_cfg, tmp_path):
    """One-channel images for a three-channel model failed at the first step, in a run."""
    refused(
        make_cfg("data=synthetic", "data.channels=1", "data.num_samples=120"),
        "model.name='test_resnet' on data 'synthetic' (1 channel(s)",
        "+model.in_chans=<channels>",
        # model.img_size=... failed as "Could not override" for model=timm.
        "a ViT +model.img_size=<data.image_size>",
    )
    nothing_spent(tmp_path)


def test_a_cifar_resnet_on_one_channel_images_is_named_with_its_own_argument(make_cfg, tmp_path):
    """The message said model.name=None and advised +model.in_chans, which this model
    calls in_channels (and refuses)."""
    message = refused(
        make_cfg(
            *("data=synthetic", "data.channels=1", "data.num_samples=120", "data.image_size=32"),
            *("model=resnet32", "trainer.max_epochs=1"),
            tiny=False,
        ),
        "cifar_resnet on data 'synthetic' (1 channel(s)",
        "+model.in_channels=<channels>",
    )
    assert "model.name=None" not in message
    nothing_spent(tmp_path)


def test_airbench_on_one_channel_images_is_refused_before_its_whitening(make_cfg, tmp_path):
    """Its data-dependent whitening ran before the check: a RuntimeError traceback."""
    refused(
        make_cfg(
            *("data=synthetic", "data.channels=1", "data.num_samples=120", "data.image_size=32"),
            *("model=airbench94", "trainer.max_epochs=1"),
            tiny=False,
        ),
        "airbench94 on data 'synthetic' (1 channel(s)",
        "model=airbench94 +model.in_channels=<channels>",
    )
    nothing_spent(tmp_path)


def test_three_normalisation_values_for_one_channel_images_are_named(make_cfg, tmp_path):
    """A 1-channel model with 3 mean/std values: the advice once said to set in_chans, which
    was set; the normalisation had made the images 3-channel."""
    refused(
        make_cfg(
            "data=synthetic",
            "data.channels=1",
            "data.num_samples=120",
            "+model.in_chans=1",
            "data.mean=[.5,.5,.5]",
            "data.std=[.2,.2,.2]",
        ),
        "3 mean/std values turn the 1-channel images into 3-channel ones",
    )
    nothing_spent(tmp_path)


def test_a_gradcam_layer_the_model_lacks_is_refused_before_training(make_cfg, tmp_path):
    """It was found only after training, when the analysis drew Grad-CAM."""
    refused(
        make_cfg("analysis.enabled=true", "analysis.gradcam_layer=layer9"),
        "analysis.gradcam_layer='layer9' is not a module of this model",
    )
    nothing_spent(tmp_path)


def test_a_gradcam_layer_without_a_feature_map_is_refused_before_training(make_cfg, tmp_path):
    """A ViT block outputs tokens: Grad-CAM failed on them after training."""
    refused(
        make_cfg(
            "analysis.enabled=true",
            "model.name=test_vit",
            "+model.img_size=32",
            "analysis.gradcam_layer=blocks.0",
        ),
        "analysis.gradcam_layer='blocks.0' outputs a tensor of shape (2, ",
    )
    nothing_spent(tmp_path)


def test_a_gradcam_min_size_no_feature_map_reaches_is_refused_before_training(make_cfg, tmp_path):
    """With gradcam_layer=auto it was found after the test, and gradcam.png left out; a
    model without any feature map is still left to the report."""
    refused(
        make_cfg("analysis.enabled=true", "analysis.gradcam_min_size=64"),
        "analysis.gradcam_min_size=64: the largest feature map of this model for 32x32 "
        "images is 16x16",
        "at most 16",
    )
    nothing_spent(tmp_path)
    from runner.training.preflight import check_gradcam_size

    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(), torch.nn.Linear(12, 4))
    check_gradcam_size(make_cfg("analysis.enabled=true"), flat, torch.zeros(2, 3, 2, 2))
    assert all(module.training for module in flat.modules()), "its modes are given back"


def test_a_checkpoint_naming_untrusted_code_needs_allowed_targets(make_cfg, best_pt, tmp_path):
    payload = torch.load(best_pt, weights_only=True)
    payload["config"] = payload["config"].replace(
        "runner.models.factories.create_timm_model", "mylab.models.net"
    )
    odd = tmp_path / "odd.pt"
    torch.save(payload, odd)
    refused(make_cfg("mode=eval", f"ckpt={odd}", "eval.data=current"), "allowed_targets")


@pytest.mark.parametrize("layout", ["one_class", "broken_link"])
def test_bad_image_folders_are_named_at_start(make_cfg, tmp_path, layout):
    root = make_imagefolder(
        tmp_path / "data", classes=("only",) if layout == "one_class" else ("a", "b"), per_class=6
    )
    if layout == "broken_link":
        (root / "train" / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    no_data = [t for t in TINY if not t.startswith("data")]
    cfg = make_cfg(
        *no_data, "data=imagefolder", f"data.root={root}", "data.image_size=16", tiny=False
    )
    if layout == "one_class":
        refused(cfg, "has one class (only)", "data.root/train/")
        nothing_spent(tmp_path)
    else:  # a broken link is a bad file: skipped, listed, and training goes on
        from runner.cli import run

        run(cfg)
        assert "gone.png" in (tmp_path / "run" / "bad_files.txt").read_text()


# --- sweeps ---------------------------------------------------------------------------------


def test_a_bad_value_in_the_third_grid_point_stops_the_sweep_at_start(tmp_path):
    done = run_cli(
        "-m",
        f"paths.output_dir={tmp_path}",
        "optim.lr=1e-3,3e-3,-1",
        "seed=0,1",
        *TINY,
        timeout=300,
    )
    assert done.returncode == 1
    assert "the sweep was not started" in done.stderr and "optim.lr=-1" in done.stderr
    assert "job 4 (optim.lr=-1 seed=0)" in done.stderr
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_eval_sweep_over_a_missing_checkpoint_is_refused_before_any_job(tmp_path):
    """Job 0 tested its checkpoint in full before job 1 failed on its missing file; with
    the missing one first, the sweep stopped there and the other job never ran."""
    present = tmp_path / "best.pt"
    present.write_bytes(b"")  # never read: the sweep is refused first
    missing = tmp_path / "gone" / "best.pt"
    done = run_cli("-m", f"paths.output_dir={tmp_path}", "mode=eval", f"ckpt={missing},{present}")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the sweep was not started" in done.stderr
    assert f"job 0 (ckpt={missing}): Invalid config" in done.stderr
    assert f"ckpt='{missing}': no such file" in done.stderr
    assert "job 1" not in done.stderr
    assert not (tmp_path / "multirun").exists()


def test_starting_over_in_a_dir_from_its_own_best_weights_reads_them_where_they_moved(
    make_cfg, tmp_path
):
    """trainer.resume=never set the checkpoints aside before the model read its
    pretrained_file among them: 'no such file', after validation had accepted it."""
    from runner.cli import run

    run(make_cfg())
    own_best = tmp_path / "run" / "checkpoints" / "best.pt"
    run(make_cfg("trainer.resume=never", f"model.pretrained_file={own_best}"))
    (aside,) = (tmp_path / "run").glob("checkpoints.replaced-*")
    assert (aside / "best.pt").is_file() and own_best.is_file()  # the new run's own


def test_a_run_dir_that_cannot_be_written_is_named_before_anything_is_made(tmp_path):
    """paths.run_dir (unlike hydra.run.dir) was not checked: a FileNotFoundError traceback
    after Hydra had made its own dir."""
    done = run_cli(f"paths.output_dir={tmp_path}", "paths.run_dir=/proc/nope/x", *TINY)
    assert done.returncode == 1
    assert "Error: paths.run_dir='/proc/nope/x': cannot write in /proc" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


def test_a_run_dir_that_holds_more_than_runs_is_refused(tmp_path, make_cfg):
    """hydra.run.dir=/ and hydra.run.dir='' (the current folder, here the repository) were
    taken: checkpoints, .hydra/ and run.log were written there beside everything else."""
    from runner.config.callback import _shared_folder_problem

    repo = tmp_path / "repo"
    repo.mkdir()
    done = run_cli(f"paths.root_dir={repo}", f"hydra.run.dir={repo}", *TINY)
    assert done.returncode == 1
    assert f"Error: hydra.run.dir='{repo}': it is the repository" in done.stderr
    assert "Name a folder of its own" in done.stderr and not list(repo.iterdir())
    cfg = make_cfg()
    assert "the file system's root" in _shared_folder_problem(cfg, "/")
    assert "it is empty" in _shared_folder_problem(cfg, " ")
    assert _shared_folder_problem(cfg, str(tmp_path / "runs" / "mine")) is None


def test_a_swept_key_under_a_value_is_named_before_the_sweep_starts(tmp_path):
    """`optim.lr.foo=1,2` raised a TypeError in the start check (it listed the keys of a
    float): Hydra skipped the check with a warning, and the sweep ran without it."""
    done = run_cli("-m", f"paths.output_dir={tmp_path}", "optim.lr.foo=1,2", *TINY, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "optim.lr.foo: optim.lr is a value (" in done.stderr
    assert not (tmp_path / "multirun").exists()


def test_a_grid_a_config_file_sweeps_is_checked_job_by_job_at_start(tmp_path):
    """hydra.sweeper.params of an experiment file was left out of the start check: job 0
    trained, then job 1 failed on its bad value."""
    (tmp_path / "conf" / "variant").mkdir(parents=True)
    (tmp_path / "conf" / "variant" / "lrs.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      optim.lr: 1e-3,-1\n"
    )
    done = run_cli(
        "-m",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"paths.output_dir={tmp_path / 'out'}",
        "+variant=lrs",
        *TINY,
    )
    assert done.returncode == 1
    assert "job 1 (optim.lr=-1)" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out" / "multirun").exists()


def test_an_eval_setting_on_a_training_command_is_refused_not_ignored(tmp_path):
    """eval.tta=flip on a training run changed nothing: its test was without TTA."""
    done = run_cli(f"paths.output_dir={tmp_path}", *TINY, "eval.tta=flip", "predict.topk=3")
    assert done.returncode == 1
    assert "eval.tta is read by mode=eval and mode=predict only" in done.stderr
    assert "predict.topk is read by" in done.stderr and "add mode=predict" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_an_eval_sweep_into_a_training_sweeps_dir_is_refused_before_any_job(tmp_path):
    """Its jobs' dirs (0, 1, ...) were the training jobs': their reports were replaced."""
    sweep = tmp_path / "sweep"
    (sweep / "0" / "checkpoints").mkdir(parents=True)
    (sweep / "0" / "metrics.json").write_text("{}")
    done = run_cli(
        "-m", "mode=eval", f"ckpt={tmp_path}/a.pt,{tmp_path}/b.pt", f"hydra.sweep.dir={sweep}"
    )
    assert done.returncode == 1
    assert "holds training runs (0/checkpoints/), whose files the mode=eval jobs" in done.stderr
    assert sorted(p.name for p in sweep.iterdir()) == ["0"]
    assert (sweep / "0" / "metrics.json").read_text() == "{}"


def test_an_eval_into_the_dir_of_an_earlier_eval_is_refused_before_it_overwrites_it(tmp_path):
    """A second mode=eval with the same hydra.run.dir replaced the first one's
    metrics.json, per_class.csv and .hydra/ without a word."""
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"")  # never read: the command is refused first
    earlier = tmp_path / "evals" / "first"
    earlier.mkdir(parents=True)
    (earlier / "metrics.json").write_text('{"test/acc": 0.5}')
    done = run_cli("mode=eval", f"ckpt={ckpt}", f"hydra.run.dir={earlier}")
    assert done.returncode == 1, done.stderr[-2000:]
    expected = f"hydra.run.dir='{earlier}' holds the results of an earlier run (metrics.json)"
    assert expected in done.stderr and "name a new folder" in done.stderr
    assert sorted(p.name for p in earlier.iterdir()) == ["metrics.json"]
    assert (earlier / "metrics.json").read_text() == '{"test/acc": 0.5}'
    # A training run there replaced them too; a sweep of evals into a dir of an earlier
    # one replaced its jobs' results, and listed an error a job of it had left as its own.
    done = run_cli(f"hydra.run.dir={earlier}", *TINY)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "holds the results of an earlier run that did not train (metrics.json)" in done.stderr
    sweep = tmp_path / "evals" / "sweep"
    (sweep / "1").mkdir(parents=True)
    (sweep / "1" / "error.txt").write_text("the earlier sweep's job 1 failed\n")
    done = run_cli("-m", "mode=eval", f"ckpt={ckpt},{ckpt}", f"hydra.sweep.dir={sweep}")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "holds an earlier sweep's jobs (1/error.txt)" in done.stderr
    assert sorted(p.name for p in sweep.iterdir()) == ["1"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("paths.run_dir", "holds a training run (checkpoints/)"),
        ("a swept mode", "holds training runs (0/checkpoints/), whose files the mode=preview"),
        ("hydra.sweep.subdir=.", "holds training runs (checkpoints/), whose files the mode"),
    ],
)
def test_a_preview_sweep_into_a_training_run_is_refused_before_any_job(tmp_path, case, expected):
    """Under -m the run-dir check was skipped, a sweep over mode skipped the sweep-dir
    check, and the sweep dir itself as the jobs' dir was not looked at: each job replaced
    the training run's aug_preview.png and .hydra/ (an eval job its metrics.json)."""
    sweep = tmp_path / "sweep"
    trained = {"paths.run_dir": tmp_path / "trained", "a swept mode": sweep / "0"}.get(case, sweep)
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "aug_preview.png").write_text("the training run's")
    extra = {
        "paths.run_dir": ["mode=preview", f"paths.run_dir={trained}"],
        "a swept mode": ["mode=preview,train"],
        "hydra.sweep.subdir=.": ["mode=preview", "hydra.sweep.subdir=."],
    }[case]
    done = run_cli("-m", *extra, f"hydra.sweep.dir={sweep}", f"paths.output_dir={tmp_path}")
    assert done.returncode == 1, done.stderr[-2000:]
    assert expected in done.stderr, done.stderr[-2000:]
    assert (trained / "aug_preview.png").read_text() == "the training run's"
    assert not (trained / ".hydra").exists()


def test_a_predict_setting_on_an_eval_command_is_refused_not_ignored(tmp_path):
    """mode=eval with predict.tta=flip tested without TTA (and predict with eval.tta)."""
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"")  # never read: the command is refused first
    done = run_cli(f"paths.output_dir={tmp_path}", "mode=eval", f"ckpt={ckpt}", "predict.tta=flip")
    assert done.returncode == 1
    expected = "predict.tta is read by mode=predict only, and mode=eval would ignore it: use "
    assert expected + "eval.tta" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_model_name_in_a_grid_stops_the_sweep_before_job_0_trains(tmp_path):
    """Job 0 trained and wrote its run; job 1 then failed on its model name."""
    done = run_cli("-m", f"paths.output_dir={tmp_path}", *TINY, "model.name=test_resnet,resnt18")
    assert done.returncode == 1
    assert "job 1 (model.name=resnt18): model.name='resnt18' is not a timm model" in done.stderr
    assert not (tmp_path / "multirun").exists()


def test_an_interval_in_a_grid_names_the_search_it_needs(tmp_path):
    """Hydra's own message said that the sweep "requires --multirun", given -m."""
    done = run_cli("-m", f"paths.output_dir={tmp_path}", "optim.lr=interval(1e-3,1e-2)", *TINY)
    assert done.returncode == 1
    assert "interval() is a range that a search samples" in done.stderr
    assert "hparams_search=optuna" in done.stderr and "--multirun" not in done.stderr


def test_sweep_resume_given_a_file_asks_for_the_sweeps_folder(tmp_path):
    """It named hydra.sweep.dir and advised paths.output_dir, keys the user never set."""
    manifest = tmp_path / "sweep" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text("{}")
    done = run_cli("-m", f"paths.output_dir={tmp_path}", f"sweep.resume={manifest}", *TINY)
    assert done.returncode == 1
    assert f"sweep.resume='{manifest}' is a file: give the sweep's folder" in done.stderr
    assert f"(sweep.resume={manifest.parent})" in done.stderr


def test_a_misspelt_key_in_a_grid_is_named_without_the_advice_to_add_it(tmp_path):
    """Hydra's own error came after a warning that the start check raised, and advised
    +optim.learning_rate, which the config check then refuses."""
    done = run_cli("-m", f"paths.output_dir={tmp_path}", "optim.learning_rate=1e-3,3e-3", *TINY)
    assert done.returncode == 1
    assert "job 1 (optim.learning_rate=0.003): optim.learning_rate: the config has" in done.stderr
    assert "check its spelling (optim has: lr" in done.stderr and "+optim" not in done.stderr
    assert not (tmp_path / "multirun").exists()


def test_a_misspelt_key_that_hydra_refuses_is_named_with_the_key_meant(tmp_path):
    """Hydra's error advised +trainer.max_epoch=3, which the config check then refuses:
    in a single run, and in a sweep whose misspelt key is not swept."""
    done = run_cli(f"paths.output_dir={tmp_path}", "trainer.max_epoch=3")
    assert done.returncode == 1
    assert (
        "trainer.max_epoch: the config has no such key; check its spelling: did you mean "
        "trainer.max_epochs? (trainer has: max_epochs, batch_size" in done.stderr
    )
    # The grid's first loss stands for the group: its keys are listed.
    done = run_cli("-m", f"paths.output_dir={tmp_path}", "loss=gce,sce", "loss.qq=0.3")
    assert done.returncode == 1
    assert "loss.qq: the config has no such key; check its spelling (loss has: q," in done.stderr
    assert not (tmp_path / "multirun").exists()
    # A key whose default is ??? is there: a run that failed later is not told otherwise.
    from runner.config.command_line import unknown_key_hint
    from tests.conftest import CONF

    assert unknown_key_hint(["data=imagefolder", "data.root=/x"], CONF) is None
    # A key of one option of a swept group is there, but Hydra sets it on the default
    # model (resnet10t) first; a key force-added with ++ is there.
    hint = unknown_key_hint(["model=resnet18,vit_tiny", "model.patch_size=4"], CONF)
    assert hint.startswith("Error: model.patch_size: model=resnet18 lacks it and model=vit_")
    assert unknown_key_hint(["++trainer.new_key=1"], CONF) is None
    # A key whose value needs a running Hydra (paths.run_dir is ${hydra:...}) is there.
    assert unknown_key_hint(["paths.run_dir=/x"], CONF) is None
    hint = unknown_key_hint(["model=resnet18,vit_tiny", "model.patch_sz=4"], CONF)
    assert "did you mean model.patch_size?" in hint


def test_an_argument_hydra_cannot_read_is_named_with_how_to_quote_it(tmp_path):
    """Hydra's "mismatched input '[' expecting <EOF>" named no argument."""
    from runner.config.command_line import unreadable_argument_hint

    done = run_cli(f"paths.output_dir={tmp_path}", "data.split_train=train[:90%]")
    assert done.returncode == 1
    assert (
        "Hydra cannot read the argument 'data.split_train=train[:90%]': quote its value "
        "(characters such as [ ] : % and spaces need it), in a shell "
        "'data.split_train=\"train[:90%]\"'" in done.stderr
    )
    assert unreadable_argument_hint(["optim.lr=1e-3,3e-3", "-m", "model=resnet18"]) is None


def test_a_key_of_another_option_of_its_group_names_that_option():
    """logger=none logger.export_model=false was told to check the key's spelling, which
    was right: the key is logger=mlflow's."""
    from runner.config.command_line import unknown_key_hint
    from tests.conftest import CONF

    hint = unknown_key_hint(["logger=none", "logger.export_model=false"], CONF)
    assert "logger.export_model: the config has no such key; logger=mlflow has it (choose" in hint
    hint = unknown_key_hint(["loss=sce", "loss.q=0.5"], CONF)
    assert "; loss=gce has it (choose it), or check its spelling (loss has: alpha" in hint
    # data.root is required (???) in data=imagefolder and was left out of the options.
    hint = unknown_key_hint(["data.root=/photos"], CONF)
    assert "data=cifar10, data=cifar100 and data=imagefolder have it" in hint
    hint = unknown_key_hint(["trainer.max_epoch=3"], CONF)  # no option has it: spelling only
    assert "has it" not in hint and "did you mean trainer.max_epochs?" in hint
    # `_switches` is a block the data options share: "data=_switches has it (choose it)".
    from runner.config.command_line import options_with_key

    assert options_with_key(CONF, "data.label_noise") == []
    # In a sweep of the group, Hydra sets the key once, on the default option (adamw), and
    # its error named no option.
    hint = unknown_key_hint(["-m", "optim=adamw,sgd", "optim.momentum=0.9"], CONF)
    assert "optim.momentum: optim=adamw lacks it and optim=sgd has it, and Hydra applies" in hint
    assert "(-m optim=sgd optim.momentum=...)" in hint
    assert unknown_key_hint(["-m", "optim=adamw,sgd", "optim.lr=0.1"], CONF) is None
    # A key of another group (precision=bf16 was told to check its spelling, no more).
    assert "did you mean trainer.precision?" in unknown_key_hint(["precision=bf16"], CONF)
    assert "did you mean optim.lr? (trainer has:" in unknown_key_hint(["trainer.lr=0.1"], CONF)


def test_a_grid_whose_presets_monitor_different_metrics_is_refused(tmp_path):
    """experiment=a,b where b sets trainer.monitor=val/loss: the summary ranked job b's
    val/loss among the others' val/acc and named it the best val/acc."""
    (tmp_path / "conf" / "variant").mkdir(parents=True)
    for name, monitor in (("by_acc", "val/acc"), ("by_loss", "val/loss")):
        (tmp_path / "conf" / "variant" / f"{name}.yaml").write_text(
            f"# @package _global_\ntrainer:\n  monitor: {monitor}\n"
        )
    done = run_cli(
        "-m",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"paths.output_dir={tmp_path / 'out'}",
        "+variant=by_acc,by_loss",
        *TINY,
    )
    assert done.returncode == 1
    assert "ranked by different ones: job 0 (+variant=by_acc) by val/acc (max)" in done.stderr
    assert "job 1 (+variant=by_loss) by val/loss (min)" in done.stderr
    assert not (tmp_path / "out" / "multirun").exists()


def test_the_start_check_of_a_sweep_sees_the_groups_of_the_command_lines_searchpath(tmp_path):
    """A group from hydra.searchpath once composed as an unknown top-level key in the check
    of every job, so no such sweep could start (benchmarks/imbalance.py among them)."""
    (tmp_path / "conf" / "variant").mkdir(parents=True)
    (tmp_path / "conf" / "variant" / "short.yaml").write_text(
        "# @package _global_\ntrainer:\n  max_epochs: 1\n"
    )
    done = run_cli(
        "-m",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        f"paths.output_dir={tmp_path / 'out'}",
        "+variant=short",
        "optim.lr=1e-3,-1",
        *TINY,
        timeout=300,
    )
    assert done.returncode == 1
    assert "job 1 (optim.lr=-1)" in done.stderr, done.stderr[-2000:]
    assert "variant" not in done.stderr.partition("the sweep was not started")[2]


def test_a_sweep_over_the_monitored_metric_is_refused_before_any_output(tmp_path):
    """Its summary ranked val/acc against val/loss values ("val/acc = 2.2974")."""
    done = run_cli("-m", f"paths.output_dir={tmp_path}", "trainer.monitor=val/acc,val/loss", *TINY)
    assert done.returncode == 1
    assert "-m trainer.monitor=...: the jobs of one sweep are ranked by one metric" in (done.stderr)
    assert not (tmp_path / "multirun").exists()


def test_hints_name_the_options(tmp_path):
    done = run_cli(f"paths.output_dir={tmp_path}", "model=resnet_18", timeout=120)
    assert done.returncode == 1 and "Could not find 'model/resnet_18'" in done.stderr
    assert "\tresnet18\n" in done.stderr, "the options are listed"


# --- small things ---------------------------------------------------------------------------


@pytest.mark.slow
def test_non_finite_best_weights_fail_the_run_instead_of_being_saved(make_cfg, tmp_path):
    cfg = make_cfg("optim.lr=1e9", "trainer.limit_batches=1")
    refused(cfg, "non-finite weights or val loss after epoch 1", "Lower optim.lr")
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    db = tmp_path / "outputs" / "mlflow.db"
    assert [s for (s,) in query(db, "SELECT status FROM runs")] == ["FAILED"]


@pytest.mark.slow
def test_debug_runs_are_tagged_and_paths_output_dir_moves_everything_a_run_writes(tmp_path):
    """debug=overfit reports train accuracy and tags the run; paths.output_dir holds all
    that the run wrote, in neither the repository's outputs/ nor the working dir."""
    before = set((REPO / "outputs").iterdir()) if (REPO / "outputs").exists() else set()
    done = run_cli(
        f"paths.output_dir={tmp_path / 'out'}",
        "debug=overfit",
        "trainer.max_epochs=3",
        *TINY,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "final train/acc" in done.stdout
    tags = dict(query(tmp_path / "out" / "mlflow.db", "SELECT key, value FROM tags"))
    assert tags["debug"] == "overfit"
    after = set((REPO / "outputs").iterdir()) if (REPO / "outputs").exists() else set()
    assert after == before, "nothing lands in the repository's outputs/"
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"runs", "mlflow.db", "mlartifacts"}
    assert not [p for p in tmp_path.iterdir() if p.name not in ("out",)], "nor in the cwd"


def test_top5_is_left_out_with_five_classes_or_fewer_and_a_short_epoch_is_named(make_cfg, caplog):
    from runner.data.build import build_data, build_loaders
    from runner.training.preflight import check_training_data

    cfg = make_cfg("data.num_classes=4")
    data = build_data(cfg.data)
    loaders = build_loaders(data, cfg.sampler, cfg.trainer, cfg.seed, torch.device("cpu"))
    check_training_data(cfg, data, len(loaders.train))
    assert (
        "only 4 optimizer step(s) per epoch" in caplog.text and "trainer.batch_size" in caplog.text
    )
    caplog.clear()  # 3 batches in windows of 4: one (short) window, one step, not "0"
    check_training_data(make_cfg("trainer.accumulate_grad_batches=4"), data, 3)
    assert "only 1 optimizer step(s) per epoch" in caplog.text
    caplog.clear()  # debug=fast asks for one batch: no advice to lower the batch size
    check_training_data(make_cfg("debug=fast"), data, 1)
    assert "optimizer step(s) per epoch" not in caplog.text
    with pytest.raises(ConfigError, match="needs more than 5 classes"):
        check_training_data(make_cfg("trainer.monitor=val/top5"), data, len(loaders[0]))


def test_a_sampler_and_a_loss_that_both_rebalance_are_warned_of(make_cfg, caplog):
    """sampler=balanced with loss=balanced_ce corrected the imbalance twice, silently."""
    from runner.data.build import build_data
    from runner.training.preflight import check_training_data

    data = build_data(make_cfg().data)
    for sampler, loss in (("balanced", "balanced_ce"), ("sqrt", "balanced_softmax")):
        caplog.clear()
        check_training_data(make_cfg(f"sampler={sampler}", f"loss={loss}"), data, 20)
        assert "the class imbalance is corrected twice" in caplog.text
    for sampler, loss in (("random", "balanced_ce"), ("balanced", "ce")):
        caplog.clear()
        check_training_data(make_cfg(f"sampler={sampler}", f"loss={loss}"), data, 20)
        assert "corrected twice" not in caplog.text


def test_a_glob_sweep_is_checked_at_start_like_a_list_of_options(tmp_path):
    done = run_cli(
        "-m",
        f"paths.output_dir={tmp_path}/out",
        f"hydra.sweep.dir={tmp_path}/sweep",
        "model=glob(resnet1*)",  # resnet10t and resnet18
        "optim.lr=1e-3,-1",
        "logger=none",
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Error: the sweep was not started" in done.stderr
    assert "job 3 (model=resnet18 optim.lr=-1)" in done.stderr
    assert "optim.lr=-1 is invalid" in done.stderr and "job 2 " not in done.stderr
    assert "ConfigLoader is not set" not in done.stderr
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "out").exists()


def test_a_device_this_machine_lacks_is_refused_by_name():
    from runner.training.context import resolve_device

    if torch.backends.mps.is_available():  # an Apple machine: it is a device here
        assert resolve_device("mps") == torch.device("mps")
    else:  # it failed later, when the data moved there, with a bare RuntimeError
        with pytest.raises(ConfigError, match=r"trainer\.device='mps' but this machine has no"):
            resolve_device("mps")
    # cuda:N beyond the machine's devices is refused the same way (needs a GPU to reach).
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:3")


def test_predict_lists_a_folder_with_a_link_back_to_itself_once(tmp_path):
    from runner.predict import list_images

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        (folder / name).write_bytes(b"x")
    (folder / "sub" / "loop").symlink_to(folder)  # os.walk followed it 40 levels deep
    listed = [p.relative_to(folder).as_posix() for p in list_images(str(folder))]
    assert listed == ["a.png", "sub/b.png"]


def test_a_pattern_as_predict_input_is_told_to_be_a_folder(tmp_path):
    """`predict.input=<folder>/*.png` was refused as a path that does not exist, which
    did not say that no pattern is expanded."""
    from runner.predict import list_images

    (tmp_path / "in").mkdir()
    with pytest.raises(ConfigError) as err:
        list_images(f"{tmp_path}/in/*.png")
    assert str(err.value).endswith(
        f"no such file or folder; a pattern is not expanded: give the folder ({tmp_path}/in), "
        "whose images are all labelled"
    )
    with pytest.raises(ConfigError, match=r"no such file or folder$"):
        list_images(f"{tmp_path}/in/missing.png")
