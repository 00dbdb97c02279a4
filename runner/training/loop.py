"""The epoch loop: train, validate, decide, checkpoint, log; until done or stopped.

`fit` runs the epochs, each as `EpochLoop`'s steps: train, validate, decide (with
runner/training/decision.py), save and log.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from functools import partial

import torch
from omegaconf import DictConfig

from runner.data.build import Loaders
from runner.data.splits import DataSplits, ids_digest
from runner.reports.console import ProgressDisplay
from runner.training import distributed, engine, rank_sync, startup_clock
from runner.training.best_checkpoint import BestCheckpoint
from runner.training.context import RunContext
from runner.training.decision import EpochDecision, decide_after_epoch
from runner.training.metrics import build_metrics
from runner.training.parts import TrainingParts
from runner.training.signals import TrainingInterrupted
from runner.training.state import TrainState, last_payload

log = logging.getLogger(__name__)


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
    epochs = EpochLoop(ctx, state, parts, loaders, data)
    if ctx.is_main:  # everything the first step needs is built: start-up ends here
        startup_clock.finish(ctx.run_dir, ctx.tracker, step=state.global_step)
    if ended_before(state, trainer):
        return
    for epoch in range(state.epoch + 1, trainer.max_epochs + 1):
        done, epoch_lr = epochs.train(epoch)
        metrics = epochs.validate(done, epoch_lr)
        state.epoch = epoch
        state.history.append({"epoch": epoch, **metrics})
        decision = epochs.decide(metrics)
        epochs.save_and_log(metrics, decision, done)
        if decision.stop is not None:
            act_on_stop(ctx, decision.stop, epoch, metrics[trainer.monitor])
            break  # pruned or patience: the recipe waits for the writer after fit


def ended_before(state: TrainState, trainer: DictConfig) -> bool:
    """Whether the run resumed has no epoch left to train, and says why.

    Its best weights are then tested and reported, as after the last epoch.
    """
    patience = trainer.early_stopping_patience
    if patience is not None and not state.partial_epoch and state.epochs_since_best >= patience:
        # A run stopped during the validation that met its patience (or rerun after it
        # stopped early) ends where the uninterrupted run ended.
        log.info(
            "early stopping: %s had not improved for %d epochs when this run last stopped",
            trainer.monitor,
            state.epochs_since_best,
        )
        return True
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
        return True
    return False


class EpochLoop:
    """The steps of one epoch of `fit`, and what they share from epoch to epoch.

    Args:
        ctx: The run.
        state: Progress so far; each step updates it.
        parts: Model, optimizer, schedule, ... as built by `build_parts`.
        loaders: The run's loaders (train and val are used here).
        data: The data set (class names and count for best.pt and the metrics).
    """

    def __init__(
        self,
        ctx: RunContext,
        state: TrainState,
        parts: TrainingParts,
        loaders: Loaders,
        data: DataSplits,
    ):
        trainer = ctx.cfg.trainer
        self.ctx, self.state, self.parts, self.data = ctx, state, parts, data
        self.train_loader, self.val_loader = loaders.train, loaders.val
        self.autocast = engine.make_autocast(ctx.device, ctx.precision)
        self.train_model = distributed.wrap(parts.model, ctx.device, compile=trainer.compile)
        # Built at the first validation: torchmetrics' import (~0.8 s) need not delay step 1.
        self.val_metrics: torch.nn.Module | None = None
        self.display = ProgressDisplay(trainer.max_epochs)
        self.guard = engine.NanGuard(
            trainer.nan_policy,
            trainer.max_nan_skips,
            state.nan_skips,
            finite_everywhere=rank_sync.finite_on_every_rank,
            first_bad_anywhere=rank_sync.first_bad_on_any_rank,
        )
        self.steps = engine.StepSettings.from_trainer(trainer)
        self.checkpoints = ctx.run_dir / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        # Redacted, written at start.
        self.config_yaml = (ctx.run_dir / "config_resolved.yaml").read_text(encoding="utf-8")
        self.train_counts = data.class_counts().tolist()  # kept in every best.pt, for eval

    def train(self, epoch: int) -> tuple[engine.EpochStats, float]:
        """Trains epoch `epoch`, or the rest of it after a stop.

        Returns:
            The epoch's sums over all ranks, and its learning rate.

        Raises:
            TrainingInterrupted: A signal stopped the epoch; last.pt holds its position.
        """
        ctx, state, parts = self.ctx, self.state, self.parts
        unfinished = None
        if state.partial_epoch:
            unfinished = rank_sync.rank_share(engine.EpochStats(**state.partial_epoch))
        done_before = unfinished.batches if unfinished else 0
        self.train_loader.set_epoch(epoch, start_batch=done_before)
        epoch_lr = parts.optimizer.param_groups[0]["lr"]  # read after the epoch, it is the next's
        if unfinished is not None and state.partial_epoch_lr is not None:
            epoch_lr = state.partial_epoch_lr  # the epoch's first step was before the stop
        self.display.start_epoch(
            epoch, self.train_loader.batches_per_epoch(), ctx.cfg.trainer.batch_size, done_before
        )
        done = engine.train_one_epoch(
            model=self.train_model,
            loader=self.train_loader,
            parts=parts,
            autocast=self.autocast,
            device=ctx.device,
            settings=self.steps,
            on_log=self.display.on_log,
            progress=unfinished,
            should_stop=ctx.stop.requested,
            nan_guard=self.guard,
            first_step=state.global_step - done_before + 1,
        )
        state.global_step += done.batches - done_before
        state.nan_skips = self.guard.skipped
        if not done.finished:  # a signal stopped the epoch: save where it is, and exit
            self.save_stopped_epoch(done, epoch, epoch_lr)
            self.display.end_epoch(f"stopped after batch {done.batches}; checkpoint saved")
            raise TrainingInterrupted(ctx.stop.signum)
        state.partial_epoch = state.partial_epoch_lr = None
        return rank_sync.reduce_epoch(done), epoch_lr

    def validate(self, done: engine.EpochStats, epoch_lr: float) -> dict[str, float]:
        """Validates the weights to test; returns the epoch's metrics, train's and val's."""
        if self.val_metrics is None:
            # torchmetrics imports scipy, as mlflow does on the tracker's thread: importing
            # both at once once failed with KeyError: 'scipy'. Mostly long done by now.
            self.ctx.tracker.wait_connected()
            self.val_metrics = build_metrics(self.data.num_classes).to(self.ctx.device)
        rank_sync.share_buffers(self.parts.eval_model)  # every rank validates rank 0's weights
        val = engine.evaluate(
            model=self.parts.eval_model,
            loader=self.val_loader,
            augment=self.parts.augment,
            normalize=self.parts.normalize,
            metrics=self.val_metrics,
            autocast=self.autocast,
            device=self.ctx.device,
        )
        return {
            "train/loss": done.loss,
            "train/acc": done.acc,
            "train/throughput": done.throughput,
            "epoch_time_s": done.seconds,
            "lr": epoch_lr,
            **{f"val/{name}": value for name, value in val.items()},
        }

    def decide(self, metrics: dict[str, float]) -> EpochDecision:
        """The epoch's decision (`decide_after_epoch`), the same on every rank."""
        ctx, trainer = self.ctx, self.ctx.cfg.trainer
        current = metrics[trainer.monitor]
        weights_ok = weights_finite(self.parts.eval_model)
        decision = decide_after_epoch(
            self.state,
            current,
            maximize=trainer.monitor_mode == "max",
            patience=trainer.early_stopping_patience,
            tie_break=None if trainer.monitor == "val/loss" else metrics["val/loss"],
            interrupted=ctx.stop.requested(),  # during validation: last.pt is this epoch's
            # A NaN val loss: the weights give non-finite outputs, whatever val/acc says.
            finite=math.isfinite(metrics["val/loss"]) and weights_ok,
            # Skipping batches cannot bring non-finite weights back: every later loss is NaN.
            stop_if_not_finite=trainer.nan_policy == "stop" or not weights_ok,
            prune=partial(should_prune, ctx, self.state.epoch, current),
        )
        return rank_sync.from_main(decision)  # only rank 0 reports to a pruner

    def save_and_log(
        self, metrics: dict[str, float], decision: EpochDecision, done: engine.EpochStats
    ) -> None:
        """Writes the epoch's checkpoints (in the background), logs and shows its metrics."""
        files = {}
        if decision.improved:
            files[self.checkpoints / "best.pt"] = self.best_checkpoint(metrics).to_payload()
        if decision.stop != "non-finite":  # the last good last.pt stays
            files[self.last] = last_payload(self.state, self.parts)
        self.ctx.writer.submit(files, keep_previous={self.last})
        self.ctx.tracker.log_metrics(metrics, step=self.state.epoch)
        self.ctx.tracker.flush()
        self.display.end_epoch(
            f"train loss {done.loss:.4f} acc {done.acc:.4f} | val loss {metrics['val/loss']:.4f} "
            f"acc {metrics['val/acc']:.4f} | {done.throughput:.0f} img/s {done.seconds:.1f}s"
            + ("  *best*" if decision.improved else "")
        )

    def best_checkpoint(self, metrics: dict[str, float]) -> BestCheckpoint:
        """best.pt of this epoch: the weights to test, with what eval and predict need."""
        parts, data = self.parts, self.data
        return BestCheckpoint(
            model=parts.eval_model.state_dict(),
            config=self.config_yaml,
            class_names=list(data.class_names),
            mean=parts.normalize.mean.flatten().tolist(),
            std=parts.normalize.std.flatten().tolist(),
            image_size=data.image_size,
            epoch=self.state.epoch,
            metrics=metrics,
            mlflow_run_id=self.state.mlflow_run_id,
            train_class_counts=self.train_counts,
            test_ids_digest=ids_digest(data.test.ids),
            data_channels=len(data.mean),
        )

    def save_stopped_epoch(self, done: engine.EpochStats, epoch: int, epoch_lr: float) -> None:
        """Saves last.pt at the batch a signal stopped the epoch at, to resume it exactly.

        Raises:
            NonFiniteLossError: The weights are not finite. As at an epoch's end, diverged
                weights never replace the last good last.pt, which a resume would load and
                fail on at once, every time.
        """
        ctx, state, parts = self.ctx, self.state, self.parts
        if not weights_finite(parts.model) or not weights_finite(parts.eval_model):
            ctx.writer.wait()
            raise diverged(
                ctx,
                f"non-finite weights at step {state.global_step} (epoch {epoch}), when a "
                "signal stopped the run",
                "not saved as last.pt",
            )
        state.partial_epoch = asdict(rank_sync.reduce_epoch(done))
        state.partial_epoch_lr = epoch_lr
        ctx.writer.submit({self.last: last_payload(state, parts)}, keep_previous={self.last})
        ctx.writer.wait()


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
