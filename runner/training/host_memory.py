"""Keeps freed host memory in the process instead of handing it back after every batch.

glibc's malloc serves a block above its mmap threshold with a fresh `mmap` and returns it
with `munmap` when freed. The threshold starts at 128 KiB and follows the largest freed
block up to 32 MiB; bigger blocks are always mapped afresh, and freed memory at the top
of the heap beyond twice the threshold goes back to the OS. A training step on the CPU
allocates and frees activation tensors of tens of megabytes every step, so steps keep
mapping them again and take a page fault per 4 KiB page on first touch: on this
project's 2-core test machine that was a sixth of a resnet18 step at 224x224 (batch 32)
and most of the time of a batched augmentation at 224x224. Fixing both thresholds high
keeps those blocks in the heap, where the next step reuses them (as tcmalloc or jemalloc
would). The price is a resident set that does not shrink after a peak. glibc cannot go
back to its adaptive threshold in the same process, so there is no switch back.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to keep freed blocks of any size up to 1 GiB for reuse.

    Call it early: DataLoader workers forked later inherit the setting (spawned ones
    start with glibc's defaults).

    Returns:
        Whether the setting took effect: False where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    mmap_set = bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_THRESHOLD))
    trim_set = bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_THRESHOLD))
    if not (mmap_set and trim_set):
        log.warning("trainer.keep_host_memory: glibc refused a malloc threshold")
    return mmap_set and trim_set


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (raises AttributeError outside glibc)
    except (OSError, AttributeError):
        return None
    return libc
