"""One training epoch and one evaluation pass: AMP, accumulation, clipping, EMA.

Running sums stay on the device; the host reads them only at logging intervals and at
the end of an epoch, so the loop adds no host sync per step.

Under MixUp/CutMix the targets are soft, (N, C) probabilities, and every loss in
`runner.losses` takes them as they are. Training accuracy then counts a prediction as
right when it is the dominant class of its target (the class with the largest share),
which for an unmixed sample is simply its label.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runner.augment import DeviceAugment

# Called at logging intervals with (step in epoch, mean loss so far, accuracy so far).
LogHook = Callable[[int, torch.Tensor, torch.Tensor], None]


def make_autocast(
    device: torch.device, precision: str
) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts for the resolved precision ("32", "bf16", "16")."""
    if precision == "32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class EpochStats:
    """What one training epoch measured (host floats, read once at its end)."""

    loss: float
    acc: float
    num_samples: int
    seconds: float
    steps: int

    @property
    def throughput(self) -> float:
        """Training images per second."""
        return self.num_samples / max(self.seconds, 1e-9)


def train_one_epoch(
    *,
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    augment: DeviceAugment,
    normalize: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    ema: nn.Module | None = None,
    accumulate_grad_batches: int = 1,
    gradient_clip_val: float | None = None,
    log_every_n_steps: int = 10,
    on_log: LogHook | None = None,
) -> EpochStats:
    """Trains the model for one pass over `loader`.

    Args:
        model: The (possibly compiled) model, in train mode.
        loader: Yields (uint8 images, int64 labels) batches.
        augment: Turns a uint8 batch into augmented float images in [0, 1], then
            mixes it (MixUp/CutMix with soft targets) when configured to.
        normalize: Per-channel normalisation (and memory format).
        loss_fn: Loss of (logits, target); the target is (N,) class ids or (N, C)
            probabilities under mixing.
        optimizer: The optimizer.
        scheduler: Per-step lr schedule, stepped after every optimizer step.
        scaler: Gradient scaler (a pass-through unless precision is 16).
        autocast: Factory of autocast contexts.
        device: Where the batches go.
        ema: timm ModelEmaV3, updated after every optimizer step; None = off.
        accumulate_grad_batches: Batches per optimizer step.
        gradient_clip_val: Max global gradient norm; None = no clipping.
        log_every_n_steps: Interval of `on_log` calls, in batches.
        on_log: Called at logging intervals; may read the tensors it gets.

    Returns:
        The epoch's mean loss, accuracy, sample count, duration and step count.
    """
    model.train()
    augment.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    steps = len(loader)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for step, (images, labels) in enumerate(loader, start=1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        images, targets = augment.mix(augment(images), labels)
        inputs = normalize(images)
        with autocast():
            logits = model(inputs)
            loss = loss_fn(logits, targets)
        scaler.scale(loss / accumulate_grad_batches).backward()
        if step % accumulate_grad_batches == 0 or step == steps:
            _optimizer_step(model, optimizer, scaler, gradient_clip_val)
            scheduler.step()
            if ema is not None:
                ema.update(model)
        batch = labels.shape[0]
        seen += batch
        loss_sum += loss.detach() * batch
        correct += (logits.detach().argmax(-1) == dominant_class(targets)).sum()
        if on_log is not None and (step % log_every_n_steps == 0 or step == steps):
            on_log(step, loss_sum / seen, correct / seen)
    loss_value, acc_value = (
        (loss_sum / max(seen, 1)).item(),
        (correct / max(seen, 1)).item(),
    )
    return EpochStats(loss_value, acc_value, seen, time.perf_counter() - start, steps)


def dominant_class(targets: torch.Tensor) -> torch.Tensor:
    """The class with the largest share of each target: (N,) labels stay as they are."""
    return targets.argmax(-1) if targets.ndim == 2 else targets


def _optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    gradient_clip_val: float | None,
) -> None:
    if gradient_clip_val is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), gradient_clip_val)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


@torch.inference_mode()
def evaluate(
    *,
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    normalize: nn.Module,
    metrics: nn.Module,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    extra_metrics: Iterable[nn.Module] = (),
    augment: nn.Module | None = None,
) -> dict[str, float]:
    """Evaluates the model: mean cross-entropy plus every metric in `metrics`.

    Args:
        model: The model (set to eval mode here).
        loader: Yields (uint8 images, int64 labels) batches in a fixed order.
        normalize: Per-channel normalisation.
        metrics: A torchmetrics MetricCollection updated with (probabilities, labels).
        autocast: Factory of autocast contexts.
        device: Where the batches go.
        extra_metrics: More metrics updated with (logits, labels), e.g. a confusion
            matrix; the caller reads them.
        augment: The training augmentation, used in eval mode: only resize and
            center-crop. None = the images go to `normalize` as they are.

    Returns:
        {"loss": ..., <metric name>: ...} as host floats.
    """
    model.eval()
    if augment is not None:
        augment.eval()
    metrics.reset()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images)
        with autocast():
            logits = model(normalize(images))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        seen += labels.shape[0]
        probabilities = logits.softmax(-1)
        metrics.update(probabilities, labels)
        for metric in extra_metrics:
            metric.update(probabilities, labels)
    results = {name: float(value) for name, value in metrics.compute().items()}
    results["loss"] = (loss_sum / max(seen, 1)).item()
    return results
