"""The MLflow store's plumbing: locks, retries, server health, runs of dead processes.

File locks (for first opens of a SQLite store, and the sweeps' locks), retries while
SQLite is locked, the server's health check, and marking RUNNING runs of dead processes
KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from runner.config.errors import UserError
from runner.config.location_checks import sqlite_path

log = logging.getLogger(__name__)

T = TypeVar("T")

# A page of an MLflow search: the most experiments one call of search_experiments returns.
PAGE_SIZE = 1000


def _flock(handle: IO[str], wait: bool) -> bool:
    """Takes an exclusive POSIX lock on an open file; False when another process holds it.

    Always True where POSIX locks do not exist (Windows): there, nothing is locked, and
    concurrent first runs must be started apart.
    """
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on `path`, waiting for it (it ends when the file closes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        _flock(handle, wait=True)
        yield


def _try_lock(path: Path) -> IO[str] | None:
    """One attempt at the lock at `path`: the open file that holds it, or None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    if _flock(handle, wait=False):
        return handle
    handle.close()
    return None


def hold_lock(path: Path, patience_s: float = 0.5) -> IO[str] | None:
    """Takes the lock at `path` for as long as the returned file stays open.

    None when another process holds it for `patience_s`: `is_locked` takes it for an
    instant, which must not pass for a holder. The lock ends with its process, however
    that ends, so a lock is never left behind by a killed process.
    """
    deadline = time.monotonic() + patience_s
    while (handle := _try_lock(path)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return handle


def is_locked(path: Path) -> bool:
    """Whether another process holds the lock at `path` (False when there is no file)."""
    if not path.is_file():
        return False
    handle = _try_lock(path)
    if handle is None:
        return True
    handle.close()
    return False


def missing_store_file(tracking_uri: str) -> Path | None:
    """The SQLite file a tracking URI names, when it is not there; else None.

    Opening such a URI would create an empty store, so a command that reads an existing
    store (reap, collect) asks this first.
    """
    database = sqlite_path(tracking_uri)
    return database if database is not None and not database.expanduser().is_file() else None


def store_lock(tracking_uri: str) -> contextlib.AbstractContextManager:
    """Held while a SQLite store is opened: its first opening creates the tables.

    Creating the tables runs MLflow's schema migrations (1-2 s); two processes doing
    that at once corrupt the migration, so they take turns under a file lock beside the
    database. A server needs no lock.
    """
    database = sqlite_path(tracking_uri)
    if database is None:
        return contextlib.nullcontext()
    return file_lock(database.with_name(database.name + ".lock"))


def with_retry(call: Callable[[], T], attempts: int = 8, first_delay_s: float = 0.05) -> T:
    """Runs `call`, retrying with jittered exponential backoff while SQLite is locked."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            if "database is locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(first_delay_s * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


# Client errors that sending the same operation again may cure: credentials fixed in the
# meantime (401, 403), a timeout (408), a rate limit (429).
_TRANSIENT_CLIENT_ERRORS = (401, 403, 408, 429)
# Errors that sending again gives again: a file that is gone or may not be written, and a
# store client module that is not installed (boto3 for an s3:// artifact location).
_LASTING_ERRORS = (
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ImportError,
)


def refused_for_good(err: Exception) -> bool:
    """Whether a logging operation failed for good: sending it again gets the same answer.

    That is an HTTP 4xx answer (a changed param value, a run deleted meanwhile), a local
    file error (a file to log that is gone, an artifact folder that may not be written),
    or a missing module (the client of an artifact store). A store that is away (no
    answer, 5xx) has not refused anything.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(err, _LASTING_ERRORS):
        return True
    if not isinstance(err, MlflowException):
        return False
    status = err.get_http_status_code()
    return 400 <= status < 500 and status not in _TRANSIENT_CLIENT_ERRORS


class TrackingUnavailableError(UserError, RuntimeError):
    """The tracking server cannot be reached; the message names it and the fix."""


def server_reachable(uri: str, timeout_s: float = 5.0) -> bool:
    """Whether an MLflow server answers its /health endpoint within `timeout_s`.

    Asks as MLflow's own client does (requests): credentials in the URL, and the TLS
    settings MLFLOW_TRACKING_SERVER_CERT_PATH and MLFLOW_TRACKING_INSECURE_TLS, apply.
    Any HTTP answer below 500 counts but 404: a server that wants other credentials is
    up, and MLflow's own calls then say what it wants; one without /health is another
    web server, or the URL misses the server's path (MLflow's calls failed later, after
    the data was built).
    """
    import requests

    verify: bool | str = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
    verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or verify
    try:
        reply = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s, verify=verify)
    except (requests.RequestException, ValueError):
        return False
    return reply.status_code < 500 and reply.status_code != 404


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def every_page(search: Callable[..., Any], page_size: int = PAGE_SIZE) -> list[Any]:
    """Everything a paged MLflow search finds, read page after page.

    Args:
        search: Called as `search(max_results=, page_token=)`; returns MLflow's PagedList,
            whose `token` names the next page (None after the last).
        page_size: Items a page holds.
    """
    found: list[Any] = []
    token = None
    while True:
        page = search(max_results=page_size, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def reap_stale_runs(
    client: Any, experiment_ids: list[str], host: str | None = None, page_size: int = PAGE_SIZE
) -> list[str]:
    """Marks KILLED the RUNNING runs whose process on this host no longer exists.

    A run killed with SIGKILL (or by the OOM killer) cannot end its own MLflow run; its
    `runner.pid` and `runner.host` tags tell whether its process is gone.

    Args:
        client: An MlflowClient.
        experiment_ids: Experiments to search.
        host: The host whose runs to check; None = this one.
        page_size: Runs read per page of the search.

    Returns:
        The ids of the runs marked KILLED.
    """
    host = host or socket.gethostname()
    reaped = []
    # Every page is read before any run is marked: a run marked KILLED leaves the
    # RUNNING runs the next page's offset counts, which would skip as many.
    runs = every_page(
        lambda **page: client.search_runs(
            experiment_ids, filter_string="attributes.status = 'RUNNING'", **page
        ),
        page_size,
    )
    for run in runs:
        tags = run.data.tags
        pid = tags.get("runner.pid", "")
        if tags.get("runner.host") != host or not pid.isdigit() or process_alive(int(pid)):
            continue
        client.set_tag(run.info.run_id, "reaped", f"process {pid} on {host} was gone")
        client.set_terminated(run.info.run_id, status="KILLED")
        reaped.append(run.info.run_id)
    report_reaped(reaped)
    return reaped


def report_reaped(run_ids: list[str]) -> None:
    """Logs the runs `reap_stale_runs` marked KILLED (nothing when there are none)."""
    if run_ids:
        log.warning("marked %d stale run(s) of dead processes KILLED: %s", len(run_ids), run_ids)
