"""CIFAR-10/100 from files in the python pickle layout; a clear error when they are missing."""

from __future__ import annotations

import pytest
import torch

from runner.data.decoding import DataError
from runner.data.sets.cifar import load_cifar
from tests.datagen import write_cifar


def test_cifar10_reads_the_pickle_layout(tmp_path):
    write_cifar(tmp_path, "cifar10", per_file=20)
    data = load_cifar("cifar10", root=str(tmp_path), val_fraction=0.1)
    assert data.name == "cifar10" and data.class_names == [f"class{i}" for i in range(10)]
    assert len(data.train) + len(data.val) == 100 and len(data.test) == 20
    assert len(data.val) == 10 and torch.bincount(data.val.labels).tolist() == [1] * 10
    images = data.test.images
    assert images.dtype == torch.uint8 and images.shape == (20, 3, 32, 32)
    # Row i of a file is image i: its first red pixel is i, its label i % 10.
    assert images[:, 0, 0, 0].tolist() == list(range(20))
    assert data.test.labels.tolist() == [i % 10 for i in range(20)]


def test_cifar100_reads_fine_labels_and_resizes(tmp_path):
    write_cifar(tmp_path, "cifar100", per_file=40)
    data = load_cifar("cifar100", root=str(tmp_path), image_size=16, val_fraction=0.0)
    assert data.num_classes == 100 and data.class_names[3] == "fine3"
    assert data.image_size == 16 and len(data.train) == 200 and len(data.test) == 40


def test_missing_cifar_files_name_data_root(tmp_path):
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", root=str(tmp_path / "nowhere"), download=False)
    message = str(info.value)
    assert "data.root=" in message and str(tmp_path / "nowhere") in message
    assert "data_batch_1" in message and "data.download=true" in message


def test_a_truncated_cifar_file_is_named_with_the_fix(tmp_path):
    """A cut-off copy or download ended in a bare 'pickle data was truncated'."""
    write_cifar(tmp_path, "cifar10", per_file=20)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DataError, match=r"data_batch_3 is not a whole CIFAR file.*download"):
        load_cifar("cifar10", root=str(tmp_path))


def test_failed_download_names_data_root_and_the_cause(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise URLError("no network")

    # No real network call: the download helper fails as it does offline.
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    with pytest.raises(DataError) as info:
        load_cifar("cifar10", root=str(tmp_path), download=True)
    message = str(info.value)
    assert f"data.root={str(tmp_path)!r}" in message and "download failed" in message
    assert "no network" in message


def test_resizing_in_chunks_gives_the_images_of_one_resize():
    """All 50,000 images were resized at once: their float copy at 224 px took 30 GB (a
    machine's memory); in chunks the peak is one chunk's."""
    import torch.nn.functional as F

    from runner.data.sets.cifar import _resize

    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    whole = F.interpolate(images.float(), size=(48, 48), mode="bilinear", antialias=True)
    expected = whole.round_().clamp_(0, 255).to(torch.uint8)
    assert torch.equal(_resize(images, 48, chunk=3), expected)
