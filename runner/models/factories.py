"""Model creation from timm or torchvision, with offline-friendly pretrained weights."""

from __future__ import annotations

import difflib
import logging
import socket
from pathlib import Path

import torch
from torch import nn

from runner.config.errors import ConfigError, UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PretrainedWeightsError(UserError, RuntimeError):
    """Pretrained weights could not be loaded; the message says how to fix it."""


def _check_file(pretrained_file: str | None, key: str) -> Path | None:
    if pretrained_file is None:
        return None
    path = Path(pretrained_file).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(
            f"{key}={pretrained_file!r}: no such file. Point it at a local weights file "
            "(.safetensors, .pth or .bin)."
        )
    return path


def create_timm_model(
    num_classes: int,
    name: str,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    **kwargs,
) -> nn.Module:
    """Creates a timm model.

    Args:
        num_classes: Size of the classifier head (from the data).
        name: Any name from `timm.list_models()`.
        pretrained: Load pretrained weights: from `pretrained_file` when given, else
            downloaded from the Hugging Face Hub.
        pretrained_file: Local weights file (.safetensors, .pth, .bin); implies
            pretrained. A head of another size is dropped and re-initialised.
        **kwargs: Passed to `timm.create_model` (drop_rate, img_size, ...).

    Returns:
        The model. Its `pretrained_cfg` carries the mean/std of the pretrained weights.

    Raises:
        PretrainedWeightsError: The weights cannot be downloaded or the file is missing.
    """
    import timm

    architecture = name.split(".")[0]
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=8, cutoff=0.6)
        raise ConfigError(
            f"model.name={name!r} is not a timm model. Similar names: {', '.join(close) or 'none'}"
            " (see timm.list_models())."
        )
    path = _check_file(pretrained_file, "model.pretrained_file")
    if path is not None:
        try:
            model = timm.create_model(
                name,
                pretrained=True,
                pretrained_cfg_overlay={"file": str(path)},
                num_classes=num_classes,
                **kwargs,
            )
        except (RuntimeError, KeyError, ValueError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise PretrainedWeightsError(
                f"model.pretrained_file={pretrained_file!r} does not fit model.name={name!r} "
                f"({type(err).__name__}: {first_line[:300]}). Point it at weights of {name}, "
                "or set model.name to the architecture the file was saved from."
            ) from err
    elif not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    else:
        model = _download_timm(name, num_classes, **kwargs)
    cfg = model.pretrained_cfg
    model.runner_normalization = (tuple(cfg["mean"]), tuple(cfg["std"]))
    return model


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


def _download_timm(name: str, num_classes: int, **kwargs) -> nn.Module:
    import timm
    from huggingface_hub import constants

    # Without network, huggingface_hub retries for about a minute before failing; look
    # in the local cache only instead, which fails at once when the weights are absent.
    offline = constants.HF_HUB_OFFLINE or not hub_reachable()
    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, offline
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except Exception as err:  # network errors come in many types (OSError, HF, requests)
        raise PretrainedWeightsError(
            f"model.pretrained=true: could not get the weights of {name!r}"
            f"{' (the Hugging Face Hub is unreachable and they are not cached)' if offline else ''}"
            f" ({type(err).__name__}: {err}). Without network, download the weights "
            "elsewhere (e.g. the model's model.safetensors on the Hugging Face Hub) and "
            "set model.pretrained_file=/path/to/model.safetensors."
        ) from err
    finally:
        constants.HF_HUB_OFFLINE = saved


def create_torchvision_model(
    num_classes: int,
    name: str,
    weights: str | None = None,
    pretrained_file: str | None = None,
    **kwargs,
) -> nn.Module:
    """Creates a torchvision model through `torchvision.models.get_model`.

    Args:
        num_classes: Size of the classifier head (from the data).
        name: A torchvision model name, e.g. "resnet50".
        weights: A weights enum name (e.g. "IMAGENET1K_V2", downloaded), or None.
        pretrained_file: Local state-dict file; tensors whose shapes do not match
            (the head, when the class count differs) are skipped.
        **kwargs: Passed to `get_model`.

    Returns:
        The model.
    """
    from torchvision.models import get_model

    path = _check_file(pretrained_file, "model.pretrained_file")
    if weights is None:
        model = get_model(name, weights=None, num_classes=num_classes, **kwargs)
    else:
        try:
            model = get_model(name, weights=weights, **kwargs)
        except Exception as err:
            raise PretrainedWeightsError(
                f"model.weights={weights!r}: could not load torchvision weights for {name!r} "
                f"({type(err).__name__}: {err}). Without network, set model.weights=null and "
                "model.pretrained_file=/path/to/weights.pth."
            ) from err
        _replace_head(model, num_classes)
    if path is not None:
        load_matching_weights(model, path)
    if weights is not None or path is not None:
        # torchvision's classification weights are all trained on ImageNet.
        model.runner_normalization = (IMAGENET_MEAN, IMAGENET_STD)
    return model


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Replaces the last Linear layer when its output size differs from num_classes."""
    last_name, last = None, None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = module_name, module
    if last is None or last.out_features == num_classes:
        return
    parent = model.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else model
    setattr(parent, last_name.rpartition(".")[2], nn.Linear(last.in_features, num_classes))


def load_matching_weights(model: nn.Module, path: Path) -> list[str]:
    """Loads the tensors of a weights file whose names and shapes match the model.

    Args:
        model: The model to load into.
        path: A .safetensors file or a torch state dict (loaded with weights_only=True).

    Returns:
        The names of the model's tensors that were not loaded.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    skipped = sorted(set(own) - set(usable))
    if skipped:
        log.info(
            "Weights from %s: %d tensors not loaded (e.g. %s)",
            path,
            len(skipped),
            skipped[:3],
        )
    return skipped


def pretrained_normalization(model: nn.Module) -> tuple[tuple, tuple] | None:
    """Mean and std the model's pretrained weights expect; None when not pretrained."""
    return getattr(model, "runner_normalization", None)
