"""A real `mlflow server` on 127.0.0.1 that stops in the middle of training."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, query
from tests.reliability.conftest import STEADY, cli

pytestmark = pytest.mark.slow


def run_watching(command: list[str], on_line, timeout: float = 600) -> tuple[int, str]:
    """Runs `command` from the repository root, calling `on_line(line, proc)` on each line
    it prints (to stop the server, or to send a signal, at a given point).

    Returns:
        The exit code and everything the process printed.
    """
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        on_line(line, proc)
    return proc.wait(timeout=timeout), "".join(lines)


def test_training_goes_on_while_the_server_is_down_and_logs_arrive_later(tmp_path, mlflow_server):
    """Point 13: buffered while down, delivered on return, no call blocks over 1 s."""
    command = cli(
        tmp_path,
        tmp_path / "run",
        "trainer.max_epochs=6",
        f"logger.tracking_uri={mlflow_server.uri}",
    )

    def outage(line, proc):
        if "epoch 1/6" in line:
            mlflow_server.stop()
        # Back once the run has met the outage (a fixed epoch races the server's shutdown,
        # which may outlast a short epoch).
        if "buffering and retrying" in line:
            mlflow_server.start()

    code, output = run_watching(command, outage)
    assert code == 0, output[-4000:]
    assert "buffering and retrying" in output and "reachable again" in output
    # MLflow's own line at a run's end shows the URI as given, a password in it included.
    assert "View run" not in output
    blocked = float(output.split("longest logging call blocked the run ")[1].split()[0])
    assert blocked < 1.0
    db = mlflow_server.root / "server.db"
    assert query(db, "SELECT status FROM runs") == [("FINISHED",)]
    steps = [s for (s,) in query(db, "SELECT step FROM metrics WHERE key='val/acc' ORDER BY step")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert query(db, "SELECT COUNT(*) FROM metrics WHERE key='test/acc'") == [(1,)]


def test_ctrl_c_while_the_run_waits_for_a_server_that_is_down_saves_its_logs(
    tmp_path, mlflow_server
):
    """The run has ended: Ctrl-C in its wait for the server exits 130, no traceback."""
    run_dir = tmp_path / "run"
    command = cli(
        tmp_path,
        run_dir,
        "trainer.max_epochs=6",  # the server's shutdown may outlast a short epoch
        f"logger.tracking_uri={mlflow_server.uri}",
        "logger.delivery_timeout_s=120",  # the bound of a wait that is never announced
    )

    def outage_then_ctrl_c(line, proc):
        if "epoch 1/6" in line:
            mlflow_server.stop()  # and it stays away
        if "Ctrl-C stops waiting" in line:
            proc.send_signal(signal.SIGINT)

    code, output = run_watching(command, outage_then_ctrl_c, timeout=60)
    assert "buffering and retrying" in output, output[-4000:]  # the run met the outage
    assert code == 130, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert "python -m runner.tracking replay" in output, output[-3000:]
    pending = (run_dir / "mlflow_pending.jsonl").read_text().splitlines()
    assert json.loads(pending[-1])[:2] == ["status", "FINISHED"]  # the run's own end
    assert (run_dir / "metrics.json").is_file()


def test_ctrl_c_while_a_sweeps_parent_run_waits_for_a_server_that_is_down_saves_its_logs(
    tmp_path, mlflow_server
):
    """The sweep is summarised: Ctrl-C in its parent run's wait exits 130, no traceback,
    and the parent run's saved logs reach the server once it is back."""
    from runner.tracking.__main__ import main as tracking_command

    sweep_dir = tmp_path / "sweep"
    command = [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        f"paths.output_dir={tmp_path}",
        f"hydra.sweep.dir={sweep_dir}",
        *STEADY,
        "trainer.max_epochs=6",  # the server's shutdown may outlast a short epoch
        f"logger.tracking_uri={mlflow_server.uri}",
        # The job's own wait ends on its own; the parent run's leaves ~9 s to send SIGINT.
        "logger.delivery_timeout_s=10",
        "seed=0",
    ]
    summarised = []

    def outage_then_ctrl_c_after_the_summary(line, proc):
        if "epoch 1/6" in line:
            mlflow_server.stop()  # and it stays away until the sweep has ended
        if line.startswith("# Sweep "):
            summarised.append(line)
        if summarised and "Ctrl-C stops waiting" in line:  # the parent run's wait
            proc.send_signal(signal.SIGINT)

    code, output = run_watching(command, outage_then_ctrl_c_after_the_summary, timeout=60)
    assert summarised and "buffering and retrying" in output, output[-4000:]
    assert code == 130, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    pending = sweep_dir / "mlflow_pending.jsonl"
    assert f"python -m runner.tracking replay {pending}" in output, output[-3000:]
    assert json.loads(pending.read_text().splitlines()[-1])[:2] == ["status", "FINISHED"]
    assert (sweep_dir / "summary.md").is_file()

    mlflow_server.start()
    assert tracking_command(["replay", str(pending)]) == 0
    parent = query(
        mlflow_server.root / "server.db",
        "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'sweep.role' AND t.value = 'parent'",
    )
    assert parent == [("FINISHED",)]
