"""Opening a run's experiment and run in the store, here or in a helper process.

Importing mlflow and opening its store (SQLAlchemy, the schema check, a new store's
migrations) takes 2-4 s of a run's start-up. A training run hands that to a helper
process (`python -m runner.tracking open`) started before its data and model build: the
helper opens the store and the experiment, then waits for the run's name and tags,
creates (or reopens) the run and exits. The training process waits only for the ids,
before its first step, and opens its own client on its logging thread.

A helper that fails or hangs changes nothing but the time: the tracker then opens the
store itself, so that the store's real error is raised, before any training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from runner.config.errors import ConfigError
from runner.config.location_checks import local_folder
from runner.config.redaction import public_uri
from runner.config.resolvers import REPO_ROOT
from runner.tracking.store import reap_stale_runs, report_reaped, store_lock, with_retry

log = logging.getLogger(__name__)

# MLflow 3's UI opens experiments without this tag in GenAI mode (traces, prompts); this
# value opens them as model training (runs, metrics, models), as the UI's own menu sets it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def experiment_folder(artifact_location: Path, name: str) -> Path:
    """The folder of a new experiment's artifacts: `artifact_location/<name>`.

    A name that would lead out of `artifact_location` (`../x`, `/Users/me/x`, `..`) gets
    a folder named after it with its separators and `..` replaced, so that no experiment
    writes its artifacts elsewhere on the disk or into another experiment's folder.
    """
    return artifact_location.resolve() / _folder_name(name)


def _folder_name(name: str) -> str:
    """An experiment's name as a relative path that stays inside its parent folder."""
    relative = Path(name)
    if relative.parts and not relative.is_absolute() and ".." not in relative.parts:
        return relative.as_posix()
    return re.sub(r"[/\\]+|\.\.", "_", name).strip(". ") or "experiment"


def experiment_location(artifact_location: str, name: str) -> str:
    """The artifact URI of a new experiment: `<artifact_location>/<name>`.

    A folder or `file:` URI becomes the absolute `file://` URI of `experiment_folder`;
    another URI (`s3://bucket/mlflow`, `mlflow-artifacts:/x`) gets the name added as it
    is (its store answers for it).
    """
    folder = local_folder(artifact_location)
    if folder is None:
        return f"{artifact_location.rstrip('/')}/{_folder_name(name)}"
    return experiment_folder(Path(folder).expanduser(), name).as_uri()


def open_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created when missing.

    Args:
        client: An MlflowClient.
        name: The experiment's name.
        artifact_location: Folder under which a new experiment keeps its artifacts (a
            local store's); None = the store's choice.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        number = experiment.experiment_id
        raise ConfigError(
            f"MLflow experiment {name!r} (id {number}) in {client.tracking_uri} is deleted "
            "(in the trash), and a deleted experiment takes no runs. Restore it "
            f"(mlflow experiments restore --experiment-id {number}), remove it for good "
            "(mlflow gc), or log to another: logger.experiment_name=<name>."
        )
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # a kind someone chose stays
            client.set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
            )
        return experiment.experiment_id
    location = None
    if artifact_location:
        location = experiment_location(artifact_location, name)
    try:
        return client.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
        )
    except MlflowException:
        created = client.get_experiment_by_name(name)  # another run created it first
        if created is None:  # a refusal (a name too long, no permission): say it
            raise
        return created.experiment_id


def open_store(
    tracking_uri: str, name: str, artifact_location: str | None
) -> tuple[Any, str, list[str]]:
    """An MlflowClient on the store, the id of experiment `name`, and the runs reaped.

    The first opening of a new SQLite store creates its tables (under the store's file
    lock); RUNNING runs of processes on this host that are gone are marked KILLED (their
    ids are the third value).
    """
    from mlflow.tracking import MlflowClient

    with store_lock(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment_id = with_retry(lambda: open_experiment(client, name, artifact_location))
    reaped = with_retry(lambda: reap_stale_runs(client, [experiment_id]))
    return client, experiment_id, reaped


def open_run(
    client: Any,
    experiment_id: str,
    run_name: str | None,
    tags: dict[str, str],
    resume_run_id: str | None,
) -> str:
    """Creates a run with `tags`, or reopens `resume_run_id` and sets them; returns its id."""
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    if resume_run_id is None:
        run = with_retry(lambda: client.create_run(experiment_id, run_name=run_name, tags=tags))
        return run.info.run_id
    try:
        stage = client.get_run(resume_run_id).info.lifecycle_stage
    except MlflowException as err:  # logged to another store (an offline fallback)
        raise ConfigError(
            f"this run dir continues MLflow run {resume_run_id}, which the store "
            f"{public_uri(client.tracking_uri)} does not have ({err.error_code}): resume "
            "with the logger settings it was logged with (e.g. logger.tracking_uri=<its "
            "fallback_uri> after an offline fallback), or start anew here with "
            "trainer.resume=never"
        ) from err
    if stage == "deleted":
        raise ConfigError(
            f"this run dir continues MLflow run {resume_run_id}, which was deleted: restore "
            f"it (mlflow runs restore --run-id {resume_run_id}) or start anew here with "
            "trainer.resume=never"
        )
    with_retry(lambda: client.update_run(resume_run_id, status="RUNNING"))
    run_tags = [RunTag(key, value) for key, value in tags.items()]
    with_retry(lambda: client.log_batch(resume_run_id, tags=run_tags))
    return resume_run_id


def serve(
    tracking_uri: str, name: str, artifact_location: str | None, requests: IO, replies: IO
) -> int:
    """The helper's side: opens the store and the experiment, then the run it is asked for.

    Replies are one JSON line each: `{"experiment_id": ...}`, then, after one request
    line (`{"run_name", "tags", "resume_run_id"}`), `{"run_id": ...}`; or
    `{"error": ...}`. An empty request (the training process ended or gave up) ends it.
    """

    def reply(message: dict[str, str]) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    try:
        client, experiment_id, reaped = open_store(tracking_uri, name, artifact_location)
        # The helper's own log goes nowhere on success: the training process reports them.
        reply({"experiment_id": experiment_id, "reaped": reaped})
        line = requests.readline()
        if not line:
            return 0
        request = json.loads(line)
        reply({"run_id": open_run(client, experiment_id, **request)})
    except Exception as err:
        reply({"error": f"{type(err).__name__}: {err}"})
        return 1
    return 0


class StoreOpener:
    """The training process's side of the helper (see the module doc).

    Args:
        tracking_uri: The store.
        name: The experiment.
        artifact_location: As `open_experiment`'s.
    """

    def __init__(self, tracking_uri: str, name: str, artifact_location: str | None) -> None:
        self.tracking_uri = tracking_uri
        # The store's URI (a password in it) goes in the helper's environment, which only
        # this user can read, rather than on its command line, which `ps` shows to all.
        command = ["-m", "runner.tracking", "open", f"--experiment={name}"]
        if artifact_location:
            command.append(f"--artifact-location={artifact_location}")
        # The helper imports the runner package from this checkout, wherever it started.
        path = os.pathsep.join(filter(None, (str(REPO_ROOT), os.environ.get("PYTHONPATH"))))
        # A file, not a pipe: a chatty helper never blocks. Closed by `close`.
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115
        self._process: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, *command],
            env={**os.environ, "PYTHONPATH": path, "MLFLOW_TRACKING_URI": tracking_uri},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            # Out of the terminal's process group: Ctrl-C stops the run, not the helper in
            # the middle of a new store's schema migration (which left it unusable). It
            # exits by itself once its stdin closes.
            start_new_session=True,
        )

    def experiment_id(self, timeout_s: float) -> str | None:
        """The experiment's id; None when the helper failed (it is stopped then)."""
        return self._answer("experiment_id", timeout_s)

    def run_id(
        self,
        run_name: str | None,
        tags: dict[str, str],
        resume_run_id: str | None,
        timeout_s: float,
    ) -> str | None:
        """Has the helper create (or reopen) the run; its id, or None when it failed."""
        if self._process is None:  # it failed already
            return None
        request = {"run_name": run_name, "tags": tags, "resume_run_id": resume_run_id}
        try:
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        except OSError:  # it is gone: its error is read below
            pass
        run_id = self._answer("run_id", timeout_s)
        if self._process is not None:  # done: it exits on its own (`close` reaps it)
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        return run_id

    def _answer(self, key: str, timeout_s: float) -> str | None:
        process = self._process
        if process is None:
            return None
        # One reply per request, so nothing waits in the pipe's read buffer unseen.
        readable, _, _ = select.select([process.stdout], [], [], timeout_s)
        line = process.stdout.readline() if readable else ""
        try:
            answer = json.loads(line) if line else {}
        except json.JSONDecodeError:
            answer = {}
        report_reaped(answer.get("reaped") or [])  # the helper's own log went nowhere
        if key in answer:
            return answer[key]
        if process.poll() is None:  # stuck (a lock on a network file system): stop it
            process.kill()
        self._errors.seek(0)
        said = answer.get("error") or self._errors.read().decode(errors="replace")[-2000:]
        self.close()
        log.warning(
            "the helper that opens the MLflow store %s %s; opening it in this process",
            self.tracking_uri,
            f"failed ({said.strip()})" if said.strip() else f"did not answer in {timeout_s:.0f} s",
        )
        return None

    def close(self) -> None:
        """Ends the helper, or reaps it once it has ended on its own after the run id."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):  # it is gone already
            process.stdin.close()  # a helper still waiting for a request ends on its own
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        self._errors.close()
