"""Model creation from timm or torchvision, with offline-friendly pretrained weights.

The model groups' `_target_`s (conf/model/*.yaml) are here; reading and checking weights
files is in `weights.py`, the start checks of the model group in `checks.py`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runner.config.errors import ConfigError
from runner.models.weights import (
    PretrainedWeightsError,
    head_prefixes,
    hub_reachable,
    load_matching_weights,
    pretrained_file_path,
    read_state,
    short_cause,
    stored_normalization,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


# torchvision models that return a named tuple of logits and auxiliary logits in training
# mode unless built with aux_logits=False; the runner trains on the logits alone.
AUX_LOGIT_MODELS = ("googlenet", "inception_v3")


# The model groups' `_target_`s (conf/model/*.yaml).
TIMM_TARGET = f"{__name__}.create_timm_model"


TORCHVISION_TARGET = f"{__name__}.create_torchvision_model"


def check_timm_name(name: str, key: str = "model.name") -> None:
    """Refuses a name that is no timm model, or a pretrained tag timm does not have.

    Args:
        name: The model name, perhaps with a tag (`resnet50.a1_in1k`).
        key: The config key that gave it, for the message.

    Raises:
        ConfigError: Naming the key, the value and similar names.
    """
    import timm

    architecture = name.split(".")[0]
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=8, cutoff=0.6)
        raise ConfigError(
            f"{key}={name!r} is not a timm model. Similar names: {', '.join(close) or 'none'}"
            " (see timm.list_models())."
        )
    tags = timm.list_pretrained(f"{architecture}.*") if name != architecture else [name]
    if name not in tags:
        raise ConfigError(
            f"{key}={name!r}: timm has no pretrained tag {name.partition('.')[2]!r} for "
            f"{architecture}. Its tags: {', '.join(tags) or 'none'}; or drop the tag."
        )


def check_torchvision_name(name: str) -> None:
    """Refuses a name that is no torchvision model, naming similar ones.

    Raises:
        ConfigError: Naming `model.name`, the value and similar names.
    """
    from torchvision.models import list_models

    known = list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=8, cutoff=0.6)
        raise ConfigError(
            f"model.name={name!r} is not a torchvision model. Similar names: "
            f"{', '.join(close) or 'none'} (see torchvision.models.list_models())."
        )


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
        pretrained_file: Local weights file (.safetensors, .pth, .bin, or a runner
            best.pt); implies pretrained. timm keeps the file's classifier when
            `num_classes` is the architecture's pretrained class count (1000), else
            re-initialises it (`weights.keep_trained_head` restores a best.pt's of the
            same classes); a best.pt's normalisation replaces the architecture's.
        **kwargs: Passed to `timm.create_model` (drop_rate, img_size, ...).

    Returns:
        The model. Its `pretrained_cfg` carries the mean/std of the pretrained weights.

    Raises:
        PretrainedWeightsError: The weights cannot be downloaded or the file is missing.
    """
    import timm

    check_timm_name(name)
    path = pretrained_file_path(pretrained_file, "model.pretrained_file")
    if path is not None:
        model = _timm_from_file(name, num_classes, path, **kwargs)
    elif not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    else:
        model = _download_timm(name, num_classes, **kwargs)
    cfg = model.pretrained_cfg
    channels = kwargs.get("in_chans", len(cfg["mean"]))
    model.runner_normalization = (path and stored_normalization(path)) or (
        stats_for_channels(cfg["mean"], channels),
        stats_for_channels(cfg["std"], channels),
    )
    return model


def _timm_from_file(name: str, num_classes: int, path: Path, **kwargs) -> nn.Module:
    """A timm model with the weights of a local file, refused when they did not load.

    With a head of another class count than the weights' (fine-tuning), timm loads the
    file loosely: tensors whose names do not match are left out without an error, so a
    file of another architecture, or one whose names carry a wrapper's prefix, loaded
    nothing. Which parameters kept their initial values is found by building the model
    a second time without the file, from the same random state.
    """
    import timm

    key = f"model.pretrained_file={str(path)!r}"
    seed = int(torch.randint(2**62, ()))  # the run's random stream still draws the head's init

    def build(file: Path | None) -> nn.Module:
        overlay = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(file)}}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return timm.create_model(
                name, num_classes=num_classes, **(overlay if file else {}), **kwargs
            )

    try:
        model = build(path)
    except Exception as err:  # a file of another model, or no weights file at all
        read_state(path, key)  # raises for a file that holds no state dict: it says so
        raise PretrainedWeightsError(
            f"{key} does not fit model.name={name!r} ({short_cause(err)}). Point it at a state "
            f"dict of {name} (.safetensors, or a .pth/.bin of tensors), or set model.name to "
            "the architecture it was saved from."
        ) from err
    # Only a randomly initialised tensor tells: a constant one (a norm's ones and zeros)
    # may hold the same values in a file.
    initial = {
        param_name: value
        for param_name, value in build(None).named_parameters()
        if value.numel() > 1 and bool(value.max() > value.min())
    }
    heads = head_prefixes(model)
    checked = [param_name for param_name in initial if not param_name.startswith(heads or "\0")]
    params = dict(model.named_parameters())
    unloaded = [n for n in checked if torch.equal(params[n], initial[n])]
    if unloaded:
        raise PretrainedWeightsError(
            f"{key} does not fit model.name={name!r}: {len(unloaded)} of its {len(checked)} "
            "randomly initialised weight tensors outside the classifier were not in the file "
            f"(e.g. {', '.join(unloaded[:3])}), so they would train from their random start. "
            f"Point it at a state dict of {name} whose names are the model's own (no wrapper "
            "prefix such as 'model.'), or set model.name to the architecture it was saved "
            "from."
        )
    return model


def stats_for_channels(stats: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """The weights' per-channel mean or std for a first layer timm adapted to `channels`.

    timm sums the RGB filters into one for a single channel, so that channel gets their
    average statistic; for more channels it repeats the RGB filters in turn, so channel
    k gets the statistic of channel k mod 3.
    """
    stats = tuple(float(v) for v in stats)
    if channels == len(stats):
        return stats
    if channels == 1:
        return (sum(stats) / len(stats),)
    return tuple(stats[k % len(stats)] for k in range(channels))


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
        **kwargs: Passed to `get_model`. googlenet and inception_v3 are built without
            their auxiliary classifiers (see `without_aux_logits`).

    Returns:
        The model.
    """
    from torchvision.models import get_model

    check_torchvision_name(name)
    if name in AUX_LOGIT_MODELS and weights is None:  # the weights' builders refuse it
        kwargs.setdefault("aux_logits", False)
    path = pretrained_file_path(pretrained_file, "model.pretrained_file")
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
        without_aux_logits(model)
        _replace_head(model, num_classes)
    if path is not None:
        load_matching_weights(model, path)
    if weights is not None or path is not None:
        # torchvision's classification weights are all trained on ImageNet; an earlier
        # run's best.pt keeps the normalisation it was trained with.
        stored = stored_normalization(path) if path is not None else None
        model.runner_normalization = stored or (IMAGENET_MEAN, IMAGENET_STD)
    return model


def arguments_set_by_weights(name: str, weights: str | None) -> dict[str, Any]:
    """The arguments torchvision's builder of `name` takes from its pretrained `weights`.

    A model built with weights is not the model built from the same config without them:
    googlenet and inception_v3 rescale their input themselves (`transform_input`), and a
    ViT takes the weights' image size (384 or 518 px for its SWAG weights). Eval and
    predict rebuild a trained model without its pretrained weights (best.pt has the
    trained ones) and pass these to get the model that was trained.

    Args:
        name: The torchvision model name.
        weights: The weights enum name the model was built with, or None.

    Returns:
        The builder's keyword arguments with their values; empty for other models.
    """
    if weights is None:
        return {}
    if name in AUX_LOGIT_MODELS:
        return {"transform_input": True}
    if name.startswith("vit_"):
        from torchvision.models import get_model_weights

        # verify takes what the builder takes: a member's name, DEFAULT, or Enum.NAME.
        chosen = get_model_weights(name).verify(str(weights))
        return {"image_size": int(chosen.meta["min_size"][0])}
    return {}


def without_aux_logits(model: nn.Module) -> nn.Module:
    """Drops the auxiliary classifiers a torchvision googlenet or inception_v3 was built with.

    In training mode such a model returns a named tuple of logits and auxiliary logits
    in place of the logits. Their builders take `aux_logits=False` only without weights;
    with weights, googlenet's drops the heads itself and inception_v3's keeps its head.
    This drops them as the builders do: the flag off and the head modules set to None.
    """
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for head in ("aux1", "aux2", "AuxLogits"):
            if hasattr(model, head):
                setattr(model, head, None)
    return model


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Replaces the last Linear layer when its output size differs from num_classes.

    Raises:
        ConfigError: The model has no Linear layer (e.g. SqueezeNet's convolutional head),
            so its pretrained head would keep the weights' class count.
    """
    last_name, last = None, None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last_name, last = module_name, module
    if last is None:
        raise ConfigError(
            f"model.weights with {type(model).__name__}: the runner fits a pretrained model "
            "to the data's classes by replacing its last nn.Linear, and this model has none. "
            "Set model.weights=null (trained from scratch with the data's class count) or "
            "choose a model with a Linear classifier."
        )
    if last.out_features == num_classes:
        return
    parent = model.get_submodule(last_name.rpartition(".")[0]) if "." in last_name else model
    setattr(parent, last_name.rpartition(".")[2], nn.Linear(last.in_features, num_classes))


def pretrained_normalization(model: nn.Module) -> tuple[tuple, tuple] | None:
    """Mean and std the model's pretrained weights expect; None when not pretrained."""
    return getattr(model, "runner_normalization", None)
