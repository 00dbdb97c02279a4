"""Stopping a run cleanly: signals become a request to stop at the next step boundary.

SIGTERM (sent by schedulers and `kill`) and the first Ctrl-C (SIGINT) set a flag that
the training loop reads after each optimizer step; the run then writes its checkpoint,
marks its tracked run KILLED and exits with 128 + the signal number. A second Ctrl-C
interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("runner")

HANDLED = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary because a signal asked it to.

    Args:
        signum: The signal that asked for the stop.
    """

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal (130 for Ctrl-C)."""
        return 128 + self.signum


class GracefulStop:
    """Context manager that turns SIGTERM and the first SIGINT into a stop request."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def requested(self) -> bool:
        """Whether a signal asked the run to stop."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signum = signum
        log.warning(
            "%s received: saving a checkpoint at the next step boundary, then stopping "
            "(Ctrl-C again to stop at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> GracefulStop:
        # Signal handlers can only be installed from the main thread (e.g. not when a
        # launcher runs jobs in threads); there the default behaviour stays.
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
