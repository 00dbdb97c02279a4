"""Runs and checkpoints: interruption, exact resume, crashes, bad files, NaN, full disks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch

from runner.training.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint
from tests.conftest import REPO, TINY, for_logger, query
from tests.faults import FAULTY_LOSS
from tests.reliability.conftest import cli, require, run_to_end, run_until, weights

pytestmark = pytest.mark.slow


class Payload:
    """A pickled object that weights-only loading must refuse."""


def statuses(db: Path) -> list[str]:
    return [s for (s,) in query(db, "SELECT status FROM runs")]


def val_steps(db: Path) -> list[int]:
    return [s for (s,) in query(db, "SELECT step FROM metrics WHERE key='val/acc' ORDER BY step")]


def test_sigterm_then_rerun_resumes_exactly_as_an_uninterrupted_run(tmp_path):
    """Points 1 and 2: SIGTERM mid-training, rerun in the same dir, same result and run."""
    straight_dir, broken_dir = tmp_path / "straight" / "run", tmp_path / "broken" / "run"
    code, out = run_to_end(cli(tmp_path / "straight", straight_dir))
    assert code == 0, out[-3000:]

    command = cli(tmp_path / "broken", broken_dir)
    code, out = run_until(command, "epoch 3 step 4/", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    db = tmp_path / "broken" / "mlflow.db"
    assert statuses(db) == ["KILLED"] and val_steps(db) == [1, 2]
    interrupted = torch.load(broken_dir / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert interrupted["epoch"] == 2 and interrupted["partial_epoch"]["batches"] >= 4

    code, out = run_to_end(command)
    assert code == 0, out[-3000:]
    assert statuses(db) == ["FINISHED"], "the resumed run logs into the same MLflow run"
    assert val_steps(db) == [1, 2, 3, 4], "every epoch logged exactly once"
    # An epoch's lr is its first step's, also for the epoch the stop cut in two.
    lr = "SELECT step, value FROM metrics WHERE key='lr' ORDER BY step"
    assert query(db, lr) == query(tmp_path / "straight" / "mlflow.db", lr)
    for name in ("last.pt", "best.pt"):
        a, b = (
            weights(straight_dir / "checkpoints" / name),
            weights(broken_dir / "checkpoints" / name),
        )
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    straight = json.loads((straight_dir / "metrics.json").read_text())
    resumed = json.loads((broken_dir / "metrics.json").read_text())
    assert straight == resumed


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_file(tmp_path):
    """Point 3: the newest complete file survives; the stray temp file is cleaned up."""
    target = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"generation": 0, "w": torch.zeros(10)}, target)
    writer = textwrap.dedent(f"""
        import torch
        from runner.training.checkpoint_io import save_checkpoint
        big = torch.randn(150_000_000)  # 600 MB: slow enough to be killed mid-write
        save_checkpoint({{"generation": 1, "w": big}}, {str(target)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=REPO)
    deadline = time.monotonic() + 120
    while not list(target.parent.glob(".*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    proc.kill()
    proc.wait()
    assert list(target.parent.glob(".*.tmp")), "the writer was killed before it started writing"
    assert load_checkpoint(target)["generation"] == 0
    # The next run in this dir removes what the killed writer left.
    from runner.training.checkpoint_io import remove_stale_temp_files

    assert remove_stale_temp_files(target.parent)
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    """Point 4: the bad file is named and the run resumes from the one before it."""
    run_dir = tmp_path / "run"
    code, out = run_to_end(cli(tmp_path, run_dir, "trainer.max_epochs=2", "logger=none"))
    assert code == 0, out[-3000:]
    last = run_dir / "checkpoints" / "last.pt"
    previous = run_dir / "checkpoints" / "last-previous.pt"
    assert load_checkpoint(previous)["state"]["epoch"] == 1
    last.write_bytes(last.read_bytes()[:1000])
    code, out = run_to_end(cli(tmp_path, run_dir, "trainer.max_epochs=3", "logger=none"))
    assert code == 0, out[-3000:]
    assert "last.pt cannot be loaded" in out and "resumed from" in out and "last-previous.pt" in out
    assert load_checkpoint(last)["state"]["epoch"] == 3

    for path in (last, previous):
        path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"last-previous\.pt"):
        from runner.training.checkpoint_io import load_newest

        load_newest(last)
    code, out = run_to_end(cli(tmp_path, run_dir, "trainer.max_epochs=4", "logger=none"))
    assert code != 0 and "no loadable checkpoint" in out and "trainer.resume=never" in out


def test_the_best_metric_survives_a_restart(tmp_path):
    """Point 5: the best value is read from the checkpoint, not kept only in memory."""
    run_dir = tmp_path / "run"
    code, out = run_to_end(cli(tmp_path, run_dir, "trainer.max_epochs=2", "logger=none"))
    assert code == 0, out[-3000:]
    last = run_dir / "checkpoints" / "last.pt"
    saved = load_checkpoint(last)
    saved["state"].update(best_value=0.999, best_epoch=2)  # as if epoch 2 had been excellent
    save_checkpoint(saved, last)
    best_before = (run_dir / "checkpoints" / "best.pt").read_bytes()
    code, out = run_to_end(cli(tmp_path, run_dir, "trainer.max_epochs=4", "logger=none"))
    assert code == 0, out[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] == 2 and metrics["best_value"] == 0.999
    assert (run_dir / "checkpoints" / "best.pt").read_bytes() == best_before


def test_exception_in_a_step_fails_the_run_with_its_traceback(tmp_path):
    """Point 6a: non-zero exit, MLflow FAILED, traceback as an artifact."""
    code, out = run_to_end(cli(tmp_path, tmp_path / "run", *FAULTY_LOSS, "+loss.fail=raise"))
    assert code != 0 and "the test hook failed this training step" in out
    db = tmp_path / "mlflow.db"
    ((status, artifact_uri),) = query(db, "SELECT status, artifact_uri FROM runs")
    assert status == "FAILED"
    assert "test hook" in (Path(artifact_uri.removeprefix("file://")) / "traceback.txt").read_text()


def test_ctrl_c_saves_a_checkpoint_and_marks_the_run_killed(tmp_path):
    """Point 6b: SIGINT -> checkpoint at the next step, MLflow KILLED, exit 130."""
    run_dir = tmp_path / "run"
    code, out = run_until(cli(tmp_path, run_dir), "epoch 1 step 4/", signal.SIGINT)
    assert code == 130, out[-3000:]
    assert statuses(tmp_path / "mlflow.db") == ["KILLED"]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"]
    assert state["epoch"] == 0 and state["partial_epoch"]["batches"] >= 4
    # The hint is the whole command that continues the run, in its run dir.
    assert "continue it with: python run.py" in out and f"hydra.run.dir={run_dir}" in out


def test_sigterm_while_the_run_tests_and_reports_ends_it_killed(tmp_path):
    """The signal's default action ended the process and left the MLflow run RUNNING.

    The model, logged before the test, is kept but not registered: a registered version
    is a model whose test passed. Run again in place, the run tests the same logged
    model and registers it once."""
    after_training = [
        "trainer.max_epochs=1",
        "analysis.enabled=true",
        "logger.export_model=true",
        "logger.registered_model_name=tested-net",
    ]
    command = cli(tmp_path, tmp_path / "run", *after_training)
    code, out = run_until(command, "analysis: wrote", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    db = tmp_path / "mlflow.db"
    assert statuses(db) == ["KILLED"]
    assert "continue it with: " in out
    assert query(db, "SELECT COUNT(*) FROM model_versions") == [(0,)]
    ((model_id,),) = query(db, "SELECT model_id FROM logged_models WHERE status = 2")
    code, out = run_to_end(command)
    assert code == 0, out[-3000:]
    assert query(db, "SELECT model_id FROM logged_models") == [(model_id,)]
    versions = query(db, "SELECT name, version, source FROM model_versions")
    assert versions == [("tested-net", 1, f"models:/{model_id}")]


def test_sigkilled_run_is_reaped_by_the_tool_and_by_the_next_run(tmp_path):
    """Point 7: a run left RUNNING by SIGKILL is marked KILLED (pid + host recorded)."""
    db = tmp_path / "mlflow.db"
    for attempt in ("tool", "next run"):
        code, _ = run_until(cli(tmp_path, tmp_path / attempt), "epoch 1 step 4/", signal.SIGKILL)
        assert code == -signal.SIGKILL
        running = query(db, "SELECT run_uuid FROM runs WHERE status='RUNNING'")
        assert len(running) == 1
        tags = dict(query(db, "SELECT key, value FROM tags WHERE run_uuid=?", running[0][0]))
        assert tags["runner.pid"].isdigit() and tags["runner.host"]
        if attempt == "tool":
            tool = [
                sys.executable,
                "-m",
                "runner.tracking",
                "reap",
                f"--tracking-uri=sqlite:///{db}",
            ]
            result = subprocess.run(tool, capture_output=True, text=True, cwd=REPO, timeout=120)
            assert "1 stale run(s) marked KILLED" in result.stdout, result.stderr
        else:
            code, out = run_to_end(cli(tmp_path, tmp_path / "third", "trainer.max_epochs=1"))
            assert code == 0, out[-3000:]
            # The store helper reaped it; the run says so (the helper's log went nowhere).
            assert f"marked 1 stale run(s) of dead processes KILLED: ['{running[0][0]}']" in out
        (status,) = query(db, "SELECT status FROM runs WHERE run_uuid=?", running[0][0])[0]
        assert status == "KILLED"


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    """Point 8: nan_policy=stop names the step; last.pt is the last good epoch's."""
    run_dir = tmp_path / "run"
    code, out = run_to_end(cli(tmp_path, run_dir, *FAULTY_LOSS, "+loss.fail=nan@20"))
    assert code != 0 and "non-finite loss at step 20" in out, out[-3000:]
    assert statuses(tmp_path / "mlflow.db") == ["FAILED"]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"]
    assert state["epoch"] == 1 and state["global_step"] == 16

    code, out = run_to_end(
        cli(
            tmp_path / "skip",
            tmp_path / "skip" / "run",
            *FAULTY_LOSS,
            "+loss.fail=nan@20",
            "trainer.nan_policy=skip",
            "trainer.max_nan_skips=3",
        )
    )
    assert code != 0 and "more than trainer.max_nan_skips=3" in out, out[-3000:]


def test_a_signal_as_the_weights_diverge_keeps_the_last_good_checkpoint(tmp_path):
    """A stop within an epoch saved the diverged weights (finite loss, infinite gradient)
    as last.pt: every resume loaded them and failed, the good one never used."""
    run_dir = tmp_path / "run"
    fail = "+loss.fail=blowup_and_stop@20"
    code, out = run_to_end(cli(tmp_path, run_dir, *FAULTY_LOSS, fail))
    assert code != 0, out[-3000:]
    assert "non-finite weights at step 20 (epoch 2), when a signal stopped the run" in out
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["state"]["epoch"] == 1 and last["state"]["global_step"] == 16
    weights = [v for v in last["model"].values() if v.is_floating_point()]
    assert all(bool(v.isfinite().all()) for v in weights)


def test_disk_full_while_saving_fails_clearly_and_keeps_the_previous_checkpoint(tmp_path):
    """Point 9: on a tiny tmpfs the save fails; the previous file is intact, no temp left."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
        ).returncode
        == 0
    )
    require(mounted, "mounting a tmpfs (root)")
    try:
        target = mount / "last.pt"
        save_checkpoint({"w": torch.zeros(250_000)}, target)  # 1 MB
        from runner.training.checkpoint_io import AsyncCheckpointWriter

        writer = AsyncCheckpointWriter()
        writer.submit({target: {"w": torch.zeros(1_000_000)}}, keep_previous={target})  # 4 MB
        with pytest.raises(CheckpointError, match="No space left on device"):
            writer.wait()
        assert load_checkpoint(target)["w"].numel() == 250_000
        assert [p.name for p in mount.iterdir()] == ["last.pt"]

        code, out = run_to_end(cli(tmp_path, mount / "run", "trainer.max_epochs=1", "logger=none"))
        assert code != 0 and "No space left on device" in out, out[-3000:]
        assert not list((mount / "run" / "checkpoints").glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_checkpoints_are_weights_only_and_best_is_exported_as_safetensors(tmp_path):
    """Point 10: plain types only; safetensors export; pickled objects refused."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    code, out = run_to_end(cli(tmp_path, run_dir, "trainer.max_epochs=1", "logger=none"))
    assert code == 0, out[-3000:]
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    exported = load_file(str(run_dir / "checkpoints" / "best.safetensors"))
    assert set(exported) == set(best["model"])
    assert all(torch.equal(exported[k], best["model"][k]) for k in exported)
    # Readable by the team like best.pt (safetensors itself writes 0600).
    for name in ("best.pt", "best.safetensors"):
        assert (run_dir / "checkpoints" / name).stat().st_mode & 0o777 == 0o644, name

    torch.save({"model": {}, "evil": Payload()}, run_dir / "checkpoints" / "last.pt")
    code, out = run_to_end(cli(tmp_path, run_dir, "trainer.max_epochs=2", "logger=none"))
    assert code != 0 and "pickled objects, which are refused" in out


# 2 processes with 16 batches of 16 each per epoch, augmented (aug=basic draws a random
# affine per image on each rank): a stop in the middle of epoch 2 leaves enough to resume.
DDP_RUN = [
    *for_logger(TINY, ["logger=none"]),
    "logger=none",
    "data.num_samples=640",
    "trainer.max_epochs=2",
    "trainer.batch_size=16",
    "trainer.log_every_n_steps=2",
    "aug=basic",
]


def torchrun(run_dir: Path, *overrides: str) -> list[str]:
    """The torchrun command line of a 2-process CPU run in `run_dir`."""
    launcher = str(Path(sys.executable).with_name("torchrun"))
    run = [str(REPO / "run.py"), *DDP_RUN, *overrides, f"hydra.run.dir={run_dir}"]
    return [launcher, "--nproc_per_node=2", *run]


def epoch_lines(out: str) -> list[str]:
    """The end-of-epoch lines (train loss and acc, val loss and acc) the ranks printed."""
    return re.findall(
        r"epoch \d+/\d+  train loss [\d.]+ acc [\d.]+ \| val loss [\d.]+ acc [\d.]+", out
    )


def test_a_ddp_run_stopped_on_one_rank_resumes_exactly_as_an_uninterrupted_run(tmp_path):
    """last.pt held rank 0's RNG states only, and a resume reseeded every rank: the ranks'
    augmentations differed from the uninterrupted run's (epoch-2 train loss 2.0088 against
    1.9895 here, test/acc 0.133 against 0.183). The printed resume command also dropped
    torchrun, and as one process a partial epoch went on with half the batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    straight_dir, broken_dir = tmp_path / "straight", tmp_path / "broken"
    done = subprocess.run(
        torchrun(straight_dir), cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    straight_epochs = epoch_lines(done.stdout + done.stderr)

    # SIGTERM to rank 1 alone, in the middle of epoch 2: both ranks stop after one step.
    proc = subprocess.Popen(
        torchrun(broken_dir),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines, sent = [], False
    for line in proc.stdout:
        lines.append(line)
        if not sent and "epoch 2 step 4/" in line:
            (rank1,) = [
                child
                for child in psutil.Process(proc.pid).children()
                if child.environ().get("RANK") == "1"
            ]
            rank1.send_signal(signal.SIGTERM)
            sent = True
    proc.wait(timeout=120)
    out = "".join(lines)
    assert sent and proc.returncode != 0, out[-3000:]
    saved = torch.load(broken_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1 and saved["state"]["partial_epoch"], out[-3000:]
    assert saved["world_size"] == 2 and len(saved["rng_by_rank"]) == 2
    assert "continue it with: torchrun --nproc_per_node=2 run.py" in out, out[-3000:]

    # The same command without torchrun: one process cannot continue 2 processes' epoch.
    alone = subprocess.run(
        [sys.executable, *torchrun(broken_dir)[2:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    refusal = alone.stdout + alone.stderr
    assert alone.returncode != 0, refusal[-3000:]
    assert "in the middle of epoch 2 by 2 process(es)" in refusal, refusal[-3000:]
    assert "this run has 1" in refusal and "torchrun --nproc_per_node=2" in refusal

    done = subprocess.run(
        torchrun(broken_dir), cwd=REPO, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    resumed_epochs = epoch_lines(done.stdout + done.stderr)  # epoch 2, from each rank
    second = [line for line in straight_epochs if line.startswith("epoch 2/")]
    assert len(second) == 2 and resumed_epochs == second, (straight_epochs, resumed_epochs)
    a, b = (
        weights(straight_dir / "checkpoints" / "last.pt"),
        weights(broken_dir / "checkpoints" / "last.pt"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a), "last.pt differs after the resume"
    straight = json.loads((straight_dir / "metrics.json").read_text())
    resumed = json.loads((broken_dir / "metrics.json").read_text())
    assert straight == resumed


def test_a_second_run_in_a_run_dir_in_use_is_refused_before_it_writes(make_cfg, tmp_path):
    """It resumed from the live run's last.pt: both trained the same epochs, overwrote each
    other's checkpoints and logged every epoch twice into one MLflow run."""
    from runner.cli import run
    from runner.config.errors import ConfigError

    run_dir = tmp_path / "run"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from runner.tracking.store import hold_lock
        handle = hold_lock(__import__("pathlib").Path({str(run_dir / ".run.lock")!r}))
        print("held" if handle else "not held", flush=True)
        time.sleep(120)
        """
    )
    other = subprocess.Popen(
        [sys.executable, "-c", holder], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=r"run is in use: another process is training"):
            run(make_cfg())
        assert not (run_dir / "checkpoints").exists()
    finally:
        other.kill()
        other.wait()
    run(make_cfg())  # the other process is gone, and with it its lock
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    run(make_cfg("trainer.max_epochs=2"))  # this process's own dir: claimed again
    # The run has ended: another process may continue the dir (a notebook's kept it).
    after = subprocess.Popen(
        [sys.executable, "-c", holder], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert after.stdout.readline().strip() == "held"
    finally:
        after.kill()
        after.wait()


def test_a_signal_while_the_tracked_run_starts_ends_it_killed_at_the_first_step(tmp_path):
    """The handlers came after record_start: a SIGTERM while it created the MLflow run hit
    the default action (exit -15) and left that run RUNNING."""
    run_dir = tmp_path / "run"
    command = cli(tmp_path, run_dir, "trainer.max_epochs=3")
    starter = textwrap.dedent(
        f"""
        import os, runpy, signal, sys
        import runner.train as train

        recorded = train.record_start

        def record_start_then_signal(*args, **kwargs):  # the fault: a signal at this point
            recorded(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)

        train.record_start = record_start_then_signal
        sys.argv = {command[1:]!r}
        runpy.run_path(sys.argv[0], run_name="__main__")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", starter], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-3000:]
    assert statuses(tmp_path / "mlflow.db") == ["KILLED"]
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert saved["state"]["epoch"] == 0 and saved["state"]["global_step"] == 1  # the first step
