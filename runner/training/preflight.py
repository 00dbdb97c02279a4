"""Checks of a training run against its built data, before the model is built.

What the config alone cannot tell: whether every split has samples, whether the
monitored metric exists for this class count, and whether an epoch has enough steps for
the schedule and the statistics to mean something.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from runner.config.errors import ConfigError
from runner.data.checks import require_splits
from runner.data.splits import DataSplits
from runner.training.metrics import TOP_K

log = logging.getLogger(__name__)

# Fewer optimizer steps per epoch than this makes per-epoch figures and schedules coarse.
FEW_STEPS = 10


def check_training_data(cfg: DictConfig, data: DataSplits, batches_per_epoch: int) -> None:
    """Refuses what would fail later and says when an epoch is very short.

    Raises:
        DataError: A split is empty.
        ConfigError: trainer.monitor names a metric this data cannot have (top-5 of 5
            classes or fewer).
    """
    require_splits(data, ("train", "val", "test"))
    if cfg.trainer.monitor.endswith("top5") and data.num_classes <= TOP_K:
        raise ConfigError(
            f"trainer.monitor={cfg.trainer.monitor} needs more than {TOP_K} classes, and "
            f"data {data.name!r} has {data.num_classes}: monitor val/acc instead"
        )
    steps = batches_per_epoch // cfg.trainer.accumulate_grad_batches
    if steps < FEW_STEPS:
        log.warning(
            "only %d optimizer step(s) per epoch: %d train images, trainer.batch_size=%d, "
            "trainer.drop_last=%s, trainer.accumulate_grad_batches=%d. Lower "
            "trainer.batch_size (e.g. %d) for more steps per epoch",
            steps,
            len(data.train),
            cfg.trainer.batch_size,
            cfg.trainer.drop_last,
            cfg.trainer.accumulate_grad_batches,
            max(2, len(data.train) // (FEW_STEPS * cfg.trainer.accumulate_grad_batches)),
        )
