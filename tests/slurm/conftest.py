"""A real one-node SLURM cluster for these tests, started by scripts/slurm_local.sh."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, seed_store
from tests.reliability.conftest import require

SCRIPT = REPO / "scripts" / "slurm_local.sh"


@pytest.fixture(scope="session")
def slurm() -> None:
    """Starts the local cluster when it is not running (fails under RUNNER_REQUIRE_ALL=1)."""
    start_local_cluster()


def start_local_cluster() -> None:
    """Runs `scripts/slurm_local.sh up` (idempotent); a cluster that cannot start is a
    failure under RUNNER_REQUIRE_ALL=1."""
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=600
        )
        ok, why = done.returncode == 0, (done.stdout + done.stderr).strip()
    except (OSError, subprocess.SubprocessError) as err:
        ok, why = False, str(err)
    require(ok, f"a local SLURM cluster (scripts/slurm_local.sh up: {why})")


def slurm_command(out: Path, *overrides: str) -> list[str]:
    """A multirun through hydra/launcher=slurm, tiny settings, outputs under `out`."""
    seed_store(out)
    return [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=20",
        f"paths.output_dir={out}",
        *TINY,
        *overrides,
    ]


def wait_for_line(
    path_glob: str, root: Path, pattern: str, proc: subprocess.Popen, timeout: float = 300
) -> tuple[Path, str]:
    """Polls the files matching `path_glob` under `root` until one has a line with `pattern`.

    Returns:
        The file and the text it held.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in root.glob(path_glob):
            text = path.read_text(errors="replace")
            if pattern in text:
                return path, text
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    out = proc.stdout.read() if proc.poll() is not None and proc.stdout else ""
    raise AssertionError(f"{pattern!r} never appeared in {root}/{path_glob}\n{out[-3000:]}")


# Hydra's "[2026-01-02 03:04:05,678]" and submitit's "(2026-01-02 03:04:05,678)".
STAMP = re.compile(r"[\[(](\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})[\])]")


def stamp_of(text: str, pattern: str) -> float:
    """The time (epoch seconds) in the log line that first contains `pattern`."""
    from datetime import datetime

    for line in text.splitlines():
        if pattern in line:
            match = STAMP.search(line)
            if match:
                return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise AssertionError(f"no timestamped line with {pattern!r}")


def release_requeued(job_id: str, timeout: float = 120) -> None:
    """Lets a requeued job start now.

    SLURM holds a requeued job for about two minutes (reason BeginTime) before it may
    start again; on a real cluster that is harmless, in a test it is dead time.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T %r"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if state[:2] == ["PENDING", "BeginTime"]:
            # Not `now`: slurmd revokes the killed instance's credential, and a new one
            # issued within the same second is refused ("Job credential revoked").
            subprocess.run(
                ["scontrol", "update", f"JobId={job_id}", "StartTime=now+3"],
                check=True,
                timeout=30,
            )
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} was not requeued within {timeout} s")
