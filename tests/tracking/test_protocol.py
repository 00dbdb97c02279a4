"""Both trackers provide the Tracker protocol, method by method, with its signatures."""

from __future__ import annotations

import inspect

import pytest

from runner.tracking.mlflow_tracker import MlflowTracker
from runner.tracking.null import NullTracker
from runner.tracking.protocol import Tracker

METHODS = [
    name for name, value in vars(Tracker).items() if callable(value) and not name.startswith("_")
]


@pytest.mark.parametrize("tracker", [NullTracker(), MlflowTracker("sqlite:///unused.db")])
def test_each_tracker_has_the_protocols_methods_and_signatures(tracker):
    assert isinstance(tracker, Tracker)
    assert {"connect", "start", "log_metrics", "finish", "describe"} <= set(METHODS)
    for name in METHODS:
        ours = inspect.signature(getattr(type(tracker), name))
        assert list(ours.parameters) == list(inspect.signature(getattr(Tracker, name)).parameters)
    assert tracker.run_id is None  # nothing started


def test_a_deleted_experiment_is_refused_with_how_to_restore_it(tmp_path):
    """A real SQLite store whose experiment was deleted in the UI (it stays, in the trash)."""
    from mlflow.tracking import MlflowClient

    from runner.config.errors import ConfigError

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("digits"))
    tracker = MlflowTracker(uri)
    with pytest.raises(ConfigError, match=r"'digits'.*deleted.*experiments restore"):
        tracker.connect(experiment_name="digits")
    tracker.log_artifact(tmp_path / "mlflow.db")  # no run to log into: nothing, no crash


def test_the_server_check_asks_as_mlflow_does_and_only_http_servers(monkeypatch):
    """Credentials in the URL reach a real local server; databricks is not an HTTP URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from runner.tracking.store import server_reachable

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # the stdlib names the handler so
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert server_reachable(f"http://127.0.0.1:{port}")
        assert server_reachable(f"http://user:secret@127.0.0.1:{port}")
        # Another web server (no /health), or the URL misses the server's path.
        assert not server_reachable(f"http://127.0.0.1:{port}/not-mlflow")
    finally:
        server.shutdown()
    assert not server_reachable(f"http://127.0.0.1:{port}", timeout_s=2)
    tracker = MlflowTracker("databricks")
    tracker._check_server()  # it was refused as "the MLflow server does not answer"
    assert tracker.tracking_uri == "databricks"
