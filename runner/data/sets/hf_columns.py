"""What a Hugging Face data set's splits and columns must hold, checked before decoding.

A slice `datasets` cannot read, a label column of lists, fractions or gaps, and an image
column of numbers are refused with the key to change (`data.split_*`, `data.label_key`,
`data.image_key`), before any image is decoded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runner.data.decoding import DataError


def import_datasets():
    """The `datasets` package, or an ImportError naming the extra that installs it."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "data=hf needs the Hugging Face `datasets` package: pip install -e '.[hf]'"
        ) from err
    return datasets


def refuse_bad_slice(split: str, spec: str) -> None:
    """Refuses a slice that `datasets` cannot read, before any table is built.

    `datasets` parses a slice only after it has built the whole split, and its
    ValueError ("Percent slice boundaries must be > -100 and < 100.") names no key.

    Raises:
        DataError: `spec` has a slice (`[...]`) that `datasets` does not accept.
    """
    if "[" not in str(spec):  # a split name: its loader says whether it has one
        return
    try:
        import_datasets().ReadInstruction.from_spec(str(spec))
    except ValueError as err:
        reason = str(err).rstrip(".")
        raise DataError(
            f"data.split_{split}={spec!r} is not a slice datasets can read ({reason}). Use a "
            "split name or a slice of one such as train[:90%], train[90%:] or train[:500] "
            "(percentages between -100 and 100)"
        ) from err


def read_label_columns(
    name: str, loaded: dict[str, Any], specs: dict[str, str | None], image_key: str, label_key: str
) -> dict[str, list]:
    """Each split's label column, read once, after checking its columns and labels.

    Raises:
        DataError: A split lacks the image or label column, or has rows with a list, a
            struct, a number with a fraction or no value for a label.
    """
    datasets = import_datasets()
    # A val or test split without labels can be carved from train instead.
    carve = {s: f", or set data.split_{s}=null to carve it from train" for s in ("val", "test")}
    for split, dataset in loaded.items():
        missing = [k for k in (image_key, label_key) if k not in dataset.column_names]
        if missing:
            raise DataError(
                f"data.name={name!r} split {specs[split]!r} (data.split_{split}) has no "
                f"column {', '.join(missing)} (columns: {', '.join(dataset.column_names)}): "
                f"set data.image_key / data.label_key{carve.get(split, '')}."
            )
    # Every read of a column builds a list of the whole column: once per split.
    label_columns = {split: dataset[label_key] for split, dataset in loaded.items()}
    for split, values in label_columns.items():
        nested = next((v for v in values if isinstance(v, list | dict)), None)
        if nested is not None:  # a multi-label column, or a struct: no class per row
            raise DataError(
                f"{name} split {specs[split]!r}: {label_key!r} (data.label_key) holds "
                f"{type(nested).__name__}s (e.g. {str(nested)[:80]}), not one class per row: "
                "the runner trains single-label classification. Set data.label_key to a "
                "column of one class per row"
            )
        # A score or a mean of ratings is no class: each distinct number became a class
        # named after it ("1.5", "2.5"). A whole number (1.0, from a CSV or pandas column
        # with a gap) names a class as it always did: "1.0".
        fractional = next(
            (v for v in values if isinstance(v, float) and v == v and not v.is_integer()), None
        )  # NaN (v != v) is a missing label, refused as one below
        if fractional is not None:
            raise DataError(
                f"{name} split {specs[split]!r} (data.split_{split}): {label_key!r} "
                f"(data.label_key) holds numbers with a fraction (e.g. {fractional!r}), not "
                "classes: each distinct number would become a class of its own. Set "
                "data.label_key to a column of class indices or names, or map the values to "
                "integers or strings first"
            )
        # -1 is how a ClassLabel column marks a row without a label (a Hub test split's).
        no_label = (
            {None, -1}
            if isinstance(loaded[split].features[label_key], datasets.ClassLabel)
            else {None}
        )
        unlabelled = [
            i for i, v in enumerate(values) if v in no_label or (isinstance(v, float) and v != v)
        ]
        if unlabelled:  # else a class named "None", or a contradictory unknown-label error
            raise DataError(
                f"{name} split {specs[split]!r} (data.split_{split}): {len(unlabelled)} "
                f"row(s) have no {label_key!r} (data.label_key), e.g. row(s) "
                f"{unlabelled[:5]}: drop or label them first{carve.get(split, '')}"
            )
    return label_columns


# Value types of an image column the decoder reads: file paths, encoded bytes, or a
# column with no value at all (each row then a bad record without an image).
_TEXT = ("string", "large_string")  # how datasets reads a CSV's or JSON's text column
_IMAGE_VALUES = (*_TEXT, "binary", "large_binary", "null")


def refuse_non_image_columns(
    name: str, loaded: dict[str, Any], specs: dict[str, str | None], image_key: str
) -> None:
    """Refuses an image column of another type (numbers, lists) before anything is decoded.

    Raises:
        DataError: A split's image column is no Image feature, bytes, file paths, or
            struct of bytes and path.
    """
    datasets = import_datasets()
    for split, dataset in loaded.items():
        feature = dataset.features[image_key]
        if isinstance(feature, datasets.Image):
            continue
        if isinstance(feature, datasets.Value) and feature.dtype in _IMAGE_VALUES:
            continue
        if isinstance(feature, dict) and {"bytes", "path"} & set(feature):  # Image, undeclared
            continue
        # Each record reached the decoder, which failed with a bare TypeError naming
        # neither the key nor the column ("expected str, bytes or os.PathLike, not int").
        found = f"{feature.dtype} values" if isinstance(feature, datasets.Value) else feature
        raise DataError(
            f"{name} split {specs[split]!r} (data.split_{split}): the image column "
            f"{image_key!r} (data.image_key) holds {found}, not images: it must hold an Image "
            "feature, encoded image bytes, or image file paths (strings). Set data.image_key "
            f"to the column of images (columns: {', '.join(dataset.column_names)})"
        )


def read_from(base: Path, path: str) -> str | None:
    """Where a table's relative image path is read from, or None where it is nowhere.

    Under `base` (the folder `data.name` names, or a table file's folder) when the file is
    there, else as written (from the working directory).
    """
    if (base / path).exists():
        return str(base / path)
    if os.path.exists(path):
        return path
    return None


def refuse_a_column_of_no_files(
    name: str,
    loaded: dict[str, Any],
    specs: dict[str, str | None],
    image_key: str,
    folder: Path | None,
    rows: int = 20,
) -> None:
    """Refuses a column of text as the image column when none of the rows looked at is a file.

    A column of class names or notes as `data.image_key` made every row a bad file, and
    the run was refused for classes without a readable image, naming no key.

    Args:
        name: `data.name`.
        loaded: Each split's data set.
        specs: Each split's spec (`data.split_*`).
        image_key: The image column.
        folder: Where relative paths are read from (`read_from`); None = no local files.
        rows: How many rows of a split, spread over it, are looked at.

    Raises:
        DataError: Naming the column, a value, where it was looked for, and the fix.
    """
    datasets = import_datasets()
    if folder is None:
        return
    for split, dataset in loaded.items():
        feature = dataset.features[image_key]
        if not (isinstance(feature, datasets.Value) and feature.dtype in _TEXT and len(dataset)):
            continue
        spread = sorted({i * len(dataset) // rows for i in range(rows)})
        values = [v for v in dataset.select(spread)[image_key] if v]
        if not values or any(
            os.path.exists(v) if os.path.isabs(v) else read_from(folder, v) for v in values
        ):
            continue
        raise DataError(
            f"{name} split {specs[split]!r} (data.split_{split}): the image column "
            f"{image_key!r} (data.image_key) names no image file in {len(values)} rows "
            f"spread over it (e.g. {values[0]!r}, looked for under {folder} and in the working "
            f"directory {os.getcwd()}). Set data.image_key to the column of image paths "
            f"(columns: {', '.join(dataset.column_names)}), or bring the images back"
        )
