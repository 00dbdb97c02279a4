"""The decode cache: a data set decoded once is kept in memory and in a file.

A decoded data set is keyed by what stands for its content (file listings with sizes and
modification times, the settings, the decoder's version), kept in this process for a
sweep's later jobs and, with a cache folder, written to a file that later runs read
instead of decoding again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from runner.config.files import replaced_whole
from runner.data.decoding import DECODER_VERSION

log = logging.getLogger(__name__)

# Decoded data sets of this process, by cache key: a sweep that runs its jobs in one
# process (Hydra's basic launcher, Optuna) decodes once. Bounded, as each can be large.
_MEMORY_CACHE: dict[str, dict[str, Any]] = {}
_MEMORY_CACHE_ENTRIES = 2


def cache_key(*parts: Any) -> str:
    """A short stable hash of `parts` (file listings with sizes and mtimes, settings)."""
    digest = hashlib.sha256(repr((DECODER_VERSION, *parts)).encode())
    return digest.hexdigest()[:20]


def cached(
    key: str,
    build: Callable[[], dict[str, Any]],
    cache_dir: str | os.PathLike | None,
    label: str,
) -> dict[str, Any]:
    """Returns the decoded data for `key` from memory, a cache file, or `build()`.

    Args:
        key: The content key (see `cache_key`).
        build: Decodes the data; returns a dict of tensors and plain lists.
        cache_dir: Folder of cache files; None keeps the cache in memory only.
        label: Name for the cache file and log lines (e.g. the data set's name).

    Returns:
        The dict `build` returned, possibly read back from disk.
    """
    if key in _MEMORY_CACHE:
        log.info("data %s: decoded images from the in-memory cache", label)
        return _MEMORY_CACHE[key]
    path = None
    if cache_dir is not None:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40]
        path = Path(cache_dir).expanduser() / f"{safe}-{key}.pt"  # as data.root is
    if path is not None and path.is_file():
        start = time.perf_counter()
        try:
            value = torch.load(path, weights_only=True)
        except Exception as err:  # a damaged cache must not stop the run: decode again
            log.warning("data %s: ignoring unreadable cache file %s (%s)", label, path, err)
        else:
            log.info("data %s: read %s in %.1fs", label, path.name, time.perf_counter() - start)
            _remember(key, value)
            return value
    value = build()
    if path is not None:
        # Written on a thread of its own: training need not wait for the disk. Not a
        # daemon, so the process finishes the file before it exits.
        writer = threading.Thread(
            target=_write_cache, args=(path, value, label), name="decode-cache", daemon=False
        )
        writer.start()
        _CACHE_WRITES.append(writer)
    _remember(key, value)
    return value


_CACHE_WRITES: list[threading.Thread] = []


def wait_for_cache_writes() -> None:
    """Waits until the decode cache files being written are on disk."""
    while _CACHE_WRITES:
        _CACHE_WRITES.pop().join()


def _write_cache(path: Path, value: dict[str, Any], label: str) -> None:
    """Writes a decode cache file atomically: a concurrent run never reads half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The part written of a failed write goes: a name with the pid in it is never
        # read or cleaned up later.
        with replaced_whole(path) as tmp:
            torch.save(value, tmp)
    except Exception as err:  # a cache that cannot be written costs the next run, not this one
        # torch.save reports a full disk as RuntimeError, not OSError.
        log.warning("data %s: the decode cache %s was not written: %s", label, path, err)
        return
    log.info("data %s: wrote the decode cache %s", label, path)


def _remember(key: str, value: dict[str, Any]) -> None:
    while len(_MEMORY_CACHE) >= _MEMORY_CACHE_ENTRIES:
        _MEMORY_CACHE.pop(next(iter(_MEMORY_CACHE)))
    _MEMORY_CACHE[key] = value


def clear_memory_cache() -> None:
    """Forgets the decoded data sets kept in this process (benchmarks, tests)."""
    _MEMORY_CACHE.clear()
