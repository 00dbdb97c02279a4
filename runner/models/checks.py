"""Start checks of the model group: what its factory would refuse, refused before the data.

A wrong name, a key the model does not take, weights that cannot be had: each is
refused before any data is built, with the key and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from runner.config.errors import ConfigError
from runner.models.factories import (
    AUX_LOGIT_MODELS,
    TIMM_TARGET,
    TORCHVISION_TARGET,
    check_timm_name,
    check_torchvision_name,
)
from runner.models.weights import (
    PretrainedWeightsError,
    hub_reachable,
    pretrained_file_path,
    runner_checkpoint,
    timm_weights_cached,
)


def check_model_config(model_cfg: Any) -> None:
    """Refuses, before any data is built, a model name or weights file its factory would.

    Args:
        model_cfg: The model group (`_target_`, `name`, `pretrained_file`, ...).

    Raises:
        ConfigError: A timm or torchvision name that does not exist.
        PretrainedWeightsError: `model.pretrained_file` is not a file, or is a last.pt.
    """
    target = model_cfg.get("_target_")
    if target == TIMM_TARGET:
        check_timm_name(str(model_cfg.get("name")))
        _check_timm_arguments(model_cfg)
    elif target == TORCHVISION_TARGET:
        check_torchvision_name(str(model_cfg.get("name")))
        _check_torchvision_weights(str(model_cfg.get("name")), model_cfg.get("weights"))
        _check_torchvision_arguments(model_cfg)
    path = pretrained_file_path(model_cfg.get("pretrained_file"), "model.pretrained_file")
    payload = runner_checkpoint(path) if path is not None else None
    if target == TORCHVISION_TARGET:
        _check_input_rescaling(model_cfg, payload)
    if payload is not None and {"optimizer", "state"} <= payload.keys():
        # Its weights would load, but not its trained head (a last.pt names no classes)
        # nor its normalisation: a best.pt carries both.
        raise PretrainedWeightsError(
            f"model.pretrained_file={str(path)!r} is a training-state checkpoint (last.pt): "
            f"start from that run's weights with its best.pt ({path.parent / 'best.pt'}), "
            f"or continue its training with trainer.resume={path}"
        )


def _check_input_rescaling(model_cfg: Any, payload: dict[str, Any] | None) -> None:
    """Refuses googlenet or inception_v3 weights from a file without `transform_input`.

    torchvision builds these models for its released weights with `transform_input=True`
    (they rescale their input themselves), and without weights with False. A weights file
    does not say which its weights expect, and eval rebuilds the model from the config
    alone: the config must say it.

    Args:
        model_cfg: The model group.
        payload: The weights file's content when it is a runner checkpoint
            (`runner_checkpoint`), else None.
    """
    name, file = str(model_cfg.get("name")), model_cfg.get("pretrained_file")
    if (
        name not in AUX_LOGIT_MODELS
        or file is None
        or model_cfg.get("weights") is not None
        or "transform_input" in model_cfg
    ):
        return
    known = ""
    if payload is not None and isinstance(payload.get("config"), str):
        from omegaconf import OmegaConf

        trained = OmegaConf.create(payload["config"]).get("model") or {}
        rescaled = trained.get("transform_input", trained.get("weights") is not None)
        known = f"; this best.pt's {name} was built with transform_input={bool(rescaled)}"
    raise ConfigError(
        f"model.pretrained_file={file!r} with model.name={name} and model.weights=null: "
        f"say whether these weights expect {name}'s own input rescaling: add "
        "+model.transform_input=true for torchvision's released ImageNet weights, or "
        f"+model.transform_input=false for weights trained without it{known}"
    )


# The timm group's own keys (conf/model/timm.yaml); any other goes to timm.create_model,
# as do drop_rate and drop_path_rate when set (timm leaves out the ones that are None).
_TIMM_GROUP_KEYS = {"_target_", "_partial_", "name", "pretrained", "pretrained_file"}


_TIMM_DROP_KEYS = {"drop_rate", "drop_path_rate"}


def check_weights_at_hand(model_cfg: Any) -> None:
    """Refuses timm's `model.pretrained=true` when the Hub is out of reach and nothing is cached.

    The weights are fetched when the model is built, after the data: a large folder was
    decoded whole before the run said it could not get them. Asked by the run itself,
    on the host it runs on (a sweep's start check cannot tell a job's network).

    Raises:
        PretrainedWeightsError: Naming the model and the offline fix.
    """
    if model_cfg.get("_target_") != TIMM_TARGET or not model_cfg.get("pretrained"):
        return
    if model_cfg.get("pretrained_file"):
        return
    from huggingface_hub import constants

    name = str(model_cfg.get("name"))
    if not constants.HF_HUB_OFFLINE and hub_reachable():
        return
    if timm_weights_cached(name):
        return
    raise PretrainedWeightsError(
        f"model.pretrained=true: the weights of {name!r} are not cached and the Hugging Face "
        "Hub is out of reach. Without network, download them elsewhere (the model's "
        "model.safetensors on the Hugging Face Hub) and set "
        "model.pretrained_file=/path/to/model.safetensors"
    )


def _check_timm_arguments(model_cfg: Any) -> None:
    """Refuses a key added to the model group that timm's model does not take.

    `+model.drop_rat=0.1` failed as a TypeError once the data was built. Only with such
    keys, the model is built here, on the meta device (no memory, no weights).
    """
    extra = {
        k: v
        for k, v in model_cfg.items()
        if k not in _TIMM_GROUP_KEYS and not (k in _TIMM_DROP_KEYS and v is None)
    }
    if not extra:
        return
    import timm

    name = str(model_cfg.get("name"))
    _refuse_unknown_arguments(
        lambda: timm.create_model(name.split(".")[0], num_classes=2, **extra),
        extra,
        f"timm's {name}",
    )


def _refuse_unknown_arguments(build: Callable[[], Any], extra: dict, model: str) -> None:
    """Builds a model on the meta device (no memory, no weights); refuses a key it rejects.

    Raises:
        ConfigError: The build names one of `extra` as an unexpected keyword argument.
    """
    try:
        with torch.device("meta"):
            build()
    except TypeError as err:
        # Python's wording, or timm's own for some families (poolformer, hrnet, vovnet):
        # "got unexpected keyword argument(s): ['foo']".
        unknown = re.search(r"unexpected keyword argument(?:\(s\): \[)? ?'(\w+)'", str(err))
        if unknown is None:
            return  # another problem: the real build reports it
        key = unknown.group(1)
        raise ConfigError(
            f"model.{key}={extra.get(key)!r} is not an argument of {model}: fix its "
            f"spelling, or remove it with ~model.{key}"
        ) from err
    except Exception:  # not every model builds on the meta device: the real build tells
        return


_TORCHVISION_GROUP_KEYS = {"_target_", "_partial_", "name", "weights", "pretrained_file"}


def _check_torchvision_arguments(model_cfg: Any) -> None:
    """Refuses a key added to the model group that torchvision's model does not take.

    The factory passes any other key to the model's builder (`+model.foo=1` failed as a
    TypeError once the data was built); with such keys the model is built here, on the
    meta device, as `_check_timm_arguments` does.
    """
    extra = {k: v for k, v in model_cfg.items() if k not in _TORCHVISION_GROUP_KEYS}
    if not extra:
        return
    from torchvision.models import get_model

    name = str(model_cfg.get("name"))
    if name in AUX_LOGIT_MODELS:
        extra.setdefault("aux_logits", False)
    _refuse_unknown_arguments(
        lambda: get_model(name, weights=None, num_classes=2, **extra),
        extra,
        f"torchvision's {name}",
    )


def _check_torchvision_weights(name: str, weights: Any) -> None:
    """Refuses a model.weights name that the torchvision model has no weights of."""
    if weights is None:
        return
    from torchvision.models import get_model_weights

    known = ["DEFAULT", *(w.name for w in get_model_weights(name))]
    if str(weights) not in known:
        raise ConfigError(
            f"model.weights={weights!r}: torchvision has no such weights for {name!r}. Its "
            f"weights: {', '.join(known)}; or model.weights=null to train from scratch."
        )
