"""What a command line Hydra refused, or a key a config lacks, means to the person.

`run.py` asks these after Hydra exited with its own error: the key meant by a misspelt
one, the options of a group that have a key, quotes for a value Hydra's grammar cannot
read. `missing_key` is also the sweeps' start checks' way of naming a key a job lacks.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.config.changes import flatten
from runner.config.choices import RUNNER_GROUP_KEYS


def missing_key(config: DictConfig, key: str) -> str | None:
    """Why a key is not in the config, with its group's keys; None when it is there.

    Hydra's own error advises adding the key with +, but a key the config lacks is
    mostly a misspelt one, and a key that a group's target does not take is refused.
    """
    absent = object()
    found = OmegaConf.select(config, key, default=absent, throw_on_resolution_failure=False)
    if found is not absent:
        return None
    parent, _, _ = key.rpartition(".")
    node = OmegaConf.select(config, parent, default=None) if parent else config
    if parent and node is not None and not isinstance(node, DictConfig):  # `optim.lr.x`
        return f"{key}: {parent} is a value ({node!r}), not a group of keys"
    leaf = key.rpartition(".")[2]
    if isinstance(node, DictConfig) and (leaf in node or OmegaConf.is_missing(node, leaf)):
        # A key there whose value is still to be given (`???`), or cannot be resolved
        # here (`${hydra:runtime.output_dir}` outside a run).
        return None
    names = [str(k) for k in node if not str(k).startswith("_")] if node is not None else []
    # The option's own keys first: the shared ones (lr multipliers, the data switches)
    # come first in the composed group, and pushed `lr` out of sight.
    shared = RUNNER_GROUP_KEYS.get(parent, ())
    names = [n for n in names if n not in shared] + [n for n in names if n in shared]
    listing = f" ({parent} has: {', '.join(names)})" if parent and names else ""
    close = difflib.get_close_matches(leaf, names, n=3, cutoff=0.75)
    meant = [f"{parent}.{name}" if parent else name for name in close]
    if not meant:  # the key of another group (`precision=bf16`, `trainer.lr=0.1`)
        meant = _keys_named(config, leaf)
    guess = f": did you mean {' or '.join(meant)}?" if meant else ""
    return f"{key}: the config has no such key; check its spelling{guess}{listing}"


def _keys_named(config: DictConfig, leaf: str) -> list[str]:
    """The config's keys (Hydra's own aside) whose last part is `leaf`, at most three."""
    tree = OmegaConf.to_container(config, resolve=False)
    tree.pop("hydra", None)
    return sorted(k for k in flatten(tree) if k.rpartition(".")[2] == leaf)[:3]


def unknown_key_hint(args: Sequence[str], config_dir: Path) -> str | None:
    """What a command line's keys that the config lacks are, each with its group's keys.

    Hydra refuses `trainer.max_epoch=3` with the advice to add the key with `+`, which the
    config check then refuses: the key is mostly a misspelt one. `run.py` asks this only
    after Hydra refused a command, so a run's start costs nothing more.

    Args:
        args: The command line's arguments (`sys.argv[1:]`).
        config_dir: The app's config dir.

    Returns:
        One line per unknown key, or None when every key is known (or the command line's
        groups do not compose either: Hydra's error says why).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from runner.config.sweep_values import override_parser

    config_name, typed = "train", []
    words = iter(args)
    for word in words:
        if word in ("-cn", "--config-name"):
            config_name = next(words, config_name)
        elif word.startswith("--config-name="):
            config_name = word.partition("=")[2]
        elif "=" in word and not word.startswith("-"):
            typed.append(word)
    GlobalHydra.instance().clear()  # the failed app's
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            loader = GlobalHydra.instance().config_loader()
            selections, grids, keys = [], {}, []
            for override in override_parser().parse_overrides(typed):
                name = override.key_or_group
                if name.startswith("hydra.searchpath"):
                    selections.append(override.input_line)
                elif override.is_add() or override.is_force_add() or override.is_delete():
                    continue  # a key added on purpose, or taken away
                elif name.startswith("hydra"):
                    continue
                elif "." not in name and loader.get_group_options(name):
                    if override.is_sweep_override():  # each option is composed below
                        grids[name] = list(override.sweep_string_iterator())
                    else:
                        selections.append(override.input_line)
                else:
                    keys.append(name)
            if not keys:  # nothing to look for: no config is composed
                return None
            # Each option of a swept group is composed (the other groups at their first):
            # a key no option has is misspelt; one that some have (model.patch_size in
            # `model=resnet18,vit_tiny`) fails only where Hydra composes the default one.
            variants, chosen = [], []  # each variant's overrides, and its (group, option)
            for group, options in grids.items():
                firsts = [f"{g}={values[0]}" for g, values in grids.items() if g != group]
                variants += [[*selections, *firsts, f"{group}={o}"] for o in options]
                chosen += [(group, o) for o in options]
            configs = [
                compose(config_name=config_name, overrides=overrides)
                for overrides in variants or [selections]
            ]
            # What Hydra composes first: the swept groups at their default options.
            base = compose(config_name=config_name, overrides=selections) if grids else None
    except Exception:  # Hydra's own error, printed already, is the one to read
        return None
    finally:
        GlobalHydra.instance().clear()
    problems = []
    for key in keys:
        found = [missing_key(cfg, key) for cfg in configs]
        if all(found):  # missing from every option: one that has a near name is shown
            problem = next((f for f in found if "did you mean" in f), found[0])
            having = options_with_key(config_dir, key)
            if having:  # spelt right, perhaps, and the chosen option has no such key
                named = " and ".join([", ".join(having[:-1]), having[-1]] if having[1:] else having)
                which = f"{named} {'has' if len(having) == 1 else 'have'} it"
                problem = problem.replace(
                    "; check its spelling", f"; {which} (choose it), or check its spelling", 1
                )
            problems.append(problem)
        elif any(found) and key.partition(".")[0] in grids and missing_key(base, key):
            problems.append(_swept_group_key_problem(key, found, chosen))
    return "\n".join(f"Error: {problem}" for problem in problems) or None


def _swept_group_key_problem(
    key: str, found: list[str | None], chosen: list[tuple[str, str]]
) -> str:
    """A key that some options of its swept group lack (`-m optim=adamw,sgd optim.momentum=0.9`).

    Hydra composes a sweep's settings once, before it sweeps the group, with the group's
    default option: its error named no option.
    """
    group = key.partition(".")[0]
    pairs = [(o, problem) for (g, o), problem in zip(chosen, found, strict=True) if g == group]
    having = [option for option, problem in pairs if problem is None]
    lacking = [option for option, problem in pairs if problem is not None]
    return (
        f"{key}: {group}={','.join(lacking)} lack{'s' if len(lacking) == 1 else ''} it and "
        f"{group}={','.join(having)} {'has' if len(having) == 1 else 'have'} it, and Hydra "
        f"applies {key} once, with {group}'s default option, before it sweeps {group}: sweep "
        f"the options that have it on their own (-m {group}={','.join(having)} {key}=...), "
        "and the others in a sweep without it"
    )


def unreadable_argument_hint(args: Sequence[str]) -> str | None:
    """The command line's `key=value` arguments Hydra's grammar cannot read, with quotes.

    Hydra's own error ("mismatched input '[' expecting <EOF>") names no argument;
    `data.split_train=train[:90%]` needs its value quoted. `run.py` asks this only after
    Hydra refused a command.

    Returns:
        One line per such argument, or None when Hydra reads every one.
    """
    from runner.config.sweep_values import override_parser

    parser = override_parser()
    lines = []
    for word in args:
        if "=" not in word or word.startswith("-"):
            continue
        try:
            parser.parse_overrides([word])
        except Exception:  # Hydra's OverrideParseException, and what its grammar raises
            key, _, value = word.partition("=")
            quoted = "" if "'" in word or '"' in value else f", in a shell '{key}=\"{value}\"'"
            lines.append(
                f"Hydra cannot read the argument {word!r}: quote its value (characters such "
                f"as [ ] : % and spaces need it){quoted}"
            )
    return "\n".join(lines) or None


def options_with_key(config_dir: Path, key: str) -> list[str]:
    """The options of `key`'s group whose own file sets it: `["loss=gce"]` for `loss.q`.

    A key spelt right is missing when the chosen option lacks it (`logger=none` has no
    `logger.export_model`). Only an option's own file is read, not its defaults.
    """
    group, _, leaf = key.partition(".")
    folder = Path(config_dir) / group
    if not leaf or "." in leaf or not folder.is_dir():
        return []
    having = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name.startswith("_"):  # a block options share (`_switches`), no option
            continue
        try:
            content = OmegaConf.load(path)
        except Exception:  # a file Hydra reads, or refuses, on its own
            continue
        # Its keys, not `leaf in content`: that is False for a key whose value is ??? (the
        # required data.root of data=imagefolder), which is the option meant most often.
        if isinstance(content, DictConfig) and leaf in set(content):
            having.append(f"{group}={path.stem}")
    return having
