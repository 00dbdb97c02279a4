"""Hugging Face `datasets` data sets (a Hub name or a local path) as uint8 splits.

Needs the optional extra: `pip install -e ".[hf]"`. Images are read undecoded
(`Image(decode=False)`) and decoded by the runner's decoder, so they get the same
handling as image folders: RGB uint8 at `image_size`, 16-bit scaling, bad records
skipped and listed, resident with a decode cache or streamed by loader workers.

A sample's id is its image file's path under the data set's folder when `data.name` is
a local folder of images (`train/cat/001.jpg`), else `<data set>:<split>:<index>`, the
record's index in the split as loaded (`bugs.parquet:train:17`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.data.decoding import DataError, file_stat
from runner.data.sets.hf_columns import (
    import_datasets,
    read_from,
    read_label_columns,
    refuse_a_column_of_no_files,
    refuse_bad_slice,
    refuse_non_image_columns,
)
from runner.data.sets.hf_ids import (
    record_files,
    record_ids,
    refuse_copies_in_a_carve,
    source_rows,
    unique_ids,
)
from runner.data.sets.records import RecordSettings, splits_from_records
from runner.data.splits import DataSplits

# Local files that `load_dataset` reads with a packaged builder, by suffix.
_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
}


class ImageColumn(Sequence):
    """A lazy view of one image column: item i is record i, read when asked for.

    Records without a path get "<data set>:<split>[i]", so a bad one can be named. A
    relative path in a local table (a CSV listing `images/a.png`) is read from the
    folder `data.name` names, or the folder of the table file it names, when the image is
    there, else as written (from the working directory).
    """

    def __init__(self, dataset, key: str, label: str, base: Path | None = None):
        self.dataset = dataset.select_columns([key])
        self.key = key
        self.label = label
        self.base = base

    def _resolved(self, path: str) -> str | dict[str, Any]:
        """`path` where it is read from; a relative one that is nowhere keeps its folder.

        A relative path found neither in `base` nor in the working directory is returned
        as an image dict with `base`, so that its bad-file reason names the folder it was
        looked for in (`runner.data.decoding.unreadable`), not the bare path alone.
        """
        if self.base is None or os.path.isabs(path):
            return path
        return read_from(self.base, path) or {"bytes": None, "path": path, "base": str(self.base)}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        value = self.dataset[int(index)][self.key]
        if value is None or value == {"bytes": None, "path": None}:  # a row without an image
            return {"bytes": None, "path": None, "name": self._name(index)}
        if isinstance(value, dict):
            if not value.get("bytes") and value.get("path"):
                resolved = self._resolved(value["path"])
                return resolved if isinstance(resolved, dict) else {"bytes": None, "path": resolved}
            return {"bytes": value.get("bytes"), "path": value.get("path") or self._name(index)}
        if isinstance(value, bytes | bytearray):
            return {"bytes": bytes(value), "path": self._name(index)}
        return self._resolved(value) if isinstance(value, str) else value  # a path

    def _name(self, index: int) -> str:
        return f"{self.label}[{int(index)}]"


def _file_stats(column: ImageColumn) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of each file a column of paths names; [] for embedded bytes."""
    stats = []
    for index in range(len(column)):
        record = column[index]
        if isinstance(record, dict) and record.get("bytes"):
            return []  # embedded: the table's identity sees them change
        path = record.get("path") if isinstance(record, dict) else str(record)
        stats.append((path, *file_stat(path)) if path else ("", -1, -1))  # a row without one
    return stats


def _table_identity(dataset) -> list[tuple[str, int, int]] | str:
    """What identifies a loaded split's Arrow data, for the decode cache.

    Its Arrow files (`cache_files`) with their sizes and modification times: datasets
    writes new ones when the source changes. A table held in memory (no files, as with
    HF_DATASETS_IN_MEMORY_MAX_SIZE) is identified by a hash of its buffers instead.
    """
    files = [entry["filename"] for entry in dataset.cache_files]
    if files:
        return [(file, *file_stat(file)) for file in files]
    digest = hashlib.sha256()
    for batch in dataset.data.to_batches():
        for column in batch.columns:
            for buffer in column.buffers():
                if buffer is not None:
                    digest.update(buffer)
    return digest.hexdigest()


def split_loader(
    name: str, config_name: str | None, revision: str | None, hf_cache_dir: str | None
):
    """A function split-spec -> Dataset for a Hub name, a saved data set or a local file."""
    datasets = import_datasets()
    path = Path(name).expanduser()
    if path.is_dir() and any(
        (path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json")
    ):
        saved = datasets.load_from_disk(str(path))
        # A saved format (set by `cast_column`, `set_format`, ...) names the columns it
        # returns; the runner reads other views of them (the image's `.path`, Arrow).
        saved.reset_format()
        if isinstance(saved, datasets.DatasetDict):

            def saved_split(split: str):
                if split not in saved:
                    raise KeyError(
                        f"{split!r} is not one of the saved splits ({', '.join(saved)}); a "
                        "saved data set takes split names only, not slices"
                    )
                return saved[split]

            return saved_split

        def only_split(split: str):
            if split != "train":
                raise DataError(
                    f"data.name={name!r} is one saved Dataset (no splits): set "
                    "data.split_train=train and data.split_val/split_test=null to carve them"
                )
            return saved

        return only_split
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DataError(
                f"data.name={name!r}: a file must be one of {', '.join(_FILE_BUILDERS)}"
            )
        return lambda split: datasets.load_dataset(
            builder, data_files=str(path), split=split, cache_dir=hf_cache_dir
        )
    if not path.exists() and (
        name.startswith(("/", "./", "../", "~")) or path.suffix.lower() in _FILE_BUILDERS
    ):  # a path, not a Hub name (owner/name): the Hub would answer with a confusing error
        raise DataError(
            f"data.name={name!r}: no such file or folder. Give an existing local data set "
            "(a folder, or a .parquet/.arrow/.csv/.json file) or a Hub name (owner/name)"
        )
    # A local folder of images or data files, or a Hub name (downloads when online).
    return lambda split: datasets.load_dataset(
        os.path.abspath(path) if path.is_dir() else name,  # `.` is no data set name to it
        config_name,
        split=split,
        revision=revision,
        cache_dir=hf_cache_dir,
    )


def load_splits(name: str, specs: dict[str, str | None], load) -> dict[str, Any]:
    """Each split that `specs` names, loaded; a missing split or the Hub offline named."""
    for split, spec in specs.items():
        if spec is not None:
            refuse_bad_slice(split, spec)
    loaded = {}
    for split, spec in specs.items():
        if spec is None:
            continue
        try:
            loaded[split] = load(spec)
        except (KeyError, ValueError) as err:  # an unknown split name (or slice)
            if isinstance(err, DataError):
                raise
            if "corresponds to no data" in str(err):  # datasets' word for an empty table
                raise DataError(
                    f"data.split_{split}={spec!r}: data.name={name!r} has no rows there (an "
                    "empty table?). Add rows, or name a split that has them"
                ) from err
            if "split" not in str(err).lower():
                raise
            reason = err.args[0] if err.args else err
            raise DataError(
                f"data.split_{split}={spec!r}: data.name={name!r} has no such split ({reason}). "
                f"Name one it has, or set data.split_{split}=null to carve it from train"
            ) from err
        except ConnectionError as err:  # a Hub name without network (or HF_HUB_OFFLINE=1)
            raise DataError(
                f"data.name={name!r} cannot be loaded from the Hugging Face Hub ({err}). "
                "Without network, point data.name at a local copy: a folder saved with "
                "save_to_disk, a folder of images, or a .parquet/.arrow/.csv/.json file"
            ) from err
    return loaded


def load_hf(
    name: str,
    image_key: str = "image",
    label_key: str = "label",
    split_train: str = "train",
    split_val: str | None = None,
    split_test: str | None = "test",
    config_name: str | None = None,
    revision: str | None = None,
    image_size: int = 64,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    num_classes: int | None = None,
    resident: bool | str = "auto",
    resident_max_gb: float = 2.0,
    cache_dir: str | None = None,
    hf_cache_dir: str | None = None,
    num_workers: int = 2,
    on_bad_file: str = "skip",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataSplits:
    """A Hugging Face data set as uint8 splits.

    Args:
        name: A Hub name ("uoft-cs/cifar10"), a folder saved with `save_to_disk`, a folder
            of images (class subfolders) or data files, or one .parquet/.arrow/.csv/.json
            file (its rows are the "train" split).
        image_key: Column with the images (Image feature, bytes or file paths).
        label_key: Column with the labels (ClassLabel, integers or strings).
        split_train: Split (or slice, e.g. "train[:90%]") to train on.
        split_val: Split for validation; None carves `val_fraction` from train.
        split_test: Split for testing; None carves `test_fraction` from train.
        config_name: The data set's configuration (Hub data sets with several).
        revision: Git revision of a Hub data set.
        image_size: Images are resized (shorter side) and center-cropped to this.
        val_fraction: Share of each train class for val when `split_val` is None.
        test_fraction: Share of each train class for test when `split_test` is None.
        split_seed: Seed of the carved splits.
        num_classes: Expected class count; None = what the labels hold.
        resident: True, False or "auto" (see `runner.data.sets.imagefolder.load_imagefolder`).
        resident_max_gb: Decoded size up to which "auto" keeps the data resident.
        cache_dir: Folder for the decode cache file; None = no cache file.
        hf_cache_dir: The `datasets` cache folder; None = its default (HF_HOME).
        num_workers: Decoding processes.
        on_bad_file: "skip" leaves undecodable images out and lists them; "error" stops.
        mean: Per-channel normalisation mean; None computes it from the train split.
        std: Per-channel normalisation std; None computes it from the train split.

    Returns:
        The splits with the bad records listed.

    Raises:
        DataError: A column is missing, the image column holds no images, or the labels
            of val/test are not train's.
    """
    specs = {"train": split_train, "val": split_val, "test": split_test}
    loaded = load_splits(name, specs, split_loader(name, config_name, revision, hf_cache_dir))
    label_columns = read_label_columns(name, loaded, specs, image_key, label_key)
    refuse_non_image_columns(name, loaded, specs, image_key)
    folder, label = local_names(name)
    refuse_a_column_of_no_files(name, loaded, specs, image_key, folder)
    train = loaded["train"]
    train_names = getattr(train.features[label_key], "names", None)  # a ClassLabel's
    class_names, to_index = _classes(train.features[label_key], label_columns["train"])
    if num_classes is not None and num_classes != len(class_names):
        raise DataError(
            f"data.num_classes={num_classes} but {name} split {split_train!r} has "
            f"{len(class_names)} classes ({', '.join(class_names[:20])})."
        )
    records, labels, ids, samples = {}, {}, {}, {}
    for split, dataset in loaded.items():
        dataset = undecoded(dataset, image_key)
        values, index = label_columns[split], to_index
        own_names = getattr(dataset.features[label_key], "names", None)
        if own_names and list(own_names) != list(train_names or ()):
            # A split whose labels were encoded on their own (`class_encode_column` per
            # split) numbers its classes in its own order: its integers are not train's.
            values = [own_names[v] for v in values]
            index = {class_name: i for i, class_name in enumerate(class_names)}
        unknown = sorted({str(v) for v in values if v not in index})
        if unknown:
            raise DataError(
                f"{name} split {specs[split]!r} has labels that {split_train!r} lacks: "
                f"{', '.join(unknown[:20])} ({len(unknown)} in all)."
            )
        records[split] = ImageColumn(dataset, image_key, f"{label}:{specs[split]}", folder)
        labels[split] = [index[v] for v in values]
        files = record_files(dataset, image_key, folder)
        ids[split] = record_ids(files, folder, f"{label}:{specs[split]}")
        # What a sample is, to find one listed twice: its id, but where that is an index
        # id (which names the slice) a file outside `folder` by its path, and a record of
        # a slice by its row in the whole split.
        index_id = f"{label}:{specs[split]}:"
        rows = source_rows(dataset, specs[split], label) or [None] * len(files)
        samples[split] = [
            (file or row or sample_id) if sample_id.startswith(index_id) else sample_id
            for file, row, sample_id in zip(files, rows, ids[split], strict=True)
        ]
    absent = sorted(set(range(len(class_names))) - set(labels["train"]))
    if absent:  # classes a ClassLabel names that no train row has: the model cannot learn them
        absent_names = ", ".join(class_names[i] for i in absent)
        if train.info.builder_name == "imagefolder":  # it names the classes by folder
            raise DataError(
                f"{name} split {split_train!r} (data.split_train) has no train image of "
                f"class folder(s) {absent_names} (in another split): add train images of "
                "them, or move those folders out of the data set"
            )
        raise DataError(
            f"{name} split {split_train!r} (data.split_train) has no row of class(es) "
            f"{absent_names}, which {label_key!r}'s ClassLabel names: add train rows of "
            "them, or drop them from the ClassLabel's names"
        )
    refuse_copies_in_a_carve(samples["train"], specs, val_fraction, test_fraction)
    ids = unique_ids(ids, specs, samples)
    # The split's spec (a slice such as train[:50%] reads the same files as another).
    tables = [(s, specs[s], _table_identity(d), len(d)) for s, d in loaded.items()]
    # A column of file paths: the table's identity does not see the files change.
    files = [_file_stats(column) for column in records.values()]
    return splits_from_records(
        name=label,
        records=records,
        labels=labels,
        ids=ids,
        class_names=class_names,
        content_key=(name, config_name, revision, image_key, label_key, tables, files),
        where=f"data.name={name!r}",
        settings=RecordSettings(
            image_size=image_size,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            resident=resident,
            resident_max_gb=resident_max_gb,
            cache_dir=cache_dir,
            num_workers=num_workers,
            on_bad_file=on_bad_file,
            mean=mean,
            std=std,
        ),
    )


def local_names(name: str) -> tuple[Path | None, str]:
    """The folder a local data set's relative paths and ids are read from, and its name.

    Args:
        name: `data.name`.

    Returns:
        The folder `name` names, or a table file's own folder (its relative paths are
        read from there, as its ids are: row numbers changed with the rows' order, and an
        exclude file then hit other images), None for a Hub name; and the name ids and
        caches are keyed by (`.` is its folder's name; a link keeps its own name).
    """
    local = Path(name).expanduser()
    folder = local if local.is_dir() else local.parent if local.is_file() else None
    return folder, Path(os.path.abspath(local)).name if local.exists() else name


def undecoded(dataset, image_key: str):
    """The split with an Image column read as its bytes and path, for the runner's decoder."""
    datasets = import_datasets()
    if isinstance(dataset.features[image_key], datasets.Image):
        return dataset.cast_column(image_key, datasets.Image(decode=False))
    return dataset


def _classes(feature, values: Sequence[Any]) -> tuple[list[str], dict[Any, int]]:
    """Class names and a value -> index map, from a ClassLabel or the values themselves."""
    names = getattr(feature, "names", None)
    if names:
        return list(names), {i: i for i in range(len(names))}
    distinct = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    return [str(v) for v in distinct], {v: i for i, v in enumerate(distinct)}
