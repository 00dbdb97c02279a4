"""The run's model in MLflow: logging it (and registering a version), and fetching it back.

`log_pytorch_model` logs a torch module with `mlflow.pytorch.log_model` as the run's
model `model` (MLflow 3: a LoggedModel whose source is the run, shown in the run's
Models tab), with a signature, an input example, metadata and extra files;
`register_logged_model` makes it a version of a registered model. The module is saved
in MLflow's "pt2" format (`torch.export`): it loads without the code that defined it and
without unpickling anything.

`fetch_checkpoint` brings a model (or, for runs logged before models were, the run's
`checkpoints/best.pt`) back from a `runs:/<run id>` or `models:/<name>/<version>` URI.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.config.location_checks import REGISTRY_URI_PREFIX, RUN_URI_PREFIX
from runner.tracking.store import missing_store_file, server_reachable

log = logging.getLogger(__name__)

MODEL_NAME = "model"
LEGACY_CHECKPOINT = "checkpoints/best.pt"


class ModelNotFoundError(LookupError):
    """A `runs:/` or `models:/` URI names nothing the store has; the message says what."""


@dataclass(frozen=True)
class FetchedModel:
    """What a model URI brought back.

    Attributes:
        path: The MLflow model's directory, or a best.pt file (`is_checkpoint`).
        is_checkpoint: The run predates logged models: `path` is its checkpoints/best.pt.
        run_id: The run that trained it.
        model_id: The logged model's id (MLflow 3), when it is one.
    """

    path: Path
    is_checkpoint: bool
    run_id: str | None
    model_id: str | None = None


def _public_version(version: str) -> str:
    """`2.5.1+cu124` -> `2.5.1`: pip resolves public versions only."""
    return version.split("+", 1)[0]


def log_pytorch_model(
    client: Any,
    tracking_uri: str,
    experiment_id: str,
    run_id: str,
    model: Any,
    input_example: Any,
    metadata: dict[str, Any],
    files: list[Path],
    tags: dict[str, str] | None = None,
) -> str:
    """Logs `model` as the run's MLflow model; returns its id (`models:/<id>` loads it).

    Args:
        client: The run's MlflowClient.
        tracking_uri: Its store (MLflow's model logging reads the process-wide URI).
        experiment_id: The run's experiment.
        run_id: The run the model comes from.
        model: A torch module on the CPU in eval mode; takes `input_example`.
        input_example: A numpy batch the model takes (its batch size must be > 1, so
            that the exported batch dimension stays dynamic).
        metadata: Saved in the model's MLmodel file.
        files: Saved in the model's `extra_files/` folder.
        tags: Tags of the logged model.

    Raises:
        Exception: Whatever MLflow or torch.export raise while logging the model; the
            caller decides what follows.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    with torch.inference_mode():
        output = model(torch.from_numpy(input_example)).float().numpy()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(input_example.dtype, (-1, *input_example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *output.shape[1:]))]),
    )
    run = client.get_run(run_id)
    # MLflow's own log_model copies the run's params onto the model; so does this.
    logged = client.create_logged_model(
        experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        params=dict(run.data.params),
        tags=tags,
    )
    _use_store(tracking_uri)  # log_model and its status read it
    try:
        mlflow.pytorch.log_model(
            model,
            name=MODEL_NAME,
            model_id=logged.model_id,
            signature=signature,
            input_example=input_example,
            metadata=metadata,
            extra_files=[str(path) for path in files],
            # Without them MLflow infers requirements by loading the model in a subprocess.
            pip_requirements=[
                f"torch=={_public_version(torch.__version__)}",
                f"mlflow=={_public_version(mlflow.__version__)}",
            ],
            serialization_format="pt2",
        )
    except BaseException:
        # A model that could not be saved, or whose saving a signal stopped, is no model
        # of the run (`runs:/<id>/model`): it stayed PENDING for ever.
        client.delete_logged_model(logged.model_id)
        raise
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged.model_id


def register_logged_model(tracking_uri: str, model_id: str, name: str) -> None:
    """Makes a logged model a new version of the registered model `name`, once.

    A version of `name` that holds the model already (a run tested again in place) is
    kept, not doubled. A failed registration is only logged: the model stays logged.
    """
    uri = f"models:/{model_id}"
    _use_store(tracking_uri)  # mlflow.register_model reads it
    try:
        held = _version_holding(uri, name)
        version = held or _register(uri, name)
    except Exception as err:  # the model is logged; only the version is missing
        log.error(
            "logger.registered_model_name=%r: the model was logged (%s) but not registered: "
            "%s. Register it later: mlflow.register_model(%r, %r)",
            name,
            uri,
            err,
            uri,
            name,
        )
        return
    said = "is" if held else "registered as"
    log.info("model %s %s %s version %s", uri, said, name, version.version)


def find_logged_model(
    client: Any, experiment_id: str, run_id: str, tags: dict[str, str]
) -> str | None:
    """The id of the run's READY model `model` with `tags`, or None.

    A model whose logging was cut short (PENDING, FAILED) does not count.
    """
    from mlflow.entities import LoggedModelStatus

    conditions = [f"source_run_id = '{run_id}'", f"name = '{MODEL_NAME}'"]
    conditions += [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    found = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=" AND ".join(conditions)
    )
    ready = [model for model in found if model.status == LoggedModelStatus.READY]
    return ready[0].model_id if ready else None


def _use_store(tracking_uri: str) -> None:
    """Points MLflow's process-wide store and registry at `tracking_uri`.

    Also turns off the artifact progress bars, which would fill the run's log.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _register(model_uri: str, name: str, attempts: int = 3):
    """`mlflow.register_model`, tried again after a pause.

    A store busy with other writers (a SQLite file the system-metrics thread writes to, a
    loaded server) can fail a call that succeeds a moment later.
    """
    import mlflow

    for attempt in range(1, attempts + 1):
        try:
            return mlflow.register_model(model_uri, name)
        except Exception as err:
            if attempt == attempts:
                raise
            log.warning("registering %s failed (%s); trying again", name, err)
            time.sleep(2.0 * attempt)
            # A call that timed out may have registered the version all the same.
            version = _version_holding(model_uri, name)
            if version is not None:
                return version
    raise AssertionError("unreachable: the last attempt returns or raises")


def _version_holding(model_uri: str, name: str) -> Any:
    """The version of registered model `name` made from `model_uri` (models:/<id>), or None.

    Looked up by the model's URI: a filter on the name cannot hold a name with both
    kinds of quote.
    """
    from mlflow.tracking import MlflowClient

    versions = MlflowClient().search_model_versions(f"source_path = '{model_uri}'")
    return next((v for v in versions if v.name == name), None)


def _latest_version(client: Any, name: str) -> Any:
    """The highest version of a registered model, as MLflow's models:/<name>/latest.

    Raises:
        MlflowException: The model does not exist or has no version.
    """
    from mlflow.exceptions import MlflowException

    client.get_registered_model(name)  # a missing model raises with its own error code
    quote = '"' if "'" in name else "'"  # a name may hold either quote (it's-net)
    versions = client.search_model_versions(f"name = {quote}{name}{quote}")
    if not versions:
        raise MlflowException(
            f"model {name!r} has no version", error_code="RESOURCE_DOES_NOT_EXIST"
        )
    return max(versions, key=lambda v: int(v.version))


def _logged_model(
    client: Any, uri: str, model_id: str, tracking_uri: str, download_dir: Path
) -> FetchedModel:
    """Downloads a logged model by its id (`models:/m-...`, as a training run's log says).

    Raises:
        ModelNotFoundError: The store has no logged model of that id.
    """
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_logged_model(model_id)
    except MlflowException as err:
        raise ModelNotFoundError(
            f"ckpt={uri!r}: the store logger.tracking_uri={tracking_uri!r} has no logged "
            f"model {model_id!r} ({err.error_code}). Check the id, or pass runs:/<run id>"
        ) from err
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri,
        dst_path=str(download_dir),
        tracking_uri=tracking_uri,
        registry_uri=tracking_uri,
    )
    return FetchedModel(Path(local), False, found.source_run_id, model_id)


def fetch_checkpoint(uri: str, tracking_uri: str, download_dir: Path) -> FetchedModel:
    """Downloads the model a `runs:/`, `models:/<name>/<version>` or `models:/<m-id>` names.

    A run logged before models were has no model `model`: its checkpoints/best.pt
    artifact comes back instead.

    Args:
        uri: `runs:/<run id>` (also `runs:/<run id>/model`), `models:/<name>/<version>`
            or `models:/<logged model id>`.
        tracking_uri: The store (also the registry).
        download_dir: Where the files go.

    Raises:
        ModelNotFoundError: The SQLite store is not there or the server does not answer
            (asked first: MLflow would create the one and retry the other for minutes),
            the run, the registered model, its version or the logged model does not
            exist, or the run logged no model (and no best.pt).
    """
    from mlflow.tracking import MlflowClient

    database = missing_store_file(tracking_uri)
    if database is not None:  # opening it would create an empty store
        raise ModelNotFoundError(
            f"ckpt={uri!r}: logger.tracking_uri={tracking_uri!r} names no store ({database} "
            "is not there): point it at the store the run logged to"
        )
    if tracking_uri.startswith(("http://", "https://")) and not server_reachable(tracking_uri):
        raise ModelNotFoundError(  # MLflow's client would retry it for minutes
            f"ckpt={uri!r}: the tracking server logger.tracking_uri={tracking_uri!r} does "
            "not answer: start it, or try again when it is up"
        )
    download_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    # MLflow resolves a model's files (`models:/...`, a run's model) through the
    # process-wide store and registry, whatever URI the download itself is given.
    _use_store(tracking_uri)
    if uri.startswith(REGISTRY_URI_PREFIX):
        return _registered_model(client, uri, tracking_uri, download_dir)
    return _run_model(client, uri, tracking_uri, download_dir)


def _registered_model(client: Any, uri: str, tracking_uri: str, download_dir: Path) -> FetchedModel:
    """Downloads `models:/<name>/<version>` (or /latest, @<alias>) or `models:/<m-id>`.

    Raises:
        ModelNotFoundError: The URI is malformed, or names nothing the store has.
    """
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    name, _, version = uri.removeprefix(REGISTRY_URI_PREFIX).strip("/").partition("/")
    # MLflow 3's id of a logged model (m- and 32 hex digits); a registered model's
    # name may start with m- too.
    if re.fullmatch(r"m-[0-9a-f]{32}", name) and not version:
        return _logged_model(client, uri, name, tracking_uri, download_dir)
    name, _, alias = name.partition("@")  # MLflow's models:/<name>@<alias>
    if not name or bool(version) == bool(alias):
        raise ModelNotFoundError(
            f"ckpt={uri!r}: expected models:/<registered model name>/<version> (or "
            "/latest), models:/<registered model name>@<alias> or models:/<logged model "
            "id> (m- and 32 hex digits, as mlflow ui shows it)"
            + (
                f"; {name!r} has {len(name) - 2} characters after m-"
                if name.startswith("m-") and not version and not alias
                else ""
            )
        )
    wanted = f"alias {alias!r}" if alias else f"version {version!r}"
    try:
        if alias:
            found = client.get_model_version_by_alias(name, alias)
        elif version == "latest":
            found = _latest_version(client, name)
        else:
            found = client.get_model_version(name, version)
    except MlflowException as err:
        raise ModelNotFoundError(
            f"ckpt={uri!r}: the registry of logger.tracking_uri={tracking_uri!r} has no "
            f"{wanted} of model {name!r} ({err.error_code}). Registered "
            "models are listed in mlflow ui's Models page"
        ) from err
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{REGISTRY_URI_PREFIX}{name}/{found.version}",
        dst_path=str(download_dir),
        tracking_uri=tracking_uri,
        registry_uri=tracking_uri,
    )
    return FetchedModel(Path(local), False, found.run_id, _model_id_in(Path(local)))


def _run_model(client: Any, uri: str, tracking_uri: str, download_dir: Path) -> FetchedModel:
    """Downloads the logged model of `runs:/<run id>` (or, before models were, its best.pt).

    Raises:
        ModelNotFoundError: The store has no such run, or the run logged neither.
    """
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    run_id = uri.removeprefix(RUN_URI_PREFIX).strip("/").split("/")[0]
    if not run_id:
        raise ModelNotFoundError(f"ckpt={uri!r}: expected runs:/<mlflow run id>")
    try:
        tags = client.get_run(run_id).data.tags
    except MlflowException as err:
        raise ModelNotFoundError(
            f"ckpt={uri!r}: run {run_id!r} was not found in the MLflow store "
            f"logger.tracking_uri={tracking_uri!r} ({err.error_code}). Check the id "
            "(mlflow ui lists the runs) or point logger.tracking_uri at the right store"
        ) from err
    for path, is_checkpoint in ((MODEL_NAME, False), (LEGACY_CHECKPOINT, True)):
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{RUN_URI_PREFIX}{run_id}/{path}",
                dst_path=str(download_dir),
                tracking_uri=tracking_uri,
                registry_uri=tracking_uri,
            )
        except (MlflowException, OSError):
            continue
        if not is_checkpoint and not (Path(local) / "MLmodel").is_file():
            continue
        log.info("downloaded %s of MLflow run %s to %s", path, run_id, local)
        model_id = None if is_checkpoint else _model_id_in(Path(local))
        return FetchedModel(Path(local), is_checkpoint, run_id, model_id)
    if tags.get("mode") == "eval" and tags.get("source_run_id"):
        fix = f"it is an eval run of training run ckpt=runs:/{tags['source_run_id']}"
    elif tags.get("best.run_id"):  # a sweep's parent run
        fix = f"it is a sweep's parent run; its best job's run is ckpt=runs:/{tags['best.run_id']}"
    else:
        fix = "only runs that finished training log them; pick a FINISHED training run"
    raise ModelNotFoundError(
        f"ckpt={uri!r}: run {run_id!r} has neither a logged model {MODEL_NAME!r} nor a "
        f"{LEGACY_CHECKPOINT} artifact: {fix}"
    )


def _model_id_in(model_dir: Path) -> str | None:
    """The logged model's id that a downloaded model's MLmodel file names (None before MLflow 3)."""
    from mlflow.models import Model

    try:
        return Model.load(str(model_dir)).model_id
    except (OSError, ValueError) as err:
        log.warning("%s: no logged model id read (%s)", model_dir, err)
        return None
