"""Logging operations off the training thread: the outbox thread, and how one is applied.

Operations queue in the `Outbox` and are delivered in order on its thread; while a
tracking server is away they are retried, and what it never takes is saved as JSON lines
(`runner.tracking.pending`) and sent later with `python -m runner.tracking replay <file>`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Outbox:
    """Delivers logging operations to a server on a background thread.

    The training loop only appends; while the server is down, operations wait here and
    are retried with backoff, in order, so a stopped server never blocks training.

    Args:
        send: Performs one operation against the server; raises when it cannot.
        refused: Whether an error of `send` is the server refusing the operation for good;
            such an operation is tried once more, then dropped with an error instead of
            holding up the ones after it (the run's final status among them).
    """

    def __init__(
        self, send: Callable[[tuple], None], refused: Callable[[Exception], bool] = lambda _: False
    ):
        self._send = send
        self._refused = refused
        self._ops: collections.deque[tuple] = collections.deque()
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._thread = threading.Thread(target=self._deliver, name="mlflow-outbox", daemon=True)
        self._thread.start()

    def put(self, op: tuple) -> None:
        """Queues an operation (returns at once)."""
        with self._cond:
            self._ops.append(op)
            self._cond.notify_all()

    def _deliver(self) -> None:
        delay, failing = 0.5, False
        refused_once = None  # the op refused once: it is tried once more before it is dropped
        while True:
            with self._cond:
                while not self._ops and self._deadline is None:
                    self._cond.wait()
                if not self._ops or (self._deadline and time.monotonic() > self._deadline):
                    return
                op = self._ops[0]
            try:
                self._send(op)
            except Exception as err:
                # A refusal can be a race another job lost (a dataset that two runs
                # insert at once): the second try finds the row, a lasting one fails again.
                refused = self._refused(err)
                if refused and refused_once is not op:
                    refused_once = op
                    with self._cond:
                        self._cond.wait(0.5)
                    continue
                if refused:
                    log.error(
                        "MLflow cannot take a %r logging operation (%s); it is dropped so "
                        "that the later ones get through",
                        op[0],
                        err,
                    )
                    with self._cond:
                        self._ops.popleft()
                        self._cond.notify_all()
                    continue
                if not failing:
                    log.warning("MLflow store not reachable (%s); buffering and retrying", err)
                failing = True
                with self._cond:  # never past the deadline `close` set: the run is ending
                    left = None if self._deadline is None else self._deadline - time.monotonic()
                    self._cond.wait(delay if left is None else max(0.0, min(delay, left)))
                delay = min(delay * 2, 10.0)
                continue
            if failing:
                log.info("MLflow store reachable again: delivering buffered logs")
            delay, failing = 0.5, False
            with self._cond:
                self._ops.popleft()
                self._cond.notify_all()

    def close(self, timeout_s: float) -> list[tuple]:
        """Waits up to `timeout_s` for delivery; returns the operations still pending.

        Raises:
            OutboxInterrupted: Ctrl-C (or another exception) ended the wait; it holds
                the operations still pending, to be saved before the exception goes on.
        """
        try:  # a Ctrl-C as soon as the message below is out must find the handler
            with self._cond:
                self._deadline = time.monotonic() + timeout_s
                self._cond.notify_all()
            self._thread.join(min(timeout_s, 1.0))  # a store that is there takes them by now
            # A wait the user would notice is announced, with its length and the way out.
            if self._thread.is_alive() and timeout_s > 1.0:
                with self._cond:
                    queued = len(self._ops)
                log.warning(
                    "waiting up to %.0f s for the MLflow store to take %d queued logging "
                    "operation(s); Ctrl-C stops waiting and saves them to send later",
                    timeout_s,
                    queued,
                )
            self._thread.join(timeout_s + 15)
        except BaseException as err:
            with self._cond:
                self._deadline = time.monotonic()  # the delivery thread stops at its next look
                raise OutboxInterrupted(list(self._ops)) from err
        with self._cond:
            return list(self._ops)


class OutboxInterrupted(Exception):
    """The wait for delivery was interrupted; `pending` is what was not delivered."""

    def __init__(self, pending: list[tuple]):
        super().__init__(f"{len(pending)} logging operation(s) not delivered")
        self.pending = pending


# The operations `apply_op` performs (replay refuses a saved line of another kind, which
# it would otherwise count as sent).
OP_KINDS = ("metrics", "params", "tags", "artifact", "inputs", "status")


def apply_op(client: Any, run_id: str, op: tuple) -> None:
    """Performs one logging operation with an MlflowClient.

    Operations hold plain values (they are queued, and saved as JSON when undelivered):
    `("metrics", [(key, value, timestamp_ms, step[, model_id, dataset_name,
    dataset_digest]), ...])`, `("params", [(key, value), ...])`, `("tags", {key: value})`,
    `("artifact", path, artifact_path)`, `("inputs", [DatasetRecord.to_json(), ...],
    [model_id, ...])`, `("status", status, end_time_ms)` (files written before statuses
    carried their time hold `("status", status)`).
    """
    from mlflow.entities import LoggedModelInput, Metric, Param, RunTag

    kind, *args = op
    if kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(*fields) for fields in args[0]])
    elif kind == "params":
        client.log_batch(run_id, params=[Param(key, value) for key, value in args[0]])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in args[0].items()])
    elif kind == "artifact":
        client.log_artifact(run_id, args[0], args[1])
    elif kind == "inputs":
        model_ids = args[1] if len(args) > 1 else []  # lines saved before: records only
        models = [LoggedModelInput(model_id) for model_id in model_ids] or None
        client.log_inputs(
            run_id, datasets=[_dataset_input(record) for record in args[0]], models=models
        )
    elif kind == "status":
        client.set_terminated(run_id, status=args[0], end_time=args[1] if len(args) > 1 else None)
    else:  # a kind added to OP_KINDS, or queued, without its call here
        raise ValueError(f"unknown logging operation {kind!r}: one of {', '.join(OP_KINDS)}")


def _dataset_input(record: dict[str, Any]) -> Any:
    """An MLflow dataset input from a `DatasetRecord.to_json()` dict."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from runner.tracking.inputs import CONTEXT_TAG

    dataset = Dataset(
        name=record["name"],
        digest=record["digest"],
        source_type=record["source_type"],
        source=record["source"],
        schema=record.get("schema"),
        profile=record.get("profile"),
    )
    return DatasetInput(dataset=dataset, tags=[InputTag(CONTEXT_TAG, record["context"])])
