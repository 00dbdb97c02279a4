"""What a multirun sweeps: the values a sweep gives each key, read with Hydra's parser.

In the launching process, the config Hydra validates has the sweep overrides left out;
validation, the config callback and the grid sweep read them back from its `hydra` node
(the command line and hydra.sweeper.params, whose nesting is read as dotted keys).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def override_parser() -> Any:
    """Hydra's override parser, with Hydra's config repository once Hydra has started.

    With the repository, a `glob(...)` sweep lists its group's options, as Hydra's own
    sweeper does; without it, it raises "ConfigLoader is not set".
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra = GlobalHydra.instance()
    repository = hydra.config_loader() if hydra.is_initialized() else None
    return OverridesParser.create(config_loader=repository)


def flatten_params(params: Any, prefix: str = "") -> dict[str, str]:
    """`{"optim": {"lr": "..."}}` (a dotted key set on the command line) -> `{"optim.lr": ...}`."""
    if OmegaConf.is_config(params):
        params = OmegaConf.to_container(params, resolve=True)
    flat: dict[str, str] = {}
    for key, value in (params or {}).items():
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def swept_values_of(cfg: DictConfig, key: str) -> list[Any] | None:
    """The values a multirun sweeps `key` over; None when it is not a list (see `read_sweeps`)."""
    return read_sweeps(cfg)[0].get(key)


def read_sweeps(cfg: DictConfig) -> tuple[dict[str, list[Any] | None], list[str]]:
    """What a multirun sweeps: key -> values, and the keys swept over more than one value.

    In the launching process, the config Hydra validates has the sweep overrides left
    out; this reads them from the `hydra` node (command line and hydra.sweeper.params;
    the last one of a key wins, as in Hydra's basic sweeper). A key's values are None
    when they are not a list: a plain command-line value (the config holds it already),
    a search range such as `interval(a, b)`, or an override Hydra itself reports as
    malformed. Both are empty outside a multirun.
    """
    if str(OmegaConf.select(cfg, "hydra.mode", default="")) != "RunMode.MULTIRUN":
        return {}, []
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None)
    flat = flatten_params(params) if isinstance(params, DictConfig) else {}
    given = [(f"{k}={v}", True) for k, v in flat.items()]
    given += [(o, False) for o in typed_overrides(cfg)]
    parser = override_parser()
    values: dict[str, list[Any] | None] = {}
    swept: dict[str, bool] = {}
    for text, from_params in given:
        key = text.lstrip("+~").split("=", 1)[0]
        try:
            (override,) = parser.parse_overrides([text])  # with the repository, for glob()
        except Exception:  # Hydra itself reports a malformed override
            values[key], swept[key] = None, False
            continue
        if not override.is_sweep_override():
            values[key] = [override.value()] if from_params else None
            swept[key] = False
        elif override.is_discrete_sweep():
            values[key] = list(override.sweep_iterator())
            swept[key] = len(values[key]) > 1
        else:  # a range searched by the sweeper: swept, with no list of values
            values[key], swept[key] = None, True
    return values, [key for key, is_swept in swept.items() if is_swept]


def typed_overrides(cfg: DictConfig) -> list[str]:
    """The command line's overrides as typed (`${oc.env:...}` unresolved: it may be unset)."""
    tasks = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    return [str(o) for o in OmegaConf.to_container(tasks, resolve=False)] if tasks else []


def values_of(cfg: DictConfig, key: str, swept_values: dict[str, list[Any] | None]) -> list[Any]:
    """The values a multirun sweeps `key` over, else the config's one value."""
    values = swept_values.get(key)
    return values if values is not None else [OmegaConf.select(cfg, key, default=None)]
