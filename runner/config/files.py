"""Files written whole or not at all, for every layer.

A reader (another job, a later run, the audit) sees the old file or the new one, never
half of one; a write that fails, or is stopped, leaves the old file and no temp file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


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
