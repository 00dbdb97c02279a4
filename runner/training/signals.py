"""Stopping a run cleanly: signals become a request to stop at the next step boundary.

SIGTERM (sent by schedulers and `kill`) and the first Ctrl-C (SIGINT) set a flag that
the training loop reads after each optimizer step; the run then writes its checkpoint,
marks its tracked run KILLED and exits with 128 + the signal number. A second Ctrl-C
interrupts at once.

SIGUSR2 is SLURM's (and submitit's) warning before preemption or the time limit. It
stops the run the same way, and then the job is requeued: by the handler submitit
installed before ours (which resubmits the job through the launcher's `checkpoint`),
or, in a job started without submitit, with `scontrol requeue`. The requeued job
continues from the checkpoint, in the same run dir and MLflow run.

Under DDP every rank must stop after the same step (the next collective would wait
forever otherwise): an `agree` function (see runner.training.rank_sync) makes the ranks
decide together.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


def preemption_signal() -> int:
    """The signal SLURM sends before preemption/timeout: USR2, or submitit's setting."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name.removeprefix('SIG')}", signal.SIGUSR2)


def handled_signals() -> tuple[int, ...]:
    """The signals that ask a run to stop at the next step boundary."""
    return tuple(dict.fromkeys((signal.SIGTERM, signal.SIGINT, preemption_signal())))


class TrainingInterrupted(BaseException):
    """Training stopped at a step boundary because a signal asked it to.

    Like KeyboardInterrupt it is no error, so an `except Exception` that keeps a run going
    past a failed report or logging call lets it through (after training it is raised
    wherever the run is).

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
    """Context manager that turns SIGTERM, SIGUSR2 and the first SIGINT into a stop request.

    Args:
        agree: Under DDP, a collective call that takes this rank's signal number (0 =
            none) and returns the one all ranks act on (0 = go on); it may answer one
            call late. None = this process decides alone.
    """

    def __init__(self, agree: Callable[[int], int] | None = None) -> None:
        self.signum: int | None = None
        self._agree = agree
        self._agreed = 0
        self._previous: dict[int, object] = {}
        self._chained: object = None
        self._immediate = False

    def requested(self) -> bool:
        """Whether a signal asked the run to stop (under DDP: asked any rank)."""
        if self._agree is None:
            return self.signum is not None
        if not self._agreed:
            self._agreed = self._agree(self.signum or 0)
            if self._agreed and self.signum is None:
                self.signum = self._agreed  # another rank got the signal
        return bool(self._agreed)

    def at_once(self) -> None:
        """Switches to stopping at once, for after training (testing, reports).

        There is no step boundary left to wait for, and last.pt already holds the last
        epoch: a signal now raises `TrainingInterrupted` where the run is, so the tracked
        run ends KILLED instead of being left RUNNING by the signal's default action. A
        signal that came after the training loop last looked stops the run here.
        """
        self._immediate = True
        if self.signum is not None:
            raise TrainingInterrupted(self.signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._immediate:
            self.signum = signum
            raise TrainingInterrupted(signum)
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt  # Ctrl-C after any stop request (the log says so): now
        if self.signum is None:
            self.signum = signum
        log.warning(
            "%s received: saving a checkpoint at the next step boundary, then %s "
            "(Ctrl-C again to stop at once)",
            signal.Signals(signum).name,
            "requeueing" if signum == preemption_signal() else "stopping",
        )

    def __enter__(self) -> GracefulStop:
        # Signal handlers can only be installed from the main thread (e.g. not when a
        # launcher runs jobs in threads); there the default behaviour stays.
        if threading.current_thread() is threading.main_thread():
            for signum in handled_signals():
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.signum is not None:
            self._chained = self._previous.get(self.signum)
        self._immediate = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def hand_over(self) -> None:
        """After a stop by the preemption signal (checkpoint saved, run ended): requeue.

        Calls the handler that was installed before ours (submitit's: it resubmits the
        job and exits the process) or, in a SLURM job without submitit, runs
        `scontrol requeue`. Does nothing after other signals or without SLURM.
        """
        if self.signum is None or self.signum != preemption_signal():
            return
        handler = self._chained
        if callable(handler):
            log.info("handing over to the job's requeue handler")
            handler(self.signum, None)
            return
        job_id = os.environ.get("SLURM_JOB_ID")
        if job_id and os.environ.get("SLURM_PROCID", "0") == "0":
            log.info("requeueing SLURM job %s", job_id)
            subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=60)
