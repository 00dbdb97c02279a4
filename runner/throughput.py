"""The throughput recipe: training img/s per model and batch size on this machine.

`mode=throughput` (set by `experiment=throughput`). For every model name and batch size
in the `throughput` node, the runner's own training step
(`runner.training.engine.train_one_epoch`: aug on the device, normalisation, autocast, the
optimizer of the `optim` group) runs on one fixed synthetic uint8 batch resident on the
device, so nothing but the step is measured: `warmup_steps` untimed steps, then `steps`
timed ones (bracketed by `torch.cuda.synchronize` on CUDA). A batch size that does not
fit in memory is reported as "OOM" and the next one is tried; a model that fails
otherwise gets a row with its error, and the others are still measured. The table is
printed and written to `<run dir>/throughput.json` (after each row); no MLflow run is
made. A ViT is built for `data.image_size`, as in training.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from runner.augment.normalize import Normalize
from runner.config.errors import ConfigError
from runner.config.validation import validate
from runner.data.loaders import FixedBatches
from runner.models.factories import check_timm_name, create_timm_model
from runner.reports.console import print_config
from runner.training import engine
from runner.training.context import resolve_device, resolve_precision, seed_everything
from runner.training.optim import optimizer_from_config
from runner.training.parts import TrainingParts

log = logging.getLogger(__name__)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timm_model_at(num_classes: int, name: str, size: int) -> torch.nn.Module:
    """A timm model for `size` px images: a ViT's position grid is made for `size`.

    The name's own patch size is kept (16 for vit_tiny_patch16_224: 2x2 tokens at 32 px,
    where conf/model/vit_tiny.yaml trains patch 4); a model without `img_size` takes any
    size.
    """
    try:
        return create_timm_model(num_classes, name, img_size=size)
    except TypeError:  # a convolutional model's constructor has no img_size
        return create_timm_model(num_classes, name)


def _out_of_memory(err: Exception) -> bool:
    """CUDA's OutOfMemoryError, or a CPU allocation that failed (a plain RuntimeError)."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
    )


def measure(
    cfg: DictConfig, model_name: str, batch_size: int, device: torch.device, precision: str
) -> float:
    """Training images per second of one model at one batch size (see the module doc)."""
    settings, size = cfg.throughput, cfg.data.image_size
    num_classes = cfg.data.get("num_classes") or 10
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    model = _timm_model_at(num_classes, model_name, size)
    model = model.to(device, memory_format=memory_format)
    optimizer = optimizer_from_config(model, cfg.optim)
    parts = TrainingParts(
        model=model,
        augment=instantiate(cfg.aug, num_classes=num_classes).to(device),
        normalize=Normalize((0.5,) * 3, (0.25,) * 3, channels_last=cfg.trainer.channels_last).to(
            device
        ),
        loss_fn=instantiate(cfg.loss)(class_counts=torch.ones(num_classes, device=device)),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "16"),
        ema=None,
    )
    step_kwargs = dict(
        model=torch.compile(model) if cfg.trainer.compile else model,
        parts=parts,
        autocast=engine.make_autocast(device, precision),
        device=device,
        settings=engine.StepSettings(log_every_n_steps=10**9),
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator
    ).to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
    engine.train_one_epoch(
        loader=FixedBatches(images, labels, settings.warmup_steps), **step_kwargs
    )
    _synchronize(device)
    start = time.perf_counter()
    engine.train_one_epoch(loader=FixedBatches(images, labels, settings.steps), **step_kwargs)
    _synchronize(device)
    return settings.steps * batch_size / (time.perf_counter() - start)


def run(cfg: DictConfig) -> float:
    """Measures every model and batch size, prints the table, writes throughput.json.

    Args:
        cfg: The composed config with a `throughput` node (models, batch_sizes,
            warmup_steps, steps).

    Returns:
        The highest img/s measured (the run's objective).
    """
    validate(cfg)
    for index, name in enumerate(cfg.throughput.models):  # before the first is timed
        check_timm_name(str(name), f"throughput.models.{index}")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    print_config(cfg)
    settings = cfg.throughput
    rows: list[dict[str, Any]] = []
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    size = cfg.data.image_size
    steps = f"{settings.warmup_steps} warm-up + {settings.steps} timed steps"
    print(f"throughput on {device} ({where}), precision {precision}, {size}x{size}, {steps}")
    print(f"{'model':<24} {'batch':>6} {'img/s':>10} {'ms/step':>9}", flush=True)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    table = run_dir / "throughput.json"
    for model_name in settings.models:
        for batch_size in settings.batch_sizes:
            row: dict[str, Any] = {"model": str(model_name), "batch_size": int(batch_size)}
            try:
                rate = measure(cfg, str(model_name), int(batch_size), device, precision)
                row["img_s"] = rate
                shown = f"{rate:10.1f} {1000 * batch_size / rate:9.1f}"
            except Exception as err:  # one model that fails leaves the others' rows
                oom = _out_of_memory(err)
                row["img_s"] = None
                row["error"] = "OOM" if oom else f"{type(err).__name__}: {err}"
                shown = f"{'OOM':>10}" if oom else f"{'error':>10}  {row['error']}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"{model_name:<24} {batch_size:>6} {shown}", flush=True)
            table.write_text(json.dumps(rows, indent=2))  # each row as it comes
    log.info("throughput table written to %s", table)
    if rows and all(row["img_s"] is None for row in rows):  # nothing measured: exit 1
        raise ConfigError(
            f"no model could be timed: every row of the table failed ({table}), the first "
            f"with {rows[0]['error']}. Check throughput.models against data.image_size, or "
            "lower throughput.batch_sizes where a row is OOM"
        )
    return max((row["img_s"] for row in rows if row["img_s"]), default=float("nan"))
