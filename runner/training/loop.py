"""The epoch loop: train, validate, decide, checkpoint, log; until done or stopped.

`fit` runs the epochs; `decide_after_epoch` makes every end-of-epoch decision in one
small function (improved? which files? stop for pruning or patience?), so the loop itself
only acts on its answer. It updates the best-so-far record in the run's state, and its
`prune` callable reports the epoch's value to an Optuna trial.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

import torch

from runner.data.build import Loaders
from runner.data.splits import DataSplits, ids_digest
from runner.reports.console import ProgressDisplay
from runner.training import distributed, engine, startup_clock
from runner.training.best_checkpoint import BestCheckpoint
from runner.training.context import RunContext
from runner.training.metrics import build_metrics
from runner.training.parts import TrainingParts
from runner.training.signals import TrainingInterrupted
from runner.training.state import TrainState, last_payload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochDecision:
    """What to do after an epoch.

    Attributes:
        improved: The monitored value is the best so far: write best.pt.
        stop: Why training ends after this epoch's files are written: "interrupted" (a
            signal asked to stop), "non-finite" (the weights or the val loss are not
            finite under trainer.nan_policy=stop, or the weights under skip), "pruned",
            "patience"; None to go on.
    """

    improved: bool
    stop: str | None = None


def decide_after_epoch(
    state: TrainState,
    value: float,
    *,
    maximize: bool,
    patience: int | None,
    tie_break: float | None = None,
    interrupted: bool = False,
    finite: bool = True,
    stop_if_not_finite: bool = True,
    prune: Callable[[], bool] = lambda: False,
) -> EpochDecision:
    """Updates the best-so-far bookkeeping in `state` and decides what follows.

    Args:
        state: The training state after the epoch (`state.epoch` is that epoch).
        value: The epoch's monitored value.
        maximize: Whether larger values are better.
        patience: Epochs without a better monitored value before stopping; None = never.
        tie_break: The epoch's val/loss: when the monitored value ties with the best, the
            lower val/loss wins, so the tested weights are the best-trained ones (a metric
            like val/acc on a small val split ties often). None = ties keep the earlier.
            A tie won so still counts as an epoch without improvement for `patience`.
        interrupted: A signal asked the run to stop (the pruner is then not asked).
        finite: Whether the weights to save as best are finite; non-finite weights are
            never the best, however the metric came out.
        stop_if_not_finite: Whether a non-finite epoch stops the run.
        prune: Asked once per epoch whether a pruner stops the run here.

    Returns:
        Whether the epoch improved, and why training stops (None: it goes on).
    """
    tied_but_better = (
        value == state.best_value
        and tie_break is not None
        and (math.isnan(state.best_tie_break) or tie_break < state.best_tie_break)
    )
    improved = finite and (
        math.isnan(state.best_value)
        or (value > state.best_value if maximize else value < state.best_value)
        or tied_but_better
    )
    if improved:
        state.best_value, state.best_epoch = value, state.epoch
        state.best_tie_break = math.nan if tie_break is None else tie_break
    # Patience counts epochs without a better monitored value: a tie won on val/loss
    # moves best.pt, but a val/acc stuck while val/loss creeps down never stopped.
    if improved and not tied_but_better:
        state.epochs_since_best = 0
    else:
        state.epochs_since_best += 1
    # Non-finite first: a signal during the validation of a diverged epoch would save its
    # weights as last.pt, over the last good one.
    if not finite and stop_if_not_finite:
        return EpochDecision(improved, "non-finite")
    if interrupted:
        return EpochDecision(improved, "interrupted")
    if prune():
        return EpochDecision(improved, "pruned")
    if patience is not None and state.epochs_since_best >= patience:
        return EpochDecision(improved, "patience")
    return EpochDecision(improved)


def weights_finite(model: torch.nn.Module) -> bool:
    """Whether every parameter and buffer is finite (one host read, once per epoch)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([t.detach().isfinite().all() for t in tensors]).all())


def should_prune(ctx: RunContext, epoch: int, value: float) -> bool:
    """Reports the epoch's value to the sweep job's Optuna trial; True = stop (pruned)."""
    return ctx.job is not None and ctx.job.should_prune(ctx.cfg, epoch, value)


def fit(
    ctx: RunContext,
    state: TrainState,
    parts: TrainingParts,
    loaders: Loaders,
    data: DataSplits,
) -> None:
    """Trains epoch by epoch, validating, checkpointing and logging after each.

    In an Optuna sweep, each epoch's monitored value goes to the job's trial, and the
    pruner may end training early (the run is then tested and tagged `pruned=true`).

    Args:
        ctx: The run.
        state: Progress so far (fresh, or restored from last.pt).
        parts: Model, optimizer, schedule, ... as built by `build_parts`.
        loaders: The run's loaders (train and val are used here).
        data: The data set (class names and count for best.pt and the metrics).

    Raises:
        TrainingInterrupted: A signal asked to stop; last.pt holds the exact position.
    """
    trainer = ctx.cfg.trainer
    train_loader, val_loader = loaders.train, loaders.val
    autocast = engine.make_autocast(ctx.device, ctx.precision)
    train_model = distributed.wrap(parts.model, ctx.device, compile=trainer.compile)
    # Built at the first validation: torchmetrics' import (~0.8 s) need not delay step 1.
    val_metrics = None
    display = ProgressDisplay(trainer.max_epochs)
    guard = engine.NanGuard(
        trainer.nan_policy,
        trainer.max_nan_skips,
        state.nan_skips,
        finite_everywhere=distributed.finite_on_every_rank,
        first_bad_anywhere=distributed.first_bad_on_any_rank,
    )
    checkpoints = ctx.run_dir / "checkpoints"
    last = checkpoints / "last.pt"
    # Redacted, written at start.
    config_yaml = (ctx.run_dir / "config_resolved.yaml").read_text(encoding="utf-8")
    train_counts = data.class_counts().tolist()  # kept in every best.pt, for eval's groups
    patience = trainer.early_stopping_patience
    steps = engine.StepSettings.from_trainer(trainer)
    if ctx.is_main:  # everything the first step needs is built: start-up ends here
        startup_clock.finish(ctx.run_dir, ctx.tracker, step=state.global_step)
    if patience is not None and not state.partial_epoch and state.epochs_since_best >= patience:
        # A run stopped during the validation that met its patience (or rerun after it
        # stopped early) ends where the uninterrupted run ended.
        log.info(
            "early stopping: %s had not improved for %d epochs when this run last stopped",
            trainer.monitor,
            state.epochs_since_best,
        )
        return
    if state.epoch >= trainer.max_epochs and not state.partial_epoch:
        # Rerun in place, resumed from a finished last.pt elsewhere, or a job stopped
        # during its test: the test and reports are what is left to do.
        log.info(
            "nothing to train: the checkpoint this run resumed finished its %d epoch(s) "
            "(trainer.max_epochs=%d), so its best weights are tested and reported; to "
            "train more epochs instead, raise trainer.max_epochs",
            state.epoch,
            trainer.max_epochs,
        )
    for epoch in range(state.epoch + 1, trainer.max_epochs + 1):
        unfinished = None
        if state.partial_epoch:
            unfinished = distributed.rank_share(engine.EpochStats(**state.partial_epoch))
        done_before = unfinished.batches if unfinished else 0
        train_loader.set_epoch(epoch, start_batch=done_before)
        epoch_lr = parts.optimizer.param_groups[0]["lr"]  # read after the epoch, it is the next's
        if unfinished is not None and state.partial_epoch_lr is not None:
            epoch_lr = state.partial_epoch_lr  # the epoch's first step was before the stop
        display.start_epoch(
            epoch, train_loader.batches_per_epoch(), trainer.batch_size, done_before
        )
        done = engine.train_one_epoch(
            model=train_model,
            loader=train_loader,
            parts=parts,
            autocast=autocast,
            device=ctx.device,
            settings=steps,
            on_log=display.on_log,
            progress=unfinished,
            should_stop=ctx.stop.requested,
            nan_guard=guard,
            first_step=state.global_step - done_before + 1,
        )
        state.global_step += done.batches - done_before
        state.nan_skips = guard.skipped
        if not done.finished:  # a signal stopped the epoch: save where it is, and exit
            stop_within_epoch(ctx, state, parts, done, epoch, epoch_lr)
            display.end_epoch(f"stopped after batch {done.batches}; checkpoint saved")
            raise TrainingInterrupted(ctx.stop.signum)
        state.partial_epoch = state.partial_epoch_lr = None
        done = distributed.reduce_epoch(done)  # the sums of all ranks

        if val_metrics is None:
            # torchmetrics imports scipy, as mlflow does on the tracker's thread: importing
            # both at once once failed with KeyError: 'scipy'. Mostly long done by now.
            ctx.tracker.wait_connected()
            val_metrics = build_metrics(data.num_classes).to(ctx.device)
        distributed.share_buffers(parts.eval_model)  # every rank validates rank 0's weights
        val = engine.evaluate(
            model=parts.eval_model,
            loader=val_loader,
            augment=parts.augment,
            normalize=parts.normalize,
            metrics=val_metrics,
            autocast=autocast,
            device=ctx.device,
        )
        metrics = {
            "train/loss": done.loss,
            "train/acc": done.acc,
            "train/throughput": done.throughput,
            "epoch_time_s": done.seconds,
            "lr": epoch_lr,
            **{f"val/{name}": value for name, value in val.items()},
        }
        state.epoch = epoch
        state.history.append({"epoch": epoch, **metrics})
        current = metrics[trainer.monitor]
        weights_ok = weights_finite(parts.eval_model)
        decision = decide_after_epoch(
            state,
            current,
            maximize=trainer.monitor_mode == "max",
            patience=patience,
            tie_break=None if trainer.monitor == "val/loss" else metrics["val/loss"],
            interrupted=ctx.stop.requested(),  # during validation: last.pt is this epoch's
            # A NaN val loss: the weights give non-finite outputs, whatever val/acc says.
            finite=math.isfinite(val["loss"]) and weights_ok,
            # Skipping batches cannot bring non-finite weights back: every later loss is NaN.
            stop_if_not_finite=trainer.nan_policy == "stop" or not weights_ok,
            prune=partial(should_prune, ctx, epoch, current),
        )
        decision = distributed.from_main(decision)  # only rank 0 reports to a pruner
        files = {}
        if decision.improved:
            best = best_checkpoint(parts, data, epoch, metrics, config_yaml, state, train_counts)
            files[checkpoints / "best.pt"] = best.to_payload()
        if decision.stop != "non-finite":  # the last good last.pt stays
            files[last] = last_payload(state, parts)
        ctx.writer.submit(files, keep_previous={last})
        ctx.tracker.log_metrics(metrics, step=epoch)
        ctx.tracker.flush()
        display.end_epoch(
            f"train loss {done.loss:.4f} acc {done.acc:.4f} | val loss {val['loss']:.4f} "
            f"acc {val['acc']:.4f} | {done.throughput:.0f} img/s {done.seconds:.1f}s"
            + ("  *best*" if decision.improved else "")
        )
        if decision.stop is not None:
            act_on_stop(ctx, decision.stop, epoch, current)
            break  # pruned or patience: the recipe waits for the writer after fit


def stop_within_epoch(
    ctx: RunContext,
    state: TrainState,
    parts: TrainingParts,
    done: engine.EpochStats,
    epoch: int,
    epoch_lr: float,
) -> None:
    """Saves last.pt at the batch a signal stopped the epoch at, to resume it exactly.

    Raises:
        NonFiniteLossError: The weights are not finite. As at an epoch's end, diverged
            weights never replace the last good last.pt, which a resume would load and
            fail on at once, every time.
    """
    if not weights_finite(parts.model) or not weights_finite(parts.eval_model):
        ctx.writer.wait()
        raise diverged(
            ctx,
            f"non-finite weights at step {state.global_step} (epoch {epoch}), when a signal "
            "stopped the run",
            "not saved as last.pt",
        )
    state.partial_epoch = asdict(distributed.reduce_epoch(done))
    state.partial_epoch_lr = epoch_lr
    last = ctx.run_dir / "checkpoints" / "last.pt"
    ctx.writer.submit({last: last_payload(state, parts)}, keep_previous={last})
    ctx.writer.wait()


def best_checkpoint(
    parts: TrainingParts,
    data: DataSplits,
    epoch: int,
    metrics: dict[str, float],
    config_yaml: str,
    state: TrainState,
    train_counts: list[int],
) -> BestCheckpoint:
    """best.pt of this epoch: the weights to test, with what eval and predict need."""
    return BestCheckpoint(
        model=parts.eval_model.state_dict(),
        config=config_yaml,
        class_names=list(data.class_names),
        mean=parts.normalize.mean.flatten().tolist(),
        std=parts.normalize.std.flatten().tolist(),
        image_size=data.image_size,
        epoch=epoch,
        metrics=metrics,
        mlflow_run_id=state.mlflow_run_id,
        train_class_counts=train_counts,
        test_ids_digest=ids_digest(data.test.ids),
        data_channels=len(data.mean),
    )


def diverged(ctx: RunContext, found: str, kept: str) -> engine.NonFiniteLossError:
    """The error of a run whose weights diverged: what was found, what was not saved."""
    return engine.NonFiniteLossError(
        f"{found} (trainer.nan_policy={ctx.cfg.trainer.nan_policy}): training diverged; the "
        f"weights were {kept}. Lower optim.lr or set trainer.gradient_clip_val (e.g. 1.0); "
        "an optim.* or loss.* value out of its usual range diverges too"
    )


def act_on_stop(ctx: RunContext, stop: str, epoch: int, value: float) -> None:
    """Acts on an epoch's decision to stop: raises for a signal or divergence, else logs.

    Raises:
        TrainingInterrupted: `stop` is "interrupted" (last.pt holds this epoch).
        NonFiniteLossError: `stop` is "non-finite".
    """
    trainer = ctx.cfg.trainer
    if stop == "interrupted":
        ctx.writer.wait()
        raise TrainingInterrupted(ctx.stop.signum)
    if stop == "non-finite":
        ctx.writer.wait()
        raise diverged(
            ctx,
            f"non-finite weights or val loss after epoch {epoch}",
            "saved neither as best.pt nor as last.pt",
        )
    if stop == "pruned":
        log.info("pruned by Optuna after epoch %d (%s = %.4f)", epoch, trainer.monitor, value)
        ctx.tracker.set_tags({"pruned": "true"})
    elif stop == "patience":
        log.info(
            "early stopping: %s has not improved for %d epochs",
            trainer.monitor,
            trainer.early_stopping_patience,
        )
