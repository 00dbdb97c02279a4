"""Training progress across restarts: `TrainState`, checkpoints/last.pt, and resuming.

last.pt holds everything needed to continue exactly: weights, optimizer, schedule,
scaler, EMA, every RNG state (under DDP every rank's) and the progress (`TrainState`),
the position inside an unfinished epoch included, and the number of processes that wrote
it. It loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from runner.config.errors import ConfigError
from runner.config.files import replaced_whole, set_aside
from runner.data.splits import DataSplits, splits_digest
from runner.models.weights import short_cause
from runner.reports.analysis import REPORT_FILES
from runner.sweeps.out_of_fold import OOF_FILE
from runner.training import checkpoint_io, distributed, rank_sync
from runner.training.optim import load_schedule
from runner.training.parts import TrainingParts
from runner.training.resume_checks import check_same_data, check_world_size

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Progress that a checkpoint carries across a restart."""

    epoch: int = 0  # finished epochs
    global_step: int = 0  # training batches done, including a partial epoch
    best_value: float = float("nan")
    best_tie_break: float = float("nan")  # the best epoch's val/loss (ties on the monitor)
    best_epoch: int = 0
    epochs_since_best: int = 0  # epochs since the monitored value last got better (patience)
    nan_skips: int = 0
    mlflow_run_id: str | None = None
    partial_epoch: dict[str, Any] | None = None  # engine.EpochStats of an unfinished epoch
    partial_epoch_lr: float | None = None  # the lr of that epoch's first step, logged as lr
    history: list[dict[str, float]] = field(default_factory=list)
    data_digest: str | None = None  # `splits_digest` of the data; None in an older last.pt


def last_payload(state: TrainState, parts: TrainingParts) -> dict[str, Any]:
    """The content of checkpoints/last.pt: everything needed to continue training exactly.

    Under DDP a collective call (every rank's RNG states go into rank 0's file): every
    rank builds it at the same points, the loop's stop and end-of-epoch checkpoints.
    """
    rng = get_rng_state()
    world = distributed.current()
    return {
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "ema": parts.ema.module.state_dict() if parts.ema is not None else None,
        "rng": rng,  # this process's (rank 0's in the file): all a single process needs
        # Each rank draws its own augmentations: restoring rank 0's states on every rank
        # (or reseeding) would make the resumed ranks draw other numbers than they did.
        "rng_by_rank": rank_sync.gather(rng) if world.distributed else None,
        # A partial epoch can only be continued by as many processes as began it.
        "world_size": world.world_size,
        "state": asdict(state),
    }


def continue_requeued_run(cfg: DictConfig) -> None:
    """Makes a run started with `trainer.resume=never` continue when SLURM requeues it.

    `never` sets the run dir's earlier checkpoints aside when the job starts. A job that
    SLURM requeues (preempted, out of time, its node failed: SLURM_RESTART_COUNT > 0)
    runs the same command in the same run dir again, and the checkpoints there are then
    its own: it goes on from them (`auto`) rather than starting over at each requeue.
    """
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if cfg.trainer.resume == "never" and restarts > 0:
        log.info(
            "trainer.resume=never, but SLURM requeued this job (%d restart(s)): it continues "
            "from its own checkpoint (trainer.resume=auto)",
            restarts,
        )
        cfg.trainer.resume = "auto"


def resume_or_start(
    run_dir: Path, resume: str, parts: TrainingParts, data: DataSplits, *, seed: int
) -> TrainState:
    """Restores the newest loadable checkpoint when resuming, else a fresh state.

    `resume=auto` continues from this run dir's checkpoints/last.pt (or, when that file
    is damaged, the one before it); `never` starts fresh; a path starts from that file (a
    new MLflow run, with its best.pt along), and once this run dir has a last.pt of its
    own (a stop, a requeue), it goes on from that one, as `auto` does.

    The RNG states are set here too: each rank's own from the checkpoint, or on a fresh
    start each rank's own stream from `seed` (see `restore_rng`).

    Args:
        run_dir: The run dir (rank 0's under DDP).
        resume: `trainer.resume`: auto, never, or the path of a last.pt.
        parts: The freshly built model, optimizer, ... to load the checkpoint into.
        data: The run's data, which must be the data the checkpoint was trained on.
        seed: The run's `seed`, for the ranks' random streams.

    Raises:
        ConfigError: The path is not a last.pt, its weights do not fit the model, it
            stopped in the middle of an epoch with another number of processes, or it
            was trained on other data.
    """
    digest = splits_digest(data)
    if resume == "never":
        return _fresh_start(seed, digest)
    last = run_dir / "checkpoints" / "last.pt"
    own = last.exists() or checkpoint_io.previous_path(last).exists()
    if resume == "auto" and not own:
        return _fresh_start(seed, digest)
    if own:  # a path resume that ran here before (stopped, requeued) goes on from here
        saved, source = checkpoint_io.load_newest(last)
        if resume != "auto":
            log.info(
                "trainer.resume=%s: this run dir has a last.pt of its own (the run was "
                "stopped or requeued), which it continues instead",
                resume,
            )
    else:
        saved, source = checkpoint_io.load_checkpoint(resume), Path(resume)
        if not isinstance(saved, dict) or not {"optimizer", "state"} <= saved.keys():
            raise ConfigError(
                f"trainer.resume={resume!r} is not a last.pt (it holds no optimizer and "
                "training state; a best.pt has weights only): pass the run's "
                "checkpoints/last.pt, or fine-tune from weights with model.pretrained_file"
            )
    check_same_data(source, saved["state"].get("data_digest"), digest)
    check_world_size(
        source,
        saved.get("world_size"),  # None in a last.pt from before it was kept
        distributed.current().world_size,
        epoch=saved["state"]["epoch"],
        mid_epoch=bool(saved["state"].get("partial_epoch")),
    )
    try:
        parts.model.load_state_dict(saved["model"])
    except RuntimeError as err:
        raise ConfigError(
            f"trainer.resume={resume}: {source} does not fit this model ({short_cause(err)}): "
            "resume with the model settings it was trained with (its run dir's "
            "config_resolved.yaml), or start over with trainer.resume=never"
        ) from err
    parts.optimizer.load_state_dict(saved["optimizer"])
    load_schedule(parts.scheduler, saved["scheduler"])  # this run's, where the saved one stopped
    parts.scaler.load_state_dict(saved["scaler"])
    if parts.ema is not None:
        if saved.get("ema") is not None:
            parts.ema.module.load_state_dict(saved["ema"])
        else:  # trained without EMA so far: the average starts from the weights, not the init
            parts.ema.set(parts.model)
    state = TrainState(**{**saved["state"], "data_digest": digest})
    restore_rng(saved, seed, state.global_step)
    if not own:  # another run's checkpoint: this run keeps its own MLflow run
        state.mlflow_run_id = None
        _take_best_along(Path(resume), run_dir, state)
    log.info("resumed from %s: epoch %d done, step %d", source, state.epoch, state.global_step)
    return state


# The files that say what the earlier run of a dir was and what it reached, and those it
# wrote under some settings only (label noise, bad files, k-fold, the reports), which
# this run may not write again: left in place, they would seem to be this run's. (Not
# its data.exclude.csv: this run may read its copy, `data.exclude=<run dir>/...`.)
RUN_RECORDS = (
    "metrics.json",
    "config_resolved.yaml",
    "label_noise.csv",
    "bad_files.txt",
    OOF_FILE,
    *REPORT_FILES,
)


def set_aside_checkpoints(run_dir: Path) -> Path | None:
    """Moves an earlier run's checkpoints/ to checkpoints.replaced-<time>/ (rank 0 only).

    Its record (`RUN_RECORDS`) goes along, which this run would overwrite or leave.

    For `trainer.resume=never` in a run dir that has checkpoints: they are kept, but not
    where this run writes. Left in place, a run that ended before its first checkpoint
    (a crash in epoch 1) would leave the earlier run's last.pt, which `auto` would then
    continue under this run's config.

    Returns:
        Where the earlier checkpoints are now, or None when there were none.
    """
    folder = run_dir / "checkpoints"
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    aside = set_aside(folder)
    # Their record goes with them: this run writes its own in their place.
    for record in RUN_RECORDS:
        if (run_dir / record).is_file():
            (run_dir / record).rename(aside / record)
    log.warning("trainer.resume=never: the earlier checkpoints of %s are now in %s", run_dir, aside)
    return aside


def start_over_if_asked(cfg: DictConfig, run_dir: Path) -> None:
    """For `trainer.resume=never`: rank 0 sets the dir's checkpoints aside, before the data.

    Called once every rank has checked its config (after `distributed.init`). A weights
    file among them (`model.pretrained_file=<this dir's best.pt>`: start over from its
    own best weights) is read, on every rank, from where it has moved.
    """
    if cfg.trainer.resume != "never":
        return
    moved = None
    aside = set_aside_checkpoints(run_dir) if distributed.current().is_main else None
    weights = OmegaConf.select(cfg, "model.pretrained_file", default=None)
    was = Path(str(weights)).expanduser().resolve() if weights else None
    folder = (run_dir / "checkpoints").resolve()
    if aside is not None and was is not None and was.is_relative_to(folder):
        moved = str(aside.resolve() / was.relative_to(folder))
        log.info("model.pretrained_file is read from where it has moved: %s", moved)
    moved = rank_sync.from_main(moved)  # a collective call: rank 0 alone moved them
    if moved is not None:
        cfg.model.pretrained_file = moved


def _fresh_start(seed: int, data_digest: str) -> TrainState:
    """A new state; under DDP each rank gets its own random stream from `seed`."""
    rank_sync.seed_rank(seed, 0)
    return TrainState(data_digest=data_digest)


def _take_best_along(last: Path, run_dir: Path, state: TrainState) -> None:
    """Copies the best.pt beside a resumed last.pt into this run dir.

    The state carries on that run's best value, so a later epoch that does not beat it
    writes no best.pt here; without the copy the test would find none, after training.

    Raises:
        ConfigError: The resumed run had a best epoch, and its best.pt is not beside
            `last` (nor in this run dir).
    """
    best = run_dir / "checkpoints" / "best.pt"
    if state.best_epoch == 0 or best.exists():
        return
    found = last.parent / "best.pt"
    if not found.is_file():
        raise ConfigError(
            f"trainer.resume={str(last)!r}: that run's best weights (epoch "
            f"{state.best_epoch}) are not beside it ({found} does not exist), and this run "
            "would test them after training. Put that best.pt beside the checkpoint, or "
            "resume in its own run dir (trainer.resume=auto hydra.run.dir=<its run dir>)"
        )
    best.parent.mkdir(parents=True, exist_ok=True)
    with replaced_whole(best) as partial:  # under DDP every rank may copy: never half a file
        shutil.copyfile(found, partial)
    log.info("resume: copied the resumed run's best.pt (epoch %d) from %s", state.best_epoch, found)


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(saved: dict[str, Any], seed: int, global_step: int) -> None:
    """Restores this process's RNG states from a last.pt: under DDP, this rank's own.

    A last.pt written by as many processes as this run has holds every rank's states, so
    each rank draws the numbers the uninterrupted run drew. Otherwise (a last.pt from
    before every rank's were kept, or from another number of processes) each rank gets
    a fresh stream of its own (`rank_sync.seed_rank`): close to, but not exactly, the
    uninterrupted run. A single process restores the file's states, as always.
    """
    world = distributed.current()
    by_rank = saved.get("rng_by_rank")
    if world.distributed and by_rank is not None and len(by_rank) == world.world_size:
        set_rng_state(by_rank[world.rank])
        return
    set_rng_state(saved["rng"])
    if world.distributed and "world_size" not in saved:  # another world size was warned of
        log.warning(
            "the checkpoint holds one process's RNG states (it was written before last.pt "
            "kept every rank's): each rank draws a new random stream, so this resumed run "
            "comes close to, but not exactly, the uninterrupted one"
        )
    rank_sync.seed_rank(seed, global_step)


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restores the RNG states saved by `get_rng_state`."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
