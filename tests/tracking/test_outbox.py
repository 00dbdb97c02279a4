"""The outbox on a real SQLite MLflow store: what the store refuses for good is dropped."""

from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException
from mlflow.protos import databricks_pb2 as codes
from mlflow.tracking import MlflowClient

from runner.tracking.outbox import Outbox, apply_op
from runner.tracking.store import refused_for_good


def test_an_operation_the_store_refuses_is_dropped_and_the_later_ones_get_through(tmp_path, caplog):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = client.create_run(client.create_experiment("outbox")).info.run_id
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
    assert "MLflow refused a 'params' logging operation" in caplog.text
    assert "Changing param values is not allowed" in caplog.text


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
    assert not refused_for_good(OSError("connection refused"))
