"""The locks of a sweep: a job of an earlier launch still running, a launch still running.

Each lock is held by a real second process, as a killed launcher's worker or a sweep
launched in another shell would hold it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from omegaconf import OmegaConf

from runner.sweeps.__main__ import main as sweeps_main
from runner.sweeps.job import SweepJob
from runner.sweeps.manifest import SWEEP_LOCK_FILE, read_manifest, update_manifest
from runner.tracking.store import hold_lock
from tests.conftest import REPO, TINY

# Runs a job as a worker of an earlier launch does: records it, holds its lock, and
# finishes it after the line "holding" once told to (a line on stdin), or is killed.
EARLIER_JOB = """
import sys
from pathlib import Path
from runner.sweeps.manifest import job_lock, update_manifest
sweep, run_dir, key = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
update_manifest(sweep, key, status="RUNNING", run_dir=str(run_dir), num=0)
with job_lock(run_dir, key):
    print("holding", flush=True)
    sys.stdin.readline()
    update_manifest(sweep, key, status="FINISHED", value=0.75)
"""

# Holds a lock file until its stdin closes, as a launching process holds its sweep's.
HOLDER = """
import sys
from pathlib import Path
from runner.tracking.store import hold_lock
lock = hold_lock(Path(sys.argv[1]))
print("holding" if lock else "refused", flush=True)
sys.stdin.read()
"""


def start(script: str, *args: Path | str) -> subprocess.Popen:
    """A Python process running `script` from the repository, once it holds its lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


def a_job(sweep: Path, run_dir: Path) -> tuple[SweepJob, object]:
    job = SweepJob(sweep_dir=sweep, num=0, overrides=["seed=0"], key="seed=0")
    return job, OmegaConf.create({"paths": {"run_dir": str(run_dir)}})


def test_a_resumed_job_waits_for_the_earlier_launch_of_it_and_keeps_its_result(tmp_path, caplog):
    sweep, run_dir = tmp_path / "sweep", tmp_path / "sweep" / "0"
    earlier = start(EARLIER_JOB, sweep, run_dir, "seed=0")
    job, cfg = a_job(sweep, run_dir)
    trained = []

    def train(cfg, job):
        trained.append(cfg.paths.run_dir)
        return 0.5

    def finish_earlier():
        earlier.stdin.write("finish\n")
        earlier.stdin.flush()

    threading.Timer(1.0, finish_earlier).start()  # while this job waits for the lock
    with caplog.at_level(logging.WARNING):
        value = job.run(cfg, train)
    earlier.wait(timeout=30)
    assert "is still running in" in caplog.text and "waiting for it to end" in caplog.text
    assert trained == [] and value == 0.75  # the earlier launch's result, not a second run
    assert read_manifest(sweep)["seed=0"]["status"] == "FINISHED"


def test_a_job_whose_earlier_process_was_killed_runs_again(tmp_path):
    sweep, run_dir = tmp_path / "sweep", tmp_path / "sweep" / "0"
    earlier = start(EARLIER_JOB, sweep, run_dir, "seed=0")
    earlier.send_signal(signal.SIGKILL)  # its lock goes with it
    earlier.wait(timeout=30)
    job, cfg = a_job(sweep, run_dir)
    assert job.run(cfg, lambda cfg, job: 0.5) == 0.5
    entry = read_manifest(sweep)["seed=0"]
    assert entry["status"] == "FINISHED" and entry["attempts"] == 1


def test_collect_leaves_a_sweep_that_is_still_running_to_its_launcher(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "1").mkdir()
    (sweep / "multirun.yaml").write_text("trainer: {monitor: val/acc, monitor_mode: max}\n")
    (sweep / "0" / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
    update_manifest(sweep, "seed=1", status="RUNNING", run_dir=str(sweep / "1"), num=1)
    launcher = start(HOLDER, sweep / SWEEP_LOCK_FILE)
    job = start(HOLDER, sweep / "1" / ".job.lock")
    try:
        status = sweeps_main(["collect", str(sweep)])
    finally:
        for proc in (launcher, job):
            proc.stdin.close()
            proc.wait(timeout=30)
    shown = capsys.readouterr().out
    assert status == 0, shown
    assert "RUNNING" in shown.splitlines()[1]  # job 1, by its lock
    assert "still running in the process that launched it" in shown
    assert not (sweep / "summary.md").exists()  # nothing summarised or ended yet


def test_collect_points_a_killed_launchers_sweep_to_sweep_resume(tmp_path, capsys):
    """It summarised such a sweep as done: one of two jobs (the other never started),
    the dead one shown RUNNING, the parent run ended FAILED, and no word of sweep.resume."""
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("trainer: {monitor: val/acc, monitor_mode: max}\n")
    update_manifest(sweep, "optim.lr=0.001", status="RUNNING", run_dir=str(sweep / "0"), num=0)
    assert sweeps_main(["collect", str(sweep)]) == 1
    shown = capsys.readouterr().out
    assert "was stopped before it summarised them" in shown
    assert f"Run them again with sweep.resume={sweep}, added to the command" in shown
    assert not (sweep / "summary.md").exists()


def test_collect_on_a_sweep_its_launcher_finished_says_so(tmp_path, capsys):
    """It said the launcher "was stopped before it summarised them" and exited 1."""
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("trainer: {monitor: val/acc, monitor_mode: max}\n")
    (sweep / "0" / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
    update_manifest(sweep, "optim.lr=0.001", status="FINISHED", run_dir=str(sweep / "0"), num=0)
    (sweep / "summary.md").write_text("# Sweep\n")  # written after the last job, as it does
    assert sweeps_main(["collect", str(sweep)]) == 0
    shown = capsys.readouterr().out
    assert "ran it to the end and summarised it" in shown and "stopped" not in shown


def test_collect_after_the_summary_command_still_calls_a_killed_sweep_stopped(tmp_path, capsys):
    """`summary` rewrote summary.md after the manifest, and collect then took the killed
    launch for one that ran to the end (exit 0, no word of sweep.resume)."""
    from runner.sweeps.manifest import SWEEP_FILE, write_json

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("trainer: {monitor: val/acc, monitor_mode: max}\n")
    started = {"parent_run_id": None, "summarised_by_launcher": None}  # as a launch starts
    write_json(sweep / SWEEP_FILE, started)
    (sweep / "0" / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
    update_manifest(sweep, "optim.lr=0.001", status="FINISHED", run_dir=str(sweep / "0"), num=0)
    assert sweeps_main(["summary", str(sweep)]) == 0
    assert (sweep / "summary.md").is_file()
    assert sweeps_main(["collect", str(sweep)]) == 1
    assert "was stopped before it summarised them" in capsys.readouterr().out


def test_collect_takes_a_jobs_final_status_from_the_manifest(tmp_path, capsys):
    """A job that failed before its run started (no traceback.txt) was UNKNOWN, with
    no overrides shown, although the manifest recorded it FAILED; so was one fail_fast
    skipped, whose entry has no run dir."""
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "1").mkdir()
    update_manifest(sweep, "optim.lr=0.003", status="SKIPPED", num=1, overrides=["optim.lr=0.003"])
    (sweep / "multirun.yaml").write_text("trainer: {monitor: val/acc, monitor_mode: max}\n")
    update_manifest(
        sweep,
        "model.name=x",
        status="FAILED",
        run_dir=str(sweep / "0"),
        num=0,
        overrides=["model.name=x", "sweep.resume=y"],
    )
    assert sweeps_main(["collect", str(sweep)]) == 1
    first, second = capsys.readouterr().out.splitlines()[:2]
    assert "FAILED" in first and "model.name=x" in first and "sweep.resume" not in first
    assert "SKIPPED" in second and "optim.lr=0.003" in second


def test_collect_of_a_relative_sweep_dir_shows_what_the_manifest_recorded(
    tmp_path, capsys, monkeypatch
):
    """The manifest's run dirs are absolute: `collect outputs/multirun/...` (as the README
    writes it) matched none, showed no overrides, and a job that failed before its run
    started as UNKNOWN, exiting 0."""
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("trainer: {monitor: val/acc, monitor_mode: max}\n")
    update_manifest(
        sweep, "seed=1", status="FAILED", run_dir=str(sweep / "0"), num=0, overrides=["seed=1"]
    )
    monkeypatch.chdir(tmp_path)
    assert sweeps_main(["collect", "sweep"]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert "FAILED" in first and "seed=1" in first


def test_collect_counts_a_submitted_job_that_never_started_as_not_finished(tmp_path, capsys):
    """A slurm_submit job cancelled before it started left no manifest entry: the summary
    said "2 job(s), 2 finished" of 3 seeds, averaged 2, and collect exited 0."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("trainer: {monitor: val/acc, monitor_mode: max}\n")
    submitted = []
    for seed in range(3):
        run_dir = sweep / str(seed)
        # No SLURM job id: squeue would wait ~18 s a job when no controller runs.
        submitted.append(
            {
                "job_id": None,
                "num": seed,
                "overrides": f"seed={seed}",
                "run_dir": str(run_dir),
            }
        )
        if seed < 2:  # the third was cancelled in the queue
            run_dir.mkdir()
            (run_dir / "metrics.json").write_text(json.dumps({"test/acc": 0.5 + seed / 10}))
            update_manifest(
                sweep,
                f"seed={seed}",
                status="FINISHED",
                value=0.5 + seed / 10,
                run_dir=str(run_dir),
                num=seed,
                overrides=[f"seed={seed}"],
            )
    (sweep / "slurm_jobs.json").write_text(json.dumps(submitted))
    assert sweeps_main(["collect", str(sweep)]) == 1
    summary = (sweep / "summary.md").read_text()
    assert "3 job(s), 2 finished" in summary
    assert "## Not finished" in summary and "job 2 NOT STARTED: seed=2" in summary


def test_collect_finds_submitted_jobs_by_their_overrides_wherever_their_run_dirs_are(
    tmp_path, capsys
):
    """slurm_jobs.json records <sweep dir>/<num>: with another hydra.sweep.subdir the jobs
    were UNKNOWN and listed again as NOT STARTED; a resumed sweep's second record of a
    job listed it twice."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("trainer: {monitor: val/acc, monitor_mode: max}\n")
    submitted = []
    for num, lr in enumerate(("0.001", "0.01")):
        run_dir = sweep / f"job{num}"  # hydra.sweep.subdir=job${hydra.job.num}
        run_dir.mkdir()
        (run_dir / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
        overrides = [f"optim.lr={lr}"]
        update_manifest(
            sweep,
            overrides[0],
            status="FINISHED",
            value=0.5,
            run_dir=str(run_dir),
            num=num,
            overrides=overrides,
            sweep_dir=str(sweep),
        )
        # No SLURM job id: squeue would wait ~18 s a job when no controller runs.
        record = {"job_id": None, "num": num, "overrides": overrides[0]}
        submitted.append({**record, "run_dir": str(sweep / str(num))})
    submitted.append({**submitted[0], "job_id": None})  # job 0 again, from a resumed launch
    (sweep / "slurm_jobs.json").write_text(json.dumps(submitted))
    assert sweeps_main(["collect", str(sweep)]) == 0
    shown = capsys.readouterr().out.splitlines()
    listed = [line for line in shown if line[:2] in ("#0", "#1")]  # then the summary's
    assert len(listed) == 2 and all("FINISHED" in line and "job" in line for line in listed)
    assert "2 job(s), 2 finished" in (sweep / "summary.md").read_text()


def test_collect_summarises_nothing_when_slurm_does_not_answer(tmp_path, capsys, monkeypatch):
    """squeue's failure was taken for "SLURM does not know the job": queued jobs counted
    as ended, and the sweep was summarised as failed while they waited to run.

    The squeue here is a script that answers as squeue does while the controller is
    down: the real one waits about 18 s a call for it.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text(
        "#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller "
        "(connect failure)' >&2\nexit 1\n"
    )
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("trainer: {monitor: val/acc, monitor_mode: max}\n")
    record = {"job_id": "7_0", "num": 0, "overrides": "seed=0", "run_dir": str(sweep / "0")}
    (sweep / "slurm_jobs.json").write_text(json.dumps([record]))
    assert sweeps_main(["collect", str(sweep)]) == 1
    shown = capsys.readouterr().out
    assert "squeue could not be asked about job 7_0 (slurm_load_jobs error: Unable" in shown
    assert not (sweep / "summary.md").exists()


def test_collect_of_a_sweep_that_keeps_no_manifest_or_was_never_submitted(tmp_path, capsys):
    """An eval sweep that ran to its end was called killed and pointed to sweep.resume; a
    slurm_submit launch whose sbatch failed was called one that waited for its jobs."""
    evaluated = tmp_path / "eval"
    (evaluated / "0").mkdir(parents=True)
    (evaluated / "multirun.yaml").write_text("mode: eval\n")
    (evaluated / "0" / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
    assert sweeps_main(["collect", str(evaluated)]) == 0
    shown = capsys.readouterr().out
    assert "a sweep of mode=eval: its jobs keep their results" in shown
    assert "sweep.resume" not in shown
    refused = tmp_path / "refused"
    refused.mkdir()
    launcher = "hydra_plugins.runner_slurm.launcher.SubmitOnlySlurmLauncher"
    (refused / "multirun.yaml").write_text(f"hydra: {{launcher: {{_target_: {launcher}}}}}\n")
    assert sweeps_main(["collect", str(refused)]) == 1
    assert "launched with hydra/launcher=slurm_submit and no job was submitted" in (
        capsys.readouterr().out
    )


def resume_command(out: Path, sweep: Path, *overrides: str) -> list[str]:
    """`python run.py -m ... sweep.resume=<sweep>` on TINY, with outputs under `out`."""
    return [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        f"paths.output_dir={out}",
        f"hydra.sweep.dir={sweep}",
        *TINY,
        *overrides,
        f"sweep.resume={sweep}",
    ]


def test_a_second_launch_into_a_running_sweep_is_refused_and_changes_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "manifest.json").write_text(json.dumps({"jobs": {}}))
    (sweep / "sweep.json").write_text('{"parent_run_id": "abc"}')
    (sweep / "STOP").write_text("job 3 failed")
    launcher = start(HOLDER, sweep / SWEEP_LOCK_FILE)
    command = resume_command(tmp_path, sweep, "seed=0,1")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        launcher.stdin.close()
        launcher.wait(timeout=30)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"the sweep dir {sweep} is in use" in output and "sweep.resume=" in output
    assert (sweep / "sweep.json").read_text() == '{"parent_run_id": "abc"}'
    assert (sweep / "STOP").exists() and not (sweep / "0").exists()
    assert not (tmp_path / "mlflow.db").exists()  # no parent run was started


def test_a_resume_with_other_constants_is_refused_before_it_changes_the_sweep(tmp_path):
    """sweep.resume with trainer.max_epochs changed ran every job again as a new one (run
    dirs 0-1, 1-1, ...), listed each job number twice in the summary, and overwrote the
    parent run's overrides tag, without a word."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "manifest.json").write_text(json.dumps({"jobs": {}}))
    ran_with = [o.replace("max_epochs=1", "max_epochs=3") for o in TINY]
    record = json.dumps({"parent_run_id": "abc", "arguments": [*ran_with, "seed=0,1"]})
    (sweep / "sweep.json").write_text(record)
    (sweep / "STOP").write_text("job 3 failed")
    command = resume_command(tmp_path, sweep, "seed=0,1,2")  # another seed: the sweep grown
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "the sweep's jobs ran with other constant overrides (trainer.max_epochs: 3 -> 1)" in (
        output
    )
    assert (sweep / "sweep.json").read_text() == record
    assert (sweep / "STOP").exists() and not (sweep / "0").exists()
    assert not (tmp_path / "mlflow.db").exists()  # no parent run was started


def test_collect_looking_at_a_lock_never_refuses_a_launch(tmp_path):
    """is_locked takes the lock for an instant: 2,405 of 38,914 launches were refused."""
    lock = tmp_path / SWEEP_LOCK_FILE
    lock.touch()
    poll = (
        "import sys, time\nfrom pathlib import Path\nfrom runner.tracking.store import is_locked\n"
        "print('polling', flush=True)\nend = time.time() + 2\n"
        "while time.time() < end:\n    is_locked(Path(sys.argv[1]))\n"
    )
    poller = subprocess.Popen(
        [sys.executable, "-c", poll, str(lock)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert poller.stdout.readline().strip() == "polling"
    refused, deadline = 0, time.monotonic() + 1
    while time.monotonic() < deadline:
        handle = hold_lock(lock)
        refused += handle is None
        if handle is not None:
            handle.close()
    poller.wait(timeout=30)
    assert refused == 0


def test_the_sweeps_record_keeps_the_command_line_as_typed(monkeypatch):
    """sweep.json and the parent run's overrides tag held ${oc.env:...}'s value (reading
    hydra.overrides.task item by item resolved it); README promises the typed text."""
    from hydra import compose, initialize_config_dir

    from runner.sweeps.callback import sweep_arguments
    from tests.conftest import CONF

    monkeypatch.setenv("RUN_NAME_FOR_TEST", "resolved-value")
    typed = ["logger.run_name=${oc.env:RUN_NAME_FOR_TEST}", "seed=3"]
    secret = "logger.tracking_uri=http://ann:s3cret@127.0.0.1:5000"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*typed, secret], return_hydra_config=True)
    recorded = sweep_arguments(cfg)
    assert recorded[:2] == typed
    assert "s3cret" not in recorded[2] and "ann:***@127.0.0.1" in recorded[2]
