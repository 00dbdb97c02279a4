"""Model creation from timm or torchvision, with offline-friendly pretrained weights."""

from __future__ import annotations

import difflib
import logging
import re
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runner.config.errors import ConfigError, UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision models that return a named tuple of logits and auxiliary logits in training
# mode unless built with aux_logits=False; the runner trains on the logits alone.
AUX_LOGIT_MODELS = ("googlenet", "inception_v3")
# The model groups' `_target_`s (conf/model/*.yaml).
TIMM_TARGET = f"{__name__}.create_timm_model"
TORCHVISION_TARGET = f"{__name__}.create_torchvision_model"
# Their auxiliary classifiers, which `without_aux_logits` drops from the model.
AUX_HEAD_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


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


def check_model_config(model_cfg: Any) -> None:
    """Refuses, before any data is built, a model name or weights file its factory would.

    Args:
        model_cfg: The model group (`_target_`, `name`, `pretrained_file`, ...).

    Raises:
        ConfigError: A timm or torchvision name that does not exist.
        PretrainedWeightsError: `model.pretrained_file` is not a file.
    """
    target = model_cfg.get("_target_")
    if target == TIMM_TARGET:
        check_timm_name(str(model_cfg.get("name")))
        _check_timm_arguments(model_cfg)
    elif target == TORCHVISION_TARGET:
        _check_torchvision_name(str(model_cfg.get("name")))
        _check_torchvision_weights(str(model_cfg.get("name")), model_cfg.get("weights"))
        _check_torchvision_arguments(model_cfg)
        _check_input_rescaling(model_cfg)
    _check_file(model_cfg.get("pretrained_file"), "model.pretrained_file")


def _check_input_rescaling(model_cfg: Any) -> None:
    """Refuses googlenet or inception_v3 weights from a file without `transform_input`.

    torchvision builds these models for its released weights with `transform_input=True`
    (they rescale their input themselves), and without weights with False. A weights file
    does not say which its weights expect, and eval rebuilds the model from the config
    alone: the config must say it.
    """
    name, file = str(model_cfg.get("name")), model_cfg.get("pretrained_file")
    if (
        name not in AUX_LOGIT_MODELS
        or file is None
        or model_cfg.get("weights") is not None
        or "transform_input" in model_cfg
    ):
        return
    payload = _runner_checkpoint(_check_file(file, "model.pretrained_file"))
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
    if _timm_weights_cached(name):
        return
    raise PretrainedWeightsError(
        f"model.pretrained=true: the weights of {name!r} are not cached and the Hugging Face "
        "Hub is out of reach. Without network, download them elsewhere (the model's "
        "model.safetensors on the Hugging Face Hub) and set "
        "model.pretrained_file=/path/to/model.safetensors"
    )


def _timm_weights_cached(name: str) -> bool:
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


def _check_torchvision_name(name: str) -> None:
    from torchvision.models import list_models

    known = list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=8, cutoff=0.6)
        raise ConfigError(
            f"model.name={name!r} is not a torchvision model. Similar names: "
            f"{', '.join(close) or 'none'} (see torchvision.models.list_models())."
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
            re-initialises it (`keep_trained_head` restores a best.pt's of the same
            classes); a best.pt's normalisation replaces the architecture's.
        **kwargs: Passed to `timm.create_model` (drop_rate, img_size, ...).

    Returns:
        The model. Its `pretrained_cfg` carries the mean/std of the pretrained weights.

    Raises:
        PretrainedWeightsError: The weights cannot be downloaded or the file is missing.
    """
    import timm

    check_timm_name(name)
    path = _check_file(pretrained_file, "model.pretrained_file")
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
        raise PretrainedWeightsError(
            f"{key} does not fit model.name={name!r} ({_cause(err)}). Point it at a state "
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
    heads = _head_prefixes(model)
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
    payload = _runner_checkpoint(path)
    if payload is None or list(payload.get("class_names") or []) != list(class_names):
        return False
    heads = _head_prefixes(model)
    own = {k: v for k, v in model.state_dict().items() if heads and k.startswith(heads)}
    state = _unwrapped(payload["model"], model.state_dict())
    if not own or not all(k in state and state[k].shape == v.shape for k, v in own.items()):
        return False
    model.load_state_dict({k: state[k] for k in own}, strict=False)
    log.info("Weights from %s: its classifier, trained on the same classes, is kept", path)
    return True


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


def _cause(err: Exception, lines: int = 4) -> str:
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

    _check_torchvision_name(name)
    if name in AUX_LOGIT_MODELS and weights is None:  # the weights' builders refuse it
        kwargs.setdefault("aux_logits", False)
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
    state = _unwrapped(_read_state(path, key), own)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(usable))
    heads = _head_prefixes(model) or ("\0",)
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


def _read_state(path: Path, key: str) -> dict[str, torch.Tensor]:
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
            f"{key} does not load ({_cause(err)}). It must be a state dict: a .safetensors "
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
    payload = _runner_checkpoint(path)
    stats = payload.get("normalization") if payload is not None else None
    if not isinstance(stats, dict):
        return None
    return tuple(stats["mean"]), tuple(stats["std"])


def _runner_checkpoint(path: Path) -> dict[str, Any] | None:
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


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
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


def pretrained_normalization(model: nn.Module) -> tuple[tuple, tuple] | None:
    """Mean and std the model's pretrained weights expect; None when not pretrained."""
    return getattr(model, "runner_normalization", None)
