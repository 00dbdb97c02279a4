"""Training progress across restarts: `TrainState`, checkpoints/last.pt, and resuming.

last.pt holds everything needed to continue exactly: weights, optimizer, schedule,
scaler, EMA, every RNG state and the progress (`TrainState`), the position inside an
unfinished epoch included. It loads with `torch.load(weights_only=True)`.
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

from runner.config.changes import MAY_CHANGE_ON_RESUME, config_changes
from runner.config.errors import ConfigError
from runner.config.redaction import redacted_container
from runner.training import checkpoint_io
from runner.training.parts import TrainingParts

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Progress that a checkpoint carries across a restart."""

    epoch: int = 0  # finished epochs
    global_step: int = 0  # training batches done, including a partial epoch
    best_value: float = float("nan")
    best_tie_break: float = float("nan")  # the best epoch's val/loss (ties on the monitor)
    best_epoch: int = 0
    epochs_since_best: int = 0
    nan_skips: int = 0
    mlflow_run_id: str | None = None
    partial_epoch: dict[str, Any] | None = None  # engine.EpochStats of an unfinished epoch
    history: list[dict[str, float]] = field(default_factory=list)


def last_payload(state: TrainState, parts: TrainingParts) -> dict[str, Any]:
    """The content of checkpoints/last.pt: everything needed to continue training exactly."""
    return {
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "ema": parts.ema.module.state_dict() if parts.ema is not None else None,
        "rng": get_rng_state(),
        "state": asdict(state),
    }


def check_resume(run_dir: Path, cfg: DictConfig) -> None:
    """Refuses to resume a run dir's checkpoints with another config (before any work).

    With `trainer.resume=auto` and a last.pt in the run dir, this command's config must be
    the one in the dir's config_resolved.yaml, apart from the keys that may change on
    resume (runner.config.changes.MAY_CHANGE_ON_RESUME).

    Raises:
        ConfigError: Naming the changed keys and the two ways out.
    """
    last = run_dir / "checkpoints" / "last.pt"
    saved = run_dir / "config_resolved.yaml"
    has_checkpoint = last.exists() or checkpoint_io.previous_path(last).exists()
    # A path resume also continues this dir's own last.pt once there is one.
    if cfg.trainer.resume == "never" or not has_checkpoint or not saved.is_file():
        return
    before = OmegaConf.to_container(OmegaConf.load(saved))
    epochs_before = before.get("trainer", {}).get("max_epochs")
    if epochs_before is not None and epochs_before != cfg.trainer.max_epochs:
        log.warning(
            "trainer.max_epochs %s -> %s on resume: the lr schedule is rebuilt for the new "
            "length and continues at the same step, so its lr jumps (warmup, milestones and "
            "the cosine are fractions of the whole run)",
            epochs_before,
            cfg.trainer.max_epochs,
        )
    changes = config_changes(before, redacted_container(cfg), MAY_CHANGE_ON_RESUME)
    if changes:
        listing = "\n  - ".join(changes[:20]) + (" ..." if len(changes) > 20 else "")
        raise ConfigError(
            f"{run_dir} holds checkpoints of a run with another config, and "
            f"trainer.resume=auto would continue it with this one. Changed:\n  - {listing}\n"
            "Start over in this dir with trainer.resume=never, or run in another dir (leave "
            "hydra.run.dir out for a new one)."
        )


def resume_or_start(run_dir: Path, resume: str, parts: TrainingParts) -> TrainState:
    """Restores the newest loadable checkpoint when resuming, else a fresh state.

    `resume=auto` continues from this run dir's checkpoints/last.pt (or, when that file
    is damaged, the one before it); `never` starts fresh; a path starts from that file (a
    new MLflow run, with its best.pt along), and once this run dir has a last.pt of its
    own (a stop, a requeue), it goes on from that one, as `auto` does.

    Raises:
        ConfigError: The path is not a last.pt, or its weights do not fit the model.
    """
    if resume == "never":
        return TrainState()
    last = run_dir / "checkpoints" / "last.pt"
    own = last.exists() or checkpoint_io.previous_path(last).exists()
    if resume == "auto" and not own:
        return TrainState()
    if own:  # a path resume that ran here before (stopped, requeued) goes on from here
        saved, source = checkpoint_io.load_newest(last)
    else:
        saved, source = checkpoint_io.load_checkpoint(resume), Path(resume)
        if not isinstance(saved, dict) or not {"optimizer", "state"} <= saved.keys():
            raise ConfigError(
                f"trainer.resume={resume!r} is not a last.pt (it holds no optimizer and "
                "training state; a best.pt has weights only): pass the run's "
                "checkpoints/last.pt, or fine-tune from weights with model.pretrained_file"
            )
    try:
        parts.model.load_state_dict(saved["model"])
    except RuntimeError as err:
        raise ConfigError(
            f"{source} does not fit this model ({str(err).splitlines()[0]}): resume with the "
            "model settings it was trained with"
        ) from err
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    parts.scaler.load_state_dict(saved["scaler"])
    if parts.ema is not None and saved.get("ema") is not None:
        parts.ema.module.load_state_dict(saved["ema"])
    set_rng_state(saved["rng"])
    state = TrainState(**saved["state"])
    if not own:  # another run's checkpoint: this run keeps its own MLflow run
        state.mlflow_run_id = None
        _take_best_along(Path(resume), run_dir, state)
    log.info("resumed from %s: epoch %d done, step %d", source, state.epoch, state.global_step)
    return state


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
    partial = best.with_name(f".best.pt.{os.getpid()}.tmp")
    shutil.copyfile(found, partial)
    os.replace(partial, best)  # under DDP every rank may copy: never half a file
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


def set_rng_state(rng: dict[str, Any]) -> None:
    """Restores the RNG states saved by `get_rng_state`."""
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
