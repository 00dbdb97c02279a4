"""Acting on an audit: `data.exclude` drops train samples, `data.relabel` replaces labels.

Both read a CSV file with a `sample_id` column (the ids of `runner.data.splits`):

- `data.exclude=<csv>` drops those train samples. A file with an `is_label_issue`
  column (an audit's label_issues.csv, which lists every sample) drops only the rows
  where it is true, and none, with a warning, where no row is (an audit that found
  nothing).
- `data.relabel=<csv with sample_id,label>` gives those train samples the label named
  in `label`: a class name, or a class index when no class has that name. A file
  without `label` but with `suggested_label` (label_issues.csv) uses that column. With
  an `is_label_issue` column, only the rows where it is true.

`is_label_issue` takes True/False, 1/0, yes/no (any case); another value, an empty cell
included, is an error naming the line (a blank is no answer: read as false, it kept a
sample the person may have meant to flag). Column names and labels may have surrounding
spaces.

They apply after the real-world switches (so they act on the labels an audit saw) and
before k-fold. Only train samples change: an id of the val or test split, of a train
sample a switch dropped (`data.fraction`, `data.samples_per_class`,
`data.imbalance_ratio`), of a file that did not decode (bad_files.txt) or, for relabel,
of a sample data.exclude dropped is counted and reported. An id of no sample at all (a
typo, another data set's) is an error naming the file, and so is a file none of whose
ids is a train sample (saying which of them a switch or data.exclude dropped). The
counts go to the run's params (`data.num_excluded`, `data.num_relabeled`,
`data.num_label_changes`, `data.exclude_unmatched`, `data.relabel_unmatched`).
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch

from runner.config.choices import DATA_CURATION_KEYS
from runner.config.location_checks import CURATION_COLUMNS
from runner.data.decoding import DataError
from runner.data.id_files import FLAG_COLUMN, flagged_rows, read_id_file
from runner.data.splits import DataSplits

log = logging.getLogger(__name__)

# Keys of the data group that `apply_curation` consumes (the factories never see them).
KEYS = DATA_CURATION_KEYS
# The column that tells an audit's near_duplicates.csv.
DUPLICATES_COLUMN = "duplicate_ids"
# What `gone` maps an id data.exclude dropped to; no id is gone by default.
EXCLUDE_KEY = "data.exclude"
# What `gone` maps the id of a file that did not decode to (bad_files.txt lists it).
BAD_FILE_CAUSE = "data.on_bad_file=skip"
_NONE_GONE: Mapping[str, str] = MappingProxyType({})


def _matched_form(text: str) -> str:
    """An id or class name as compared: in Unicode's NFC form.

    A file or folder copied from macOS spells "ü" as "u" plus an accent (NFD); the same
    name typed elsewhere is one character. Class folders are matched the same way
    (`runner.data.sets.imagefolder.class_key`).
    """
    return unicodedata.normalize("NFC", text)


def _nothing_flagged(
    key: str,
    path: str,
    data: DataSplits,
    rows: list[tuple[int, dict[str, str]]],
    gone: Mapping[str, str] = _NONE_GONE,
) -> bool:
    """Whether the file is an audit's that flags none of its rows: nothing changes then.

    An audit that found nothing is no mistake: the run goes on unchanged, with a
    warning. The file's ids are checked first, as those of a file that flags some are:
    another data set's file, or one with ids of no sample, is refused.
    """
    if not rows or FLAG_COLUMN not in rows[0][1]:
        return False
    ids = list(dict.fromkeys(r["sample_id"] for _, r in rows))
    _, _, unmatched = _train_positions(data, ids)
    _check_unmatched(key, path, data, ids, unmatched, gone)
    log.warning("%s=%s: no row has %s true; nothing changes", key, path, FLAG_COLUMN)
    return True


def _train_positions(data: DataSplits, ids: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """Positions in the train split of `ids`, those ids, and the ids that are not train's.

    An id matches as written or, failing that, without surrounding spaces; in either
    Unicode form (`_matched_form`).
    """
    where = {_matched_form(str(sample_id)): i for i, sample_id in enumerate(data.train.ids)}
    matched, unmatched, positions = [], [], []
    for sample_id in ids:
        form = _matched_form(sample_id)
        position = where.get(form, where.get(form.strip()))
        if position is None:
            unmatched.append(sample_id)
        else:
            matched.append(sample_id)
            positions.append(position)
    return np.array(positions, dtype=np.int64), matched, unmatched


def _check_unmatched(
    key: str,
    path: str,
    data: DataSplits,
    ids: list[str],
    unmatched: list[str],
    gone: Mapping[str, str] = _NONE_GONE,
) -> None:
    """Reports the file's ids that are no train sample; refuses what cannot be meant.

    Args:
        key: data.exclude or data.relabel.
        path: The file.
        data: The splits the file acts on.
        ids: The file's ids (those it acts on).
        unmatched: Those of `ids` that are no train sample.
        gone: Ids of train samples this run dropped before the file acts, each with the
            setting that dropped it (`data.samples_per_class=2`, `data.exclude`).

    Raises:
        DataError: No id is a train sample, or some id is no sample at all.
    """
    if not unmatched:
        return
    others = {_matched_form(str(i)) for split in (data.val, data.test) for i in split.ids}
    gone = {_matched_form(sample_id): cause for sample_id, cause in gone.items()}
    # Where each unmatched id is, if anywhere: val/test, dropped (by what), or nowhere.
    in_other, strays = [], []
    dropped: dict[str, list[str]] = {}
    for sample_id in unmatched:
        form = _matched_form(sample_id)
        written = (form, form.strip())
        cause = next((gone[w] for w in written if w in gone), None)
        if others.intersection(written):
            in_other.append(sample_id)
        elif cause is not None:
            dropped.setdefault(cause, []).append(sample_id)
        else:
            strays.append(sample_id)
    if len(unmatched) == len(ids):
        where = []
        if in_other:
            where.append(f"{len(in_other)} are val/test samples, which are never changed")
        where += [f"{len(some)} were dropped by {cause}" for cause, some in dropped.items()]
        said = f" ({'; '.join(where)})" if where else ""
        # An example beside the train ids' look, unless every id is a sample this run
        # dropped: those look like train ids, being ones.
        unexplained = strays or in_other
        example = (
            f"; e.g. {unexplained[0]!r}, while train ids look like {data.train.ids[0]!r}"
            if unexplained
            else ""
        )
        raise DataError(
            f"{key}={path!r}: none of its {len(ids)} sample ids is a train sample of "
            f"{data.name}{said}{example}. {_unmatched_fix(key, ids, dropped)}."
        )
    if strays:
        raise DataError(
            f"{key}={path!r}: {len(strays)} of its sample ids name no sample of {data.name} "
            f"(e.g. {strays[0]!r}, while train ids look like {data.train.ids[0]!r}): fix or "
            "remove those rows, or use a file written for this data set (the same data "
            "config and data.split_seed)."
        )
    log.warning(
        "%s=%s: %d sample id(s) are not train samples and were ignored: %d of val/test%s (e.g. %s)",
        key,
        path,
        len(unmatched),
        len(in_other),
        "".join(f", {len(some)} dropped by {cause}" for cause, some in dropped.items()),
        unmatched[0],
    )


def _unmatched_fix(key: str, ids: list[str], dropped: dict[str, list[str]]) -> str:
    """The fix for a file none of whose ids is a train sample, by where they went."""
    if sum(map(len, dropped.values())) < len(ids):  # some are val/test or of no sample
        return (
            "Use a file written for this data set (the same data config and "
            "data.split_seed), e.g. <sweep dir>/audit/label_issues.csv"
        )
    if set(dropped) == {BAD_FILE_CAUSE}:
        return (
            "Those files do not decode (bad_files.txt lists them), so no run trains on "
            f"them: leave {key} out"
        )
    switches = [cause for cause in dropped if cause not in (EXCLUDE_KEY, BAD_FILE_CAUSE)]
    if not switches:
        return "Leave those samples out of one of the two files"
    also = (
        " and leave those data.exclude dropped out of one of the two files"
        if EXCLUDE_KEY in dropped
        else ""
    )
    return (
        f"To act on them, run without {' and '.join(switches)}{also}; or leave {key} out, "
        "as those samples are not in this run's train split anyway"
    )


def exclude_samples(
    data: DataSplits, path: str, gone: Mapping[str, str] = _NONE_GONE
) -> DataSplits:
    """Drops the train samples whose ids the file lists (see the module doc).

    Args:
        data: The splits.
        path: The exclude file.
        gone: Ids of train samples the switches dropped, each with the setting that did.

    Raises:
        DataError: The file is missing or lacks `sample_id`, or none of its ids is a
            train sample.
    """
    every_row = read_id_file(path, "data.exclude", CURATION_COLUMNS["data.exclude"])
    rows = flagged_rows(path, "data.exclude", every_row)
    ids = list(dict.fromkeys(r["sample_id"] for _, r in rows))
    if not ids and _nothing_flagged("data.exclude", path, data, every_row, gone):
        data.extra_params["data.num_excluded"] = 0
        data.extra_params["data.exclude_unmatched"] = 0
        return data
    if not ids:
        raise DataError(
            f"data.exclude={path!r} lists no sample to drop: leave data.exclude out, or "
            "give a file with the samples to drop."
        )
    positions, _, unmatched = _train_positions(data, ids)
    _check_unmatched("data.exclude", path, data, ids, unmatched, gone)
    positions = np.unique(positions)  # an id written with and without spaces is one sample
    if DUPLICATES_COLUMN in every_row[0][1]:
        log.warning(
            "data.exclude=%s lists every copy of each set of near duplicates, the one to "
            "keep included: all %d are dropped. To keep one of each, give a file with the "
            "others' ids",
            path,
            len(positions),
        )
    keep = np.ones(len(data.train), dtype=bool)
    keep[positions] = False
    if not keep.any():
        raise DataError(
            f"data.exclude={path!r} lists all {len(keep)} train samples of {data.name}, so "
            "nothing would be left to train on: give a file with only the samples to drop "
            f"(for an audit's label_issues.csv, keep its {FLAG_COLUMN} column)."
        )
    kept = torch.from_numpy(np.flatnonzero(keep))
    data = data.subset_train(kept)
    data.extra_params["data.num_excluded"] = len(positions)
    data.extra_params["data.exclude_unmatched"] = len(unmatched)
    log.info("data.exclude: dropped %d train samples (%d left)", len(positions), len(kept))
    return data


def _indices_allowed(class_names: list[str]) -> bool:
    """Whether a relabel may name a class by its index.

    Not where a class name is a number (folders `0`, `1`, `10`): an index would name
    another class than the one it spells.
    """
    return not any(name.isdecimal() for name in class_names)


def _class_index(value: str, classes: dict[str, int], by_index: bool) -> int | None:
    """The class a relabel row names: its name, else (`by_index`) its index; None = none.

    `classes` maps each class name, in matched form (`_matched_form`), to its index.
    """
    text = _matched_form(str(value).strip())
    if text in classes:
        return classes[text]
    if not by_index:
        return None
    # isdecimal, not isdigit: "²" is a digit that int() refuses.
    if text.lstrip("-").isdecimal() and 0 <= int(text) < len(classes):
        return int(text)
    return None


def relabel_samples(
    data: DataSplits, path: str, gone: Mapping[str, str] = _NONE_GONE
) -> DataSplits:
    """Gives the listed train samples the labels the file names (see the module doc).

    Args:
        data: The splits.
        path: The relabel file.
        gone: Ids of train samples the switches or data.exclude dropped in this run,
            each with the setting that did (named as such).

    Raises:
        DataError: The file is missing or lacks `sample_id` or a label column, a label names no
            class, one id gets two labels, an id is no sample, or none of its ids is a
            train sample.
    """
    columns = CURATION_COLUMNS["data.relabel"]
    every_row = read_id_file(path, "data.relabel", columns)
    rows = flagged_rows(path, "data.relabel", every_row)
    # The ids first: a file written for another data set names other classes too, and
    # its ids are what is wrong with it.
    ids = list(dict.fromkeys(row["sample_id"] for _, row in rows))
    positions, matched, unmatched = _train_positions(data, ids)
    _check_unmatched("data.relabel", path, data, ids, unmatched, gone)
    by_index = _indices_allowed(data.class_names)
    classes: dict[str, int] = {}
    for i, name in enumerate(data.class_names):
        classes.setdefault(_matched_form(name), i)  # the first, as list.index found
    wanted: dict[str, int] = {}
    unknown = []
    for line, row in rows:
        label = next(row[name] for name in columns[1] if name in row)
        index = _class_index(label, classes, by_index)
        if index is None:
            unknown.append(f"line {line}: {label!r}")
            continue
        if wanted.get(row["sample_id"], index) != index:
            raise DataError(
                f"data.relabel={path!r}: sample {row['sample_id']!r} is given two labels "
                f"(line {line}); keep one row per sample_id."
            )
        wanted[row["sample_id"]] = index
    if unknown:
        names = ", ".join(data.class_names[:20]) + (", ..." if data.num_classes > 20 else "")
        raise DataError(
            f"data.relabel={path!r}: {len(unknown)} label(s) name no class of {data.name} "
            f"({'; '.join(unknown[:5])}). A label is a class name ({names})"
            + (f" or a class index 0..{data.num_classes - 1}" if by_index else "")
            + "."
        )
    if not wanted and _nothing_flagged("data.relabel", path, data, every_row, gone):
        data.extra_params["data.num_relabeled"] = 0
        data.extra_params["data.num_label_changes"] = 0
        data.extra_params["data.relabel_unmatched"] = 0
        return data
    if not wanted:
        raise DataError(f"data.relabel={path!r} has no rows: leave data.relabel out.")
    # Every label named a class (else the error above), so `wanted` holds each id of
    # `ids`, and `matched` and `positions` are theirs.
    chosen: dict[int, tuple[str, int]] = {}  # train position -> (id as written, label)
    for sample_id, position in zip(matched, positions.tolist(), strict=True):
        earlier = chosen.setdefault(position, (sample_id, wanted[sample_id]))
        if earlier[1] != wanted[sample_id]:  # the same id, written with and without spaces
            raise DataError(
                f"data.relabel={path!r}: {earlier[0]!r} and {sample_id!r} name the same "
                "train sample and give it two labels; keep one row per sample_id."
            )
    positions = np.array(sorted(chosen), dtype=np.int64)
    labels = data.train.labels.clone()
    new = torch.tensor([chosen[p][1] for p in positions.tolist()], dtype=labels.dtype)
    changes = int((labels[torch.from_numpy(positions)].cpu() != new).sum())
    labels[torch.from_numpy(positions).to(labels.device)] = new.to(labels.device)
    data.train = data.train.with_labels(labels)
    data.extra_params["data.num_relabeled"] = len(positions)
    data.extra_params["data.num_label_changes"] = changes
    data.extra_params["data.relabel_unmatched"] = len(unmatched)
    log.info("data.relabel: %d train samples listed, %d labels changed", len(positions), changes)
    return data


def apply_curation(
    data: DataSplits,
    exclude: str | None = None,
    relabel: str | None = None,
    switched_out: Mapping[str, str] = _NONE_GONE,
) -> DataSplits:
    """Applies `data.exclude`, then `data.relabel` (each None = off).

    Args:
        data: The splits after the real-world switches.
        exclude: The exclude file, or None.
        relabel: The relabel file, or None.
        switched_out: Ids of the train samples the switches dropped, each with the
            settings that did (`data.samples_per_class=2`): a file's ids among them are
            named as such, not as ids of another data set.
    """
    gone = dict(switched_out)
    if exclude is not None:
        before = {str(i) for i in data.train.ids}
        data = exclude_samples(data, exclude, gone)
        gone.update(dict.fromkeys(before - {str(i) for i in data.train.ids}, EXCLUDE_KEY))
        _note_file(data, EXCLUDE_KEY, exclude)
    if relabel is not None:
        data = relabel_samples(data, relabel, gone)
        _note_file(data, "data.relabel", relabel)
    return data


def _note_file(data: DataSplits, key: str, path: str) -> None:
    """Keeps which file `key` read, and its digest as a param (`data.exclude_sha256`)."""
    source = Path(path).expanduser()
    data.curation_files[key] = str(source)
    data.extra_params[f"{key}_sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
