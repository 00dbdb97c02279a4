"""The outbox on a real SQLite MLflow store (what the store refuses for good is dropped),
and the maintenance commands replay and reap."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2 as codes
from mlflow.tracking import MlflowClient

from runner.tracking.outbox import Outbox, apply_op
from runner.tracking.store import refused_for_good
from tests.conftest import REPO, free_port, seed_store


def open_run(tmp_path):
    """A client on a real SQLite store in tmp_path (artifacts there too) and a new run."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("outbox", artifact_location=(tmp_path / "a").as_uri())
    return client, client.create_run(experiment).info.run_id


def test_an_operation_the_store_refuses_is_dropped_and_the_later_ones_get_through(tmp_path, caplog):
    client, run_id = open_run(tmp_path)
    outbox = Outbox(lambda op: apply_op(client, run_id, op), refused=refused_for_good)
    with caplog.at_level(logging.ERROR, logger="runner"):
        outbox.put(("params", [("optim.lr", "0.1")]))
        outbox.put(("params", [("optim.lr", "0.2")]))  # MLflow never changes a param's value
        outbox.put(("metrics", [("val/acc", 0.5, 0, 1)]))
        outbox.put(("status", "FINISHED"))
        assert outbox.close(timeout_s=10) == [], "nothing left pending behind the refusal"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"optim.lr": "0.1"} and run.data.metrics == {"val/acc": 0.5}
    assert "MLflow cannot take a 'params' logging operation" in caplog.text
    assert "Changing param values is not allowed" in caplog.text


def test_ctrl_c_while_waiting_for_the_server_keeps_what_is_queued():
    """Ctrl-C during the end-of-run wait ended in a traceback from Thread.join, and every
    operation still queued (test metrics, artifacts, the final status) was lost."""
    import os
    import signal
    import threading

    from runner.tracking.outbox import OutboxInterrupted

    def server_down(op):
        raise ConnectionError("connection refused")

    outbox = Outbox(server_down)
    outbox.put(("metrics", [("test/acc", 0.5, 0, 3)]))
    outbox.put(("status", "FINISHED"))
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()  # the user's Ctrl-C
    with pytest.raises(OutboxInterrupted) as stopped:
        outbox.close(timeout_s=30)
    assert isinstance(stopped.value.__cause__, KeyboardInterrupt)
    assert stopped.value.pending == [("metrics", [("test/acc", 0.5, 0, 3)]), ("status", "FINISHED")]


def test_a_wait_is_announced_also_while_the_first_send_is_still_failing(caplog):
    """The wait was announced only after a send had failed: a server that went away while
    the first send hung gave a silent wait of up to logger.delivery_timeout_s."""
    import time

    def slow_failure(op):
        time.sleep(2.0)
        raise ConnectionError("timed out")

    outbox = Outbox(slow_failure)
    with caplog.at_level(logging.WARNING, logger="runner"):
        outbox.put(("status", "FINISHED"))
        assert outbox.close(timeout_s=2.5) == [("status", "FINISHED")]
    assert "waiting up to 2 s for the MLflow store to take 1 queued" in caplog.text
    assert "Ctrl-C stops waiting" in caplog.text


def test_a_store_that_takes_the_logs_at_once_is_waited_for_without_a_word(caplog):
    outbox = Outbox(lambda op: None)
    with caplog.at_level(logging.WARNING, logger="runner"):
        outbox.put(("status", "FINISHED"))
        assert outbox.close(timeout_s=30) == []
    assert "waiting up to" not in caplog.text


def test_the_wait_for_a_server_that_is_down_ends_at_its_deadline():
    """The retry's back-off (up to 10 s) ran past logger.delivery_timeout_s."""
    import time

    def server_down(op):
        raise ConnectionError("connection refused")

    outbox = Outbox(server_down)
    outbox.put(("status", "FINISHED"))
    time.sleep(3.6)  # failures at 0, 0.5, 1.5 and 3.5 s: the next back-off is 4 s
    started = time.monotonic()
    assert outbox.close(timeout_s=1.0) == [("status", "FINISHED")]
    assert time.monotonic() - started < 2.0


def test_a_file_that_is_gone_does_not_hold_up_the_runs_end(tmp_path, caplog):
    client, run_id = open_run(tmp_path)
    outbox = Outbox(lambda op: apply_op(client, run_id, op), refused=refused_for_good)
    with caplog.at_level(logging.ERROR, logger="runner"):
        outbox.put(("artifact", str(tmp_path / "deleted_meanwhile.png"), None))
        outbox.put(("metrics", [("test/acc", 0.9, 0, 3)]))
        outbox.put(("status", "FINISHED"))
        assert outbox.close(timeout_s=10) == []
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"test/acc": 0.9}
    assert "MLflow cannot take a 'artifact' logging operation" in caplog.text


def test_only_a_final_answer_of_the_store_is_a_refusal():
    def error(code):
        return MlflowException("answer", error_code=code)

    assert refused_for_good(error(codes.INVALID_PARAMETER_VALUE))  # 400
    assert refused_for_good(error(codes.RESOURCE_DOES_NOT_EXIST))  # 404
    # No answer or a server error (the store is away), credentials, a rate limit: retried.
    for code in (
        codes.INTERNAL_ERROR,
        codes.TEMPORARILY_UNAVAILABLE,
        codes.PERMISSION_DENIED,
        codes.UNAUTHENTICATED,
        codes.REQUEST_LIMIT_EXCEEDED,
    ):
        assert not refused_for_good(error(code)), codes.ErrorCode.Name(code)
    assert not refused_for_good(ConnectionRefusedError("connection refused"))
    assert not refused_for_good(OSError(28, "No space left on device"))  # may be freed
    assert refused_for_good(FileNotFoundError(2, "No such file or directory"))
    assert refused_for_good(PermissionError(13, "Permission denied"))
    # An s3:// upload without boto3: the metrics and the status queued behind it for ever.
    assert refused_for_good(ModuleNotFoundError("No module named 'boto3'"))


def test_a_refusal_a_second_try_does_not_repeat_is_delivered(tmp_path, caplog):
    """Eight jobs logging one data set to a server at once: the insert one of them loses
    comes back as a 400 (what the server answers in that race, injected here once); the
    second try finds the row. Dropped at the first refusal, the run lost its inputs."""
    from runner.tracking.inputs import DatasetRecord

    client, run_id = open_run(tmp_path)
    lost_race = {"left": 1}

    def send(op):
        if op[0] == "inputs" and lost_race["left"]:
            lost_race["left"] -= 1
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                "datasets.name, datasets.digest",
                error_code=codes.BAD_REQUEST,
            )
        apply_op(client, run_id, op)

    record = DatasetRecord(
        name="digits", digest="abc", source_type="code", source="{}", context="train"
    )
    outbox = Outbox(send, refused=refused_for_good)
    with caplog.at_level(logging.ERROR, logger="runner"):
        outbox.put(("inputs", [record.to_json()]))
        outbox.put(("status", "FINISHED"))
        assert outbox.close(timeout_s=10) == []
    run = client.get_run(run_id)
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["digits"]
    assert "cannot take" not in caplog.text


def test_a_second_outage_adds_to_the_runs_pending_file_and_another_runs_is_kept(tmp_path):
    """The second outage of a resumed run once overwrote the first one's unsent logs."""
    import json

    from runner.tracking.pending import write_pending

    path = tmp_path / "mlflow_pending.jsonl"
    first = [("log_metric", "a", 1.0, 0, 1)]
    second = [("log_metric", "a", 2.0, 0, 2)]
    assert write_pending(path, "http://h:5000", "run1", first) == path
    assert write_pending(path, "http://h:5000", "run1", second) == path
    header, *ops = path.read_text().splitlines()
    assert json.loads(header)["run_id"] == "run1"
    assert [tuple(json.loads(op)) for op in ops] == [*first, *second]
    other = write_pending(path, "http://h:5000", "run2", second)
    assert other.name == "mlflow_pending-2.jsonl" and len(path.read_text().splitlines()) == 3


def test_replay_of_what_is_no_pending_log_file_says_so(tmp_path, capsys):
    """A missing file, a folder, an empty file and run.log gave four raw tracebacks."""
    from runner.tracking.__main__ import main

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "run.log").write_text("[2026] INFO - epoch 1\n")
    for name in ("nope.jsonl", ".", "empty.jsonl", "run.log"):
        assert main(["replay", str(tmp_path / name)]) == 1, name
    errors = capsys.readouterr().err
    assert errors.count("Error: ") == 4 and "no such file" in errors
    assert "not a pending-log file" in errors


def test_an_experiment_the_store_refuses_to_create_says_why(tmp_path):
    """A 600-character name ended in "'NoneType' object has no attribute 'experiment_id'"."""
    from mlflow.exceptions import MlflowException

    from runner.tracking.opening import open_experiment

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(MlflowException, match="500"):
        open_experiment(client, "e" * 600, str(tmp_path / "art"))


def test_reap_of_a_store_that_is_not_there_says_so_and_creates_nothing(tmp_path):
    """A missing SQLite file was created empty; a server that is down held reap for minutes."""
    missing = tmp_path / "typo" / "mlflow.db"
    (tmp_path / "typo").mkdir()
    down = f"http://user:secret@127.0.0.1:{free_port()}"  # nothing listens there
    for uri, problem in ((f"sqlite:///{missing}", "no store at"), (down, "does not answer")):
        tool = [sys.executable, "-m", "runner.tracking", "reap", f"--tracking-uri={uri}"]
        done = subprocess.run(tool, capture_output=True, text=True, cwd=REPO, timeout=60)
        assert done.returncode == 1 and problem in done.stderr, done.stderr
    assert not missing.exists()
    assert "secret" not in done.stderr and "user:***@" in done.stderr


def test_reap_reads_every_page_of_experiments_and_runs(tmp_path):
    """reap read one page: past 1000 experiments or 5000 RUNNING runs, stale runs stayed."""
    import os
    import socket

    from runner.tracking.store import every_page, reap_stale_runs

    client = MlflowClient(tracking_uri=f"sqlite:///{seed_store(tmp_path)}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale, alive = [], []
    for index in range(2):
        experiment = client.create_experiment(f"e{index}", artifact_location=tmp_path.as_uri())
        for pid, kept in ((dead.pid, stale), (os.getpid(), alive)):
            tags = {"runner.host": host, "runner.pid": str(pid)}
            kept.append(client.create_run(experiment, tags=tags).info.run_id)
    experiments = [e.experiment_id for e in every_page(client.search_experiments, page_size=1)]
    assert len(experiments) == 3  # Default and the two
    reaped = reap_stale_runs(client, experiments, page_size=1)
    assert sorted(reaped) == sorted(stale)
    assert {client.get_run(r).info.status for r in stale} == {"KILLED"}
    assert {client.get_run(r).info.status for r in alive} == {"RUNNING"}


def test_an_experiment_name_never_leads_its_artifacts_out_of_the_artifact_location(tmp_path):
    """`../elsewhere` and `/Users/me/exp` put artifacts beside or far from the store."""
    from runner.tracking.opening import open_experiment

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    base = tmp_path / "artifacts"
    for name, folder in (
        ("team/exp", "team/exp"),
        ("../elsewhere", "__elsewhere"),
        ("/Users/me/exp", "_Users_me_exp"),
        ("..", "_"),
    ):
        experiment = client.get_experiment(open_experiment(client, name, str(base)))
        assert experiment.artifact_location == (base.resolve() / folder).as_uri(), name


def test_the_store_helper_runs_outside_the_terminals_process_group(tmp_path):
    """Ctrl-C reached the helper too, in the middle of a new SQLite store's schema
    migration, and the store was unusable from then on ("_alembic_tmp_... exists")."""
    import os

    from runner.tracking.opening import StoreOpener

    opener = StoreOpener(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", None)
    try:
        helper = opener._process.pid
        assert os.getpgid(helper) != os.getpgid(0)
        assert opener.experiment_id(timeout_s=120) is not None
    finally:
        opener.close()


def test_replay_goes_past_a_failed_operation_finds_moved_files_and_keeps_a_later_status(
    tmp_path, capsys
):
    """Replay stopped at the first failing operation (a file of a run dir since moved),
    so the later ones and the final status were never sent; and an earlier outage's
    KILLED replaced the FINISHED of the resumed run that ended since."""
    import shutil

    from runner.tracking.__main__ import main
    from runner.tracking.pending import write_pending

    client, run_id = open_run(tmp_path)
    old_dir, new_dir = tmp_path / "run", tmp_path / "moved"
    (old_dir / "checkpoints").mkdir(parents=True)
    (old_dir / "checkpoints" / "metrics.json").write_text("{}")
    (old_dir / "notes.txt").write_text("not the gone file of the same name")
    ops = [
        ("artifact", str(tmp_path / "gone" / "notes.txt"), None),  # nowhere now, and not
        # the run dir's file of the same name
        ("artifact", str(old_dir / "checkpoints" / "metrics.json"), "checkpoints"),
        ("metrics", [("val/acc", 0.5, 0, 2)]),
        ("tags", {"best_epoch": "3", "first_part_only": "yes"}),
        ("status", "KILLED", 1_000),  # the interrupted first part of the run
    ]
    pending = write_pending(old_dir / "mlflow_pending.jsonl", client.tracking_uri, run_id, ops)
    shutil.move(old_dir, new_dir)
    client.set_tag(run_id, "best_epoch", "4")  # the resumed run's, which the file's replaced
    client.set_terminated(run_id, "FINISHED", end_time=2_000)  # the resumed run's end
    assert main(["replay", str(new_dir / pending.name)]) == 1
    captured = capsys.readouterr()
    assert f"Error: {new_dir / pending.name}:2: the 'artifact' operation failed" in captured.err
    assert "3 logging operation(s) sent, 1 failed" in captured.out
    run = client.get_run(run_id)
    assert run.data.metrics == {"val/acc": 0.5} and run.info.status == "FINISHED"
    assert run.data.tags["best_epoch"] == "4" and run.data.tags["first_part_only"] == "yes"
    listed = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    assert listed == ["checkpoints/metrics.json"]


def test_replay_keeps_which_model_and_data_set_the_metrics_measure(tmp_path):
    """A test metric saved while the server was away is the logged model's when sent, on
    its data set, and the model an eval run tested is its input; a line of the older
    four-field form still goes through."""
    from runner.tracking.__main__ import main
    from runner.tracking.pending import write_pending

    client, run_id = open_run(tmp_path)
    experiment_id = client.get_run(run_id).info.experiment_id
    model_id = client.create_logged_model(experiment_id, source_run_id=run_id).model_id
    ops = [
        ("inputs", [], [model_id]),
        ("metrics", [("test/acc", 0.9, 5, 1, model_id, "digits", "abc123")]),
        ("metrics", [("val/acc", 0.5, 0, 1)]),
    ]
    path = write_pending(tmp_path / "mlflow_pending.jsonl", client.tracking_uri, run_id, ops)
    assert main(["replay", str(path)]) == 0
    ((metric,),) = [client.get_logged_model(model_id).metrics]
    assert (metric.key, metric.value, metric.run_id) == ("test/acc", 0.9, run_id)
    assert (metric.dataset_name, metric.dataset_digest) == ("digits", "abc123")
    run = client.get_run(run_id)
    assert run.data.metrics == {"test/acc": 0.9, "val/acc": 0.5}
    assert [m.model_id for m in run.inputs.model_inputs] == [model_id]


def test_replay_sends_the_saved_status_of_a_run_reap_marked_killed(tmp_path):
    """The server was away at the run's end; the next run reaped it as KILLED, later than
    the FINISHED the file saved, and replay then kept the KILLED."""
    from runner.tracking.__main__ import main
    from runner.tracking.pending import write_pending

    client, run_id = open_run(tmp_path)
    ops = [("status", "FINISHED", 1_000)]
    pending = write_pending(tmp_path / "mlflow_pending.jsonl", client.tracking_uri, run_id, ops)
    client.set_tag(run_id, "reaped", "process 123 on host was gone")  # as reap_stale_runs
    client.set_terminated(run_id, "KILLED", end_time=2_000)
    assert main(["replay", str(pending)]) == 0
    assert client.get_run(run_id).info.status == "FINISHED"
    # Sent whole, the file is set aside: a resumed run warned of it as unsent, and a later
    # outage appended to it, to be sent again with the old operations.
    assert not pending.exists() and pending.with_name("mlflow_pending.jsonl.sent").is_file()


def test_replay_to_a_server_that_does_not_answer_says_so_at_once(tmp_path, capsys):
    """MLflow's client retried it for minutes."""
    import time

    from runner.tracking.__main__ import main
    from runner.tracking.pending import write_pending

    down = f"http://127.0.0.1:{free_port()}"
    path = write_pending(tmp_path / "mlflow_pending.jsonl", down, "r1", [("tags", {"a": "1"})])
    started = time.monotonic()
    assert main(["replay", str(path)]) == 1
    assert time.monotonic() - started < 30
    assert "does not answer: try again when it is up" in capsys.readouterr().err


def test_replay_for_a_run_the_store_lacks_names_each_operation(tmp_path, capsys):
    """The status's check of the run ran outside the per-operation guard: a traceback."""
    from runner.tracking.__main__ import main
    from runner.tracking.pending import write_pending

    client, _ = open_run(tmp_path)
    ops = [("tags", {"a": "1"}), ("status", "FINISHED", 1_000)]
    path = write_pending(tmp_path / "mlflow_pending.jsonl", client.tracking_uri, "f" * 32, ops)
    assert main(["replay", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3: the 'status' operation failed" in err and "not found" in err, err


def test_artifact_locations_given_as_uris_are_used_as_such(tmp_path):
    """file:///x and s3://b/m became folders named 'file:' and 's3:' in the working dir."""
    from runner.config.value_checks import CHECKS
    from runner.tracking.opening import open_experiment

    assert CHECKS["logger.artifact_location"]("mlflow-artifacts:/arts") is None  # it answers
    # S3 is taken when its client is there (without it, each upload failed as an
    # unreachable store, and the run stayed RUNNING with its metrics queued).
    import importlib.util

    s3 = CHECKS["logger.artifact_location"]("s3://bucket/mlflow")
    if importlib.util.find_spec("boto3") is None:
        assert "s3:// needs the Python module boto3 (pip install boto3)" in s3
    else:
        assert s3 is None
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    for location, expected in (
        ((tmp_path / "arts").as_uri(), (tmp_path / "arts" / "e1").as_uri()),
        ("s3://bucket/mlflow/", "s3://bucket/mlflow/e2"),
        ("s3://bucket/mlflow", "s3://bucket/mlflow/__e3"),
        ("mlflow-artifacts:/arts", "mlflow-artifacts:/arts/e4"),  # a scheme without //
        (f"file:{tmp_path / 'arts5'}", (tmp_path / "arts5" / "e5").as_uri()),
    ):
        name = "../e3" if expected.endswith("__e3") else expected.rsplit("/", 1)[-1]
        experiment = client.get_experiment(open_experiment(client, name, location))
        assert experiment.artifact_location == expected


def test_the_store_helper_gets_the_uri_in_its_environment_not_its_arguments(tmp_path):
    """Its command line (shown to every user by ps) carried a URI's password."""
    from runner.tracking.opening import StoreOpener

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    opener = StoreOpener(uri, "exp", None)
    try:
        assert not any(uri in str(arg) for arg in opener._process.args)
        assert opener.experiment_id(timeout_s=120) is not None
    finally:
        opener.close()


def test_a_model_whose_logging_a_signal_stops_is_not_left_pending(tmp_path, monkeypatch):
    """A signal during model logging left a logged model PENDING for ever: eval from
    runs:/ then found no model, and the rerun run had a READY and a PENDING one. The
    signal's moment cannot be hit reliably: MLflow's log_model is replaced by one that is
    interrupted (the store, the logged model and its deletion are real)."""
    import mlflow.pytorch
    import numpy as np
    import torch

    from runner.tracking.models import log_pytorch_model

    client, run_id = open_run(tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as Ctrl-C while the model's files are written

    monkeypatch.setattr(mlflow.pytorch, "log_model", interrupted)
    experiment_id = client.get_run(run_id).info.experiment_id
    with pytest.raises(KeyboardInterrupt):
        log_pytorch_model(
            client,
            client.tracking_uri,
            experiment_id,
            run_id,
            torch.nn.Linear(3, 2),
            np.zeros((2, 3), dtype=np.float32),
            {},
            [],
        )
    assert client.search_logged_models([experiment_id]) == []


def test_replay_sends_the_complete_lines_before_a_last_line_cut_short_and_says_so(tmp_path, capsys):
    """A run killed while it saved its logs left its last line cut short: replay ended in a
    JSONDecodeError traceback and sent nothing."""
    import json

    from runner.tracking.__main__ import main
    from runner.tracking.pending import write_pending

    client, run_id = open_run(tmp_path)
    ops = [("metrics", [("val/acc", 0.5, 0, 2)]), ("tags", {"best_epoch": "2"})]
    path = write_pending(tmp_path / "mlflow_pending.jsonl", client.tracking_uri, run_id, ops)
    with path.open("a") as handle:  # as the killed writer left it: no end, no newline
        handle.write(json.dumps(("status", "FINISHED", 1_000))[:15])
    assert main(["replay", str(path)]) == 0
    captured = capsys.readouterr()
    assert f"Warning: {path}:4: the last line is cut short" in captured.err, captured.err
    assert "2 logging operation(s) sent, 0 failed; its line 4, cut short, was not sent" in (
        captured.out
    )
    run = client.get_run(run_id)
    assert run.data.metrics == {"val/acc": 0.5} and run.data.tags["best_epoch"] == "2"
    assert run.info.status == "RUNNING"  # the status was the line cut short
    sent = path.with_name("mlflow_pending.jsonl.sent")
    assert "(with the line cut short, which was not sent)" in captured.out
    assert sent.read_text().endswith('["status", "FIN')  # kept, not lost


def test_replay_of_a_file_with_a_bad_line_before_the_last_sends_nothing_and_names_it(
    tmp_path, capsys
):
    """A line that does not parse ended replay in a JSONDecodeError traceback; one that is
    JSON but no operation (an unknown kind) was counted as sent."""
    from runner.tracking.__main__ import main
    from runner.tracking.pending import write_pending

    client, run_id = open_run(tmp_path)
    ops = [("metrics", [("val/acc", 0.5, 0, 2)]), ("tags", {"best_epoch": "2"})]
    for number, bad in ((3, '["tags", {"best_ep'), (2, '["log_metric", "a", 1.0, 0, 1]')):
        path = tmp_path / f"{number}" / "mlflow_pending.jsonl"
        path.parent.mkdir()
        write_pending(path, client.tracking_uri, run_id, ops[: number - 2])
        with path.open("a") as handle:
            handle.write(bad + "\n")
        write_pending(path, client.tracking_uri, run_id, [("status", "FINISHED", 1_000)])
        assert main(["replay", str(path)]) == 1
        err = capsys.readouterr().err
        assert f"Error: {path}:{number}: this line is not a logging operation" in err, err
        assert "nothing was sent. Remove or mend that line, then replay" in err
        assert path.is_file() and not path.with_name(path.name + ".sent").exists()
    run = client.get_run(run_id)
    assert run.data.metrics == {} and run.info.status == "RUNNING"


def test_a_later_outage_adds_whole_lines_after_a_line_cut_short(tmp_path, capsys):
    """A resumed run's outage appended its first operation to the line a killed run left
    cut short: that operation was lost in a line that does not parse."""
    import json

    from runner.tracking.__main__ import main
    from runner.tracking.pending import write_pending

    client, run_id = open_run(tmp_path)
    path = tmp_path / "mlflow_pending.jsonl"
    write_pending(path, client.tracking_uri, run_id, [("tags", {"a": "1"})])
    with path.open("a") as handle:  # as the killed writer left it
        handle.write('["metrics", [["val/a')
    later = [["metrics", [["val/acc", 0.5, 0, 4]]], ["status", "FINISHED", 1_000]]
    write_pending(path, client.tracking_uri, run_id, later)
    lines = path.read_text().splitlines()
    assert lines[2] == '["metrics", [["val/a'
    assert [json.loads(line) for line in lines[3:]] == later
    assert main(["replay", str(path)]) == 1  # the line cut short is named, nothing is sent
    assert f"Error: {path}:3: this line is not a logging operation" in capsys.readouterr().err


def test_replay_of_a_file_sent_already_is_refused_and_sends_nothing_twice(tmp_path, capsys):
    """`replay mlflow_pending.jsonl.sent` logged its operations a second time and renamed it
    to mlflow_pending.jsonl.sent.sent."""
    from runner.tracking.__main__ import main
    from runner.tracking.pending import write_pending

    client, run_id = open_run(tmp_path)
    ops = [("metrics", [("val/acc", 0.5, 0, 2)])]
    path = write_pending(tmp_path / "mlflow_pending.jsonl", client.tracking_uri, run_id, ops)
    assert main(["replay", str(path)]) == 0
    sent = path.with_name("mlflow_pending.jsonl.sent")
    capsys.readouterr()
    assert main(["replay", str(sent)]) == 1
    err = capsys.readouterr().err
    assert f"Error: {sent}: sent already" in err, err
    assert "If you mean to, rename it to mlflow_pending.jsonl and replay that" in err
    assert len(client.get_metric_history(run_id, "val/acc")) == 1
    assert sent.is_file() and not sent.with_name(sent.name + ".sent").exists()
    # A later outage's file has the name: the way back does not overwrite it.
    write_pending(path, client.tracking_uri, run_id, ops)
    sent.rename(sent.with_name("mlflow_pending.jsonl.sent2"))
    assert main(["replay", str(tmp_path / "mlflow_pending.jsonl.sent2")]) == 1
    assert "rename it to mlflow_pending-again.jsonl and replay" in capsys.readouterr().err


def test_replay_of_a_folder_or_of_a_name_sent_already_says_what_is_there(tmp_path, capsys):
    """Both said "no such file": a run dir that exists, and the name a replay had just
    renamed to <name>.sent."""
    from runner.tracking.__main__ import main
    from runner.tracking.pending import write_pending

    client, run_id = open_run(tmp_path)
    ops = [("tags", {"a": "1"})]
    path = write_pending(tmp_path / "mlflow_pending.jsonl", client.tracking_uri, run_id, ops)
    assert main(["replay", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"Error: {tmp_path}: is a folder: give the pending-log file in it ({path})" in err
    assert main(["replay", str(path)]) == 0
    capsys.readouterr()
    assert main(["replay", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"Error: {path}: sent already: replay renamed it to mlflow_pending.jsonl.sent" in err
    assert main(["replay", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "is a folder whose pending-log files were sent already (mlflow_pending.jsonl.sent)" in (
        err
    )


def test_reap_of_a_folder_a_path_without_scheme_or_a_file_that_is_not_sqlite_says_so(
    tmp_path, capsys
):
    """A folder or a bare path ended in MLflow's file-store exception, and a sqlite:/// file
    that is no database in SQLAlchemy's DatabaseError, each with a traceback."""
    from runner.tracking.__main__ import main

    open_run(tmp_path)  # a real store, named below without sqlite:///
    folder, text = tmp_path / "mlruns", tmp_path / "notes.db"
    folder.mkdir()
    text.write_text("not a database\n")
    file_store = "MLflow's file store (a folder) is not supported"
    for uri, problem in (
        (str(folder), file_store),
        (folder.as_uri(), file_store),
        (str(tmp_path / "mlflow.db"), f"for this SQLite file, sqlite:///{tmp_path / 'mlflow.db'}"),
        (f"sqlite:///{text}", f"a SQLite file, but {text} is another kind of file"),
    ):
        assert main(["reap", f"--tracking-uri={uri}"]) == 1, uri
        err = capsys.readouterr().err
        assert f"Error: --tracking-uri={uri}: is invalid: expected " in err and problem in err, err
    assert list(folder.iterdir()) == [] and text.read_text() == "not a database\n"


def test_an_operation_of_an_unknown_kind_is_an_error_not_a_silent_no_op():
    """apply_op did nothing for a kind it lacked, and the outbox counted it as sent; replay
    kept its own copy of the kinds to refuse such a line."""
    with pytest.raises(ValueError, match="unknown logging operation 'metric': one of metrics"):
        apply_op(object(), "run", ("metric", []))


@pytest.mark.parametrize("package", ["runner.tracking", "runner.sweeps"])
def test_the_help_of_the_maintenance_commands_keeps_one_command_per_line(package, capsys):
    """argparse reflowed the docstring's example commands into one paragraph."""
    import importlib

    main = importlib.import_module(f"{package}.__main__").main
    with pytest.raises(SystemExit):
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    commands = [line for line in lines if line.startswith(f"python -m {package} ")]
    assert len(commands) >= 3 and all(line.count("python -m") == 1 for line in commands), lines
