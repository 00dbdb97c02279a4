"""Keeps freed host memory in the process instead of handing it back after every batch.

glibc's malloc serves blocks above a threshold (128 KiB, growing to at most 32 MiB) with
a fresh `mmap` and returns them with `munmap` when freed. A training step on the CPU
allocates and frees activation tensors of tens of megabytes every step, so every step
maps them again and takes a page fault per 4 KiB page on first touch: on this project's
2-core test machine that was a quarter of a resnet18 step at 32x32 (batch 256), and most
of the time of a batched augmentation at 224x224. Raising the mmap and trim thresholds
keeps those blocks in the heap, where the next step reuses them (as tcmalloc or jemalloc
would). The price is a resident set that does not shrink after a peak.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger("runner")

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's defaults, for switching back (benchmarks compare both in one process).
_DEFAULT_THRESHOLD = 128 * 1024
_KEEP_THRESHOLD = 1 << 30


def keep_freed_memory(enabled: bool = True) -> bool:
    """Sets glibc's malloc to keep (or, with False, to return) freed large blocks.

    Call it early: DataLoader workers forked later inherit the setting.

    Args:
        enabled: Keep freed blocks (True) or restore glibc's default thresholds (False).

    Returns:
        Whether the setting took effect: False where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    threshold = _KEEP_THRESHOLD if enabled else _DEFAULT_THRESHOLD
    applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, threshold)
    )
    if not enabled:
        libc.malloc_trim(0)  # hand back what was kept, so large blocks are mapped afresh
    if not applied:
        log.warning(
            "trainer.keep_host_memory: glibc refused the malloc thresholds; left as they were"
        )
    return applied


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (raises AttributeError outside glibc)
    except (OSError, AttributeError):
        return None
    return libc
