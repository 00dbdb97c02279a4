"""Files for every layer: written whole or not at all, and a run's relative paths.

A reader (another job, a later run, the audit) sees the old file or the new one, never
half of one; a write that fails, or is stopped, leaves the old file and no temp file.

A relative path a run was given (data.root=../leaves) is relative to the directory it
ran in, which Hydra records in the run dir: a later command run from elsewhere (eval
of its checkpoint, the audit of a sweep) finds the files there.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


@contextlib.contextmanager
def replaced_whole(path: Path) -> Iterator[Path]:
    """A temp path to write; it replaces `path` when the block ends without an error.

    The temp file is hidden, beside `path` (so the replace is atomic) and named with this
    process's id (so two processes writing one path keep their own).
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def job_cwd(run_dir: Path) -> Path | None:
    """The working directory a run or job ran in, as Hydra recorded it; None when unknown."""
    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    cwd = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.cwd", default=None)
    return Path(cwd) if isinstance(cwd, str) and cwd else None


def from_job_cwd(value: Any, cwd: Path | None) -> Any:
    """A relative path made absolute from the directory a run ran in, where it names a file.

    Args:
        value: A config value (a path, or anything else, which is kept).
        cwd: The run's working directory (`job_cwd`); None keeps `value`.
    """
    if cwd is None or not isinstance(value, str) or not value:
        return value
    if Path(value).expanduser().is_absolute() or not (cwd / value).exists():
        return value
    return str(cwd / value)


def set_aside(path: Path) -> Path:
    """Renames `path` to `<name>.replaced-<time>` beside it, and returns the new path.

    Kept, not overwritten: an earlier run's checkpoints, an earlier audit. Two set aside
    within one second get `-2`, `-3`, ... after the time.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    number = 1
    while aside.exists():
        number += 1
        aside = path.with_name(f"{path.name}.replaced-{stamp}-{number}")
    path.rename(aside)
    return aside
