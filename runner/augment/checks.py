"""The augmentation config checked before any data is built.

`DeviceAugment` needs the data's class count, so it is built after the data; its
transforms do not, and each is built here on its own so that a bad parameter is named
with its place in `aug.transforms` before a folder is decoded.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate

from runner.config.errors import ConfigError


def check_transforms(aug_cfg: Any) -> None:
    """Builds each of `aug.transforms` alone and checks its probability `p`.

    Raises:
        ConfigError: Naming the transform (`aug.transforms.<i>`, its class) and why.
    """
    for index, node in enumerate(aug_cfg.get("transforms") or []):
        name = f"aug.transforms.{index} ({str(node.get('_target_', '?')).rsplit('.', 1)[-1]})"
        p = node.get("p")
        if p is not None and (
            isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1
        ):
            raise ConfigError(f"{name}: p={p!r} is a probability: expected a number in [0, 1]")
        try:  # converted as the group converts them (`_convert_: all`: lists, not ListConfig)
            instantiate(node, _convert_=aug_cfg.get("_convert_", "none"))
        except Exception as err:  # the transform's own check, through Hydra's wrapper
            cause = err.__cause__ or err
            reason = f"{type(cause).__name__}: {str(cause).rstrip('.')}"
            raise ConfigError(
                f"{name} cannot be built: {reason}. Fix its parameters "
                f"(aug.transforms.{index}.<key>=...)"
            ) from err
