"""The augmentation config checked before any data is built.

`DeviceAugment` needs the data's class count, so it is built after the data; its
transforms do not, and each is built here on its own so that a bad parameter is named
with its place in `aug.transforms` before a folder is decoded.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from runner.config.errors import ConfigError

# Parameters read as (min, max) ranges (RandomAffine's scale may be two: x, then y).
# Kornia checks the order of most of its ranges (degrees, shear, brightness, ...) and of
# scale and ratio in its crops and erasing, but not RandomAffine's scale, which it took
# reversed in silence; translate is (x, y), not a range.
RANGE_KEYS = ("scale", "ratio")

EXAMPLE = "{_target_: kornia.augmentation.RandomAffine, degrees: 10}"


def check_transforms(aug_cfg: Any) -> None:
    """Builds each of `aug.transforms` alone and checks its entry and parameters.

    Args:
        aug_cfg: The `aug` config node.

    Raises:
        ConfigError: Naming the transform (`aug.transforms.<i>`, its class), the value
            and the fix: an entry that is not a transform, a class that cannot be
            imported, a bad parameter.
    """
    transforms = aug_cfg.get("transforms")
    if transforms is None:
        return
    if not isinstance(transforms, ListConfig | list | tuple):
        raise ConfigError(
            f"aug.transforms must be a list of {{_target_: ...}} entries; got {transforms!r}: "
            f"e.g. aug.transforms=[{EXAMPLE}], [] for none, or choose a preset (aug=basic)"
        )
    convert = aug_cfg.get("_convert_", "none")
    for index, node in enumerate(transforms):
        _build(index, node, convert)


def _name(index: int, node: Any) -> str:
    target = node.get("_target_", "?") if isinstance(node, Mapping | DictConfig) else "?"
    return f"aug.transforms.{index} ({str(target).rsplit('.', 1)[-1]})"


def _build(index: int, node: Any, convert: str) -> nn.Module:
    """One transform, built as the group builds it; its entry and parameters checked."""
    key = f"aug.transforms.{index}"
    if not isinstance(node, DictConfig | Mapping):
        raise ConfigError(
            f"{key}={_plain(node)!r} is not a transform: each entry of aug.transforms is "
            f"{{_target_: <class>, <parameter>: <value>, ...}}, e.g. {EXAMPLE}"
        )
    if "_target_" not in node:
        raise ConfigError(
            f"{key} has no _target_: name the class, e.g. _target_: "
            f"kornia.augmentation.RandomAffine (got {_plain(node)!r})"
        )
    name = _name(index, node)
    p = node.get("p")
    if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1):
        raise ConfigError(f"{name}: p={p!r} is a probability: expected a number in [0, 1]")
    _check_ranges(name, key, node)
    try:  # converted as the group converts them (`_convert_: all`: lists, not ListConfig)
        return instantiate(node, _convert_=convert)
    except Exception as err:  # the transform's own check, through Hydra's wrapper
        cause = err.__cause__ or err
        if isinstance(cause, ImportError) or "callable target" in str(err):
            raise ConfigError(
                f"{key}: _target_={node['_target_']!r} cannot be imported: check the class "
                "name and its module, e.g. kornia.augmentation.<Name> (RandomAffine, "
                "RandomResizedCrop, ColorJiggle, ...)"
            ) from err
        reason = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0].rstrip('.')}"
        raise ConfigError(f"{name} cannot be built: {reason}. {_hint(key, node, cause)}") from err


def _check_ranges(name: str, key: str, node: Any) -> None:
    """Refuses a reversed (min, max) in the range parameters (RANGE_KEYS)."""
    for param in RANGE_KEYS:
        value = _plain(node.get(param))
        if not isinstance(value, list) or len(value) not in (2, 4):
            continue
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
            continue
        if any(low > high for low, high in zip(value[::2], value[1::2], strict=True)):
            pairs = "(min, max)" if len(value) == 2 else "(min_x, max_x, min_y, max_y)"
            raise ConfigError(
                f"{name}: {param}={value!r}: expected {pairs} with min <= max; "
                f"swap them ({key}.{param}={_swapped(value)!r})"
            )


def _swapped(value: list) -> list:
    return [v for low, high in zip(value[::2], value[1::2], strict=True) for v in (high, low)]


def _hint(key: str, node: Any, cause: BaseException) -> str:
    """What to fix when a transform's constructor refused its parameters.

    A TypeError or ValueError from a comparison or conversion inside the constructor
    names no parameter: the values given whose type differs from the signature's (a str
    or list where the default is a number, say) are named instead, or else all of them.
    """
    fallback = f"Fix its parameters ({key}.<key>=...)"
    if not isinstance(cause, TypeError | ValueError):
        return fallback
    given = {k: _plain(v) for k, v in node.items() if not str(k).startswith("_")}
    why = {k: _wrong_type(node, k, v) for k, v in given.items()}
    suspects = [f"{key}.{k}={v!r} ({why[k]})" for k, v in given.items() if why[k]]
    if suspects:
        return f"These values look like the wrong type: {', '.join(suspects)}"
    if isinstance(cause, TypeError) and "argument" not in str(cause) and given:
        listing = ", ".join(f"{key}.{k}={v!r}" for k, v in given.items())
        return f"Check the types of its values: {listing}"
    return fallback


def _wrong_type(node: Any, param: str, value: Any) -> str | None:
    """Why `value` does not fit the number `param` takes, by the target's signature."""
    if _is_number(value):
        return None
    try:  # only reached once the target was built from it, so it imports
        signature = inspect.signature(get_object(str(node["_target_"])))
    except (TypeError, ValueError, ImportError, AttributeError):
        return None
    parameter = signature.parameters.get(param)
    if parameter is None:
        return None
    default, annotation = parameter.default, parameter.annotation
    if _is_number(default):
        return f"a {type(value).__name__}; its default is the number {default!r}"
    if annotation in (int, float, "int", "float"):
        name = annotation if isinstance(annotation, str) else annotation.__name__
        return f"a {type(value).__name__}; it takes {'an' if name == 'int' else 'a'} {name}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _plain(value: Any) -> Any:
    """A config node as plain Python (for messages and checks); other values as they are."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value
