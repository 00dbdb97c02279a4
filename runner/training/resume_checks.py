"""The refusals of a resume that would not continue the same run, before training.

A last.pt continues a run only under its config (but for the keys that may change on
resume), on the data it was trained on, and, inside an epoch, with as many processes as
wrote it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from runner.config.changes import MAY_CHANGE_ON_RESUME, config_changes
from runner.config.errors import ConfigError
from runner.config.redaction import redacted_container
from runner.training import checkpoint_io

log = logging.getLogger(__name__)

# What a run resumed from another run dir's last.pt may also change: it is a new run, in
# its own dir, tracked as a new MLflow run (perhaps in another store).
MAY_CHANGE_IN_A_NEW_DIR = ("paths.", "logger.")


def check_resume(run_dir: Path, cfg: DictConfig) -> None:
    """Refuses to resume a checkpoint with another config (before any work).

    With `trainer.resume=auto` and a last.pt in the run dir, this command's config must be
    the one in the dir's config_resolved.yaml, apart from the keys that may change on
    resume (runner.config.changes.MAY_CHANGE_ON_RESUME). With `trainer.resume=<path>`, it
    must be the config of the run dir the last.pt is in (where it has one), apart from
    those keys and the paths and tracking keys of the new run.

    Raises:
        ConfigError: Naming the changed keys and the ways out.
    """
    resume = cfg.trainer.resume
    last = run_dir / "checkpoints" / "last.pt"
    has_checkpoint = last.exists() or checkpoint_io.previous_path(last).exists()
    if resume == "never":
        return
    if has_checkpoint:  # a path resume also continues this dir's own last.pt once it has one
        saved, may_change = run_dir / "config_resolved.yaml", MAY_CHANGE_ON_RESUME
        # The files moved with the dir: where it lies now is no change of the run.
        may_change = (*may_change, "paths.run_dir")
        best = run_dir / "checkpoints" / "best.pt"
    elif resume != "auto":  # another run's last.pt: the config beside it, or its run dir's
        folder = Path(resume).parent  # trainer.resume=never set one aside with its config
        saved = folder / "config_resolved.yaml"
        if not saved.is_file() and folder.name == "checkpoints":
            saved = folder.parent / "config_resolved.yaml"
        may_change = (*MAY_CHANGE_ON_RESUME, *MAY_CHANGE_IN_A_NEW_DIR)
        best = Path(resume).parent / "best.pt"
    else:
        return
    saved_config, saved = _saved_config(saved, best, run_dir, resume, has_checkpoint)
    before = OmegaConf.to_container(saved_config)
    # Resolved here: a fallback_uri under ${oc.env:...} is kept as typed.
    fallback = OmegaConf.select(
        saved_config, "logger.fallback_uri", default=None, throw_on_resolution_failure=False
    )
    if fallback and OmegaConf.select(cfg, "logger.tracking_uri", default=None) == fallback:
        # A run that fell back to its local store at its start (the server was down)
        # continues there: the store answers for its run id (tracking.opening.open_run).
        may_change = (*may_change, "logger.tracking_uri")
    epochs_before = before.get("trainer", {}).get("max_epochs")
    if epochs_before is not None and epochs_before != cfg.trainer.max_epochs:
        log.warning(
            "trainer.max_epochs %s -> %s on resume: the lr schedule is rebuilt for the new "
            "length and continues at the same step, so its lr jumps (warmup, milestones and "
            "the cosine are fractions of the whole run)",
            epochs_before,
            cfg.trainer.max_epochs,
        )
    changes = config_changes(before, redacted_container(cfg), may_change)
    if not changes:
        return
    listing = "\n  - ".join(changes[:20]) + (" ..." if len(changes) > 20 else "")
    if not has_checkpoint:
        raise ConfigError(
            f"trainer.resume={resume} continues a run of another config ({saved}), and "
            f"its optimizer, schedule and weights would override this one's. Changed:\n"
            f"  - {listing}\nResume it with the settings it was trained with, or start a "
            "new run from its weights with model.pretrained_file=<its best.pt> and "
            "trainer.resume=never"
        )
    raise ConfigError(
        f"{run_dir} holds checkpoints of a run with another config, and "
        f"trainer.resume={resume} would continue it with this one. Changed:\n  - {listing}\n"
        "Start over in this dir with trainer.resume=never, or run in another dir (leave "
        "hydra.run.dir out for a new one)."
    )


def _saved_config(
    saved: Path, best: Path, run_dir: Path, resume: str, has_checkpoint: bool
) -> tuple[DictConfig, Path]:
    """The config that wrote the last.pt to resume, and the file it was read from.

    That is its run dir's config_resolved.yaml, or the copy in the best.pt beside the
    last.pt when the yaml is gone (a last.pt copied without its run dir).

    Raises:
        ConfigError: Neither is there: the config cannot be compared, and a last.pt of
            another optimizer or model would fail at its first step.
    """
    if saved.is_file():
        return OmegaConf.load(saved), saved
    stored = None
    if best.is_file():
        try:  # memory-mapped: the config is read, the weights are not
            stored = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # refused as a checkpoint later, with its own message
            log.debug("no config read from %s: %s", best, err)
    config = stored.get("config") if isinstance(stored, dict) else None
    if isinstance(config, str):
        log.info("%s is missing: comparing this command's config with %s's", saved, best)
        return OmegaConf.create(config), best
    checkpoint = run_dir / "checkpoints" / "last.pt" if has_checkpoint else Path(resume)
    fresh = (
        "start over in this dir with trainer.resume=never"
        if has_checkpoint
        else "train a new run from its weights with model.pretrained_file=<its best.pt>"
    )
    raise ConfigError(
        f"cannot check that this command's config is the one that wrote {checkpoint}: "
        f"{saved} is missing and no best.pt beside it holds that config (resuming with "
        "another optimizer, model or lr would fail or diverge). Copy the run dir whole, "
        f"with its config_resolved.yaml and checkpoints/best.pt, or {fresh}"
    )


def check_same_data(source: Path, saved: str | None, now: str) -> None:
    """Refuses to resume a checkpoint on other data than it was trained on.

    The sample order, the partial epoch's position and best.pt's val and test scores all
    refer to the samples the checkpoint was trained on. A changed image folder (files
    added or removed) reshuffles its carved splits under the same config, so a resumed
    run would go on training on images it had tested on.

    Args:
        source: The checkpoint, for the message.
        saved: Its `splits_digest`; None (a last.pt from before it was kept) checks nothing.
        now: This run's.

    Raises:
        ConfigError: The digests differ.
    """
    if saved is None or saved == now:
        return
    raise ConfigError(
        f"{source} was trained on other data than this run has: the samples of its train, "
        "val or test split, or its train labels, changed since (files added to or removed "
        "from the data folder, an edited data.exclude or data.relabel file). Resuming "
        "would continue on other samples, some of them perhaps tested on before. Restore "
        "the data as it was, start over in this dir with trainer.resume=never, or "
        "fine-tune from its weights in a new run dir with model.pretrained_file=<its "
        "best.pt>"
    )


def _launch(world_size: int) -> str:
    """How to start `world_size` processes, for the messages below."""
    if world_size == 1:
        return "a single process (python run.py ..., without torchrun or srun)"
    return (
        f"{world_size} processes (torchrun --nproc_per_node={world_size} run.py ... on one "
        f"node, or a SLURM job of {world_size} tasks)"
    )


def check_world_size(
    source: Path, saved: int | None, now: int, *, epoch: int, mid_epoch: bool
) -> None:
    """Refuses to continue a partial epoch with another number of processes; warns otherwise.

    Each rank's share of an epoch's batches depends on the world size, so the rest of a
    partial epoch cannot be split among another number of processes. At an epoch boundary
    training can go on, but the effective batch (trainer.batch_size x processes) and
    with it the optimizer steps per epoch change.

    Args:
        source: The checkpoint, for the messages.
        saved: The world size that wrote it; None (a last.pt from before it was kept)
            checks nothing.
        now: This run's world size.
        epoch: The epochs the checkpoint had finished.
        mid_epoch: Whether it was saved inside an unfinished epoch.

    Raises:
        ConfigError: `mid_epoch` and the world sizes differ.
    """
    if saved is None or saved == now:
        return
    if mid_epoch:
        raise ConfigError(
            f"{source} was saved in the middle of epoch {epoch + 1} by {saved} process(es) "
            f"(world size {saved}), and this run has {now} (world size {now}): the rest of "
            "that epoch cannot be continued by another number of processes (each one's "
            f"share of the epoch's batches depends on it). Resume it with {_launch(saved)}, "
            "or start over in this dir with trainer.resume=never"
        )
    log.warning(
        "%s was saved by %d process(es) at the end of epoch %d, and this run has %d: "
        "training goes on with an effective batch of trainer.batch_size x %d instead of "
        "x %d, so the optimizer steps per epoch change, and the lr schedule (rebuilt for the "
        "new steps per epoch, continued at the step count of the old ones) no longer lines "
        "up with the epochs; the result differs from an uninterrupted run. To continue "
        "exactly, resume with %s",
        source,
        saved,
        epoch,
        now,
        now,
        saved,
        _launch(saved),
    )
