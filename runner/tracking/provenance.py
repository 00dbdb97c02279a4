"""What a run needs to be reproduced: git state, host, library versions."""

from __future__ import annotations

import contextlib
import getpass
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


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()


def git_state(repo: Path) -> dict[str, str]:
    """The commit and dirtiness of the repository, or "unknown" outside git."""

    def git(*args: str) -> str:
        return _git(repo, *args)

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


def source_tags(repo: Path, commit: str | None = None) -> dict[str, str]:
    """MLflow's own `mlflow.source.*` and `mlflow.user` tags, as `mlflow.start_run` sets them.

    The run page shows them as the run's source (entry point, git commit, branch).

    Args:
        repo: The repository the runner runs from.
        commit: Its commit when already known (saves a git call); None = ask git.
    """
    entry = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else Path("python")
    if entry.is_relative_to(repo.resolve()):
        entry = entry.relative_to(repo.resolve())
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": str(entry)}
    with contextlib.suppress(KeyError, OSError):  # no user name for this uid (containers)
        tags["mlflow.user"] = getpass.getuser()
    try:
        commit = commit if commit and commit != "unknown" else _git(repo, "rev-parse", "HEAD")
        tags["mlflow.source.git.commit"] = commit
        tags["mlflow.source.git.branch"] = _git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    except (OSError, subprocess.SubprocessError):
        pass
    return tags
