"""Config validation, trusted targets, secrets, and tracking faults, with real stores."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from omegaconf import OmegaConf

from runner.config.redaction import redacted_container
from runner.config.targets import untrusted_targets
from runner.tracking.mlflow_tracker import MlflowTracker
from runner.tracking.store import TrackingUnavailableError
from tests.conftest import REPO, TINY, query, run_cli

pytestmark = pytest.mark.slow


def test_eight_runs_started_at_once_on_a_fresh_sqlite_store(tmp_path):
    """Point 11: eight processes, one new store, one experiment: eight finished runs."""
    script = textwrap.dedent(f"""
        import sys
        from runner.tracking.mlflow_tracker import MlflowTracker
        uri, art = "sqlite:///{tmp_path}/mlflow.db", "{tmp_path}/art"
        tracker = MlflowTracker(uri, artifact_location=art)
        tracker.connect("shared")
        tracker.start(f"job{{sys.argv[1]}}", tags={{}})
        for epoch in range(3):
            tracker.log_metrics({{"val/acc": 0.1 * epoch}}, step=epoch)
            tracker.flush()
        tracker.finish("FINISHED")
    """)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(8)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(outputs)[-4000:]
    db = tmp_path / "mlflow.db"
    assert query(db, "SELECT status, COUNT(*) FROM runs GROUP BY status") == [("FINISHED", 8)]
    assert query(db, "SELECT COUNT(*) FROM experiments WHERE name='shared'") == [(1,)]
    assert query(db, "SELECT COUNT(*) FROM metrics") == [(24,)]


def test_a_new_store_is_created_by_a_helper_process_while_the_run_builds(tmp_path):
    """prepare() has another process create a new store's tables; connect() waits for it."""
    db = tmp_path / "new" / "mlflow.db"
    tracker = MlflowTracker(f"sqlite:///{db}", artifact_location=str(tmp_path / "art"))
    tracker.prepare()
    # This process does nothing more: only the helper can create the store's tables. The
    # Default experiment is the last thing MLflow writes into a new store.
    deadline = time.monotonic() + 120
    while not default_experiment(db) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert query(db, DEFAULT_EXPERIMENT) == [("Default",)]
    tracker.connect("x")
    assert query(db, "SELECT name FROM experiments ORDER BY name") == [("Default",), ("x",)]

    again = MlflowTracker(f"sqlite:///{db}", artifact_location=str(tmp_path / "art"))
    again.prepare()  # the store exists: no helper, and connecting opens it as it is
    again.connect("x")
    assert again.experiment_id == tracker.experiment_id


DEFAULT_EXPERIMENT = "SELECT name FROM experiments WHERE experiment_id = 0"


def default_experiment(db) -> list[tuple]:
    """The Default experiment's row of a store; none while the store is being created."""
    try:
        return query(db, DEFAULT_EXPERIMENT) if db.exists() else []
    except sqlite3.OperationalError:  # its tables are not all there yet
        return []


def test_unreachable_server_fails_fast_before_training(tmp_path):
    """Point 12a: the URI is named, within 10 s, before any data, model or training."""
    start = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=r"http://127\.0\.0\.1:1.*offline_fallback"):
        MlflowTracker("http://127.0.0.1:1").connect("x")
    assert time.monotonic() - start < 10

    result = run_cli(
        f"paths.output_dir={tmp_path}", *TINY, "logger.tracking_uri=http://127.0.0.1:1"
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "http://127.0.0.1:1" in output
    assert "epoch 1" not in output and "model resnet10t" not in output, "nothing built first"
    assert "Error: logger.tracking_uri='http://127.0.0.1:1'" in output
    assert not (tmp_path / "mlflow.db").exists()


def test_unreachable_server_with_fallback_logs_locally_and_says_so(tmp_path):
    """Point 12b: logger.offline_fallback=true logs into the local store instead."""
    result = run_cli(
        f"paths.output_dir={tmp_path}",
        *TINY,
        "logger.tracking_uri=http://127.0.0.1:1",
        "logger.offline_fallback=true",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "does not answer: logging to sqlite:///" in output
    db = tmp_path / "mlflow.db"
    assert query(db, "SELECT status FROM runs") == [("FINISHED",)]
    assert query(db, "SELECT value FROM tags WHERE key='offline_fallback'") == [
        ("http://127.0.0.1:1",)
    ]


def test_every_config_problem_is_reported_at_once_and_nothing_is_created(tmp_path, monkeypatch):
    """Point 14: unknown keys, ??? and unset env vars: one error, no dir, no MLflow run."""
    monkeypatch.delenv("RUNNER_UNSET_VARIABLE", raising=False)
    result = run_cli(
        f"paths.output_dir={tmp_path}/out",
        "+typo=1",
        "+trainer.typo=2",
        "model=timm",
        "logger.experiment_name=${oc.env:RUNNER_UNSET_VARIABLE}",
    )
    message = result.stderr
    assert result.returncode == 1
    assert "4 problems" in message, message
    assert "'typo' is not a known top-level key" in message
    assert "trainer.typo is not a known key of trainer" in message
    assert "model.name is required" in message
    assert "logger.experiment_name cannot be resolved" in message
    assert not (tmp_path / "out").exists()

    result = run_cli(f"paths.output_dir={tmp_path}/out", "optim.lrr=0.1")
    assert result.returncode == 1 and "lrr" in result.stderr and not (tmp_path / "out").exists()


def test_untrusted_targets_are_refused_before_import(tmp_path):
    """Point 15: `_target_: os.system` never runs, from the CLI or a stored config."""
    marker = tmp_path / "pwned"
    result = run_cli(
        f"paths.output_dir={tmp_path}/out",
        "data._target_=os.system",
        f"+data.command=touch {marker}",
    )
    assert result.returncode == 1 and "data._target_='os.system' is not trusted" in result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()

    stored = OmegaConf.create("model:\n  _target_: subprocess.run\n  args: [ls]\n")
    assert untrusted_targets(stored) == [
        "model._target_='subprocess.run' is not trusted: targets must come from runner, torch, "
        "torchvision, timm, kornia, torchmetrics; add its module to allowed_targets to allow it"
    ]
    allowed = OmegaConf.create({"allowed_targets": ["mylab"], "m": {"_target_": "mylab.Net"}})
    assert untrusted_targets(allowed) == []


def test_secrets_are_redacted_in_params_and_saved_configs(tmp_path, monkeypatch):
    """Point 16: secret-named keys and ${oc.env:...} values never reach logs or files."""
    cfg = OmegaConf.create(
        {
            "a": {"api_token": "s3cr3t", "image_key": "img", "password": None},
            "b": [{"secret": "x"}],
            "c": "${oc.env:RUNNER_TEST_SECRET}",
        }
    )
    monkeypatch.setenv("RUNNER_TEST_SECRET", "from-env")
    assert redacted_container(cfg) == {
        "a": {"api_token": "***", "image_key": "img", "password": None},
        "b": [{"secret": "***"}],
        "c": "***",
    }

    env = {"RUNNER_TEST_SECRET": "hunter2-experiment"}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "run.py"),
            f"paths.output_dir={tmp_path}",
            *TINY,
            "logger.experiment_name=${oc.env:RUNNER_TEST_SECRET}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "hunter2" not in result.stdout
    db = tmp_path / "mlflow.db"
    assert query(db, "SELECT value FROM params WHERE key='logger.experiment_name'") == [("***",)]
    (run_dir,) = [p.parent for p in (tmp_path / "runs").glob("*/*/config_resolved.yaml")]
    assert "hunter2" not in (run_dir / "config_resolved.yaml").read_text()
