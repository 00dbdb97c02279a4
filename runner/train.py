"""The recipe of one run: validate, build, fit, test, report. Reads top to bottom."""

from __future__ import annotations

import json
import logging
import math
import random
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runner import checkpoint, console, engine, provenance
from runner.augment import Normalize, save_preview_grid
from runner.config import REPO_ROOT, validate
from runner.data import DataSplits, ResidentLoader
from runner.metrics import build_confusion_matrix, build_metrics, per_class_table
from runner.models import pretrained_normalization
from runner.optim import build_optimizer

log = logging.getLogger("runner")


def run(cfg: DictConfig) -> float:
    """Trains and tests one model as `cfg` says.

    Args:
        cfg: The composed config (conf/train.yaml and its groups).

    Returns:
        The best value of `trainer.monitor`, for a sweeper to optimise.
    """
    validate(cfg)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    console.print_config(cfg)

    data = build_data(cfg.data)
    augment = instantiate(cfg.aug, num_classes=data.num_classes).to(device)
    preview = run_dir / "aug_preview.png"
    save_preview_grid(augment, data.train, data.class_names, preview, seed=cfg.seed, device=device)
    if cfg.get("preview_only", False):  # `+preview_only=true`: look at the aug, train nothing
        log.info("preview_only: wrote %s", preview)
        return float("nan")
    model = build_model(cfg.model, data.num_classes, device, cfg.trainer.channels_last)
    normalize = build_normalize(model, data, device, cfg.trainer.channels_last)
    train_loader, val_loader, test_loader = build_loaders(cfg, data, device)
    optimizer = build_optimizer(model, instantiate(cfg.optim), cfg.optim.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.trainer.accumulate_grad_batches)
    scheduler = instantiate(cfg.sched)(
        optimizer=optimizer,
        total_steps=steps_per_epoch * cfg.trainer.max_epochs,
        steps_per_epoch=steps_per_epoch,
    )
    loss_fn = instantiate(cfg.loss)(class_counts=data.class_counts().to(device))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16")
    ema = build_ema(model, cfg.trainer.ema_decay)
    state = TrainState()
    resume_from = find_resume_checkpoint(run_dir, cfg.trainer.resume)
    if resume_from is not None:
        state = restore(resume_from, model, optimizer, scheduler, scaler, ema)

    tracker = instantiate(cfg.logger)
    start_tracking(tracker, cfg, data, device, run_dir, state.mlflow_run_id)
    state.mlflow_run_id = tracker.run_id
    tracker.log_artifact(preview)
    writer = checkpoint.AsyncCheckpointWriter()
    status = "FAILED"
    try:
        fit(
            cfg,
            state,
            model,
            augment,
            normalize,
            loss_fn,
            optimizer,
            scheduler,
            scaler,
            ema,
            train_loader,
            val_loader,
            data,
            device,
            precision,
            tracker,
            writer,
            run_dir,
        )
        writer.wait()
        test_metrics = test(
            cfg,
            model,
            augment,
            normalize,
            test_loader,
            data,
            device,
            precision,
            tracker,
            run_dir,
        )
        write_results(state, test_metrics, tracker, run_dir)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        log_failure(tracker, run_dir)
        raise
    finally:
        writer.wait()
        tracker.finish(status)
    return state.best_value


# --- set-up ------------------------------------------------------------------------


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


def build_data(data_cfg: DictConfig) -> DataSplits:
    """Builds the data set's splits (uint8 tensors) from the data group."""
    data = instantiate(data_cfg)
    log.info(
        "data %s: %d train / %d val / %d test images, %d classes, %dx%d",
        data.name,
        len(data.train),
        len(data.val),
        len(data.test),
        data.num_classes,
        data.image_size,
        data.image_size,
    )
    return data


def build_model(
    model_cfg: DictConfig, num_classes: int, device: torch.device, channels_last: bool
) -> torch.nn.Module:
    """Creates the model with the data's class count, on the device."""
    model = instantiate(model_cfg)(num_classes=num_classes)
    model = model.to(
        device,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )
    params = sum(p.numel() for p in model.parameters())
    log.info(
        "model %s: %.2fM parameters",
        model_cfg.get("name", model_cfg._target_),
        params / 1e6,
    )
    return model


def build_normalize(
    model: torch.nn.Module, data: DataSplits, device: torch.device, channels_last: bool
) -> Normalize:
    """Normalisation with the pretrained weights' mean/std when pretrained, else the data's."""
    mean, std = pretrained_normalization(model) or (data.mean, data.std)
    return Normalize(mean, std, channels_last=channels_last).to(device)


def build_loaders(
    cfg: DictConfig, data: DataSplits, device: torch.device
) -> tuple[ResidentLoader, ResidentLoader, ResidentLoader]:
    """Loaders over the splits, resident on the device and batched by index."""
    train = data.train.to(device)
    sampler = instantiate(cfg.sampler)(labels=data.train.labels, seed=cfg.seed)
    train_loader = ResidentLoader(
        train, cfg.trainer.batch_size, sampler, drop_last=cfg.trainer.drop_last
    )
    val_loader = ResidentLoader(data.val.to(device), cfg.trainer.eval_batch_size)
    test_loader = ResidentLoader(data.test.to(device), cfg.trainer.eval_batch_size)
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

    epoch: int = 0
    global_step: int = 0
    best_value: float = float("nan")
    best_epoch: int = 0
    epochs_since_best: int = 0
    mlflow_run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def find_resume_checkpoint(run_dir: Path, resume: str) -> Path | None:
    """The checkpoint to resume from: last.pt of this run dir (auto), a path, or none."""
    if resume == "never":
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise checkpoint.CheckpointError(f"trainer.resume={resume!r}: no such checkpoint file")
    return path


def restore(path: Path, model, optimizer, scheduler, scaler, ema) -> TrainState:
    """Loads a last.pt into the training objects and returns the saved progress."""
    saved = checkpoint.load_checkpoint(path)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    if ema is not None and saved.get("ema") is not None:
        ema.module.load_state_dict(saved["ema"])
    set_rng_state(saved["rng"])
    log.info("resumed from %s after epoch %d", path, saved["state"]["epoch"])
    return TrainState(**saved["state"])


def start_tracking(
    tracker,
    cfg: DictConfig,
    data: DataSplits,
    device: torch.device,
    run_dir: Path,
    resume_run_id: str | None,
) -> None:
    """Starts the tracked run and records everything needed to reproduce it."""
    overrides = hydra_overrides()
    env = provenance.environment(REPO_ROOT, str(device))
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    (run_dir / "config_resolved.yaml").write_text(resolved)
    (run_dir / "environment.json").write_text(json.dumps({**env, "overrides": overrides}, indent=2))
    tags = {
        **env,
        "overrides": " ".join(overrides) or "(none)",
        "run_dir": str(run_dir),
    }
    tracker.start(
        experiment_name=data.name,
        run_name=run_dir.name,
        tags=tags,
        resume_run_id=resume_run_id,
    )
    if resume_run_id is None:
        tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
        tracker.log_params(
            {"data.num_train": len(data.train), "data.num_classes": data.num_classes}
        )
    tracker.log_artifact(run_dir / "config_resolved.yaml")
    tracker.log_artifact(run_dir / "environment.json")
    log.info("tracking: %s", tracker.describe())


# --- training ------------------------------------------------------------------------


def fit(
    cfg,
    state: TrainState,
    model,
    augment,
    normalize,
    loss_fn,
    optimizer,
    scheduler,
    scaler,
    ema,
    train_loader,
    val_loader,
    data,
    device,
    precision,
    tracker,
    writer: checkpoint.AsyncCheckpointWriter,
    run_dir: Path,
) -> None:
    """Trains epoch by epoch, validating, checkpointing and logging after each."""
    trainer = cfg.trainer
    autocast = engine.make_autocast(device, precision)
    train_model = torch.compile(model) if trainer.compile else model
    eval_model = ema.module if ema is not None else model
    val_metrics = build_metrics(data.num_classes).to(device)
    progress = console.EpochProgress(trainer.max_epochs)
    maximize = trainer.monitor_mode == "max"
    for epoch in range(state.epoch + 1, trainer.max_epochs + 1):
        train_loader.set_epoch(epoch)
        progress.start_epoch(epoch, len(train_loader), trainer.batch_size)
        stats = engine.train_one_epoch(
            model=train_model,
            loader=train_loader,
            augment=augment,
            normalize=normalize,
            loss_fn=loss_fn,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            autocast=autocast,
            device=device,
            ema=ema,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            gradient_clip_val=trainer.gradient_clip_val,
            log_every_n_steps=trainer.log_every_n_steps,
            on_log=progress.on_log,
        )
        val = engine.evaluate(
            model=eval_model,
            loader=val_loader,
            augment=augment,
            normalize=normalize,
            metrics=val_metrics,
            autocast=autocast,
            device=device,
        )
        metrics = {
            "train/loss": stats.loss,
            "train/acc": stats.acc,
            "train/throughput": stats.throughput,
            "epoch_time_s": stats.seconds,
            "lr": optimizer.param_groups[0]["lr"],
            **{f"val/{name}": value for name, value in val.items()},
        }
        state.epoch, state.global_step = epoch, state.global_step + stats.steps
        state.history.append({"epoch": epoch, **metrics})
        current = metrics[trainer.monitor]
        improved = math.isnan(state.best_value) or (
            current > state.best_value if maximize else current < state.best_value
        )
        files = {}
        if improved:
            state.best_value, state.best_epoch, state.epochs_since_best = (
                current,
                epoch,
                0,
            )
            files[run_dir / "checkpoints" / "best.pt"] = best_state(
                eval_model, cfg, data, normalize, epoch, metrics
            )
        else:
            state.epochs_since_best += 1
        files[run_dir / "checkpoints" / "last.pt"] = last_state(
            state, model, optimizer, scheduler, scaler, ema
        )
        writer.submit(files)
        tracker.log_metrics(metrics, step=epoch)
        tracker.flush()
        progress.end_epoch(
            f"train loss {stats.loss:.4f} acc {stats.acc:.4f} | val loss {val['loss']:.4f} "
            f"acc {val['acc']:.4f} | {stats.throughput:.0f} img/s {stats.seconds:.1f}s"
            + ("  *best*" if improved else "")
        )
        patience = trainer.early_stopping_patience
        if patience is not None and state.epochs_since_best >= patience:
            log.info(
                "early stopping: %s has not improved for %d epochs",
                trainer.monitor,
                patience,
            )
            break


def best_state(
    model,
    cfg: DictConfig,
    data: DataSplits,
    normalize: Normalize,
    epoch: int,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """The content of checkpoints/best.pt: weights plus what predicting with them needs."""
    return {
        "model": model.state_dict(),
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "class_names": list(data.class_names),
        "normalization": {
            "mean": normalize.mean.flatten().tolist(),
            "std": normalize.std.flatten().tolist(),
        },
        "image_size": data.image_size,
        "epoch": epoch,
        "metrics": dict(metrics),
    }


def last_state(state: TrainState, model, optimizer, scheduler, scaler, ema) -> dict[str, Any]:
    """The content of checkpoints/last.pt: everything needed to continue training exactly."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "ema": ema.module.state_dict() if ema is not None else None,
        "rng": get_rng_state(),
        "state": vars(state),
    }


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            pos,
            has_gauss,
            cached,
        ],
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


# --- testing and reporting ------------------------------------------------------------


def test(
    cfg,
    model,
    augment,
    normalize,
    test_loader,
    data: DataSplits,
    device,
    precision,
    tracker,
    run_dir: Path,
) -> dict[str, float]:
    """Evaluates the best checkpoint on the test split and writes the per-class report."""
    best = checkpoint.load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=device)
    model.load_state_dict(best["model"])
    confusion = build_confusion_matrix(data.num_classes).to(device)
    results = engine.evaluate(
        model=model,
        loader=test_loader,
        augment=augment,
        normalize=normalize,
        metrics=build_metrics(data.num_classes, with_auroc=True).to(device),
        autocast=engine.make_autocast(device, precision),
        device=device,
        extra_metrics=[confusion],
    )
    metrics = {f"test/{name}": value for name, value in results.items()}
    matrix = confusion.compute().cpu()
    write_per_class_csv(per_class_table(matrix, data.class_names), run_dir / "per_class.csv")
    plot_confusion_matrix(matrix, data.class_names, run_dir / "confusion_matrix.png")
    tracker.log_metrics(metrics, step=cfg.trainer.max_epochs)
    for name in ("per_class.csv", "confusion_matrix.png"):
        tracker.log_artifact(run_dir / name)
    tracker.log_artifact(run_dir / "checkpoints" / "best.pt", "checkpoints")
    return metrics


def write_per_class_csv(rows: list[dict], path: Path) -> None:
    """Writes the per-class precision/recall/F1/support table."""
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_confusion_matrix(matrix: torch.Tensor, class_names: list[str], path: Path) -> None:
    """Saves the row-normalised confusion matrix as a PNG with class names on the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    normalized = (matrix.double() / matrix.sum(1, keepdim=True).clamp_min(1)).numpy()
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90 if len(class_names) > 10 else 0)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalised)")
    if len(class_names) <= 20:
        for i in ticks:
            for j in ticks:
                ax.text(
                    j,
                    i,
                    f"{normalized[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if normalized[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(
    state: TrainState, test_metrics: dict[str, float], tracker, run_dir: Path
) -> None:
    """Writes metrics.json, logs it, and prints the summary table."""
    results = {
        "best_epoch": state.best_epoch,
        "best_value": state.best_value,
        "epochs": state.epoch,
        **test_metrics,
    }
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
    path.write_text(traceback.format_exc())
    try:
        tracker.log_artifact(path)
    except Exception:  # the original error matters more than a failed upload
        log.exception("could not upload %s", path)


# --- helpers ------------------------------------------------------------------------------


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
