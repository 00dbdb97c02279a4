"""What each config key may hold: one check per key, run by `validate`.

A check takes a value and returns None when it is fine, else what was expected (the
error message's "expected ..." part). `CHECKS` maps keys to checks; `OPTION_CHECKS`
overrides a key's check for one option of its group.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from omegaconf import OmegaConf

from runner.config import choices


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


def _integer(value: Any) -> str | None:
    return None if _is_int(value) else "an integer"


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
        OmegaConf.is_list(value)
        and len(value) > 0
        and all(_train_batch_size(v) is None for v in value)  # a training step: BatchNorm
    )
    return None if ok else "a non-empty list of integers >= 2, e.g. [32,64,128]"


def _milestones(value: Any) -> str | None:
    ok = OmegaConf.is_list(value) and all(is_number(v) and 0 < v < 1 for v in value)
    # Epoch numbers (as torch's MultiStepLR takes) would lie past the end: no decay at all.
    return None if ok else "a list of fractions of training in (0, 1), e.g. [0.5, 0.75]"


def folder_problem(folder: str) -> str | None:
    """Why a folder cannot be made and written (None when it can).

    Its nearest existing folder must take a new file: `os.access` says yes to root for
    /proc and /sys, so a file is made there and removed.
    """
    existing = Path(folder).expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".probe-"):
            return None
    except OSError as err:
        return f"cannot write in {existing} ({err.strerror or err})"


def local_folder(location: str) -> str | None:
    """The folder an artifact location names: a path, or a `file:` URI's path.

    None for another URI (`s3://bucket/x`, `mlflow-artifacts:/x`, `dbfs:/x`): its store
    answers for it. A one-letter scheme is a Windows drive (`C:`), a path.
    """
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    return None if len(parsed.scheme) > 1 else location


# The module MLflow's client uploads artifacts with, and its package, by the artifact
# location's scheme.
_ARTIFACT_CLIENTS = {
    "s3": ("boto3", "boto3"),
    "gs": ("google.cloud.storage", "google-cloud-storage"),
    "wasbs": ("azure.storage.blob", "azure-storage-blob"),
    "abfss": ("azure.storage.filedatalake", "azure-storage-file-datalake"),
}


def _artifact_location(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        return "a folder path or URI, or null"
    client, package = _ARTIFACT_CLIENTS.get(urlparse(value).scheme, (None, None))
    if client is not None and not _importable(client):
        # Else each upload failed as an unreachable store: the run trained to its end and
        # stayed RUNNING in MLflow, its metrics queued behind the model.
        return (
            f"an artifact store whose client is installed: {value.partition(':')[0]}:// needs "
            f"the Python module {client} (pip install {package})"
        )
    folder = local_folder(value)
    problem = None if folder is None else folder_problem(folder)
    return None if problem is None else f"a folder that can be written ({problem})"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (google.cloud) is missing
        return False


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
    return "auto, never, or the path of a checkpoint file (checkpoints/last.pt) that exists"


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


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for a server or another store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///"))


def _tracking_uri(value: Any) -> str | None:
    """A server URL, or a `sqlite:///` file whose folder exists or can be made."""
    expected = "a tracking URI: sqlite:///<path>/mlflow.db or a server URL (http://host:5000)"
    if not isinstance(value, str) or not value:
        return expected
    if value.startswith("file:") or ("://" not in value and value != "databricks"):
        # MLflow 3 keeps its file store in maintenance mode and refuses to open one.
        return expected + "; MLflow's file store (a folder) is not supported"
    database = sqlite_path(value)
    if database is None:
        return _database_driver_problem(value)
    database = database.expanduser().absolute()
    if database.is_dir():
        return f"a SQLite file, but {database} is a folder: name a file in it (.../mlflow.db)"
    if database.is_file() and database.stat().st_size:
        with database.open("rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":  # every SQLite file's first bytes
                return f"a SQLite file, but {database} is another kind of file: choose another path"
    existing = next(folder for folder in database.parents if folder.exists())
    if not existing.is_dir():
        return (
            f"a SQLite file in a folder that can be made, but {existing} is a file: "
            "choose another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"a SQLite file in a folder you can write to, but {existing} is not writable"
    return None


# The SQL databases MLflow keeps a tracking store in, besides SQLite (a URL's scheme,
# before any `+driver`).
_DATABASES = ("postgresql", "mysql", "mssql")


def _database_driver_problem(uri: str) -> str | None:
    """Why SQLAlchemy cannot open a database URL here: its driver module is missing."""
    if uri.partition("://")[0].partition("+")[0] not in _DATABASES:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError) as err:
        return f"a database URL SQLAlchemy can read ({err})"
    except ImportError as err:
        return (
            f"a database whose driver is installed; {err}: install that module, or name "
            "an installed driver in the URL (postgresql+psycopg2://...)"
        )
    return None


def _fallback_uri(value: Any) -> str | None:
    """The store a run falls back to when its server is away: a local SQLite file."""
    if value is None:
        return None
    if not isinstance(value, str) or sqlite_path(value) is None:
        # A server there failed late, with a traceback, once the data and model were built.
        return "a local store, sqlite:///<path>/mlflow.db, that needs no server (or null)"
    return _tracking_uri(value)


def csv_header(path: Any) -> list[str]:
    """The column names of a CSV file (its first row, names stripped); [] for an empty file.

    Read as UTF-8 with an optional byte-order mark, which spreadsheets write first.
    """
    with Path(str(path)).expanduser().open(newline="", encoding="utf-8-sig") as handle:
        return [name.strip() for name in next(csv.reader(handle), [])]


def csv_file_problem(path: Any, columns: tuple[tuple[str, ...], ...]) -> str | None:
    """What is wrong with a CSV file the config names (missing, unreadable, lacks a column).

    Reads the header only, so it is cheap enough for the config checks; the data code
    (`runner.data.curation`) asks the same before it reads the rows.

    Args:
        path: The file, absolute or relative to the working directory.
        columns: Columns the header must have, each as a tuple of names any one of
            which will do (`CURATION_COLUMNS`).

    Returns:
        None when the file is fine, else what is wrong and how to fix it.
    """
    file = Path(str(path)).expanduser()
    if file.is_dir():
        return "is a folder; give the path of a CSV file in it"
    if not file.is_file():
        return f"no such file (relative paths start at {Path.cwd()}); give the path of a CSV file"
    try:
        header = csv_header(file)
    except UnicodeDecodeError as err:
        return f"is not UTF-8 text ({err}); save it as UTF-8 CSV"
    except (OSError, csv.Error) as err:
        return f"cannot be read as CSV ({err}); give a CSV file with a header row"
    missing = [" or ".join(names) for names in columns if not set(names) & set(header)]
    if missing:
        found = ", ".join(header[:10]) or "none"
        needed = ", ".join(
            names[0] + (f" (or {' or '.join(names[1:])})" if names[1:] else "") for names in columns
        )
        return (
            f"has no {' and no '.join(missing)} column (its columns: {found}); the file "
            f"needs a header row with {needed}"
        )
    return None


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
    "logger.tracking_uri": _tracking_uri,
    "logger.fallback_uri": _fallback_uri,
    "logger.registered_model_name": _model_name,
    "logger.experiment_name": _optional_non_empty_string,
    "logger.run_name": _optional_non_empty_string,
    "logger.artifact_location": _artifact_location,
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
    "sched.warmup_epochs": _non_negative_number,
    "sched.min_lr_ratio": _fraction,
    "sched.pct_start": _fraction,
    "sched.peak_pct": _fraction,
    "sched.start_ratio": _non_negative_number,
    "sched.end_ratio": _non_negative_number,
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
    "data.split_train": _non_empty_string,
    "data.split_val": _optional_non_empty_string,
    "data.split_test": _optional_non_empty_string,
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

# The columns the files of data.exclude and data.relabel need (checked at start, read
# when the data is built), each a tuple of names of which the first present is read: a
# relabel file's labels are its `label` column, else the `suggested_label` of an audit's
# label_issues.csv.
CURATION_COLUMNS = {
    "data.exclude": (("sample_id",),),
    "data.relabel": (("sample_id",), ("label", "suggested_label")),
}
