"""The objects training updates, built once from the config and checkpointed together."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from runner.augment.normalize import Normalize
from runner.data.splits import DataSplits
from runner.models.factories import pretrained_normalization
from runner.models.weights import keep_trained_head
from runner.training import distributed
from runner.training.optim import optimizer_from_config

log = logging.getLogger(__name__)

# Images a data-dependent initialisation sees (airbench94 whitens with 5000).
INIT_IMAGES = 5000


@dataclass
class TrainingParts:
    """Model, augmentation, normalisation, loss, optimizer, schedule, scaler and EMA."""

    model: torch.nn.Module
    augment: torch.nn.Module
    normalize: Normalize
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: torch.nn.Module | None

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights to evaluate: the EMA's when EMA is on."""
        return self.ema.module if self.ema is not None else self.model


def build_parts(
    cfg: DictConfig,
    data: DataSplits,
    augment: torch.nn.Module,
    device: torch.device,
    precision: str,
    batches_per_epoch: int,
) -> TrainingParts:
    """Builds the model, loss, optimizer, schedule, scaler and EMA that `cfg` names.

    Args:
        cfg: The composed config (its model, optim, sched, loss and trainer nodes).
        data: The data set (class count, train class counts, fallback mean/std).
        augment: The run's augmentation, already on `device`.
        device: Where the model goes.
        precision: The resolved precision; "16" turns the gradient scaler on.
        batches_per_epoch: Training batches per epoch (the schedule's length).
    """
    trainer = cfg.trainer
    memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
    model = instantiate(cfg.model)(num_classes=data.num_classes)
    # Fine-tuning an earlier run of the same classes keeps its trained classifier.
    keep_trained_head(model, cfg.model.get("pretrained_file"), data.class_names)
    model = model.to(device, memory_format=memory_format)
    log.info(
        "model %s: %.2fM parameters",
        cfg.model.get("name", cfg.model._target_),
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    optimizer = optimizer_from_config(model, cfg.optim)
    distributed.scale_lr(optimizer, trainer.lr_scaling, distributed.world_size_now())
    steps_per_epoch = math.ceil(batches_per_epoch / trainer.accumulate_grad_batches)
    scheduler = instantiate(cfg.sched)(
        optimizer=optimizer,
        total_steps=steps_per_epoch * trainer.max_epochs,
        steps_per_epoch=steps_per_epoch,
    )
    normalize = build_normalize(model, data, device, trainer.channels_last, cfg.data)
    return TrainingParts(
        model=model,
        augment=augment,
        normalize=normalize,
        loss_fn=instantiate(cfg.loss)(class_counts=data.class_counts().to(device)),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "16"),
        ema=build_ema(model, trainer.ema_decay),
    )


def build_normalize(
    model: torch.nn.Module,
    data: DataSplits,
    device: torch.device,
    channels_last: bool,
    data_cfg: Any = None,
) -> Normalize:
    """Normalisation with the pretrained weights' mean/std when pretrained, else the data's.

    A data.mean/data.std set in `data_cfg` beside pretrained weights is not used: the
    weights expect their own statistics; a warning says so.
    """
    pretrained = pretrained_normalization(model)
    given = [k for k in ("mean", "std") if data_cfg is not None and data_cfg.get(k) is not None]
    if pretrained and given:
        log.warning(
            "%s not used: the pretrained weights expect their own mean/std %s / %s, which "
            "normalise the images",
            " and ".join(f"data.{k}" for k in given),
            list(pretrained[0]),
            list(pretrained[1]),
        )
    if pretrained and len(pretrained[0]) > 1 and len(data.mean) == 1:
        log.info(
            "one-channel images go to the pretrained model as %d equal channels, as its "
            "weights expect (a timm model built with +model.in_chans=1 takes one)",
            len(pretrained[0]),
        )
    mean, std = pretrained or (data.mean, data.std)
    return Normalize(mean, std, channels_last=channels_last).to(device)


def init_from_data(
    model: torch.nn.Module, data: DataSplits, normalize: Normalize, device: torch.device
) -> None:
    """Gives a model with a data-dependent initialisation its first training images.

    A model that defines `init_from_images(images)` (airbench94's whitening filters) gets
    the first `INIT_IMAGES` train images, un-augmented and normalised as it will see
    them. Every rank takes the same images, so DDP ranks agree; a resumed run then loads
    its trained weights over the result.
    """
    init = getattr(model, "init_from_images", None)
    if not callable(init):
        return
    count = min(len(data.train), INIT_IMAGES)
    # In batches of 500, so that 5000 images of 224 px need no 3 GB at once.
    batches = (
        normalize(data.train.take(torch.arange(start, min(start + 500, count)))[0].to(device))
        for start in range(0, count, 500)
    )
    with torch.no_grad():
        init(batches)


def build_ema(model: torch.nn.Module, decay: float | None) -> torch.nn.Module | None:
    """timm's ModelEmaV3 of the model, or None when `trainer.ema_decay` is null."""
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)
