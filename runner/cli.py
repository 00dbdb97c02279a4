"""What `python run.py` does, by `mode`: one recipe module per mode.

train (the default), eval, predict, preview or throughput; each recipe sits at the top of
the package and may import everything below it.
"""

from __future__ import annotations

import logging
import math
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.config.errors import UserError, traceback_wanted
from runner.config.modes import job_mode

log = logging.getLogger(__name__)


def main(cfg: DictConfig) -> float:
    """What `python run.py` calls: `run`, with a user's mistake shown as one line.

    A `UserError` (a bad key, file or value; its message says what to change) ends the
    command with "Error: <message>" and exit status 1, without a traceback, unless
    `HYDRA_FULL_ERROR=1` asks for it; every other exception keeps its traceback. In a
    `-m` sweep of eval, predict, preview or throughput, a failed job's error is recorded
    in its run dir and the sweep goes on (a training job's `SweepJob` records its own).
    """
    from runner.training import startup_clock

    startup_clock.job_start()
    try:
        return run(cfg)
    except Exception as err:
        mistake = user_error(err)
        if traceback_wanted():
            raise
        if job_mode(cfg) != "train" and _in_a_sweep():  # a train job's SweepJob records it
            return _failed_sweep_job(cfg, err, mistake)
        if mistake is None:
            raise
        raise SystemExit(f"Error: {mistake}") from None


def _in_a_sweep() -> bool:
    """Whether this job is one of a `-m` sweep's."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _failed_sweep_job(cfg: DictConfig, err: Exception, mistake: UserError | None) -> float:
    """Reports a failed job of an eval, predict, preview or throughput sweep; returns NaN.

    Such a sweep keeps no manifest: the job's error goes to its run dir
    (`JOB_ERROR_FILE`), the other jobs go on, and the sweep's end
    (`runner.sweeps.callback`) lists the failed ones and exits 1.
    """
    from runner.config.callback import JOB_ERROR_FILE

    text = str(mistake) if mistake is not None else f"{type(err).__name__}: {err}"
    if mistake is None:  # not a user's mistake: the traceback says where
        log.error("%s", "".join(traceback.format_exception(err)))
    print(f"Error: {text}", file=sys.stderr, flush=True)
    run_dir = Path(str(cfg.paths.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JOB_ERROR_FILE).write_text(text + "\n", encoding="utf-8")
    return math.nan


def user_error(err: BaseException | None) -> UserError | None:
    """The user's mistake behind `err` (also when Hydra's instantiate wrapped it), or None."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__
    return None


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
    from runner.sweeps.grid import missing_key

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
            # A key of a swept group need only be in one of its options (model.patch_size
            # in `model=resnet18,vit_tiny`): each option is composed, the others' first.
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


def run(cfg: DictConfig) -> float:
    """Runs the recipe the config's `mode` names and returns its objective.

    Args:
        cfg: The composed config.

    Returns:
        train: the best monitored value (a sweeper's objective); eval: test accuracy;
        predict: the number of images labelled; throughput: the highest img/s;
        preview: NaN.
    """
    from runner.training.host_memory import keep_freed_memory

    if cfg.trainer.get("keep_host_memory", True):  # before any DataLoader worker forks
        keep_freed_memory()
    mode = job_mode(cfg)
    if mode == "eval":
        from runner.evaluate import run_eval

        return run_eval(cfg)
    if mode == "predict":
        from runner.predict import run_predict

        return run_predict(cfg)
    if mode == "preview":
        from runner.preview import run as preview

        return preview(cfg)
    if mode == "throughput":
        from runner.throughput import run as throughput

        return throughput(cfg)
    from runner.train import run as train

    return train(cfg)
