"""An earlier audit that a redone one would lose, kept aside in `audit.replaced-<time>/`.

`python -m runner.sweeps audit <sweep dir>` (or a resumed sweep) writes the audit's files
again. The earlier ones are kept where the new audit would lose something: an audit of
more samples (a fold's outputs went missing since), or CSV files changed since the audit
wrote them (README suggests setting `is_label_issue` by hand). Each audit records the
digests of the CSV files as it wrote them (`.written.json`) to tell the second case.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

from runner.config.files import set_aside

log = logging.getLogger(__name__)

# The digest of each CSV file as the audit wrote it. A file that differs was changed
# since (README suggests setting is_label_issue by hand), and a redone audit keeps it.
WRITTEN_RECORD = ".written.json"
ACTED_ON = ("label_issues.csv", "near_duplicates.csv", "outliers.csv")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_written(out: Path) -> None:
    """Records the digests of the CSV files the audit just wrote in `out`."""
    written = {name: _digest(out / name) for name in ACTED_ON if (out / name).is_file()}
    (out / WRITTEN_RECORD).write_text(json.dumps(written, indent=2), encoding="utf-8")


def changed_files(out: Path) -> list[str]:
    """The audit's CSV files in `out` that are not as it wrote them (all, without a record)."""
    try:
        written = json.loads((out / WRITTEN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        written = {}
    if not isinstance(written, dict):
        written = {}
    return [
        name
        for name in ACTED_ON
        if (out / name).is_file() and written.get(name) != _digest(out / name)
    ]


def keep_earlier_audit(out: Path, num_samples: int) -> Path | None:
    """Moves an earlier audit a new one would lose to `audit.replaced-<time>/`.

    Kept are an audit of more samples (a fold job's out_of_fold.npz that is missing or
    unreadable leaves its fold out of an audit redone) and one whose CSV files were
    changed since it wrote them (rows flagged by hand).

    Args:
        out: The audit folder, `<sweep dir>/audit`.
        num_samples: The samples the new audit covers.

    Returns:
        Where the earlier audit is now, or None when it was left in place (or there was
        none).
    """
    earlier = out / "label_issues.csv"
    if not earlier.is_file():
        return None
    with earlier.open(newline="", encoding="utf-8") as handle:
        audited = sum(1 for _ in csv.reader(handle)) - 1  # less the header
    changed = changed_files(out)
    if audited <= num_samples and not changed:
        return None
    aside = set_aside(out)
    if audited > num_samples:
        log.warning(
            "audit: the earlier audit covered %d samples and this one covers %d (a fold's "
            "outputs are missing); the earlier one is kept in %s",
            audited,
            num_samples,
            aside,
        )
    elif not (aside / WRITTEN_RECORD).is_file():
        log.warning(
            "audit: the earlier audit kept no record of the files it wrote, so edits to "
            "them cannot be told from its own rows; it is kept in %s",
            aside,
        )
    else:
        log.warning(
            "audit: %s of the earlier audit differ from what it wrote (edited by hand?); "
            "the new audit does not keep those edits, and the earlier one is kept in %s",
            ", ".join(changed),
            aside,
        )
    return aside
