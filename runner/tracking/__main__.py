"""Maintenance of a tracking store.

python -m runner.tracking reap [--tracking-uri URI]   # stale RUNNING runs -> KILLED
python -m runner.tracking replay FILE                 # send logs a server missed
python -m runner.tracking open --tracking-uri URI --experiment NAME
                                    # a training run's helper (runner/tracking/opening.py)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from runner.config.location_checks import store_file_problem, tracking_uri_problem
from runner.config.redaction import public_uri
from runner.config.resolvers import REPO_ROOT
from runner.tracking.opening import serve
from runner.tracking.pending import (
    PendingFileError,
    pending_file_problem,
    pending_target,
    read_pending,
    replay_pending,
    sent_name,
)
from runner.tracking.store import (
    every_page,
    missing_store_file,
    reap_stale_runs,
    server_reachable,
    store_lock,
)

DEFAULT_URI = f"sqlite:///{REPO_ROOT / 'outputs' / 'mlflow.db'}"


def reap_problem(tracking_uri: str) -> str | None:
    """Why `reap` cannot look into this store (None when it can), asked before MLflow is.

    Opening a SQLite file that is not there would create an empty store, and MLflow's
    client retries a server that does not answer for minutes. A folder (MLflow's file
    store, which MLflow 3 refuses to open) and a file that is not SQLite ended in
    tracebacks: the config's check of logger.tracking_uri answers for them.
    """
    database = missing_store_file(tracking_uri)
    if database is not None and not database.expanduser().is_dir():
        return (
            f"no store at {database}: nothing to reap. Pass the tracking URI your runs "
            "logged to (their logger.tracking_uri)"
        )
    expected = tracking_uri_problem(tracking_uri)
    if expected is not None:
        path = Path(tracking_uri).expanduser()
        named_bare = "://" not in tracking_uri and path.is_file()  # sqlite:/// left out?
        if named_bare and store_file_problem(path, sqlite=True) is None:
            expected += f"; for this SQLite file, sqlite:///{path.absolute()}"
        return f"is invalid: expected {expected}"
    if tracking_uri.startswith(("http://", "https://")) and not server_reachable(tracking_uri):
        return "the tracking server does not answer: start it, or try again when it is up"
    return None


def replay_problem(path: Path) -> str | None:
    """Why the store a pending-log file names cannot take it now (None when it can)."""
    uri = pending_target(path)["tracking_uri"]
    database = missing_store_file(uri)
    if database is not None:  # opening it would create an empty store
        return f"its store {database} is not there: restore it, then replay"
    if uri.startswith(("http://", "https://")) and not server_reachable(uri):
        # MLflow's client would retry it for minutes.
        return f"its server {public_uri(uri)} does not answer: try again when it is up"
    return None


def main(argv: list[str] | None = None) -> int:
    """Runs a maintenance command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "replay":
        return _replay(args)
    if args.command == "open":
        if not args.tracking_uri:
            parser.error("open needs --tracking-uri or MLFLOW_TRACKING_URI")
        # Replies go to the real stdout; anything a library prints goes to stderr.
        replies, sys.stdout = sys.stdout, sys.stderr
        return serve(args.tracking_uri, args.experiment, args.artifact_location, sys.stdin, replies)
    return _reap(args)


def _parser() -> argparse.ArgumentParser:
    """The command line: the `reap`, `replay` and `open` subcommands and their options."""
    parser = argparse.ArgumentParser(
        prog="python -m runner.tracking",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the docstring's command lines
    )
    commands = parser.add_subparsers(dest="command", required=True)
    reap = commands.add_parser(
        "reap", help="mark RUNNING runs of processes on this host that are gone as KILLED"
    )
    reap.add_argument("--tracking-uri", default=DEFAULT_URI, help=f"default: {DEFAULT_URI}")
    replay = commands.add_parser(
        "replay", help="send the logs saved in a run dir's mlflow_pending.jsonl to the server"
    )
    replay.add_argument("file", type=Path)
    opener = commands.add_parser(
        "open",
        help="open the store, the experiment and then the run a training run asks for "
        "on stdin (a run starts this beside its data and model build)",
    )
    opener.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="default: $MLFLOW_TRACKING_URI (a password in it is not shown by ps)",
    )
    opener.add_argument("--experiment", required=True)
    opener.add_argument("--artifact-location", default=None)
    return parser


def _replay(args: argparse.Namespace) -> int:
    """Sends the logs saved in `args.file` to their store; returns the exit status."""
    problem = pending_file_problem(args.file) or replay_problem(args.file)
    if problem is not None:
        print(f"Error: {args.file}: {problem}", file=sys.stderr)
        return 1
    try:  # every line is read before any is sent: a bad one is named before a send
        pending = read_pending(args.file)
    except PendingFileError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    dropped = ""
    if pending.cut_short is not None:
        number, text = pending.cut_short
        dropped = f"; its line {number}, cut short, was not sent"
        print(
            f"Warning: {args.file}:{number}: the last line is cut short (the run was "
            f"stopped while it saved it): {text[:80]!r} is not sent, the "
            f"{len(pending.ops)} complete line(s) before it are",
            file=sys.stderr,
        )
    sent, failed = replay_pending(args.file, pending)
    for line in failed:
        print(f"Error: {line}", file=sys.stderr)
    print(f"{sent} logging operation(s) sent, {len(failed)} failed{dropped}")
    if failed:
        return 1
    # Kept, under a name that a resumed run neither warns of nor appends to: a later
    # outage's file is replayed alone, not with these operations a second time.
    done = sent_name(args.file)
    args.file.rename(done)
    kept = " (with the line cut short, which was not sent)" if dropped else ""
    print(f"{args.file} is now {done}{kept}")
    return 0


def _reap(args: argparse.Namespace) -> int:
    """Marks the stale RUNNING runs of `args.tracking_uri` KILLED; returns the exit status."""
    problem = reap_problem(args.tracking_uri)
    if problem is not None:
        print(f"Error: --tracking-uri={public_uri(args.tracking_uri)}: {problem}", file=sys.stderr)
        return 1
    from mlflow.tracking import MlflowClient

    with store_lock(args.tracking_uri):
        client = MlflowClient(tracking_uri=args.tracking_uri)  # opens (or creates) the store
    experiments = [e.experiment_id for e in every_page(client.search_experiments)]
    reaped = reap_stale_runs(client, experiments) if experiments else []
    print(f"{len(reaped)} stale run(s) marked KILLED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
