"""An Optuna search space from Hydra's override grammar, and how a person reads it.

The space comes from the preset's `hydra.sweeper.params` and the command line's ranges.

`interval(a, b)` (tagged `int`, `log`), `range(start, stop, step)` and
`choice(a, b, ...)` become Optuna distributions; a command-line range replaces the
preset's range of that key, a single value fixes the key.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from runner.config.validation import flatten_params

log = logging.getLogger(__name__)


def distribution_of(override: Override) -> Any:
    """The Optuna distribution of one search-space entry in Hydra's override grammar.

    Raises:
        ValueError: The entry is a single value or an unsupported form.
    """
    import optuna.distributions as dist

    value = override.value()
    name = override.get_key_element()
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:  # Hydra's intervals are floats unless tagged
            return dist.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return dist.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, RangeSweep):
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            last = value.start + (value.stop - 1 - value.start) // value.step * value.step
            return dist.IntDistribution(value.start, last, step=value.step)
        return dist.CategoricalDistribution(list(value.range()))
    if isinstance(value, ChoiceSweep):
        return dist.CategoricalDistribution(list(value.list))
    raise ValueError(
        f"hydra.sweeper.params.{name}={override.get_value_element_as_str()!r} is not a search "
        "space: use interval(a, b), tag(log, interval(a, b)), choice(a, b, ...) or "
        "range(start, stop, step)"
    )


def describe_distribution(distribution: Any) -> str:
    """A distribution as a person reads it, e.g. `interval(0.0001, 0.03) log`."""
    import optuna.distributions as dist

    if isinstance(distribution, dist.FloatDistribution):
        text = f"interval({distribution.low:g}, {distribution.high:g})"
        return text + (" log" if distribution.log else "")
    if isinstance(distribution, dist.IntDistribution):
        text = f"int interval({distribution.low}, {distribution.high})"
        step = f" step {distribution.step}" if distribution.step != 1 else ""
        return text + step + (" log" if distribution.log else "")
    if isinstance(distribution, dist.CategoricalDistribution):
        return "choice(" + ", ".join(str(c) for c in distribution.choices) + ")"
    return str(distribution)


def describe_space(space: dict[str, Any]) -> str:
    """`{name: distribution}` as one line, sorted by name."""
    return "{" + ", ".join(f"{k}: {describe_distribution(space[k])}" for k in sorted(space)) + "}"


def space_to_json(space: dict[str, Any]) -> dict[str, str]:
    """The space as JSON strings (Optuna's own distribution format)."""
    from optuna.distributions import distribution_to_json

    return {name: distribution_to_json(space[name]) for name in sorted(space)}


def search_space(
    params: dict[str, str] | None, arguments: list[str]
) -> tuple[dict[str, Any], list[str], list[str], dict[str, str]]:
    """The search space from the preset's params and the command line, and the fixed rest.

    A range on the command line replaces the preset's range of that key; a single value
    there fixes the key (it leaves the space).

    Returns:
        The space, the command line's constant overrides, the problems found, and the
        command line's spelling of the space's keys that it adds to the config
        (`loss.fail` -> `+loss.fail`), for the jobs' overrides.
    """
    parser = OverridesParser.create()
    space: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    problems: list[str] = []
    for key, value in flatten_params(params or {}).items():
        try:
            space[key] = distribution_of(parser.parse_override(f"{key}={value}"))
        except Exception as err:  # a grammar error or a single value
            problems.append(str(err) if isinstance(err, ValueError) else f"{key}: {err}")
    fixed = []
    try:
        overrides = parser.parse_overrides(arguments)
    except Exception as err:
        return space, fixed, [*problems, f"the command line does not parse: {err}"]
    for override in overrides:
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override():
            try:
                space[key] = distribution_of(override)
            except ValueError as err:
                problems.append(str(err).replace("hydra.sweeper.params.", "", 1))
            if override.get_key_element().startswith("+"):
                spelled[key] = override.get_key_element()
            continue
        if key in space:
            log.info("optuna: %s is fixed by the command line (%s)", key, override.input_line)
            del space[key]
            spelled.pop(key, None)
        fixed.append(override.input_line)
    return space, fixed, problems, spelled
