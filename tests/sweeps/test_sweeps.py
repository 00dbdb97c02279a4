"""Sweeps as real multirun subprocesses: parent/child MLflow runs, summary, failure,
resume, fail-fast, and the project's Optuna sweeper with pruning (in-process and with
submitit's local launcher)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, query, seed_store
from tests.faults import FAULTY_LOSS

pytestmark = pytest.mark.slow
# 16 batches per epoch: long enough to be interrupted in the middle of one.
STEADY = ["data.num_samples=640", "trainer.max_epochs=3", "trainer.log_every_n_steps=4"]


def multirun_command(out: Path, sweep_dir: Path, *overrides: str) -> list[str]:
    """`python run.py -m ...` on TINY, with outputs under `out` and the sweep in `sweep_dir`."""
    return [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        f"paths.output_dir={out}",
        f"hydra.sweep.dir={sweep_dir}",
        *TINY,
        *overrides,
    ]


def multirun(out: Path, sweep_dir: Path, *overrides: str, timeout: float = 600):
    """Runs `multirun_command`; returns its exit code and output."""
    seed_store(out)
    command = multirun_command(out, sweep_dir, *overrides)
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def runs(db: Path) -> dict[str, dict]:
    """Every MLflow run in the store: status, name and tags, by run id."""
    found = {}
    for run_id, name, status in query(db, "SELECT run_uuid, name, status FROM runs"):
        tags = dict(query(db, "SELECT key, value FROM tags WHERE run_uuid = ?", run_id))
        found[run_id] = {"name": name, "status": status, "tags": tags}
    return found


def manifest(sweep_dir: Path) -> dict[str, dict]:
    """The sweep's manifest entries by the swept part of their overrides."""
    jobs = json.loads((sweep_dir / "manifest.json").read_text())["jobs"]
    # Hydra's sweeper writes booleans back capitalised (analysis.enabled=False).
    fixed = {o.lower() for o in TINY + STEADY}
    swept = lambda o: o.lower() not in fixed and not o.startswith(("paths.", "sweep."))  # noqa: E731
    return {" ".join(filter(swept, e["overrides"])): e for e in jobs.values()}


def artifacts_of(db: Path, run_id: str) -> Path:
    ((uri,),) = query(db, "SELECT artifact_uri FROM runs WHERE run_uuid = ?", run_id)
    return Path(uri.removeprefix("file://"))


def test_grid_sweep_nests_children_under_a_parent_and_aggregates_seeds(tmp_path):
    sweep_dir = tmp_path / "sweep"
    db = tmp_path / "mlflow.db"
    # A constant with a ':' that Hydra escapes in each job's overrides (sqlite\:///...).
    store = f"logger.tracking_uri=sqlite:///{db}"
    code, output = multirun(tmp_path, sweep_dir, "optim.lr=1e-3,3e-3", "seed=0,1", store)
    assert code == 0, output[-3000:]
    assert output.count("\nconfig\n") == 1, "the config tree is shown once, not per job"
    found = runs(db)
    parents = [i for i, r in found.items() if r["tags"].get("sweep.role") == "parent"]
    assert len(parents) == 1
    parent = found[parents[0]]
    assert parent["status"] == "FINISHED"
    assert parent["name"] == sweep_dir.name
    assert "optim.lr=1e-3,3e-3" in parent["tags"]["overrides"]
    children = {i: r for i, r in found.items() if i not in parents}
    assert len(children) == 4
    for child in children.values():
        assert child["status"] == "FINISHED"
        assert child["tags"]["mlflow.parentRunId"] == parents[0]
        assert child["tags"]["override.optim.lr"] in ("0.001", "0.003")
        assert child["name"].startswith("job") and "tracking_uri" not in child["name"]
        assert child["tags"]["override.logger.tracking_uri"] == f"sqlite:///{db}"
    jobs = manifest(sweep_dir)
    assert len(jobs) == 4
    assert all(e["status"] == "FINISHED" and e["mlflow_run_id"] in children for e in jobs.values())

    summary = (sweep_dir / "summary.md").read_text()
    assert "## Mean +- std over seeds" in summary
    aggregate = summary.split("## Mean +- std over seeds")[1]
    assert aggregate.count("| 2 |") == 2  # one row per lr, two seeds each
    assert "Best: jobs" in summary and "2 runs)" in summary and summary in output
    best = parent["tags"]["best.run_id"]
    assert best in children and parent["tags"]["best.optim.lr"] in ("0.001", "0.003")
    # The best is a configuration's mean over its seeds, and the parent gets mean and std.
    best_lr = parent["tags"]["best.optim.lr"]
    values = [e["value"] for e in jobs.values() if f"optim.lr={best_lr}" in e["overrides"]]
    metrics = dict(query(db, "SELECT key, value FROM metrics WHERE run_uuid = ?", parents[0]))
    assert metrics["best/val/acc"] == pytest.approx(sum(values) / 2)
    assert metrics["best/val/acc_std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert len(parent["tags"]["best.run_ids"].split(",")) == 2
    for name in ("summary.md", "summary.csv", "sweep_plot.png"):
        assert (artifacts_of(db, parents[0]) / "summary" / name).is_file(), name
    assert len((sweep_dir / "summary.csv").read_text().splitlines()) == 5


def by_fail(jobs: dict) -> dict:
    """The manifest's entries by the job's `loss.fail` value."""
    return {key.split("+loss.fail=")[1].split()[0]: entry for key, entry in jobs.items()}


def test_a_job_resumed_in_a_copied_sweep_dir_trains_in_the_copy(tmp_path):
    """sweep.resume=<a copy> trained its unfinished job in the original's job dir (the
    manifest's absolute run dir), over the original's checkpoints."""
    import shutil

    from omegaconf import OmegaConf

    from runner.sweeps.job import SweepJob
    from runner.sweeps.manifest import job_key, read_manifest

    original, copy = tmp_path / "original", tmp_path / "copy"
    overrides = ["seed=1"]
    job = SweepJob(original.resolve(), 0, overrides, job_key(overrides))

    def fails(cfg, job):
        raise RuntimeError("preempted")

    cfg = OmegaConf.create({"paths": {"run_dir": str(original / "0")}})
    job.run(cfg, fails)
    shutil.copytree(original, copy)
    trained_in = []

    def trains(cfg, job):
        trained_in.append(cfg.paths.run_dir)
        return 0.5

    resumed = SweepJob(copy.resolve(), 0, overrides, job_key(overrides))
    resumed.run(OmegaConf.create({"paths": {"run_dir": str(copy / "0")}}), trains)
    assert trained_in == [str(copy.resolve() / "0")]
    (entry,) = read_manifest(copy).values()
    assert entry["status"] == "FINISHED" and entry["run_dir"] == str(copy.resolve() / "0")


def test_a_jobs_log_lines_show_no_password(tmp_path, caplog):
    """The job's key went into run.log, which is uploaded, with the URL's password."""
    from omegaconf import OmegaConf

    from runner.sweeps.job import SweepJob
    from runner.sweeps.manifest import job_key

    overrides = ["optim.lr=0.1", "logger.tracking_uri=http://bob:s3cret@127.0.0.1:5000"]
    job = SweepJob(tmp_path, 0, overrides, job_key(overrides), fail_fast=True)

    def fails(cfg, job):
        raise RuntimeError("diverged")

    cfg = OmegaConf.create({"paths": {"run_dir": str(tmp_path / "0")}})
    with caplog.at_level("INFO"):
        job.run(cfg, fails)
        job.run(cfg, fails)  # not started: the STOP file
    assert "sweep job" in caplog.text and "bob:***@" in caplog.text
    assert "s3cret" not in caplog.text + (tmp_path / "STOP").read_text()
    # It said "(the sweep goes on)", and the next line that the other jobs will not start.
    assert "(sweep.fail_fast: the jobs not started yet will not start)" in caplog.text
    assert "the sweep goes on" not in caplog.text


def test_fail_fast_stops_the_jobs_not_started(tmp_path):
    sweep_dir = tmp_path / "sweep"
    failing = (*FAULTY_LOSS, "+loss.fail=raise,none", "sweep.fail_fast=true")
    code, output = multirun(tmp_path, sweep_dir, *failing)
    assert code == 1, output[-3000:]
    jobs = by_fail(manifest(sweep_dir))
    assert jobs["raise"]["status"] == "FAILED"
    assert jobs["none"]["status"] == "SKIPPED"
    assert not (sweep_dir / "1" / "checkpoints").exists()


def test_a_failing_job_does_not_stop_the_others_and_a_resume_runs_only_it(tmp_path):
    sweep_dir = tmp_path / "sweep"
    code, output = multirun(tmp_path, sweep_dir, *FAULTY_LOSS, "+loss.fail=none,raise")
    assert code == 1, output[-3000:]
    assert "1 of 2 sweep job(s) did not finish" in output
    assert "job 1 FAILED: loss.fail=raise" in output  # what tells the failed job apart
    assert "RuntimeError: loss.fail=raise: the test hook failed" in output  # and why
    assert f"sweep.resume={sweep_dir}" in output
    first = by_fail(manifest(sweep_dir))
    assert {k: e["status"] for k, e in first.items()} == {"raise": "FAILED", "none": "FINISHED"}
    assert "the test hook failed" in first["raise"]["error"]  # the failure names its cause
    db = tmp_path / "mlflow.db"
    found = runs(db)
    assert found[first["none"]["mlflow_run_id"]]["status"] == "FINISHED"
    failed_run = first["raise"]["mlflow_run_id"]
    assert found[failed_run]["status"] == "FAILED"
    assert (artifacts_of(db, failed_run) / "traceback.txt").is_file()
    parent = next(r for r in found.values() if r["tags"].get("sweep.role") == "parent")
    assert parent["status"] == "FAILED"  # the sweep as a whole did not succeed
    kept = first["none"]
    parent_before = json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"]
    # As a first launch with hydra/launcher=slurm_submit leaves it: this launch waits for
    # its jobs, so it still summarises them and fails for the failed one (it exited 0).
    (sweep_dir / "slurm_jobs.json").write_text("[]")

    code, output = multirun(
        tmp_path,
        sweep_dir,
        *FAULTY_LOSS,
        "+loss.fail=none,raise,nan@999",
        f"sweep.resume={sweep_dir}",
    )
    assert code == 1, output[-3000:]  # loss.fail=raise fails again
    assert "sweep job(s) did not finish" in output and (sweep_dir / "summary.md").is_file()
    second = by_fail(manifest(sweep_dir))
    assert second["none"]["attempts"] == 1  # not run again
    assert second["none"]["mlflow_run_id"] == kept["mlflow_run_id"]
    assert second["raise"]["attempts"] == 2
    assert second["nan@999"]["status"] == "FINISHED"
    assert json.loads((sweep_dir / "sweep.json").read_text())["parent_run_id"] == parent_before
    found = runs(tmp_path / "mlflow.db")
    children = [r for r in found.values() if r["tags"].get("mlflow.parentRunId") == parent_before]
    assert len(children) == 4  # none once, raise twice (no checkpoint to continue), nan@999 once
    # Resumed against another store: the advice was the run dir's (trainer.resume=never,
    # which changes nothing here), and the store the parent run is in was not named.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    code, output = multirun(
        tmp_path,
        sweep_dir,
        *FAULTY_LOSS,
        "+loss.fail=none",
        f"sweep.resume={sweep_dir}",
        f"logger.tracking_uri={other}",
    )
    assert code == 1
    assert f"its parent MLflow run {parent_before} is in sqlite:///{tmp_path}" in output
    assert "trainer.resume=never" not in output


def test_resume_of_a_dir_that_is_not_a_sweep_fails_clearly(tmp_path):
    code, output = multirun(
        tmp_path, tmp_path / "x", "optim.lr=1e-3", f"sweep.resume={tmp_path / 'nowhere'}"
    )
    assert code == 1
    assert "sweep.resume=" in output and "manifest.json does not exist" in output


# A case built to be prunable: lr 1e-9 cannot learn, so its validation loss stays above
# the median of the trials that can, from the first epoch on.
# The Optuna preset with its search space left to the command line's.
OWN_SPACE = ("hparams_search=optuna", "hydra.sweeper.params=null")

PRUNABLE = [
    "hparams_search=optuna",
    "trainer.max_epochs=2",
    "trainer.monitor=val/loss",
    "trainer.monitor_mode=min",
    "hydra/sweeper/sampler=grid",
    "hydra.sweeper.params=null",
    "optim.lr=3e-3,1e-9",
    "seed=0,1,2",  # a sweep on the command line joins the space
    "hydra.sweeper.pruner.n_startup_trials=2",
    "hydra.sweeper.pruner.n_warmup_steps=0",
]


def test_an_optuna_grid_with_a_failed_trial_ends_when_its_points_are_tried(tmp_path):
    """Optuna's GridSampler stops the study after the last point of the grid (which
    raised from the sweeper's tell); a failed point leaves the grid done with fewer
    finished trials than n_trials, and the sweep ends there instead of repeating points.
    The swept key is new to the config, so each job's override keeps the command
    line's `+`."""
    sweep_dir = tmp_path / "sweep"
    code, output = multirun(
        tmp_path,
        sweep_dir,
        *FAULTY_LOSS,
        "hparams_search=optuna",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.params=null",
        "hydra.sweeper.storage=null",
        "hydra.sweeper.n_trials=2",
        "+loss.fail=raise,none",
    )
    assert code == 1, output[-3000:]
    assert "Study.stop" not in output
    assert "every point of the grid has a finished trial; 1 of hydra.sweeper.n_trials=2" in output
    assert "1 of 2 sweep job(s) did not finish" in output
    assert "sweep.resume" not in output.split("did not finish")[1], "it repeats no trial"
    assert "hydra.sweeper.storage=null) ends with its sweep" in output
    report = json.loads((sweep_dir / "optuna" / "best_params.json").read_text())
    assert report["trials"] == {"complete": 1, "pruned": 0, "fail": 1}
    assert report["best_params"] == {"loss.fail": "none"}


def test_a_resumed_optuna_sweep_replaces_the_earlier_launchs_failed_and_killed_trials(
    tmp_path,
):
    """The earlier launch's failed jobs counted as failures at every resume, whose advice
    (resume again) then looped for ever; a trial a killed launcher left RUNNING stayed
    RUNNING in the study."""
    import optuna

    sweep_dir = tmp_path / "sweep"
    search = [
        *FAULTY_LOSS,
        *OWN_SPACE,
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.n_trials=1",
        "+loss.fail=choice(raise)",
    ]
    code, output = multirun(tmp_path, sweep_dir, *search)
    assert code == 1 and "Continue the study with sweep.resume" in output, output[-3000:]
    storage = f"sqlite:///{tmp_path}/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    # As a launcher killed while its trial's job ran leaves them (the job's lock is gone).
    from runner.sweeps.manifest import update_manifest

    stale = study.ask().number
    killed = ["+loss.fail=none", f"optuna.trial={stale}"]
    run_dir = str(sweep_dir / "9")
    update_manifest(sweep_dir, "killed", status="RUNNING", overrides=killed, num=9, run_dir=run_dir)
    code, output = multirun(tmp_path, sweep_dir, *search, f"sweep.resume={sweep_dir}")
    assert f"trial(s) [{stale}], left RUNNING by a killed launch, end FAIL" in output
    jobs = json.loads((sweep_dir / "manifest.json").read_text())["jobs"]
    assert jobs["killed"]["status"] == "REPLACED"
    # The earlier failed job was REPLACED too; this launch drew its point again (the same
    # job key), and this launch's own failure counts.
    assert sorted(j["status"] for j in jobs.values()) == ["FAILED", "REPLACED"]
    assert optuna.load_study(study_name=name, storage=storage).trials[stale].state.name == "FAIL"
    assert "the continued Optuna study drew new trials" in (sweep_dir / "summary.md").read_text()


def test_an_optuna_job_that_fails_before_it_records_itself_fails_the_sweep(tmp_path):
    """A job that crashed before it wrote its manifest entry (an import error in a recipe)
    was swallowed: the sweep exited 0, its summary said "0 job(s)"."""
    # The crash is injected where the job starts, as a broken import would (a test hook).
    script = tmp_path / "broken_run.py"
    script.write_text(
        "import runpy, sys\n"
        "import runner.cli\n"
        "def broken(cfg):\n"
        "    raise ImportError('cannot import name x from runner.train')\n"
        "runner.cli.run = broken\n"
        f"sys.argv[0] = {str(REPO / 'run.py')!r}\n"
        f"runpy.run_path({str(REPO / 'run.py')!r}, run_name='__main__')\n"
    )
    sweep_dir = tmp_path / "sweep"
    seed_store(tmp_path)
    command = multirun_command(tmp_path, sweep_dir, *OWN_SPACE, "optim.lr=choice(0.001)")
    command[1] = str(script)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    assert "optuna: job 0 failed as it started" in output
    (entry,) = json.loads((sweep_dir / "manifest.json").read_text())["jobs"].values()
    assert entry["status"] == "FAILED" and "cannot import name x" in entry["error"]
    assert "1 job(s), 0 finished" in (sweep_dir / "summary.md").read_text()


def test_sigterm_between_optuna_jobs_ends_the_sweep_as_stopped(tmp_path):
    """Between jobs (a job's training has its own handler) SIGTERM killed the launcher at
    once: its trial and its parent MLflow run stayed RUNNING."""
    import signal

    import optuna

    sweep_dir = tmp_path / "sweep"
    search = [*OWN_SPACE, "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=3"]
    # The second job signals itself as it builds, before its training's handler is set: a
    # signal sent from here when the job was announced came after that under load.
    fault = [*FAULTY_LOSS, "+loss.fail=sigterm_at_build@2"]
    code, output = multirun(tmp_path, sweep_dir, *search, *fault, "optim.lr=interval(1e-3, 1e-2)")
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert "SIGTERM: the sweep stops; continue it with sweep.resume=" in output
    storage = f"sqlite:///{tmp_path}/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    states = [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]
    assert states == ["COMPLETE", "FAIL"], output[-3000:]
    statuses = {r["name"]: r["status"] for r in runs(tmp_path / "mlflow.db").values()}
    assert statuses[sweep_dir.name] == "KILLED"


def test_a_resumed_optuna_sweep_tells_what_its_killed_launcher_left_untold(tmp_path):
    """kill -9 of a launcher: a trial whose job had FINISHED stayed RUNNING and its value
    was lost (best_params.json named another trial than the summary), and a trial drawn
    for a job that never started stayed RUNNING for ever."""
    import optuna

    from runner.sweeps.manifest import update_manifest

    sweep_dir = tmp_path / "sweep"
    search = [*OWN_SPACE, "hydra/sweeper/pruner=none", "optim.lr=choice(0.001,0.003)"]
    code, output = multirun(tmp_path, sweep_dir, *search, "hydra.sweeper.n_trials=1")
    assert code == 0, output[-3000:]
    storage = f"sqlite:///{tmp_path}/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    finished = study.ask()  # its job finished, then the launcher was killed
    overrides = ["optim.lr=0.003", f"optuna.trial={finished.number}"]
    update_manifest(sweep_dir, "done", status="FINISHED", overrides=overrides, num=5, value=0.125)
    unstarted = study.ask()  # drawn by this sweep's killed launch; its job never started
    unstarted.set_user_attr("runner.sweep_dir", str(sweep_dir.resolve()))
    more = [*search, "hydra.sweeper.n_trials=3", f"sweep.resume={sweep_dir}"]
    code, output = multirun(tmp_path, sweep_dir, *more)
    assert code == 0, output[-3000:]
    assert f"trial(s) [{unstarted.number}], left RUNNING by a killed launch, end FAIL" in output
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert trials[finished.number].state.name == "COMPLETE"
    assert trials[finished.number].value == 0.125
    assert trials[unstarted.number].state.name == "FAIL"
    assert not [t for t in trials if t.state.name == "RUNNING"]


def test_a_stored_study_continued_in_a_new_sweep_dir_fails_a_killed_launchs_trial(tmp_path):
    """Running the same command again continues a stored study, but only the resumed
    sweep dir's manifest was read: a trial a killed launch elsewhere left RUNNING stayed
    RUNNING (a pending point for the sampler) for ever."""
    import optuna

    search = [*OWN_SPACE, "hydra/sweeper/pruner=none", "optim.lr=choice(0.001,0.003)"]
    code, output = multirun(tmp_path, tmp_path / "first", *search, "hydra.sweeper.n_trials=1")
    assert code == 0, output[-3000:]
    storage = f"sqlite:///{tmp_path}/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    # As a launcher killed while its trial's job ran leaves it: its sweep dir's lock is gone.
    killed = study.ask()
    killed.set_user_attr("runner.sweep_dir", str(tmp_path / "killed"))  # as asked there
    (tmp_path / "killed").mkdir()
    # A launch on another host (a shared database, a sweep dir not here) may be alive.
    elsewhere = study.ask()
    elsewhere.set_user_attr("runner.sweep_dir", str(tmp_path / "on-another-host"))
    code, output = multirun(tmp_path, tmp_path / "again", *search, "hydra.sweeper.n_trials=2")
    assert code == 0, output[-3000:]
    assert f"trial(s) [{killed.number}], left RUNNING by a killed launch, end FAIL" in output
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "RUNNING", "COMPLETE"]


def test_a_resumed_sweep_of_an_unnamed_stored_study_continues_that_study(tmp_path):
    """With hydra.sweeper.study_name=null each launch, the advised resume included, made a
    new study: it redrew the same failing point, and gave the same advice again."""
    import optuna

    sweep_dir = tmp_path / "sweep"
    search = [
        *FAULTY_LOSS,
        *OWN_SPACE,
        "hydra.sweeper.study_name=null",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.n_trials=1",
        "+loss.fail=choice(raise)",
    ]
    code, output = multirun(tmp_path, sweep_dir, *search)
    assert code == 1 and "Continue the study with sweep.resume" in output, output[-3000:]
    multirun(tmp_path, sweep_dir, *search, f"sweep.resume={sweep_dir}")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 2


def test_an_optuna_trial_whose_point_composes_no_config_fails_alone(tmp_path):
    """A drawn model without a searched key (resnet32 has no drop_rate) raised Hydra's
    composition error out of the sweeper: the sweep stopped with no summary."""
    sweep_dir = tmp_path / "sweep"
    code, output = multirun(
        tmp_path,
        sweep_dir,
        *OWN_SPACE,
        "hydra.sweeper.storage=null",
        "hydra.sweeper.n_trials=1",
        "model=choice(resnet32)",
        "model.drop_rate=interval(0, 0.3)",
    )
    assert code == 1, output[-3000:]
    assert "1 trials of this sweep failed, as many as hydra.sweeper.n_trials" in output
    # TINY's model.name has no place in resnet32's config either.
    (job,) = manifest(sweep_dir).values()
    assert job["status"] == "FAILED" and "Could not override 'model." in job["error"]
    assert (sweep_dir / "summary.md").is_file()


def test_a_batch_whose_later_trial_composes_no_config_keeps_the_earlier_trials_result(
    tmp_path,
):
    """The trial whose job had finished was failed with its batch, and its manifest entry
    rewritten FAILED with the other's composition error."""
    sweep_dir = tmp_path / "sweep"
    code, output = multirun(
        tmp_path,
        sweep_dir,
        *OWN_SPACE,
        "hydra.sweeper.storage=null",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.sampler.seed=1",  # timm's trial is asked first, so its job runs first
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "model=choice(timm,resnet32)",  # TINY's model.name has no place in resnet32's
    )
    assert code == 1, output[-3000:]
    jobs = manifest(sweep_dir).values()
    by_model = {[o for o in j["overrides"] if o.startswith("model=")][-1]: j for j in jobs}
    assert sorted(by_model) == ["model=resnet32", "model=timm"], by_model
    assert "Could not override 'model." in by_model["model=resnet32"]["error"]
    assert by_model["model=timm"]["status"] == "FINISHED", by_model
    report = json.loads((sweep_dir / "optuna" / "best_params.json").read_text())
    assert report["trials"] == {"complete": 1, "pruned": 0, "fail": 1}
    assert report["best_params"] == {"model": "timm"}
    # The launcher summarised the sweep at its end, as `collect` reads it.
    assert json.loads((sweep_dir / "sweep.json").read_text())["summarised_by_launcher"]


def test_optuna_trials_drawn_twice_share_a_job_and_failing_trials_end_a_stored_study(tmp_path):
    """A grid of 2 points asked for 3 trials at once draws one point twice: that trial
    shares the job of its point instead of a second job in the same run dir. Then the
    stored study (3 finished trials) is continued to 5 with a fault that fails every
    job: failed trials do not count towards n_trials, and the sweep still ends."""
    first_dir = tmp_path / "first"
    study = [*OWN_SPACE, "hydra.sweeper.study_name=s"]
    code, output = multirun(
        tmp_path,
        first_dir,
        *study,
        "hydra/sweeper/sampler=grid",
        "trainer.batch_size=32,64",
        "hydra.sweeper.n_jobs=3",
        "hydra.sweeper.n_trials=3",
    )
    assert code == 0, output[-3000:]
    assert "#1 : " in output and "#2 : " not in output, "2 jobs for 3 trials"
    assert len(manifest(first_dir)) == 2
    assert _trial_states(tmp_path / "optuna.db") == ["COMPLETE"] * 3

    code, output = multirun(
        tmp_path,
        tmp_path / "second",
        *study,
        *FAULTY_LOSS,
        "+loss.fail=raise",
        "hydra/sweeper/sampler=random",
        "trainer.batch_size=32,64",
        "hydra.sweeper.n_trials=5",
        timeout=300,  # the sweeper before this fix asked for trials forever
    )
    assert code == 1, output[-3000:]
    assert "optuna: all 3 trials of this sweep failed; stopping the study" in output
    # Its trials fail by a fault the first sweep's did not have: the study says so.
    assert "its earlier trials ran with other fixed overrides" in output
    assert "loss.fail: (not set) -> raise" in output
    assert "loss._target_: (not set) -> tests.faults.FaultyLoss" in output
    assert _trial_states(tmp_path / "optuna.db") == ["COMPLETE"] * 3 + ["FAIL"] * 3
    # The study has its 3 finished trials: the same command again would run none. It made
    # an empty sweep dir and parent run, and said nothing.
    again = [*study, "trainer.batch_size=32,64", "hydra.sweeper.n_trials=3"]
    code, output = multirun(tmp_path, tmp_path / "third", *again)
    assert code == 1 and "already has 3 finished trial(s)" in output, output[-3000:]
    assert "Raise hydra.sweeper.n_trials (e.g. 6)" in output
    assert not (tmp_path / "third").exists()


def _trial_states(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [s for (s,) in conn.execute("SELECT state FROM trials ORDER BY number")]


def test_optuna_prunes_hopeless_trials_and_reports_to_the_parent(tmp_path):
    sweep_dir = tmp_path / "sweep"
    code, output = multirun(tmp_path, sweep_dir, *PRUNABLE, "hydra.sweeper.n_trials=6")
    assert code == 0, output[-3000:]
    states = _trial_states(tmp_path / "optuna.db")
    assert len(states) == 6 and "PRUNED" in states and "COMPLETE" in states, states
    jobs = json.loads((sweep_dir / "manifest.json").read_text())["jobs"].values()
    pruned = [e for e in jobs if e.get("pruned")]
    assert len(pruned) == states.count("PRUNED")
    assert all(e["status"] == "FINISHED" for e in jobs)
    found = runs(tmp_path / "mlflow.db")
    for entry in pruned:
        run = found[entry["mlflow_run_id"]]
        assert run["status"] == "FINISHED" and run["tags"]["pruned"] == "true"
    parent_id = next(i for i, r in found.items() if r["tags"].get("sweep.role") == "parent")
    parent_files = artifacts_of(tmp_path / "mlflow.db", parent_id) / "summary"
    assert (parent_files / "optimization_history.png").is_file()
    best = json.loads((parent_files / "best_params.json").read_text())
    assert best["best_params"]["optim.lr"] == 3e-3
    assert found[parent_id]["tags"]["best.optim.lr"] == "0.003"

    # The same command continues the study: one more trial, not seven.
    code, output = multirun(tmp_path, tmp_path / "sweep2", *PRUNABLE, "hydra.sweeper.n_trials=7")
    assert code == 0, output[-3000:]
    assert "6 finished trial(s), target 7" in output
    assert "other fixed overrides" not in output  # the same settings
    assert len(_trial_states(tmp_path / "optuna.db")) == 7


def test_optuna_with_submitit_local_runs_its_trials_in_processes_of_their_own(tmp_path):
    """Pruning through the storage across processes is tests/slurm/'s (submitit's SLURM
    jobs, the same job code): here, two trials as submitit's local processes."""
    sweep_dir = tmp_path / "sweep"
    code, output = multirun(
        tmp_path,
        sweep_dir,
        *PRUNABLE,
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
    )
    assert code == 0, output[-3000:]
    assert _trial_states(tmp_path / "optuna.db") == ["COMPLETE", "COMPLETE"]
    found = runs(tmp_path / "mlflow.db")
    parent_id = next(i for i, r in found.items() if r["tags"].get("sweep.role") == "parent")
    children = [r for r in found.values() if r["tags"].get("mlflow.parentRunId") == parent_id]
    assert len(children) == 2
    pids = {r["tags"]["runner.pid"] for r in children}
    assert found[parent_id]["tags"]["runner.pid"] not in pids  # jobs ran in other processes


def test_an_interrupted_sweep_resumes_its_job_from_the_checkpoint(tmp_path):
    from tests.reliability.conftest import run_until

    sweep_dir = tmp_path / "sweep"
    command = multirun_command(tmp_path, sweep_dir, *STEADY, "seed=0,1")
    code, output = run_until(command, "epoch 2 step 8/", signal.SIGTERM)
    assert code == 143, output[-3000:]
    jobs = manifest(sweep_dir)
    assert jobs["seed=0"]["status"] == "INTERRUPTED" and "seed=1" not in jobs
    first_run = jobs["seed=0"]["mlflow_run_id"]
    found = runs(tmp_path / "mlflow.db")
    parent = next(r for r in found.values() if r["tags"].get("sweep.role") == "parent")
    assert parent["status"] == "KILLED" and found[first_run]["status"] == "KILLED"

    code, output = multirun(tmp_path, sweep_dir, *STEADY, "seed=0,1", f"sweep.resume={sweep_dir}")
    assert code == 0, output[-3000:]
    assert "resumed from" in output and "epoch 1 done" in output
    jobs = manifest(sweep_dir)
    assert jobs["seed=0"]["mlflow_run_id"] == first_run
    assert {e["status"] for e in jobs.values()} == {"FINISHED"}
    epochs = query(
        tmp_path / "mlflow.db",
        "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'val/acc'",
        first_run,
    )
    assert sorted(s for (s,) in epochs) == [1, 2, 3]  # each epoch logged once


def test_an_interrupted_optuna_sweep_fails_its_trial_and_a_resumed_one_goes_on_without_it(
    tmp_path,
):
    """The trial of a sweep stopped by a signal stayed RUNNING in optuna.db for good, and
    every later launch exited 1 for its job, advising a sweep.resume that never ran it."""
    from tests.reliability.conftest import run_until

    seed_store(tmp_path)
    sweep_dir = tmp_path / "sweep"
    command = multirun_command(
        tmp_path, sweep_dir, *STEADY, "hparams_search=optuna", "hydra.sweeper.n_trials=1"
    )
    code, output = run_until(command, "epoch 1 step 4/", signal.SIGTERM)
    assert code == 143, output[-3000:]
    assert _trial_states(tmp_path / "optuna.db") == ["FAIL"]
    assert "continues the Optuna study with new trials (this trial ends FAIL" in output
    assert [e["status"] for e in manifest(sweep_dir).values()] == ["ABANDONED"]

    resumed = [*command, f"sweep.resume={sweep_dir}", "trainer.max_epochs=1"]  # the new trial
    done = subprocess.run(resumed, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert _trial_states(tmp_path / "optuna.db") == ["FAIL", "COMPLETE"]
    assert "went on with new trials" in (sweep_dir / "summary.md").read_text()
    # The new trial's job is numbered after the abandoned one: both were job 0, in run
    # dirs 0 and 0-1.
    jobs = sorted((e["num"], Path(e["run_dir"]).name) for e in manifest(sweep_dir).values())
    assert jobs == [(0, "0"), (1, "1")]


def test_a_bad_optuna_setting_stops_the_sweep_before_anything_starts(tmp_path):
    """n_trials=0: one message, no traceback, no sweep dir, no (KILLED) parent run."""
    sweep_dir = tmp_path / "sweep"
    code, output = multirun(
        tmp_path, sweep_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=0"
    )
    assert code == 1, output[-3000:]
    assert output.strip() == (
        "Error: Invalid Optuna sweep (1 problem):\n"
        "  - hydra.sweeper.n_trials=0 is invalid: expected an integer >= 1"
    )
    assert not sweep_dir.exists()
    assert query(tmp_path / "mlflow.db", "SELECT COUNT(*) FROM runs") == [(0,)]


def test_an_optuna_choice_of_an_option_the_group_lacks_stops_the_sweep_before_any_trial(
    tmp_path,
):
    """The trial that drew it failed to compose and took the whole sweep down with it,
    after the trials before it had trained."""
    sweep_dir = tmp_path / "sweep"
    code, output = multirun(
        tmp_path,
        sweep_dir,
        *OWN_SPACE,
        "model=choice(resnet10t, nosuchmodel)",
    )
    assert code == 1, output[-3000:]
    assert "Error: Invalid Optuna sweep (1 problem):\n  - model: the search space " in output
    assert "choice(resnet10t, nosuchmodel) reaches nosuchmodel, which the model group " in output
    assert "does not have (its options: airbench94, convnext_tiny," in output
    assert "Traceback" not in output
    assert not sweep_dir.exists()
    assert query(tmp_path / "mlflow.db", "SELECT COUNT(*) FROM runs") == [(0,)]


# A hparams_search file written for Hydra's own Optuna sweeper, as lightning-hydra-template
# ships it (configs/hparams_search/mnist_optuna.yaml), with this project's keys in `params`.
HYDRA_OPTUNA_FILE = """\
# @package _global_
defaults:
  - override /hydra/sweeper: optuna

hydra:
  mode: "MULTIRUN"
  sweeper:
    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
    storage: null
    study_name: null
    n_jobs: 1
    direction: maximize
    n_trials: 3
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 1234
      n_startup_trials: 10
    params:
      optim.lr: interval(0.0001, 0.1)
      trainer.batch_size: choice(16, 32)
"""


def test_a_hydra_optuna_sweeper_file_ports_by_renaming_the_sweeper(tmp_path):
    ported = HYDRA_OPTUNA_FILE.replace("sweeper: optuna", "sweeper: runner_optuna").replace(
        "hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
        "runner_optuna_sweeper.runner_optuna_sweeper.RunnerOptunaSweeper",
    )
    changed = [
        (old, new)
        for old, new in zip(HYDRA_OPTUNA_FILE.splitlines(), ported.splitlines(), strict=True)
        if old != new
    ]
    assert len(changed) == 2  # the sweeper's name, where it is chosen and in its _target_
    extra = tmp_path / "conf" / "hparams_search"
    extra.mkdir(parents=True)
    (extra / "ported.yaml").write_text(ported)
    sweep_dir = tmp_path / "sweep"
    seed_store(tmp_path)
    command = [
        sys.executable,
        str(REPO / "run.py"),  # no -m: the file sets hydra.mode=MULTIRUN
        f"--config-dir={tmp_path / 'conf'}",
        "hparams_search=ported",
        f"paths.output_dir={tmp_path}",
        f"hydra.sweep.dir={sweep_dir}",
        *TINY,
        "hydra.sweeper.n_trials=2",  # the command line's count wins over the file's 3
        "hydra.sweeper.sampler.n_startup_trials=1",  # an option of the sampler's node
        "optim.lr=interval(0.5, 0.9)",  # the command line's range wins over the file's
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "memory (hydra.sweeper.storage=null)" in output
    assert not (tmp_path / "optuna.db").exists()  # storage: null is an in-memory study
    study = json.loads((sweep_dir / "optuna" / "study.json").read_text())
    assert study["storage"] is None and study["search_space"]["optim.lr"] == "interval(0.5, 0.9)"
    jobs = json.loads((sweep_dir / "manifest.json").read_text())["jobs"].values()
    assert len(jobs) == 2 and {e["status"] for e in jobs} == {"FINISHED"}
    lrs = [
        float(o.split("=")[1]) for e in jobs for o in e["overrides"] if o.startswith("optim.lr=")
    ]
    assert len(lrs) == 2 and all(0.5 <= lr <= 0.9 for lr in lrs), lrs
    assert all("+optuna.trial=" in " ".join(e["overrides"]) for e in jobs)
    best = json.loads((sweep_dir / "optuna" / "best_params.json").read_text())
    assert best["trials"]["complete"] == 2
    # No warning from Optuna (deprecations included) anywhere in the sweep's output.
    assert not [line for line in output.splitlines() if "Warning" in line and "optuna" in line]


def test_jobs_that_fail_alike_list_their_shared_error_once():
    """Thirteen fold jobs refused on the same data printed the same long error thirteen
    times; jobs with errors of their own keep each under its line."""
    from omegaconf import OmegaConf

    from runner.sweeps.advice import failed_listing, failed_sweep_advice

    error = "DataError: data.num_folds=13: every class needs at least 13 train samples"
    alike = [
        {"num": n, "status": "FAILED", "label": f"data.fold={n}", "error": error} for n in (0, 1, 2)
    ]
    listing = failed_listing(alike)
    assert listing.count(error) == 1 and listing.endswith(f"each of them: {error}")
    # A resume alone would fail alike: the advice says to mend the error first.
    grid = OmegaConf.create({"hydra": {"sweeper": {"_target_": "basic"}}})
    advice = failed_sweep_advice(grid, Path("/s"), alike)
    assert advice == "Mend the error they share first, then: run them again with sweep.resume=/s"
    assert failed_sweep_advice(grid, Path("/s"), alike[:1]).startswith("Run them again")
    assert all(f"job {n} FAILED: data.fold={n}" in listing for n in (0, 1, 2))
    apart = [{**alike[0], "error": "ValueError: a"}, {**alike[1], "error": "ValueError: b"}]
    assert failed_listing(apart).splitlines() == [
        "  job 0 FAILED: data.fold=0",
        "    ValueError: a",
        "  job 1 FAILED: data.fold=1",
        "    ValueError: b",
    ]
    one = [{"num": 4, "status": "INTERRUPTED", "label": "", "key": "seed=4"}]
    assert failed_listing(one) == "  job 4 INTERRUPTED: seed=4"
