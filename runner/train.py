"""The recipe of one run: validate, build, fit, test, report. Reads top to bottom."""

from __future__ import annotations

import json
import logging
import math
import random
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runner import (
    analysis,
    checkpoint,
    console,
    debug,
    distributed,
    engine,
    provenance,
    realworld,
    startup,
    sweep,
    throughput,
)
from runner.augment import Normalize, save_preview_grid
from runner.config import REPO_ROOT, redacted_container, validate
from runner.data import DataSplits
from runner.lifecycle import GracefulStop, TrainingInterrupted
from runner.metrics import build_confusion_matrix, build_metrics, shot_accuracies
from runner.models import pretrained_normalization
from runner.optim import optimizer_from_config
from runner.tracking import NullTracker

log = logging.getLogger("runner")


def run(cfg: DictConfig) -> float:
    """Trains and tests one model as `cfg` says.

    Args:
        cfg: The composed config (conf/train.yaml and its groups).

    Returns:
        The best value of `trainer.monitor`, for a sweeper to optimise.
    """
    startup.begin_run()
    # None outside `-m`; under DDP only rank 0 records the job.
    job = sweep.SweepJob.current(cfg) if distributed.detect().is_main else None
    if job is not None:  # records the job in the sweep's manifest; a failure returns NaN
        return job.run(cfg, train_and_test)
    return train_and_test(cfg, job=None)


def train_and_test(cfg: DictConfig, job: sweep.SweepJob | None) -> float:
    """The run itself; `job` is the sweep job it belongs to, if any."""
    validate(cfg)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.remove_stale_temp_files(run_dir / "checkpoints")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    world, device = distributed.init(device)  # DDP under torchrun or SLURM; else one process
    run_dir = distributed.shared_run_dir(run_dir)
    precision = resolve_precision(cfg.trainer.precision, device)
    console.print_config(cfg)
    if cfg.get("throughput"):  # experiment=throughput: img/s per model and batch size
        return throughput.benchmark(cfg, device, precision)
    preview_only = cfg.get("preview_only", False)  # `+preview_only=true`: show the aug, stop
    tracker = instantiate(cfg.logger) if world.is_main else NullTracker()  # rank 0 tracks
    if not preview_only:  # before the data: a tracking server that is down fails in seconds
        tracker.connect(experiment_name=(job and job.experiment_name) or cfg.data.name)

    data = debug.overfit_subset(build_data(cfg.data), cfg.trainer.overfit_batches,
                                cfg.trainer.batch_size)  # fmt: skip
    augment = instantiate(cfg.aug, num_classes=data.num_classes).to(device)
    preview = run_dir / "aug_preview.png"
    if world.is_main:  # one set of files per run: rank 0 writes them
        save_preview_grid(augment, data.train, data.class_names, preview, seed=cfg.seed,
                          device=device)  # fmt: skip
    if preview_only:
        log.info("preview_only: wrote %s", preview)
        return float("nan")
    train_loader, val_loader, test_loader = build_loaders(cfg, data, device)
    parts = build_training_parts(cfg, data, augment, device, precision, len(train_loader))
    state = resume_or_start(run_dir, cfg.trainer.resume, parts)
    distributed.seed_rank(cfg.seed, state.global_step)

    writer = (
        checkpoint.AsyncCheckpointWriter() if world.is_main else distributed.NullCheckpointWriter()
    )
    agreement = distributed.stop_agreement(world)  # under DDP all ranks stop at the same step
    stop = GracefulStop(agreement)
    status = "FAILED"
    try:  # from the moment the tracked run exists, it always ends with a status
        if world.is_main:
            start_tracking(tracker, cfg, data, device, run_dir, state.mlflow_run_id, job)
            tracker.set_tags(distributed.tags(world, cfg.trainer))
            if job is not None:
                job.record_run(tracker.run_id)
            realworld.report_data(data, run_dir, tracker)
            tracker.log_artifact(preview)
            startup.finish(run_dir, tracker)  # start-up phases: startup.json, startup/*_s
        distributed.barrier()  # the run's config file exists before any rank reads it
        state.mlflow_run_id = tracker.run_id
        with stop, debug.profile(cfg.trainer.profile, run_dir, tracker):
            fit(cfg, state, parts, train_loader, val_loader, data, device, precision, tracker,
                writer, run_dir, stop, job)  # fmt: skip
        writer.wait()
        distributed.end_training(world, agreement)  # the other ranks are done; rank 0 tests
        if not world.is_main:
            status = "FINISHED"
            return state.best_value
        best = checkpoint.load_checkpoint(run_dir / "checkpoints" / "best.pt")
        export_best_weights(best, run_dir)
        test_metrics = test(cfg, parts, best, test_loader, data, device, precision, tracker,
                            run_dir, state.history)  # fmt: skip
        loaders = [train_loader, val_loader, test_loader]
        realworld.report_streamed_bad_files(data, loaders, run_dir, tracker)
        write_results(state, test_metrics, tracker, run_dir)
        status = "FINISHED"
    except TrainingInterrupted as stopped:
        status = "KILLED"
        log.warning("run stopped (%s); continue it by running again in %s", stopped, run_dir)
        raise SystemExit(stopped.exit_code) from None
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        log_failure(tracker, run_dir)
        raise
    finally:
        write_error = writer.close()
        if write_error is not None:
            log.error("%s", write_error)
        tracker.finish(status)
        if status == "KILLED":
            stop.hand_over()  # after USR2 under SLURM: requeue the job
    return state.best_value


# --- set-up ------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """Turns `trainer.device` into a torch device; auto = CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"trainer.device={device!r} but CUDA is not available: use trainer.device=auto or cpu"
        )
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turns `trainer.precision` into "32", "bf16" or "16" for this device.

    auto picks bf16 on CUDA devices that support it and 32 elsewhere: bf16 autocast on
    CPUs without native bf16 units is slower than float32.
    """
    precision = str(precision)
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32"
    if precision == "16" and device.type != "cuda":
        raise RuntimeError(
            "trainer.precision=16 needs a CUDA device: use trainer.precision=bf16 or 32"
        )
    return precision


@startup.timed("data")
def build_data(data_cfg: DictConfig) -> DataSplits:
    """Builds the data set's splits (uint8) and applies the real-world switches to train.

    The switch keys (`data.imbalance_ratio`, `data.label_noise`, ...) are taken out of
    the group before its factory is called, so every data set gets them the same way.
    """
    settings = OmegaConf.to_container(data_cfg, resolve=True)
    switches = {key: settings.pop(key) for key in realworld.SWITCHES if key in settings}
    data = instantiate(settings)
    data = realworld.apply_switches(data, seed=settings.get("split_seed", 0), **switches)
    log.info(
        "data %s: %d train / %d val / %d test images, %d classes, %dx%d",
        data.name, len(data.train), len(data.val), len(data.test),
        data.num_classes, data.image_size, data.image_size,
    )  # fmt: skip
    return data


@dataclass
class TrainingParts:
    """The objects training updates, built once and checkpointed together."""

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


@startup.timed("model")
def build_training_parts(
    cfg: DictConfig,
    data: DataSplits,
    augment: torch.nn.Module,
    device: torch.device,
    precision: str,
    batches: int,
) -> TrainingParts:
    """Model, augmentation, loss, optimizer, schedule, scaler and EMA from the config."""
    trainer = cfg.trainer
    memory_format = torch.channels_last if trainer.channels_last else torch.contiguous_format
    model = instantiate(cfg.model)(num_classes=data.num_classes).to(
        device, memory_format=memory_format
    )
    log.info("model %s: %.2fM parameters", cfg.model.get("name", cfg.model._target_),
             sum(p.numel() for p in model.parameters()) / 1e6)  # fmt: skip
    optimizer = optimizer_from_config(model, cfg.optim)
    distributed.scale_lr(optimizer, trainer.lr_scaling, distributed.world_size_now())
    steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
    scheduler = instantiate(cfg.sched)(
        optimizer=optimizer,
        total_steps=steps_per_epoch * trainer.max_epochs,
        steps_per_epoch=steps_per_epoch,
    )
    loss_fn = instantiate(cfg.loss)(class_counts=data.class_counts().to(device))
    if cfg.get("fail"):
        loss_fn = FaultInjection(loss_fn, str(cfg.fail))
    return TrainingParts(
        model=model,
        augment=augment,
        normalize=build_normalize(model, data, device, trainer.channels_last),
        loss_fn=loss_fn,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "16"),
        ema=build_ema(model, trainer.ema_decay),
    )


class FaultInjection(torch.nn.Module):
    """Test hook `+fail=...`: makes the training step fail the way a real run can.

    `+fail=true` raises in the first training step; `+fail=nan@K` makes the loss NaN
    from the K-th training step of this process on. Used by the reliability and sweep
    tests; never set by a real config.
    """

    def __init__(self, loss_fn: torch.nn.Module, mode: str):
        super().__init__()
        self.loss_fn = loss_fn
        self.mode = mode
        self.calls = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The wrapped loss, or the configured failure."""
        self.calls += 1
        loss = self.loss_fn(logits, target)
        if self.mode.startswith("nan@"):
            return loss * float("nan") if self.calls >= int(self.mode[4:]) else loss
        raise RuntimeError(f"fail={self.mode}: the test hook failed this training step")


def build_normalize(
    model: torch.nn.Module, data: DataSplits, device: torch.device, channels_last: bool
) -> Normalize:
    """Normalisation with the pretrained weights' mean/std when pretrained, else the data's."""
    mean, std = pretrained_normalization(model) or (data.mean, data.std)
    return Normalize(mean, std, channels_last=channels_last).to(device)


def build_loaders(cfg: DictConfig, data: DataSplits, device: torch.device) -> tuple:
    """Loaders over the splits, in the sampler's order for train.

    A resident split is moved to the device once and batched by index; a streaming one
    (large image sets) is decoded batch by batch by loader workers.
    """
    sampler = instantiate(cfg.sampler)(labels=data.train.labels, seed=cfg.seed)
    train_loader = data.train.loader(
        cfg.trainer.batch_size, device, sampler, drop_last=cfg.trainer.drop_last
    )
    val_loader = data.val.loader(cfg.trainer.eval_batch_size, device)
    test_loader = data.test.loader(cfg.trainer.eval_batch_size, device)
    debug.limit_batches([train_loader, val_loader, test_loader], cfg.trainer.limit_batches)
    return train_loader, val_loader, test_loader


def build_ema(model: torch.nn.Module, decay: float | None) -> torch.nn.Module | None:
    """timm's ModelEmaV3 of the model, or None when `trainer.ema_decay` is null."""
    if decay is None:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


@dataclass
class TrainState:
    """Progress that a checkpoint carries across a restart."""

    epoch: int = 0  # finished epochs
    global_step: int = 0  # training batches done, including a partial epoch
    best_value: float = float("nan")
    best_epoch: int = 0
    epochs_since_best: int = 0
    nan_skips: int = 0
    mlflow_run_id: str | None = None
    partial_epoch: dict[str, Any] | None = None  # engine.EpochProgress of an unfinished epoch
    history: list[dict[str, float]] = field(default_factory=list)


def resume_or_start(run_dir: Path, resume: str, parts: TrainingParts) -> TrainState:
    """Restores the newest loadable checkpoint when resuming, else a fresh state.

    `resume=auto` continues from this run dir's checkpoints/last.pt (or, when that file
    is damaged, the one before it); `never` starts fresh; a path resumes from that file.
    """
    if resume == "never":
        return TrainState()
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        if not (last.exists() or checkpoint.previous_path(last).exists()):
            return TrainState()
        saved, source = checkpoint.load_newest(last)
    else:
        saved, source = checkpoint.load_checkpoint(resume), Path(resume)
    parts.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    parts.scaler.load_state_dict(saved["scaler"])
    if parts.ema is not None and saved.get("ema") is not None:
        parts.ema.module.load_state_dict(saved["ema"])
    set_rng_state(saved["rng"])
    state = TrainState(**saved["state"])
    log.info("resumed from %s: epoch %d done, step %d", source, state.epoch, state.global_step)
    return state


@startup.timed("mlflow")
def start_tracking(tracker, cfg: DictConfig, data: DataSplits, device: torch.device,
                   run_dir: Path, resume_run_id: str | None,
                   job: sweep.SweepJob | None = None) -> None:  # fmt: skip
    """Starts the tracked run and records everything needed to reproduce it.

    A sweep job's run is a child of the sweep's parent run, named after what it varies.
    """
    overrides = hydra_overrides()
    env = provenance.environment(REPO_ROOT, str(device))
    resolved = OmegaConf.to_yaml(OmegaConf.create(redacted_container(cfg)))
    (run_dir / "config_resolved.yaml").write_text(resolved)
    (run_dir / "environment.json").write_text(json.dumps({**env, "overrides": overrides}, indent=2))
    tags = {**env, "overrides": " ".join(overrides) or "(none)", "run_dir": str(run_dir),
            **(job.tracking_tags() if job else {})}  # fmt: skip
    tracker.start(run_name=job.run_name if job else run_dir.name, tags=tags,
                  resume_run_id=resume_run_id, local_dir=run_dir)  # fmt: skip
    if resume_run_id is None:
        params = flatten(redacted_container(cfg))
        # One call: data.num_classes may be null in the config (inferred from the data),
        # and MLflow refuses to change a logged param.
        params.update({"data.num_train": len(data.train), "data.num_classes": data.num_classes})
        tracker.log_params(params)
    tracker.log_artifact(run_dir / "config_resolved.yaml")
    tracker.log_artifact(run_dir / "environment.json")
    log.info("tracking: %s", tracker.describe())


# --- training --------------------------------------------------------------------------------


def fit(cfg: DictConfig, state: TrainState, parts: TrainingParts, train_loader: Iterable,
        val_loader: Iterable, data: DataSplits, device: torch.device, precision: str,
        tracker, writer: checkpoint.AsyncCheckpointWriter, run_dir: Path,
        stop: GracefulStop, job: sweep.SweepJob | None = None) -> None:  # fmt: skip
    """Trains epoch by epoch, validating, checkpointing and logging after each.

    In an Optuna sweep, each epoch's monitored value goes to the job's trial, and the
    pruner may end training early (the run is then tested and tagged `pruned=true`).

    Raises:
        TrainingInterrupted: A signal asked to stop; last.pt holds the exact position.
    """
    trainer = cfg.trainer
    autocast = engine.make_autocast(device, precision)
    train_model = distributed.wrap(parts.model, device, compile=trainer.compile)
    val_metrics = build_metrics(data.num_classes).to(device)
    progress = console.EpochProgress(trainer.max_epochs)
    guard = engine.NanGuard(trainer.nan_policy, trainer.max_nan_skips, state.nan_skips)
    last = run_dir / "checkpoints" / "last.pt"
    config_yaml = (run_dir / "config_resolved.yaml").read_text()  # redacted, written at start
    maximize = trainer.monitor_mode == "max"
    for epoch in range(state.epoch + 1, trainer.max_epochs + 1):
        partial = (distributed.rank_share(engine.EpochProgress(**state.partial_epoch))
                   if state.partial_epoch else None)  # fmt: skip
        done_before = partial.batches if partial else 0
        train_loader.set_epoch(epoch, start_batch=done_before)
        progress.start_epoch(epoch, train_loader.batches_per_epoch(), trainer.batch_size,
                             done_before)  # fmt: skip
        done = engine.train_one_epoch(
            model=train_model, loader=train_loader, augment=parts.augment,
            normalize=parts.normalize, loss_fn=parts.loss_fn, optimizer=parts.optimizer,
            scheduler=parts.scheduler, scaler=parts.scaler, autocast=autocast, device=device,
            ema=parts.ema, accumulate_grad_batches=trainer.accumulate_grad_batches,
            gradient_clip_val=trainer.gradient_clip_val,
            log_every_n_steps=trainer.log_every_n_steps, on_log=progress.on_log,
            progress=partial, should_stop=stop.requested, nan_guard=guard,
            first_step=state.global_step - done_before + 1,
        )  # fmt: skip
        state.global_step += done.batches - done_before
        state.nan_skips = guard.skipped
        if not done.finished:
            state.partial_epoch = asdict(distributed.reduce_epoch(done))
            writer.submit({last: last_state(state, parts)}, keep_previous={last})
            writer.wait()
            progress.end_epoch(f"stopped after batch {done.batches}; checkpoint saved")
            raise TrainingInterrupted(stop.signum)
        state.partial_epoch = None
        done = distributed.reduce_epoch(done)  # the sums of all ranks

        val = engine.evaluate(model=parts.eval_model, loader=val_loader, augment=parts.augment,
                              normalize=parts.normalize, metrics=val_metrics, autocast=autocast,
                              device=device)  # fmt: skip
        metrics = {
            "train/loss": done.loss, "train/acc": done.acc, "train/throughput": done.throughput,
            "epoch_time_s": done.seconds, "lr": parts.optimizer.param_groups[0]["lr"],
            **{f"val/{name}": value for name, value in val.items()},
        }  # fmt: skip
        state.epoch = epoch
        state.history.append({"epoch": epoch, **metrics})
        current = metrics[trainer.monitor]
        improved = math.isnan(state.best_value) or (
            current > state.best_value if maximize else current < state.best_value
        )
        files = {}
        if improved:
            state.best_value, state.best_epoch, state.epochs_since_best = current, epoch, 0
            files[run_dir / "checkpoints" / "best.pt"] = best_state(
                config_yaml, parts, data, epoch, metrics, state.mlflow_run_id
            )
        else:
            state.epochs_since_best += 1
        files[last] = last_state(state, parts)
        writer.submit(files, keep_previous={last})
        tracker.log_metrics(metrics, step=epoch)
        tracker.flush()
        progress.end_epoch(
            f"train loss {done.loss:.4f} acc {done.acc:.4f} | val loss {val['loss']:.4f} "
            f"acc {val['acc']:.4f} | {done.throughput:.0f} img/s {done.seconds:.1f}s"
            + ("  *best*" if improved else "")
        )
        if stop.requested():  # the signal came during validation: last.pt is this epoch's
            writer.wait()
            raise TrainingInterrupted(stop.signum)
        if job is not None and job.should_prune(cfg, epoch, current):
            log.info("pruned by Optuna after epoch %d (%s = %.4f)", epoch, trainer.monitor, current)
            tracker.set_tags({"pruned": "true"})
            writer.wait()
            break
        patience = trainer.early_stopping_patience
        if patience is not None and state.epochs_since_best >= patience:
            log.info("early stopping: %s has not improved for %d epochs", trainer.monitor, patience)
            break


def best_state(config_yaml: str, parts: TrainingParts, data: DataSplits, epoch: int,
               metrics: dict[str, float], run_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The content of checkpoints/best.pt: weights plus what predicting with them needs."""
    return {
        "model": parts.eval_model.state_dict(),
        "config": config_yaml,
        "class_names": list(data.class_names),
        "normalization": {
            "mean": parts.normalize.mean.flatten().tolist(),
            "std": parts.normalize.std.flatten().tolist(),
        },
        "image_size": data.image_size,
        "epoch": epoch,
        "metrics": dict(metrics),
        "mlflow_run_id": run_id,  # the training run, linked from eval runs (source_run_id)
    }


def last_state(state: TrainState, parts: TrainingParts) -> dict[str, Any]:
    """The content of checkpoints/last.pt: everything needed to continue training exactly."""
    return {
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "ema": parts.ema.module.state_dict() if parts.ema is not None else None,
        "rng": get_rng_state(),
        "state": asdict(state),
    }


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restores the RNG states saved by `get_rng_state`."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def export_best_weights(best: dict[str, Any], run_dir: Path) -> Path:
    """Writes the best weights (best.pt's content) as checkpoints/best.safetensors."""
    from safetensors.torch import save_file

    path = run_dir / "checkpoints" / "best.safetensors"
    # Clones: safetensors refuses tensors that share storage.
    save_file({k: v.detach().clone().contiguous() for k, v in best["model"].items()}, str(path),
              metadata={"class_names": json.dumps(best["class_names"])})  # fmt: skip
    return path


# --- testing and reporting -------------------------------------------------------------------


def test(cfg: DictConfig, parts: TrainingParts, best: dict[str, Any], test_loader: Iterable,
         data: DataSplits, device: torch.device, precision: str, tracker, run_dir: Path,
         history: list[dict[str, float]]) -> dict[str, float]:  # fmt: skip
    """Evaluates the best weights (best.pt's content) on the test split; per-class report."""
    model = parts.eval_model
    model.load_state_dict(best["model"])
    confusion = build_confusion_matrix(data.num_classes).to(device)
    predictions = analysis.PredictionCollector()
    results = engine.evaluate(
        model=model, loader=test_loader, augment=parts.augment, normalize=parts.normalize,
        metrics=build_metrics(data.num_classes, with_auroc=True).to(device),
        autocast=engine.make_autocast(device, precision), device=device,
        extra_metrics=[confusion, predictions],
    )  # fmt: skip
    metrics = {f"test/{name}": value for name, value in results.items()}
    matrix = confusion.compute().cpu()
    if data.long_tailed:
        shots = shot_accuracies(matrix, data.class_counts())
        metrics.update({f"test/{name}": value for name, value in shots.items()})
    metrics.update(analysis.report(cfg.analysis, analysis.AnalysisInputs(
        model, parts.augment, parts.normalize, data.test, *predictions.result(), matrix,
        data.class_names, device, history), run_dir, tracker))  # fmt: skip
    tracker.log_metrics(metrics, step=cfg.trainer.max_epochs)
    for name in ("best.pt", "best.safetensors"):
        tracker.log_artifact(run_dir / "checkpoints" / name, "checkpoints")
    return metrics


def write_results(
    state: TrainState, test_metrics: dict[str, float], tracker, run_dir: Path
) -> None:
    """Writes metrics.json, logs it, and prints the summary table."""
    results = {"best_epoch": state.best_epoch, "best_value": state.best_value,
               "epochs": state.epoch, **test_metrics}  # fmt: skip
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    tracker.log_artifact(run_dir / "metrics.json")
    tracker.set_tags({"best_epoch": str(state.best_epoch)})
    rows = [
        ("best epoch", f"{state.best_epoch} of {state.epoch}"),
        *((name, f"{value:.4f}") for name, value in test_metrics.items()),
        ("run dir", str(run_dir)),
        ("tracking", tracker.describe()),
    ]
    console.print_summary(rows)


def log_failure(tracker, run_dir: Path) -> None:
    """Saves the traceback of a failed run next to it and into the tracker."""
    path = run_dir / "traceback.txt"
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(traceback.format_exc())
    log.error("run failed; traceback in %s", path)
    try:
        tracker.log_artifact(path)
    except Exception:  # the original error matters more than a failed upload
        log.exception("could not upload %s", path)


# --- helpers ---------------------------------------------------------------------------------


def hydra_overrides() -> list[str]:
    """The command-line overrides of this job, when run through Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flattens nested dicts/lists into {"a.b": value} for MLflow params."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat
