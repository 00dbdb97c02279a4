"""Checks of a training run against its built data and model, before the tracked run.

What the config alone cannot tell: whether every split has samples, whether the
monitored metric exists for this class count, whether an epoch has enough steps for
the schedule and the statistics to mean something, and whether the model takes the
data's images at all.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner.config.errors import ConfigError
from runner.data.checks import require_splits
from runner.data.splits import DataSplits
from runner.reports.gradcam import GradCamError, find_gradcam_layer
from runner.training import distributed
from runner.training.metrics import TOP_K

log = logging.getLogger(__name__)

# Fewer optimizer steps per epoch than this makes per-epoch figures and schedules coarse.
FEW_STEPS = 10
# The share of the initial weights an EMA may still hold at the end of training
# (decay ** steps): more, and the weights tested are mostly untrained (at 0.999 over
# 152 steps, 86% of them: chance accuracy on digits).
EMA_INIT_LEFT = 0.1
# The losses that correct class imbalance themselves, from the train split's counts.
REBALANCING_LOSSES = (
    "runner.training.losses.BalancedCrossEntropyLoss",
    "runner.training.losses.BalancedSoftmaxLoss",
)


def check_training_data(cfg: DictConfig, data: DataSplits, batches_per_epoch: int) -> None:
    """Refuses what would fail later and says when an epoch is very short.

    Args:
        cfg: The run's config.
        data: The built splits.
        batches_per_epoch: This process's training batches per epoch (under DDP its
            share of the split: the train loader's length).

    Raises:
        DataError: A split is empty.
        ConfigError: trainer.monitor names a metric this data cannot have (top-5 of 5
            classes or fewer), or trainer.ema_decay is too slow for the run's steps.
    """
    require_splits(data, ("train", "val", "test"))
    _warn_of_a_double_correction(cfg)
    if cfg.trainer.monitor.endswith("top5") and data.num_classes <= TOP_K:
        raise ConfigError(
            f"trainer.monitor={cfg.trainer.monitor} needs more than {TOP_K} classes, and "
            f"data {data.name!r} has {data.num_classes}: monitor val/acc instead"
        )
    # A short last accumulation window is stepped too.
    steps = math.ceil(batches_per_epoch / cfg.trainer.accumulate_grad_batches)
    # trainer.limit_batches and overfit_batches (debug=fast, profile, overfit) ask for it.
    asked = cfg.trainer.get("limit_batches") or cfg.trainer.get("overfit_batches")
    decay = cfg.trainer.get("ema_decay")
    total = steps * cfg.trainer.max_epochs
    initial_left = 0.0 if decay is None or asked else decay**total
    if initial_left > EMA_INIT_LEFT:
        raise ConfigError(
            f"trainer.ema_decay={decay} would keep {initial_left:.0%} of the random initial "
            f"weights in the EMA after this run's {total} optimizer steps, and val, test and "
            f"best.pt use the EMA weights: use trainer.ema_decay <= "
            f"{EMA_INIT_LEFT ** (1 / total):.4f} or train longer (trainer.max_epochs)"
        )
    if steps < FEW_STEPS and not asked:
        # Under DDP each process takes 1/world_size of the split (padded to equal shares),
        # so a batch size advised from the whole split would still give too few steps.
        # An epoch is the sampler's draws when it sets their number (sampler.num_samples).
        drawn = cfg.get("sampler", {}).get("num_samples")
        epoch = drawn or len(data.train)
        world_size = distributed.current().world_size
        per_rank = math.ceil(epoch / world_size)
        share = f" ({per_rank} per process, {world_size} processes)" if world_size > 1 else ""
        log.warning(
            "only %d optimizer step(s) per epoch: %d train images%s%s, trainer.batch_size=%d, "
            "trainer.drop_last=%s, trainer.accumulate_grad_batches=%d. Lower "
            "trainer.batch_size (e.g. %d) for more steps per epoch",
            steps,
            epoch,
            " drawn (sampler.num_samples)" if drawn else "",
            share,
            cfg.trainer.batch_size,
            cfg.trainer.drop_last,
            cfg.trainer.accumulate_grad_batches,
            max(2, per_rank // (FEW_STEPS * cfg.trainer.accumulate_grad_batches)),
        )


def _warn_of_a_double_correction(cfg: DictConfig) -> None:
    """Warns when both the sampler and the loss correct the class imbalance."""
    sampler = cfg.get("sampler") or {}
    power = sampler.get("power", 0)
    loss = str(cfg.loss.get("_target_", ""))
    if (
        str(sampler.get("_target_", "")).endswith("WeightedClassSampler")
        and power
        and (loss in REBALANCING_LOSSES)
    ):
        log.warning(
            "the class imbalance is corrected twice: the sampler draws rare classes more "
            "often (sampler.power=%s) and the loss (%s) favours them too, so the frequent "
            "classes lose accuracy. Keep one: sampler=random, or loss=ce",
            power,
            loss.rpartition(".")[2],
        )


def check_model_takes_data(cfg: DictConfig, parts, data: DataSplits, device: torch.device) -> None:
    """Refuses, before the tracked run starts, a model that cannot take the data's images.

    Two train images go through the evaluation path (resize and centre-crop,
    normalisation, the model in eval mode, no gradients), so no weight, statistic or
    random draw of the training changes. A channel count the model was not built for,
    images too small for its architecture or a ViT built for another size fail here,
    with the keys to change, instead of at the first step.

    Raises:
        ConfigError: The forward pass fails, or gives other than one logit per class.
    """
    images, _ = data.train.take(torch.arange(min(2, len(data.train))))
    gradcam_layer = check_gradcam_layer(cfg, parts.model)
    gradcam_output: list[torch.Tensor] = []  # the named layer's output, to check it
    gradcam_hook = None
    if gradcam_layer is not None and OmegaConf.select(cfg, "analysis.num_gradcam", default=1):
        gradcam_hook = _keep_first_output(gradcam_layer, gradcam_output)
    name = cfg.model.get("name")  # the CIFAR ResNets have none: their factory names them
    model = f"model.name={name!r}" if name else str(cfg.model.get("_target_")).rsplit(".")[-1]
    what = (
        f"{model} on data {data.name!r} ({images.shape[1]} channel(s), "
        f"data.image_size={data.image_size})"
    )
    try:
        with _evaluating(parts.model, parts.augment), torch.no_grad():
            example = parts.normalize(parts.augment(images.to(device)))
            logits = parts.model(example)
    except Exception as err:
        cause = " ".join(str(err).split())[:300]
        stats = parts.normalize.mean.numel()
        if stats not in (1, images.shape[1]):  # the normalisation broadcasts the channels
            cause += (
                f"; note that the normalisation's {stats} mean/std values turn the "
                f"{images.shape[1]}-channel images into {stats}-channel ones (data.mean, "
                "data.std, or a pretrained model's own)"
            )
        raise ConfigError(
            f"{what}: the model does not take these images ({type(err).__name__}: {cause}). "
            "When the cause is their size or channel count, build the model for them (a "
            "timm model takes +model.in_chans=<channels>, a CIFAR ResNet (model=resnet32) or "
            "model=airbench94 +model.in_channels=<channels>; a ViT "
            "+model.img_size=<data.image_size>, or model.img_size=... where its group has the "
            "key, as model=vit_tiny) or change data.image_size; otherwise the cause names the "
            "model's setting"
        ) from err
    finally:
        if gradcam_hook is not None:
            gradcam_hook.remove()
    if gradcam_output and gradcam_output[0].ndim != 4:
        raise _not_a_feature_map(cfg, gradcam_output[0])
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (
        len(images),
        data.num_classes,
    ):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ConfigError(
            f"{what}: the model gives outputs of shape {shape} for {len(images)} images; "
            f"the runner needs one logit per class ({data.num_classes}). Choose a classifier "
            "whose head the runner sizes (model.num_classes comes from the data)"
        )
    check_gradcam_size(cfg, parts.model, example)


def _not_a_feature_map(cfg: DictConfig, output: torch.Tensor) -> ConfigError:
    """The refusal of a named Grad-CAM layer whose output is no (N, C, H, W) feature map."""
    return ConfigError(
        f"analysis.gradcam_layer={cfg.analysis.gradcam_layer!r} outputs a tensor of shape "
        f"{tuple(output.shape)}, not a feature map (N, C, H, W), so Grad-CAM cannot weigh "
        "it (a ViT's blocks output tokens): name a convolutional layer, use auto, or set "
        "analysis.num_gradcam=0"
    )


def check_gradcam(cfg: DictConfig, model: torch.nn.Module, example: torch.Tensor) -> None:
    """Refuses, before eval's test, Grad-CAM settings that would leave gradcam.png out.

    A named layer whose output is no feature map, or an `analysis.gradcam_min_size` that
    no feature map of the model reaches (training checks both in
    `check_model_takes_data`, within its own forward pass).

    Args:
        cfg: The command's config.
        model: The checkpoint's model.
        example: A normalised input batch of the test images.

    Raises:
        ConfigError: Naming the key, the value and the fix.
    """
    analysis = cfg.get("analysis")
    if not (analysis and analysis.enabled and analysis.num_gradcam > 0):
        return
    layer = check_gradcam_layer(cfg, model)
    if layer is None:
        check_gradcam_size(cfg, model, example)
        return
    outputs: list[torch.Tensor] = []
    hook = _keep_first_output(layer, outputs)
    try:
        with _evaluating(model), torch.no_grad():
            model(example)
    finally:
        hook.remove()
    if outputs and outputs[0].ndim != 4:
        raise _not_a_feature_map(cfg, outputs[0])


def check_gradcam_size(cfg: DictConfig, model: torch.nn.Module, example: torch.Tensor) -> None:
    """Refuses an analysis.gradcam_min_size that no feature map of the model reaches.

    With `analysis.gradcam_layer=auto` the layer is found after the test, so a size too
    big for the images was found then, and gradcam.png left out. A model without any
    feature map is left to the report, which says so.

    Args:
        cfg: The run's config.
        model: The model.
        example: A normalised input batch of the run's images.

    Raises:
        ConfigError: Naming the key, its value and the largest size the model has.
    """
    analysis = cfg.get("analysis")
    if not (analysis and analysis.enabled and analysis.num_gradcam > 0):
        return
    if analysis.gradcam_layer != "auto":
        return
    try:
        with _evaluating(model):
            find_gradcam_layer(model, example, "auto", analysis.gradcam_min_size)
    except GradCamError as err:
        if err.largest is not None:
            raise ConfigError(
                f"analysis.gradcam_min_size={analysis.gradcam_min_size}: the largest feature "
                f"map of this model for {example.shape[-2]}x{example.shape[-1]} images is "
                f"{err.largest}x{err.largest}, so Grad-CAM would find no layer after the "
                f"test. Set it to at most {err.largest}, name analysis.gradcam_layer, or set "
                "analysis.num_gradcam=0"
            ) from err


@contextlib.contextmanager
def _evaluating(*modules: torch.nn.Module) -> Iterator[None]:
    """The modules in eval mode; every submodule back in its own mode afterwards.

    A check's forward pass must change no statistic, and leave the run's modes as found.
    """
    every = [sub for module in modules for sub in module.modules()]
    modes = [sub.training for sub in every]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for sub, mode in zip(every, modes, strict=True):
            sub.training = mode


def _keep_first_output(layer: torch.nn.Module, outputs: list[torch.Tensor]) -> Any:
    """Hooks `layer` to append its first tensor output to `outputs`; returns the hook."""

    def keep(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor) and not outputs:
            outputs.append(output)

    return layer.register_forward_hook(keep)


def check_gradcam_layer(cfg: DictConfig, model: torch.nn.Module) -> torch.nn.Module | None:
    """Refuses a named analysis.gradcam_layer that is no module of `model`.

    Checked before training (or eval's test): the analysis would find it only at the end.

    Returns:
        The named layer; None with `auto` or the analysis off.

    Raises:
        ConfigError: Naming the layer and the model's top-level modules.
    """
    name = OmegaConf.select(cfg, "analysis.gradcam_layer", default="auto")
    enabled = OmegaConf.select(cfg, "analysis.enabled", default=False)
    if not enabled or name == "auto":
        return None
    modules = dict(model.named_modules())
    if name not in modules:
        children = [n for n, _ in model.named_children()]
        raise ConfigError(
            f"analysis.gradcam_layer={name!r} is not a module of this model: use auto, or a "
            f"name from model.named_modules(), e.g. {', '.join(children)}"
        )
    return modules[name]
