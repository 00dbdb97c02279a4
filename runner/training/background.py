"""Work that runs beside the main thread: start-up steps that overlap, plots that wait.

On two cores a run's start-up has steps that do not depend on each other: opening (and, the
first time, creating) the MLflow store mostly waits on the disk while the data and the model
are built; drawing PNGs with matplotlib is not needed before the first training step. They
run on a thread of their own; `result()` waits for them and raises what they raised.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def in_background(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    """Starts `call(*args, **kwargs)` on a new thread; the returned future gives its result."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=getattr(call, "__name__", "bg"))
    future = pool.submit(call, *args, **kwargs)
    pool.shutdown(wait=False)  # the thread ends with its call; nothing else is queued
    return future
