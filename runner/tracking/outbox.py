"""Logging operations off the training thread: the outbox thread and the pending-log file.

Operations queue in the `Outbox` and are delivered in order on its thread; while a
tracking server is away they are retried, and what it never takes is saved as JSON lines
and sent later with `python -m runner.tracking replay <file>`.
"""

from __future__ import annotations

import collections
import glob
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from runner.config.errors import UserError

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


def write_pending(path: Path, tracking_uri: str, run_id: str, ops: list[tuple]) -> Path:
    """Saves undelivered operations as JSON lines for `python -m runner.tracking replay`.

    The header names the store, the run and the folder the file is in. A file left by an
    earlier outage of the same run (a resumed run) is added to, in
    order, so that nothing it holds is lost; one for another run or store is kept, and
    these go to the next free `<stem>-<n>.jsonl`.

    Returns:
        The file written.
    """
    # The folder it is written in: replay finds the run's files there after a move.
    header = json.dumps(
        {"tracking_uri": tracking_uri, "run_id": run_id, "run_dir": str(path.parent.resolve())}
    )
    target, number = path, 1
    while target.exists() and _first_line(target) != header:
        number += 1
        target = path.with_name(f"{path.stem}-{number}{path.suffix}")
    with target.open("a") as handle:
        if handle.tell() == 0:
            handle.write(header + "\n")
        elif not _ends_a_line(target):
            # An earlier writer was killed mid-line: these operations start a line of their
            # own, whole, and replay names the line cut short for the user to remove.
            handle.write("\n")
        for op in ops:
            handle.write(json.dumps(op) + "\n")
    return target


def _ends_a_line(path: Path) -> bool:
    """Whether a non-empty file's last byte ends a line."""
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"


def _first_line(path: Path) -> str:
    """A pending file's header line, read without the operations after it."""
    with path.open(errors="replace") as handle:
        return handle.readline().rstrip("\n")


# The names replay gives a file it has sent: `<name>.sent`, then `.sent2`, `.sent3`, ...
_SENT = re.compile(r"\.sent\d*$")


def pending_file_problem(path: Path) -> str | None:
    """What keeps `path` from being replayed (not a file, not a pending-log file); None = fine.

    A file replay has sent already (renamed `<name>.sent`) is refused too: its operations
    would go to the store a second time.
    """
    if path.is_dir():
        found = sorted(path.glob("mlflow_pending*.jsonl"))
        if found:
            return f"is a folder: give the pending-log file in it ({', '.join(map(str, found))})"
        sent = sorted(p.name for p in path.glob("mlflow_pending*.jsonl.sent*"))
        if sent:
            return (
                f"is a folder whose pending-log files were sent already ({', '.join(sent)}): "
                "nothing in it is left to send"
            )
        return (
            "is a folder, and it holds no mlflow_pending*.jsonl (a run dir has one only when "
            "logs went unsent): give the path of such a file"
        )
    if not path.exists():
        sent = sorted(
            p.name
            for p in path.parent.glob(glob.escape(path.name) + ".sent*")
            if _SENT.fullmatch(p.name.removeprefix(path.name))
        )
        if sent:
            return (
                f"sent already: replay renamed it to {' and '.join(sent)} once the store had "
                "its operations, so nothing is left to send"
            )
        return "no such file: give the mlflow_pending.jsonl a run dir holds"
    sent_as = _SENT.search(path.name)
    if sent_as is not None:
        back = path.with_name(path.name[: sent_as.start()])
        if back.exists():  # a later outage's file: renaming onto it would lose it
            back = back.with_name(f"{back.stem}-again{back.suffix}")
        return (
            "sent already: replay renames a file to <name>.sent once the store has its "
            "operations, and sending it again would log them twice. If you mean to, rename "
            f"it to {back.name} and replay that"
        )
    if not path.is_file():
        return "not a regular file: give the mlflow_pending.jsonl a run dir holds"
    header = _first_line(path)
    try:
        target = json.loads(header)
    except json.JSONDecodeError:
        target = None
    if not isinstance(target, dict) or not {"tracking_uri", "run_id"} <= set(target):
        return "not a pending-log file (its first line names no tracking_uri and run_id)"
    return None


def pending_target(path: Path) -> dict[str, str]:
    """The header of a pending-log file: its `tracking_uri`, `run_id` and `run_dir`.

    `run_dir`, the folder the file was written in, is absent from older files.
    """
    return json.loads(_first_line(path))


class PendingFileError(UserError):
    """A pending-log file that cannot be replayed as it is; the message names file:line."""


class PendingLog(NamedTuple):
    """A pending-log file as replay reads it, before anything is sent.

    Attributes:
        target: Its header: `tracking_uri`, `run_id` and (newer files) `run_dir`.
        ops: Each operation with the number of its line in the file (the header is 1).
        cut_short: The number and text of a last line cut short, which is not sent;
            None when there is none.
    """

    target: dict[str, str]
    ops: list[tuple[int, tuple]]
    cut_short: tuple[int, str] | None


# What `apply_op` performs: a line of another kind would be counted as sent, and is none.
_KINDS = ("metrics", "params", "tags", "artifact", "inputs", "status")


def read_pending(path: Path) -> PendingLog:
    """Reads a pending-log file whole, line by line, so that a bad line stops replay early.

    `write_pending` appends line by line, so a process killed while writing leaves its
    last line cut short: that line is set apart (`cut_short`) for the caller to report,
    and the complete lines before it are replayed. Any other line that is no operation
    refuses the file: sending around it would leave a hole in the run's logs.

    Args:
        path: A file `pending_file_problem` has passed (its header is sound).

    Returns:
        The header, the operations and the line cut short, if any.

    Raises:
        PendingFileError: A line before the last is not an operation, or the last is
            complete JSON but no operation; the message names file:line and the fix.
    """
    header, *rest = path.read_bytes().split(b"\n")
    # Blank lines carry nothing (an editor may leave one at the end); numbers stay the file's.
    lines = [(number, raw) for number, raw in enumerate(rest, start=2) if raw.strip()]
    ops, cut_short = [], None
    for index, (number, raw) in enumerate(lines):
        last = index == len(lines) - 1
        text = raw.decode("utf-8", errors="replace").strip()
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if last:  # what a writer stopped mid-line leaves; a prefix of a line never parses
                cut_short = (number, text)
                break
            raise PendingFileError(
                f"{path}:{number}: this line is not a logging operation ({err}): "
                f"{_shown(text)}; nothing was sent. Remove or mend that line, then replay"
            ) from None
        if not (isinstance(value, list) and value and value[0] in _KINDS):
            raise PendingFileError(
                f"{path}:{number}: this line is not a logging operation (a JSON list whose "
                f"first item is one of {', '.join(_KINDS)}): {_shown(text)}; nothing "
                "was sent. Remove or mend that line, then replay"
            )
        ops.append((number, tuple(value)))
    return PendingLog(json.loads(header), ops, cut_short)


def _shown(text: str, limit: int = 80) -> str:
    """A line as an error message quotes it: its start, when it is long (metrics are)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def replay_pending(path: Path, pending: PendingLog) -> tuple[int, list[str]]:
    """Sends the operations of a pending-log file to its server.

    An operation that fails is reported and the later ones are still sent (the run's
    final status among them). A file an operation names that is no longer where it was
    (the run dir was copied or moved) is looked for at its place under the pending
    file's folder. A final status older than the run's (a resumed run ended since) is not
    sent, and then neither are the file's tags the run has since set again.

    Args:
        path: The file, which names the operations' lines in problems.
        pending: What `read_pending` read from it.

    Returns:
        (operations sent, one problem line per operation that failed).
    """
    from mlflow.tracking import MlflowClient

    target = pending.target
    client = MlflowClient(tracking_uri=target["tracking_uri"])
    ops = [op for _, op in pending.ops]
    sent, problems = 0, []
    ended_later = None  # whether a resumed run ended after this file's last status
    for number, op in pending.ops:
        if op[0] == "artifact" and target.get("run_dir"):
            op = ("artifact", _moved(op[1], Path(target["run_dir"]), path.parent), *op[2:])
        try:  # a run the store lacks fails each operation, not the replay
            if op[0] == "status" and _superseded(client, target["run_id"], op):
                continue
            if op[0] == "tags":
                if ended_later is None:
                    statuses = [o for o in ops if o[0] == "status"]
                    ended_later = bool(statuses) and _superseded(
                        client, target["run_id"], statuses[-1]
                    )
                if ended_later:  # the resumed run's own values (best_epoch) stand
                    have = client.get_run(target["run_id"]).data.tags
                    op = ("tags", {k: v for k, v in op[1].items() if k not in have})
            apply_op(client, target["run_id"], op)
        except Exception as err:
            problems.append(f"{path}:{number}: the {op[0]!r} operation failed: {err}")
            continue
        sent += 1
    return sent, problems


def _moved(original: str, run_dir: Path, folder: Path) -> str:
    """`original`, or where it is now that `run_dir` (which held it) is at `folder`."""
    path = Path(original)
    if path.exists() or not path.is_relative_to(run_dir):
        return original
    moved = folder / path.relative_to(run_dir)
    return str(moved) if moved.is_file() else original


def _superseded(client: Any, run_id: str, op: tuple) -> bool:
    """Whether the run ended later than a status operation says it did (a resumed run).

    A KILLED that `reap` set is no such end: it marked a run whose process was gone, and
    the status its process saved here (say FINISHED, when the server was away) is the
    truth.
    """
    if len(op) < 3:  # a file from before statuses carried their time
        return False
    run = client.get_run(run_id)
    reaped = run.info.status == "KILLED" and "reaped" in run.data.tags
    if reaped or run.info.end_time is None or run.info.end_time <= op[2]:
        return False
    log.info(
        "replay: the run ended later (%s) than this file's %s: not sent",
        run.info.status,
        op[1],
    )
    return True


def apply_op(client: Any, run_id: str, op: tuple) -> None:
    """Performs one logging operation with an MlflowClient.

    Operations hold plain values (they are queued, and saved as JSON when undelivered):
    `("metrics", [(key, value, timestamp_ms, step), ...])`, `("params", [(key, value),
    ...])`, `("tags", {key: value})`, `("artifact", path, artifact_path)`, `("inputs",
    [DatasetRecord.to_json(), ...])`, `("status", status, end_time_ms)` (files written
    before statuses carried their time hold `("status", status)`).
    """
    from mlflow.entities import Metric, Param, RunTag

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
        client.log_inputs(run_id, datasets=[_dataset_input(record) for record in args[0]])
    elif kind == "status":
        client.set_terminated(run_id, status=args[0], end_time=args[1] if len(args) > 1 else None)


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
