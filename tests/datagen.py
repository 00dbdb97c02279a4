"""Real data files for the tests: images of every mode, image folders, CIFAR, parquet."""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# Colour of the images `write_image` makes, per kind, and what a correct decoder gives.
EXPECTED_RGB = {
    "rgb": (10, 120, 230),
    "gray": (77, 77, 77),
    "palette": (200, 30, 40),
    "rgba": (20, 160, 90),
    "png16": (128, 128, 128),  # 0x8080 / 65535 * 255 = 128; clipping would give 255
    "cmyk": (255, 0, 0),
    "upper": (240, 200, 10),
}


def write_image(path: Path, kind: str, size: int = 12) -> Path:
    """Writes a uniform image of `kind` (a key of EXPECTED_RGB) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("rgb", "upper"):
        Image.new("RGB", (size, size), EXPECTED_RGB[kind]).save(path)
    elif kind == "gray":
        Image.new("L", (size, size), 77).save(path)
    elif kind == "palette":
        image = Image.new("P", (size, size), 1)
        image.putpalette([0, 0, 0, 200, 30, 40] + [0] * (3 * 254))
        image.save(path)
    elif kind == "rgba":
        Image.new("RGBA", (size, size), (20, 160, 90, 100)).save(path)
    elif kind == "png16":
        array = np.full((size, size), 0x8080, dtype=np.uint16)
        image = Image.fromarray(array)
        assert image.mode == "I;16"
        image.save(path)
    elif kind == "cmyk":
        Image.new("CMYK", (size, size), (0, 255, 255, 0)).save(path, quality=100)
    else:
        raise ValueError(kind)
    return path


def write_noise_jpeg(path: Path, seed: int, size: int = 16, tint: int | None = None) -> Path:
    """Writes a random RGB JPEG; `tint` raises one channel so classes differ."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 160, (size, size, 3), dtype=np.uint8)
    if tint is not None:
        array[..., tint % 3] += 95
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=90)
    return path


def write_bad_files(folder: Path) -> dict[str, Path]:
    """Writes a zero-byte JPEG, a truncated JPEG and a text file into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    zero = folder / "zero.jpg"
    zero.write_bytes(b"")
    good = write_noise_jpeg(folder / "_tmp.jpg", seed=99, size=64)
    data = good.read_bytes()
    good.unlink()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    text = folder / "notes.txt"
    text.write_text("not an image\n")
    return {"zero": zero, "truncated": truncated, "text": text}


def streamed_folder(root: Path) -> list[str]:
    """The overrides of a run on the image folder `root`, decoded batch by batch as it
    trains (no decode cache, no worker processes), at 16 px."""
    return [
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=16",
        "data.resident=false",
        "data.num_workers=0",
        "data.cache_dir=null",
    ]


def make_imagefolder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "fox"),
    per_class: int = 12,
    splits: tuple[str, ...] = ("train",),
    size: int = 16,
) -> Path:
    """Writes root/<split>/<class>/<i>.jpg with a learnable per-class tint."""
    for split in splits:
        for label, name in enumerate(classes):
            for i in range(per_class):
                seed = zlib.crc32(f"{split}/{name}/{i}".encode())
                write_noise_jpeg(root / split / name / f"{i:03d}.jpg", seed, size, tint=label)
    return root


def write_cifar(root: Path, variant: str = "cifar10", per_file: int = 20) -> Path:
    """Writes a small copy of the CIFAR python layout (random pixels, known labels).

    Image i of a file has label i % num_classes, and its first pixel's red value is
    i % 256, so a test can check the pixel layout.
    """
    num_classes = 10 if variant == "cifar10" else 100
    rng = np.random.default_rng(0)

    def batch(count: int) -> tuple[np.ndarray, list[int]]:
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        data[:, 0] = np.arange(count) % 256
        return data, [i % num_classes for i in range(count)]

    if variant == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in files:
            data, labels = batch(per_file)
            with (folder / name).open("wb") as handle:
                pickle.dump({b"data": data, b"labels": labels}, handle)
        names = {b"label_names": [f"class{i}" for i in range(10)]}
        with (folder / "batches.meta").open("wb") as handle:
            pickle.dump(names, handle)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for name, count in (("train", per_file * 5), ("test", per_file)):
            data, labels = batch(count)
            with (folder / name).open("wb") as handle:
                pickle.dump({b"data": data, b"fine_labels": labels}, handle)
        with (folder / "meta").open("wb") as handle:
            pickle.dump({b"fine_label_names": [f"fine{i}" for i in range(100)]}, handle)
    return root


def write_hf_parquet(path: Path, classes=("ant", "bee"), per_class: int = 10) -> Path:
    """Writes a parquet file with embedded image bytes and a ClassLabel column."""
    import io

    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    rows = {"img": [], "y": []}
    for label in range(len(classes)):
        for i in range(per_class):
            buffer = io.BytesIO()
            rng = np.random.default_rng(label * 1000 + i)
            array = rng.integers(0, 160, (16, 16, 3), dtype=np.uint8)
            array[..., label] += 95
            Image.fromarray(array).save(buffer, format="PNG")
            rows["img"].append({"bytes": buffer.getvalue(), "path": None})
            rows["y"].append(label)
    features = Features({"img": ImageFeature(), "y": ClassLabel(names=list(classes))})
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path
