"""Stable sample ids on every split: bundled sets, CIFAR, image folders, Hugging Face."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from runner.data import decode_cache, decoding
from runner.data.build import build_data
from runner.data.decoding import DataError
from runner.data.sets.cifar import load_cifar
from runner.data.sets.digits import load_digits
from runner.data.sets.hf import load_hf
from runner.data.sets.imagefolder import load_imagefolder
from runner.data.sets.synthetic import make_synthetic
from runner.data.switches import apply_switches
from runner.reports.data_report import report_train_data
from runner.tracking.null import NullTracker
from tests.datagen import make_imagefolder, write_bad_files, write_cifar, write_hf_parquet


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    decode_cache.clear_memory_cache()
    yield


def all_ids(data) -> list[str]:
    return [str(i) for split in (data.train, data.val, data.test) for i in split.ids]


def test_digits_ids_are_the_index_in_scikit_learns_array():
    from sklearn.datasets import load_digits as sklearn_digits

    data = load_digits(image_size=8)
    ids = all_ids(data)
    assert sorted(ids) == sorted(f"digits:{i}" for i in range(1797))
    source = sklearn_digits()
    for split in (data.train, data.test):
        for position in (0, 5, len(split) - 1):
            index = int(str(split.ids[position]).split(":")[1])
            assert int(split.labels[position]) == int(source.target[index])
            expected = torch.from_numpy(source.images[index] * 255 / 16).round().float()
            assert torch.allclose(split.images[position, 0].float(), expected, atol=1)


def test_ids_do_not_depend_on_the_split_seed_and_follow_every_subset():
    one, other = load_digits(split_seed=0), load_digits(split_seed=1)
    image_of = {str(i): img for i, img in zip(other.train.ids, other.train.images, strict=True)}
    shared = [i for i, sid in enumerate(one.train.ids) if str(sid) in image_of][:50]
    assert shared
    for i in shared:
        assert torch.equal(one.train.images[i], image_of[str(one.train.ids[i])])
    noisy = apply_switches(one, seed=0, imbalance_ratio=5, label_noise=0.3)
    assert len(noisy.train.ids) == len(noisy.train) and len(set(noisy.train.ids)) == len(
        noisy.train
    )
    moved = noisy.train.to(torch.device("cpu"))
    assert moved.ids is noisy.train.ids


def test_synthetic_and_cifar_ids_name_the_source_index(tmp_path):
    synthetic = make_synthetic(num_samples=60)
    assert sorted(all_ids(synthetic)) == sorted(f"synthetic:{i}" for i in range(60))
    write_cifar(tmp_path, per_file=20)
    cifar = load_cifar(root=str(tmp_path), val_fraction=0.2)
    train_ids = [str(i) for i in (*cifar.train.ids, *cifar.val.ids)]
    assert sorted(train_ids) == sorted(f"cifar10:train:{i}" for i in range(100))
    assert [str(i) for i in cifar.test.ids] == [f"cifar10:test:{i}" for i in range(20)]
    for split in (cifar.train, cifar.val, cifar.test):
        for position, sample_id in enumerate(split.ids):
            index = int(str(sample_id).rsplit(":", 1)[1])
            # write_cifar: image i of a batch file has red value i % 256 at its first pixel
            assert int(split.images[position, 0, 0, 0]) == index % 20


@pytest.mark.parametrize("resident", [True, False])
def test_imagefolder_ids_are_paths_under_the_root_and_skip_bad_files(tmp_path, resident):
    root = make_imagefolder(tmp_path / "pics", per_class=6, splits=("train", "test"))
    write_bad_files(root / "train" / "dog")
    data = load_imagefolder(
        str(root), image_size=16, num_workers=0, resident=resident, cache_dir=str(tmp_path / "c")
    )
    ids = all_ids(data)
    # Streaming finds the truncated file only when it reads it; the others never count.
    assert len(ids) == len(set(ids)) == (36 if resident else 37)
    assert all((root / i).is_file() for i in ids) and "train/dog/zero.jpg" not in ids
    assert {i.split("/")[0] for i in (*data.train.ids, *data.val.ids)} == {"train"}
    for split in (data.train, data.test):
        for position in range(len(split)):
            sample_id = str(split.ids[position])
            if sample_id.endswith("truncated.jpg"):
                continue
            images, labels = split.take(torch.tensor([position]))
            assert data.class_names[int(labels[0])] == sample_id.split("/")[1]
            assert torch.equal(images[0], decoding.decode_record(str(root / sample_id), 16))
    again = load_imagefolder(
        str(root), image_size=16, num_workers=0, resident=resident, cache_dir=str(tmp_path / "c")
    )
    assert np.array_equal(again.train.ids, data.train.ids), "the same from the decode cache"


def test_imagefolder_ids_under_a_home_relative_root_are_the_same(tmp_path, monkeypatch):
    """data.root=~/pics gives the ids (and the decode cache) of the absolute path."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "..")
    make_imagefolder(tmp_path / "pics", per_class=3, splits=("train", "test"))
    common = {"image_size": 16, "num_workers": 0, "cache_dir": str(tmp_path / "cache")}
    home = load_imagefolder("~/pics", **common)
    absolute = load_imagefolder(str(tmp_path / "pics"), **common)
    assert all_ids(home) == all_ids(absolute)
    assert all_ids(home)[0].startswith(("train/", "test/"))
    decode_cache.wait_for_cache_writes()  # the file is written on a thread of its own
    assert len(list((tmp_path / "cache").iterdir())) == 1, "one decode cache file, not two"


def test_a_file_name_that_is_not_utf8_gets_a_printable_id(tmp_path):
    """Its surrogate-escaped id crashed the run's data fingerprint (and any CSV of ids)."""
    import os
    import shutil

    from runner.data.splits import splits_digest

    root = make_imagefolder(tmp_path / "pics", per_class=4)
    cat = os.fsencode(root / "train" / "cat")
    shutil.copy(cat + b"/000.jpg", cat + b"/caf\xe9.jpg")  # a Latin-1 name, as old zips hold
    data = load_imagefolder(str(root), image_size=16, num_workers=0, split_seed=0)
    assert "train/cat/caf\\xe9.jpg" in all_ids(data)
    assert len(splits_digest(data)) == 16
    (tmp_path / "ids.csv").write_text("\n".join(all_ids(data)), encoding="utf-8")


def test_two_files_with_one_escaped_id_are_refused(tmp_path):
    """A Latin-1 name (its id escapes the byte as backslash-x-e-9) and a file whose name
    spells that escape had one id: one image stood for both, the other was lost."""
    import os
    import shutil

    root = make_imagefolder(tmp_path / "pics", per_class=4)
    cat = os.fsencode(root / "train" / "cat")
    shutil.copy(cat + b"/000.jpg", cat + b"/caf\xe9.jpg")
    shutil.copy(cat + b"/001.jpg", cat + b"/caf\\xe9.jpg")  # a backslash in the name
    with pytest.raises(DataError, match=r"would have one sample id, 'train/cat/caf\\\\xe9\.jpg'"):
        load_imagefolder(str(root), image_size=16, num_workers=0, split_seed=0)


def test_hf_ids_are_paths_in_a_folder_and_indices_in_a_file(tmp_path):
    common = {"image_size": 16, "num_workers": 0, "hf_cache_dir": str(tmp_path / "hf")}
    root = make_imagefolder(tmp_path / "pics", per_class=4, splits=("train", "test"))
    folder = load_hf(str(root), split_test="test", **common)
    assert all((root / i).is_file() for i in all_ids(folder))
    assert sorted(str(i) for i in folder.test.ids)[0] == "test/cat/000.jpg"
    path = write_hf_parquet(tmp_path / "bugs.parquet", per_class=10)
    parquet = load_hf(str(path), image_key="img", label_key="y", split_test=None, **common)
    assert sorted(all_ids(parquet)) == sorted(f"bugs.parquet:train:{i}" for i in range(20))


def test_a_factory_without_ids_gets_positional_ones(make_cfg):
    cfg = make_cfg("data.num_samples=40", tiny=True)
    data = build_data(cfg.data)
    assert str(data.train.ids[0]).startswith("synthetic:")
    bare = make_synthetic(num_samples=40)
    bare.train.ids = None
    bare.ensure_ids()
    assert [str(i) for i in bare.train.ids[:2]] == ["synthetic:train:0", "synthetic:train:1"]


def test_label_noise_csv_names_each_sample(tmp_path):
    data = apply_switches(load_digits(), seed=0, label_noise=0.2)
    report_train_data(data, tmp_path, NullTracker())
    with (tmp_path / "label_noise.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["sample_id", "clean_label", "noisy_label", "train_index"]
    assert [r["sample_id"] for r in rows] == [str(i) for i in data.train.ids]
    flipped = [r for r in rows if r["clean_label"] != r["noisy_label"]]
    assert 0.1 < len(flipped) / len(rows) < 0.3


def test_thumbnails_of_an_image_folder_come_from_its_files(tmp_path):
    from runner.data.lookup import load_images

    root = make_imagefolder(tmp_path / "pics", per_class=3, size=40)
    cfg = {"_target_": "runner.data.sets.imagefolder.load_imagefolder", "root": str(root)}
    wanted = ["train/dog/001.jpg", "train/fox/002.jpg", "train/cat/gone.jpg"]
    images = load_images(cfg, wanted, file_size=24)
    assert set(images) == set(wanted[:2]), "a file that is gone has no thumbnail"
    expected = decoding.decode_record(str(root / wanted[0]), 24)
    assert images[wanted[0]].shape == (3, 24, 24) and torch.equal(images[wanted[0]], expected)


def test_thumbnails_of_a_table_of_image_paths_come_from_its_files(tmp_path):
    """data=hf with a CSV of image paths as data.name: the audit built the whole data set
    again, decoding every image, for a page of thumbnails at the data's size."""
    from runner.data.lookup import load_images

    root = make_imagefolder(tmp_path / "pics", per_class=3, size=40)
    files = sorted((root / "train").rglob("*.jpg"))
    lines = [f"{f.relative_to(root).as_posix()},{f.parent.name}" for f in files]
    (root / "table.csv").write_text("\n".join(["image,label", *lines]) + "\n")
    cfg = {"_target_": "runner.data.sets.hf.load_hf", "name": str(root / "table.csv")}
    cfg |= {"image_size": 16, "split_test": None, "hf_cache_dir": str(tmp_path / "hf")}
    wanted = ["train/dog/001.jpg", "train/fox/002.jpg"]
    images = load_images(cfg, wanted, file_size=24)
    assert set(images) == set(wanted)
    expected = decoding.decode_record(str(root / wanted[0]), 24)
    assert torch.equal(images[wanted[0]], expected), "read from the file, at file_size"


def test_a_good_file_whose_name_is_not_utf8_is_read_when_streamed(tmp_path):
    """The check of its first bytes opened the printable name, not the file."""
    import os
    import shutil

    root = make_imagefolder(tmp_path / "pics", per_class=4)
    cat = os.fsencode(root / "train" / "cat")
    shutil.copy(cat + b"/000.jpg", cat + b"/caf\xe9.jpg")
    data = load_imagefolder(str(root), image_size=16, num_workers=0, resident=False)
    assert data.bad_files == [] and "train/cat/caf\\xe9.jpg" in all_ids(data)


def test_a_bad_file_whose_name_is_not_utf8_is_listed_escaped(tmp_path):
    """bad_files.txt was written as strict UTF-8: the run stopped at its start."""
    import os

    root = make_imagefolder(tmp_path / "pics", per_class=4)
    (root / "train" / "cat" / "000.jpg").write_bytes(b"")
    os.rename(
        root / "train" / "cat" / "000.jpg", os.fsencode(root / "train" / "cat") + b"/\xe9.jpg"
    )
    data = load_imagefolder(str(root), image_size=16, num_workers=0, split_seed=0)
    assert data.bad_files[0][1].endswith("train/cat/\\xe9.jpg: empty file (0 bytes)")
    report_train_data(data, tmp_path, NullTracker())
    assert "train/cat/\\xe9.jpg" in (tmp_path / "bad_files.txt").read_text(encoding="utf-8")


def test_a_class_folder_whose_name_is_not_utf8_is_refused_before_training(tmp_path):
    """It trained, then per_class.csv (strict UTF-8) ended the run after the compute."""
    import os

    from runner.data.decoding import DataError

    root = make_imagefolder(tmp_path / "pics", per_class=4)
    os.rename(root / "train" / "cat", os.fsencode(root / "train") + b"/caf\xe9")
    with pytest.raises(DataError, match=r"not valid UTF-8: \['caf\\\\xe9'\]. .*rename"):
        load_imagefolder(str(root), image_size=16, num_workers=0)
