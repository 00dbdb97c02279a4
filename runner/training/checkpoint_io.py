"""Atomic checkpoints that load with `torch.load(weights_only=True)`.

Saving happens on a background thread from a snapshot of the state, so training does
not wait for serialisation or the disk.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from runner.config.errors import UserError

log = logging.getLogger(__name__)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be read or written; the message names the file."""


TEMP_SUFFIX = ".tmp"
_NEARLY_FULL_BYTES = 16 * 2**20


def previous_path(path: Path) -> Path:
    """Where the checkpoint before `path` is kept (`last.pt` -> `last-previous.pt`)."""
    return path.with_name(f"{path.stem}-previous{path.suffix}")


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> None:
    """Writes `state` so that `path` holds either the old or the new file, never half.

    The state is written to a temp file in the same directory, flushed to disk, and
    moved over `path` with `os.replace` (atomic on POSIX). On any error the temp file
    is removed and the previous file is left as it was.

    Args:
        state: Tensors and plain Python types only (so weights_only loading works).
        path: Destination file.
        keep_previous: Move the file being replaced to `previous_path(path)` first, so
            the two newest checkpoints exist and a bad newest one can be skipped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        if keep_previous and path.exists():
            # A crash between these two renames leaves the previous file and no newest:
            # `load_newest` then falls back to the previous one.
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException as err:
        # torch.save's writer reports a full disk as "unexpected pos ..."; measured while
        # the temp file still holds its space, a nearly full disk tells the real cause.
        free = shutil.disk_usage(path.parent).free
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception) and free < _NEARLY_FULL_BYTES:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device while writing {path} ({free} bytes were free): "
                "free some space or set paths.output_dir to a larger disk",
            ) from err
        raise


def snapshot(state: Any) -> Any:
    """A copy of `state` whose tensors are detached CPU clones, safe to save later."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {key: snapshot(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(snapshot(value) for value in state)
    return state


class AsyncCheckpointWriter:
    """Writes checkpoints on a background thread, one at a time, in submission order.

    `submit` copies the states first, so training may change the live tensors at once.
    A write error is raised by the next `submit` or by `wait`.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(
        self, files: dict[Path, dict[str, Any]], keep_previous: set[Path] = frozenset()
    ) -> None:
        """Waits for the previous writes, snapshots the states, and starts writing them.

        Args:
            files: Destination path -> state, written in this order.
            keep_previous: Paths whose replaced file is kept (see `save_checkpoint`).
        """
        self.wait()
        frozen = [(path, snapshot(state)) for path, state in files.items()]

        def write() -> None:
            try:
                for path, state in frozen:
                    save_checkpoint(state, path, keep_previous=path in keep_previous)
            except BaseException as err:  # handed to the training thread
                self._error = err

        self._thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Blocks until the pending write is on disk; raises its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"writing a checkpoint failed: {error}") from error

    def close(self) -> BaseException | None:
        """Waits for the pending write and returns its error instead of raising it."""
        try:
            self.wait()
        except CheckpointError as err:
            return err
        return None


class NullCheckpointWriter:
    """The checkpoint writer of ranks other than 0: rank 0 writes the one set of files."""

    def submit(self, files: dict, keep_previous: set = frozenset()) -> None:
        """Writes nothing."""

    def wait(self) -> None:
        """Nothing to wait for."""

    def close(self) -> None:
        """Nothing to close; no error."""


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Deletes temp files that a killed writer left behind; returns what it removed."""
    stale = sorted(directory.glob(f".*{TEMP_SUFFIX}")) if directory.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_newest(
    path: Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path]:
    """Loads `path`, or its previous version when `path` is missing or unreadable.

    Args:
        path: The newest checkpoint (e.g. checkpoints/last.pt).
        map_location: Where to put the tensors.

    Returns:
        The state and the file it came from.

    Raises:
        CheckpointError: Neither file can be loaded; names both.
    """
    problems = []
    for candidate in (path, previous_path(path)):
        if not candidate.exists():
            continue
        try:
            return load_checkpoint(candidate, map_location), candidate
        except CheckpointError as err:
            log.warning("%s; trying the previous checkpoint", err)
            problems.append(str(err))
    raise CheckpointError(
        "no loadable checkpoint to resume from: "
        + ("; ".join(problems) or f"{path} is missing")
        + ". Set trainer.resume=never to start this run dir over."
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with `weights_only=True`: no pickled code is ever run.

    Args:
        path: The checkpoint file.
        map_location: Where to put the tensors.

    Returns:
        The saved state.

    Raises:
        CheckpointError: The file is missing, truncated, or holds pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        # The first sentence only: torch goes on to advise loading the file unsafely
        # (weights_only=False), which is no fix for a damaged file and a risk for a
        # foreign one.
        first = str(err).splitlines()[0].split(". ")[0].rstrip(".") if str(err) else ""
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({type(err).__name__}: {first}). "
            "It is truncated, not a checkpoint, or carries pickled objects, which are refused."
        ) from err
