"""Config validation, trusted targets, secrets, and tracking faults, with real stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from omegaconf import OmegaConf

from runner.config.redaction import redacted_container
from runner.config.targets import untrusted_targets
from runner.tracking.mlflow_tracker import MlflowTracker
from runner.tracking.opening import StoreOpener
from runner.tracking.store import TrackingUnavailableError, store_lock
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


OPEN_THROUGH_THE_HELPER = """
import json, sqlite3, sys, threading, time
from pathlib import Path
from runner.tracking.mlflow_tracker import MlflowTracker

importers = []  # the thread that imports mlflow into this process


class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "mlflow":
            importers.append(threading.current_thread().name)


sys.meta_path.insert(0, Spy())

db = Path(sys.argv[1])
tracker = MlflowTracker(f"sqlite:///{db}", artifact_location=sys.argv[2], system_metrics=False)
tracker.prepare("x")
if sys.argv[3] == "wait":  # this process does nothing: only the helper can make the store
    deadline, made = time.monotonic() + 120, []
    while not made and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                made = conn.execute("SELECT name FROM experiments WHERE name='x'").fetchall()
        except sqlite3.OperationalError:  # not there yet, or its tables are half made
            pass
tracker.connect("x")
tracker.start("r", tags={"k": "v"})
tracker.log_params({"a": 1})
tracker.log_metrics({"m": 0.5}, step=1)
tracker.flush()
tracker.finish("FINISHED")
print(json.dumps({"mlflow_imported_by": importers, "run_id": tracker.run_id}))
"""


def open_through_the_helper(db, tmp_path, mode: str) -> subprocess.CompletedProcess:
    """Runs OPEN_THROUGH_THE_HELPER in a fresh interpreter (mlflow not loaded)."""
    return subprocess.run(
        [sys.executable, "-c", OPEN_THROUGH_THE_HELPER, str(db), str(tmp_path / "art"), mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_helper_process_opens_the_store_experiment_and_run_while_the_run_builds(tmp_path):
    """prepare() starts the helper; this process loads mlflow on a thread, after start()."""
    db = tmp_path / "new" / "mlflow.db"
    done = open_through_the_helper(db, tmp_path, "wait")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mlflow_imported_by"] == ["mlflow-connect"], "never the main thread"
    run = result["run_id"]
    assert query(db, "SELECT status FROM runs WHERE run_uuid=?", run) == [("FINISHED",)]
    tags = dict(query(db, "SELECT key, value FROM tags WHERE run_uuid=?", run))
    assert tags["k"] == "v" and tags["mlflow.runName"] == "r"
    assert tags["runner.pid"].isdigit() and int(tags["runner.pid"]) != os.getpid()
    assert query(db, "SELECT key, value FROM params WHERE run_uuid=?", run) == [("a", "1")]
    assert query(db, "SELECT key, value, step FROM metrics WHERE run_uuid=?", run) == [
        ("m", 0.5, 1)
    ]

    again = open_through_the_helper(db, tmp_path, "now")  # the store is there: opened as is
    assert again.returncode == 0, again.stderr[-3000:]
    assert query(db, "SELECT COUNT(*) FROM experiments WHERE name='x'") == [(1,)]
    assert query(db, "SELECT status, COUNT(*) FROM runs GROUP BY status") == [("FINISHED", 2)]


def test_a_store_the_helper_cannot_open_fails_in_connect_with_the_store_error(tmp_path):
    """The helper's failure costs time only: the store's own error is raised by connect()."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    db = blocker / "mlflow.db"
    done = open_through_the_helper(db, tmp_path, "now")
    assert done.returncode != 0
    assert "opening it in this process" in done.stderr, done.stderr[-3000:]
    assert "FileExistsError" in done.stderr and str(blocker) in done.stderr
    frames = [line for line in done.stderr.splitlines() if "mlflow_tracker.py" in line]
    assert frames and frames[0].endswith("in connect"), "raised before the run, by connect()"


def test_a_helper_that_does_not_answer_is_stopped_and_the_store_opened_here(tmp_path, caplog):
    """A helper stuck on the store's lock (as on a hung network file system) is given up."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with store_lock(uri):  # held here: the helper cannot open the store
        opener = StoreOpener(uri, "x", None)
        started = time.monotonic()
        assert opener.experiment_id(timeout_s=3) is None
        assert time.monotonic() - started < 9, "stopped, not waited for (10 s)"
    assert "did not answer in 3 s; opening it in this process" in caplog.text
    assert opener.run_id("r", {}, None, timeout_s=3) is None  # it is gone: no second wait

    tracker = MlflowTracker(uri, artifact_location=str(tmp_path / "art"))
    tracker.connect("x")  # what the tracker does next: it opens the store itself
    assert query(tmp_path / "mlflow.db", "SELECT name FROM experiments WHERE name='x'") == [("x",)]


def test_unreachable_server_fails_fast_before_training(tmp_path):
    """Point 12a: the URI is named, within 10 s, before any data, model or training."""
    start = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=r"http://127\.0\.0\.1:1.*offline_fallback"):
        MlflowTracker("http://127.0.0.1:1").connect("x")
    assert time.monotonic() - start < 10
    # With the fallback on and no store to fall back to, it named the switch already set.
    with pytest.raises(TrackingUnavailableError, match=r"set logger\.fallback_uri \(it is null\)"):
        MlflowTracker("http://127.0.0.1:1", offline_fallback=True, fallback_uri=None).connect("x")

    result = run_cli(
        f"paths.output_dir={tmp_path}", *TINY, "logger.tracking_uri=http://127.0.0.1:1"
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "http://127.0.0.1:1" in output
    assert "epoch 1" not in output and "model test_resnet" not in output, "nothing built first"
    assert "Error: logger.tracking_uri='http://127.0.0.1:1'" in output
    assert not (tmp_path / "mlflow.db").exists()


def test_a_run_that_fell_back_logs_locally_and_continues_in_its_fallback_store(
    tmp_path, monkeypatch
):
    """Point 12b: logger.offline_fallback=true logs into the local store instead, and says
    so. The refusal of a resume on the server named logger.tracking_uri=<its fallback_uri>
    as the way on, and the resume check then refused that very change (also when that
    store's folder came from the environment, kept as typed)."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("RUNNER_TEST_OUT", str(tmp_path))  # run_cli's process inherits it
    common = ["paths.output_dir=${oc.env:RUNNER_TEST_OUT}", f"hydra.run.dir={run_dir}", *TINY]
    down = ["logger.tracking_uri=http://127.0.0.1:1", "logger.offline_fallback=true"]
    first = run_cli(*common, *down)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "does not answer: logging to sqlite:///" in first.stdout + first.stderr
    db = tmp_path / "mlflow.db"
    assert query(db, "SELECT status FROM runs") == [("FINISHED",)]
    assert query(db, "SELECT value FROM tags WHERE key='offline_fallback'") == [
        ("http://127.0.0.1:1",)
    ]
    # Back on the server, the run is not there; the command again, with the advised store:
    fallback = f"sqlite:///{tmp_path}/mlflow.db"
    again = [f"logger.tracking_uri={fallback}", *down[1:], "trainer.max_epochs=2"]
    resumed = run_cli(*common, *again)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert query(db, "SELECT status FROM runs") == [("FINISHED",)]  # the same run, continued
    assert query(db, "SELECT COUNT(*) FROM metrics WHERE key='val/acc'") == [(2,)]
    # Each start-up at the step it started from: the resume's was a second value at 0.
    steps = query(db, "SELECT step FROM metrics WHERE key='startup_s' ORDER BY step")
    assert len(steps) == 2 and steps[0] == (0,) and steps[1][0] > 0


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
    (problem,) = untrusted_targets(stored)
    assert problem.startswith("model._target_='subprocess.run' is not trusted: targets must")
    assert "runner, torch.nn, torch.optim, torchvision.models" in problem
    assert problem.endswith("; add its module to allowed_targets to allow it")
    # Parts of trusted libraries that load code or write files from a config are not
    # trusted: a checkpoint's config could otherwise run code in mode=eval.
    for target in (
        "torch.hub.load",
        "torch.utils.cpp_extension.load_inline",
        "torchvision.io.write_file",
        "kornia.io.write_image",
    ):
        assert untrusted_targets(OmegaConf.create({"m": {"_target_": target}})), target
    for target in (
        "torch.optim.AdamW",
        "torch.nn.CrossEntropyLoss",
        "timm.create_model",
        "kornia.augmentation.RandomAffine",
        "torchvision.models.resnet18",
        "runner.models.factories.create_timm_model",
        "torch.nn.functional.gelu",  # C builtins, whose __module__ is torch._C._nn
        "torch.nn.functional.conv2d",
    ):
        assert untrusted_targets(OmegaConf.create({"m": {"_target_": target}})) == [], target
    # Hydra follows attributes too: each reached code outside the trusted parts (a
    # crafted best.pt's model ran a hubconf.py through the first in mode=eval).
    for target, outside in (
        ("torch.nn.functional.torch.hub.load", "it reaches torch,"),
        ("runner.training.state.os.system", "it reaches os,"),
        ("torch.nn.modules.module.torch.load", "it reaches torch,"),
    ):
        (problem,) = untrusted_targets(OmegaConf.create({"m": {"_target_": target}}))
        assert f"m._target_={target!r} is not trusted: {outside}" in problem
    allowed = OmegaConf.create({"allowed_targets": ["mylab"], "m": {"_target_": "mylab.Net"}})
    assert untrusted_targets(allowed) == []


def test_targets_that_reach_code_the_check_cannot_see_are_refused(tmp_path):
    """Three ways a crafted best.pt (or command line) ran code the allowlist was meant to
    refuse: an unpickling loader of a trusted package, a target named by an interpolation
    (`runner.${x}`, resolved only when called), and a method of a module's object
    (`runner.config.catalog.CONF.rename` moved conf/)."""
    unpickles = {"_target_": "timm.models.load_state_dict", "checkpoint_path": "x.pkl"}
    for value in (False, "${no}"):
        cfg = OmegaConf.create({"model": {**unpickles, "weights_only": value}})
        (problem,) = untrusted_targets(cfg)
        assert problem.startswith(f"model.weights_only={value!r} is not trusted: it lets the")
    safe = {"model": {**unpickles, "weights_only": True}}
    assert untrusted_targets(OmegaConf.create(safe)) == []
    # By position, weights_only was not seen (load_state_dict's fourth argument).
    positional = {"_target_": unpickles["_target_"], "_args_": ["x.pkl", True, "cpu", False]}
    (problem,) = untrusted_targets(OmegaConf.create({"model": positional}))
    assert problem.startswith("model._args_ is not trusted: positional arguments")
    hidden = {"model": {"_target_": "runner.${evil}"}, "evil": "training.state.os.makedirs"}
    (problem,) = untrusted_targets(OmegaConf.create(hidden))
    assert "model._target_='runner.${evil}' is not trusted: a target is named as written" in problem
    for target in ("runner.config.catalog.CONF.rename", "runner.config.resolvers.REPO_ROOT.rmdir"):
        (problem,) = untrusted_targets(OmegaConf.create({"m": {"_target_": target}}))
        assert "it reaches an attribute of a PosixPath object" in problem, problem
    # Classes are passed through: a class's method is checked as its class's code.
    method = {"m": {"_target_": "runner.data.splits.DataSplits.ensure_ids"}}
    assert untrusted_targets(OmegaConf.create(method)) == []


def test_a_secret_typed_on_the_command_line_is_redacted_in_tags_and_files(
    make_cfg, tmp_path, monkeypatch
):
    """`+data.token=...` reached the overrides tag and environment.json in the clear."""
    from runner.config.redaction import redacted_override
    from runner.tracking import run_record
    from runner.tracking.mlflow_tracker import MlflowTracker

    assert redacted_override("+data.api_key=abc") == "+data.api_key=***"
    assert redacted_override("optim.lr=0.1") == "optim.lr=0.1"
    assert redacted_override("data.image_key=img") == "data.image_key=img"
    typed = ["+data.token=TOPSECRET", "seed=3"]
    monkeypatch.setattr(run_record, "hydra_overrides", lambda: typed)  # as Hydra gives them
    db = tmp_path / "store.db"
    tracker = MlflowTracker(f"sqlite:///{db}", artifact_location=str(tmp_path / "art"))
    tracker.connect(experiment_name="digits")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_record.start_run(
        tracker, make_cfg(), run_dir, device="cpu", run_name="r", tags={}, params={}
    )
    tracker.finish("FINISHED")
    assert "TOPSECRET" not in (run_dir / "environment.json").read_text()
    (overrides,) = query(db, "SELECT value FROM tags WHERE key='overrides'")[0]
    assert overrides == "+data.token=*** seed=3"


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
        "c": "${oc.env:RUNNER_TEST_SECRET}",  # as typed: its value is not written
    }
    # A value that carries a secret through an interpolation was left in the clear.
    copies = OmegaConf.create(
        {
            "a": "${oc.env:RUNNER_TEST_SECRET}",
            "b": "${a}",
            "c": "prefix-${a}",
            "n": {"api_key": "k1-long", "copy": "${n.api_key}", "pin": "1"},
            "d": "plain",
            "e": "typed from-env",
        }
    )
    assert redacted_container(copies) == {
        "a": "${oc.env:RUNNER_TEST_SECRET}",
        "b": "${a}",
        "c": "prefix-${a}",
        "n": {"api_key": "***", "copy": "***", "pin": "1"},
        "d": "plain",
        "e": "***",  # the value typed again, not read from the environment
    }
    # Kept as typed, a URL's password typed beside the variable stays hidden, and one
    # given as a variable is kept whole (cut in half, the text did not parse: every run
    # with its MLflow credentials in the environment failed at start).
    monkeypatch.setenv("RUNNER_TEST_USER", "alice")
    uris = {
        "http://${oc.env:RUNNER_TEST_USER}:pw99@host:5000": (
            "http://${oc.env:RUNNER_TEST_USER}:***@host:5000"
        ),
        "http://${oc.env:RUNNER_TEST_USER}:${oc.env:RUNNER_TEST_SECRET}@db:5000": None,
        "https://${oc.env:RUNNER_TEST_SECRET}@host": None,
    }
    for typed, expected in uris.items():
        shown = redacted_container(OmegaConf.create({"uri": typed}))
        assert shown == {"uri": expected or typed}
        OmegaConf.to_container(OmegaConf.create(shown))  # it parses: print_config, start_run

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
    params = query(db, "SELECT value FROM params WHERE key='logger.experiment_name'")
    assert params == [("${oc.env:RUNNER_TEST_SECRET}",)]
    (run_dir,) = [p.parent for p in (tmp_path / "runs").glob("*/*/config_resolved.yaml")]
    assert "hunter2" not in (run_dir / "config_resolved.yaml").read_text()
    # The overrides as typed, not resolved: the value once reached these in the clear.
    for name in ("environment.json", "run.log"):
        assert "hunter2" not in (run_dir / name).read_text(), name
    (overrides,) = query(db, "SELECT value FROM tags WHERE key='overrides'")[0]
    assert "${oc.env:RUNNER_TEST_SECRET}" in overrides and "hunter2" not in overrides


def test_a_password_in_a_tracking_uri_is_shown_as_stars():
    """The printed config, the params, the overrides tag and the run's files had it."""
    from runner.config.redaction import public_uri, redacted_override
    from runner.tracking.mlflow_tracker import MlflowTracker

    assert public_uri("http://alice:pw9@host:5000/") == "http://alice:***@host:5000/"
    assert public_uri("http://bob:my@pw@host/a@b") == "http://bob:***@host/a@b"  # to the last @
    assert public_uri("https://host:5000") == "https://host:5000"
    assert public_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    typed = "logger.tracking_uri=http://alice:pw9@host:5000"
    assert redacted_override(typed) == "logger.tracking_uri=http://alice:***@host:5000"
    cfg = OmegaConf.create({"logger": {"tracking_uri": "http://alice:pw9@host:5000"}})
    assert redacted_container(cfg) == {"logger": {"tracking_uri": "http://alice:***@host:5000"}}
    tracker = MlflowTracker("http://alice:pw9@127.0.0.1:5999")
    tracker.experiment_id, tracker.run_id = "1", "abc"
    assert "pw9" not in tracker.describe() and "alice:***@127.0.0.1:5999" in tracker.describe()
    database = MlflowTracker("postgresql://bob:db42secret@db.example/mlflow")
    database.experiment_id, database.run_id = "1", "abc"
    assert "db42secret" not in database.describe() and "bob:***@db" in database.describe()


def test_a_log_line_that_quotes_a_uri_shows_its_password_as_stars(tmp_path):
    """A library's message (an MLflow error, the outbox's retry warning) that quotes the
    store's URI went to the terminal and to run.log, which is uploaded, in the clear."""
    script = textwrap.dedent(
        f"""
        import logging.config
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        with initialize_config_dir(config_dir="{REPO / "conf"}", version_base="1.3"):
            cfg = compose("train", return_hydra_config=True)
        for name in ("hydra_logging", "job_logging"):
            settings = OmegaConf.to_container(cfg.hydra[name])
            if "file" in settings["handlers"]:
                settings["handlers"]["file"]["filename"] = "{tmp_path / "run.log"}"
            logging.config.dictConfig(settings)
            logging.getLogger("mlflow").warning("store %s: 503", "http://alice:pw9@host:5000")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True
    )
    written = (tmp_path / "run.log").read_text()
    assert "store http://alice:***@host:5000: 503" in written
    assert done.stdout.count("alice:***@host") == 2 and "pw9" not in done.stdout + written
