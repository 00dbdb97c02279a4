"""One training epoch and one evaluation pass: AMP, accumulation, clipping, EMA.

Running sums stay on the device; the host reads them only at logging intervals and at
the end of an epoch, so the loop adds no host sync per step (but one under
`trainer.nan_policy=skip`, which must know whether to step).

Under MixUp/CutMix the targets are soft, (N, C) probabilities, and every loss in
`runner.training.losses` takes them as they are. Training accuracy then counts a prediction as
right when it is the dominant class of its target (the class with the largest share),
which for an unmixed sample is simply its label.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from runner.augment.device import DeviceAugment
from runner.config.errors import UserError

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


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite and `trainer.nan_policy` says to stop."""


@dataclass
class EpochStats:
    """How far an epoch got: enough to continue it exactly after a restart.

    The sums are host numbers, read once when the epoch ends or is interrupted.
    """

    batches: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: int = 0
    seconds: float = 0.0
    finished: bool = False

    @property
    def loss(self) -> float:
        """Mean training loss so far."""
        return self.loss_sum / max(self.seen, 1)

    @property
    def acc(self) -> float:
        """Training accuracy so far."""
        return self.correct / max(self.seen, 1)

    @property
    def throughput(self) -> float:
        """Training images per second."""
        return self.seen / max(self.seconds, 1e-9)


def batch_index_of(first_bad: torch.Tensor | float) -> int:
    """The batch a first-bad-loss marker holds (-1 for none), read to the host once."""
    return int(first_bad.item() if isinstance(first_bad, torch.Tensor) else first_bad)


@dataclass
class NanGuard:
    """What to do about a non-finite loss, and how many skips are left.

    With policy "stop", the loop records the first bad step on the device and checks it
    only where it reads the host anyway (logging intervals, epoch end): no sync per
    step, and the run stops before the next checkpoint is written. With policy "skip",
    every step's loss is checked on the host (one sync per step) so that a bad batch's
    update is never applied.
    """

    policy: str = "stop"
    max_skips: int = 10
    skipped: int = 0
    # Under DDP, the ranks' verdicts combined (`rank_sync.finite_on_every_rank`,
    # `rank_sync.first_bad_on_any_rank`): a batch that one rank skips, every rank
    # skips, and a bad loss on one rank stops them all, at the same step.
    finite_everywhere: Callable[[torch.Tensor], bool] = bool
    first_bad_anywhere: Callable[[torch.Tensor | float], int] = batch_index_of


class StepParts(Protocol):
    """What a training step applies and updates (`TrainingParts` has all of it)."""

    augment: DeviceAugment
    normalize: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: nn.Module | None


@dataclass(frozen=True)
class StepSettings:
    """How batches make optimizer steps, and how often the epoch reports its progress.

    Attributes:
        accumulate_grad_batches: Batches per optimizer step.
        gradient_clip_val: Max global gradient norm; None = no clipping.
        log_every_n_steps: Interval of the `on_log` calls, in batches.
    """

    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 10

    @classmethod
    def from_trainer(cls, trainer: Any) -> StepSettings:
        """The settings of the config's `trainer` node."""
        return cls(
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            gradient_clip_val=trainer.gradient_clip_val,
            log_every_n_steps=trainer.log_every_n_steps,
        )


def train_one_epoch(
    *,
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    parts: StepParts,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    settings: StepSettings = StepSettings(),
    on_log: LogHook | None = None,
    progress: EpochStats | None = None,
    should_stop: Callable[[], bool] | None = None,
    nan_guard: NanGuard | None = None,
    first_step: int = 1,
) -> EpochStats:
    """Trains the model for one pass over `loader`, or the rest of one.

    Args:
        model: The (possibly compiled) model, in train mode.
        loader: Yields (uint8 images, int64 labels) batches; when `progress` says the
            epoch is partly done, the loader already starts after those batches.
        parts: The augmentation (uint8 batch -> augmented float images in [0, 1], then
            MixUp/CutMix with soft targets when configured), normalisation, loss of
            (logits, (N,) class ids or (N, C) probabilities), optimizer, per-step lr
            schedule (stepped after every optimizer step), gradient scaler (a
            pass-through unless precision is 16) and EMA (updated after every optimizer
            step; None = off).
        autocast: Factory of autocast contexts.
        device: Where the batches go.
        settings: Accumulation, clipping and the logging interval.
        on_log: Called at logging intervals; may read the tensors it gets.
        progress: The progress of this epoch before a restart; None = a fresh epoch.
        should_stop: Asked after every optimizer step; True ends the epoch early
            (`finished` is then False) so the caller can checkpoint and exit.
        nan_guard: Policy for non-finite losses; None = stop.
        first_step: Global number of the epoch's first batch (for error messages).

    Returns:
        The epoch's progress: sums, sample count, duration, and whether it finished.

    Raises:
        NonFiniteLossError: A non-finite loss under policy "stop", or more skips than
            the policy allows.
    """
    augment, accumulate = parts.augment, settings.accumulate_grad_batches
    model.train()
    augment.train()
    done = progress or EpochStats()
    guard = nan_guard or NanGuard()
    loss_sum = torch.full((), done.loss_sum, device=device)
    correct = torch.full((), done.correct, device=device)
    counter = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    seen = done.seen
    total = done.batches + len(loader)
    batch_index = done.batches
    start = time.perf_counter()
    window_start = True  # the next backward begins an accumulation window
    backwards = 0  # batches of the open window that went backward
    window_size = accumulate
    stopped = False
    for batch_index, (images, labels) in enumerate(loader, start=done.batches + 1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        images, targets = augment.mix(augment(images), labels)
        inputs = parts.normalize(images)
        with autocast():
            logits = model(inputs)
            loss = parts.loss_fn(logits, targets)
        finite = torch.isfinite(loss.detach())
        at_boundary = batch_index % accumulate == 0 or batch_index == total
        # An epoch's last window may be short (22 batches, accumulate 4: the last has 2):
        # its step takes the mean over the batches it has, as a full window's does.
        window_size = min(accumulate, total - (batch_index - 1) // accumulate * accumulate)
        # A skipped batch (nan_policy=skip) has no backward; the other batches of its
        # accumulation window keep their gradients and still make the window's step.
        skipped = guard.policy == "skip" and not guard.finite_everywhere(finite)
        if skipped:
            guard.skipped += 1
            if guard.skipped > guard.max_skips:
                raise NonFiniteLossError(
                    f"non-finite loss at step {first_step + batch_index - 1}: "
                    f"more than trainer.max_nan_skips={guard.max_skips} batches skipped"
                )
        else:
            counter += 1
            first_bad = torch.where(~finite & (first_bad < 0), counter, first_bad)
            if window_start:
                # Clearing right before the backward that refills the gradients (not right
                # after the step) keeps their memory with the allocator: on the CPU, freeing
                # it early hands it back to the OS and every step faults it in again.
                parts.optimizer.zero_grad(set_to_none=True)
                window_start = False
            parts.scaler.scale(loss / window_size).backward()
            backwards += 1
        if at_boundary and not window_start:
            _optimizer_step(model, parts, settings.gradient_clip_val, backwards / window_size)
            window_start, backwards = True, 0
        if not skipped:
            batch = labels.shape[0]
            seen += batch
            loss_sum += loss.detach().float() * batch
            correct += (logits.detach().argmax(-1) == dominant_class(targets)).sum()
            if on_log is not None and (
                batch_index % settings.log_every_n_steps == 0 or batch_index == total
            ):
                _raise_if_bad(guard.first_bad_anywhere(first_bad), first_step + done.batches)
                on_log(batch_index, loss_sum / seen, correct / seen)
        if at_boundary and should_stop is not None and should_stop():
            stopped = True
            break
    if not stopped and not window_start:
        # The loader gave fewer batches than its length (a streamed batch whose files all
        # failed to decode): the open accumulation window is stepped as the last one.
        _optimizer_step(model, parts, settings.gradient_clip_val, backwards / window_size)
    loss_value, correct_value, bad = torch.stack(  # one read of the host for the three
        [loss_sum.float(), correct.float(), first_bad.float()]
    ).tolist()
    _raise_if_bad(guard.first_bad_anywhere(bad), first_step + done.batches)
    return EpochStats(
        batches=batch_index,
        loss_sum=loss_value,
        correct=correct_value,
        seen=seen,
        seconds=done.seconds + time.perf_counter() - start,
        # A stop asked at the epoch's last step leaves nothing of it to do.
        finished=not stopped or batch_index == total,
    )


def _raise_if_bad(index: int, offset: int) -> None:
    """Raises when `index` (1-based batch of this call, or -1) marks a bad loss."""
    if index >= 0:
        raise NonFiniteLossError(
            f"non-finite loss at step {offset + index - 1} (trainer.nan_policy=stop): "
            "training stopped; the checkpoints written before it are untouched"
        )


def dominant_class(targets: torch.Tensor) -> torch.Tensor:
    """The class with the largest share of each target: (N,) labels stay as they are."""
    return targets.argmax(-1) if targets.ndim == 2 else targets


def _optimizer_step(
    model: nn.Module, parts: StepParts, gradient_clip_val: float | None, filled: float = 1.0
) -> None:
    """Ends an accumulation window: clip, step, then the lr schedule and the EMA.

    `filled` is the share of the window's batches that went backward: below 1 when
    nan_policy=skip left one out, whose gradients are then taken as the mean of the rest.
    """
    if filled < 1:
        for param in model.parameters():
            if param.grad is not None:
                param.grad.div_(filled)
    if gradient_clip_val is not None:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), gradient_clip_val)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update(model)


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
        extra_metrics: More metrics updated with (probabilities, labels), e.g. a
            confusion matrix; the caller reads them.
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
