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
