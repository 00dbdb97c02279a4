"""Real CPU training runs: learning, MLflow contents, checkpoints, resume, failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import runner.training.engine
from runner.train import run
from tests.conftest import REPO, TINY, compose_run, for_logger, query, runs_in

pytestmark = pytest.mark.slow

REQUIRED_METRICS = {
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "val/balanced_acc",
    "lr",
    "epoch_time_s",
    "train/throughput",
    "test/acc",
    "test/top5",
    "test/balanced_acc",
    "test/macro_f1",
    "test/auroc",
}
REQUIRED_TAGS = {
    "git_commit",
    "git_dirty",
    "host",
    "device",
    "torch",
    "timm",
    "kornia",
    "overrides",
}


def run_status(db: Path) -> list[str]:
    return [row[0] for row in query(db, "SELECT status FROM runs")]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One short training run of the default config (digits, resnet10t, MLflow)."""
    tmp = tmp_path_factory.mktemp("digits")
    cfg = compose_run(tmp, "run", "trainer.max_epochs=6", tiny=False)
    best = run(cfg)
    return tmp, cfg, best


def test_default_run_learns_digits(digits_run):
    tmp, _, best = digits_run
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    assert metrics["test/acc"] >= 0.93, metrics
    assert metrics["test/balanced_acc"] >= 0.93, metrics
    assert best == pytest.approx(metrics["best_value"])
    assert 0.9 <= best <= 1.0


def test_mlflow_store_holds_params_metrics_tags_and_artifacts(digits_run):
    tmp, cfg, best = digits_run
    db = tmp / "outputs" / "mlflow.db"
    ((status, artifact_uri),) = query(db, "SELECT status, artifact_uri FROM runs")
    assert status == "FINISHED"
    (experiment,) = query(db, "SELECT name FROM experiments WHERE name != 'Default'")
    assert experiment == ("digits",)
    metric_names = {row[0] for row in query(db, "SELECT DISTINCT key FROM metrics")}
    assert metric_names >= REQUIRED_METRICS
    epochs = query(db, "SELECT step FROM metrics WHERE key = 'val/acc' ORDER BY step")
    assert [e for (e,) in epochs] == list(range(1, 7)), "one val/acc per epoch"
    # An epoch's lr is the one its first step used: epoch 1 starts the warmup, far below
    # optim.lr (the lr read after the epoch was the next's: the end of the warmup).
    ((first_lr,),) = query(db, "SELECT value FROM metrics WHERE key = 'lr' AND step = 1")
    assert first_lr < 0.2 * cfg.optim.lr
    (best_logged,) = query(db, "SELECT MAX(value) FROM metrics WHERE key = 'val/acc'")[0]
    assert best_logged == pytest.approx(best)
    params = dict(query(db, "SELECT key, value FROM params"))
    assert params["optim.lr"] == str(cfg.optim.lr) and params["model.name"] == "resnet10t"
    assert params["trainer.max_epochs"] == "6"
    tags = dict(query(db, "SELECT key, value FROM tags"))
    assert set(tags) >= REQUIRED_TAGS
    assert tags["device"] == "cpu"
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    artifacts = Path(artifact_uri.removeprefix("file://"))
    for name in (
        "config_resolved.yaml",
        "metrics.json",
        "confusion_matrix.png",
        "aug_preview.png",
        "per_class.csv",
        "environment.json",
    ):
        assert (artifacts / name).is_file(), name
    # The best weights are uploaded once, as the run's logged model (tests/tracking/).
    assert query(db, "SELECT name, status FROM logged_models") == [("model", 2)]
    assert str(tmp / "outputs" / "mlartifacts") in artifact_uri


def test_run_dir_holds_checkpoints_that_load_with_weights_only(digits_run):
    tmp, cfg, _ = digits_run
    ckpt = tmp / "run" / "checkpoints"
    best = torch.load(ckpt / "best.pt", weights_only=True)
    last = torch.load(ckpt / "last.pt", weights_only=True)
    assert best["class_names"] == [str(d) for d in range(10)] and best["image_size"] == 32
    assert last["state"]["epoch"] == 6 and set(last) >= {"optimizer", "scheduler", "rng"}
    model = instantiate(cfg.model)(num_classes=10)
    model.load_state_dict(best["model"])
    per_class = (tmp / "run" / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "index,class,precision,recall,f1,support" and len(per_class) == 11
    assert per_class[3].startswith("2,")  # the confusion matrix's axes show it (> 50 classes)
    assert not list(ckpt.glob("*.tmp")), "no temp files may be left behind"


def test_resume_continues_the_same_mlflow_run(tmp_path):
    first = run(compose_run(tmp_path, "run", "trainer.max_epochs=2"))
    db = tmp_path / "outputs" / "mlflow.db"
    (run_id,) = query(db, "SELECT run_uuid FROM runs")[0]
    second = run(compose_run(tmp_path, "run", "trainer.max_epochs=3"))
    assert query(db, "SELECT run_uuid, status FROM runs") == [(run_id, "FINISHED")]
    steps = [s for (s,) in query(db, "SELECT step FROM metrics WHERE key='val/acc' ORDER BY step")]
    assert steps == [1, 2, 3], "each epoch is logged once across the restart"
    assert second >= first or second == pytest.approx(first)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 3


def test_resuming_into_a_deleted_or_absent_mlflow_run_says_what_to_do(tmp_path):
    """Both ended in a raw MlflowException traceback, after the data and model were built."""
    from mlflow.tracking import MlflowClient

    from runner.config.errors import ConfigError

    run(compose_run(tmp_path, "run", "trainer.max_epochs=1"))
    db = tmp_path / "outputs" / "mlflow.db"
    (run_id,) = query(db, "SELECT run_uuid FROM runs")[0]
    MlflowClient(tracking_uri=f"sqlite:///{db}").delete_run(run_id)
    with pytest.raises(ConfigError, match=rf"MLflow run {run_id}, which was deleted: restore"):
        run(compose_run(tmp_path, "run", "trainer.max_epochs=2"))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    payload["state"]["mlflow_run_id"] = "0" * 32  # a run of another store (offline fallback)
    torch.save(payload, last)
    with pytest.raises(ConfigError, match=r"which the store \S+ does not have"):
        run(compose_run(tmp_path, "run", "trainer.max_epochs=2"))


def test_exception_marks_the_run_failed_with_its_traceback(tmp_path, monkeypatch):
    def broken_epoch(**kwargs):
        raise RuntimeError("boom in a training step")

    monkeypatch.setattr(runner.training.engine, "train_one_epoch", broken_epoch)
    with pytest.raises(RuntimeError, match="boom"):
        run(compose_run(tmp_path, "run"))
    db = tmp_path / "outputs" / "mlflow.db"
    assert run_status(db) == ["FAILED"]
    (artifact_uri,) = query(db, "SELECT artifact_uri FROM runs")[0]
    traceback_file = Path(artifact_uri.removeprefix("file://")) / "traceback.txt"
    assert "boom in a training step" in traceback_file.read_text()


def test_keyboard_interrupt_marks_the_run_killed(tmp_path, monkeypatch):
    def interrupted_epoch(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.training.engine, "train_one_epoch", interrupted_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(compose_run(tmp_path, "run"))
    assert run_status(tmp_path / "outputs" / "mlflow.db") == ["KILLED"]


def test_logger_none_still_writes_metrics_and_checkpoints(tmp_path):
    best = run(compose_run(tmp_path, "run", "logger=none"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_value"] == pytest.approx(best)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    assert runs_in(tmp_path / "outputs" / "mlflow.db") == 0


@pytest.mark.parametrize(
    "extra",
    [
        [
            "trainer.ema_decay=0.5",
            "trainer.gradient_clip_val=1.0",
            "trainer.accumulate_grad_batches=2",
            "loss=focal",
            "sampler=balanced",
            "optim=sgd",
            "sched=onecycle",
            "trainer.early_stopping_patience=1",
        ]
    ],
)
def test_trainer_options_run_together(tmp_path, extra):
    best = run(compose_run(tmp_path, "run", "trainer.max_epochs=2", "logger=none", *extra))
    assert 0.0 <= best <= 1.0


def test_a_run_stopped_early_logs_its_test_metrics_at_its_last_epoch(tmp_path):
    """They were logged at step trainer.max_epochs, epochs after the last val/acc.

    With an lr of 1e-9 val/acc stays put, and patience 1 stops the run at epoch 2 here;
    only the batch-norm statistics move, so on another CPU it may stop later.
    """
    stalled = ("trainer.max_epochs=5", "trainer.early_stopping_patience=1", "optim.lr=1e-9")
    run(compose_run(tmp_path, "run", *stalled, "sched=constant"))
    epochs = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    steps = query(
        tmp_path / "outputs" / "mlflow.db",
        "SELECT key, MAX(step) FROM metrics WHERE key IN ('val/acc', 'test/acc') GROUP BY key",
    )
    assert dict(steps) == {"val/acc": epochs, "test/acc": epochs}


def test_the_reports_of_a_run_with_limited_batches_show_the_images_it_tested(tmp_path, caplog):
    """trainer.limit_batches tests the first batches only: the reports said the other
    test images "did not decode" and left out the per-image plots."""
    import logging

    limited = ("trainer.limit_batches=2", "trainer.eval_batch_size=8", "logger=none")
    with caplog.at_level(logging.WARNING):
        run(compose_run(tmp_path, "run", *limited, "analysis.enabled=true"))
    assert "did not decode" not in caplog.text
    assert (tmp_path / "run" / "misclassified.png").is_file()


def test_two_cli_runs_started_together_get_their_own_dirs_and_mlflow_runs(tmp_path):
    args = [sys.executable, str(REPO / "run.py"), f"paths.output_dir={tmp_path}", *TINY]
    procs = [
        subprocess.Popen(
            [*args, f"seed={seed}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for seed in (0, 1)
    ]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    run_dirs = sorted((tmp_path / "runs").glob("*/*"))
    assert len(run_dirs) == 2 and all((d / "metrics.json").is_file() for d in run_dirs)
    db = tmp_path / "mlflow.db"
    assert run_status(db) == ["FINISHED", "FINISHED"]
    overrides = [v for (v,) in query(db, "SELECT value FROM tags WHERE key='overrides'")]
    assert sorted("seed=0" in o for o in overrides) == [False, True]
    # Not a terminal: progress comes as plain lines, and the config prints as a tree.
    assert "epoch 1 step" in outputs[0] and "trainer" in outputs[0]


def test_a_terminal_gets_a_progress_bar_per_epoch(tmp_path):
    """Runs a tiny training in a pseudo-terminal, as a person at a shell would."""
    import os
    import pty

    command = [
        sys.executable,
        str(REPO / "run.py"),
        f"paths.output_dir={tmp_path}",
        "logger=none",
        *for_logger(TINY, ["logger=none"]),
        "trainer.max_epochs=2",
    ]
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes the training run, its stdout a terminal
        os.execv(command[0], command)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    screen = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, screen[-2000:]
    assert "epoch 1/2" in screen and "epoch 2/2" in screen
    assert "━" in screen, "rich draws a bar on a terminal"
    assert "img/s" in screen and "run summary" in screen


def test_nan_policy_skip_stops_when_the_weights_are_no_longer_finite(tmp_path):
    """Skipping cannot bring inf weights back: the run once went on to its test and crashed
    there on a best.pt that was never written."""
    overrides = [
        "logger=none",
        "optim=sgd",
        "optim.lr=1e16",
        "sched=constant",
        "trainer.nan_policy=skip",
        "trainer.max_nan_skips=100000",
        "trainer.max_epochs=3",
    ]
    with pytest.raises(runner.training.engine.NonFiniteLossError) as err:
        run(compose_run(tmp_path, "run", *overrides))
    assert "after epoch 1 (trainer.nan_policy=skip): training diverged" in str(err.value)
    assert "Lower optim.lr" in str(err.value) and "an optim.* or loss.* value" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
