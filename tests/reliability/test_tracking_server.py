"""A real `mlflow server` on 127.0.0.1 that stops in the middle of training."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.tracking.store import server_reachable
from tests.conftest import REPO, query
from tests.reliability.conftest import cli

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store, in its own process group."""

    def __init__(self, root: Path, port: int):
        self.root, self.port, self.proc = root, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 120) -> None:
        mlflow = Path(sys.executable).with_name("mlflow")
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
def server(tmp_path):
    srv = MlflowServer(tmp_path / "server", free_port())
    srv.root.mkdir()
    srv.start()
    yield srv
    srv.stop()


def test_training_goes_on_while_the_server_is_down_and_logs_arrive_later(tmp_path, server):
    """Point 13: buffered while down, delivered on return, no call blocks over 1 s."""
    command = cli(
        tmp_path, tmp_path / "run", "trainer.max_epochs=6", f"logger.tracking_uri={server.uri}"
    )
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "epoch 1/6" in line:
            server.stop()
        # Back once the run has met the outage (a fixed epoch races the server's shutdown,
        # which may outlast a short epoch).
        if "buffering and retrying" in line:
            server.start()
    assert proc.wait(timeout=600) == 0, "".join(lines)[-4000:]
    output = "".join(lines)
    assert "buffering and retrying" in output and "reachable again" in output
    blocked = float(output.split("longest logging call blocked training ")[1].split()[0])
    assert blocked < 1.0
    db = server.root / "server.db"
    assert query(db, "SELECT status FROM runs") == [("FINISHED",)]
    steps = [s for (s,) in query(db, "SELECT step FROM metrics WHERE key='val/acc' ORDER BY step")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert query(db, "SELECT COUNT(*) FROM metrics WHERE key='test/acc'") == [(1,)]
