"""An Optuna search space from Hydra's override grammar, and how a person reads it.

The space comes from the preset's `hydra.sweeper.params` and the command line's ranges.

`interval(a, b)` (tagged `int`, `log`), `range(start, stop, step)` and
`choice(a, b, ...)` become Optuna distributions; a command-line range replaces the
preset's range of that key, a single value fixes the key.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep

from runner.config.sweep_values import flatten_params
from runner.config.value_checks import CHECKS, OPTION_KEYS

log = logging.getLogger(__name__)


def distribution_of(override: Override) -> Any:
    """The Optuna distribution of one search-space entry in Hydra's override grammar.

    Raises:
        ValueError: The entry is a single value or an unsupported form.
    """
    import optuna.distributions as dist

    value = override.value()
    name = override.get_key_element()
    tags = set(getattr(value, "tags", None) or ())
    spelled = f"hydra.sweeper.params.{override.input_line}"  # the command line drops the prefix
    if tags - {"log", "int"} or (tags and not isinstance(value, IntervalSweep)):
        # Unknown (`tag(Log, ...)`) or misplaced ones were dropped: a log search ran linear.
        raise ValueError(
            f"{spelled}: this search would drop tag({', '.join(sorted(tags))}, ...): it "
            "applies tag(log, ...), tag(int, ...) or both to interval(a, b), and no tag to "
            "range() or choice()"
        )
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if "int" in value.tags:  # Hydra's intervals are floats unless tagged
            if not all(float(end).is_integer() for end in (value.start, value.end)):
                raise ValueError(f"{spelled}: tag(int, ...) needs whole-number ends")
            return dist.IntDistribution(int(value.start), int(value.end), log=log_scale)
        return dist.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    if isinstance(value, RangeSweep):
        if not list(value.range()):
            raise ValueError(f"{spelled}: this range holds no value (check its start and stop)")
        ints = all(isinstance(v, int) for v in (value.start, value.stop, value.step))
        if ints and value.step > 0:  # a descending range is a list of its values
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


def override_value(value: Any) -> str:
    """A drawn value as an override's right-hand side that Hydra parses back to it.

    Optuna returns Python values: printed as they are, None would be the string "None"
    and a string with a space, comma or quote would not parse. A string that parses back
    to itself is written bare, as a job's overrides always were.
    """
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if not isinstance(value, str):
        return str(value)
    try:
        bare = OverridesParser.create().parse_override(f"key={value}").value()
    except Exception:  # Hydra's grammar refuses it bare
        bare = None
    if isinstance(bare, str) and bare == value:
        return value
    # In a quoted value only a quote and the backslashes before a quote (or the closing
    # quote) are escaped.
    escaped = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, value)
    return "'" + escaped.replace("'", "\\'") + "'"


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


@dataclass
class SearchSpace:
    """What the preset's params and the command line make of a study.

    Attributes:
        space: Optuna distribution of each searched key.
        fixed: The constant overrides every job gets: the preset's single values
            (`optim.weight_decay: 0.01` in `hydra.sweeper.params`, as Hydra's Optuna
            sweeper takes them), then the command line's, as written.
        problems: What is wrong with the params or the command line (empty: nothing).
        spelled: A searched key as the command line wrote it, where that adds the key to
            the config (`loss.fail` -> `+loss.fail`), for the jobs' overrides.
        preset_fixed: The keys the preset's params fix (their overrides are in `fixed`).
    """

    space: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    spelled: dict[str, str] = field(default_factory=dict)
    preset_fixed: list[str] = field(default_factory=list)


def _named(spelled: str, key: str, err: Exception) -> str:
    """The error's text, led by the setting it is about when it does not name it.

    Optuna's own checks (e.g. "`low > 0` must hold for `log=True`") name no key.
    """
    text = str(err)
    return text if key in text else f"{spelled}: {text}"


def search_space(params: dict[str, str] | None, arguments: list[str]) -> SearchSpace:
    """The search space from the preset's params and the command line, and the fixed rest.

    A single value in the preset's params fixes its key for every job. A range on the
    command line replaces the preset's range (or value) of that key; a single value
    there fixes the key (it leaves the space).
    """
    parser = OverridesParser.create()
    found = SearchSpace()
    preset_fixed: dict[str, str] = {}
    for key, value in flatten_params(params or {}).items():
        spelled = f"hydra.sweeper.params.{key}={value}"
        try:
            override = parser.parse_override(f"{key}={value}")
            if not override.is_sweep_override():
                preset_fixed[key] = override.input_line
                found.problems.extend(_invalid_value(spelled, key, override.value()))
                continue
            found.space[key] = distribution_of(override)
        except Exception as err:  # a grammar error, Optuna's own refusal
            found.problems.append(_named(spelled, key, err))
    try:
        overrides = parser.parse_overrides(arguments)
    except Exception as err:
        found.problems.append(f"the command line does not parse: {err}")
        return found
    for override in overrides:  # the preset's value of a key the command line sets goes
        preset_fixed.pop(override.get_key_element().lstrip("+~"), None)
    found.fixed.extend(preset_fixed.values())
    found.preset_fixed = list(preset_fixed)
    for override in overrides:
        key = override.get_key_element().lstrip("+~")
        if override.is_sweep_override():
            try:
                found.space[key] = distribution_of(override)
            except ValueError as err:
                found.problems.append(
                    _named(override.input_line, key, err).replace("hydra.sweeper.params.", "", 1)
                )
            if override.get_key_element().startswith("+"):
                found.spelled[key] = override.get_key_element()
            continue
        if key in found.space:
            log.info("optuna: %s is fixed by the command line (%s)", key, override.input_line)
            del found.space[key]
            found.spelled.pop(key, None)
        found.fixed.append(override.input_line)
    found.problems.extend(_values_out_of_range(found.space))
    return found


def _invalid_value(spelled: str, key: str, value: Any) -> list[str]:
    """A fixed value of the preset's params that its config check refuses, as a problem."""
    check = CHECKS.get(key)
    expected = None if check is None or key in OPTION_KEYS else check(value)
    return [] if expected is None else [f"{spelled} is invalid: expected {expected}"]


def _extremes(distribution: Any) -> list[Any]:
    """The values of a distribution that the config checks must accept: ends or choices."""
    import optuna.distributions as dist

    if isinstance(distribution, dist.CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def _values_out_of_range(space: dict[str, Any]) -> list[str]:
    """A searched key whose range reaches a value its config check refuses (optim.lr=-1).

    Found here, before any trial: otherwise each trial fails when it draws such a value.
    Keys whose check depends on the chosen option are left to each job's own check.
    """
    problems = []
    for key, distribution in space.items():
        check = CHECKS.get(key)
        if check is None or key in OPTION_KEYS:
            continue
        for value in _extremes(distribution):
            expected = check(value)
            if expected is not None:
                # interval() draws floats: an integer key needs tag(int, ...).
                whole = isinstance(value, float) and value.is_integer()
                hint = (
                    "; interval() draws floats: search whole numbers with "
                    "tag(int, interval(a, b)) or range(a, b)"
                    if whole and check(int(value)) is None
                    else ""
                )
                problems.append(
                    f"{key}: the search space {describe_distribution(distribution)} reaches "
                    f"{value!r}, which is invalid: expected {expected}{hint}"
                )
                break
    return problems
