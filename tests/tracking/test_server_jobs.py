"""Stores on a cluster: eight jobs at once against one real `mlflow server`, nothing lost."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY, query

pytestmark = pytest.mark.slow

JOBS = 8
EPOCHS = 2
PER_EPOCH = ("train/loss", "train/acc", "val/loss", "val/acc", "lr", "epoch_time_s")
AT_END = ("test/acc", "test/loss", "startup_s", "model_logging_s")


def test_eight_concurrent_jobs_log_everything_to_one_mlflow_server(tmp_path, mlflow_server):
    """What `hydra/launcher=slurm` jobs do with logger.tracking_uri=http://...: each job
    a process of its own, all writing to the server at the same time."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "run.py"),
                f"paths.output_dir={tmp_path}",
                f"hydra.run.dir={tmp_path}/job{index}",
                *TINY,
                f"trainer.max_epochs={EPOCHS}",
                f"seed={index}",
                f"logger.tracking_uri={mlflow_server.uri}",
                "logger.experiment_name=cluster",
                "logger.system_metrics_interval_s=1",
                "logger.export_model=true",
                "trainer.keep_host_memory=false",  # eight processes on a small machine
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(JOBS)
    ]
    outputs = [proc.communicate(timeout=1200)[0] for proc in procs]
    failed = [
        (i, out)
        for i, (proc, out) in enumerate(zip(procs, outputs, strict=True))
        if proc.returncode
    ]
    assert not failed, "\n".join(f"job{i}:\n{out[-3000:]}" for i, out in failed)
    assert not list(tmp_path.rglob("mlflow_pending.jsonl"))  # nothing left undelivered

    db = mlflow_server.root / "server.db"
    runs = dict(query(db, "SELECT run_uuid, status FROM runs"))
    assert len(runs) == JOBS and set(runs.values()) == {"FINISHED"}
    for run_id in runs:
        steps = query(db, "SELECT key, step FROM metrics WHERE run_uuid = ?", run_id)
        for key in PER_EPOCH:
            assert sorted(s for k, s in steps if k == key) == list(range(1, EPOCHS + 1)), key
        assert all(any(k == key for k, _ in steps) for key in AT_END)
        assert any(k.startswith("system/") for k, _ in steps)
        contexts = query(
            db,
            "SELECT t.value FROM inputs i JOIN input_tags t ON t.input_uuid = i.input_uuid "
            "WHERE i.destination_id = ?",
            run_id,
        )
        assert sorted(c for (c,) in contexts) == ["test", "train", "val"]
        params = query(db, "SELECT COUNT(*) FROM params WHERE run_uuid = ?", run_id)[0][0]
        assert params > 50
    models = query(db, "SELECT source_run_id, status FROM logged_models")
    assert sorted(models) == sorted((run_id, 2) for run_id in runs)  # one READY model each
    # Through the server too, the test metrics are their model's.
    linked = query(db, "SELECT run_id FROM logged_model_metrics WHERE metric_name = 'test/acc'")
    assert sorted(linked) == sorted((run_id,) for run_id in runs)
    artifacts = mlflow_server.root / "artifacts"
    assert len(list(artifacts.rglob("model.pt2"))) == JOBS
    assert len(list(artifacts.rglob("run.log"))) == JOBS
    assert len(list(artifacts.rglob("config_resolved.yaml"))) == 2 * JOBS  # run + model
