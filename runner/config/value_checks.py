"""What each config key may hold: one check per key, run by `validate`.

A check takes a value and returns None when it is fine, else what was expected (the
error message's "expected ..." part). `CHECKS` maps keys to checks; `OPTION_CHECKS`
overrides a key's check for one option of its group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from runner.config import choices
from runner.config.location_checks import (
    artifact_location_problem,
    fallback_uri_problem,
    tracking_uri_problem,
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (inf, from `key=inf`, passed every bound)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)  # a huge int overflows isfinite


def _positive_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 1 else "an integer >= 1"


def _optional_positive_int(value: Any) -> str | None:
    return None if value is None else _positive_int(value)


def _positive_number(value: Any) -> str | None:
    return None if is_number(value) and value > 0 else "a number > 0"


def _non_negative_number(value: Any) -> str | None:
    return None if is_number(value) and value >= 0 else "a number >= 0"


def _optional_positive_number(value: Any) -> str | None:
    return None if value is None else _positive_number(value)


def _fraction(value: Any) -> str | None:
    return None if is_number(value) and 0 <= value < 1 else "a number in [0, 1)"


def _optional_fraction(value: Any) -> str | None:
    return None if value is None else _fraction(value)


def _probability(value: Any) -> str | None:
    return None if is_number(value) and 0 <= value <= 1 else "a number in [0, 1]"


def _crop_pct(value: Any) -> str | None:
    # Eval resizes to image_size / crop_pct: 0.01 made 3200 px images of 32 px ones, and
    # the first validation ran out of memory after an epoch of training.
    return None if is_number(value) and 0.5 <= value <= 1 else "a number in [0.5, 1], e.g. 0.875"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _seed(value: Any) -> str | None:
    # torch.manual_seed's range: larger ones failed after the run dir was made.
    ok = _is_int(value) and -(2**63) <= value < 2**64
    return None if ok else "an integer from -2**63 to 2**64-1, e.g. 0"


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
    if value is None or (is_number(value) and 0 < value < 1):
        return None
    return "null (off) or a number in (0, 1), e.g. 0.999"


def _non_empty_string(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return None
    if isinstance(value, int | float):  # `name=123`: Hydra reads a number (true: a bool)
        return f"a non-empty string; to give {value} as one, quote it (\"'{value}'\" in a shell)"
    return "a non-empty string"


def _model_names(value: Any) -> str | None:
    ok = (
        OmegaConf.is_list(value)
        and len(value) > 0
        and all(_non_empty_string(v) is None for v in value)
    )
    return None if ok else "a non-empty list of timm model names, e.g. [resnet18,resnet50]"


def _batch_sizes(value: Any) -> str | None:
    ok = (
        OmegaConf.is_list(value)
        and len(value) > 0
        and all(_train_batch_size(v) is None for v in value)  # a training step: BatchNorm
    )
    return None if ok else "a non-empty list of integers >= 2, e.g. [32,64,128]"


def _milestones(value: Any) -> str | None:
    # Epoch numbers (as torch's MultiStepLR takes) would lie past the end: no decay at all.
    # An empty list was a constant lr, and a value twice decayed twice at one step.
    ok = (
        OmegaConf.is_list(value)
        and len(value) > 0
        and all(is_number(v) and 0 < v < 1 for v in value)
        and len(set(value)) == len(value)
    )
    expected = "a non-empty list of distinct fractions of training in (0, 1), e.g. [0.5, 0.75]"
    return None if ok else expected


def _int_between(low: int, high: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if _is_int(value) and low <= value <= high else f"an integer in {low}..{high}"

    return check


def _optional_non_empty_string(value: Any) -> str | None:
    return None if value is None else _non_empty_string(value)


def _non_negative_int(value: Any) -> str | None:
    return None if _is_int(value) and value >= 0 else "an integer >= 0"


def _imbalance_ratio(value: Any) -> str | None:
    if value is None or (is_number(value) and value >= 1):
        return None
    return "null (off) or a number >= 1 (largest / smallest class count), e.g. 100"


def _optional_share(value: Any) -> str | None:
    if value is None or (is_number(value) and 0 < value <= 1):
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


def _optional_train_batch_size(value: Any) -> str | None:
    return None if value is None else _train_batch_size(value)


def _resume(value: Any) -> str | None:
    if value in ("auto", "never") or (isinstance(value, str) and Path(value).is_file()):
        return None
    expected = "auto, never, or the path of a checkpoint file (checkpoints/last.pt) that exists"
    folder = Path(value).expanduser() if isinstance(value, str) else None
    if folder is None or not folder.is_dir():
        return expected
    found = [p for p in (folder / "last.pt", folder / "checkpoints" / "last.pt") if p.is_file()]
    return f"{expected} (a folder{f': point at {found[0]}' if found else ''})"


def _statistics(value: Any) -> str | None:
    """data.mean / data.std: null, or one value per channel (1 or 3), in [0, 1]."""
    if value is None:
        return None
    ok = (
        OmegaConf.is_list(value)
        and len(value) in (1, 3)
        and all(is_number(v) and 0 <= v <= 1 for v in value)
    )
    return (
        None
        if ok
        else "null (computed from the train split) or 3 numbers in [0, 1], e.g. [0.5,0.5,0.5]"
    )


def _std(value: Any) -> str | None:
    """data.std: like data.mean, and above 0 (the images are divided by it)."""
    if _statistics(value) is None and (value is None or all(v > 0 for v in value)):
        return None
    return "null (computed from the train split) or 3 numbers in (0, 1], e.g. [0.25,0.25,0.25]"


def _split_seed(value: Any) -> str | None:
    # numpy's seeds: scikit-learn's split and the data sets' own draws take no other.
    return None if _is_int(value) and 0 <= value < 2**32 else "an integer in 0..2**32-1"


def _betas(value: Any) -> str | None:
    ok = OmegaConf.is_list(value) and len(value) == 2 and all(_fraction(v) is None for v in value)
    return None if ok else "two numbers in [0, 1), e.g. [0.9,0.999]"


def _widths(value: Any) -> str | None:
    ok = OmegaConf.is_list(value) and len(value) > 0 and all(_is_int(v) and v >= 1 for v in value)
    return None if ok else "a list of integers >= 1, e.g. [64, 256, 256]"


def _cifar_depth(value: Any) -> str | None:
    ok = _is_int(value) and value >= 8 and (value - 2) % 6 == 0
    return None if ok else "an integer 6n+2 (20, 32, 44, 56, 110)"


def _model_name(value: Any) -> str | None:
    # MLflow refuses, after training, '/' and ':' in a registered model's name, and a name
    # read as a path that leads up or nowhere ('.', '..x').
    if value is None or (
        isinstance(value, str)
        and value.strip()
        and not set("/:") & set(value)
        and value != "."
        and not value.startswith("..")
    ):
        return None
    return (
        "null or a registered model name without '/' or ':', not '.' nor starting with "
        "'..', e.g. digits-classifier"
    )


def _resident(value: Any) -> str | None:
    return None if value == "auto" or isinstance(value, bool) else "one of auto, true, false"


def num_folds_problem(value: Any) -> str | None:
    """Checks data.num_folds (K)."""
    if value is None or (_is_int(value) and value >= 2):
        return None
    return "null (off) or an integer >= 2 (the number of folds K), e.g. 5"


def fold_problem(value: Any) -> str | None:
    """Checks data.fold (its range against K is checked with both keys)."""
    if value is None or (_is_int(value) and value >= 0):
        return None
    return "null or an integer in 0..data.num_folds-1"


def _gce_q(value: Any) -> str | None:
    return None if is_number(value) and 0 < value <= 1 else "a number in (0, 1], e.g. 0.7"


# key -> check; a check returns None when the value is fine, else what was expected.
# Keys absent from the config are not checked (a group option may not have them).
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "seed": _seed,
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
    "logger.tracking_uri": tracking_uri_problem,
    "logger.fallback_uri": fallback_uri_problem,
    "logger.registered_model_name": _model_name,
    "logger.experiment_name": _optional_non_empty_string,
    "logger.run_name": _optional_non_empty_string,
    "logger.artifact_location": artifact_location_problem,
    "logger.export_model": _boolean,
    "logger.offline_fallback": _boolean,
    "logger.delivery_timeout_s": _positive_number,
    "logger.system_metrics": _boolean,
    "logger.system_metrics_interval_s": _positive_number,
    "trainer.limit_batches": _optional_positive_int,
    "trainer.overfit_batches": _optional_positive_int,
    "trainer.profile": _boolean,
    "trainer.lr_scaling": _one_of(*choices.LR_SCALING),
    "optim.lr": _positive_number,
    "optim.weight_decay": _non_negative_number,
    "optim.backbone_lr_mult": _positive_number,
    "optim.norm_lr_mult": _positive_number,
    "optim.filter_bias_and_bn": _boolean,
    "optim.momentum": _fraction,
    "optim.nesterov": _boolean,
    "optim.betas": _betas,
    "optim.eps": _positive_number,
    "model.drop_rate": _optional_fraction,
    "model.drop_path_rate": _optional_fraction,
    "model.depth": _positive_int,
    "model.patch_size": _positive_int,
    "model.img_size": _positive_int,
    "model.widths": _widths,
    "model.batchnorm_momentum": _probability,
    "model.weights": _optional_non_empty_string,
    "model.pretrained_file": _optional_non_empty_string,
    "sched.warmup_epochs": _non_negative_number,
    "sched.min_lr_ratio": _fraction,
    "sched.pct_start": _fraction,
    "sched.peak_pct": _fraction,
    # Fractions of the peak lr: above 1 the "peak" was the lowest lr of the run.
    "sched.start_ratio": _probability,
    "sched.end_ratio": _probability,
    "sched.gamma": _positive_number,
    "sched.div_factor": _positive_number,
    "sched.final_div_factor": _positive_number,
    "sched.milestones": _milestones,
    # Below 0 the sampler would favour the large classes it is there to temper.
    "sampler.power": _non_negative_number,
    "loss.label_smoothing": _fraction,
    "loss.gamma": _non_negative_number,
    "loss.weights": _one_of(*choices.CLASS_WEIGHTS),
    "loss.beta": _fraction,
    "data.name": _non_empty_string,
    "data.image_size": _positive_int,
    "data.mean": _statistics,
    "data.std": _std,
    "data.val_fraction": _fraction,
    "data.test_fraction": _fraction,
    "data.split_seed": _split_seed,
    "data.num_samples": _positive_int,
    # 0 was read as the split's size; 1 gave an epoch of one batch of one sample, which
    # BatchNorm refused at the first step.
    "sampler.num_samples": _optional_train_batch_size,
    "data.channels": _positive_int,
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
    "data.split_train": _optional_non_empty_string,  # null: a held-out set (modes.py)
    "data.split_val": _optional_non_empty_string,
    "data.split_test": _optional_non_empty_string,
    "data.config_name": _optional_non_empty_string,
    "data.revision": _optional_non_empty_string,
    "data.hf_cache_dir": _optional_non_empty_string,
    "data.imbalance_ratio": _imbalance_ratio,
    "data.label_noise": _fraction,
    "data.noise_type": _one_of(*choices.NOISE_TYPES),
    "data.fraction": _optional_share,
    "data.samples_per_class": _optional_positive_int,
    "data.num_folds": num_folds_problem,
    "data.fold": fold_problem,
    "data.exclude": _optional_non_empty_string,
    "data.relabel": _optional_non_empty_string,
    "loss.q": _gce_q,
    "loss.alpha": _non_negative_number,
    "audit.enabled": _boolean,
    "audit.num_thumbnails": _non_negative_int,
    "model.name": _non_empty_string,
    "model.pretrained": _boolean,
    "aug.image_size": _optional_positive_int,
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
    # More bins than a reliability plot can show cost memory and minutes after training
    # (100,000 bins: 48 s and 2.7 GB).
    "analysis.calibration_bins": _int_between(1, 1000),
    "throughput.models": _model_names,
    "throughput.batch_sizes": _batch_sizes,
    "throughput.warmup_steps": _non_negative_int,
    "throughput.steps": _positive_int,
}

# Keys of conf/ that no check above covers, and what checks them instead. A new key of
# a config group needs a check above (or a line here): tests/config/test_config.py
# fails for one that has neither.
CHECKED_ELSEWHERE = {
    "aug.transforms": "runner.augment.checks.check_transforms builds each one",
    "allowed_targets": "runner.config.targets checks every _target_ against it",
    "optuna.trial": "the Optuna sweeper sets it for each trial",
    "paths.root_dir": "an interpolation source; the run and sweep dirs are checked",
    "paths.output_dir": "an interpolation source; the run and sweep dirs are checked",
    "paths.run_dir": "runner.config.callback checks that it can be written",
}

# Keys whose meaning depends on the option chosen in their group: (key, the option's
# `_target_`) -> the check used instead of CHECKS[key] for that option.
SCE_TARGET = "runner.training.losses.SymmetricCrossEntropyLoss"
OPTION_CHECKS: dict[tuple[str, str], Callable[[Any], str | None]] = {
    # loss=sce's beta weighs the reverse cross-entropy (1.0 in Wang et al. 2019); the
    # [0, 1) check of CHECKS is for the effective-number beta of loss=balanced_ce.
    ("loss.beta", SCE_TARGET): _non_negative_number,
    # The CIFAR ResNets stack 3 stages of (depth - 2) / 6 basic blocks.
    ("model.depth", "runner.models.cifar_resnet.cifar_resnet"): _cifar_depth,
}
OPTION_KEYS = frozenset(key for key, _ in OPTION_CHECKS)
