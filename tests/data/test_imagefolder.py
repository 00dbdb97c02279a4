"""Image folders on disk: every image mode, bad files, layout errors, cache, streaming."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from runner.data import decode_cache, decoding
from runner.data.decoding import BadImageError, DataError, decode_record
from runner.data.samplers import RandomSampler, WeightedClassSampler
from runner.data.sets.imagefolder import load_imagefolder
from runner.data.splits import Split
from runner.data.streaming import EncodedSplit
from tests.datagen import (
    EXPECTED_RGB,
    make_imagefolder,
    write_bad_files,
    write_image,
    write_noise_jpeg,
)

CPU = torch.device("cpu")
SUFFIX = {"png16": ".png", "cmyk": ".jpg", "upper": ".JPG", "rgb": ".jpg"}


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    decode_cache.clear_memory_cache()
    yield
    decode_cache.clear_memory_cache()


def mode_folder(root):
    """train/<kind>/ with two images of that kind each, plus bad files in train/rgb/."""
    for kind in EXPECTED_RGB:
        for i in range(2):
            write_image(root / "train" / kind / f"img{i}{SUFFIX.get(kind, '.png')}", kind)
    bad = write_bad_files(root / "train" / "rgb")
    return root, bad


def load(root, **kwargs):
    settings = {"image_size": 8, "val_fraction": 0.0, "test_fraction": 0.0, "num_workers": 0}
    return load_imagefolder(str(root), **{**settings, **kwargs})


@pytest.mark.parametrize("kind", sorted(EXPECTED_RGB))
def test_each_image_mode_decodes_to_the_right_rgb_uint8(tmp_path, kind):
    path = write_image(tmp_path / f"x{SUFFIX.get(kind, '.png')}", kind)
    image = decode_record(str(path), image_size=12)
    assert image.dtype == torch.uint8 and image.shape == (3, 12, 12)
    tolerance = 3 if SUFFIX.get(kind, ".png").lower() == ".jpg" else 0  # JPEG is lossy
    mean = image.float().mean(dim=(1, 2))
    assert torch.allclose(mean, torch.tensor(EXPECTED_RGB[kind]).float(), atol=tolerance), mean


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    image = decode_record(str(tmp_path / "ramp.png"), image_size=8)
    expected = torch.from_numpy((ramp.astype(np.int64) * 255 + 32767) // 65535)
    assert torch.equal(image[0].long(), expected)
    assert int(image.min()) == 0 and int(image.max()) == 255 and (image < 255).float().mean() > 0.9


def test_a_dark_sixteen_bit_tiff_is_scaled_like_a_png(tmp_path):
    """A 16-bit TIFF of values <= 255 was read as 8-bit: 256 times too bright."""
    import numpy as np
    from PIL import Image

    dark = np.full((8, 8), 200, dtype=np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark.tif")
    Image.fromarray(dark).save(tmp_path / "dark.png")
    tif = decode_record(str(tmp_path / "dark.tif"), image_size=8)
    png = decode_record(str(tmp_path / "dark.png"), image_size=8)
    assert torch.equal(tif, png) and int(tif.max()) == 1


def test_non_square_images_are_resized_and_center_cropped(tmp_path):
    path = write_noise_jpeg(tmp_path / "wide.jpg", seed=0, size=20)
    from PIL import Image

    Image.open(path).resize((40, 20)).save(path)
    image = decode_record(str(path), image_size=10)
    assert image.shape == (3, 10, 10)


@pytest.mark.parametrize(
    ("decoder", "image_format"),
    [("torchvision", "JPEG"), ("torchvision", "WEBP"), ("pillow", "JPEG")],
)
def test_a_photo_is_turned_upright_by_its_exif_orientation(tmp_path, decoder, image_format):
    """A phone photo stored sideways with EXIF orientation 6 was trained on sideways (and a
    WebP one still was: torchvision does not apply a WebP's orientation)."""
    import io

    from PIL import Image

    stored = Image.new("RGB", (40, 20), "black")
    stored.paste((255, 255, 255), (0, 0, 20, 20))  # white left half, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: the white half on top
    buffer = io.BytesIO()
    stored.save(buffer, image_format, exif=exif.tobytes())
    if decoder == "torchvision":
        image = decoding.decode_bytes(buffer.getvalue(), image_size=20)
    else:
        image = decoding._decode_pillow(buffer.getvalue())
    assert tuple(image.shape[-2:]) == ((20, 20) if decoder == "torchvision" else (40, 20))
    height = image.shape[-2]
    top, bottom = image[:, : height // 2].float().mean(), image[:, height // 2 :].float().mean()
    assert top > 200 and bottom < 50


@pytest.mark.parametrize("resident", [True, False])
def test_folder_of_every_mode_with_bad_files(tmp_path, resident):
    root, bad = mode_folder(tmp_path / "data")
    data = load(root, resident=resident)
    assert data.class_names == sorted(EXPECTED_RGB)
    assert isinstance(data.train, Split if resident else EncodedSplit)
    images, labels = _all_images(data.train)
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 8, 8)
    assert torch.bincount(labels).tolist() == [2] * len(EXPECTED_RGB)
    for label, kind in enumerate(data.class_names):
        tolerance = 3 if SUFFIX.get(kind, ".png").lower() == ".jpg" else 0
        colour = images[labels == label].float().mean(dim=(0, 2, 3))
        assert torch.allclose(colour, torch.tensor(EXPECTED_RGB[kind]).float(), atol=tolerance)
    listed = {path for path, _ in data.bad_files}
    # The streaming path checks leading bytes up front and finds truncation in batches.
    expected = {bad["zero"], bad["text"]} | ({bad["truncated"]} if resident else set())
    assert listed == {str(p) for p in expected}
    assert all(path in reason for path, reason in data.bad_files)
    assert sorted(data.bad_ids) == sorted(p.relative_to(root).as_posix() for p in expected)


def _all_images(split):
    """Every image and label of a split, through its own loader."""
    loader = split.loader(64, CPU)
    batches = list(loader)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def test_streaming_skips_a_truncated_file_in_its_batch_and_lists_it(tmp_path):
    root, bad = mode_folder(tmp_path / "data")
    data = load(root, resident=False)
    loader = data.train.loader(5, CPU)
    seen = sum(len(labels) for _, labels in loader)
    assert seen == len(data.train) - 1, "the truncated file is dropped from its batch"
    assert [path for path, _ in loader.bad_files] == [str(bad["truncated"])]


@pytest.mark.parametrize("resident", [True, False])
def test_on_bad_file_error_names_the_file(tmp_path, resident):
    root, bad = mode_folder(tmp_path / "data")
    if resident:  # found at start: the one-line error with the key and the fix
        with pytest.raises(DataError, match=r"(notes\.txt|zero\.jpg|truncated\.jpg).*skip"):
            load(root, resident=True, on_bad_file="error")
        return
    with pytest.raises(DataError, match=r"(notes\.txt|zero\.jpg).*data\.on_bad_file=error"):
        load(root, resident=False, on_bad_file="error")  # the leading bytes are read at start
    bad["zero"].unlink()
    bad["text"].unlink()
    data = load(root, resident=False, on_bad_file="error")
    # Found while streaming: the same one-line error (from a worker it was a traceback).
    with pytest.raises(DataError, match=r"truncated\.jpg.*data\.on_bad_file=error"):
        list(data.train.loader(64, CPU))
    workers = load(root, resident=False, on_bad_file="error", num_workers=1)
    with pytest.raises(DataError, match=r"^[^\n]*truncated\.jpg[^\n]*skip"):
        list(workers.train.loader(64, CPU))


def test_empty_class_folder_stops_with_its_name(tmp_path):
    root = make_imagefolder(tmp_path / "data", per_class=2)
    (root / "train" / "owl").mkdir()
    with pytest.raises(DataError, match=r"1 empty class folder.*train/owl"):
        load(root)


def test_class_folder_with_only_bad_files_stops_with_its_name(tmp_path):
    root = make_imagefolder(tmp_path / "data", per_class=2)
    write_bad_files(root / "train" / "owl")
    with pytest.raises(DataError, match=r"no readable image: train/owl \(3 bad file.*, e\.g\. "):
        load(root)


def test_a_val_class_train_lacks_stops_and_a_class_val_lacks_is_allowed(tmp_path):
    root = make_imagefolder(tmp_path / "data", per_class=2, splits=("train", "val", "test"))
    (root / "val" / "dog").rename(root / "val" / "wolf")
    with pytest.raises(DataError) as info:
        load(root)
    message = str(info.value)
    assert "val has 1 class folder(s) that" in message and "lacks: wolf (the" in message
    assert "missing from val/ (allowed): dog." in message
    # 300 stray folders gave a 12,675-character line; the first ten and a count now.
    for number in range(300):
        (root / "val" / f"stray_{number:03d}").mkdir()
    with pytest.raises(DataError) as info:
        load(root)
    assert "has 301 class folder(s) that" in str(info.value)
    assert "stray_008, stray_009 (and 291 more)" in str(info.value)
    assert len(str(info.value)) < 600
    for number in range(300):
        (root / "val" / f"stray_{number:03d}").rmdir()
    # A rare class with no held-out image: once refused whether its folder was left
    # empty ("remove the folders") or removed ("the class folders must be the same").
    shutil.rmtree(root / "val" / "wolf")
    for image in (root / "test" / "fox").iterdir():
        image.unlink()
    data = load(root)
    assert torch.bincount(data.val.labels, minlength=3).tolist() == [2, 0, 2]
    assert torch.bincount(data.test.labels, minlength=3).tolist() == [2, 2, 0]
    # A test/ with no image at all is refused at the scan, naming the way out (it was
    # decoded and then refused as an empty split, advising data.test_fraction).
    for folder in (root / "test").iterdir():
        shutil.rmtree(folder)
        folder.mkdir()
    with pytest.raises(DataError, match=r"test holds no image .*remove it to carve test"):
        load(root)


def test_a_class_spelt_in_another_unicode_form_is_the_same_class(tmp_path):
    """val/éléphant copied from macOS (NFD) was refused as a class train/éléphant (NFC)
    lacks, and listed as missing from val/ in the same breath."""
    import unicodedata

    from runner.data.sets.imagefolder import load_test_folder

    nfc, nfd = (unicodedata.normalize(form, "éléphant") for form in ("NFC", "NFD"))
    root = make_imagefolder(tmp_path / "data", classes=("cat", nfc), per_class=2)
    make_imagefolder(tmp_path / "data", classes=("cat", nfd), per_class=2, splits=("val",))
    data = load(root)
    assert data.class_names == ["cat", nfc]
    assert torch.bincount(data.val.labels, minlength=2).tolist() == [2, 2]
    held_out = load_test_folder(
        {"root": str(root / "val"), "num_workers": 0},
        ["cat", nfc],
        image_size=8,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )
    assert torch.bincount(held_out.test.labels, minlength=2).tolist() == [2, 2]


def test_class_count_other_than_num_classes_stops(tmp_path):
    root = make_imagefolder(tmp_path / "data", per_class=2)
    with pytest.raises(DataError, match=r"data.num_classes=5 but .*train has 3 class folders"):
        load(root, num_classes=5)
    assert load(root, num_classes=3).num_classes == 3


def test_missing_train_folder_names_the_root(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"data.root=.*data' has no train/ folder"):
        load(tmp_path / "data")


def test_a_train_runs_missing_image_folder_is_refused_with_the_config(make_cfg, tmp_path):
    """It was found when the data was built, after the run dir (.hydra/, run.log) was made."""
    from runner.config.validation import ConfigError, validate

    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"nope' has no train/ folder \(it does not exist\)"):
        validate(make_cfg("data=imagefolder", f"data.root={missing}", tiny=False))
    folder = make_imagefolder(missing, per_class=1)
    validate(make_cfg("data=imagefolder", f"data.root={folder}", tiny=False))


def test_a_data_root_that_is_a_file_is_named_as_a_file(tmp_path):
    """It was said not to exist ("it does not exist"), which sent the user looking for it."""
    archive = tmp_path / "data.zip"
    archive.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"data.root=.*data.zip' is a file, not a folder") as err:
        load(archive)
    assert "does not exist" not in str(err.value)
    assert "data.root must be the data set's folder" in str(err.value)


def test_a_class_folder_that_is_a_broken_link_is_refused_naming_its_target(tmp_path):
    """It was skipped as neither folder nor file: the run trained on the other classes."""
    root = make_imagefolder(tmp_path / "data", per_class=2)
    gone = tmp_path / "elsewhere" / "zebra"
    (root / "train" / "zebra").symlink_to(gone, target_is_directory=True)
    with pytest.raises(DataError, match="broken links whose target does not exist") as err:
        load(root)
    assert f"{root / 'train' / 'zebra'} -> {gone}" in str(err.value)
    assert "Point each link at its class's folder, or remove it" in str(err.value)


def test_without_val_and_test_folders_the_split_is_stratified_and_seeded(tmp_path):
    root = make_imagefolder(tmp_path / "data", per_class=20)
    data = load(root, val_fraction=0.1, test_fraction=0.2, split_seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (42, 6, 12)
    assert torch.bincount(data.test.labels).tolist() == [4, 4, 4]
    again = load(root, val_fraction=0.1, test_fraction=0.2, split_seed=0)
    assert torch.equal(again.test.images, data.test.images)


def test_a_fraction_the_folders_own_split_replaces_is_said_not_to_be_used(tmp_path, caplog):
    """data.val_fraction=0.3 beside a val/ folder did nothing, without a word."""
    root = make_imagefolder(tmp_path / "data", per_class=10, splits=("train", "val"))
    with caplog.at_level("INFO", logger="runner"):
        data = load(root, val_fraction=0.3, test_fraction=0.2, split_seed=0)
    assert len(data.val) == 30 and len(data.test) == 6  # val/ as it is; test carved
    assert "data.val_fraction=0.3 is not used" in caplog.text
    assert "test_fraction" not in caplog.text


def test_the_carved_splits_do_not_depend_on_which_files_turn_out_bad(tmp_path):
    """They were drawn after the bad files were dropped: a truncated file (found when
    decoded resident, later when streamed) moved other samples into the test split."""
    root = make_imagefolder(tmp_path / "data", per_class=10)
    write_bad_files(root / "train" / "cat")
    settings = {"val_fraction": 0.2, "test_fraction": 0.2, "split_seed": 1}
    resident, streamed = (load(root, **settings, resident=keep) for keep in (True, False))
    truncated = {"train/cat/truncated.jpg"}  # found when decoded: in a batch when streamed
    for split in ("train", "val", "test"):
        ids = [set(getattr(d, split).ids) - truncated for d in (resident, streamed)]
        assert ids[0] == ids[1] and len(ids[0]) >= 6
    # A class whose every train-side file is bad takes one back from val or test.
    for path in (root / "train" / "dog").iterdir():
        if f"train/dog/{path.name}" in set(resident.train.ids):
            path.write_bytes(b"")
    data = load(root, **settings)
    assert (data.train.labels == data.class_names.index("dog")).sum() == 1


def test_val_and_test_folders_are_used_when_present(tmp_path):
    root = make_imagefolder(tmp_path / "data", per_class=4, splits=("train", "val", "test"))
    data = load(root, val_fraction=0.5, test_fraction=0.3)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 12, 12)


@pytest.mark.parametrize(
    ("maxval", "value", "expected"),
    [(65535, 200, 1), (65535, 0x8080, 128), (1023, 1023, 255), (255, 200, 200)],
)
def test_a_dark_16_bit_pgm_keeps_its_scale(maxval, value, expected):
    """Pillow reads a 16-bit PGM as "I"; a dark one (all <= 255) came out 256x too bright."""
    import numpy as np

    from runner.data.decoding import decode_bytes

    dtype = ">u2" if maxval > 255 else "u1"
    pgm = f"P5\n4 4\n{maxval}\n".encode() + np.full((4, 4), value, dtype).tobytes()
    assert decode_bytes(pgm, 4)[:, 2, 2].tolist() == [expected] * 3


def test_decode_cache_file_is_reused_and_keyed_by_content(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "data", per_class=5)
    cache = tmp_path / "cache"
    first = load(root, cache_dir=str(cache))
    decode_cache.wait_for_cache_writes()  # written beside the run, not before it goes on
    (cache_file,) = cache.glob("*.pt")
    decode_cache.clear_memory_cache()
    calls = []
    real_decode_all = decoding.decode_all
    monkeypatch.setattr(
        "runner.data.sets.records.decode_all",
        lambda *a, **k: calls.append(1) or real_decode_all(*a, **k),
    )
    second = load(root, cache_dir=str(cache))
    assert calls == [] and torch.equal(first.train.images, second.train.images)
    # A changed file is another content: decoded again, into a second cache file.
    target = root / "train" / "cat" / "000.jpg"
    write_noise_jpeg(target, seed=12345, size=16)
    os.utime(target, ns=(1, 1))
    decode_cache.clear_memory_cache()
    third = load(root, cache_dir=str(cache))
    decode_cache.wait_for_cache_writes()
    assert calls == [1] and len(list(cache.glob("*.pt"))) == 2
    assert not torch.equal(first.train.images, third.train.images)
    assert cache_file.is_file()


def test_auto_resident_streams_when_the_decoded_size_is_large(tmp_path):
    root = make_imagefolder(tmp_path / "data", per_class=3)
    assert isinstance(load(root, resident="auto").train, Split)
    assert isinstance(load(root, resident="auto", resident_max_gb=1e-9).train, EncodedSplit)


def test_streaming_loader_follows_the_sampler_and_matches_resident_data(tmp_path):
    root = make_imagefolder(tmp_path / "data", per_class=10)
    resident = load(root, resident=True).train
    streaming = load(root, resident=False, num_workers=2).train
    assert torch.equal(resident.labels, streaming.labels)
    for sampler_cls in (RandomSampler, WeightedClassSampler):
        sampler = sampler_cls(resident.labels, seed=3)
        fast = resident.loader(8, CPU, sampler, drop_last=True)
        slow = streaming.loader(8, CPU, sampler, drop_last=True)
        assert len(fast) == len(slow) == 3
        for epoch in (1, 2):  # persistent workers see the new epoch's order
            fast.set_epoch(epoch)
            slow.set_epoch(epoch)
            pairs = list(zip(fast, slow, strict=True))
            for (a_images, a_labels), (b_images, b_labels) in pairs:
                assert b_images.dtype == torch.uint8
                assert torch.equal(a_labels, b_labels) and torch.equal(a_images, b_images)
            order = sampler.indices(epoch)[:24]
            assert torch.equal(torch.cat([b[1] for _, b in pairs]), resident.labels[order])


@pytest.mark.slow
@pytest.mark.parametrize("resident", [True, False])
def test_training_run_on_a_folder_logs_bad_files_counts_and_tail_accuracy(
    make_cfg, tmp_path, resident
):
    from runner.train import run
    from tests.conftest import query

    root = make_imagefolder(tmp_path / "data", classes=("a", "b", "c", "d"), per_class=15)
    bad = write_bad_files(root / "train" / "d")
    cfg = make_cfg(
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=16",
        f"data.resident={str(resident).lower()}",
        "data.num_workers=1",
        "data.imbalance_ratio=4",
        "model=timm",
        "model.name=resnet10t",
        "trainer.max_epochs=1",
        "trainer.batch_size=8",
        "sampler=balanced",
        "loss=balanced_softmax",
        tiny=False,
    )
    run(cfg)
    run_dir = tmp_path / "run"
    db = tmp_path / "outputs" / "mlflow.db"
    assert query(db, "SELECT status FROM runs") == [("FINISHED",)]
    params = dict(query(db, "SELECT key, value FROM params"))
    # 15 per class: 2 go to val, 2 to test, 11 train; ratio 4 -> 11, 6, 4, 2 (int(11 * 4^(-c/3))).
    # Streaming finds the truncated file only when it reads it, so class d has 12 train
    # samples and sets n_max: 12 (but a has 11), 7, 4, 3.
    assert params["data.train_class_counts"] == ("11,6,4,2" if resident else "11,7,4,3")
    assert params["data.num_bad_files"] == ("3" if resident else "2")
    metric_names = {row[0] for row in query(db, "SELECT DISTINCT key FROM metrics")}
    assert {"test/head_acc", "test/medium_acc", "test/tail_acc"} <= metric_names
    (artifact_uri,) = query(db, "SELECT artifact_uri FROM runs")[0]
    artifacts = Path(artifact_uri.removeprefix("file://"))
    assert (artifacts / "class_counts.png").is_file()
    listed = (artifacts / "bad_files.txt").read_text()
    assert str(bad["zero"]) in listed and str(bad["text"]) in listed
    assert (run_dir / "bad_files.txt").is_file()


@pytest.mark.slow
def test_a_streamed_batch_whose_files_all_fail_to_decode_leaves_the_epoch_finished(
    make_cfg, tmp_path
):
    """8 good train images and 20 truncated ones (their headers pass the check at the
    start) in batches of 2: some batches have only truncated files, and some are left with
    one image (too few for BatchNorm), so the loader gives fewer batches than its length.
    The epochs still end as finished (not as an interruption)."""
    from runner.train import run

    root = make_imagefolder(
        tmp_path / "data", classes=("a", "b"), per_class=4, splits=("train", "val", "test")
    )
    truncated = write_bad_files(tmp_path / "bad")["truncated"].read_bytes()
    for i in range(20):
        (root / "train" / "a" / f"truncated{i}.jpg").write_bytes(truncated)
    cfg = make_cfg(
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=16",
        "data.resident=false",
        "data.num_workers=1",
        "model=timm",
        "model.name=test_resnet",
        "trainer.max_epochs=2",
        "trainer.batch_size=2",
        "trainer.accumulate_grad_batches=4",
        "logger=none",
        "analysis.enabled=false",
        tiny=False,
    )
    run(cfg)
    run_dir = tmp_path / "run"
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["epoch"] == 2 and saved["state"]["partial_epoch"] is None
    assert "truncated" in (run_dir / "bad_files.txt").read_text()
    assert "test/acc" in json.loads((run_dir / "metrics.json").read_text())


def test_bad_files_met_while_streaming_are_added_to_the_report(tmp_path):
    from runner.reports.data_report import report_streamed_bad_files
    from runner.tracking.null import NullTracker

    folder = tmp_path / "imgs"
    folder.mkdir()
    good = [write_noise_jpeg(folder / f"ok{i}.jpg", seed=i, size=24) for i in range(5)]
    bad = write_bad_files(folder)
    records = [str(p) for p in (*good, bad["truncated"])]
    split = EncodedSplit(
        records, torch.arange(6), torch.zeros(6, dtype=torch.long), size=16, num_workers=0
    )
    loader = split.loader(batch_size=4, device=torch.device("cpu"))
    seen = sum(len(labels) for _, labels in loader)
    assert seen == 5, "the truncated file is dropped from its batch"

    class Recorder(NullTracker):
        def __init__(self):
            self.artifacts = []

        def log_artifact(self, path, artifact_path=None):
            self.artifacts.append(Path(path))

    data = load_imagefolder(root=str(make_imagefolder(tmp_path / "set")), image_size=16)
    tracker = Recorder()
    report_streamed_bad_files(data, [loader], tmp_path, tracker)
    assert "truncated.jpg" in (tmp_path / "bad_files.txt").read_text()
    assert tracker.artifacts == [tmp_path / "bad_files.txt"]


def test_decoding_on_threads_gives_the_same_images_and_bad_files(tmp_path):
    root = make_imagefolder(tmp_path / "data", per_class=30, size=20)
    bad = write_bad_files(root / "train" / "cat")
    files = sorted(p for p in (root / "train").rglob("*") if p.is_file())
    one = decoding.decode_all(files, 16, num_workers=0, chunk_size=8)
    two = decoding.decode_all(files, 16, num_workers=2, chunk_size=8)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    assert sorted(one[2]) == sorted(two[2]) and len(two[2]) == len(bad)
    with pytest.raises(BadImageError):
        decoding.decode_all(files, 16, on_bad_file="error", num_workers=2, chunk_size=8)


def test_a_decode_cache_that_cannot_be_written_leaves_no_part_file_and_says_why(tmp_path, caplog):
    # torch.save fails after it has opened the file (here: a value it cannot pickle;
    # a full disk fails the same way, as RuntimeError): the run goes on, nothing is left.
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("no space left on device (stand-in)")

    def build():
        return {"images": torch.zeros(4, 3, 8, 8, dtype=torch.uint8), "extra": Unpicklable()}

    decode_cache.clear_memory_cache()
    with caplog.at_level("WARNING", logger="runner"):
        value = decode_cache.cached(decode_cache.cache_key("unwritable"), build, tmp_path, "folder")
        decode_cache.wait_for_cache_writes()
    assert value["images"].shape == (4, 3, 8, 8)
    assert list(tmp_path.iterdir()) == [], "no cache file and no part of one"
    assert "the decode cache" in caplog.text and "was not written" in caplog.text
    decode_cache.clear_memory_cache()


def test_a_decode_cache_dir_under_home_is_written_there(tmp_path, monkeypatch):
    """data.cache_dir='~/dcache' made a folder named '~' in the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)

    def build():
        return {"images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)}

    decode_cache.clear_memory_cache()
    decode_cache.cached(decode_cache.cache_key("home"), build, "~/dcache", "folder")
    decode_cache.wait_for_cache_writes()
    decode_cache.clear_memory_cache()
    assert len(list((tmp_path / "home" / "dcache").glob("folder-*.pt"))) == 1
    assert not (tmp_path / "~").exists()


def test_an_animated_gif_decodes_to_its_first_frame(tmp_path):
    """torchvision gives (frames, 3, H, W): writing it into a 3-D slot crashed the decode."""
    from PIL import Image

    frames = [Image.new("RGB", (10, 10), (v, v, v)) for v in (200, 40, 90)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image = decode_record(str(path), 8)
    assert image.shape == (3, 8, 8) and abs(int(image[0, 4, 4]) - 200) <= 2


def test_a_dropped_streaming_loader_stops_its_workers_at_once(tmp_path):
    """A reference cycle kept its persistent workers alive until a garbage collection."""
    import gc
    import multiprocessing

    root = tmp_path / "data"
    for label in ("a", "b"):
        for i in range(4):
            write_noise_jpeg(root / "train" / label / f"{i}.jpg", seed=i)
    data = load(root, resident=False, num_workers=1)
    gc.disable()  # what a collection would have cleaned up must go without one
    try:
        loader = data.train.loader(4, CPU)
        assert sum(len(labels) for _, labels in loader) == 8
        assert multiprocessing.active_children()
        del loader
        assert multiprocessing.active_children() == []
    finally:
        gc.enable()


def test_a_streamed_folder_of_tga_files_is_read_as_a_resident_one(tmp_path):
    """The streaming check knew only some signatures: TGA files were "not an image"."""
    from PIL import Image

    root = tmp_path / "tga"
    for label, shade in (("a", 30), ("b", 220)):
        for i in range(3):
            path = root / "train" / label / f"{i}.tga"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 12), (shade, shade, shade)).save(path)
    streamed = load(root, resident=False)
    assert len(streamed.train) == 6 and streamed.bad_files == []
    assert sum(len(labels) for _, labels in streamed.train.loader(4, CPU)) == 6


def test_iterating_a_streaming_loader_leaves_the_global_random_stream_alone(tmp_path):
    """The DataLoader drew its workers' seed from it: a streamed run's augmentation then
    differed from the resident run of the same seed."""
    root = make_imagefolder(tmp_path / "data", per_class=6)
    streaming = load(root, resident=False).train
    loader = streaming.loader(4, CPU, RandomSampler(streaming.labels, seed=0), drop_last=True)
    loader.set_epoch(1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    list(loader)
    assert torch.equal(torch.rand(3), expected)


def test_a_folder_linked_into_itself_is_listed_once_and_a_fifo_not_at_all(tmp_path):
    """`x/self -> .` listed x's files over and over (and mutual links never ended); a FIFO
    is not a file to read."""
    from runner.data.sets.imagefolder import list_class_files

    root = make_imagefolder(tmp_path / "data", classes=("x", "y"), per_class=3)
    os.symlink(".", root / "train" / "x" / "self")
    os.symlink("..", root / "train" / "y" / "up")
    os.mkfifo(root / "train" / "x" / "pipe.png")  # decoding it waited forever
    files = list_class_files(root / "train")
    assert len(files["x"]) == 3
    assert len(files["y"]) == len(set(map(os.path.realpath, files["y"])))
