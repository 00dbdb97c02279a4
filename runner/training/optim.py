"""Optimizer binding with weight-decay parameter groups, and per-step lr schedules.

Every schedule is a torch `LRScheduler` stepped once per optimizer step, built from
`(optimizer, total_steps, steps_per_epoch)` plus its own settings from conf/sched/.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from runner.config.choices import OPTIM_RUNNER_KEYS
from runner.config.errors import ConfigError
from runner.models.heads import classifier_layers

log = logging.getLogger(__name__)

# Keys of conf/optim/ that the runner uses itself rather than passing to the optimizer.
RUNNER_KEYS = OPTIM_RUNNER_KEYS


def optimizer_from_config(model: nn.Module, optim_cfg: DictConfig) -> torch.optim.Optimizer:
    """Builds the optimizer of conf/optim/ for the model (see `build_optimizer`)."""
    from hydra.utils import instantiate

    settings = OmegaConf.to_container(optim_cfg, resolve=True)
    runner_settings = {key: settings.pop(key) for key in RUNNER_KEYS if key in settings}
    return build_optimizer(
        model, instantiate(settings), settings.get("weight_decay", 0.0), **runner_settings
    )


def head_parameters(model: nn.Module) -> set[int]:
    """Ids of the classifier heads' parameters: timm's `get_classifier()`, else the last Linear."""
    try:
        return {id(p) for head in classifier_layers(model) for p in head.parameters()}
    except ValueError:  # no head: every parameter is the backbone's
        return set()


# Normalisation layers, whose parameters `optim.norm_lr_mult` scales.
NORM_LAYERS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def norm_parameters(model: nn.Module) -> set[int]:
    """Ids of the parameters of the model's normalisation layers (`NORM_LAYERS`)."""
    return {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()}


def build_optimizer(
    model: nn.Module,
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    weight_decay: float,
    backbone_lr_mult: float = 1.0,
    norm_lr_mult: float = 1.0,
    filter_bias_and_bn: bool = True,
) -> torch.optim.Optimizer:
    """Binds the optimizer to the model's trainable parameters in weight-decay groups.

    Args:
        model: The model to optimise.
        optimizer_factory: The partially built optimizer (`_partial_: true` in conf/optim).
        weight_decay: Decay of the weight matrices and kernels.
        backbone_lr_mult: The lr of everything but the classifier head, as a multiple of
            the head's (`optim.lr`); below 1 fine-tunes pretrained features gently. The
            head's groups come first, so `param_groups[0]["lr"]` is `optim.lr`'s schedule.
        norm_lr_mult: The lr of the normalisation layers' parameters, as a multiple of the
            others'. Their weight decay is divided by it, so that lr x weight decay, the
            decay a step applies, stays that of the other parameters (as airbench trains
            BatchNorm shifts).
        filter_bias_and_bn: True (timm's default): 1-D parameters (norm scales, biases)
            and the model's `no_weight_decay()` names get no decay; false decays them too.

    Returns:
        The optimizer.

    Raises:
        ConfigError: `backbone_lr_mult` is not 1 and the model has no classifier layer.
    """
    from timm.optim import param_groups_weight_decay

    if filter_bias_and_bn:
        no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        groups = param_groups_weight_decay(
            model, weight_decay=weight_decay, no_weight_decay_list=no_decay
        )
    else:
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": trainable, "weight_decay": weight_decay}]
    if backbone_lr_mult != 1.0:
        head = head_parameters(model)
        if not head:  # every parameter would take the backbone's lr, optim.lr none
            raise ConfigError(
                f"optim.backbone_lr_mult={backbone_lr_mult} needs a classifier head to tell "
                f"from the backbone, and {type(model).__name__} has no classifier layer "
                "(timm's get_classifier() or a last nn.Linear): set optim.backbone_lr_mult=1"
            )
        groups = _split_groups(groups, "backbone", lambda p: id(p) not in head)
    if norm_lr_mult != 1.0:
        norms = norm_parameters(model)
        groups = _split_groups(groups, "norm", lambda p: id(p) in norms)
        for group in groups:
            if group["norm"]:
                group["weight_decay"] = group["weight_decay"] / norm_lr_mult
    optimizer = optimizer_factory(params=groups)
    for group in optimizer.param_groups:
        if group.get("backbone"):
            group["lr"] = group["lr"] * backbone_lr_mult
        if group.get("norm"):
            group["lr"] = group["lr"] * norm_lr_mult
    return optimizer


def _split_groups(
    groups: list[dict[str, Any]], key: str, belongs: Callable[[nn.Parameter], bool]
) -> list[dict[str, Any]]:
    """Splits every group in two by `belongs`, marked with `key`; the rest come first."""
    split = []
    for marked in (False, True):
        for group in groups:
            params = [p for p in group["params"] if belongs(p) == marked]
            if params:
                split.append({**group, "params": params, key: marked})
    return split


def _warmup_steps(warmup_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    wanted = round(warmup_epochs * steps_per_epoch)
    if wanted and wanted >= total_steps:
        # A one-epoch run (debug=fast, with the default one-epoch warmup) is told quietly.
        level = logging.WARNING if total_steps > steps_per_epoch else logging.INFO
        log.log(
            level,
            "sched.warmup_epochs=%s covers the whole run (%d optimizer steps): the lr only "
            "ramps up to its peak at the last step and never decays; lower "
            "sched.warmup_epochs or raise trainer.max_epochs",
            warmup_epochs,
            total_steps,
        )
    return min(wanted, max(total_steps - 1, 0))


def _warmup_factor(step: int, warmup: int) -> float:
    # Starts at 1/(warmup+1) rather than 0 so the first step already updates the weights.
    return (step + 1) / (warmup + 1)


def load_schedule(scheduler: LRScheduler, saved: dict) -> None:
    """Continues a saved schedule at its position, with this run's base lrs.

    The saved base lrs are those of the run that saved it: scaled for its number of
    processes (`trainer.lr_scaling`), which a resume on another number changes.
    """
    own = list(scheduler.base_lrs)
    scheduler.load_state_dict(saved)
    scheduler.base_lrs = own
    for group, base_lr in zip(scheduler.optimizer.param_groups, own, strict=True):
        group["initial_lr"] = base_lr
    set_scheduled_lr(scheduler)


def set_scheduled_lr(scheduler: LRScheduler) -> None:
    """Sets each group's lr to the schedule's value at the scheduler's position.

    A resumed optimizer holds the lr of the schedule that saved it. Where this run's
    schedule differs (`trainer.max_epochs` raised on resume), the next step must take
    this schedule's lr, as every later step does. For the same schedule nothing changes.
    The project's schedules are all LambdaLR; another scheduler keeps the saved lr.
    """
    if not isinstance(scheduler, LambdaLR):
        return
    position = scheduler.last_epoch
    for group, base_lr, factor in zip(
        scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base_lr * factor(position)


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1,
    min_lr_ratio: float = 0.01,
) -> LRScheduler:
    """Linear warmup, then cosine decay from lr to `min_lr_ratio * lr`.

    Args:
        optimizer: The optimizer whose groups' lr is scaled.
        total_steps: Optimizer steps in the whole run.
        steps_per_epoch: Optimizer steps per epoch (converts warmup epochs to steps).
        warmup_epochs: Length of the linear warmup, in epochs (may be fractional).
        min_lr_ratio: Final lr as a fraction of the peak lr.

    Returns:
        The scheduler.
    """
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return _warmup_factor(step, warmup)
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def onecycle_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> LRScheduler:
    """The one-cycle lr policy (Smith & Topin, 2017) peaking at each group's lr.

    Cosine rise from lr / div_factor to lr over `pct_start` of training, then cosine
    fall to lr / (div_factor * final_div_factor). Same shape as torch's OneCycleLR
    (without its momentum cycling), but valid for runs of any length.

    Args:
        optimizer: The optimizer.
        total_steps: Optimizer steps in the whole run.
        steps_per_epoch: Unused; accepted so every schedule is bound alike.
        pct_start: Share of the run spent increasing the lr.
        div_factor: Peak lr / initial lr.
        final_div_factor: Initial lr / final lr.

    Returns:
        The scheduler.
    """
    # The peak at step pct_start * total_steps - 1 and the final lr at the last step
    # (total_steps - 1), as torch's OneCycleLR places them.
    peak = max(pct_start * total_steps - 1, 0.0)
    last = max(total_steps - 1, peak)
    start, end = 1 / div_factor, 1 / (div_factor * final_div_factor)

    def anneal(begin: float, finish: float, progress: float) -> float:
        return finish + (begin - finish) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def factor(step: int) -> float:
        if step <= peak and peak > 0:
            return anneal(start, 1.0, step / peak)
        return anneal(1.0, end, (step - peak) / (last - peak)) if last > peak else 1.0

    return LambdaLR(optimizer, factor)


def triangle_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    peak_pct: float = 0.23,
    start_ratio: float = 0.2,
    end_ratio: float = 0.07,
) -> LRScheduler:
    """airbench's schedule: linear rise to the lr over `peak_pct` of training, linear fall.

    Args:
        optimizer: The optimizer.
        total_steps: Optimizer steps in the whole run.
        steps_per_epoch: Unused; accepted so every schedule is bound alike.
        peak_pct: Share of the run before the peak.
        start_ratio: The first step's lr as a fraction of the peak lr.
        end_ratio: The lr after the last step as a fraction of the peak lr.

    Returns:
        The scheduler.
    """
    peak = int(peak_pct * total_steps)

    def factor(step: int) -> float:
        if step < peak:
            return start_ratio + (1 - start_ratio) * step / peak
        progress = min((step - peak) / max(total_steps - peak, 1), 1.0)
        return 1 + (end_ratio - 1) * progress

    return LambdaLR(optimizer, factor)


def step_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
    warmup_epochs: float = 0,
) -> LRScheduler:
    """Multiplies the lr by `gamma` at each milestone, given as fractions of training.

    Args:
        optimizer: The optimizer.
        total_steps: Optimizer steps in the whole run.
        steps_per_epoch: Optimizer steps per epoch.
        milestones: Points of decay as fractions of `total_steps`, e.g. [0.5, 0.75].
        gamma: Multiplier applied at each milestone.
        warmup_epochs: Length of a linear warmup, in epochs.

    Returns:
        The scheduler.
    """
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch, total_steps)
    boundaries = sorted(int(m * total_steps) for m in milestones)
    if boundaries and boundaries[0] < warmup:
        log.warning(
            "sched.milestones=%s: the first decay (step %d) falls inside the %d-step warmup "
            "(sched.warmup_epochs=%s), so the peak lr is never used; shorten the warmup or "
            "move the milestones later",
            list(milestones),
            boundaries[0],
            warmup,
            warmup_epochs,
        )

    def factor(step: int) -> float:
        if step < warmup:
            return _warmup_factor(step, warmup)
        return gamma ** sum(step >= b for b in boundaries)

    return LambdaLR(optimizer, factor)


def constant_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0,
) -> LRScheduler:
    """A constant lr after an optional linear warmup.

    Args:
        optimizer: The optimizer.
        total_steps: Optimizer steps in the whole run.
        steps_per_epoch: Optimizer steps per epoch.
        warmup_epochs: Length of a linear warmup, in epochs.

    Returns:
        The scheduler.
    """
    warmup = _warmup_steps(warmup_epochs, steps_per_epoch, total_steps)
    return LambdaLR(optimizer, lambda step: _warmup_factor(step, warmup) if step < warmup else 1.0)
