"""Validation: reject a bad config, naming every bad key, before any compute is spent."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from runner.config import choices
from runner.config.errors import ConfigError
from runner.config.resolvers import monitor_mode_for
from runner.config.targets import untrusted_targets

# --- checks ------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 1 else "an integer >= 1"


def _optional_positive_int(value: Any) -> str | None:
    return None if value is None else _positive_int(value)


def _positive_number(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else "a number > 0"


def _non_negative_number(value: Any) -> str | None:
    return None if _is_number(value) and value >= 0 else "a number >= 0"


def _optional_positive_number(value: Any) -> str | None:
    return None if value is None else _positive_number(value)


def _fraction(value: Any) -> str | None:
    return None if _is_number(value) and 0 <= value < 1 else "a number in [0, 1)"


def _probability(value: Any) -> str | None:
    return None if _is_number(value) and 0 <= value <= 1 else "a number in [0, 1]"


def _crop_pct(value: Any) -> str | None:
    return None if _is_number(value) and 0 < value <= 1 else "a number in (0, 1], e.g. 0.875"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _integer(value: Any) -> str | None:
    return None if _is_int(value) else "an integer"


def _one_of(*options: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if str(value) in options else "one of " + ", ".join(options)

    return check


def _device(value: Any) -> str | None:
    text = str(value)
    if text in choices.DEVICES or (text.startswith("cuda:") and text[5:].isdigit()):
        return None
    return "one of " + ", ".join((*choices.DEVICES, "cuda:N"))


def _ema_decay(value: Any) -> str | None:
    if value is None or (_is_number(value) and 0 < value < 1):
        return None
    return "null (off) or a number in (0, 1), e.g. 0.999"


def _non_empty_string(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "a non-empty string"


def _model_names(value: Any) -> str | None:
    ok = (
        OmegaConf.is_list(value)
        and len(value) > 0
        and all(_non_empty_string(v) is None for v in value)
    )
    return None if ok else "a non-empty list of timm model names, e.g. [resnet18,resnet50]"


def _batch_sizes(value: Any) -> str | None:
    ok = (
        OmegaConf.is_list(value) and len(value) > 0 and all(_positive_int(v) is None for v in value)
    )
    return None if ok else "a non-empty list of integers >= 1, e.g. [32,64,128]"


def _optional_non_empty_string(value: Any) -> str | None:
    return None if value is None else _non_empty_string(value)


def _non_negative_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 0 else "an integer >= 0"


def _imbalance_ratio(value: Any) -> str | None:
    if value is None or (_is_number(value) and value >= 1):
        return None
    return "null (off) or a number >= 1 (largest / smallest class count), e.g. 100"


def _optional_share(value: Any) -> str | None:
    if value is None or (_is_number(value) and 0 < value <= 1):
        return None
    return "null (all) or a number in (0, 1]"


def _ckpt(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value):
        return None
    return "null, a checkpoint file (checkpoints/best.pt) or runs:/<mlflow run id>"


def _train_batch_size(value: Any) -> str | None:
    if _is_int(value) and value >= 2:
        return None
    return "an integer >= 2 (BatchNorm needs two samples per training batch)"


def _resume(value: Any) -> str | None:
    if value in ("auto", "never") or (isinstance(value, str) and Path(value).is_file()):
        return None
    return "auto, never, or the path of a checkpoint file (checkpoints/last.pt) that exists"


def _statistics(value: Any) -> str | None:
    """data.mean / data.std: null, or one value per channel (1 or 3), in [0, 1]."""
    if value is None:
        return None
    ok = (
        OmegaConf.is_list(value)
        and len(value) in (1, 3)
        and all(_is_number(v) and 0 <= v <= 1 for v in value)
    )
    return (
        None
        if ok
        else "null (computed from the train split) or 3 numbers in [0, 1], e.g. [0.5,0.5,0.5]"
    )


def _resident(value: Any) -> str | None:
    return None if value == "auto" or isinstance(value, bool) else "one of auto, true, false"


def _num_folds(value: Any) -> str | None:
    if value is None or (_is_int(value) and value >= 2):
        return None
    return "null (off) or an integer >= 2 (the number of folds K), e.g. 5"


def _fold(value: Any) -> str | None:
    if value is None or (_is_int(value) and value >= 0):
        return None
    return "null or an integer in 0..data.num_folds-1"


def _gce_q(value: Any) -> str | None:
    return None if _is_number(value) and 0 < value <= 1 else "a number in (0, 1], e.g. 0.7"


def csv_file_problem(path: Any, columns: tuple[str, ...]) -> str | None:
    """What is wrong with a CSV file the config names (missing, unreadable, lacks a column).

    Reads the header only, so it is cheap enough for the config checks; the data code
    (`runner.data.curation`) asks the same before it reads the rows.

    Args:
        path: The file, absolute or relative to the working directory.
        columns: Columns the header must have.

    Returns:
        None when the file is fine, else what is wrong and how to fix it.
    """
    file = Path(str(path)).expanduser()
    if not file.is_file():
        return f"no such file (relative paths start at {Path.cwd()}); give the path of a CSV file"
    try:
        with file.open(newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return f"cannot be read as CSV ({err})"
    missing = [c for c in columns if c not in header]
    if missing:
        found = ", ".join(header[:10]) or "none"
        return (
            f"has no {', '.join(missing)} column (its columns: {found}); the file needs a "
            f"header row with {', '.join(columns)}"
        )
    return None


# key -> check; a check returns None when the value is fine, else what was expected.
# Keys absent from the config are not checked (a group option may not have them).
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "seed": _integer,
    "trainer.max_epochs": _positive_int,
    "trainer.batch_size": _train_batch_size,
    "trainer.eval_batch_size": _positive_int,
    "trainer.device": _device,
    "trainer.precision": _one_of(*choices.PRECISIONS),
    "trainer.accumulate_grad_batches": _positive_int,
    "trainer.gradient_clip_val": _optional_positive_number,
    "trainer.channels_last": _boolean,
    "trainer.compile": _boolean,
    "trainer.keep_host_memory": _boolean,
    "trainer.ema_decay": _ema_decay,
    "trainer.monitor": _one_of(*choices.MONITORABLE),
    "trainer.monitor_mode": _one_of(*choices.MONITOR_MODES),
    "trainer.early_stopping_patience": _optional_positive_int,
    "trainer.log_every_n_steps": _positive_int,
    "trainer.drop_last": _boolean,
    "trainer.resume": _resume,
    "trainer.nan_policy": _one_of(*choices.NAN_POLICIES),
    "trainer.max_nan_skips": _positive_int,
    "sweep.fail_fast": _boolean,
    "sweep.resume": _optional_non_empty_string,
    "optuna.pruner": _one_of(*choices.PRUNERS),
    "optuna.pruner_startup_trials": _non_negative_int,
    "optuna.pruner_warmup_epochs": _non_negative_int,
    "optuna.study_name": _non_empty_string,
    "optuna.storage": _non_empty_string,
    "logger.registered_model_name": _optional_non_empty_string,
    "logger.system_metrics": _boolean,
    "logger.system_metrics_interval_s": _positive_number,
    "trainer.limit_batches": _optional_positive_int,
    "trainer.overfit_batches": _optional_positive_int,
    "trainer.profile": _boolean,
    "trainer.lr_scaling": _one_of(*choices.LR_SCALING),
    "optim.lr": _positive_number,
    "optim.weight_decay": _non_negative_number,
    "optim.backbone_lr_mult": _positive_number,
    "sched.warmup_epochs": _non_negative_number,
    "sched.min_lr_ratio": _fraction,
    "sched.pct_start": _fraction,
    "sched.gamma": _positive_number,
    "loss.label_smoothing": _fraction,
    "loss.gamma": _non_negative_number,
    "loss.weights": _one_of(*choices.CLASS_WEIGHTS),
    "loss.beta": _fraction,
    "data.name": _non_empty_string,
    "data.image_size": _positive_int,
    "data.mean": _statistics,
    "data.std": _statistics,
    "data.val_fraction": _fraction,
    "data.test_fraction": _fraction,
    "data.split_seed": _integer,
    "data.num_samples": _positive_int,
    "data.num_classes": _optional_positive_int,
    "data.root": _non_empty_string,
    "data.download": _boolean,
    "data.variant": _one_of(*choices.CIFAR_VARIANTS),
    "data.resident": _resident,
    "data.resident_max_gb": _positive_number,
    "data.num_workers": _non_negative_int,
    "data.on_bad_file": _one_of(*choices.ON_BAD_FILE),
    "data.cache_dir": _optional_non_empty_string,
    "data.image_key": _non_empty_string,
    "data.label_key": _non_empty_string,
    "data.split_train": _non_empty_string,
    "data.split_val": _optional_non_empty_string,
    "data.split_test": _optional_non_empty_string,
    "data.imbalance_ratio": _imbalance_ratio,
    "data.label_noise": _fraction,
    "data.noise_type": _one_of(*choices.NOISE_TYPES),
    "data.fraction": _optional_share,
    "data.samples_per_class": _optional_positive_int,
    "data.num_folds": _num_folds,
    "data.fold": _fold,
    "data.exclude": _optional_non_empty_string,
    "data.relabel": _optional_non_empty_string,
    "loss.q": _gce_q,
    "loss.alpha": _non_negative_number,
    "audit.enabled": _boolean,
    "audit.num_thumbnails": _non_negative_int,
    "model.name": _non_empty_string,
    "model.pretrained": _boolean,
    "aug.differentiable": _boolean,
    "aug.eval_crop_pct": _crop_pct,
    "aug.mixup_alpha": _non_negative_number,
    "aug.cutmix_alpha": _non_negative_number,
    "aug.mix_prob": _probability,
    "preview_only": _boolean,
    "mode": _one_of(*choices.MODES),
    "ckpt": _ckpt,
    "eval.tta": _one_of(*choices.TTA),
    "eval.data": _one_of(*choices.EVAL_DATA),
    "predict.input": _optional_non_empty_string,
    "predict.output": _optional_non_empty_string,
    "predict.topk": _positive_int,
    "predict.batch_size": _positive_int,
    "predict.tta": _one_of(*choices.TTA),
    "analysis.enabled": _boolean,
    "analysis.num_misclassified": _non_negative_int,
    "analysis.num_gradcam": _non_negative_int,
    "analysis.gradcam_layer": _non_empty_string,
    "analysis.gradcam_min_size": _positive_int,
    "analysis.calibration_bins": _positive_int,
    "throughput.models": _model_names,
    "throughput.batch_sizes": _batch_sizes,
    "throughput.warmup_steps": _non_negative_int,
    "throughput.steps": _positive_int,
}

REQUIRED_GROUPS = ("data", "aug", "model", "optim", "sched", "loss", "sampler", "logger")

# Top-level keys a config may have: the groups, the run's own settings, and the keys of
# modes and tools that are added on the command line (`+preview_only=true`).
TOP_LEVEL_KEYS = frozenset(
    {*REQUIRED_GROUPS, "trainer", "seed", "paths", "allowed_targets"}
    | {"preview_only", "throughput", "mode", "ckpt", "eval", "predict", "analysis", "sweep"}
    | {"experiment", "debug", "hparams_search", "optuna", "hydra", "audit"}
)
# Nodes whose keys are fixed: an added key there is a typo, not a new option.
CLOSED_NODES = ("trainer", "paths", "eval", "predict", "analysis", "audit")

# Keys whose meaning depends on the option chosen in their group: (key, the option's
# `_target_`) -> the check used instead of CHECKS[key] for that option.
SCE_TARGET = "runner.training.losses.SymmetricCrossEntropyLoss"
OPTION_CHECKS: dict[tuple[str, str], Callable[[Any], str | None]] = {
    # loss=sce's beta weighs the reverse cross-entropy (1.0 in Wang et al. 2019); the
    # [0, 1) check of CHECKS is for the effective-number beta of loss=balanced_ce.
    ("loss.beta", SCE_TARGET): _non_negative_number,
}


def validate(cfg: DictConfig) -> None:
    """Checks a composed config and raises one error listing every problem.

    Checks that every value resolves (no `???`, no unset `${oc.env:...}`), that the
    required groups are present, and the type and range of every known key.

    Args:
        cfg: The composed config (with or without the `hydra` node).

    Raises:
        ConfigError: Naming each bad key, its value and what is expected.
    """
    problems: list[str] = []
    for group in REQUIRED_GROUPS:
        if group not in cfg:
            problems.append(f"config group '{group}' is missing: choose one with {group}=<option>")

    for key, check in CHECKS.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            problems.append(f"{key} is required (it is '???'): set it with {key}=<value>")
            continue
        except InterpolationResolutionError as err:
            problems.append(f"{key} cannot be resolved: {err}")
            continue
        if value is None and OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue
        group_target = OmegaConf.select(cfg, f"{key.split('.')[0]}._target_", default=None)
        check = OPTION_CHECKS.get((key, str(group_target)), check)
        expected = check(value)
        if expected is not None:
            problems.append(f"{key}={value!r} is invalid: expected {expected}")

    problems.extend(_unresolvable_values(cfg))
    problems.extend(_unknown_keys(cfg))
    problems.extend(untrusted_targets(cfg))
    data_fractions = [OmegaConf.select(cfg, f"data.{k}") for k in ("val_fraction", "test_fraction")]
    if all(_is_number(f) for f in data_fractions) and sum(data_fractions) >= 1:
        problems.append(
            f"data.val_fraction + data.test_fraction = {sum(data_fractions):g} leaves no "
            "training data: keep their sum below 1"
        )
    subset = [OmegaConf.select(cfg, f"data.{k}") for k in ("fraction", "samples_per_class")]
    if all(v is not None for v in subset):
        problems.append(
            f"data.fraction={subset[0]!r} and data.samples_per_class={subset[1]!r} are both "
            "set: choose one (the other null)"
        )
    problems.extend(_monitor_problems(cfg))
    problems.extend(_mode_problems(cfg))
    problems.extend(_fold_problems(cfg))
    problems.extend(_curation_problems(cfg))
    problems.extend(_robust_loss_problems(cfg))
    if problems:
        plural = "" if len(problems) == 1 else "s"
        listing = "\n  - ".join(problems)
        raise ConfigError(f"Invalid config ({len(problems)} problem{plural}):\n  - {listing}")


def _monitor_problems(cfg: DictConfig) -> list[str]:
    """trainer.monitor_mode must be the direction in which trainer.monitor improves."""
    monitor = OmegaConf.select(cfg, "trainer.monitor", default=None)
    mode = OmegaConf.select(cfg, "trainer.monitor_mode", default=None)
    if monitor is None or mode not in choices.MONITOR_MODES:
        return []
    expected = monitor_mode_for(monitor)
    if mode == expected:
        return []
    better = "lower" if expected == "min" else "higher"
    return [
        f"trainer.monitor_mode={mode} contradicts trainer.monitor={monitor}, which is better "
        f"{better}: leave trainer.monitor_mode out (it follows the metric) or set it to "
        f"{expected}"
    ]


def _mode_problems(cfg: DictConfig) -> list[str]:
    """What eval and predict need besides well-typed keys: a checkpoint and an input."""
    mode = OmegaConf.select(cfg, "mode", default="train")
    if mode not in ("eval", "predict"):
        return []
    problems = []
    if OmegaConf.select(cfg, "ckpt", default=None) is None:
        problems.append(
            f"mode={mode} needs a checkpoint: set ckpt=<run dir>/checkpoints/best.pt "
            "or ckpt=runs:/<mlflow run id>"
        )
    if mode == "predict" and OmegaConf.select(cfg, "predict.input", default=None) is None:
        problems.append(
            "mode=predict needs images: set predict.input=<image file or folder of images>"
        )
    return problems


def _swept_values(cfg: DictConfig, key: str) -> list[Any] | None:
    """The values a multirun sweeps `key` over (command line or hydra.sweeper.params).

    In the launching process, the config Hydra validates has the sweep overrides left
    out; this reads them from the `hydra` node. None when `key` is not swept (outside a
    multirun, or a plain override, which the config holds already).
    """
    if str(OmegaConf.select(cfg, "hydra.mode", default="")) != "RunMode.MULTIRUN":
        return None
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    given = (
        [(f"{k}={v}", True) for k, v in params.items()] if isinstance(params, DictConfig) else []
    )
    tasks = OmegaConf.select(cfg, "hydra.overrides.task", default=None) or []
    given += [(str(o), False) for o in tasks]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    values = None
    for text, from_params in given:  # the last one wins, as in Hydra's basic sweeper
        if text.lstrip("+~").split("=", 1)[0] != key:
            continue
        try:
            override = parser.parse_override(text)
        except Exception:  # Hydra itself reports a malformed override
            return None
        if override.is_sweep_override():
            values = list(override.sweep_iterator())
        else:
            values = [override.value()] if from_params else None
    return values


def _fold_problems(cfg: DictConfig) -> list[str]:
    """data.fold needs data.num_folds and lies in 0..K-1; the audit needs k-fold."""
    if OmegaConf.select(cfg, "data", default=None) is None:
        return []
    folds = _swept_values(cfg, "data.num_folds")
    folds = folds if folds is not None else [OmegaConf.select(cfg, "data.num_folds", default=None)]
    fold = _swept_values(cfg, "data.fold")
    fold = fold if fold is not None else [OmegaConf.select(cfg, "data.fold", default=None)]
    problems = []
    for k, f in itertools.product(folds, fold):
        if _num_folds(k) is not None or _fold(f) is not None:
            continue  # the type checks report these
        if k is None and f is not None:
            problems.append(
                f"data.fold={f} needs data.num_folds (the number of folds K): set e.g. "
                f"data.num_folds=5, or leave data.fold out"
            )
        elif k is not None and f is None:
            problems.append(
                f"data.num_folds={k} needs data.fold=<0..{k - 1}>: run the {k} fold jobs "
                f"as python run.py -m data.num_folds={k} 'data.fold=range({k})'"
            )
        elif k is not None and not f < k:
            problems.append(
                f"data.fold={f} is outside 0..{k - 1} (data.num_folds={k}): use "
                f"'data.fold=range({k})' or a fold below {k}"
            )
    if OmegaConf.select(cfg, "audit.enabled", default=False) is True:
        if folds == [None]:
            problems.append(
                "audit.enabled=true needs k-fold jobs: run python run.py -m experiment=audit "
                "(it sets data.num_folds and sweeps data.fold)"
            )
        elif str(OmegaConf.select(cfg, "hydra.mode", default="")) == "RunMode.RUN":
            problems.append(
                "audit.enabled=true audits the K fold jobs of a sweep: add -m "
                "(python run.py -m experiment=audit), or set audit.enabled=false to run "
                "one fold job alone"
            )
    return problems


def _curation_problems(cfg: DictConfig) -> list[str]:
    """data.exclude and data.relabel name readable CSV files with the needed columns."""
    problems = []
    for key, columns in (
        ("data.exclude", ("sample_id",)),
        ("data.relabel", ("sample_id", "label")),
    ):
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, str) or not value or _swept_values(cfg, key) is not None:
            continue
        problem = csv_file_problem(value, columns)
        if problem is not None:
            problems.append(f"{key}={value!r} {problem}")
    return problems


def _robust_loss_problems(cfg: DictConfig) -> list[str]:
    """loss=sce needs a positive weight on at least one of its two terms."""
    if str(OmegaConf.select(cfg, "loss._target_", default="")) != SCE_TARGET:
        return []
    alpha, beta = (OmegaConf.select(cfg, f"loss.{k}", default=None) for k in ("alpha", "beta"))
    if _is_number(alpha) and _is_number(beta) and alpha == 0 and beta == 0:
        return ["loss.alpha=0 and loss.beta=0 leave loss=sce with no loss: make one > 0"]
    return []


def _unresolvable_values(cfg: DictConfig) -> list[str]:
    """Finds `???` values and interpolations that fail, anywhere outside `hydra`."""
    problems = []

    def walk(node: Any, prefix: str) -> None:
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for key in keys:
            path = f"{prefix}{key}" if isinstance(node, DictConfig) else f"{prefix[:-1]}[{key}]"
            if path in CHECKS or path == "hydra" or path == "paths.run_dir":
                continue
            if OmegaConf.is_missing(node, key):
                problems.append(f"{path} is required (it is '???'): set it with {path}=<value>")
                continue
            try:
                child = node[key]
            except InterpolationResolutionError as err:
                problems.append(f"{path} cannot be resolved: {err}")
                continue
            if OmegaConf.is_config(child):
                walk(child, f"{path}.")

    walk(cfg, "")
    return problems


def _unknown_keys(cfg: DictConfig) -> list[str]:
    known = {
        node: {key.split(".", 1)[1] for key in CHECKS if key.startswith(f"{node}.")}
        for node in CLOSED_NODES
    }
    known["paths"] = {"root_dir", "output_dir", "run_dir"}
    listing = ", ".join(sorted(TOP_LEVEL_KEYS - {"hydra"}))
    problems = [
        f"{key!r} is not a known top-level key (known: {listing})"
        for key in cfg
        if key not in TOP_LEVEL_KEYS
    ]
    for node in CLOSED_NODES:
        section = cfg.get(node)
        if isinstance(section, DictConfig):
            for key in section:
                if key not in known[node]:
                    problems.append(
                        f"{node}.{key} is not a known key of {node} "
                        f"(known: {', '.join(sorted(known[node]))})"
                    )
    return problems
