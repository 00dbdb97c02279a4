"""Checks of the places a config names: folders to write, tracking and artifact stores, CSV files.

Each returns None when the place is fine, else the part of the error message that says
what is wrong or what was expected. `value_checks` maps config keys to some of them; the
code that later opens a place uses the same helpers (`sqlite_path`, `local_folder`,
`csv_file_problem`).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

# `ckpt` names a file, or a model in the MLflow store by one of these URIs.
RUN_URI_PREFIX = "runs:/"
REGISTRY_URI_PREFIX = "models:/"


def ckpt_file_problem(ckpt: str) -> str | None:
    """Why `ckpt` names no checkpoint file, or None (also for an MLflow URI: the store's).

    A folder is named with the best.pt it holds, when it holds one.
    """
    if ckpt.startswith((RUN_URI_PREFIX, REGISTRY_URI_PREFIX)):
        return None
    path = Path(ckpt).expanduser()
    if path.is_file():
        return None
    hint = ""
    if path.is_dir():  # a run dir or its checkpoints/: the best.pt in it, if any
        found = (path / "best.pt", path / "checkpoints" / "best.pt")
        there = next((p for p in found if p.is_file()), None)
        hint = f" (a folder: point at {there})" if there else " (a folder)"
    return (
        f"no such file{hint}. Pass a run's checkpoints/best.pt or ckpt=runs:/<mlflow run "
        "id> or ckpt=models:/<registered model>/<version> (or /latest, or @<alias>)"
    )


def folder_problem(folder: str) -> str | None:
    """Why a folder cannot be made and written (None when it can).

    Its nearest existing folder must take a new file: `os.access` says yes to root for
    /proc and /sys, so a file is made there and removed.
    """
    existing = Path(folder).expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".probe-"):
            return None
    except OSError as err:
        return f"cannot write in {existing} ({err.strerror or err})"


def image_folder_root_problem(root: Any) -> str | None:
    """Why `root` is no data set folder in the ImageFolder layout; None when it has train/.

    Checked when the config is (a train run's data.root), before the run dir is made, and
    again where the folder is listed.
    """
    path = Path(str(root)).expanduser()
    if path.is_file():  # "(it does not exist)" sent the user looking for a missing path
        return (
            f"data.root={str(path)!r} is a file, not a folder: data.root must be the data "
            "set's folder, the one that holds train/<class>/<image> (with optional val/ and "
            "test/)."
        )
    if not (path / "train").is_dir():
        found = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else []
        where = f"it holds {found}" if path.is_dir() else "it does not exist"
        return (
            f"data.root={str(path)!r} has no train/ folder ({where}). Expected the "
            "ImageFolder layout root/train/<class>/<image>, with optional val/ and test/."
        )
    return None


def local_folder(location: str) -> str | None:
    """The folder an artifact location names: a path, or a `file:` URI's path.

    None for another URI (`s3://bucket/x`, `mlflow-artifacts:/x`, `dbfs:/x`): its store
    answers for it. A one-letter scheme is a Windows drive (`C:`), a path.
    """
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    return None if len(parsed.scheme) > 1 else location


# The module MLflow's client uploads artifacts with, and its package, by the artifact
# location's scheme.
_ARTIFACT_CLIENTS = {
    "s3": ("boto3", "boto3"),
    "gs": ("google.cloud.storage", "google-cloud-storage"),
    "wasbs": ("azure.storage.blob", "azure-storage-blob"),
    "abfss": ("azure.storage.filedatalake", "azure-storage-file-datalake"),
}


def artifact_location_problem(value: Any) -> str | None:
    """logger.artifact_location: null, a folder to write, or a store whose client is here."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        return "a folder path or URI, or null"
    client, package = _ARTIFACT_CLIENTS.get(urlparse(value).scheme, (None, None))
    if client is not None and not _importable(client):
        # Else each upload failed as an unreachable store: the run trained to its end and
        # stayed RUNNING in MLflow, its metrics queued behind the model.
        return (
            f"an artifact store whose client is installed: {value.partition(':')[0]}:// needs "
            f"the Python module {client} (pip install {package})"
        )
    folder = local_folder(value)
    problem = None if folder is None else folder_problem(folder)
    return None if problem is None else f"a folder that can be written ({problem})"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (google.cloud) is missing
        return False


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for a server or another store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///"))


def tracking_uri_problem(value: Any) -> str | None:
    """A server URL, or a `sqlite:///` file whose folder exists or can be made."""
    expected = "a tracking URI: sqlite:///<path>/mlflow.db or a server URL (http://host:5000)"
    if not isinstance(value, str) or not value:
        return expected
    if value.startswith("file:") or ("://" not in value and value != "databricks"):
        # MLflow 3 keeps its file store in maintenance mode and refuses to open one.
        return expected + "; MLflow's file store (a folder) is not supported"
    if value.startswith(("http://", "https://")) and not urlparse(value).hostname:
        return expected + f"; {value!r} names no host"  # else "the server does not answer"
    database = sqlite_path(value)
    if database is None:
        return database_driver_problem(value)
    problem = store_file_problem(database, sqlite=True)
    return None if problem is None else f"a SQLite file, but {problem}"


def store_file_problem(path: Path, sqlite: bool) -> str | None:
    """Why a store's file (a SQLite database, a journal) cannot be opened or made here.

    Its folder must be one that can be made and written (`folder_problem`: the check
    once asked `os.access`, which says yes to root for /proc, and the store then failed
    with a traceback after the data was built).

    Args:
        path: The file.
        sqlite: Whether it must be a SQLite database (then an existing file is checked).
    """
    path = path.expanduser().absolute()
    if path.is_dir():
        return f"{path} is a folder: name a file in it (.../{'x.db' if sqlite else 'x.log'})"
    if sqlite and path.is_file() and path.stat().st_size:
        with path.open("rb") as handle:
            if handle.read(16) != b"SQLite format 3\x00":  # every SQLite file's first bytes
                return f"{path} is another kind of file: choose another path"
    problem = folder_problem(str(path.parent))
    if problem is not None:
        return f"its folder cannot be made and written ({problem}): choose another path"
    return None


# The SQL databases MLflow keeps a tracking store in, besides SQLite (a URL's scheme,
# before any `+driver`).
_DATABASES = ("postgresql", "mysql", "mssql")


def database_driver_problem(uri: str) -> str | None:
    """Why SQLAlchemy cannot open a database URL here: its driver module is missing."""
    database = uri.partition("://")[0].partition("+")[0]
    if database not in _DATABASES:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        make_url(uri).get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError) as err:
        return f"a database URL SQLAlchemy can read ({err})"
    except ImportError as err:
        return (
            f"a database whose driver is installed; {err}: install that module, or name "
            f"an installed driver in the URL ({database}+<driver>://...)"
        )
    return None


def fallback_uri_problem(value: Any) -> str | None:
    """The store a run falls back to when its server is away: a local SQLite file."""
    if value is None:
        return None
    if not isinstance(value, str) or sqlite_path(value) is None:
        # A server there failed late, with a traceback, once the data and model were built.
        return "a local store, sqlite:///<path>/mlflow.db, that needs no server (or null)"
    return tracking_uri_problem(value)


def csv_header(path: Any) -> list[str]:
    """The column names of a CSV file (its first row, names stripped); [] for an empty file.

    Read as UTF-8 with an optional byte-order mark, which spreadsheets write first.
    """
    with Path(str(path)).expanduser().open(newline="", encoding="utf-8-sig") as handle:
        return [name.strip() for name in next(csv.reader(handle), [])]


def csv_file_problem(path: Any, columns: tuple[tuple[str, ...], ...]) -> str | None:
    """What is wrong with a CSV file the config names (missing, unreadable, lacks a column).

    Reads the header only, so it is cheap enough for the config checks; the data code
    (`runner.data.curation`) asks the same before it reads the rows.

    Args:
        path: The file, absolute or relative to the working directory.
        columns: Columns the header must have, each as a tuple of names any one of
            which will do (`CURATION_COLUMNS`).

    Returns:
        None when the file is fine, else what is wrong and how to fix it.
    """
    file = Path(str(path)).expanduser()
    if file.is_dir():
        return "is a folder; give the path of a CSV file in it"
    if not file.is_file():
        return f"no such file (relative paths start at {Path.cwd()}); give the path of a CSV file"
    try:
        header = csv_header(file)
    except UnicodeDecodeError as err:
        return f"is not UTF-8 text ({err}); save it as UTF-8 CSV"
    except (OSError, csv.Error) as err:
        return f"cannot be read as CSV ({err}); give a CSV file with a header row"
    missing = [" or ".join(names) for names in columns if not set(names) & set(header)]
    if missing:
        found = ", ".join(header[:10]) or "none"
        needed = ", ".join(
            names[0] + (f" (or {' or '.join(names[1:])})" if names[1:] else "") for names in columns
        )
        return (
            f"has no {' and no '.join(missing)} column (its columns: {found}); the file "
            f"needs a header row with {needed}{_delimiter_hint(header)}"
        )
    return None


# Delimiters a file other than comma-separated CSV may use, to name the one a header has.
_OTHER_DELIMITERS = {";": "a semicolon", "\t": "a tab", "|": "a vertical bar"}


def _delimiter_hint(header: list[str]) -> str:
    """What to say of a header that is one column holding another delimiter, if it is.

    A spreadsheet set to a locale with decimal commas saves "CSV" with semicolons, and a
    copy from a table often has tabs: the whole header is then read as one column name,
    and "no sample_id column" alone does not say why.
    """
    if len(header) != 1:
        return ""
    counts = {mark: header[0].count(mark) for mark in _OTHER_DELIMITERS}
    mark = max(counts, key=counts.__getitem__)
    if not counts[mark]:
        return ""
    return (
        f". The file must be comma-separated, but its header seems to use {mark!r} "
        f"({_OTHER_DELIMITERS[mark]}) between columns: save it as CSV with commas "
        '(a spreadsheet\'s "CSV UTF-8 (comma delimited)")'
    )


# The columns the files of data.exclude and data.relabel need (checked at start, read
# when the data is built), each a tuple of names of which the first present is read: a
# relabel file's labels are its `label` column, else the `suggested_label` of an audit's
# label_issues.csv.
CURATION_COLUMNS = {
    "data.exclude": (("sample_id",),),
    "data.relabel": (("sample_id",), ("label", "suggested_label")),
}


def predictions_file(output: str) -> Path:
    """The file `predict.output` names: itself, or predictions.csv in the folder it names.

    A folder is one that exists, or a path that ends with `/`. Predict writes there, and
    a sweep's start check finds jobs that would write the same file by it.
    """
    path = Path(output).expanduser()
    if path.is_dir() or output.endswith(("/", os.sep)):
        path = path / "predictions.csv"
    return path
