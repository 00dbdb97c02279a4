"""Tracking to MLflow (a SQLite file or a server) through `MlflowClient`.

Metrics are buffered and sent in one `log_batch` call per flush, so logging costs one
database round trip per epoch, never one per metric per step. With a server, every call
goes through an outbox thread, so a server that goes away never stops training.

A training run opens its store, experiment and run through a helper process
(runner/tracking/opening.py) while it builds its data and model; its own client is then
opened on a thread, and its logging goes through the outbox, so mlflow's import is off
the path to the first step.

Runs look as MLflow 3 users expect: the experiment is tagged as a model-training one,
runs carry MLflow's `mlflow.source.*` tags, system metrics are sampled on a background
thread, the data splits are dataset inputs, the model is a logged model (optionally
registered), and the run's log file is uploaded at the end.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from runner.config.redaction import public_uri
from runner.config.resolvers import REPO_ROOT
from runner.tracking import provenance
from runner.tracking.inputs import DatasetRecord
from runner.tracking.models import find_logged_model, log_pytorch_model, register_logged_model
from runner.tracking.opening import StoreOpener, open_run, open_store
from runner.tracking.outbox import Outbox, OutboxInterrupted, apply_op
from runner.tracking.pending import pending_file_problem, pending_target, write_pending
from runner.tracking.protocol import DeliveryInterrupted
from runner.tracking.store import (
    TrackingUnavailableError,
    refused_for_good,
    server_reachable,
    with_retry,
)

log = logging.getLogger(__name__)

# MLflow limits per log_batch call.
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LENGTH = 6000
# A new store's tables take 1-2 s; a helper still busy after this is stuck (a lock on a
# network file system) and is stopped, and the tracker opens the store itself.
STORE_OPENING_TIMEOUT_S = 120


class MlflowTracker:
    """Logs a run to MLflow through `MlflowClient` with explicit run ids.

    Args:
        tracking_uri: `sqlite:///path/to/mlflow.db` or a server URL.
        artifact_location: Local folder for the artifacts of experiments this tracker
            creates in a local store; a server chooses its own.
        experiment_name: Experiment to log into; None = the name the run passes in
            (the data set's name).
        run_name: Display name of the run; None = the run dir's name.
        offline_fallback: When the server cannot be reached at start, log to
            `fallback_uri` instead of failing.
        fallback_uri: The local store used by `offline_fallback`.
        delivery_timeout_s: How long the end of a run waits for a server that went away
            to take the buffered logs; what is left is written to the run dir with a
            command that replays it.
        registered_model_name: Register the run's logged model as a new version of this
            registered model; None = log it without registering.
        system_metrics: Sample CPU, memory, disk, network (and GPU) use during the run.
        system_metrics_interval_s: Seconds between two samples.
        export_model: The best weights become the run's MLflow model (artifact
            `model`, torch.export's format); False = checkpoints/best.pt is uploaded as
            it is.
    """

    def __init__(
        self,
        tracking_uri: str,
        artifact_location: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        offline_fallback: bool = False,
        fallback_uri: str | None = None,
        delivery_timeout_s: float = 30.0,
        registered_model_name: str | None = None,
        system_metrics: bool = True,
        system_metrics_interval_s: float = 10.0,
        export_model: bool = True,
    ):
        self.tracking_uri = tracking_uri
        self.artifact_location = artifact_location
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.offline_fallback = offline_fallback
        self.fallback_uri = fallback_uri
        self.fell_back_from: str | None = None
        self.delivery_timeout_s = delivery_timeout_s
        self.registered_model_name = registered_model_name
        self.export_model = export_model
        self.system_metrics = system_metrics
        self.system_metrics_interval_s = system_metrics_interval_s
        self.monitor: Any = None
        self.outbox: Outbox | None = None
        self.local_dir: Path | None = None
        self.source_tags: dict[str, str] = {}
        self.resumed = False  # whether `start` reopened an earlier run
        self.longest_block_s = 0.0
        self.client = None
        self.run_id = None
        self.experiment_id = None
        # (key, value, time in ms, step), then model id, data set name and digest if linked
        self._metrics: list[tuple] = []
        self._server_checked = False
        self._opener: StoreOpener | None = None
        self._connector: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickles without threads and helpers (a launcher may pickle the sweep's tracker).

        The process that unpickles it checks the server again (and sets its HTTP limits).
        """
        helpers = {"monitor": None, "outbox": None, "_opener": None, "_connector": None}
        return {**self.__dict__, **helpers, "_server_checked": False}

    @property
    def is_local(self) -> bool:
        """Whether the store is a local database file rather than a server."""
        return not self.tracking_uri.startswith(("http://", "https://", "databricks"))

    def prepare(self, experiment_name: str) -> None:
        """Starts opening the store beside the data and model build; `connect` follows.

        A server that does not answer fails here, within seconds (or switches to the
        fallback store when `offline_fallback` is on). Then a helper process (`python -m
        runner.tracking open`) imports mlflow and opens the store and the experiment (a
        new SQLite store's tables included) on the other core, and later creates the run,
        so this process's first step does not wait for mlflow's import. When mlflow is
        loaded here already (a sweep's later jobs in one process), opening it here is
        quick and no helper starts.

        Args:
            experiment_name: Experiment to use when none was configured.
        """
        self._check_server()
        if self._opener is not None or self.client is not None or "mlflow" in sys.modules:
            return
        self._opener = StoreOpener(self.tracking_uri, *self._experiment(experiment_name))

    def connect(self, experiment_name: str) -> None:
        """Opens the store and the experiment before any training step.

        Checks the server first unless `prepare` did. After `prepare`, waits for its
        helper to open them; when it failed, opens them here, so that the store's own
        error is raised. RUNNING runs of processes on this host that are gone are marked
        KILLED.

        Args:
            experiment_name: Experiment to use when none was configured.

        Raises:
            TrackingUnavailableError: The server does not answer and there is no fallback.
        """
        self._check_server()
        if self._opener is not None:
            self.experiment_id = self._opener.experiment_id(STORE_OPENING_TIMEOUT_S)
            if self.experiment_id is not None:
                return
            self._opener = None
        name, location = self._experiment(experiment_name)
        self.client, self.experiment_id, _ = open_store(self.tracking_uri, name, location)

    def _experiment(self, experiment_name: str) -> tuple[str, str | None]:
        """The experiment's name (the configured one first) and its artifact folder."""
        location = self.artifact_location if self.is_local else None
        return self.experiment_name or experiment_name, location

    def wait_connected(self) -> None:
        """Waits for the thread opening the client (mlflow's import: pandas, scipy)."""
        if self._connector is not None:
            self._connector.join()

    def _client(self) -> Any:
        """This process's MlflowClient; waits for the connecting thread, if one runs."""
        if self._connector is not None:
            self._connector.join()
        if self.client is None:  # the connecting thread failed: its error shows here
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.tracking_uri)
        return self.client

    def _connect_in_background(self) -> None:
        """Opens this process's client and the system-metrics monitor on a thread.

        One thread does all of it: importing mlflow from two threads at once leaves one
        of them with a half-initialised module.
        """

        def connect() -> None:
            try:
                from mlflow.tracking import MlflowClient

                self.client = MlflowClient(tracking_uri=self.tracking_uri)
            except Exception as err:  # retried where the client is needed
                log.warning("MLflow client not opened yet (%s: %s)", type(err).__name__, err)
            if self.monitor is not None:
                self.monitor.start()

        self._connector = threading.Thread(target=connect, name="mlflow-connect", daemon=True)
        self._connector.start()

    def _check_server(self) -> None:
        """Fails (or falls back) when the server does not answer; once per tracker."""
        if self._server_checked:
            return
        self._server_checked = True
        if not self.tracking_uri.startswith(("http://", "https://")):  # a file or databricks
            return
        # The outbox retries on its own; MLflow's default (7 retries with backoff) would
        # hold a call for minutes while a server is down. A server that is down refuses
        # at once; one busy with many jobs answers late, so the read timeout is generous
        # (with 5 s, eight jobs on two cores timed out their model uploads).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        if not server_reachable(self.tracking_uri):
            self.fell_back_from = self._fall_back()

    def start(
        self,
        run_name: str | None,
        tags: dict[str, str],
        resume_run_id: str | None = None,
        local_dir: Path | None = None,
    ) -> None:
        """Creates (or reopens, for a resumed run) the MLflow run; `connect` comes first.

        Args:
            run_name: Display name when none was configured.
            tags: Tags of the run.
            resume_run_id: Id of this run's earlier MLflow run, to log into it again.
            local_dir: Where logs a server never received are saved at the end.
        """
        self.local_dir = local_dir
        self.resumed = resume_run_id is not None
        # Kept for the logged model, which carries the same source tags (git runs once).
        self.source_tags = provenance.source_tags(REPO_ROOT, tags.get("git_commit"))
        tags = {
            **self.source_tags,
            **tags,
            "runner.pid": str(os.getpid()),
            "runner.host": socket.gethostname(),
        }
        if self.fell_back_from:
            tags["offline_fallback"] = public_uri(self.fell_back_from)
        run_name = self.run_name or run_name
        run_id = None
        if self._opener is not None:  # after `prepare`: the helper creates it
            run_id = self._opener.run_id(run_name, tags, resume_run_id, STORE_OPENING_TIMEOUT_S)
        # Without a helper, or when it failed, the run is opened here.
        self.run_id = run_id or open_run(
            self._client(), self.experiment_id, run_name, tags, resume_run_id
        )
        if resume_run_id is not None and local_dir is not None:
            self._point_to_unsent(local_dir)
        if self.system_metrics:
            from runner.tracking.system_metrics import SystemMetrics

            self.monitor = SystemMetrics(
                self.run_id,
                self.tracking_uri,
                self.system_metrics_interval_s,
                resume=resume_run_id is not None,
            )
        if self.client is None:
            self._connect_in_background()
        elif self.monitor is not None:
            self.monitor.start()

    def _point_to_unsent(self, local_dir: Path) -> None:
        """Warns of this run's logs that an earlier outage left unsent in its run dir."""
        for path in sorted(local_dir.glob("mlflow_pending*.jsonl")):
            if pending_file_problem(path) is None and pending_target(path)["run_id"] == self.run_id:
                log.warning(
                    "%s holds logs of this run that MLflow never received (an earlier "
                    "outage): the run logs on, and its earlier steps are missing from MLflow "
                    "until you send them: python -m runner.tracking replay %s",
                    path,
                    path,
                )

    def _fall_back(self) -> str:
        """Switches to the local fallback store, or raises when that is not allowed."""
        unreachable = self.tracking_uri
        if not (self.offline_fallback and self.fallback_uri):
            fallback = (
                "set logger.fallback_uri (it is null) to the local store to log to instead"
                if self.offline_fallback
                else "set logger.offline_fallback=true to log to the local store instead"
            )
            raise TrackingUnavailableError(
                f"logger.tracking_uri={public_uri(unreachable)!r}: no MLflow server answers "
                f"there (at its /health). Start it, fix the URI, or {fallback}."
            )
        self.tracking_uri = self.fallback_uri
        log.warning(
            "MLflow server %s does not answer: logging to %s instead "
            "(logger.offline_fallback=true)",
            public_uri(unreachable),
            self.fallback_uri,
        )
        return unreachable

    def log_params(self, params: dict[str, Any]) -> None:
        """Logs params in batches of MLflow's maximum size; long values are cut, and said so.

        A cut value ends with an ellipsis, and the log names it: 1,200 classes' train
        counts lost their tail in silence.
        """
        items = [(k, str(v)) for k, v in params.items()]
        cut = [k for k, v in items if len(v) > _MAX_PARAM_LENGTH]
        if cut:
            log.warning(
                "param(s) %s cut to MLflow's %d characters (whole in the run dir's run.log or "
                "config_resolved.yaml)",
                ", ".join(cut),
                _MAX_PARAM_LENGTH,
            )
        items = [
            (k, v if len(v) <= _MAX_PARAM_LENGTH else v[: _MAX_PARAM_LENGTH - 1] + "\u2026")
            for k, v in items
        ]
        for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self._submit(("params", items[start : start + _MAX_PARAMS_PER_BATCH]))

    def _submit(self, op: tuple) -> None:
        """Performs an operation now (local store, client open) or queues it.

        A server's operations always go through the outbox; so do a local store's once
        the run was opened by the helper (this process's client opens on a thread).
        """
        if self.run_id is None:  # the run was never opened (the store refused it)
            log.debug("MLflow run not open: %s not logged", op[0])
            return
        started = time.perf_counter()
        if self.outbox is None and self.is_local and self._connector is None:
            with_retry(lambda: apply_op(self.client, self.run_id, op))
        else:
            if self.outbox is None:
                self.outbox = Outbox(self._deliver, refused=refused_for_good)
            self.outbox.put(op)
        self.longest_block_s = max(self.longest_block_s, time.perf_counter() - started)

    def _deliver(self, op: tuple) -> None:
        """Performs one queued operation (on the outbox thread)."""
        with_retry(lambda: apply_op(self._client(), self.run_id, op))

    def log_metrics(
        self,
        metrics: dict[str, float],
        step: int,
        model_id: str | None = None,
        dataset: DatasetRecord | None = None,
    ) -> None:
        """Buffers metrics; `flush` sends them.

        With `model_id` they are the logged model's metrics too, naming `dataset` (its
        name and digest, as the run's input has them; MLflow keeps a data set only on a
        model's metrics). A value that is not finite (a head/medium/tail group without
        test samples) stays the run's only: MLflow stores a model's NaN as 0.0, which a
        search would match.
        """
        now = int(time.time() * 1000)
        link: tuple = ()
        if model_id is not None:
            link = (model_id, *((dataset.name, dataset.digest) if dataset else (None, None)))
        self._metrics.extend(
            (k, float(v), now, step, *(link if math.isfinite(v) else ()))
            for k, v in metrics.items()
        )

    def flush(self) -> None:
        """Sends the buffered metrics in as few calls as MLflow allows."""
        pending, self._metrics = self._metrics, []
        for start in range(0, len(pending), _MAX_METRICS_PER_BATCH):
            self._submit(("metrics", pending[start : start + _MAX_METRICS_PER_BATCH]))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Sets tags on the run."""
        self._submit(("tags", {k: str(v) for k, v in tags.items()}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copies a file into the run's artifacts."""
        self._submit(("artifact", str(path), artifact_path))

    def log_inputs(self, inputs: list[DatasetRecord], model_ids: tuple[str, ...] = ()) -> None:
        """Records the run's data splits and the logged models it tested (one call)."""
        if inputs or model_ids:
            self._submit(("inputs", [record.to_json() for record in inputs], list(model_ids)))

    def log_model(
        self,
        model: Any,
        input_example: Any,
        metadata: dict[str, Any],
        files: list[Path],
        fallback: Path | None = None,
        tags: dict[str, str] | None = None,
    ) -> str | None:
        """Logs a torch module as the run's MLflow model `model`; returns its id.

        `tags` go on the logged model beside the source's (`find_model` looks for
        them); `register_model` makes it a registered version. When the model
        cannot be logged (it does not export, the server is away), `fallback` is
        uploaded as `checkpoints/<name>` instead and None is returned, so the run keeps
        its weights either way.
        """
        started = time.perf_counter()
        try:
            model_id = log_pytorch_model(
                self._client(),
                self.tracking_uri,
                self.experiment_id,
                self.run_id,
                model,
                input_example,
                metadata,
                files,
                tags={**self.source_tags, **(tags or {})},
            )
        except Exception as err:
            log.error(
                "the model could not be logged to MLflow (%s: %s)%s",
                type(err).__name__,
                err,
                f"; uploading {fallback} instead" if fallback else "",
            )
            if fallback is not None:
                self.log_artifact(fallback, "checkpoints")
            return None
        log.info("logged model models:/%s in %.1f s", model_id, time.perf_counter() - started)
        return model_id

    def register_model(self, model_id: str | None) -> None:
        """Makes the logged model a version of `registered_model_name`, when that is set."""
        if model_id is not None and self.registered_model_name:
            register_logged_model(self.tracking_uri, model_id, self.registered_model_name)

    def find_model(self, tags: dict[str, str], run_id: str | None = None) -> str | None:
        """The id of a finished MLflow model `model` with `tags` of this run (or `run_id`).

        None without asking for this run when it began in this process (it has logged no
        model yet), and when the store cannot be asked (this run's model is then logged
        again) or has no such run.
        """
        if run_id is None and (self.run_id is None or not self.resumed):
            return None
        try:
            client = self._client()
            if run_id is None:
                return find_logged_model(client, self.experiment_id, self.run_id, tags)
            experiment_id = client.get_run(run_id).info.experiment_id
            return find_logged_model(client, experiment_id, run_id, tags)
        except Exception as err:
            if run_id is None:
                log.warning("could not look for the run's logged model (%s); logging it", err)
            elif getattr(err, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                # A checkpoint of a run another store tracked: nothing to link to.
                log.info("run %s is not in this store: its model is not linked", run_id)
            else:
                log.warning("could not look for run %s's logged model (%s)", run_id, err)
            return None

    def finish(self, status: str) -> None:
        """Flushes and ends the run as FINISHED, FAILED or KILLED.

        The system-metrics monitor stops first, and the run dir's log files (Hydra's
        `run.log`) are uploaded. With a server, waits up to `delivery_timeout_s` for
        buffered logs; what the server did not take is saved to
        `<run dir>/mlflow_pending.jsonl`, with the command that sends it later.

        Raises:
            DeliveryInterrupted: Ctrl-C ended that wait (after the saving).
        """
        if self._opener is not None:  # it has ended (after the run id), or is not needed
            self._opener.close()
            self._opener = None
        if self.run_id is None:
            return
        try:
            if self._connector is not None:  # the monitor has started, or failed to
                self._connector.join()
            if self.monitor is not None:
                self.monitor.stop()
            self.flush()
            for path in sorted(self.local_dir.glob("*.log")) if self.local_dir else []:
                self.log_artifact(path)
        finally:
            self._submit(("status", status, int(time.time() * 1000)))
        log.info("tracking: the longest logging call blocked the run %.3f s", self.longest_block_s)
        if self.outbox is None:
            return
        try:
            left = self.outbox.close(self.delivery_timeout_s)
        except OutboxInterrupted as stopped:  # Ctrl-C while waiting: what is queued is saved
            self._save_pending(stopped.pending)
            if isinstance(stopped.__cause__, KeyboardInterrupt):
                raise DeliveryInterrupted(str(stopped)) from None
            raise stopped.__cause__ from None
        self._save_pending(left)

    def _save_pending(self, left: list[tuple]) -> None:
        """Writes the operations the server did not take to mlflow_pending.jsonl, and says so."""
        if left:
            path = (self.local_dir or Path.cwd()) / "mlflow_pending.jsonl"
            path = write_pending(path, self.tracking_uri, self.run_id, left)
            log.error(
                "MLflow server %s did not take %d logging operation(s); saved to %s. "
                "Send them when it is back: python -m runner.tracking replay %s",
                public_uri(self.tracking_uri),
                len(left),
                path,
                path,
            )

    def describe(self) -> str:
        """Where the run can be looked at."""
        if self.is_local:
            # `mlflow ui` serves on 127.0.0.1:5000 by default; the URL works once it runs.
            return (
                f"run {self.run_id}; view with: mlflow ui --backend-store-uri "
                f"{public_uri(self.tracking_uri)}, then open http://127.0.0.1:5000/#/experiments/"
                f"{self.experiment_id}/runs/{self.run_id}"
            )
        base = public_uri(self.tracking_uri).rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
