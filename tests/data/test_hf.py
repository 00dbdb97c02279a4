"""Hugging Face data sets, offline: a parquet file and an image folder the test writes."""

from __future__ import annotations

import json
import re

import pytest
import torch

from runner.data import decode_cache
from runner.data.decoding import DataError
from runner.data.sets.hf import load_hf
from runner.data.streaming import EncodedSplit
from tests.datagen import make_imagefolder, write_bad_files, write_hf_parquet

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    decode_cache.clear_memory_cache()
    yield


def common(tmp_path):
    return {"image_size": 16, "num_workers": 0, "hf_cache_dir": str(tmp_path / "hf_cache")}


@pytest.mark.parametrize("resident", [True, False])
def test_parquet_file_with_image_bytes_and_class_labels(tmp_path, resident):
    path = write_hf_parquet(tmp_path / "bugs.parquet", classes=("ant", "bee"), per_class=10)
    data = load_hf(
        str(path),
        image_key="img",
        label_key="y",
        split_test=None,
        val_fraction=0.2,
        test_fraction=0.2,
        resident=resident,
        **common(tmp_path),
    )
    assert data.name == "bugs.parquet" and data.class_names == ["ant", "bee"]
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 4)
    assert isinstance(data.train, EncodedSplit) is not resident
    images, labels = next(iter(data.train.loader(64, CPU)))
    assert images.dtype == torch.uint8 and images.shape == (12, 3, 16, 16)
    # The tint of each class's channel survives decoding: labels stay with their images.
    means = images.float().mean(dim=(2, 3))
    assert (means[labels == 0, 0] > means[labels == 0, 1]).all()
    assert (means[labels == 1, 1] > means[labels == 1, 0]).all()


@pytest.mark.parametrize("resident", [True, False])
def test_a_streamed_folder_sniffs_files_without_a_signature_by_their_path(tmp_path, resident):
    """Streamed, a TGA (no signature listed) or an HTML page saved as .jpg was a TypeError."""
    from PIL import Image

    root = make_imagefolder(tmp_path / "pics", per_class=6, splits=("train", "test"))
    Image.new("RGB", (16, 16), (10, 120, 230)).save(root / "train" / "cat" / "valid.tga")
    (root / "train" / "dog" / "page.jpg").write_text("<html>404 not found</html>")
    data = load_hf(str(root), split_test="test", resident=resident, **common(tmp_path))
    assert len(data.train) + len(data.val) == 19
    assert [reason.rsplit("/", 1)[-1] for _, reason in data.bad_files] == [
        "page.jpg: not an image (unknown format)"
    ]


def test_local_image_folder_through_datasets_with_a_bad_file(tmp_path):
    root = make_imagefolder(tmp_path / "pics", per_class=6, splits=("train", "test"))
    write_bad_files(root / "train" / "cat")
    (root / "train" / "cat" / "notes.txt").unlink()  # datasets lists image extensions only
    data = load_hf(str(root), split_test="test", **common(tmp_path))
    assert data.class_names == ["cat", "dog", "fox"]
    assert len(data.test) == 18 and len(data.train) + len(data.val) == 18
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in data.bad_files) == ["truncated.jpg", "zero.jpg"]


@pytest.mark.parametrize(
    ("specs", "named"),
    [
        ({"split_test": "train"}, "data.split_train='train' and data.split_test='train'"),
        (
            {"split_train": "train[:80%]", "split_val": "train[40%:]", "split_test": "test"},
            "data.split_train='train[:80%]' and data.split_val='train[40%:]'",
        ),
    ],
)
def test_splits_that_share_samples_are_refused(tmp_path, specs, named):
    """They were renamed apart and the run tested on its own train images (acc 1.0)."""
    root = make_imagefolder(tmp_path / "pics", per_class=5, splits=("train", "test"))
    with pytest.raises(DataError, match=r"share [0-9]+ sample") as refused:
        load_hf(str(root), **specs, **common(tmp_path))
    assert named in str(refused.value) and "carve them from train" in str(refused.value)


def test_overlapping_slices_of_a_table_with_embedded_images_are_refused(tmp_path):
    """Its index ids name the slice (`bugs.parquet:train[70%:]:0`), so slices sharing rows
    were not seen: a 20-row table trained on 16 rows and tested on 6, 2 of them trained on."""
    path = write_hf_parquet(tmp_path / "bugs.parquet", classes=("ant", "bee"), per_class=10)
    settings = {"image_key": "img", "label_key": "y", **common(tmp_path)}
    with pytest.raises(DataError, match=r"share 2 sample\(s\) \(e\.g\. bugs\.parquet:train:14"):
        load_hf(str(path), split_train="train[:80%]", split_test="train[70%:]", **settings)
    data = load_hf(str(path), split_train="train[:80%]", split_test="train[80%:]", **settings)
    assert (len(data.train) + len(data.val), len(data.test)) == (16, 4)
    assert sorted(data.test.ids) == [f"bugs.parquet:train[80%:]:{i}" for i in range(4)]


def test_val_and_test_may_be_the_same_split_with_a_warning(tmp_path, caplog):
    """A set with only train and test, both held-out keys naming test, loaded before the
    refusal above and still does: model selection on test is the user's choice."""
    root = make_imagefolder(tmp_path / "pics", per_class=5, splits=("train", "test"))
    data = load_hf(str(root), split_val="test", split_test="test", **common(tmp_path))
    assert len(data.val) == len(data.test) == 15 and len(set(data.val.ids)) == 15
    assert "the test figures are optimistic" in caplog.text


def test_missing_column_names_the_columns(tmp_path):
    path = write_hf_parquet(tmp_path / "bugs.parquet")
    with pytest.raises(DataError, match=r"no column image.*columns: img, y"):
        load_hf(str(path), split_test=None, **common(tmp_path))


def test_class_count_other_than_num_classes_stops(tmp_path):
    path = write_hf_parquet(tmp_path / "bugs.parquet")
    with pytest.raises(DataError, match=r"data.num_classes=5 .* has 2 classes"):
        load_hf(
            str(path),
            image_key="img",
            label_key="y",
            split_test=None,
            num_classes=5,
            **common(tmp_path),
        )


def test_a_split_the_data_set_lacks_is_named_with_its_key(tmp_path):
    """A single file under the default split_test=test, a saved DatasetDict without a
    test split and a path that does not exist ended in bare tracebacks."""
    from datasets import load_dataset

    path = write_hf_parquet(tmp_path / "bugs.parquet")
    settings = {"image_key": "img", "label_key": "y", **common(tmp_path)}
    with pytest.raises(DataError, match=r"data\.split_test='test': .*split_test=null"):
        load_hf(str(path), **settings)
    saved = tmp_path / "saved"
    loaded = load_dataset("parquet", data_files=str(path), cache_dir=str(tmp_path / "hf"))
    loaded.save_to_disk(str(saved))
    with pytest.raises(DataError, match=r"data\.split_test='test'.*saved splits \(train\)"):
        load_hf(str(saved), **settings)
    for missing in (str(tmp_path / "nope"), "nope.parquet"):  # Hub's FileNotFoundError
        with pytest.raises(DataError, match=r"data\.name='.*nope.*': no such file or folder"):
            load_hf(missing, **settings)


@pytest.mark.parametrize(
    ("key", "spec"),
    [("split_train", "train[:150%]"), ("split_val", "train[90%:"), ("split_test", "train[:-101%]")],
)
def test_a_slice_datasets_cannot_read_is_named_with_its_key_before_loading(tmp_path, key, spec):
    """A bare ValueError ("Percent slice boundaries must be > -100 and < 100."), raised
    after the whole split was built, named no key."""
    path = write_hf_parquet(tmp_path / "bugs.parquet")
    specs = {"split_train": "train[:80%]", "split_val": None, "split_test": None, key: spec}
    with pytest.raises(DataError, match=rf"data\.{key}={re.escape(repr(spec))} is not a sl") as err:
        load_hf(str(path), image_key="img", label_key="y", **specs, **common(tmp_path))
    assert "a slice of one such as train[:90%]" in str(err.value)
    assert not (tmp_path / "hf_cache").exists()  # refused before any table was built


def test_a_csv_of_image_paths_sees_its_files_change(tmp_path):
    """The decode cache was keyed by the table alone: rewritten images kept old pixels."""
    import os

    from PIL import Image

    def write_images(shade: int) -> None:
        for i in range(6):
            path = tmp_path / "img" / f"{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (shade, shade, shade)).save(path)
            os.utime(path, ns=(shade * 10**9, shade * 10**9))  # a new modification time

    write_images(10)
    table = tmp_path / "files.csv"
    rows = [f"{tmp_path / 'img' / f'{i}.png'},{'ab'[i % 2]}" for i in range(6)]
    table.write_text("img,y\n" + "\n".join(rows) + "\n")
    settings = {"image_key": "img", "label_key": "y", "split_test": None, "resident": True}
    settings.update(val_fraction=0.0, test_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    first = load_hf(str(table), **settings, **common(tmp_path))
    assert int(first.train.images[0, 0, 0, 0]) == 10
    write_images(250)
    decode_cache.clear_memory_cache()
    again = load_hf(str(table), **settings, **common(tmp_path))
    assert int(again.train.images[0, 0, 0, 0]) == 250


def test_a_row_without_a_label_is_refused_naming_the_rows(tmp_path):
    """A null string label became a class named "None"."""
    import io

    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    from PIL import Image

    def png() -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (40, 80, 120)).save(buffer, format="PNG")
        return buffer.getvalue()

    labels = ["ant", "bee", None, "ant", "bee", "ant", "bee", "ant", "bee", "ant"]
    rows = {"img": [{"bytes": png(), "path": None} for _ in labels], "y": labels}
    features = Features({"img": ImageFeature(), "y": Value("string")})
    path = tmp_path / "unlabelled.parquet"
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    with pytest.raises(DataError, match=r"1 row\(s\) have no 'y' \(data.label_key\), e.g. row"):
        load_hf(str(path), image_key="img", label_key="y", split_test=None, **common(tmp_path))


def test_a_hub_name_without_network_is_named_with_the_local_ways_out(tmp_path):
    """datasets' ConnectionError reached the user through Hydra's wrapper."""
    import os
    import subprocess
    import sys

    code = (
        "from runner.data.sets.hf import load_hf\n"
        "from runner.data.decoding import DataError\n"
        "try:\n"
        f"    load_hf('someone/nothing', hf_cache_dir={str(tmp_path)!r})\n"
        "except DataError as err:\n"
        "    print('refused:', err)\n"
    )
    offline = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=offline, timeout=120
    )
    assert "refused: data.name='someone/nothing' cannot be loaded from the" in done.stdout, (
        done.stdout + done.stderr
    )[-2000:]
    assert "point data.name at a local copy" in done.stdout


def test_relative_paths_in_a_csv_are_read_from_the_csvs_folder(tmp_path, monkeypatch):
    """They were read from the working directory: every image was a bad file."""
    from PIL import Image

    folder = tmp_path / "set"
    lines = ["image,label"]
    for label, colour in (("x", (200, 30, 30)), ("y", (30, 30, 200))):
        (folder / "images" / label).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (8, 8), colour).save(folder / "images" / label / f"{i}.png")
            lines.append(f"images/{label}/{i}.png,{label}")
    (folder / "rel.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)  # not the CSV's folder
    data = load_hf(
        str(folder / "rel.csv"),
        image_key="image",
        label_key="label",
        split_test=None,
        **common(tmp_path),
    )
    assert len(data.train) + len(data.val) + len(data.test) == 16
    assert data.class_names == ["x", "y"]


def test_a_relative_path_read_from_the_working_directory_gets_no_id_under_the_table(
    tmp_path, monkeypatch
):
    """Its id named the file under the table's folder, where there is none: the audit's
    thumbnails of such rows were all "no image", and the id led a user nowhere."""
    _csv_of_images(tmp_path / "data", ["a", "b"] * 4)
    lines = (tmp_path / "data" / "table.csv").read_text().replace("images/", "data/images/")
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "table.csv").write_text(lines + "tables.png,a\n")
    monkeypatch.chdir(tmp_path)  # where data/images/ is read from
    settings = {"image_key": "image", "label_key": "label", "split_test": None}
    data = load_hf(str(tmp_path / "tables" / "table.csv"), **settings, **common(tmp_path))
    ids = [i for split in (data.train, data.val, data.test) for i in split.ids]
    assert len(ids) == 8 and data.bad_ids == ["tables.png"]  # looked for under tables/
    assert sorted(ids) == sorted(f"table.csv:train:{i}" for i in range(8))  # index ids


@pytest.mark.parametrize("resident", [True, False])
def test_a_relative_path_found_nowhere_names_the_folder_it_was_read_from(
    tmp_path, monkeypatch, resident
):
    """The reason named "missing/0.png" alone: not which folder it was looked for in."""
    folder = tmp_path / "set"
    table = _csv_of_images(folder, ["a", "b"] * 4)
    table.write_text(table.read_text() + "missing/0.png,a\n")
    monkeypatch.chdir(tmp_path)  # neither the table's folder nor where the image is
    settings = {"image_key": "image", "label_key": "label", "split_test": None}
    data = load_hf(str(table), **settings, resident=resident, **common(tmp_path))
    assert data.bad_files == [
        (
            "missing/0.png",
            f"missing/0.png: cannot read (No such file or directory; a relative path is read "
            f"from {folder}, else from the working directory {tmp_path})",
        )
    ]
    with pytest.raises(DataError, match=rf"read from {re.escape(str(folder))}, else from"):
        load_hf(str(table), **settings, on_bad_file="error", **common(tmp_path))


@pytest.mark.parametrize("resident", [True, False])
def test_a_row_without_an_image_is_a_bad_file(tmp_path, resident):
    """A null image cell stopped the run with a bare TypeError (os.fspath(None))."""
    from datasets import Dataset

    path = write_hf_parquet(tmp_path / "bugs.parquet", per_class=10)
    table = Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "hf_cache"))
    rows = table.to_dict()
    rows["img"][3] = None
    nulled = tmp_path / "nulled.parquet"
    Dataset.from_dict(rows, features=table.features).to_parquet(str(nulled))
    data = load_hf(
        str(nulled),
        image_key="img",
        label_key="y",
        split_test=None,
        resident=resident,
        **common(tmp_path),
    )
    assert data.bad_files == [
        ("nulled.parquet:train[3]", "nulled.parquet:train[3]: no image (an empty record)")
    ]
    assert len(data.train) + len(data.val) + len(data.test) == 19


def _saved_with_test(tmp_path, test):
    """A saved DatasetDict: train from write_hf_parquet, test made by `test(train)`."""
    from datasets import Dataset, DatasetDict

    path = write_hf_parquet(tmp_path / "bugs.parquet", per_class=10)
    train = Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "hf_cache"))
    saved = tmp_path / "saved"
    DatasetDict({"train": train, "test": test(train)}).save_to_disk(str(saved))
    return str(saved)


def test_a_test_split_without_labels_names_its_key_and_the_carve(tmp_path):
    """A test split without the label column raised datasets' bare ValueError, and one
    labelled -1 (a ClassLabel's "no label") was called a label train lacks."""
    settings = {"image_key": "img", "label_key": "y", **common(tmp_path)}
    no_column = _saved_with_test(tmp_path / "a", lambda t: t.select(range(4)).remove_columns("y"))
    with pytest.raises(
        DataError, match=r"'test' \(data.split_test\) has no column y .*data\.split_test=null"
    ):
        load_hf(no_column, **settings)
    minus_one = _saved_with_test(
        tmp_path / "b", lambda t: t.select(range(4)).map(lambda r: {"y": -1})
    )
    with pytest.raises(
        DataError,
        match=r"'test' \(data.split_test\): 4 row\(s\) have no 'y'.*data\.split_test=null",
    ):
        load_hf(minus_one, **settings)


def test_a_class_label_name_without_train_rows_is_named(tmp_path):
    """It was reported as a class whose images were all unreadable, in a folder train/zebra."""
    from datasets import ClassLabel, Dataset

    path = write_hf_parquet(tmp_path / "bugs.parquet", per_class=10)
    table = Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "hf_cache"))
    wider = table.cast_column("y", ClassLabel(names=["ant", "bee", "zebra"]))
    wider.to_parquet(str(tmp_path / "wider.parquet"))
    with pytest.raises(
        DataError, match=r"no row of class\(es\) zebra, which 'y'.s ClassLabel names"
    ):
        load_hf(
            str(tmp_path / "wider.parquet"),
            image_key="img",
            label_key="y",
            split_test=None,
            **common(tmp_path),
        )


def test_a_class_folder_only_in_test_of_an_image_folder_is_named_as_a_folder(tmp_path):
    """datasets names an image folder's classes after the folders of every split: a class
    only under test/ was refused with a fix for a ClassLabel the user never wrote."""
    root = make_imagefolder(tmp_path / "pics", classes=("ant", "bee"), splits=("train", "test"))
    make_imagefolder(root, classes=("cow",), per_class=2, splits=("test",))
    with pytest.raises(DataError) as refused:
        load_hf(str(root), **common(tmp_path))
    assert "has no train image of class folder(s) cow (in another split)" in str(refused.value)
    assert "ClassLabel" not in str(refused.value)


def test_relative_paths_in_a_folder_of_tables_are_read_from_that_folder(tmp_path, monkeypatch):
    """With data.name a folder of CSV tables, they were read from the working directory."""
    from PIL import Image

    folder = tmp_path / "set"
    (folder / "meta").mkdir(parents=True)
    for split in ("train", "test"):
        lines = ["image,label"]
        for label, colour in (("x", (200, 30, 30)), ("y", (30, 30, 200))):
            (folder / "images" / split / label).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (8, 8), colour).save(
                    folder / "images" / split / label / f"{i}.png"
                )
                lines.append(f"../images/{split}/{label}/{i}.png,{label}")
        (folder / "meta" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)  # not the tables' folder
    data = load_hf(str(folder / "meta"), image_key="image", label_key="label", **common(tmp_path))
    assert data.bad_files == []
    assert len(data.test) == 12 and len(data.train) + len(data.val) == 12


@pytest.mark.parametrize("relative", [True, False])
def test_csv_tables_whose_test_rows_name_train_files_are_refused(tmp_path, relative):
    """A CSV's text column (large_string) and relative paths got index ids: no check."""
    from PIL import Image

    folder = tmp_path / "set"
    rows = []
    for label, colour in (("x", (200, 30, 30)), ("y", (30, 30, 200))):
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.new("RGB", (8, 8), colour).save(folder / "images" / f"{label}{i}.png")
            path = f"images/{label}{i}.png" if relative else str(folder / f"images/{label}{i}.png")
            rows.append(f"{path},{label}")
    (folder / "train.csv").write_text("\n".join(["image,label", *rows]) + "\n")
    (folder / "test.csv").write_text("\n".join(["image,label", *rows[::3]]) + "\n")
    with pytest.raises(DataError, match=r"share 4 sample.*images/x0\.png"):
        load_hf(str(folder), image_key="image", label_key="label", **common(tmp_path))


def test_a_folder_named_by_a_relative_path_keeps_its_name(tmp_path, monkeypatch):
    """`data.name=.` failed in datasets ("dataset_name should be specified"), and its
    data set was named "" (ids ":train:0", a cache file "-<key>.pt")."""
    root = make_imagefolder(tmp_path / "pets", per_class=4, splits=("train", "test"))
    monkeypatch.chdir(root)
    data = load_hf(".", split_test="test", **common(tmp_path))
    assert data.name == "pets"
    # A link keeps its own name: the ids (and a stored run's test digest) are keyed by it.
    (tmp_path / "current").symlink_to(root)
    assert (
        load_hf(str(tmp_path / "current"), split_test="test", **common(tmp_path)).name == "current"
    )


def test_a_table_with_no_rows_is_named(tmp_path):
    """A CSV with its header only ended in datasets' 'Instruction "train" corresponds to
    no data!', which named neither the key nor the file."""
    table = tmp_path / "empty.csv"
    table.write_text("image,label\n")
    with pytest.raises(
        DataError, match=r"data.split_train='train': data.name='.*empty.csv' has no rows"
    ):
        load_hf(
            str(table), image_key="image", label_key="label", split_test=None, **common(tmp_path)
        )


def test_a_table_file_ids_its_rows_by_their_image_paths(tmp_path):
    """A table given as data.name had row-number ids: the same rows in another order gave
    `table.csv:train:0` another image, so an exclude or relabel file hit other samples."""
    from PIL import Image

    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    rows = []
    for label, colour in (("x", (200, 30, 30)), ("y", (30, 30, 200))):
        for i in range(6):
            Image.new("RGB", (8, 8), colour).save(folder / "images" / f"{label}{i}.png")
            rows.append(f"images/{label}{i}.png,{label}")
    ids_by_order = []
    for order in (rows, rows[::-1]):
        (folder / "table.csv").write_text("\n".join(["image,label", *order]) + "\n")
        data = load_hf(
            str(folder / "table.csv"),
            image_key="image",
            label_key="label",
            split_test=None,
            test_fraction=0.25,
            **common(tmp_path / str(len(ids_by_order))),
        )
        ids = [i for split in (data.train, data.val, data.test) for i in split.ids]
        labels = [int(v) for split in (data.train, data.val, data.test) for v in split.labels]
        ids_by_order.append(dict(zip(ids, labels, strict=True)))
    assert sorted(ids_by_order[0]) == sorted(f"images/{r.split(',')[0][7:]}" for r in rows)
    assert ids_by_order[0] == ids_by_order[1]


def test_embedded_images_with_the_same_names_in_two_splits_get_index_ids(tmp_path):
    """A Hub parquet file keeps each image's bytes and only its file name (`0.png` in
    every split): train and test were refused as sharing samples, all images different."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def split(count):
        rows = {"image": [], "label": []}
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(buffer, "PNG")
            rows["image"].append({"bytes": buffer.getvalue(), "path": f"{i}.png"})
            rows["label"].append(i % 2)
        features = datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
        )
        return datasets.Dataset.from_dict(rows, features=features)

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": split(20), "test": split(6)}).save_to_disk(str(saved))
    data = load_hf(str(saved), split_val=None, val_fraction=0.2, **common(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 6)
    assert sorted(data.test.ids) == sorted(f"saved:test:{i}" for i in range(6))
    assert all(i.startswith("saved:train:") for i in (*data.train.ids, *data.val.ids))


def test_a_saved_data_set_whose_columns_were_cast_loads(tmp_path):
    """`cast_column(..., ClassLabel(...))` before `save_to_disk`, the usual way to make a
    ClassLabel, saves a format naming the columns; loading it failed with a bare
    `KeyError('image.path')`."""
    import datasets

    folder = make_imagefolder(tmp_path / "pics", classes=("ant", "bee"), per_class=6)
    files = sorted(folder.glob("train/*/*.jpg"))
    table = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "label": [f.parent.name for f in files]}
    )
    table = table.cast_column("image", datasets.Image())
    table = table.cast_column("label", datasets.ClassLabel(names=["ant", "bee"]))
    table.save_to_disk(str(folder / "saved"))
    data = load_hf(str(folder / "saved"), split_test=None, test_fraction=0.25, **common(tmp_path))
    assert data.class_names == ["ant", "bee"]
    ids = sorted(i for split in (data.train, data.val, data.test) for i in split.ids)
    assert ids == sorted(f"saved:train:{i}" for i in range(12))  # save_to_disk embeds images
    assert sorted(int(v) for v in data.train.labels).count(0) == len(data.train) / 2


def test_a_table_that_lists_a_file_twice_is_refused_when_test_is_carved_from_it(tmp_path):
    """The carve drew rows one by one: `images/1.png` was in train and, as its copy, in
    the carved test split."""
    from PIL import Image

    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / "images" / f"{i}.png")
        rows.append(f"images/{i}.png,{'xy'[i % 2]}")
    table = folder / "table.csv"
    table.write_text("\n".join(["image,label", *rows, rows[1]]) + "\n")
    settings = {"image_key": "image", "label_key": "label", **common(tmp_path)}
    with pytest.raises(DataError, match=r"lists 1 file\(s\) more than once \(e\.g\. 'images/1"):
        load_hf(str(table), split_test=None, test_fraction=0.25, **settings)
    # Nothing carved: a repeated row only weighs its image twice in training.
    data = load_hf(str(table), split_test=None, test_fraction=0.0, val_fraction=0.0, **settings)
    assert len(data.train) == 13


def test_a_label_column_of_lists_names_data_label_key(tmp_path):
    """A multi-label (list) column failed with a bare "unhashable type: 'list'"."""
    from PIL import Image

    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "tags": [i % 2, 1]})
    table = folder / "table.json"
    table.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    with pytest.raises(
        DataError, match=r"'tags' \(data\.label_key\) holds lists \(e\.g\. \[0, 1\]"
    ):
        load_hf(
            str(table), image_key="image", label_key="tags", split_test=None, **common(tmp_path)
        )


def _csv_of_images(folder, labels, name="table.csv"):
    """folder/<name> listing one real PNG per label, by a path relative to `folder`."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image,label"]
    for i, label in enumerate(labels):
        Image.new("RGB", (8, 8), (20 * i, 90, 0)).save(folder / "images" / f"{i}.png")
        lines.append(f"images/{i}.png,{label}")
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


def test_a_column_of_text_as_the_image_column_is_refused_naming_data_image_key(tmp_path):
    """A column of class names or notes as data.image_key made every row a bad file: the
    run was refused for classes without a readable image, naming no key."""
    table = _csv_of_images(tmp_path / "set", ["a", "b"] * 6)
    lines = table.read_text().splitlines()
    notes = ["image,label,note"] + [f"{line},n{i}" for i, line in enumerate(lines[1:])]
    table.write_text("\n".join(notes) + "\n")
    settings = {"label_key": "label", "split_test": None, **common(tmp_path)}
    for key, value in (("note", "n0"), ("label", "a")):
        with pytest.raises(DataError) as refused:
            load_hf(str(table), image_key=key, **settings)
        assert f"the image column {key!r} (data.image_key) names no image file in 12 rows" in (
            str(refused.value)
        )
        assert f"(e.g. {value!r}, looked for under {table.parent}" in str(refused.value)
    data = load_hf(str(table), image_key="image", **settings)  # the column of image paths
    assert len(data.train) + len(data.val) + len(data.test) == 12


def test_a_label_column_of_fractional_numbers_is_refused_naming_data_label_key(tmp_path):
    """Scores 1.5 and 2.5 became the classes "1.5" and "2.5", with no word."""
    table = _csv_of_images(tmp_path / "set", [1.5, 2.5] * 4)
    settings = {"image_key": "image", "label_key": "label", "split_test": None}
    with pytest.raises(DataError, match=r"'label' \(data\.label_key\) holds numbers with a") as err:
        load_hf(str(table), **settings, **common(tmp_path))
    assert "(e.g. 1.5)" in str(err.value) and "map the values to integers" in str(err.value)
    # Whole numbers written as floats (1.0, 2.0) still name their classes, as before.
    whole = _csv_of_images(tmp_path / "whole", [1.0, 2.0] * 4)
    assert load_hf(str(whole), **settings, **common(tmp_path)).class_names == ["1.0", "2.0"]
    # A NaN (which Arrow keeps where pandas would write a null) is a row without a label.
    from datasets import Dataset

    rows = Dataset.from_csv(str(whole), cache_dir=str(tmp_path / "hf_cache")).to_dict()
    rows["label"][3] = float("nan")
    Dataset.from_dict(rows).to_parquet(str(tmp_path / "whole" / "nan.parquet"))
    with pytest.raises(DataError, match=r"1 row\(s\) have no 'label' \(data.label_key\), e.g"):
        load_hf(str(tmp_path / "whole" / "nan.parquet"), **settings, **common(tmp_path))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_an_image_column_of_integers_is_refused_naming_data_image_key(tmp_path, suffix):
    """The decoder met each int: "Error in call to target ... TypeError('expected str,
    bytes or os.PathLike object, not int')", naming neither the key nor the column."""
    from datasets import Dataset

    table = tmp_path / f"ids{suffix}"
    rows = Dataset.from_dict({"photo_id": list(range(8)), "y": ["a", "b"] * 4})
    rows.to_parquet(str(table)) if suffix == ".parquet" else rows.to_csv(str(table), index=False)
    settings = {"image_key": "photo_id", "label_key": "y", "split_test": None}
    with pytest.raises(DataError, match=r"image column 'photo_id' \(data\.image_key\)") as err:
        load_hf(str(table), **settings, **common(tmp_path))
    assert "holds int64 values, not images" in str(err.value)
    assert "Image feature, encoded image bytes, or image file paths" in str(err.value)


def test_a_split_whose_class_label_numbers_its_classes_otherwise_is_read_by_name(tmp_path):
    """Splits encoded one by one (`class_encode_column` per split): test, without dogs,
    names [cat, fox], so its fox is 1, which is train's dog. Every test fox was scored
    as a dog, with no error."""
    import datasets
    from PIL import Image

    colours = {"cat": (250, 0, 0), "dog": (0, 250, 0), "fox": (0, 0, 250)}
    (tmp_path / "images").mkdir()

    def split(name, classes, count):
        files, labels = [], []
        for class_name in classes:
            for i in range(count):
                path = tmp_path / "images" / f"{name}_{class_name}_{i}.png"
                Image.new("RGB", (8, 8), colours[class_name]).save(path)
                files.append(str(path))
                labels.append(class_name)
        table = datasets.Dataset.from_dict({"image": files, "label": labels})
        return table.cast_column("image", datasets.Image()).class_encode_column("label")

    test = split("test", ["cat", "fox"], 3)
    assert test.features["label"].names == ["cat", "fox"]
    saved = tmp_path / "saved"
    splits = {"train": split("train", ["cat", "dog", "fox"], 6), "test": test}
    datasets.DatasetDict(splits).save_to_disk(str(saved))
    data = load_hf(str(saved), split_val=None, val_fraction=0.0, **common(tmp_path))
    assert data.class_names == ["cat", "dog", "fox"]
    names = [data.class_names[i] for i in data.test.labels.tolist()]
    assert sorted(names) == ["cat"] * 3 + ["fox"] * 3
    blue = data.test.images[:, 2].float().mean((1, 2)) > 128  # the foxes' colour
    assert [n == "fox" for n in names] == blue.tolist()

    # A class that train's ClassLabel does not name is refused by its name.
    colours["wolf"] = (9, 9, 9)
    splits["test"] = split("stray", ["cat", "wolf"], 2)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved2"))
    with pytest.raises(DataError, match=r"has labels that 'train' lacks: wolf"):
        load_hf(str(tmp_path / "saved2"), split_val=None, val_fraction=0.0, **common(tmp_path))


def test_files_outside_the_tables_folder_are_compared_by_path(tmp_path):
    """Paths outside the table's folder have index ids, one per row: a file listed twice,
    or in train's table and test's, went unseen, and its copies were trained on and
    tested."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(12):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(images / f"{i}.png")
        rows.append(f"{images / f'{i}.png'},{'xy'[i % 2]}")  # absolute paths
    tables = tmp_path / "tables"
    tables.mkdir()
    table = tables / "train.csv"
    table.write_text("\n".join(["image,label", *rows, rows[1]]) + "\n")
    settings = {"image_key": "image", "label_key": "label", **common(tmp_path)}
    with pytest.raises(DataError, match=r"lists 1 file\(s\) more than once \(e\.g\. '/.*1\.png"):
        load_hf(str(table), split_test=None, test_fraction=0.25, **settings)

    # A folder of tables whose relative paths leave it, and whose test shares a file.
    relative = [f"../images/{i}.png,{'xy'[i % 2]}" for i in range(12)]
    table.write_text("\n".join(["image,label", *relative[:10]]) + "\n")
    (tables / "test.csv").write_text("\n".join(["image,label", *relative[9:]]) + "\n")
    with pytest.raises(DataError, match=r"share 1 sample\(s\) \(e\.g\. /.*images/9\.png"):
        load_hf(str(tables), **settings)
    (tables / "test.csv").write_text("\n".join(["image,label", *relative[10:]]) + "\n")
    data = load_hf(str(tables), **settings)
    assert sorted(data.test.ids) == ["tables:test:0", "tables:test:1"]  # ids as before


def test_slices_of_one_table_with_the_same_size_are_decoded_apart(tmp_path):
    """The decode cache's key must tell two equal-sized slices of one file apart."""
    path = write_hf_parquet(tmp_path / "bugs.parquet", per_class=4)
    settings = {"image_key": "img", "label_key": "y", "split_test": None, "resident": True}
    settings.update(val_fraction=0.0, test_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    halves = ("train[:25%]+train[50%:75%]", "train[25%:50%]+train[75%:]")
    first, second = (
        load_hf(str(path), split_train=h, **settings, **common(tmp_path)) for h in halves
    )
    assert len(first.train) == len(second.train) == 4
    assert not torch.equal(first.train.images, second.train.images)
    assert set(first.train.ids).isdisjoint(second.train.ids)


def test_a_table_held_in_memory_is_decoded_again_when_it_changes(tmp_path, monkeypatch):
    """A table without Arrow files (HF_DATASETS_IN_MEMORY_MAX_SIZE) is keyed by its data."""
    import io

    import datasets
    from PIL import Image

    def write_table(shade: int) -> None:  # same rows, labels and size; other pixels
        rows = {"img": [], "y": [0, 1] * 4}
        for _ in range(8):
            buffer = io.BytesIO()
            Image.new("RGB", (16, 16), (shade, shade, shade)).save(buffer, format="PNG")
            rows["img"].append({"bytes": buffer.getvalue(), "path": None})
        features = datasets.Features(
            {"img": datasets.Image(), "y": datasets.ClassLabel(names=["ant", "bee"])}
        )
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))

    monkeypatch.setattr(datasets.config, "IN_MEMORY_MAX_SIZE", 10**12)
    path = tmp_path / "bugs.parquet"
    settings = {"image_key": "img", "label_key": "y", "split_test": None, "resident": True}
    settings.update(val_fraction=0.0, test_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    write_table(10)
    in_memory = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert in_memory.cache_files == [], "the table is held in memory, with no Arrow files"
    assert int(load_hf(str(path), **settings, **common(tmp_path)).train.images.max()) == 10
    write_table(200)
    decode_cache.clear_memory_cache()  # the cache file in cache_dir stays
    assert int(load_hf(str(path), **settings, **common(tmp_path)).train.images.max()) == 200
