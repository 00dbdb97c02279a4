"""What eval and predict share: a run's best.pt made ready to use.

A `checkpoints/best.pt` (runner.training.best_checkpoint) carries the weights, the run's
resolved config, the class names, the normalisation and the image size, so the model is
rebuilt exactly as it was trained, with no access to the training run's files.
`ckpt=runs:/<run id>` downloads that MLflow run's logged model,
`ckpt=models:/<name>/<version>` a registered version and `ckpt=models:/<m-id>` a logged
model by its id, from the store `logger.tracking_uri` names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from torch import nn

from runner.augment.normalize import Normalize
from runner.config.choices import TRAIN_SPLIT_ONLY_KEYS
from runner.config.location_checks import ckpt_file_problem
from runner.config.modes import job_mode, override_key
from runner.config.targets import untrusted_targets
from runner.config.validation import ConfigError, validate
from runner.data import curation, folds
from runner.models.factories import TORCHVISION_TARGET, arguments_set_by_weights
from runner.tracking.null import NullTracker
from runner.tracking.run_record import group_overrides
from runner.training.best_checkpoint import BestCheckpoint, read_best
from runner.training.checkpoint_io import CheckpointError
from runner.training.context import (
    RunContext,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from runner.training.distributed import World
from runner.training.exported_model import MODEL_URI_PREFIXES, checkpoint_from_mlflow
from runner.training.preflight import check_gradcam_layer

log = logging.getLogger(__name__)

# A model config's keys that load pretrained weights, and their values that load none.
PRETRAINED_OFF = (("pretrained", False), ("pretrained_file", None), ("weights", None))


@dataclass
class LoadedCheckpoint:
    """A best.pt ready to use: its content, the training run's config, the rebuilt model.

    Attributes:
        path: The local best.pt.
        named: The checkpoint as the command named it: a `runs:/` or `models:/` URI (its
            local copy in `downloaded/` says little), else `path`.
        source_run_id: The MLflow run that trained it, when known.
        model_id: The logged MLflow model it is, when `ckpt` is a `runs:/` or `models:/`
            URI (eval looks a best.pt file's run up in the store itself).
        best: The checkpoint's content.
        stored: The training run's config (targets checked against the allowlist).
        model: The trained model, in eval mode on the device.
        augment: The training augmentation (its eval path: resize, center-crop).
        normalize: The normalisation the model was trained with.
    """

    path: Path
    named: str
    source_run_id: str | None
    model_id: str | None
    best: BestCheckpoint
    stored: DictConfig
    model: nn.Module
    augment: nn.Module
    normalize: Normalize


def start_context(cfg: DictConfig) -> RunContext:
    """Validates the config; one process, its device, precision and run dir; no tracker yet."""
    validate(cfg)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    return RunContext(cfg, device, precision, World(), run_dir, NullTracker())


def refuse_ignored_overrides(cfg: DictConfig) -> None:
    """Refuses command-line keys that eval or predict would silently ignore.

    The model and its augmentation always come from the checkpoint; the data too in
    predict, and in eval with eval.data=stored. Nor does eval read the train split that
    the real-world switches, exclude/relabel and k-fold change, nor the training groups
    but where and at what precision to compute.

    Raises:
        ConfigError: Naming the overrides and why they do not apply.
    """
    stored_parts = group_overrides("model", "aug")
    if stored_parts:
        raise ConfigError(
            f"{' '.join(stored_parts)}: mode={cfg.mode} uses the model and augmentation "
            "stored in the checkpoint and would ignore this: leave it out (they change only "
            "by training anew)"
        )
    # Of the training groups, eval and predict read where and at what precision to compute
    # (eval also its batch size); an lr or a loss typed here was ignored without a word.
    read = ("trainer.device", "trainer.precision")
    read += ("trainer.eval_batch_size",) if cfg.mode == "eval" else ()  # predict.batch_size
    unread = group_overrides("optim", "loss", "sched", "sampler") + [
        o for o in group_overrides("trainer") if override_key(o) not in read
    ]
    if unread:
        raise ConfigError(
            f"{' '.join(unread)}: mode={cfg.mode} tests the checkpoint's weights and, of the "
            f"optim, loss, sched, sampler and trainer keys, reads only {', '.join(read)}: "
            "leave it out"
        )
    data_keys = group_overrides("data")
    if data_keys and cfg.mode == "predict":
        raise ConfigError(
            f"{' '.join(data_keys)}: mode=predict reads predict.input at the checkpoint's "
            "image size and would ignore this: leave it out"
        )
    # Before the eval.data advice: adding eval.data=current would not make these apply.
    train_only = [f"data.{key}" for key in TRAIN_SPLIT_ONLY_KEYS]
    changing_train = [o for o in data_keys if override_key(o) in train_only]
    if changing_train:
        raise ConfigError(
            f"{' '.join(changing_train)}: mode=eval tests on the test split, which no "
            "real-world switch, exclude or relabel file or k-fold key changes: leave it out"
        )
    if data_keys and cfg.eval.data == "stored":
        raise ConfigError(
            f"{' '.join(data_keys)}: eval.data=stored tests on the data the checkpoint was "
            "trained on and would ignore this. Add eval.data=current to test on the command "
            "line's data"
        )


def checkpoint_precision(ctx: RunContext, stored: DictConfig) -> str:
    """The precision to test at: the training run's, unless the command sets another.

    `trainer.precision=auto` (the default) takes the stored one, so that eval gives the
    training run's own test figures; float16, which needs CUDA, becomes 32 elsewhere.
    """
    if str(ctx.cfg.trainer.precision) != "auto":
        return ctx.precision
    trained = str(OmegaConf.select(stored, "trainer.precision", default="auto"))
    cuda_only = trained == "16" and ctx.device.type != "cuda"
    precision = "32" if cuda_only else resolve_precision(trained, ctx.device)
    if precision != ctx.precision:
        log.info(
            "precision %s, as the checkpoint was trained (trainer.precision=%s); set "
            "trainer.precision to test at another",
            precision,
            trained,
        )
    return precision


def load_trained_model(ctx: RunContext) -> LoadedCheckpoint:
    """Resolves `ckpt`, reads the best.pt, checks its config and rebuilds the model."""
    given = str(ctx.cfg.ckpt)
    path, run_id, model_id = resolve_ckpt(given, ctx.cfg, ctx.run_dir / "downloaded")
    best = read_best(path)
    stored = best.stored_config()
    ctx.precision = checkpoint_precision(ctx, stored)
    without_pretrained_weights(stored)
    for part in ("model", "aug"):
        resolved_part(stored, part, path)
    allowed = tuple(ctx.cfg.get("allowed_targets") or [])
    # Only this command line's allowed_targets count: a checkpoint cannot widen them itself.
    parts = OmegaConf.create({k: stored[k] for k in ("model", "aug", "data") if k in stored})
    problems = untrusted_targets(parts, extra_allowed=allowed)
    if problems:
        raise ConfigError("the checkpoint's config is refused:\n  - " + "\n  - ".join(problems))
    num_classes = len(best.class_names)
    augment = instantiate(stored.aug, num_classes=num_classes).to(ctx.device).eval()
    warn_of_untrained_flip(ctx.cfg, augment)
    model = rebuild_model(stored, best, ctx.device)
    if job_mode(ctx.cfg) == "eval":  # predict draws no Grad-CAM: its layer is not read
        check_gradcam_layer(ctx.cfg, model)  # else found only after the test
    return LoadedCheckpoint(
        path=path,
        named=given if given.startswith(MODEL_URI_PREFIXES) else str(path),
        source_run_id=run_id or best.mlflow_run_id,
        model_id=model_id,
        best=best,
        stored=stored,
        model=model,
        augment=augment,
        normalize=Normalize(best.mean, best.std).to(ctx.device),
    )


def warn_of_untrained_flip(cfg: DictConfig, augment: nn.Module) -> None:
    """Warns when flip TTA averages in mirror images the model never trained on.

    On digits or text a mirror image is another class: flip TTA on such a model lowered
    test accuracy (0.98 to 0.90 on the default digits run), with no sign of why.
    """
    mode = job_mode(cfg)
    key = f"{mode}.tta"
    if mode not in ("eval", "predict") or OmegaConf.select(cfg, key) != "flip":
        return
    flips = getattr(augment, "flips_horizontally", None)
    if flips is None or flips():
        return
    log.warning(
        "%s=flip averages each image's logits with its mirror image's, but the checkpoint "
        "was trained without horizontal flips: where a mirror image is another class "
        "(digits, text) this lowers accuracy. Leave %s at none, or train with a preset that "
        "flips (aug=flip_crop, aug=strong)",
        key,
        key,
    )


def train_only_keys_off(data_cfg: DictConfig) -> DictConfig:
    """The stored data config without the keys that change only train and val splits.

    `data.exclude`/`relabel` and k-fold leave the test split as it is, and their files
    need not exist where eval runs.
    """
    data_cfg = data_cfg.copy()
    for key in (*curation.KEYS, *folds.KEYS):
        if key in data_cfg:
            data_cfg[key] = None
    return data_cfg


def resolved_part(stored: DictConfig, key: str, path: Path, fix: str = "") -> Any:
    """`key` of a checkpoint's config, with what it reads from the environment read now.

    A value the training run read with `${oc.env:...}` is kept as typed in its config
    (see `redacted_container`), and is read from this command's environment.

    Args:
        stored: The checkpoint's config.
        key: A dotted key (`data`, `logger.experiment_name`).
        path: The checkpoint, for the message.
        fix: Another way out, added to the message.

    Raises:
        ConfigError: A variable it reads is not set here.
    """
    try:
        node = OmegaConf.select(stored, key, default=None)
        if isinstance(node, DictConfig | ListConfig):
            OmegaConf.to_container(node, resolve=True)
        return node
    except InterpolationResolutionError as err:
        reason = str(err).splitlines()[0]
        raise ConfigError(
            f"{path}: its config's {err.full_key or key} is read from the environment "
            f"(${{oc.env:...}} as the training run typed it), and {reason}. Set that "
            f"variable as the training run had it{fix}"
        ) from None


def without_pretrained_weights(stored: DictConfig) -> None:
    """Turns off the stored model config's pretrained weights: best.pt has the trained ones.

    A torchvision model keeps the arguments its builder took from the weights
    (`arguments_set_by_weights`), so that the model built is the one trained.
    """
    model_cfg = stored.get("model")
    if model_cfg is None:
        return
    if model_cfg.get("_target_") == TORCHVISION_TARGET:
        weights = model_cfg.get("weights")
        for key, value in arguments_set_by_weights(str(model_cfg.name), weights).items():
            model_cfg.setdefault(key, value)  # one the run set itself was used as set
    for key, off in PRETRAINED_OFF:
        if key in model_cfg:
            model_cfg[key] = off


def rebuild_model(stored: DictConfig, best: BestCheckpoint, device: torch.device) -> nn.Module:
    """The trained model: its config from the checkpoint, its weights from best.pt.

    `stored`'s pretrained weights are off (`load_trained_model`): they are neither
    downloaded nor read from `model.pretrained_file`, which may not exist here.
    """
    settings = OmegaConf.to_container(stored.model, resolve=True)
    model = instantiate(settings)(num_classes=len(best.class_names))
    try:
        model.load_state_dict(best.model)
    except RuntimeError as err:
        cause = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"the weights in the checkpoint do not fit the model its config builds ({cause}): "
            "it was changed or written by other code; use the best.pt its run wrote"
        ) from err
    return model.to(device).eval()


class CheckpointSource(NamedTuple):
    """A local best.pt, and the MLflow run and logged model it came from (when known)."""

    path: Path
    run_id: str | None
    model_id: str | None


def resolve_ckpt(ckpt: str, cfg: DictConfig, download_dir: Path) -> CheckpointSource:
    """The local best.pt for `ckpt`, and the MLflow run and logged model it came from.

    Args:
        ckpt: A file path, `runs:/<run id>` (that run's logged model, or its
            checkpoints/best.pt for runs logged before models were),
            `models:/<name>/<version>` (a registered model version) or
            `models:/<logged model id>`.
        cfg: The composed config (its `logger.tracking_uri` names the MLflow store).
        download_dir: Where a downloaded checkpoint is put.

    Raises:
        CheckpointError: The file does not exist, or the URI names no run, model or
            version the store has.
    """
    if not ckpt.startswith(MODEL_URI_PREFIXES):
        problem = ckpt_file_problem(ckpt)
        if problem is not None:
            raise CheckpointError(f"ckpt={ckpt!r}: {problem}")
        return CheckpointSource(Path(ckpt).expanduser(), None, None)
    return CheckpointSource(*checkpoint_from_mlflow(ckpt, cfg, download_dir))
