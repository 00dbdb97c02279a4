"""Images by sample id, for reports made after the runs (the audit's thumbnails)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from runner.data.build import source_splits
from runner.data.decoding import BadImageError, decode_record

log = logging.getLogger(__name__)


def _file_root(data_cfg: Mapping[str, Any]) -> Path | None:
    """The folder whose files the ids name: `data.root`, or a local `data.name` (HF).

    A table file as `data.name` (a CSV of image paths) names its images from its own
    folder, as their ids do.
    """
    for key in ("root", "name"):
        value = data_cfg.get(key)
        if not (isinstance(value, str) and value):
            continue
        path = Path(value).expanduser()
        if path.is_dir():
            return path
        if key == "name" and path.is_file():
            return path.parent
    return None


def load_images(
    data_cfg: Mapping[str, Any], ids: Sequence[str], file_size: int = 96
) -> dict[str, torch.Tensor]:
    """uint8 (C, H, W) images of the samples with these ids.

    Ids that are paths under `data.root` (image folders, local Hugging Face folders and
    table files) are read from their files, at `file_size` pixels: a handful of files,
    not the data set. For the others (bundled sets, records without files) the data set
    is built again, without the switches (a sample's image does not depend on them), and
    the images are taken from its splits at the data's `image_size`. A file that is gone
    has no image.

    Args:
        data_cfg: The run's resolved data config (its `data` node as a mapping).
        ids: The sample ids.
        file_size: Size images read from files are resized and center-cropped to.

    Returns:
        id -> image, for the ids found (an id whose file no longer decodes is left out).
    """
    images: dict[str, torch.Tensor] = {}
    root = _file_root(data_cfg)
    rest = []
    for sample_id in ids:
        path = root / sample_id if root is not None else None
        if path is not None and path.is_file():
            try:
                images[sample_id] = decode_record(str(path), file_size)
            except BadImageError as err:
                log.warning("no thumbnail for %s: %s", sample_id, err)
        else:
            rest.append(sample_id)
    # A file-based data set is not decoded again for ids whose files are gone; records
    # without files (index ids, `<set>:<index>`) are found in the rebuilt data set.
    rebuild = [i for i in rest if root is None or ":" in i]
    if rebuild:
        images.update(_from_the_data_set(data_cfg, rebuild))
    return images


def _from_the_data_set(data_cfg: Mapping[str, Any], ids: list[str]) -> dict[str, torch.Tensor]:
    data = source_splits(data_cfg)
    wanted = set(ids)
    found: dict[str, torch.Tensor] = {}
    for split in (data.train, data.val, data.test):
        positions = [i for i, sample_id in enumerate(split.ids) if sample_id in wanted]
        if not positions:
            continue
        batch = torch.tensor(positions, dtype=torch.long)
        pictures, _ = split.take(batch)
        if len(pictures) == len(positions):
            found.update(
                {str(split.ids[p]): img.cpu() for p, img in zip(positions, pictures, strict=True)}
            )
    return found
