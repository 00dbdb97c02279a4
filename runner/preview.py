"""The preview recipe: what an augmentation preset does, without training.

`mode=preview` (or `+preview_only=true`) draws a few training images per class through
the preset.

Writes `<run dir>/aug_preview.png` and returns NaN as its objective; starts no tracked run.

    python run.py mode=preview aug=strong
    python run.py -m mode=preview aug=strong,randaugment,trivialaugment   # one per preset
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from runner.augment.checks import check_transforms
from runner.config.validation import validate
from runner.data.build import build_data
from runner.reports.aug_preview import save_preview_grid
from runner.reports.console import print_config
from runner.training.context import resolve_device, seed_everything

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Draws the augmentation preview grid of the configured data and preset."""
    validate(cfg)
    check_transforms(cfg.aug, cfg.data)  # a bad transform, before the data is built
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    print_config(cfg)
    data = build_data(cfg.data)
    augment = instantiate(cfg.aug, num_classes=data.num_classes).to(device)
    path = save_preview_grid(
        augment,
        data.train,
        data.class_names,
        run_dir / "aug_preview.png",
        seed=cfg.seed,
        device=device,
    )
    log.info("preview: wrote %s", path)
    return math.nan
