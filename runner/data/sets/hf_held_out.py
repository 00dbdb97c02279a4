"""A Hugging Face data set's split as a held-out test set of a model's classes.

For `mode=eval eval.data=current data=hf data.split_train=null`: the split that
`data.split_test` names (a table file's rows are its `train` split) is tested whole, as
an image folder without train/ is (`imagefolder.load_test_folder`). Its labels are matched
to the checkpoint's classes by name; it may lack some of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runner.data.decoding import DataError
from runner.data.sets.held_out import held_out_settings, held_out_splits
from runner.data.sets.hf import (
    ImageColumn,
    load_splits,
    local_names,
    split_loader,
    undecoded,
)
from runner.data.sets.hf_columns import (
    read_label_columns,
    refuse_a_column_of_no_files,
    refuse_non_image_columns,
)
from runner.data.sets.hf_ids import record_files, record_ids
from runner.data.splits import DataSplits


def is_hf_data(data_cfg: Mapping[str, Any] | None) -> bool:
    """Whether a data config is a Hugging Face data set's.

    By the end of its `_target_`, so that a best.pt of the flat layout (another module
    path) is one too.
    """
    return bool(data_cfg) and str(data_cfg.get("_target_", "")).endswith(".load_hf")


def is_held_out_split(data_cfg: Mapping[str, Any]) -> bool:
    """Whether a data config is a Hugging Face held-out set (`data.split_train=null`)."""
    return is_hf_data(data_cfg) and data_cfg.get("split_train", "") is None


def load_hf_test(
    data_cfg: Mapping[str, Any],
    class_names: Sequence[str],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> DataSplits:
    """The split `data.split_test` names, whole, as the test split of a model's classes.

    Args:
        data_cfg: The command line's `data=hf` config (`data.split_train=null`).
        class_names: The checkpoint's classes.
        image_size: The size the checkpoint was trained at.
        mean: The checkpoint's normalisation mean.
        std: The checkpoint's normalisation std.

    Returns:
        Splits whose train and val are empty.

    Raises:
        DataError: No split is named, a column is missing or holds no images or labels,
            or a label names a class the checkpoint does not know.
    """
    name, split = str(data_cfg["name"]), data_cfg.get("split_test")
    if split is None:  # the config check names the fix (`config.modes.held_out_problems`)
        raise DataError("data.split_train=null needs the split to test: data.split_test")
    image_key = data_cfg.get("image_key", "image")
    label_key = data_cfg.get("label_key", "label")
    specs = {"test": split}
    load = split_loader(
        name, data_cfg.get("config_name"), data_cfg.get("revision"), data_cfg.get("hf_cache_dir")
    )
    loaded = load_splits(name, specs, load)
    values = read_label_columns(name, loaded, specs, image_key, label_key)["test"]
    refuse_non_image_columns(name, loaded, specs, image_key)
    folder, label = local_names(name)
    refuse_a_column_of_no_files(name, loaded, specs, image_key, folder)
    dataset = undecoded(loaded["test"], image_key)
    # As a training run named its classes (`hf._classes`): a ClassLabel's names, else
    # the values as text.
    names = getattr(dataset.features[label_key], "names", None)
    as_named = [names[v] if names else str(v) for v in values]
    index = {class_name: i for i, class_name in enumerate(class_names)}
    unknown = sorted(set(as_named) - set(index))
    if unknown:
        raise DataError(
            f"{name} split {split!r} (data.split_test) has classes the checkpoint does not "
            f"know: {unknown[:10]} (its classes: {list(class_names)[:10]}). Test on rows of "
            "the checkpoint's classes"
        )
    where = f"{label}:{split}"
    return held_out_splits(
        label,
        records=ImageColumn(dataset, image_key, where, folder),
        labels=[index[class_name] for class_name in as_named],
        ids=record_ids(record_files(dataset, image_key, folder), folder, where),
        class_names=class_names,
        where=f"held-out split {split!r} of data.name={name!r}",
        settings=held_out_settings(data_cfg, image_size, mean, std),
    )
