"""The augmentation config checked before any data is built.

`DeviceAugment` needs the data's class count, so it is built after the data; its
transforms do not, and each is built here on its own so that a bad parameter is named
with its place in `aug.transforms` before a folder is decoded. The built transforms then
take a tiny batch of the data's image size, as the pipeline would hand it to them, so a
module that fails on images, or changes their shape, is refused before the data too.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from kornia.augmentation import AugmentationBase2D, MixAugmentationBaseV2, RandomJigsaw
from kornia.augmentation.container import ImageSequentialBase
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from runner.augment.device import DeviceAugment
from runner.config.errors import ConfigError

# Parameters read as (min, max) ranges (RandomAffine's scale may be two: x, then y).
# Kornia checks the order of most of its ranges (degrees, shear, brightness, ...) and of
# scale and ratio in its crops and erasing, but not RandomAffine's scale, which it took
# reversed in silence; translate is (x, y), not a range.
RANGE_KEYS = ("scale", "ratio")

EXAMPLE = "{_target_: kornia.augmentation.RandomAffine, degrees: 10}"

# What draws its parameters per image of a batch: Kornia's augmentations, its containers
# and policies (AutoAugment, ...), and its mixing (refused in the list, see _build).
KORNIA_BASES = (AugmentationBase2D, ImageSequentialBase, MixAugmentationBaseV2)

log = logging.getLogger(__name__)


def check_transforms(aug_cfg: Any, data_cfg: Any) -> None:
    """Builds each of `aug.transforms` alone, then runs them on a tiny batch of images.

    The batch is two images of `data.image_size` with `data.channels` channels (3, as
    every data set but the synthetic one decodes to), in the dtype and range each
    transform gets them in training (uint8 for a first module that takes it, else float
    in [0, 1]), on the CPU, without gradients and with a forked RNG, so the run's seeded
    draws are the same as without the check.

    Args:
        aug_cfg: The `aug` config node.
        data_cfg: The `data` config node.

    Raises:
        ConfigError: Naming the transform (`aug.transforms.<i>`, its class), the value
            and the fix: an entry that is not a transform, a class that cannot be
            imported, a bad parameter, a module that fails on the images or returns
            another shape than it was given.
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
    built = [
        (_name(index, node), _build(index, node, convert)) for index, node in enumerate(transforms)
    ]
    if built:
        _run_on_a_small_batch(built, data_cfg.image_size, data_cfg.get("channels", 3))


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
        module = instantiate(node, _convert_=convert)
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
    if isinstance(module, MixAugmentationBaseV2) and not isinstance(module, RandomJigsaw):
        # A transform sees images only: it would mix them and leave each its own label.
        raise ConfigError(
            f"{name} mixes images of the batch, and in aug.transforms their labels are not "
            "mixed with them: use aug.mixup_alpha and aug.cutmix_alpha (with aug.mix_prob), "
            "which mix the labels too, and leave it out"
        )
    if not isinstance(module, KORNIA_BASES):
        _refuse_batch_wide_draws(name, module)
    return module


def _refuse_batch_wide_draws(name: str, module: nn.Module) -> None:
    """Refuses torchvision's transforms, and warns of other modules that are not Kornia's.

    The device augments a whole batch in one call: Kornia's augmentations draw their
    parameters per image, but torchvision's RandomHorizontalFlip flipped every image of
    the batch, or none, without a word.
    """
    kind = type(module)
    if kind.__module__.startswith("torchvision."):
        raise ConfigError(
            f"{name} is torchvision's: the device augments a whole batch in one call, and "
            "it draws once for all of its images (one flip for the batch). Use Kornia's "
            f"counterpart, which draws per image (kornia.augmentation.{kind.__name__}, where "
            "Kornia has that name)"
        )
    log.warning(
        "%s (%s.%s) is no Kornia augmentation: it gets the whole batch in one call, so a "
        "random draw of its own applies to every image of the batch alike",
        name,
        kind.__module__,
        kind.__qualname__,
    )


def _check_ranges(name: str, key: str, node: Any) -> None:
    """Refuses a reversed (min, max) in the range parameters (RANGE_KEYS)."""
    for param in RANGE_KEYS:
        value = _plain(node.get(param))
        if not isinstance(value, list) or len(value) not in (2, 4):
            continue
        if not all(_is_number(v) for v in value):
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
    lists = [k for k, v in given.items() if isinstance(v, list)]
    if isinstance(cause, TypeError) and "tuple" in str(cause) and "list" in str(cause) and lists:
        # A command line (and YAML) writes [32, 32] as a list, never as a tuple.
        same = [k for k in lists if len(set(map(str, given[k]))) == 1 and given[k]]
        one = f": give one number where it takes one ({key}.{same[0]}={given[same[0]][0]})"
        return (
            f"It takes a tuple where {', '.join(f'{key}.{k}' for k in lists)} is a list, "
            f"which a config cannot write as a tuple{one if same else ''}"
        )
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


def _run_on_a_small_batch(
    built: Sequence[tuple[str, nn.Module]], image_size: int, channels: int
) -> None:
    """Passes two images through the transforms in order, as `DeviceAugment` does.

    Each module runs in a `DeviceAugment` of its own, so it gets the dtype and range
    the pipeline would give it (uint8 for a first module that takes it) and gray images
    go through the policies as the pipeline passes them.
    """
    where = f"data.image_size={image_size}, data.channels={channels}"
    shape = (2, channels, image_size, image_size)
    generator = torch.Generator().manual_seed(0)  # the images: no draw from the run's RNG
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    # The transforms draw from the host's global RNG: forked, so the run's draws are
    # unchanged, and seeded, so the check's own draws are the same in every run.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.default_generator.manual_seed(0)  # the host's only: fork_rng left CUDA's
        for name, module in built:
            step = DeviceAugment([module]).train()
            try:
                out = step(images)
            except ConfigError as err:  # our own ops and DeviceAugment say what to set
                # Their text names "Class (aug.transforms)" for when they run unchecked.
                text = str(err).removeprefix(f"{type(module).__name__} (aug.transforms): ")
                raise ConfigError(f"{name}: {text}") from err
            except Exception as err:
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
                raise ConfigError(
                    f"{name} fails on a batch of {channels}x{image_size}x{image_size} images "
                    f"({where}): {reason}. Fix its parameters or leave it out of aug.transforms"
                ) from err
            if not isinstance(out, torch.Tensor) or out.shape != images.shape:
                got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ConfigError(
                    f"{name} returns images of shape {got} from images of shape "
                    f"{tuple(images.shape[1:])} ({where}): the model would train on other "
                    f"images than it is tested on. Use transforms that keep the images' "
                    f"shape (a crop's size is [{image_size}, {image_size}]), or leave it out"
                )
            images = out
