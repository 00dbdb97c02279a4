"""Data lineage: a run's train, val and test splits as dataset inputs of its tracked run.

Each split becomes a `DatasetRecord`: the data set's name, a source (the folder, the
Hugging Face name, or the bundled/generated set), a schema, a profile (size and class
counts), the context (train, val, test) and a digest. The digest hashes the split's
labels, its images (resident splits) or sample ids (streamed splits: paths under
data.root, or `<set>:<index>`), and every key of the data config that shapes the data
(the real-world switches of conf/data/_switches.yaml included, whichever exist, except
in the test split's, which they do not change): it changes when the data or any switch
changes, and stays when only where the data lives or the loader's settings change.
Switching `data.resident` changes it (pixels or ids).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner.config.choices import TRAIN_SPLIT_ONLY_KEYS
from runner.data.sets.hf_held_out import is_hf_data
from runner.data.splits import DataSplits, Split
from runner.tracking.inputs import DatasetRecord
from runner.tracking.protocol import Tracker

log = logging.getLogger(__name__)

# Data keys that say where the data lives or how it is loaded, not what it is.
NOT_CONTENT_KEYS = frozenset(
    {
        "root",
        "cache_dir",
        "hf_cache_dir",
        "download",
        "num_workers",
        "resident",
        "resident_max_gb",
        "mean",
        "std",
    }
)
CONTEXTS = ("train", "val", "test")
_DIGEST_CHARS = 16


def content_settings(data_cfg: DictConfig, context: str = "train") -> dict[str, Any]:
    """The data config's keys that decide a split's content, resolved and sorted.

    The test split's leave out the keys that change only the train and val splits (the
    real-world switches, exclude/relabel, k-fold): models trained with label noise or on
    another fold are tested on the same data set, and eval (which has none of them)
    tests on it too.
    """
    settings = OmegaConf.to_container(data_cfg, resolve=True)
    left_out = NOT_CONTENT_KEYS | set(TRAIN_SPLIT_ONLY_KEYS if context == "test" else ())
    return {k: settings[k] for k in sorted(settings) if k not in left_out}


def split_digest(split: Any, settings: dict[str, Any], context: str) -> str:
    """A short hash of the split's labels, its images or files, and the data settings."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({"context": context, **settings}, default=str).encode())
    digest.update(split.labels.cpu().numpy().tobytes())
    if isinstance(split, Split):
        digest.update(split.images.cpu().contiguous().numpy().tobytes())
    elif getattr(split, "ids", None) is not None:  # streamed: its sample ids, in order
        # (paths under data.root, or <set>:<index>), so moving the folder keeps the digest
        for sample_id in split.ids:
            digest.update(str(sample_id).encode())
            digest.update(b"\0")
    else:  # a streamed split without ids: the files (or records) it reads, in order
        records = getattr(split, "records", ())
        positions = getattr(split, "positions", torch.arange(len(split)))
        for position in positions.tolist():
            record = records[position]
            digest.update(str(record).encode() if isinstance(record, str | bytes) else b"?")
            digest.update(b"\0")
    return digest.hexdigest()[:_DIGEST_CHARS]


def data_source(data_cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    """MLflow's source type and source for the data config: a folder, a Hub name, a set."""
    target = str(OmegaConf.select(data_cfg, "_target_", default=""))
    root = OmegaConf.select(data_cfg, "root", default=None)
    if is_hf_data(data_cfg):
        source = {"path": str(data_cfg.name)}
        for key in ("config_name", "revision", "split_train", "split_val", "split_test"):
            if OmegaConf.select(data_cfg, key, default=None) is not None:
                source[key] = str(data_cfg[key])
        return "hugging_face", source
    if root is not None:
        return "local", {"uri": str(root)}
    # Bundled (scikit-learn's digits) or generated (synthetic): the code that makes it.
    return "code", {"tags": {"loader": target, "data": str(data_cfg.name)}}


def dataset_records(data_cfg: DictConfig, data: DataSplits) -> list[DatasetRecord]:
    """The run's three splits as dataset records (see the module doc)."""
    return [split_record(data_cfg, data, context) for context in CONTEXTS]


def split_record(data_cfg: DictConfig, data: DataSplits, context: str) -> DatasetRecord:
    """One split ("train", "val" or "test") as a dataset record (see the module doc)."""
    split = getattr(data, context)
    counts = torch.bincount(split.labels.cpu(), minlength=data.num_classes).tolist()
    size = split.image_size
    channels = len(data.mean)
    images = {"dtype": "uint8", "shape": [-1, channels, size, size]}
    labels = {"dtype": "int64", "shape": [-1]}
    # The layout of MLflow's own tensor data sets (mlflow.data.from_numpy).
    schema = {
        "mlflow_tensorspec": {
            "features": json.dumps([{"type": "tensor", "tensor-spec": images}]),
            "targets": json.dumps([{"type": "tensor", "tensor-spec": labels}]),
        }
    }
    profile = {
        "num_rows": len(split),
        "num_classes": data.num_classes,
        "class_counts": dict(zip(data.class_names, counts, strict=True)),
    }
    source_type, source = data_source(data_cfg)
    return DatasetRecord(
        name=str(data.name),
        digest=split_digest(split, content_settings(data_cfg, context), context),
        source_type=source_type,
        source=json.dumps(source),
        context=context,
        schema=json.dumps(schema),
        profile=json.dumps(profile),
    )


def log_data_inputs(tracker: Tracker, data_cfg: DictConfig, data: DataSplits) -> None:
    """Logs the run's splits as dataset inputs (MLflow's Datasets), with their digests."""
    started = time.perf_counter()
    records = dataset_records(data_cfg, data)
    tracker.log_inputs(records)
    log.info(
        "data inputs: %s (%.2f s)",
        ", ".join(f"{r.context} {r.digest}" for r in records),
        time.perf_counter() - started,
    )
