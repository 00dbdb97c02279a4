"""Shared fixtures: config composition with tiny CPU settings and tmp_path outputs."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import runner  # noqa: F401  (registers the config resolvers)
from runner.tracking.store import server_reachable

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Under pytest-xdist (`make test` runs two workers on two cores) each worker and the runs
# it starts use one thread: two processes with two intra-op threads each on two cores
# wait for each other's descheduled threads, which made the suite slower, not faster.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Small enough to train in seconds on 2 CPU cores. The model is timm's test_resnet (0.37M
# parameters, 11 MB of outputs a run against resnet10t's 116 MB, 2-3 s less a run); the
# default model (resnet10t) is trained by tests/recipes/test_train.py.
TINY = [
    "trainer.max_epochs=1",
    "trainer.batch_size=32",
    "trainer.eval_batch_size=64",
    "trainer.log_every_n_steps=2",
    "data=synthetic",
    "data.num_samples=160",
    "data.image_size=32",
    "model=timm",
    "model.name=test_resnet",
    # The reports take seconds a run; tests/recipes/test_evaluate.py and
    # tests/reports/test_analysis.py turn them on and check them.
    "analysis.enabled=false",
    # So does the model's export (torch.export, about 2 s): tests/tracking/ turns it on
    # where it checks the logged model, and tests/recipes/test_train.py trains the default.
    "logger.export_model=false",
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
    """The option names of a config group (its YAML files; `_shared.yaml` and the like hold
    blocks the options share and are not options)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.name.startswith("_"))


_STORE_TEMPLATE: list[Path] = []


def seed_store(output_dir: Path) -> Path:
    """Puts an empty MLflow SQLite store, its tables already made, at output_dir/mlflow.db.

    Creating a store's tables takes MLflow 1.3-2 s per new file; the suite makes about a
    hundred stores, so each starts as a copy of one made once per test process. It is a
    real store (MLflow opens it as its own); the tests of a fresh store's first opening
    (tests/reliability/test_config_tracking.py) do not seed one.
    """
    store = Path(output_dir) / "mlflow.db"
    if not store.exists():
        store.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store_template(), store)
    return store


def store_template() -> Path:
    """This test process's empty store, its tables made (see seed_store)."""
    if not _STORE_TEMPLATE:
        from mlflow.tracking import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="mlflow-template-")) / "mlflow.db"
        atexit.register(shutil.rmtree, template.parent, True)  # one per test process
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        _STORE_TEMPLATE.append(template)
    return _STORE_TEMPLATE[0]


def runs_in(db: Path) -> int:
    """How many MLflow runs a store holds (0 when there is no store)."""
    return query(db, "SELECT COUNT(*) FROM runs")[0][0] if db.exists() else 0


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """Composes conf/train.yaml with outputs under tmp_path; tiny=True adds TINY first."""

    def make(*overrides: str, tiny: bool = True) -> DictConfig:
        return compose_run(tmp_path, "run", *overrides, tiny=tiny)

    return make


def for_logger(args: list[str], overrides: Iterable[str]) -> list[str]:
    """`args` (TINY, say) without their logger.* keys when `overrides` choose logger=none,
    which has none of MLflow's keys."""
    if "logger=none" not in overrides:
        return list(args)
    return [arg for arg in args if not arg.startswith("logger.")]


def compose_run(tmp: Path, run_dir: str, *overrides: str, tiny: bool = True) -> DictConfig:
    """conf/train.yaml with outputs (a seeded store, unless logger=none) under `tmp` and the
    run in tmp/run_dir; tiny=True adds TINY before the overrides."""
    if "logger=none" not in overrides:
        seed_store(Path(tmp) / "outputs")
    base = [f"paths.output_dir={tmp}/outputs", f"paths.run_dir={tmp}/{run_dir}"]
    tiny_args = for_logger(TINY, overrides) if tiny else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*base, *tiny_args, *overrides])


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs `python run.py ARGS` in a subprocess, non-interactively (no store seeded: the
    config tests check that a bad command leaves no output dir)."""
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env() -> dict[str, str]:
    """The environment of a test's `mlflow server` or `mlflow ui`.

    MLflow 3 starts a job runner beside a server with a SQL store: eight more processes
    that each import mlflow (10-20 CPU-s a start on 2 cores), for GenAI jobs no test runs.
    """
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store, in its own process group."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 120) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
        if not (self.root / "server.db").exists():  # a fresh store, as seed_store's
            shutil.copyfile(store_template(), self.root / "server.db")
        self.proc = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root}/server.db",
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=server_env(),
        )
        deadline = time.monotonic() + timeout
        while not server_reachable(self.uri, timeout_s=1):
            assert self.proc.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        while server_reachable(self.uri, timeout_s=1):
            time.sleep(0.2)


@pytest.fixture
def mlflow_server(tmp_path):
    """A running `mlflow server` with its own store under tmp_path/server."""
    srv = MlflowServer(tmp_path / "server", free_port())
    srv.root.mkdir()
    srv.start()
    yield srv
    srv.stop()
