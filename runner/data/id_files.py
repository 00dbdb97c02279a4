"""Reading a file of sample ids: the CSV file `data.exclude` or `data.relabel` names.

A CSV file with a `sample_id` column, as a person or a spreadsheet writes it: a
byte-order mark, spaces around column names and values, short rows and blank lines are
read as meant; a file that is not UTF-8 CSV is an error naming the line. A file with an
`is_label_issue` column (an audit's label_issues.csv) is acted on only where that flag
is true; `runner.data.curation` does the acting.
"""

from __future__ import annotations

import csv
from pathlib import Path

from runner.config.location_checks import csv_file_problem
from runner.data.decoding import DataError

# A column that marks which rows of an exclude file to act on (label_issues.csv).
FLAG_COLUMN = "is_label_issue"
_TRUE = frozenset({"true", "t", "yes", "y", "1", "1.0"})
_FALSE = frozenset({"false", "f", "no", "n", "0", "0.0"})


def read_id_file(
    path: str, key: str, columns: tuple[tuple[str, ...], ...]
) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV file that must have `columns` (header checked first).

    Column names and the values of every column but `sample_id` are stripped of
    surrounding spaces (`sample_id, label` is a header a person writes); ids are kept as
    written, since file names may end in a space.

    Args:
        path: The file (`data.exclude` or `data.relabel`).
        key: The config key that named it, for messages.
        columns: Columns the file must have (`CURATION_COLUMNS`).

    Returns:
        (line number in the file, row) pairs.

    Raises:
        DataError: The file is missing, unreadable, not UTF-8 text or lacks a column.
    """
    problem = csv_file_problem(path, columns)
    if problem is not None:
        raise DataError(f"{key}={path!r}: {problem}")
    rows = []
    # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark.
    with Path(path).expanduser().open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = [name.strip() for name in next(reader)]
            for values in reader:
                if not any(v.strip() for v in values):
                    continue  # a blank line
                # A short row (a spreadsheet drops trailing empty cells) has empty cells.
                row = dict(
                    zip(header, [*values, *[""] * (len(header) - len(values))], strict=False)
                )
                rows.append((reader.line_num, _stripped(row)))
        except (UnicodeDecodeError, csv.Error) as err:
            raise DataError(
                f"{key}={path!r} cannot be read as CSV near line {reader.line_num + 1} "
                f"({err}): save it as UTF-8 CSV."
            ) from None
    return rows


def _stripped(row: dict[str, str | None]) -> dict[str, str]:
    return {
        name: (value or "") if name == "sample_id" else (value or "").strip()
        for name, value in row.items()
    }


def _flag_is_true(path: str, key: str, line: int, value: str) -> bool:
    """Whether an `is_label_issue` value is true; other values (an empty one too) are refused."""
    text = value.lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    wrong = (
        f"{FLAG_COLUMN} is empty"
        if not text
        else f"{FLAG_COLUMN}={value!r} is neither true nor false"
    )
    raise DataError(
        f"{key}={path!r}, line {line}: {wrong}; write True or False (or 1/0, yes/no) in "
        "every row of that column, or remove the row."
    )


def flagged_rows(path: str, key: str, rows: list[tuple[int, dict[str, str]]]) -> list:
    """The rows to act on: those whose `is_label_issue` is true, or all without that column."""
    if not rows or FLAG_COLUMN not in rows[0][1]:
        return rows
    return [(line, r) for line, r in rows if _flag_is_true(path, key, line, r[FLAG_COLUMN])]
