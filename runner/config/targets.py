"""Which `_target_`s a config may name, and where the flat layout's targets live now.

A config file or a checkpoint must not make the runner import and call arbitrary code,
so `_target_`s may only come from trusted packages and the modules a command line lists
in `allowed_targets`. Checkpoints written before the package was split into layers name
the old flat modules (`runner.cifar_models.cifar_resnet`); `upgrade_legacy_targets` maps
them to their new homes so those checkpoints still evaluate and predict.
"""

from __future__ import annotations

import importlib
import inspect
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The parts of the libraries that build models, optimizers, augmentations and metrics.
# Not whole packages: torch.hub.load runs a repository's hubconf.py,
# torch.utils.cpp_extension.load_inline compiles and loads native code, and
# torchvision.io and kornia.io write files, all from a checkpoint's config.
TRUSTED_TARGET_PACKAGES = (
    "runner",
    "torch.nn",
    "torch.optim",
    "torchvision.models",
    "torchvision.transforms",
    "torchvision.ops",
    "timm.create_model",
    "timm.models",
    "timm.layers",
    "timm.loss",
    "timm.optim",
    "timm.scheduler",
    "timm.data",
    "kornia.augmentation",
    "kornia.color",
    "kornia.enhance",
    "kornia.filters",
    "kornia.geometry",
    "torchmetrics",
)

# Old module -> new module, for modules that moved whole.
_MOVED_MODULES = {
    "runner.models": "runner.models.factories",
    "runner.cifar_models": "runner.models.cifar_resnet",
    "runner.optim": "runner.training.optim",
    "runner.losses": "runner.training.losses",
    "runner.samplers": "runner.data.samplers",
    "runner.cifar": "runner.data.sets.cifar",
    "runner.imagefolder": "runner.data.sets.imagefolder",
    "runner.hf": "runner.data.sets.hf",
}
# Old target -> new target, for modules that were split (or replaced by Kornia's own).
_MOVED_TARGETS = {
    "runner.data.load_digits": "runner.data.sets.digits.load_digits",
    "runner.data.make_synthetic": "runner.data.sets.synthetic.make_synthetic",
    "runner.augment.DeviceAugment": "runner.augment.device.DeviceAugment",
    "runner.aug_ops.RandomCropFlip": "runner.augment.ops.crop_flip.RandomCropFlip",
    "runner.aug_ops.RandomResizedCropFlip": (
        "runner.augment.ops.resized_crop_flip.RandomResizedCropFlip"
    ),
    "runner.aug_ops.ColorJitterAffine": "runner.augment.ops.color_jitter.ColorJitterAffine",
    "runner.aug_ops.RandomBoxErasing": "runner.augment.ops.erasing.RandomBoxErasing",
    # Kornia's own: the flat layout's was the same op with a faster sampling grid.
    "runner.aug_ops.RandomAffine": "kornia.augmentation.RandomAffine",
    "runner.aug_auto.RandAugment": "runner.augment.policies.RandAugment",
    "runner.aug_auto.TrivialAugment": "kornia.augmentation.auto.TrivialAugment",
    "runner.aug_auto.AutoAugment": "kornia.augmentation.auto.AutoAugment",
    "runner.tracking.MlflowTracker": "runner.tracking.mlflow_tracker.MlflowTracker",
    "runner.tracking.NullTracker": "runner.tracking.null.NullTracker",
}


def legacy_target(target: str) -> str:
    """Where a `_target_` of the flat layout lives now (unchanged when it did not move)."""
    if target in _MOVED_TARGETS:
        return _MOVED_TARGETS[target]
    module, _, name = target.rpartition(".")
    return f"{_MOVED_MODULES[module]}.{name}" if module in _MOVED_MODULES else target


def upgrade_legacy_targets(cfg: DictConfig) -> DictConfig:
    """A copy of a flat-layout config with every `_target_` mapped by `legacy_target`."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: legacy_target(value)
                if key == "_target_" and isinstance(value, str)
                else walk(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    return OmegaConf.create(walk(OmegaConf.to_container(cfg, resolve=False)))


def _within(name: str, allowed: list[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)


def escaped_module(target: str, allowed: list[str]) -> str | None:
    """The module outside `allowed` that a target in it reaches by attributes, if any.

    Hydra follows attributes as well as modules: `torch.nn.functional.torch.hub.load`
    is torch.hub.load, reached through the `torch` that torch.nn.functional imported,
    and `runner.training.state.os.system` is os.system. The target is located as Hydra
    does, importing only modules inside `allowed` (trusted code, whose import runs
    nothing a checkpoint chose); every module passed through, and the module the target
    itself is defined in (a Python function or class), must be inside `allowed` too.
    None when it stays inside, or when it cannot be located (its instantiation then
    fails on its own).
    """
    from runner.config.group_keys import add_import_seconds

    parts = target.split(".")
    found, depth = None, 0
    for depth in range(len(parts), 0, -1):
        name = ".".join(parts[:depth])
        if not _within(name, allowed):
            return None  # the prefix check refuses it (or it cannot be imported)
        started = time.perf_counter()  # the start-up clock counts it as imports
        try:
            found = importlib.import_module(name)
            break
        except ImportError:
            continue
        except Exception:  # a trusted module that fails to import: instantiate says so
            return None
        finally:
            add_import_seconds(time.perf_counter() - started)
    if found is None:
        return None
    for attribute in parts[depth:]:
        if not (inspect.ismodule(found) or inspect.isclass(found)):
            # An object's attributes (`CONF.rename` of a Path) are not code the
            # checks can see: only modules and classes are passed through.
            return f"an attribute of a {type(found).__name__} object"
        found = getattr(found, attribute, None)
        if found is None:
            return None
        if inspect.ismodule(found) and not _within(found.__name__, allowed):
            return found.__name__
    # A Python function or class a trusted module imported from elsewhere; builtins (torch's
    # C ops: torch.nn.functional.gelu is torch._C._nn's) stay what the module exposes.
    defined_in = getattr(found, "__module__", None)
    python_code = inspect.isfunction(found) or inspect.isclass(found)
    if python_code and isinstance(defined_in, str) and not _within(defined_in, allowed):
        return defined_in
    return None


def untrusted_targets(cfg: DictConfig, extra_allowed: tuple[str, ...] = ()) -> list[str]:
    """Lists `_target_`s outside the trusted packages, or reaching outside them.

    A target whose name is outside is refused without importing anything; one inside
    is located (`escaped_module`), importing trusted modules only.

    Args:
        cfg: A config, e.g. a composed one or one loaded back from a checkpoint.
        extra_allowed: More trusted module prefixes (besides `allowed_targets` in cfg).

    Returns:
        One problem per untrusted `_target_`, naming its key.
    """
    allowed = list(TRUSTED_TARGET_PACKAGES) + list(extra_allowed)
    extra = OmegaConf.select(cfg, "allowed_targets", default=None) or []
    allowed += [extra] if isinstance(extra, str) else list(extra)  # one module, not its letters
    raw = OmegaConf.to_container(cfg, resolve=False)  # targets as written, nothing resolved
    raw.pop("hydra", None)  # Hydra's own launchers, sweepers and callbacks
    problems = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "_target_" in node and "_args_" in node:  # what they bind to is not seen
                problems.append(
                    f"{path}._args_ is not trusted: positional arguments are not checked "
                    "(weights_only=false may be among them); pass them by name"
                )
            if "_target_" in node and node.get("weights_only", True) is not True:
                problems.append(
                    f"{path}.weights_only={node['weights_only']!r} is not trusted: it lets the "
                    "target unpickle a file, which runs any code the file names; leave it "
                    "out (or true)"
                )
            for key, child in node.items():
                child_path = f"{path}.{key}" if path else str(key)
                if key != "_target_":
                    walk(child, child_path)
                elif "${" in str(child):  # resolved only when called: the check sees the text
                    problems.append(
                        f"{child_path}={str(child)!r} is not trusted: a target is named as "
                        "written (module.name), not by an interpolation"
                    )
                elif not _within(str(child), allowed):
                    problems.append(
                        f"{child_path}={str(child)!r} is not trusted: targets must come from "
                        f"{', '.join(allowed)}; add its module to allowed_targets to allow it"
                    )
                elif (outside := escaped_module(str(child), allowed)) is not None:
                    problems.append(
                        f"{child_path}={str(child)!r} is not trusted: it reaches {outside}, "
                        f"outside {', '.join(allowed)}; name the target by the module it is "
                        "defined in, or add that module to allowed_targets"
                    )
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, f"{path}[{index}]")

    walk(raw, "")
    return problems
