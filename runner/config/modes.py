"""What each mode reads, and what a command lacks for its mode or gives it in vain.

`mode` is train (the default), eval, predict, preview or throughput. A key that a mode
does not read, typed on its command line, would change nothing: it is refused, naming
the mode and what to do instead.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config.location_checks import ckpt_file_problem
from runner.config.sweep_values import typed_overrides

# Of the groups that shape training, the keys that preview and throughput read; a typed
# key of these groups that is not among them is refused. (Eval and predict refuse theirs
# in runner/from_checkpoint.py, which knows what the checkpoint brings.)
PARTLY_READ: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "preview": (("model", "optim", "loss", "sched", "sampler", "trainer"), ("trainer.device",)),
    "throughput": (
        ("model", "data", "sampler", "sched", "trainer"),
        (
            "data.image_size",
            "data.num_classes",
            "trainer.device",
            "trainer.precision",
            "trainer.channels_last",
            "trainer.compile",
        ),
    ),
}

# The file a run of another mode than train leaves in its run dir, and whether it is
# written whole as the run ends (else as it goes: a stopped run leaves part of it).
MODE_OUTPUTS = {
    "eval": ("metrics.json", True),
    "preview": ("aug_preview.png", True),
    "throughput": ("throughput.json", False),
    "predict": ("predictions.csv", False),
}


def job_mode(cfg: DictConfig) -> str:
    """What the command does: `mode` (train by default); `+preview_only=true` is preview."""
    if cfg.get("preview_only"):  # the older spelling of mode=preview
        return "preview"
    return str(OmegaConf.select(cfg, "mode", default="train"))


def launched_by() -> tuple[str | None, int]:
    """What started this process with others, and how many processes there are.

    ("torchrun", WORLD_SIZE); ("slurm", SLURM_NTASKS) for a task started by srun; else
    (None, 1). A SLURM batch script has SLURM_NTASKS of the whole allocation but is one
    process (it has no SLURM_STEP_ID): it must not wait for ranks that never come.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return "torchrun", int(env["WORLD_SIZE"])
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm", int(env["SLURM_NTASKS"])
    return None, 1


def one_process_problem(what: str) -> str | None:
    """Why `what` (a mode, a sweep) cannot run as several processes, when it is started so."""
    launcher, processes = launched_by()
    if processes == 1:
        return None
    started = (
        f"torchrun --nproc_per_node={processes}"
        if launcher == "torchrun"
        else f"{processes} SLURM tasks"
    )
    return (
        f"{what} runs in one process, and this command was started as {processes} "
        f"({started}): each would do it all on its own. Run it with python run.py"
        + (" (one task)" if launcher == "slurm" else " alone")
    )


def mode_problems(cfg: DictConfig, swept_values: dict[str, list[Any] | None]) -> list[str]:
    """What a mode needs besides well-typed keys, and the typed keys it would ignore.

    Eval and predict need a checkpoint (predict also an input), throughput its preset. A
    key a sweep sets (`-m ckpt=a.pt,b.pt`) is checked in each job, where it has its value.
    """
    mode = OmegaConf.select(cfg, "mode", default="train")
    runs_as = job_mode(cfg)  # preview for +preview_only=true
    single = one_process_problem(f"mode={runs_as}") if runs_as != "train" else None
    if single:  # eval under torchrun made one MLflow run per process, in one run dir
        return [single]
    if cfg.get("preview_only") is True and mode not in ("train", "preview"):
        return [
            f"+preview_only=true draws the augmentation preview and would replace "
            f"mode={mode}: give one of them (mode=preview is the same as +preview_only=true)"
        ]
    if mode == "throughput" and OmegaConf.select(cfg, "throughput", default=None) is None:
        return [
            "mode=throughput needs the throughput settings of its preset: run "
            "python run.py experiment=throughput (it sets mode=throughput)"
        ]
    if swept_values.get("mode"):  # `-m mode=eval,predict`: each job checks its own mode
        return []
    typed = typed_overrides(cfg)
    typed_keys = [override_key(o) for o in typed]
    if mode not in ("eval", "predict"):
        # Read only by eval and predict: a run of another mode would ignore them silently
        # (a fine-tune meant from `ckpt=` trained from scratch).
        ignored = [
            key
            for key in ("ckpt", "predict.input")
            if OmegaConf.select(cfg, key, default=None) is not None or swept_values.get(key)
        ]
        for key in typed_keys:  # their settings too (eval.tta=flip)
            if key.startswith(("eval.", "predict.")) and key not in ignored:
                ignored.append(key)
        return _unread_problems(runs_as, typed) + [
            f"{key} is read by mode=eval and mode=predict only, and mode={mode} would ignore "
            f"it: add mode={'predict' if key.startswith('predict.') else 'eval'} to use it"
            + (
                ", or, to train a timm or torchvision model starting from a checkpoint's "
                "weights, give model.pretrained_file=<best.pt> instead of ckpt"
                if key == "ckpt"
                else ""
            )
            for key in ignored
        ]
    other = "predict" if mode == "eval" else "eval"
    problems = [
        f"{key} is read by mode={other} only, and mode={mode} would ignore it: "
        f"use {mode}.{key.split('.', 1)[1]} (if it exists) or mode={other}"
        for key in typed_keys
        if key.startswith(f"{other}.")  # the other mode's settings (eval.tta=flip)
    ]
    ckpt = OmegaConf.select(cfg, "ckpt", default=None)
    swept = "ckpt" in swept_values  # each job checks its own
    if ckpt is None and not swept:
        problems.append(
            f"mode={mode} needs a checkpoint: set ckpt=<run dir>/checkpoints/best.pt "
            "or ckpt=runs:/<mlflow run id>"
        )
    if isinstance(ckpt, str) and ckpt and not swept:
        problem = ckpt_file_problem(ckpt)  # a file that is not there; a URI is the store's
        if problem is not None:
            problems.append(f"ckpt={ckpt!r}: {problem}")
    given = OmegaConf.select(cfg, "predict.input", default=None) is not None
    if mode == "predict" and not given and "predict.input" not in swept_values:
        problems.append(
            "mode=predict needs images: set predict.input=<image file or folder of images>"
        )
    return problems


def held_out_problems(cfg: DictConfig) -> list[str]:
    """`data.split_train=null` (data=hf: a held-out split tested whole) outside its mode.

    It is read by `mode=eval eval.data=current` only, with the split `data.split_test`
    names (`runner.data.sets.hf_held_out`).
    """
    if OmegaConf.select(cfg, "data.split_train", default="") is not None:
        return []
    if job_mode(cfg) != "eval" or OmegaConf.select(cfg, "eval.data", default=None) != "current":
        return [
            "data.split_train=null (a held-out set, tested whole) is read by mode=eval "
            "eval.data=current only: to train, name the train split (e.g. "
            "data.split_train=train)"
        ]
    if OmegaConf.select(cfg, "data.split_test", default=None) is None:
        return [
            "data.split_train=null tests the split data.split_test names, whole, and it is "
            "null: name it (a table file's rows are its train split: data.split_test=train)"
        ]
    return []


def override_key(override: str) -> str:
    """The key an override sets: `model` for `model=resnet18`, `optim.lr` for `+optim.lr=1`."""
    return str(override).lstrip("+~").split("=", 1)[0]


def _unread_problems(mode: str, typed: list[str]) -> list[str]:
    """The typed overrides of groups that `mode` reads only partly, for keys it does not read."""
    groups, read = PARTLY_READ.get(mode, ((), ()))
    unread = [
        o for o in typed if override_key(o).split(".")[0] in groups and override_key(o) not in read
    ]
    if not unread:
        return []
    if mode == "preview":
        return [
            f"{' '.join(unread)}: mode=preview draws training images through the aug preset, "
            "reading data, aug, seed and trainer.device only, and would ignore this: leave it out"
        ]
    models = [o for o in unread if override_key(o).split(".")[0] == "model"]
    others = [o for o in unread if o not in models]
    problems = []
    if models:  # the timed models are throughput.models, built as timm builds them
        problems.append(
            f"{' '.join(models)}: mode=throughput times the timm models of throughput.models "
            "and would ignore this: name them there, e.g. throughput.models=[resnet18,resnet50]"
        )
    if others:  # synthetic batches at throughput.batch_sizes: no data set, no epochs
        batch_size = [o for o in others if override_key(o) == "trainer.batch_size"]
        problems.append(
            f"{' '.join(others)}: mode=throughput times synthetic batches and, of the data, "
            f"sampler, sched and trainer keys, reads only {', '.join(read)}, so it would "
            "ignore this: leave it out"
            + ("; the batch sizes it times are throughput.batch_sizes" if batch_size else "")
        )
    return problems
