"""Every option of every group composes and instantiates; bad configs fail early."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from runner.config.changes import ADDED_KEYS
from runner.config.validation import ConfigError, validate
from runner.data.build import build_data
from runner.data.splits import DataSplits
from tests.conftest import CONF, REPO, group_options, run_cli
from tests.datagen import make_imagefolder, write_cifar, write_hf_parquet

GROUPS = ["data", "aug", "model", "optim", "sched", "loss", "sampler", "logger", "trainer"]
# Groups that may be left unchosen (no default option).
OPTIONAL_GROUPS = ["experiment"]


def test_every_group_has_options():
    for group in GROUPS:
        assert group_options(group), f"conf/{group} has no options"


def test_a_new_conf_key_says_how_a_run_dir_written_without_it_resumes():
    """A key added to conf/ made every earlier run dir's resume a refused "change" (a
    SLURM job requeued across an upgrade stopped) unless runner/config/changes.py knew it."""
    from runner.config.changes import ADDED_KEYS, MAY_CHANGE_ON_RESUME
    from tests.config.conf_keys import KEYS_FILE, conf_keys

    known = set(KEYS_FILE.read_text(encoding="utf-8").split())
    prefixes = tuple(key for key in MAY_CHANGE_ON_RESUME if key.endswith("."))
    sorted_out = set(ADDED_KEYS) | set(MAY_CHANGE_ON_RESUME)
    new = sorted(
        k for k in conf_keys() - known if k not in sorted_out and not k.startswith(prefixes)
    )
    assert not new, (
        f"new in conf/: {', '.join(new)}. A run dir written before a key existed resumes "
        "only when runner/config/changes.py says how: add the key to ADDED_KEYS with the "
        "value that does what its absence did, or to MAY_CHANGE_ON_RESUME (README "
        "'Extending'); a key of a new option only, which no run has used yet, needs "
        "neither. Then record it: python -m tests.config.conf_keys"
    )


def data_files(option: str, tmp_path) -> list[str]:
    """Overrides pointing a data option at small real files written for the test."""
    if option == "imagefolder":
        return [f"data.root={make_imagefolder(tmp_path / 'folder', per_class=10)}"]
    if option in ("cifar10", "cifar100"):
        per_file = 100 if option == "cifar10" else 200  # val needs >= 10 per class
        return [f"data.root={write_cifar(tmp_path / option, option, per_file=per_file)}"]
    if option == "hf":
        path = write_hf_parquet(tmp_path / "bugs.parquet")
        return [
            f"data.name={path}",
            "data.image_key=img",
            "data.label_key=y",
            "data.split_test=null",
            f"data.hf_cache_dir={tmp_path / 'hf'}",
        ]
    if "???" in (CONF / "data" / f"{option}.yaml").read_text():
        pytest.fail(
            f"conf/data/{option}.yaml has a required key (???): add a branch for data={option} "
            "to data_files() in tests/config/test_config.py that writes small files for it"
        )
    return []


@pytest.mark.parametrize("option", group_options("data"))
def test_data_options_build_uint8_splits(make_cfg, tmp_path, option):
    cfg = make_cfg(f"data={option}", *data_files(option, tmp_path), tiny=False)
    validate(cfg)
    data = build_data(cfg.data)
    assert isinstance(data, DataSplits)
    for split in (data.train, data.val, data.test):
        images, labels = next(iter(split.loader(8, torch.device("cpu"))))
        assert images.dtype == torch.uint8
        assert images.shape[1:] == (3, cfg.data.image_size, cfg.data.image_size)
        assert labels.dtype == torch.int64
    assert data.num_classes >= 2 and len(data.mean) == 3


@pytest.mark.parametrize("option", group_options("aug"))
def test_aug_options_run_on_a_uint8_batch(make_cfg, option):
    cfg = make_cfg(f"aug={option}")
    validate(cfg)  # an option's own defaults pass its checks
    augment = instantiate(cfg.aug)
    batch = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = augment.train()(batch)
    assert out.dtype == torch.float32 and out.shape == (8, 3, 32, 32)
    assert torch.equal(augment.eval()(batch), batch.float() / 255)


MODEL_OVERRIDES = {"timm": ["model.name=resnet10t"]}


@pytest.mark.parametrize("option", group_options("model"))
def test_model_options_build_with_the_data_class_count(make_cfg, option):
    cfg = make_cfg(f"model={option}", *MODEL_OVERRIDES.get(option, []), tiny=False)
    validate(cfg)
    model = instantiate(cfg.model)(num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7)


@pytest.mark.parametrize("optim", group_options("optim"))
@pytest.mark.parametrize("sched", group_options("sched"))
def test_optim_and_sched_options_step(make_cfg, optim, sched):
    from runner.training.optim import optimizer_from_config

    cfg = make_cfg(f"optim={optim}", f"sched={sched}")
    validate(cfg)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )
    optimizer = optimizer_from_config(model, cfg.optim)
    decays = sorted(group["weight_decay"] for group in optimizer.param_groups)
    assert decays[0] == 0.0, "norm and bias parameters must not be decayed"
    scheduler = instantiate(cfg.sched)(optimizer=optimizer, total_steps=10, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(lr > 0 for lr in lrs)
    if sched in ("cosine", "onecycle", "triangle"):
        assert lrs[-1] < max(lrs), "a decaying schedule must end below its peak"


@pytest.mark.parametrize("option", group_options("loss"))
def test_loss_options_accept_hard_and_soft_targets(make_cfg, option):
    cfg = make_cfg(f"loss={option}")
    validate(cfg)  # a default of its own outside its key's check refused every run
    loss_fn = instantiate(cfg.loss)(class_counts=torch.tensor([5, 3, 2]))
    logits = torch.randn(6, 3, requires_grad=True)
    hard = torch.tensor([0, 1, 2, 0, 1, 2])
    soft = torch.nn.functional.one_hot(hard, 3).float()
    loss_hard, loss_soft = loss_fn(logits, hard), loss_fn(logits, soft)
    assert torch.allclose(loss_hard, loss_soft, atol=1e-6)
    loss_hard.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("option", group_options("sampler"))
def test_sampler_options_give_an_epoch_of_indices(make_cfg, option):
    cfg = make_cfg(f"sampler={option}")
    validate(cfg)
    labels = torch.tensor([0] * 90 + [1] * 10)
    sampler = instantiate(cfg.sampler)(labels=labels, seed=0)
    first, again = sampler.indices(3), sampler.indices(3)
    assert torch.equal(first, again), "the order must depend only on (seed, epoch)"
    assert first.shape == (100,) and int(first.max()) < 100
    assert not torch.equal(first, sampler.indices(4))


@pytest.mark.parametrize("option", group_options("logger"))
def test_logger_options_instantiate(make_cfg, option):
    cfg = make_cfg(f"logger={option}")
    validate(cfg)
    tracker = instantiate(cfg.logger)
    assert hasattr(tracker, "start") and hasattr(tracker, "finish")


def test_the_default_config_is_the_documented_one(make_cfg):
    cfg = make_cfg(tiny=False)
    assert cfg.data.name == "digits" and cfg.data.image_size == 32
    assert cfg.model.name == "resnet10t"
    assert cfg.optim._target_ == "torch.optim.AdamW"
    assert cfg.loss._target_.endswith("CrossEntropyLoss")
    assert cfg.sampler._target_.endswith("RandomSampler")
    assert cfg.logger._target_.endswith("MlflowTracker")
    assert cfg.trainer.monitor == "val/acc" and cfg.trainer.device == "auto"
    validate(cfg)


def test_validate_lists_every_problem_with_key_and_value(make_cfg):
    cfg = make_cfg("trainer.max_epochs=abc", "trainer.precision=64", "optim.lr=-1")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert "3 problems" in message
    assert "trainer.max_epochs='abc'" in message and "integer >= 1" in message
    assert "trainer.precision=64 " in message and "bf16" in message
    assert "optim.lr=-1" in message


def test_a_sweep_set_as_nested_sweeper_params_is_checked_like_a_flat_one(make_cfg):
    from omegaconf import OmegaConf, open_dict

    cfg = make_cfg("+data.num_folds=3")
    with open_dict(cfg):
        # `hydra.sweeper.params.data.fold=0,3` on the command line nests the key.
        cfg.hydra = OmegaConf.create(
            {
                "mode": "RunMode.MULTIRUN",
                "sweeper": {"params": {"data": {"fold": "0,3"}}},
                "overrides": {"task": []},
            }
        )
    with pytest.raises(ConfigError, match=r"data\.fold=3 is outside 0\.\.2"):
        validate(cfg)


def test_validate_reports_missing_values(make_cfg):
    cfg = make_cfg("model=timm", "model.name=???")
    with pytest.raises(ConfigError, match=r"model\.name is required"):
        validate(cfg)


def test_a_required_value_a_sweep_sets_is_left_to_each_job(make_cfg):
    """`-m model=timm model.name=a,b` was refused: the launching process's config holds
    `???` there, the sweep's values are in the hydra node."""
    from omegaconf import OmegaConf, open_dict

    for node in ("model.name", "+extra"):  # a checked key, and one no check knows
        cfg = make_cfg("model=timm", "model.name=???", "+extra=???")
        with open_dict(cfg):
            cfg.hydra = OmegaConf.create(
                {"mode": "RunMode.MULTIRUN", "overrides": {"task": [f"{node}=a,b"]}}
            )
        node, other = node.lstrip("+"), "extra" if node == "model.name" else "model.name"
        with pytest.raises(ConfigError) as info:
            validate(cfg)
        assert f"{other} is required" in str(info.value)
        assert f"{node} is required" not in str(info.value)


def test_data_name_of_data_hf_is_asked_for_on_the_command_line_and_may_be_swept(make_cfg):
    """conf/data/hf.yaml holds `name: ???`: a run without data.name was told to edit the
    YAML file, and `-m data=hf data.name=a.csv,b.csv` was refused the same way."""
    from omegaconf import OmegaConf, open_dict

    with pytest.raises(ConfigError) as info:
        validate(make_cfg("data=hf", tiny=False))
    assert "data.name is required (it is '???'): set it with data.name=<value>" in str(info.value)
    assert "YAML file" not in str(info.value)
    cfg = make_cfg("data=hf", tiny=False)
    with open_dict(cfg):
        cfg.hydra = OmegaConf.create(
            {"mode": "RunMode.MULTIRUN", "overrides": {"task": ["data=hf", "data.name=a,b"]}}
        )
    validate(cfg)


def test_a_sweep_over_mode_leaves_each_mode_s_needs_to_its_job(make_cfg):
    """`-m mode=eval,predict ckpt=x.pt predict.input=p` was refused as a train run's: the
    launching process's config holds the default mode."""
    from omegaconf import OmegaConf, open_dict

    cfg = make_cfg("ckpt=x.pt", "predict.input=pics")
    with open_dict(cfg):
        cfg.hydra = OmegaConf.create(
            {
                "mode": "RunMode.MULTIRUN",
                "overrides": {"task": ["mode=eval,predict", "ckpt=x.pt", "predict.input=pics"]},
            }
        )
    validate(cfg)


def test_an_unresolvable_value_of_the_sweeper_or_launcher_is_named(make_cfg):
    """Hydra builds them after the checks: `hydra.sweeper.study_name=x${x}` was a traceback."""
    from omegaconf import open_dict

    cfg = make_cfg()
    with open_dict(cfg):
        cfg.hydra = OmegaConf.create(
            {"sweeper": {"study_name": "x${x}"}, "launcher": {"partition": "${oc.env:NO_SUCH}"}}
        )
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "hydra.sweeper.study_name cannot be resolved" in str(err.value)
    assert "hydra.launcher.partition cannot be resolved" in str(err.value)


def test_validate_reports_unset_environment_variables(make_cfg, monkeypatch):
    monkeypatch.delenv("RUNNER_TEST_UNSET", raising=False)
    cfg = make_cfg("+extra=${oc.env:RUNNER_TEST_UNSET}")
    with pytest.raises(ConfigError, match="extra cannot be resolved"):
        validate(cfg)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model=resnet5", ["model/resnet5", "resnet18", "convnext_tiny"]),
        ("optim.lrr=0.1", ["lrr"]),
        ("trainer.max_epochs=abc", ["trainer.max_epochs='abc'", "integer >= 1"]),
        ("trainer.monitor_mode=maximum", ["trainer.monitor_mode='maximum'", "max, min"]),
        # It ended in five chained tracebacks that named no key.
        ("hydra.run.dir=/proc/nope", ["Error: hydra.run.dir='/proc/nope'", "cannot write in"]),
    ],
)
def test_cli_rejects_bad_config_before_creating_outputs(tmp_path, override, expected):
    result = run_cli(f"paths.output_dir={tmp_path}/outputs", override, timeout=120)
    assert result.returncode != 0
    for text in expected:
        assert text in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists(), "no output dir may be created for a bad config"


def test_readme_lists_every_option_of_every_group():
    readme = (REPO / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| ")
    }
    for group in GROUPS + OPTIONAL_GROUPS:
        assert group in rows, f"README's config table has no row for {group}"
        for option in group_options(group):
            assert f"`{option}`" in rows[group], (
                f"README does not list {group}={option}: run python scripts/gen_config_docs.py"
            )


def test_readmes_augmentation_table_lists_every_aug_preset():
    """The table of the Augmentation section is written by hand, not by the script."""
    section = (REPO / "README.md").read_text().split("## Augmentation", 1)[1].split("\n## ")[0]
    listed = sorted(line.split("`")[1] for line in section.splitlines() if line.startswith("| `"))
    assert listed == group_options("aug"), (
        "README's Augmentation table lists the presets "
        f"{listed}, conf/aug has {group_options('aug')}: add (or remove) its row"
    )


def test_cifar10_lt_experiment_composes_and_validates(make_cfg):
    cfg = make_cfg("experiment=cifar10_lt", tiny=False)
    validate(cfg)
    assert cfg.data.imbalance_ratio == 100 and cfg.trainer.max_epochs == 200
    model = instantiate(cfg.model)(num_classes=10)
    assert 0.4e6 < sum(p.numel() for p in model.parameters()) < 0.5e6, "resnet32: 0.46M"


def test_every_key_in_conf_has_a_value_check():
    """A new option's key without a check (`loss.epsilon=abc`) passed validation and failed
    at the first training step, after the run dir was made."""
    from omegaconf import DictConfig

    from runner.config.value_checks import CHECKED_ELSEWHERE, CHECKS, OPTION_KEYS

    def keys_of(node: DictConfig, prefix: str):
        for key in node:
            if key == "defaults" or str(key).startswith("_") or (not prefix and key == "hydra"):
                continue
            child = node._get_node(key)
            if isinstance(child, DictConfig) and len(child):
                yield from keys_of(child, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    unchecked = []
    for path in sorted(CONF.rglob("*.yaml")):
        where = path.relative_to(CONF)
        if where.parts[0] == "hydra":
            continue
        at_root = len(where.parts) == 1 or "@package _global_" in path.read_text()
        for key in keys_of(OmegaConf.load(path), "" if at_root else f"{where.parts[0]}."):
            if key not in CHECKS and key not in OPTION_KEYS and key not in CHECKED_ELSEWHERE:
                unchecked.append(f"{key} (conf/{where})")
    assert not unchecked, (
        f"no check for {', '.join(unchecked)}: a new key needs one in CHECKS of "
        "runner/config/value_checks.py (README 'Extending'); a misspelt one, its spelling "
        "fixed in its file"
    )
    assert set(CHECKED_ELSEWHERE).isdisjoint(CHECKS)


@pytest.mark.parametrize("group", ["data", "model", "optim", "sched", "loss", "sampler", "aug"])
def test_every_option_passes_only_arguments_its_target_takes(make_cfg, group):
    from runner.config.group_keys import unexpected_group_keys

    for option in group_options(group):
        assert unexpected_group_keys(make_cfg(f"{group}={option}", tiny=False)) == [], option


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["+optim.momentun=0.9"],
            "optim.momentun is not an argument of optim._target_='torch.optim.AdamW'",
        ),
        (
            ["experiment=cifar10_lt", "data=digits", "sched=cosine"],
            "sched.milestones is not an argument of sched._target_="
            "'runner.training.optim.cosine_schedule'",
        ),
        (["model=resnet32", "+model.name=resnet18"], "remove it with ~model.name"),
        # Not the arguments the runner passes itself (labels, seed, rank, world_size).
        (["sampler=random", "+sampler.power=1"], "RandomSampler' (it takes no keys)"),
        (["loss._target_=runner.training.losses.NoSuchLoss"], "loss._target_='runner.training"),
    ],
)
def test_a_key_the_groups_target_does_not_take_is_refused_before_any_work(
    make_cfg, overrides, expected
):
    """These once failed as a TypeError in the constructor, after data and model were built."""
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides, tiny=False))
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optim=sgd", "optim.momentum=abc"], "optim.momentum='abc' is invalid"),
        # The log said it trained on the same 128 images; limit_batches cut them to 64.
        (["debug=overfit", "trainer.limit_batches=1"], "are both set: choose one"),
        # A repeated milestone decayed twice at one step; none at all was a constant lr.
        (["sched=step", "sched.milestones=[0.5,0.5]"], "a non-empty list of distinct fractions"),
        (["sched=step", "sched.milestones=[]"], "sched.milestones=[] is invalid"),
        (["sched=triangle", "sched.start_ratio=5"], "sched.start_ratio=5 is invalid"),
        # A patch larger than the image was advised data.image_size=64 "or 64".
        (["model=vit_tiny", "model.patch_size=64"], "would see none of the image. Use data."),
        # A number where a name goes: the fix is to quote it.
        (["logger=mlflow", "logger.experiment_name=123"], "quote it (\"'123'\" in a shell)"),
        (["optim=sgd", "optim.nesterov=maybe"], "optim.nesterov='maybe' is invalid"),
        # torch refused these in the optimizer's constructor, after the data and model.
        (["optim=sgd", "optim.momentum=0"], "optim.nesterov=true needs optim.momentum > 0"),
        (["optim=sgd", "+optim.dampening=0.1"], "and optim.dampening=0 (they are 0.9 and 0.1)"),
        (["optim.betas=[0.9]"], "optim.betas=[0.9] is invalid: expected two numbers"),
        (
            ["model=resnet32", "model.depth=33"],
            "model.depth=33 is invalid: expected an integer 6n+2",
        ),
        (["model=vit_tiny", "model.patch_size=0"], "model.patch_size=0 is invalid"),
        # timm's patch embedding dropped the last 4 pixel rows and columns, silently.
        (
            ["model=vit_tiny", "model.patch_size=7"],
            "data.image_size=32 is not a multiple of model.patch_size=7: the model would never "
            "see the last 4 pixel rows and columns. Use data.image_size=28 or 35",
        ),
        (["model.drop_path_rate=2"], "model.drop_path_rate=2 is invalid"),
        (["data.std=[0,0,0]"], "data.std=[0, 0, 0] is invalid"),
        (["data.split_seed=-1"], "data.split_seed=-1 is invalid"),
        (["logger.tracking_uri=file:///tmp/store"], "MLflow's file store (a folder) is not"),
        (["logger.offline_fallback=maybe"], "logger.offline_fallback='maybe' is invalid"),
        # A server as the fallback failed with a traceback after the data and model.
        (
            ["logger=mlflow", "logger.fallback_uri=http://127.0.0.1:1"],
            "logger.fallback_uri='http://127.0.0.1:1' is invalid: expected a local store",
        ),
        (["aug.image_size=64"], "aug.image_size=64 differs from data.image_size=32"),
        # Was blamed on the model ("the model does not take these images").
        (["aug.image_size=[32,32]"], "aug.image_size=[32, 32] is invalid"),
        (
            ["experiment=throughput", "+preview_only=true"],
            "+preview_only=true draws the augmentation preview and would replace mode=throughput",
        ),
        (
            ["aug=strong", "aug.transforms.0.size=[24,24]"],
            "aug.transforms.0.size=[24, 24] differs from data.image_size=32",
        ),
        (["experiment=throughput", "throughput.batch_sizes=[1]"], "integers >= 2"),
        (["sched=onecycle", "+sched.div_factor=0"], "sched.div_factor=0 is invalid"),
        # In conf/logger/mlflow.yaml: once settable only as +logger.delivery_timeout_s.
        (["logger.delivery_timeout_s=0"], "logger.delivery_timeout_s=0 is invalid"),
        # Replaced by what the runner passes, without a word (or, -5, failed at epoch 1).
        (["+model.num_classes=5"], "model.num_classes is passed by the runner (from the data"),
        (["sampler=balanced", "+sampler.seed=123"], "sampler.seed is passed by the runner"),
        # A user's data option without the keys README's "Extending" names: OmegaConf's
        # "Key 'name' is not in struct", or the check itself failing on ${data.image_size}.
        (["~data.name"], "data.name is missing: the data option's YAML file sets it"),
        (["~data.image_size"], "data.image_size is missing: the data option's YAML file"),
        (["~data.label_noise"], "data.label_noise is missing: the data option's YAML file brings"),
        # A user's option file without `_partial_: true`: Hydra's TypeError named no cause.
        (["~model._partial_"], "model._partial_ is not true: the runner calls what model"),
        (["loss._partial_=false"], "add `_partial_: true` to the loss option's YAML file"),
        (["sampler=balanced", "+sampler.num_samples=-5"], "sampler.num_samples=-5 is invalid"),
        (
            [
                "sched._target_=torch.optim.lr_scheduler.CosineAnnealingLR",
                "~sched.warmup_epochs",
                "~sched.min_lr_ratio",
                "+sched.T_max=10",
            ],
            "does not take total_steps, steps_per_epoch, which the runner passes",
        ),
        (["data=synthetic", "data.channels=0"], "data.channels=0 is invalid"),
        (["analysis.calibration_bins=100000"], "expected an integer in 1..1000"),
        (["logger.run_name=[1,2]"], "logger.run_name=[1, 2] is invalid"),
        (["logger.experiment_name=[a,b]"], "logger.experiment_name=['a', 'b'] is invalid"),
        (["logger.artifact_location=/proc/nope/art"], "cannot write in /proc"),
        (["logger.artifact_location=file:/proc/nope/art"], "cannot write in /proc"),
        (["seed=18446744073709551616"], "seed=18446744073709551616 is invalid"),  # torch's
        (["data.label_noise=0.95", "data.noise_type=asymmetric"], "use a rate below 0.5"),
        # inf passed every bound: a non-finite loss, an OverflowError, or (power) a run
        # that trained on one class.
        (["optim.lr=inf"], "optim.lr=inf is invalid"),
        # An integer too large for a float is checked, not a crash of the finite check.
        ([f"data.label_noise={10**400}"], "data.label_noise=1000"),
        (["sched.warmup_epochs=inf"], "sched.warmup_epochs=inf is invalid"),
        (["sampler=balanced", "sampler.power=inf"], "sampler.power=inf is invalid"),
        (["loss=focal", "loss.gamma=inf"], "loss.gamma=inf is invalid"),
        # Eval resized to 3200 px: out of memory at the first validation, after an epoch.
        (["aug.eval_crop_pct=0.01"], "aug.eval_crop_pct=0.01 is invalid: expected a number in"),
        # Downloaded, then replaced by the file's tensors without a word.
        (
            ["model=tv_resnet50", "model.weights=IMAGENET1K_V2", "model.pretrained_file=w.pth"],
            "model.weights='IMAGENET1K_V2' and model.pretrained_file='w.pth' are both set",
        ),
    ],
)
def test_values_that_failed_late_or_passed_as_true_are_refused(make_cfg, overrides, expected):
    """Each once passed the checks: a crash after the data and model were built, a loss
    that was non-finite at step 1, or a string taken as true."""
    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides, tiny=False))
    assert expected in str(err.value)


def composed_as_typed(tmp_path, *overrides: str):
    """The config with its `hydra` node, which holds the overrides as typed."""
    from hydra import compose, initialize_config_dir

    typed = [f"paths.output_dir={tmp_path}", *overrides]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=typed, return_hydra_config=True)


def test_keys_preview_and_throughput_would_ignore_are_refused_and_those_they_read_taken(tmp_path):
    """`mode=preview model.name=nope_net` drew the grid and `experiment=throughput
    trainer.batch_size=64 data.channels=1` timed 3-channel batches of 32 to 256, without a
    word; only model=... was refused, by throughput itself."""
    with pytest.raises(ConfigError) as err:
        validate(composed_as_typed(tmp_path, "mode=preview", "model=resnet50", "optim.lr=0.1"))
    assert "model=resnet50 optim.lr=0.1: mode=preview draws training images" in str(err.value)
    assert "reading data, aug, seed and trainer.device only" in str(err.value)
    with pytest.raises(ConfigError, match=r"sched=cosine trainer\.max_epochs=3: mode=preview"):
        validate(
            composed_as_typed(
                tmp_path, "+preview_only=true", "sched=cosine", "trainer.max_epochs=3"
            )
        )
    read = ("aug=strong", "data=synthetic", "data.num_samples=50", "seed=3", "trainer.device=cpu")
    validate(composed_as_typed(tmp_path, "mode=preview", *read))

    throughput = ("experiment=throughput", "model=resnet32", "data.channels=1")
    with pytest.raises(ConfigError) as err:
        validate(
            composed_as_typed(tmp_path, *throughput, "trainer.batch_size=64", "sampler=balanced")
        )
    problems = str(err.value).splitlines()[1:]
    assert problems[0].startswith("  - model=resnet32: mode=throughput times the timm models")
    assert problems[1].startswith(
        "  - data.channels=1 trainer.batch_size=64 sampler=balanced: mode=throughput times "
        "synthetic batches and, of the data, sampler, sched and trainer keys, reads only "
        "data.image_size, data.num_classes, trainer.device, trainer.precision"
    )
    assert problems[1].endswith("; the batch sizes it times are throughput.batch_sizes")
    settings = ("trainer.precision=32", "trainer.channels_last=true", "trainer.compile=false")
    read = ("data.image_size=32", "data.num_classes=5", "trainer.device=cpu", *settings)
    validate(
        composed_as_typed(tmp_path, "experiment=throughput", *read, "aug=basic", "optim.lr=0.1")
    )
    # Training reads them all.
    validate(composed_as_typed(tmp_path, "model=resnet32", "sched=cosine", "trainer.batch_size=64"))


@pytest.mark.parametrize("chosen", ["hparams_search=optuna", "hydra/launcher=slurm"])
def test_a_search_or_a_launcher_without_m_is_refused_before_any_output(tmp_path, chosen):
    """Without -m, both once made one plain local run (on a cluster's login node)."""
    result = run_cli(f"paths.output_dir={tmp_path}/outputs", chosen, timeout=120)
    assert result.returncode != 0
    assert f"{chosen} " in result.stderr and "which needs -m" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_allowed_targets_given_as_one_module_name_is_that_module():
    """`allowed_targets=mylab` was read letter by letter: m, y, l, a, b."""
    from omegaconf import OmegaConf

    from runner.config.targets import untrusted_targets

    cfg = OmegaConf.create({"loss": {"_target_": "mylab.Loss"}, "allowed_targets": "mylab"})
    assert untrusted_targets(cfg) == []
    cfg.allowed_targets = "other"
    assert "allowed_targets" in untrusted_targets(cfg)[0]


def test_a_registered_model_name_mlflow_refuses_is_refused_at_start(make_cfg):
    """`team/clf` failed to register after training, three times, with exit status 0."""
    with pytest.raises(ConfigError, match=r"logger\.registered_model_name='team/clf' is invalid"):
        validate(make_cfg("logger.registered_model_name=team/clf"))
    for name in (".", "..clf"):  # MLflow reads them as paths that lead nowhere or up
        with pytest.raises(ConfigError, match=r"registered_model_name=.* is invalid"):
            validate(make_cfg(f"logger.registered_model_name='{name}'"))
    validate(make_cfg("logger.registered_model_name=clf.v2", "logger.export_model=true"))  # a name


def test_onecycle_follows_torchs_one_cycle_step_for_step():
    """Its peak came one step late and its last step stopped short of the final lr."""
    from runner.training.optim import onecycle_schedule

    lrs = {}
    for name in ("runner", "torch"):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        if name == "runner":
            scheduler = onecycle_schedule(optimizer, total_steps=20, steps_per_epoch=5)
        else:
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=0.1, total_steps=20, pct_start=0.25, cycle_momentum=False
            )
        lrs[name] = []
        for _ in range(20):
            lrs[name].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    assert lrs["runner"] == pytest.approx(lrs["torch"], rel=1e-9, abs=1e-12)


def test_a_tracking_store_that_cannot_open_is_refused_before_any_work(make_cfg, tmp_path):
    """A folder or a text file as the SQLite file, or a database without its driver,
    passed the checks: a traceback after the data and model were built (the folder after
    3.5 minutes of retries). The password stays out of the message."""
    import sqlite3

    (tmp_path / "folder.db").mkdir()
    (tmp_path / "notes.db").write_text("not a database\n")
    sqlite3.connect(tmp_path / "real.db").execute("CREATE TABLE t (x)").connection.close()
    expected = {
        f"sqlite:///{tmp_path}/folder.db": "folder.db is a folder: name a file in it",
        f"sqlite:///{tmp_path}/notes.db": "notes.db is another kind of file",
        "postgresql+nodriver://u:hunter2@host/db": "a database URL SQLAlchemy can read",
        # os.access said yes to root: a traceback once the data was built.
        "sqlite:////proc/nope/mlflow.db": "cannot write in /proc",
        "http://": "'http://' names no host",
    }
    for uri, message in expected.items():
        with pytest.raises(ConfigError) as err:
            validate(make_cfg("logger=mlflow", f"logger.tracking_uri={uri}"))
        assert message in str(err.value) and "hunter2" not in str(err.value)
    for fine in ("real.db", "empty.db", "new/mlflow.db"):
        (tmp_path / "empty.db").touch()
        validate(make_cfg("logger=mlflow", f"logger.tracking_uri=sqlite:///{tmp_path}/{fine}"))


@pytest.mark.parametrize(
    "key", sorted(__import__("runner.config.changes").config.changes.ADDED_KEYS)
)
def test_keys_added_after_runs_were_written_default_to_what_their_absence_did(make_cfg, key):
    """A resumed run from before such a key takes its listed value as no change
    (runner.config.changes.ADDED_KEYS): each option of its group that has the key must
    default to that value, and one at least must have it. A key of one option only
    (adamw's own) once failed for the options without it."""
    group = key.split(".")[0]
    absent = object()
    found = {}
    for option in group_options(group):
        cfg = make_cfg(f"{group}={option}", tiny=False)
        found[option] = OmegaConf.select(cfg, key, default=absent)
    having = {option: value for option, value in found.items() if value is not absent}
    assert having, f"no option of conf/{group}/ has {key}: remove it from ADDED_KEYS"
    wrong = {option: value for option, value in having.items() if value != ADDED_KEYS[key]}
    assert not wrong, f"{key} must default to {ADDED_KEYS[key]!r} (ADDED_KEYS) in {wrong}"


def test_a_folder_given_for_a_checkpoint_or_weights_file_is_named_with_the_file_in_it(tmp_path):
    """trainer.resume=<run dir>/checkpoints and model.pretrained_file=<that folder> were
    told "no such file" (or only what resume takes), as ckpt=<folder> no longer is."""
    from runner.config.value_checks import CHECKS
    from runner.models.weights import PretrainedWeightsError, pretrained_file_path

    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        (checkpoints / name).write_bytes(b"")
    for folder in (checkpoints.parent, checkpoints):
        assert CHECKS["trainer.resume"](str(folder)).endswith(
            f"(a folder: point at {checkpoints / 'last.pt'})"
        )
    with pytest.raises(
        PretrainedWeightsError, match=r"a folder, not a weights file \(it holds best"
    ):
        pretrained_file_path(str(checkpoints), "model.pretrained_file")
