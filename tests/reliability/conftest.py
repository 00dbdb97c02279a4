"""Helpers for the reliability tests: real processes, real files, real stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY, for_logger, seed_store

# 16 batches of 32 per epoch: long enough to be interrupted in the middle of an epoch.
STEADY = [*TINY, "data.num_samples=640", "trainer.max_epochs=4", "trainer.log_every_n_steps=4"]


def cli(out: Path, run_dir: Path, *overrides: str) -> list[str]:
    """The command line of a run with its outputs under `out` and a fixed run dir."""
    seed_store(out)
    return [
        sys.executable,
        str(REPO / "run.py"),
        f"paths.output_dir={out}",
        f"hydra.run.dir={run_dir}",
        *for_logger(STEADY, overrides),
        *overrides,
    ]


def run_until(command: list[str], pattern: str, send: int, timeout: float = 300) -> tuple[int, str]:
    """Starts `command`, sends signal `send` once a line contains `pattern`, waits.

    Returns:
        The exit code and everything the process printed.
    """
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, sent, deadline = [], False, time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if not sent and pattern in line:
            proc.send_signal(send)
            sent = True
        if time.monotonic() > deadline:
            proc.kill()
            break
    code = proc.wait(timeout=60)
    assert sent, f"{pattern!r} never appeared:\n{''.join(lines)[-3000:]}"
    return code, "".join(lines)


def run_to_end(command: list[str], timeout: float = 300) -> tuple[int, str]:
    """Runs `command` to completion; returns its exit code and output."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint."""
    return torch.load(path, weights_only=True)["model"]


def require(condition: bool, what: str) -> None:
    """Skips locally, but fails in CI (RUNNER_REQUIRE_ALL=1), when a component is missing."""
    if condition:
        return
    if os.environ.get("RUNNER_REQUIRE_ALL") == "1":
        pytest.fail(f"{what} is required here (RUNNER_REQUIRE_ALL=1)")
    pytest.skip(f"{what} is not available on this machine")


__all__ = ["STEADY", "cli", "require", "run_to_end", "run_until", "signal", "weights"]
