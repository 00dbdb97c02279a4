"""Pretrained weights: reading a file, checking that it fits, what a best.pt carries.

A runner best.pt carries, besides its weights, its normalisation and its trained head
(`keep_trained_head`, which the training run calls once the model is built). Whether
the Hugging Face Hub answers, and whether timm's weights are cached, are here too.
Used by the factories (`factories.py`) when they build a model, and by the start checks
(`checks.py`) before any data is built.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runner.config.errors import UserError

log = logging.getLogger(__name__)


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights could not be loaded; the message says how to fix it."""


def pretrained_file_path(pretrained_file: str | None, key: str) -> Path | None:
    """The path `pretrained_file` names (None for none), refused when it is no file.

    Raises:
        PretrainedWeightsError: Naming `key`, when the path is not a file.
    """
    if pretrained_file is None:
        return None
    path = Path(pretrained_file).expanduser()
    if not path.is_file():
        what = "a folder, not a weights file" if path.is_dir() else "no such file"
        inside = [p.name for p in (path / "best.pt", path / "model.safetensors") if p.is_file()]
        hint = f" (it holds {' and '.join(inside)})" if path.is_dir() and inside else ""
        raise PretrainedWeightsError(
            f"{key}={pretrained_file!r}: {what}{hint}. Point it at a local weights file "
            "(.safetensors, .pth or .bin, or a run's checkpoints/best.pt)."
        )
    return path


def short_cause(err: Exception, lines: int = 4) -> str:
    """The error's type and first lines: a state-dict mismatch names its keys from line 2."""
    text = " ".join(line.strip() for line in str(err).strip().splitlines()[:lines])
    return f"{type(err).__name__}: {text[:600]}"


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection within `timeout_s`."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def timm_weights_cached(name: str) -> bool:
    """Whether timm finds the pretrained weights of `name` in the local caches.

    True also when timm names no file to look for: building the model then says.
    """
    import timm
    from huggingface_hub import try_to_load_from_cache

    pretrained = timm.models.get_pretrained_cfg(name)
    if pretrained is None:
        return True
    if pretrained.hf_hub_id:
        repo, _, revision = pretrained.hf_hub_id.partition("@")
        files = [getattr(pretrained, "hf_hub_filename", None)]
        files += ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
        return any(
            isinstance(try_to_load_from_cache(repo, file, revision=revision or None), str)
            for file in files
            if file
        )
    if pretrained.url:  # torch.hub's cache, as timm downloads such weights
        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(pretrained.url).name).is_file()
    return True


# The auxiliary classifiers of torchvision's googlenet and inception_v3, which
# `factories.without_aux_logits` drops: a file saved with them has tensors the model has not.
AUX_HEAD_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


# Prefixes that wrappers put before every name of a saved state dict (DDP's `module.`,
# a Lightning module's `model.` attribute).
WRAPPER_PREFIXES = ("module.", "model.")


def load_matching_weights(model: nn.Module, path: Path) -> list[str]:
    """Loads a weights file into the model; only the classifier head may be left out.

    Tensors whose names and shapes match are loaded; the head's are skipped when the
    class count differs. A prefix that wraps every name (`module.`, `model.`) is taken
    off first.

    Args:
        model: The model to load into.
        path: A .safetensors file or a torch state dict (loaded with weights_only=True).

    Returns:
        The names of the model's tensors that were not loaded (the head's).

    Raises:
        PretrainedWeightsError: The file does not load, or leaves a tensor outside the
            head unloaded (another architecture, or a checkpoint of another layout).
    """
    key = f"model.pretrained_file={str(path)!r}"
    own = model.state_dict()
    state = _unwrapped(read_state(path, key), own)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(usable))
    heads = head_prefixes(model) or ("\0",)
    # BatchNorm's step counter is not a weight; files saved before it existed lack it.
    missing = [
        k for k in skipped if not k.startswith(heads) and not k.endswith("num_batches_tracked")
    ]
    # A deeper model's file (resnet34's into resnet18) has every tensor the model needs,
    # and more; auxiliary classifiers the model was built without are not the model's.
    extra = [
        k
        for k in state
        if k not in own and not k.startswith(heads) and not k.startswith(AUX_HEAD_PREFIXES)
    ]
    if missing or extra:
        problem = (
            f"{len(missing)} of its {len(own)} tensors outside the classifier are missing "
            f"or of another shape (e.g. {', '.join(missing[:3])}; the file has e.g. "
            f"{', '.join(list(state)[:3])})"
            if missing
            else f"the file has {len(extra)} tensors the model has not (e.g. "
            f"{', '.join(extra[:3])})"
        )
        raise PretrainedWeightsError(
            f"{key} does not fit {type(model).__name__}: {problem}. Point it at weights of "
            "this architecture, or set model.name to the one the file was saved from."
        )
    model.load_state_dict(usable, strict=False)
    if skipped:
        log.info("Weights from %s: not loaded (the head): %s", path, ", ".join(skipped))
    return skipped


def read_state(path: Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: .safetensors, a state dict, or a checkpoint's.

    Raises:
        PretrainedWeightsError: Naming `key`, when the file holds no state dict.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict):
                state = state.get("state_dict", state.get("model", state))
    except Exception as err:  # not a weights file, or a pickled whole model
        raise PretrainedWeightsError(
            f"{key} does not load ({short_cause(err)}). It must be a state dict: a .safetensors "
            "file, or a .pth/.bin of tensors saved with torch.save(model.state_dict(), ...)."
        ) from err
    if not isinstance(state, dict):
        raise PretrainedWeightsError(
            f"{key} holds a {type(state).__name__}, not a state dict: save it with "
            "torch.save(model.state_dict(), ...)."
        )
    return state


def _unwrapped(state: dict[str, torch.Tensor], own: dict[str, Any]) -> dict[str, torch.Tensor]:
    """`state` without a prefix that wraps every name (`module.`, `model.`)."""
    for prefix in WRAPPER_PREFIXES:
        if state and not set(state) & set(own) and all(k.startswith(prefix) for k in state):
            return {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def stored_normalization(path: Path) -> tuple[tuple, tuple] | None:
    """The mean and std a runner best.pt was trained with; None for other files.

    Its weights expect the earlier run's normalisation, not the ImageNet statistics of
    the architecture's pretrained weights.
    """
    payload = runner_checkpoint(path)
    stats = payload.get("normalization") if payload is not None else None
    if not isinstance(stats, dict):
        return None
    return tuple(stats["mean"]), tuple(stats["std"])


def runner_checkpoint(path: Path) -> dict[str, Any] | None:
    """A runner best.pt's content (its tensors mapped, not read); None for other files.

    Other files (.safetensors, a bare state dict, a legacy non-zip file that cannot be
    mapped) were loaded, or refused, by the factory already.
    """
    if path.suffix == ".safetensors":
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        return None
    return payload


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """`<name>.` of each classifier layer (their tensors may stay unloaded); () for none.

    A distilled timm model (DeiT) has two, its head and its distillation head, and timm
    re-initialises both for another class count.
    """
    from runner.models.heads import classifier_layers

    try:
        heads = classifier_layers(model)
    except ValueError:
        return ()
    return tuple(
        f"{name}." for name, module in model.named_modules() if any(module is h for h in heads)
    )


def keep_trained_head(
    model: nn.Module, pretrained_file: str | None, class_names: Sequence[str]
) -> bool:
    """Loads the classifier of a runner best.pt trained on the same classes, in order.

    Fine-tuning an earlier run: timm re-initialises a file's head unless it has the
    architecture's pretrained class count (1000), and a factory knows the class count,
    not the classes. A best.pt whose `class_names` are the data's keeps its trained
    head here; any other file's head stays as the factory left it.

    Returns:
        Whether the head was loaded.
    """
    if not pretrained_file:
        return False
    path = Path(pretrained_file).expanduser()
    payload = runner_checkpoint(path)
    if payload is None or list(payload.get("class_names") or []) != list(class_names):
        return False
    heads = head_prefixes(model)
    own = {k: v for k, v in model.state_dict().items() if heads and k.startswith(heads)}
    state = _unwrapped(payload["model"], model.state_dict())
    if not own or not all(k in state and state[k].shape == v.shape for k, v in own.items()):
        return False
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    log.info("Weights from %s: its classifier, trained on the same classes, is kept", path)
    return True
