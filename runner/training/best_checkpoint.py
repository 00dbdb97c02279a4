"""checkpoints/best.pt: one versioned schema for the writer, eval, predict and MLflow.

best.pt holds the best weights and everything needed to use them without the training
run's files: the run's resolved (redacted) config, the class names, the normalisation,
the image size, the epoch and its metrics, the training run's MLflow id, the class
counts of the train split it learnt from and a fingerprint of its test split's ids. It
loads with `torch.load(path, weights_only=True)`; its keys are those of
`BestCheckpoint`'s fields (mean and std under "normalization") plus "schema_version".

Version 1 is the file written before the package was split into layers: no
"schema_version" key, and a config whose `_target_`s name the flat modules
(`runner.cifar_models.cifar_resnet`); reading it maps them to their new homes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner.config.targets import upgrade_legacy_targets
from runner.training.checkpoint_io import CheckpointError, load_checkpoint

SCHEMA_VERSION = 2
# What every version has that a last.pt or any other file has not.
_REQUIRED = ("model", "config", "class_names", "normalization", "image_size")


@dataclass
class BestCheckpoint:
    """The content of a best.pt.

    Attributes:
        model: The weights (the EMA's when EMA was on), a state dict.
        config: The training run's resolved config as YAML, secrets redacted.
        class_names: Name per class id.
        mean: Per-channel normalisation mean the model was trained with.
        std: Per-channel normalisation std.
        image_size: Side of the images the model was trained on.
        epoch: The epoch these weights are from.
        metrics: That epoch's metrics.
        mlflow_run_id: The training run, linked from eval runs (source_run_id).
        train_class_counts: Train samples per class the model was trained on (after
            k-fold, `data.exclude` and `data.relabel`), from which eval groups the classes
            into head, medium and tail; None in a file written before it was kept.
        test_ids_digest: `ids_digest` of the test split the run was tested on, which
            `eval.data=stored` checks its rebuilt split against; None in a file written
            before it was kept.
        data_channels: Channels of the training images: 1 for grayscale data, also when
            a pretrained model's 3-channel normalisation repeated them; None in a file
            written before it was kept (then the normalisation's count).
    """

    model: dict[str, torch.Tensor]
    config: str
    class_names: list[str]
    mean: list[float]
    std: list[float]
    image_size: int
    epoch: int = 0
    metrics: dict[str, float] | None = None
    mlflow_run_id: str | None = None
    train_class_counts: list[int] | None = None
    test_ids_digest: str | None = None
    data_channels: int | None = None

    def image_channels(self) -> int:
        """Channels of the images the model was trained on (files decode to these)."""
        return self.data_channels or len(self.mean)

    def to_payload(self) -> dict[str, Any]:
        """The dict saved as best.pt (tensors and plain types only)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "config": self.config,
            "class_names": list(self.class_names),
            "normalization": {"mean": list(self.mean), "std": list(self.std)},
            "image_size": int(self.image_size),
            "epoch": int(self.epoch),
            "metrics": dict(self.metrics or {}),
            "mlflow_run_id": self.mlflow_run_id,
            "train_class_counts": self.train_class_counts,
            "test_ids_digest": self.test_ids_digest,
            "data_channels": self.data_channels,
        }

    @classmethod
    def from_payload(cls, payload: Any, path: Path | str = "best.pt") -> BestCheckpoint:
        """Reads a loaded best.pt of any schema version.

        Raises:
            CheckpointError: It is not a best.pt (e.g. a last.pt, which holds training
                state but not the config and class names), or a newer version.
        """
        missing = [key for key in _REQUIRED if not isinstance(payload, dict) or key not in payload]
        if missing:
            is_last = isinstance(payload, dict) and "optimizer" in payload
            kind = "a training-state checkpoint (last.pt)" if is_last else "not a best.pt"
            raise CheckpointError(
                f"ckpt={str(path)!r} is {kind}: it lacks {', '.join(missing)}. "
                "Pass the run's checkpoints/best.pt"
            )
        version = payload.get("schema_version", 1)
        if version > SCHEMA_VERSION:
            raise CheckpointError(
                f"ckpt={str(path)!r} has best.pt schema version {version}, newer than this "
                f"runner's {SCHEMA_VERSION}: update the runner to read it"
            )
        config = payload["config"]
        if version == 1:
            config = OmegaConf.to_yaml(upgrade_legacy_targets(OmegaConf.create(config)))
        return cls(
            model=payload["model"],
            config=config,
            class_names=list(payload["class_names"]),
            mean=list(payload["normalization"]["mean"]),
            std=list(payload["normalization"]["std"]),
            image_size=int(payload["image_size"]),
            epoch=int(payload.get("epoch", 0)),
            metrics=dict(payload.get("metrics") or {}),
            mlflow_run_id=payload.get("mlflow_run_id"),
            train_class_counts=_counts(payload.get("train_class_counts")),
            test_ids_digest=payload.get("test_ids_digest"),
            data_channels=payload.get("data_channels"),
        )

    def stored_config(self) -> DictConfig:
        """The training run's config."""
        return OmegaConf.create(self.config)


def _counts(value: Any) -> list[int] | None:
    return None if value is None else [int(count) for count in value]


def read_best(path: Path | str) -> BestCheckpoint:
    """Loads a best.pt (weights only) of any schema version.

    Raises:
        CheckpointError: The file cannot be loaded safely, or is not a best.pt.
    """
    return BestCheckpoint.from_payload(load_checkpoint(path), path)


def export_safetensors(weights: dict, class_names: list[str], path: Path) -> Path:
    """Writes the best weights as a .safetensors file (class names in its metadata)."""
    from safetensors.torch import save_file

    # Clones: safetensors refuses tensors that share storage.
    tensors = {k: v.detach().clone().contiguous() for k, v in weights.items()}
    save_file(tensors, str(path), metadata={"class_names": json.dumps(class_names)})
    os.chmod(path, 0o644)  # safetensors writes through a private temp file (0600), unlike best.pt
    return path
