"""From the data and sampler config to splits and loaders."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runner.config.choices import RUNNER_GROUP_KEYS
from runner.config.errors import ConfigError, UserError
from runner.data import curation, folds, switches
from runner.data.debug import limit_batches
from runner.data.splits import DataSplits

log = logging.getLogger(__name__)


def build_data(data_cfg: DictConfig) -> DataSplits:
    """Builds the data set's splits (uint8) and applies the switches to train.

    In this order: the real-world switches (`data.imbalance_ratio`, `data.label_noise`,
    ...), `data.exclude` and `data.relabel`, then k-fold (`data.num_folds`, `data.fold`).
    Their keys are taken out of the group before its factory is called, so every data
    set gets them the same way.
    """
    settings = OmegaConf.to_container(data_cfg, resolve=True)
    chosen = {key: settings[key] for key in switches.SWITCHES if key in settings}
    curated = {key: settings[key] for key in curation.KEYS if key in settings}
    folding = {key: settings[key] for key in folds.KEYS if key in settings}
    seed = settings.get("split_seed", 0)
    data = source_splits(settings)
    dropping = switches.dropping_settings(**chosen)
    # The ids the run left out before a file acts (files that did not decode, samples a
    # switch drops), each with the setting that did: a file naming them is told so, not
    # that they are another data set's. Only kept when a file will be read.
    reads_a_file = any(value is not None for value in curated.values())
    watch = dropping and reads_a_file
    before = {str(i) for i in data.train.ids} if watch else set()
    data = switches.apply_switches(data, seed=seed, **chosen)
    if reads_a_file:
        gone = dict.fromkeys(data.bad_ids, curation.BAD_FILE_CAUSE)
        if watch:
            cause = " and ".join(dropping)
            gone.update(dict.fromkeys(before - {str(i) for i in data.train.ids}, cause))
        curated["switched_out"] = gone
    data = curation.apply_curation(data, **curated)
    data = folds.select_fold(data, seed=seed, **folding)
    data.note_noise_rate()  # again: exclusion, relabelling and the fold change the rate
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


# The data group's keys the runner applies itself, to every data set alike; the data
# set's factory never sees them.
RUNNER_KEYS = RUNNER_GROUP_KEYS["data"]


def source_splits(settings: Mapping[str, Any]) -> DataSplits:
    """The data set's own splits (with sample ids), before the runner's switches.

    Args:
        settings: The data group as a plain mapping; `RUNNER_KEYS` in it are left out.

    Raises:
        ConfigError: The data set's function returned something else than `DataSplits`
            of uint8 (N, C, H, W) images of `data.image_size`.
    """
    try:
        built = instantiate({k: v for k, v in settings.items() if k not in RUNNER_KEYS})
    except InstantiationException as err:
        # Hydra wraps what the data set's function raised: a user's mistake (a DataError
        # naming data.root) is raised as itself, for a caller to catch and add to.
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from err.__cause__.__cause__
        raise
    _check_built(built, settings.get("_target_"), settings.get("image_size"))
    return built.ensure_ids()


def _check_built(built: Any, target: Any, image_size: Any) -> None:
    """Refuses what a data set's function returned when the run cannot use it.

    A tuple failed with an AttributeError, and images of another size than
    `data.image_size` trained at theirs while eval resized to the configured one.
    """
    fix = "end the function with runner.data.splits.assemble_splits(...), as runner/data/sets/ do"
    if not isinstance(built, DataSplits):
        raise ConfigError(
            f"data._target_={target!r} returned {type(built).__name__}, not "
            f"runner.data.splits.DataSplits: {fix}"
        )
    for name in ("train", "val", "test"):
        images = getattr(getattr(built, name), "images", None)
        if isinstance(images, torch.Tensor) and (images.dtype != torch.uint8 or images.ndim != 4):
            raise ConfigError(
                f"data._target_={target!r}: its {name} images are {images.dtype} of shape "
                f"{tuple(images.shape)}; the runner takes uint8 (N, C, H, W) (floats in "
                "[0, 1]: (images * 255).round().to(torch.uint8))"
            )
    if isinstance(image_size, int) and len(built.train) and built.image_size != image_size:
        raise ConfigError(
            f"data._target_={target!r} made {built.image_size}x{built.image_size} images, and "
            f"data.image_size={image_size}, to which eval and predict resize: make the "
            "function resize to its image_size argument, or set data.image_size="
            f"{built.image_size}"
        )


class Loaders(NamedTuple):
    """The loaders of a run's three splits (train in the sampler's order)."""

    train: Any
    val: Any
    test: Any


def build_loaders(
    data: DataSplits,
    sampler_cfg: DictConfig,
    trainer_cfg: DictConfig,
    seed: int,
    device: torch.device,
) -> Loaders:
    """Loaders over the train, val and test splits, in the sampler's order for train.

    A resident split is moved to the device once and batched by index; a streaming one
    (large image sets) is decoded batch by batch by loader workers.
    """
    sampler = instantiate(sampler_cfg)(labels=data.train.labels, seed=seed)
    train = data.train.loader(
        trainer_cfg.batch_size, device, sampler, drop_last=trainer_cfg.drop_last
    )
    val = data.val.loader(trainer_cfg.eval_batch_size, device)
    test = data.test.loader(trainer_cfg.eval_batch_size, device)
    limit_batches([train, val, test], trainer_cfg.limit_batches)
    return Loaders(train, val, test)
