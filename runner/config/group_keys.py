"""Keys a config group would pass to its `_target_` that the target does not take.

`python run.py +optim.momentun=0.9`, or a preset's `sched.milestones` left behind by
`sched=cosine`, would otherwise reach the constructor as an unexpected keyword argument,
after the data set and the model were built. Checked from the target's signature, so a
new option of a target needs no list here; a target that takes `**kwargs` (timm's
`create_model`) is not checked.
"""

from __future__ import annotations

import inspect
import time

from omegaconf import DictConfig, OmegaConf

from runner.config.choices import RUNNER_GROUP_KEYS

# Groups whose node is built with `instantiate`; their keys are the target's arguments.
TARGET_GROUPS = ("data", "model", "optim", "sched", "loss", "sampler", "aug", "logger")

# Arguments the runner passes to a group's target itself (runner/training/parts.py), with
# where it takes each from: a target that does not take them (torch's own lr schedulers)
# failed after the data and model were built, and a config that sets one
# (`+model.num_classes=5`) was replaced without a word.
BOUND_ARGUMENTS = {
    "model": {"num_classes": "the data's classes"},
    "sched": {
        "optimizer": "the optim group",
        "total_steps": "trainer.max_epochs and the batches per epoch",
        "steps_per_epoch": "the batches per epoch",
    },
    "loss": {"class_counts": "the train split"},
    "aug": {"num_classes": "the data's classes"},
    "sampler": {"labels": "the train split", "seed": "the run's seed="},
}

# Groups whose `instantiate` result the runner calls with arguments of its own (above, and
# the optimizer's parameter groups): without `_partial_: true` in the option's file, the
# target was called without them, and Hydra's TypeError never said why.
PARTIAL_GROUPS = {
    "model": "num_classes",
    "optim": "the model's parameter groups",
    "sched": "the optimizer and the step counts",
    "loss": "class_counts",
    "sampler": "the train labels and the seed",
}

# Arguments a group's target takes from the processes themselves: set in a config, a
# single process silently trained on half the split (`+sampler.world_size=2`), and a rank
# outside the world failed after the data was built.
PROCESS_ARGUMENTS = {
    "sampler": {"rank": "the process's rank", "world_size": "the number of processes"},
}

# Seconds this process spent importing targets' modules for the check. The first check
# imports the training stack (torch, timm, ...) while Hydra composes; the start-up clock
# counts these seconds as imports, which they are, not as composition.
_import_seconds = 0.0


def import_seconds() -> float:
    """Seconds spent so far importing the modules of the targets checked."""
    return _import_seconds


def add_import_seconds(seconds: float) -> None:
    """Counts seconds another check spent importing targets' modules (`runner.config.targets`)."""
    global _import_seconds
    _import_seconds += seconds


def unexpected_group_keys(cfg: DictConfig) -> list[str]:
    """One problem per group key its `_target_` does not take, or target it cannot import.

    Only call it on a config whose targets are all trusted: it imports them.
    """
    from hydra.utils import get_object

    global _import_seconds
    problems = []
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        if group in PARTIAL_GROUPS and node.get("_partial_") is not True:
            problems.append(
                f"{group}._partial_ is not true: the runner calls what {group}._target_ "
                f"builds with {PARTIAL_GROUPS[group]}; add `_partial_: true` to the "
                f"{group} option's YAML file, as the shipped options have"
            )
        bound = BOUND_ARGUMENTS.get(group, {})
        for key, source in bound.items():
            if key in node:
                problems.append(
                    f"{group}.{key} is passed by the runner (from {source}) and would be "
                    f"ignored: remove it with ~{group}.{key}"
                )
        for key, source in PROCESS_ARGUMENTS.get(group, {}).items():
            if key in node:
                problems.append(
                    f"{group}.{key} is {source}, which the {group} reads from torchrun or "
                    f"SLURM: remove it with ~{group}.{key} (launch several processes with "
                    "torchrun --nproc_per_node=N)"
                )
        target = str(OmegaConf.select(node, "_target_"))
        started = time.perf_counter()
        try:
            found = get_object(target)
        except (ImportError, AttributeError, ValueError) as err:
            problems.append(
                f"{group}._target_={target!r} cannot be imported ({type(err).__name__}: "
                f"{err}): check its spelling, or choose another {group} option"
            )
            continue
        finally:
            _import_seconds += time.perf_counter() - started
        try:
            parameters = inspect.signature(found).parameters
        except (TypeError, ValueError):  # no signature to read (a builtin)
            continue
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        missing = [name for name in bound if name not in parameters]
        if missing:
            problems.append(
                f"{group}._target_={target!r} does not take {', '.join(missing)}, which the "
                f"runner passes to every {group} target: choose a {group} option, or point "
                f"{group}._target_ at a function that takes {', '.join(bound)}"
                + (" (as runner.training.optim's schedules do)" if group == "sched" else "")
            )
        runner_keys = RUNNER_GROUP_KEYS.get(group, ())
        # What a config may set: not what the runner or the processes pass themselves.
        passed = {"self", "args", *bound, *PROCESS_ARGUMENTS.get(group, {})}
        takes = [name for name in parameters if name not in passed] + list(runner_keys)
        settable = f"it takes: {', '.join(takes)}" if takes else "it takes no keys"
        for key in node:
            if str(key).startswith("_") or key in parameters or key in runner_keys:
                continue
            problems.append(
                f"{group}.{key} is not an argument of {group}._target_={target!r} ({settable}): "
                f"fix its spelling, or remove it with ~{group}.{key} (a key left by a preset "
                f"when another {group} was chosen)"
            )
    return problems
