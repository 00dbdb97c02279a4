"""The pending-log file: the logging operations a tracking server never took.

`write_pending` saves them as JSON lines (a header naming the store, the run and the
folder, then one operation per line); `python -m runner.tracking replay <file>` reads the
file whole (`read_pending`) and sends it (`replay_pending`).
"""

from __future__ import annotations

import glob
import json
import logging
import re
from pathlib import Path
from typing import Any, NamedTuple

from runner.config.errors import UserError
from runner.tracking.outbox import OP_KINDS, apply_op

log = logging.getLogger(__name__)


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


def sent_name(path: Path) -> Path:
    """The name a replayed file is kept under: the first of `_SENT`'s names not taken."""
    done, copies = path.with_name(f"{path.name}.sent"), 1
    while done.exists():  # an earlier replay's: kept too
        copies += 1
        done = path.with_name(f"{path.name}.sent{copies}")
    return done


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
        if not (isinstance(value, list) and value and value[0] in OP_KINDS):
            raise PendingFileError(
                f"{path}:{number}: this line is not a logging operation (a JSON list whose "
                f"first item is one of {', '.join(OP_KINDS)}): {_shown(text)}; nothing "
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
