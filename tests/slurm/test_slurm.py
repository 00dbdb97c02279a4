"""Sweeps, preemption with requeue, and DDP on a real (local, one-node) SLURM cluster."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, query
from tests.slurm.conftest import release_requeued, slurm_command, stamp_of, wait_for_line

# `make test` runs each file on one worker (--dist loadfile): the tests of the one-node
# cluster never wait for each other's CPUs.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm")]

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_sweep(command: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def tags(db: Path, run_id: str) -> dict[str, str]:
    return dict(query(db, "SELECT key, value FROM tags WHERE run_uuid=?", run_id))


def test_two_job_sweep_runs_as_slurm_jobs_in_one_sweep_dir(tmp_path):
    done = run_sweep(slurm_command(tmp_path, "optim.lr=1e-3,1e-2"))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (sweep,) = [p.parent for p in (tmp_path / "multirun").glob("*/*/multirun.yaml")]
    assert sorted(p.name for p in sweep.glob("[0-9]*")) == ["0", "1"]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["epochs"] == 1
    assert len(list((sweep / ".submitit").glob("*_[01]/*_result.pkl"))) == 2, "ran as a job array"
    db = tmp_path / "mlflow.db"
    parent = json.loads((sweep / "sweep.json").read_text())["parent_run_id"]
    runs = query(db, "SELECT run_uuid, status FROM runs WHERE run_uuid != ?", parent)
    assert len(runs) == 2 and {status for _, status in runs} == {"FINISHED"}
    assert {tags(db, run_id)["mlflow.parentRunId"] for run_id, _ in runs} == {parent}
    ((parent_status,),) = query(db, "SELECT status FROM runs WHERE run_uuid = ?", parent)
    assert parent_status == "FINISHED" and (sweep / "summary.md").is_file()
    run_dirs = {tags(db, run_id)["run_dir"] for run_id, _ in runs}
    assert run_dirs == {str(sweep / "0"), str(sweep / "1")}
    job_ids = {tags(db, run_id)["slurm.job_id"] for run_id, _ in runs}
    assert len(job_ids) == 2 and all(job_id.isdigit() for job_id in job_ids)


@pytest.mark.parametrize("launcher", ["slurm", "slurm_submit"])
def test_jobs_sbatch_refuses_end_the_sweep_with_its_words_and_the_keys(tmp_path, launcher):
    """A partition the cluster has not was a submitit traceback, and the sweep's parent
    run ended KILLED."""
    command = slurm_command(tmp_path, "hydra.launcher.partition=nope")
    command[command.index("hydra/launcher=slurm")] = f"hydra/launcher={launcher}"
    done = run_sweep(command, timeout=120)
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    assert "Error: sbatch refused the sweep's jobs: sbatch: error: invalid partition" in done.stderr
    assert "Check the hydra.launcher keys (partition," in done.stderr
    assert "Traceback" not in done.stderr
    (status,) = {row[0] for row in query(tmp_path / "mlflow.db", "SELECT status FROM runs")}
    assert status == "FAILED"


def test_a_damaged_record_of_submitted_jobs_is_refused_before_any_job_is_submitted(tmp_path):
    """slurm_submit read its sweep dir's earlier records after submitting: a cut-short
    slurm_jobs.json was a JSONDecodeError traceback, and the new jobs ran unrecorded."""
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    damaged = '[{"num": 0, "job_id": "1'
    (sweep_dir / "slurm_jobs.json").write_text(damaged)
    command = slurm_command(tmp_path, f"hydra.sweep.dir={sweep_dir}")
    command[command.index("hydra/launcher=slurm")] = "hydra/launcher=slurm_submit"
    done = run_sweep(command, timeout=120)
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    assert f"Error: {sweep_dir / 'slurm_jobs.json'} is cut short" in done.stderr
    assert "Traceback" not in done.stderr
    assert (sweep_dir / "slurm_jobs.json").read_text() == damaged
    assert not (sweep_dir / ".submitit").exists(), "no job was submitted"
    (status,) = {row[0] for row in query(tmp_path / "mlflow.db", "SELECT status FROM runs")}
    assert status == "FAILED"


def test_a_failing_two_task_job_ends_on_both_tasks_and_the_sweep_reports_it(tmp_path):
    """A user's mistake found as the job starts (an EMA decay too slow for the run's few
    steps): rank 0 recorded the job FAILED and returned; rank 1 exited 1 without a
    result, and the launcher waited for that result for ever."""
    command = slurm_command(tmp_path, "hydra.launcher.tasks_per_node=2", "trainer.ema_decay=0.9")
    done = run_sweep(command, timeout=240)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "1 of 1 sweep job(s) did not finish" in output
    assert "trainer.ema_decay=0.9" in output
    (sweep,) = [p.parent for p in (tmp_path / "multirun").glob("*/*/multirun.yaml")]
    results = list((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2, "each task ended with a result"


def test_usr2_checkpoints_requeues_and_resumes_into_the_same_mlflow_run(tmp_path):
    epochs = 4
    command = slurm_command(
        tmp_path,
        "data.num_samples=640",
        f"trainer.max_epochs={epochs}",
        "trainer.log_every_n_steps=1",
    )
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV
    )
    try:
        pattern = "*/*/.submitit/*/*_log.out"  # the job's stdout
        log, text = wait_for_line(pattern, tmp_path / "multirun", "epoch 2 step 4/", proc)
        job_id = log.parent.name
        signalled = time.time()
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        release_requeued(job_id)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    job_log = log.read_text()
    assert "USR2 received" in job_log and "requeue" in job_log, job_log[-3000:]
    db = tmp_path / "mlflow.db"
    # Besides the sweep's parent run (a single -m job is a sweep of one), one run.
    (run_id, status), *others = query(
        db,
        "SELECT run_uuid, status FROM runs WHERE run_uuid NOT "
        "IN (SELECT run_uuid FROM tags WHERE key = 'sweep.role')",
    )
    assert not others, "the requeued job logs into the same MLflow run"
    assert status == "FINISHED"
    steps = [
        s
        for (s,) in query(
            db, "SELECT step FROM metrics WHERE key='val/acc' AND run_uuid=? ORDER BY step", run_id
        )
    ]
    assert steps == list(range(1, epochs + 1)), "every epoch logged exactly once"
    assert tags(db, run_id)["requeues"] == "1"
    # Figures: the step being trained when the signal came vs where the job went on from.
    stopped = [line for line in job_log.splitlines() if "checkpoint saved" in line]
    resumed = [line for line in job_log.splitlines() if "resumed from" in line]
    assert stopped and resumed, job_log[-3000:]
    # The signal came after batch 4 of epoch 2 (16 batches an epoch); the step under way
    # finishes and is saved, and the requeued job goes on from exactly there.
    batch = int(stopped[0].split("stopped after batch ")[1].split(";")[0])
    assert batch >= 4 and f"epoch 1 done, step {16 + batch}" in resumed[0]
    submitted = stamp_of(out, "sweep output dir")
    started = stamp_of(text, "Starting with JobEnvironment")
    first_step = stamp_of(text, "epoch 1 step 1/")
    print(
        f"\nsubmission-to-first-step: {first_step - submitted:.1f} s (job start "
        f"{started - submitted:.1f} s, then {first_step - started:.1f} s to the first step)"
    )
    saved = stamp_of(job_log, "checkpoint saved")
    print(f"signal to checkpoint saved: {saved - signalled:.2f} s; {stopped[0].strip()}")
    print(
        f"checkpoint saved to resumed: {stamp_of(job_log, 'resumed from') - saved:.1f} s; "
        f"{resumed[0].strip()}"
    )


def test_two_task_ddp_job_matches_one_process_on_the_same_global_batch(tmp_path):
    """2 SLURM tasks (gloo, batch 16 each) against 1 local process (batch 32), no aug."""
    same = ["aug=none", "trainer.max_epochs=2", "data.num_samples=320"]
    single = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "run.py"),
            f"paths.output_dir={tmp_path / 'single'}",
            *TINY,
            *same,
            "trainer.batch_size=32",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    done = run_sweep(
        slurm_command(tmp_path, "hydra.launcher.tasks_per_node=2", "trainer.batch_size=16", *same)
    )
    single_out, _ = single.communicate(timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert single.returncode == 0, single_out[-3000:]
    (run_dir,) = list((tmp_path / "multirun").glob("*/*/0"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best.pt",
        "best.safetensors",
        "last-previous.pt",
        "last.pt",
    ]
    # One job dir: the second task wrote nothing of its own.
    assert [p.name for p in run_dir.parent.iterdir() if p.name.isdigit()] == ["0"]
    db = tmp_path / "mlflow.db"
    ((run_id, status),) = query(
        db,
        "SELECT run_uuid, status FROM runs WHERE run_uuid NOT IN "
        "(SELECT run_uuid FROM tags WHERE key = 'sweep.role')",
    )
    assert status == "FINISHED"
    run_tags = tags(db, run_id)
    assert run_tags["world_size"] == "2" and run_tags["distributed.backend"] == "gloo"
    assert run_tags["effective_batch_size"] == "32"
    logs = "".join(p.read_text() for p in run_dir.parent.glob(".submitit/*/*_log.out"))
    assert "rank 1 of 2" in logs and "rank 0 of 2" in logs
    # Same data order and averaged gradients; only BatchNorm sees 16 instead of 32 images.
    ddp = json.loads((run_dir / "metrics.json").read_text())
    (one_dir,) = list((tmp_path / "single" / "runs").glob("*/*"))
    one = json.loads((one_dir / "metrics.json").read_text())
    ddp_loss = metric_values(db, run_id, "train/loss")
    one_db = tmp_path / "single" / "mlflow.db"
    ((one_id,),) = query(one_db, "SELECT run_uuid FROM runs")
    one_loss = metric_values(one_db, one_id, "train/loss")
    print(
        f"\ntrain/loss per epoch: 2 tasks {ddp_loss}, 1 process {one_loss}; test/acc "
        f"{ddp['test/acc']:.4f} vs {one['test/acc']:.4f}"
    )
    assert len(ddp_loss) == len(one_loss) == 2
    # Measured at a266230: [2.3029, 1.5684] vs [2.3089, 1.4834] (BatchNorm's halves of
    # each batch differ). A rank that trained on all the data (no sharding: batch 16 over
    # all 320 images) ends its second epoch at 1.2671, 0.21 from the single process.
    assert abs(ddp_loss[0] - one_loss[0]) <= 0.05 * one_loss[0]
    assert abs(ddp_loss[1] - one_loss[1]) <= 0.12
    assert abs(ddp["test/acc"] - one["test/acc"]) <= 0.1
    # Resumed, the finished job is kept on both tasks: rank 1 once went on to wait for
    # rank 0 to join it (10 minutes), as rank 0 alone knew the job was done.
    resume = slurm_command(
        tmp_path, "hydra.launcher.tasks_per_node=2", "trainer.batch_size=16", *same
    )
    started = time.monotonic()
    again = run_sweep([*resume, f"sweep.resume={run_dir.parent}"], timeout=240)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert time.monotonic() - started < 180
    assert json.loads((run_dir / "metrics.json").read_text()) == ddp


def metric_values(db: Path, run_id: str, key: str) -> list[float]:
    rows = query(
        db, "SELECT value FROM metrics WHERE run_uuid=? AND key=? ORDER BY step", run_id, key
    )
    return [round(v, 4) for (v,) in rows]


def test_submit_only_launcher_returns_at_once_and_collect_summarises_and_audits_the_jobs(
    tmp_path,
):
    """The jobs are the two fold jobs of `experiment=audit`: the launch returns while they
    run, and `collect` summarises them into the parent run and audits them."""
    from tests.sweeps.test_audit import check_audited_sweep, sweep_command

    out = tmp_path / "outputs"
    command = sweep_command(
        out,
        "hydra/launcher=slurm_submit",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=20",
    )
    started = time.monotonic()
    done = run_sweep(command, timeout=180)
    took = time.monotonic() - started
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (sweep,) = [p.parent for p in (out / "multirun").glob("*/*/multirun.yaml")]
    jobs = json.loads((sweep / "slurm_jobs.json").read_text())
    try:
        assert [job["num"] for job in jobs] == [0, 1]
        assert f"runner.sweeps collect {sweep}" in done.stdout + done.stderr
        assert all(f"submitted job {job['job_id']}" in done.stdout + done.stderr for job in jobs)
        assert took < 30, f"the submit-only launcher waited {took:.0f} s"
        from runner.sweeps.collect import sweep_jobs

        states = {job["state"] for job in sweep_jobs(sweep)}
        assert states <= {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "FINISHED"}, states
        # Later: once the jobs are done, collect summarises them into the parent run.
        deadline = time.monotonic() + 400
        while {job["state"] for job in sweep_jobs(sweep)} != {"FINISHED"}:
            assert time.monotonic() < deadline, sweep_jobs(sweep)
            time.sleep(1)
        assert not (sweep / "audit").exists(), "the launching process did not wait"
        collect = [sys.executable, "-m", "runner.sweeps", "collect", str(sweep)]
        collected = subprocess.run(collect, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert collected.returncode == 0, collected.stdout + collected.stderr
        assert "2 job(s), 2 finished" in collected.stdout
        db = out / "mlflow.db"
        parent = json.loads((sweep / "sweep.json").read_text())["parent_run_id"]
        ((status,),) = query(db, "SELECT status FROM runs WHERE run_uuid = ?", parent)
        assert status == "FINISHED"
        children = query(
            db, "SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId' AND value = ?", parent
        )
        assert len(children) == 2
        tags = dict(query(db, "SELECT key, value FROM tags WHERE run_uuid = ?", parent))
        assert tags["summary"] == "summary/summary.md" and tags["best.folds"] == "0,1"
    finally:
        subprocess.run(["scancel", *(job["job_id"] for job in jobs)], timeout=30)
    check_audited_sweep(out, sweep)


def test_optuna_trials_run_as_slurm_jobs_and_are_pruned_through_the_storage(tmp_path):
    from tests.sweeps.test_sweeps import PRUNABLE

    trials = [
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner.n_startup_trials=1",
    ]
    done = run_sweep(slurm_command(tmp_path, *PRUNABLE, *trials))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    with sqlite3.connect(tmp_path / "optuna.db") as conn:
        states = [s for (s,) in conn.execute("SELECT state FROM trials ORDER BY number")]
    assert len(states) == 4 and "PRUNED" in states and "COMPLETE" in states, states
    db = tmp_path / "mlflow.db"
    children = query(db, "SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId'")
    assert len(children) == 4
    assert all(tags(db, run_id)["slurm.job_id"].isdigit() for (run_id,) in children)
