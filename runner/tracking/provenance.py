"""What a run needs to be reproduced: git state, host, library versions."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "kornia",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "mlflow",
)


def git_state(repo: Path) -> dict[str, str]:
    """The commit and dirtiness of the repository, or "unknown" outside git."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def versions() -> dict[str, str]:
    """Installed versions of the libraries that decide a run's numbers."""
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def environment(repo: Path, device: str) -> dict[str, str]:
    """Host, device, platform, git state and versions as one flat dict of strings."""
    env = {
        "host": socket.gethostname(),
        "device": device,
        "platform": platform.platform(),
    }
    env.update(git_state(repo))
    env.update(versions())
    return env
