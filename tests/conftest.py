"""Shared fixtures: config composition with tiny CPU settings and tmp_path outputs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import runner  # noqa: F401  (registers the config resolvers)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Small enough to train in seconds on 2 CPU cores.
TINY = [
    "trainer.max_epochs=1",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    "trainer.log_every_n_steps=2",
    "data=synthetic",
    "data.num_samples=160",
    "data.image_size=32",
    "model=timm",
    "model.name=resnet10t",
]


# --- GPU tests -----------------------------------------------------------------------
#
# Tests marked `gpu` need CUDA. Where it is missing they are *deselected* (they show in
# the "deselected" count and in a line of their own, never as passed or skipped), so a
# CPU-only CI, which sets RUNNER_REQUIRE_ALL=1, stays green without pretending they
# ran. A GPU CI job sets RUNNER_REQUIRE_GPU=1: then a missing CUDA fails them instead.


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselects `gpu` tests when CUDA is missing (unless RUNNER_REQUIRE_GPU=1)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu or _cuda_available() or os.environ.get("RUNNER_REQUIRE_GPU") == "1":
        return
    config.hook.pytest_deselected(items=gpu)
    items[:] = [item for item in items if not item.get_closest_marker("gpu")]
    config.stash[_GPU_DESELECTED] = len(gpu)


_GPU_DESELECTED = pytest.StashKey[int]()
_GPU_MESSAGE = (
    "{} gpu test(s) deselected, not run: CUDA is not available here "
    "(RUNNER_REQUIRE_GPU=1 makes them fail instead)"
)


def pytest_report_collectionfinish(config: pytest.Config) -> str | None:
    """Says right after collection that gpu tests were deselected."""
    count = config.stash.get(_GPU_DESELECTED, 0)
    return _GPU_MESSAGE.format(count) if count else None


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """Repeats it in the final summary, where a reader of CI logs looks."""
    count = config.stash.get(_GPU_DESELECTED, 0)
    if count:
        terminalreporter.write_line(_GPU_MESSAGE.format(count), yellow=True, bold=True)


@pytest.fixture(autouse=True)
def _require_cuda_for_gpu_tests(request: pytest.FixtureRequest) -> None:
    """A gpu test that runs without CUDA (RUNNER_REQUIRE_GPU=1) fails, never skips."""
    if request.node.get_closest_marker("gpu") and not _cuda_available():
        pytest.fail("this test needs CUDA, which is not available (RUNNER_REQUIRE_GPU=1)")


def group_options(group: str) -> list[str]:
    """The option names of a config group (its YAML files)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Composes conf/train.yaml with outputs under tmp_path; tiny=True adds TINY first."""

    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        base = [f"paths.output_dir={tmp_path}/outputs", f"paths.run_dir={tmp_path}/run"]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=[*base, *(TINY if tiny else []), *overrides])

    return make


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python run.py ARGS` in a subprocess, non-interactively."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "run.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def query(db: Path, sql: str, *params) -> list[tuple]:
    """Runs a read-only SQL query against an MLflow SQLite store."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql, params).fetchall()
