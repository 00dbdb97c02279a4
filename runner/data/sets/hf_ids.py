"""Sample ids of a Hugging Face data set's records, and the refusal of shared samples.

A record's id is its image file's path under the data set's folder where it has one,
else `<data set>:<split>:<index>` (see `hf.py`). A sample in train and in val or test is
refused; other repeats get unique ids.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from runner.data.decoding import DataError
from runner.data.sets.hf_columns import import_datasets, read_from
from runner.data.splits import path_id

log = logging.getLogger(__name__)


def record_files(dataset, image_key: str, folder: Path | None) -> list[str | None]:
    """Per record of a split, the absolute path of its image file, or None.

    Args:
        dataset: The split (images undecoded).
        image_key: The image column.
        folder: The data set's local folder, or a table file's, which relative paths are
            read from; None = no file paths (a Hub name).

    Returns:
        Per record, its file's absolute path (os.path only, links not followed); None for
        a record without a path, or with its image bytes in the table.
    """
    if folder is None:
        return [None] * len(dataset)
    column = dataset.select_columns([image_key]).flatten()  # Image -> .bytes, .path columns
    if f"{image_key}.path" in column.column_names:
        paths = column[f"{image_key}.path"]  # reads the paths only, not the bytes
        if f"{image_key}.bytes" in column.column_names:
            # A record with its bytes is decoded from them: its path is only the name the
            # file had (a Hub parquet file's `0.png` in every split), no file here.
            stored = column.with_format("arrow")[f"{image_key}.bytes"]  # in record order
            embedded = stored.is_valid().to_pylist()
            paths = [None if inline else path for path, inline in zip(paths, embedded, strict=True)]
    elif image_key in column.column_names and column.features[image_key].dtype in (
        "string",
        "large_string",  # how datasets reads a CSV's or JSON's text column
    ):
        paths = column[image_key]
    else:
        return [None] * len(dataset)
    # A relative path is where `read_from` reads it: under the folder, else from the
    # working directory (then outside the folder: an index id). One stat per such path.
    return [
        os.path.abspath(path if os.path.isabs(path) else read_from(folder, path) or folder / path)
        if path
        else None
        for path in paths
    ]


def source_rows(dataset, spec: str, label: str) -> list[str] | None:
    """Per record of a slice, `<label>:<split>:<row>`: its row in the whole split.

    Slices of one split (`train[:80%]`, `train[70%:]`) that share rows name them alike
    here, as the split's own index ids do, while the slices' index ids differ (they name
    the slice).

    Args:
        dataset: The loaded split or slice.
        spec: What it was loaded as (`data.split_*`).
        label: The data set's name in its index ids.

    Returns:
        The rows, or None for a split name, or where the whole split's size is unknown.
    """
    if "[" not in spec:
        return None
    sizes = {name: info.num_examples for name, info in (dataset.info.splits or {}).items()}
    try:
        parts = import_datasets().ReadInstruction.from_spec(spec).to_absolute(sizes)
    except (KeyError, ValueError, TypeError):  # a split of unknown size
        return None
    rows = [
        f"{label}:{part.splitname}:{row}" for part in parts for row in range(part.from_, part.to)
    ]
    return rows if len(rows) == len(dataset) else None


def record_ids(files: Sequence[str | None], folder: Path | None, label: str) -> list[str]:
    """Sample ids of a split: file paths under `folder` where records have them.

    Args:
        files: Per record, its file's absolute path or None (`record_files`).
        folder: The data set's local folder, or a table file's; None = no file paths.
        label: `<data set>:<split>`, the prefix of index ids.

    Returns:
        Per record, its path relative to `folder` (posix) when it is a file there, else
        `<label>:<index>`.
    """
    ids = [f"{label}:{i}" for i in range(len(files))]
    if folder is None:
        return ids
    bases = {os.path.abspath(folder), os.path.realpath(folder)}
    for i, absolute in enumerate(files):
        if not absolute:
            continue
        for base in bases:
            if absolute.startswith(base + os.sep):
                ids[i] = path_id(os.path.relpath(absolute, base))
                break
    return ids


def refuse_copies_in_a_carve(
    train_samples: Sequence[str],
    specs: dict[str, str | None],
    val_fraction: float,
    test_fraction: float,
) -> None:
    """Refuses a train split that lists a file twice when val or test is carved from it.

    The carve draws rows one by one, so the copies of a file could land in train and in
    val or test: the run would test on an image it trains on.

    Raises:
        DataError: Naming the split, a repeated file and the fixes.
    """
    fractions = {"val": val_fraction, "test": test_fraction}
    carved = [split for split, share in fractions.items() if specs[split] is None and share]
    if not carved:
        return
    counts = Counter(train_samples)
    repeated = [sample_id for sample_id, count in counts.items() if count > 1]
    if repeated:
        raise DataError(
            f"data.split_train={specs['train']!r} lists {len(repeated)} file(s) more than "
            f"once (e.g. {repeated[0]!r}, {counts[repeated[0]]} times) and "
            f"{' and '.join(carved)} is carved from it: the copies of a file could be "
            "trained on and tested. Remove the repeated rows, or give the data set "
            f"{' and '.join(carved)} rows of its own "
            f"({', '.join(f'data.split_{split}=...' for split in carved)})"
        )


def unique_ids(
    ids: dict[str, list[str]], specs: dict[str, str | None], samples: dict[str, list[str]]
) -> dict[str, list[str]]:
    """Refuses a train sample in val or test; other repeats get unique ids.

    A file listed twice in one split, or in both val and test (a set with only train and
    test, both named `test`: model selection on the test split, which the log says),
    becomes `<split>:<i>:<path>`.

    Args:
        ids: Each split's sample ids.
        specs: Each split's spec (`data.split_*`).
        samples: Each split's samples as compared: the id, or the path of a file outside
            the data set's folder.

    Raises:
        DataError: One file (or one row of a split, `source_rows`) is in train and in
            val or test: the run would validate or test on what it trains on.
    """
    homes: dict[str, set[str]] = {}  # sample -> the splits that list it
    for split, split_samples in samples.items():
        for sample in split_samples:
            homes.setdefault(sample, set()).add(split)
    shared = sorted(i for i, where in homes.items() if "train" in where and len(where) > 1)
    if shared:
        pairs = sorted({tuple(s for s in ids if s in homes[i]) for i in shared})  # train first
        named = "; ".join(
            " and ".join(f"data.split_{s}={specs[s]!r}" for s in pair) for pair in pairs
        )
        raise DataError(
            f"{named} share {len(shared)} sample(s) (e.g. {shared[0]}): the run would "
            "validate or test on images it trains on. Choose splits that do not overlap, or "
            "set data.split_val / data.split_test=null to carve them from train"
        )
    if any(len(where) > 1 for where in homes.values()):
        log.warning(
            "data.split_val=%r and data.split_test=%r share samples: the best epoch is chosen "
            "on test images, so the test figures are optimistic",
            specs.get("val"),
            specs.get("test"),
        )
    seen_in: dict[str, list[str]] = {}  # id -> the split of each time it is listed
    for split, split_ids in ids.items():
        for sample_id in split_ids:
            seen_in.setdefault(sample_id, []).append(split)
    if all(len(splits) == 1 for splits in seen_in.values()):
        return ids
    return {
        split: [i if len(seen_in[i]) == 1 else f"{split}:{n}:{i}" for n, i in enumerate(split_ids)]
        for split, split_ids in ids.items()
    }
