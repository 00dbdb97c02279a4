"""Image folders in torchvision's ImageFolder layout, decoded once and cached, or streamed.

    root/train/<class>/<image>      required
    root/val/<class>/<image>        optional; else carved from train (stratified)
    root/test/<class>/<image>       optional; else carved from train (stratified)

A val/ or test/ folder may lack a class of train/ (a rare class with no held-out image:
its metrics are empty, and the run says so); a class train/ lacks is refused.

Every non-hidden file in a class folder (subfolders included) is a sample candidate;
one that does not decode is a bad file (skipped and listed, or an error). A sample's id
is its path under `data.root` (e.g. `train/cat/001.jpg`). Small data
sets are decoded once into uint8 tensors (kept in memory, and in a cache file keyed by
the folder's listing) and stay resident; large ones are decoded batch by batch by loader
workers (`runner.data.streaming`); `runner.data.sets.records` does both, for the Hugging
Face sets too.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.config.location_checks import image_folder_root_problem
from runner.data.decoding import DataError, file_stat, printable
from runner.data.sets.held_out import held_out_settings, held_out_splits
from runner.data.sets.records import RecordSettings, splits_from_records
from runner.data.splits import DataSplits, path_id, some_of

log = logging.getLogger(__name__)

SPLIT_FOLDERS = ("train", "val", "test")


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_class_files(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its files (sorted), for the class folders directly under `folder`.

    Hidden files and folders (".DS_Store", ".ipynb_checkpoints") are ignored; files in
    subfolders of a class folder belong to that class, as in torchvision's ImageFolder.
    """
    return {name: visible_files(folder / name) for name in class_folders(folder)}


def class_key(name: str) -> str:
    """A class folder's name as matched: in Unicode's NFC form (see `same_classes_as`)."""
    return unicodedata.normalize("NFC", name)


def same_classes_as(
    classes: dict[str, list[Path]], class_names: Sequence[str]
) -> dict[str, list[Path]]:
    """`classes` (class folder -> files) keyed by `class_names` where a folder names one.

    A name is matched in Unicode's NFC form: a folder copied from macOS spells "é" as "e"
    plus an accent (NFD), which looks the same as, but is not, the "é" of one made
    elsewhere. A folder matching no class keeps its own name.
    """
    by_form = {class_key(name): name for name in class_names}
    matched: dict[str, list[Path]] = {}
    for name, files in classes.items():
        matched.setdefault(by_form.get(class_key(name), name), []).extend(files)
    return matched


def class_folders(folder: Path) -> list[str]:
    """The class folder names directly under `folder`, sorted, hidden ones left out.

    Raises:
        DataError: An entry is a broken link (its class would be left out unseen).
    """
    entries = [e for e in os.scandir(folder) if _visible(e.name)]
    # A link whose target is gone is neither a folder nor a file: skipped as such, its
    # class vanished and the run trained on the others without a word.
    broken = sorted(e.path for e in entries if e.is_symlink() and not os.path.exists(e.path))
    if broken:
        links = ", ".join(
            f"{printable(link)} -> {printable(os.path.join(folder, os.readlink(link)))}"
            for link in broken[:5]
        )
        raise DataError(
            f"{len(broken)} class folder(s) under {printable(str(folder))} are broken links "
            f"whose target does not exist: {links}. Point each link at its class's folder, "
            "or remove it to train without that class"
        )
    return sorted(e.name for e in entries if e.is_dir())


def visible_files(folder: Path, regular_only: bool = False) -> list[Path]:
    """The files under `folder`, recursively, sorted, hidden ones left out.

    Links are followed, each real folder once (a link back to a folder already listed is
    a loop, or a copy).

    Args:
        folder: Where to look.
        regular_only: Leave out broken links too. False keeps them, to be reported as
            bad files. A FIFO, socket or device is never listed: reading one can wait
            forever.
    """
    files, seen = [], set()
    for parent, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(parent)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if _visible(d))
        files.extend(
            Path(parent) / n
            for n in sorted(names)
            if _visible(n) and _listed(os.path.join(parent, n), regular_only)
        )
    return files


def _listed(path: str, regular_only: bool) -> bool:
    """A regular file; or, unless `regular_only`, a broken link (a bad file to report)."""
    return os.path.isfile(path) or (not regular_only and not os.path.exists(path))


def scan_layout(
    root: str | os.PathLike, num_classes: int | None = None
) -> tuple[list[str], dict[str, tuple[list[Path], list[int]]]]:
    """Finds the split folders and checks that they agree before anything is decoded.

    Args:
        root: The data set folder (`data.root`).
        num_classes: The class count the config expects; None accepts what is found.

    Returns:
        (class names, {split folder: (files, labels)}) for the split folders present.

    Raises:
        DataError: A file for `root`, no train/ folder, a class folder that is a broken
            link, an empty train class folder, a val/test class that train lacks, or a
            class count other than `num_classes`.
    """
    problem = image_folder_root_problem(root)
    if problem is not None:
        raise DataError(problem)
    root = Path(root).expanduser()
    layout = {s: list_class_files(root / s) for s in SPLIT_FOLDERS if (root / s).is_dir()}
    class_names = list(layout["train"])
    if not class_names:
        raise DataError(f"{root / 'train'} has no class folders (expected train/<class>/<image>)")
    # A name that was not valid UTF-8 on disk changes when made printable.
    shown = [printable(name) for name in class_names if printable(name) != name]
    if shown:
        raise DataError(
            f"class folder name(s) under {printable(str(root / 'train'))} that are not valid "
            f"UTF-8: {shown}. A class name goes into checkpoints, reports and MLflow as text: "
            "rename the folders in UTF-8 (e.g. `convmv -f latin1 -t utf8 -r --notest`)."
        )
    empty = [f"train/{cls}" for cls, files in layout["train"].items() if not files]
    if empty:
        raise DataError(
            f"{len(empty)} empty class folder(s) under {root}: {some_of(empty)}. "
            "Add images or remove the folders."
        )
    for split in ("val", "test"):
        if split not in layout:
            continue
        layout[split] = same_classes_as(layout[split], class_names)
        # A small val or test set may lack a rare class (its metrics are then empty, as
        # the run says); a class the model never trains on may not be tested.
        extra = sorted(set(layout[split]) - set(class_names))
        missing = sorted(c for c in class_names if not layout[split].get(c))
        if extra:
            raise DataError(
                f"{root / split} has {len(extra)} class folder(s) that {root / 'train'} lacks: "
                f"{some_of(extra)} (the model could never predict them). Rename or move them "
                f"to train/; missing from {split}/ (allowed): {some_of(missing) or 'none'}."
            )
        if not any(layout[split].values()):
            raise DataError(
                f"{root / split} holds no image (its class folders are empty): add images, "
                f"or remove it to carve {split} from train (data.{split}_fraction)."
            )
        if missing:
            log.warning("%s has no image of %d class(es): %s", root / split, len(missing), missing)
    if num_classes is not None and num_classes != len(class_names):
        raise DataError(
            f"data.num_classes={num_classes} but {root / 'train'} has {len(class_names)} class "
            f"folders ({', '.join(class_names[:20])}{', ...' if len(class_names) > 20 else ''}). "
            "Fix the folders or set data.num_classes=null."
        )
    result = {}
    for split, classes in layout.items():
        files, labels = [], []
        for label, name in enumerate(class_names):
            files.extend(classes.get(name, []))
            labels.extend([label] * len(classes.get(name, [])))
        result[split] = (files, labels)
    return class_names, result


def _refuse_shared_ids(
    root: str, ids: dict[str, list[str]], relative: dict[str, list[str]]
) -> None:
    """Refuses two files with one sample id, one of which would stand for both.

    A name that is not UTF-8 has its bytes written as backslash escapes in its id, which
    a file whose name spells that escape also gets.
    """
    first: dict[str, str] = {}
    for split, split_ids in ids.items():
        for sample_id, path in zip(split_ids, relative[split], strict=True):
            other = first.setdefault(sample_id, path)
            if other != path:
                raise DataError(
                    f"data.root={root!r}: the files {os.fsencode(other)!r} and "
                    f"{os.fsencode(path)!r} would have one sample id, {sample_id!r} (a name "
                    "that is not UTF-8 is written with backslash escapes). Rename one of them"
                )


def load_imagefolder(
    root: str,
    name: str = "imagefolder",
    image_size: int = 64,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    num_classes: int | None = None,
    resident: bool | str = "auto",
    resident_max_gb: float = 2.0,
    cache_dir: str | None = None,
    num_workers: int = 2,
    on_bad_file: str = "skip",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataSplits:
    """An image folder (see the module doc) as uint8 splits.

    Args:
        root: The folder holding train/ (and optionally val/, test/).
        name: Name of the data set (the MLflow experiment name by default).
        image_size: Images are resized (shorter side) and center-cropped to this.
        val_fraction: Share of each train class for val when there is no val/ folder.
        test_fraction: Share of each train class for test when there is no test/ folder.
        split_seed: Seed of the carved splits.
        num_classes: Expected class count; None = whatever train/ holds.
        resident: True decodes everything once and keeps it in memory; False streams
            through loader workers; "auto" decodes when the decoded size fits in
            `resident_max_gb`.
        resident_max_gb: Decoded size (3 * image_size^2 bytes per image) up to which
            "auto" keeps the data resident.
        cache_dir: Folder for the decode cache file; None = no cache file.
        num_workers: Decoding processes.
        on_bad_file: "skip" leaves undecodable files out and lists them; "error" stops.
        mean: Per-channel normalisation mean; None computes it from the train split.
        std: Per-channel normalisation std; None computes it from the train split.

    Returns:
        The splits (resident `Split`s or streaming `EncodedSplit`s) with the bad files.

    Raises:
        DataError: The layout is wrong (see `scan_layout`), a class has no images, or a
            file does not decode (found at start) and on_bad_file is "error".
        BadImageError: Streamed, a file whose content does not decode, when its batch is
            read, and on_bad_file is "error".
    """
    root = str(Path(root).expanduser())  # ids relative to the folder itself, not to "<cwd>/~"
    class_names, layout = scan_layout(root, num_classes)
    records = {split: [str(p) for p in files] for split, (files, _) in layout.items()}
    labels = {split: labels for split, (_, labels) in layout.items()}
    relative = {
        split: [os.path.relpath(p, root) for p in files] for split, (files, _) in layout.items()
    }
    ids = {split: [path_id(r) for r in paths] for split, paths in relative.items()}
    _refuse_shared_ids(root, ids, relative)
    # The listing with sizes and modification times stands for the content: a changed,
    # added or removed file gives another key, and reading every byte is not needed.
    listing = [
        (split, [(r, *file_stat(p)) for r, p in zip(relative[split], files, strict=True)])
        for split, (files, _) in layout.items()
    ]
    return splits_from_records(
        name=name,
        records=records,
        labels=labels,
        ids=ids,
        class_names=class_names,
        content_key=(str(Path(root).resolve()), listing),
        where=str(root),
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


def load_test_folder(
    data_cfg: Mapping[str, Any],
    class_names: Sequence[str],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> DataSplits:
    """A labelled held-out folder without train/, as the test split of a model's classes.

    For `mode=eval eval.data=current`: `root/test/<class>/<image>`, or `root/<class>/
    <image>` when there is no test/. A class folder is matched to the model's classes by
    name; the folder may lack some of them. Train and val are empty; the mean and std
    are the model's. Like a training set, it is decoded into memory while it fits in
    `resident_max_gb` (under `resident="auto"`) and streamed through loader workers
    otherwise.

    Args:
        data_cfg: The command line's `data=imagefolder` config (its root, name, workers,
            memory and bad-file keys).
        class_names: The checkpoint's classes.
        image_size: The size the checkpoint was trained at.
        mean: The checkpoint's normalisation mean.
        std: The checkpoint's normalisation std.

    Raises:
        DataError: A class folder the model does not know, or no image at all.
    """
    root = Path(str(data_cfg["root"])).expanduser()
    folder = root / "test" if (root / "test").is_dir() else root
    classes = same_classes_as(list_class_files(folder), class_names)
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise DataError(
            f"data.root={str(root)!r}: {folder} has class folders the checkpoint does not "
            f"know: {unknown[:10]} (its classes: {list(class_names)[:10]}). Test on folders "
            "named after the checkpoint's classes"
        )
    files, labels = [], []
    for label, class_name in enumerate(class_names):
        files.extend(classes.get(class_name, []))
        labels.extend([label] * len(classes.get(class_name, [])))
    if not files:
        raise DataError(
            f"data.root={str(root)!r}: no image under {folder}/<class>/ (expected "
            "root/test/<class>/<image> or root/<class>/<image>)"
        )
    files = [str(f) for f in files]
    return held_out_splits(
        data_cfg.get("name", "imagefolder"),
        records=files,
        labels=labels,
        ids=[path_id(os.path.relpath(f, root)) for f in files],
        class_names=class_names,
        where=f"held-out folder {folder}",
        settings=held_out_settings(data_cfg, image_size, mean, std),
    )
