"""The best weights as an MLflow model, and back as a best.pt.

`ExportedClassifier` is what `mlflow.pyfunc.load_model(f"runs:/{run_id}/model")` runs:
it takes a uint8 (N, C, H, W) batch at the checkpoint's image size and returns class
probabilities, with the eval geometry (`aug.eval_crop_pct`) and the normalisation
inside, exactly as eval and predict preprocess. `log_best_model` logs it before testing
(the test metrics are then the model's too), with the class names, image size,
normalisation and epoch as metadata and the resolved config as an extra file. That model
is the run's one uploaded copy of the weights.

`checkpoint_from_mlflow` turns `ckpt=runs:/<run id>`, `ckpt=models:/<name>/<version>` or
`ckpt=models:/<logged model id>` back into a best.pt (weights from the model, everything
else from its metadata and config), so eval and predict rebuild the model as from a local
best.pt.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner.augment.normalize import Normalize
from runner.data.splits import DataSplits
from runner.tracking.models import (
    REGISTRY_URI_PREFIX,
    RUN_URI_PREFIX,
    ModelNotFoundError,
    fetch_checkpoint,
)
from runner.training.best_checkpoint import SCHEMA_VERSION, BestCheckpoint
from runner.training.checkpoint_io import CheckpointError
from runner.training.context import RunContext
from runner.training.parts import TrainingParts

log = logging.getLogger(__name__)

MODEL_URI_PREFIXES = (RUN_URI_PREFIX, REGISTRY_URI_PREFIX)
CONFIG_FILE = "config_resolved.yaml"
# The wrapper's attribute that holds the network: its weights are "model.<name>".
_NET = "model"


class ExportedClassifier(nn.Module):
    """uint8 images in, class probabilities out: the eval path of a trained run.

    Args:
        augment: The run's augmentation; only its eval path (resize, center-crop) runs.
        normalize: The normalisation the model was trained with.
        model: The trained network (logits out).
    """

    def __init__(self, augment: nn.Module, normalize: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.augment = augment
        self.normalize = normalize
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) uint8 images -> (N, classes) probabilities."""
        return self.model(self.normalize(self.augment(images))).float().softmax(-1)


def exported_classifier(
    parts: TrainingParts, best: BestCheckpoint, data: DataSplits | None = None
) -> tuple[ExportedClassifier, np.ndarray]:
    """The best weights wrapped for export, on the CPU, and an input example for it.

    Copies: the run's own modules (maybe on a GPU) are left as they are. The example is
    two of `data`'s test images (MLflow shows it and serves it as the model's example);
    random ones of their shape without them.
    """
    # Contiguous weights: torch.export saves channels_last ones as partial views (and warns).
    model = copy.deepcopy(parts.eval_model).cpu().float().to(memory_format=torch.contiguous_format)
    model.eval()
    model.load_state_dict(best.model)
    augment = copy.deepcopy(parts.augment).cpu().eval()
    normalize = Normalize(best.mean, best.std).eval()
    wrapper = ExportedClassifier(augment, normalize, model).eval()
    # Two images: a batch of one would make the exported batch dimension a constant.
    shape = (2, len(best.mean), best.image_size, best.image_size)
    if data is not None and len(data.test) >= 2:
        images, _ = data.test.take(torch.arange(2))
        if tuple(images.shape) == shape:  # not when bad files dropped one
            return wrapper, images.cpu().numpy()
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, shape, generator=generator)
    return wrapper, example.to(torch.uint8).numpy()


def model_tags(best: BestCheckpoint) -> dict[str, str]:
    """The logged model's tags that tell which of its run's best weights it holds."""
    return {"best_epoch": str(best.epoch)}


def log_best_model(
    ctx: RunContext, parts: TrainingParts, best: BestCheckpoint, data: DataSplits, step: int
) -> str | None:
    """Logs the best weights as the run's MLflow model (`model`), before testing.

    A tracker that exports no models (logger=none, logger.export_model=false) gets
    checkpoints/best.pt as it is, and nothing is built for an export; when the model
    cannot be logged, the tracker uploads checkpoints/best.pt instead.

    Args:
        ctx: The run.
        parts: Its parts (the network's architecture and the augmentation's eval path).
        best: The content of its checkpoints/best.pt.
        data: Its data (the name goes into the metadata).
        step: The step its time to log is logged at (the epochs the run trained).

    Returns:
        The logged model's id (`models:/<id>`), or None.
    """
    best_path = ctx.run_dir / "checkpoints" / "best.pt"
    if not ctx.tracker.export_model:  # logger=none, or logger.export_model=false
        ctx.tracker.log_artifact(best_path, "checkpoints")
        return None
    # A rerun in place (the reports again, or a job stopped after its model was logged)
    # logged and registered a second copy of the same weights in the same run.
    weights = model_tags(best)
    earlier = ctx.tracker.find_model(weights)
    if earlier is not None:
        log.info("the run's model of epoch %d is logged already (models:/%s)", best.epoch, earlier)
        return earlier
    started = time.perf_counter()
    wrapper, example = exported_classifier(parts, best, data)
    metadata = {
        "class_names": list(best.class_names),
        "image_size": best.image_size,
        "mean": list(best.mean),
        "std": list(best.std),
        "epoch": best.epoch,
        "metrics": {k: float(v) for k, v in (best.metrics or {}).items()},
        "train_class_counts": best.train_class_counts,
        "test_ids_digest": best.test_ids_digest,
        # The data's channels: a 1-channel run's pretrained mean has 3 values.
        "data_channels": best.data_channels,
        "best_pt_schema_version": SCHEMA_VERSION,
        "data": data.name,
        "input": "uint8 (N, C, H, W) at image_size; output: class probabilities (N, classes)",
    }
    model_id = ctx.tracker.log_model(
        wrapper, example, metadata, [ctx.run_dir / CONFIG_FILE], fallback=best_path, tags=weights
    )
    if model_id is not None:
        seconds = time.perf_counter() - started
        ctx.tracker.log_metrics({"model_logging_s": seconds}, step=step)
    return model_id


def checkpoint_from_mlflow(
    ckpt: str, cfg: DictConfig, download_dir: Path
) -> tuple[Path, str | None, str | None]:
    """The local best.pt for `ckpt=runs:/<run id>`, `models:/<name>/<version>` or `models:/<m-id>`.

    Args:
        ckpt: The URI.
        cfg: The composed config (`logger.tracking_uri` names the store and registry).
        download_dir: Where the model is downloaded and the best.pt written.

    Returns:
        The best.pt, the MLflow run that trained it and the logged model's id (None for
        a run's best.pt from before models were logged).

    Raises:
        CheckpointError: No store is configured, or the URI names nothing it has.
    """
    tracking_uri = OmegaConf.select(cfg, "logger.tracking_uri", default=None)
    if tracking_uri is None:
        raise CheckpointError(
            f"ckpt={ckpt!r}: expected runs:/<mlflow run id> or models:/<name>/<version> (or "
            "/latest, or @<alias>) with logger=mlflow (logger.tracking_uri names the store to "
            "download from)"
        )
    try:
        fetched = fetch_checkpoint(ckpt, str(tracking_uri), download_dir)
    except ModelNotFoundError as err:
        raise CheckpointError(str(err)) from err
    if fetched.is_checkpoint:
        return fetched.path, fetched.run_id, None
    best = best_from_model_dir(fetched.path, fetched.run_id)
    path = download_dir / "best.pt"
    torch.save(best.to_payload(), path)
    log.info("rebuilt %s from the MLflow model of %s", path, ckpt)
    return path, fetched.run_id, fetched.model_id


def best_from_model_dir(model_dir: Path, run_id: str | None) -> BestCheckpoint:
    """A best.pt's content from a model `log_best_model` logged.

    Raises:
        CheckpointError: The folder is not such a model.
    """
    from mlflow.models import Model

    try:
        metadata = Model.load(str(model_dir)).metadata or {}
        program = torch.export.load(str(model_dir / "data" / "model.pt2"))
        config = (model_dir / "extra_files" / CONFIG_FILE).read_text(encoding="utf-8")
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{model_dir} is not a model the runner logged ({err}): pass a best.pt or the "
            "runs:/ URI of a training run"
        ) from err
    missing = [k for k in ("class_names", "image_size", "mean", "std") if k not in metadata]
    if missing:
        raise CheckpointError(
            f"{model_dir}: the model's metadata lacks {', '.join(missing)}: it was not logged "
            "by the runner; pass a best.pt instead"
        )
    prefix = f"{_NET}."
    weights = {
        name.removeprefix(prefix): tensor.detach().clone()
        for name, tensor in program.state_dict.items()
        if name.startswith(prefix)
    }
    return BestCheckpoint(
        model=weights,
        config=config,
        class_names=[str(name) for name in metadata["class_names"]],
        mean=[float(v) for v in metadata["mean"]],
        std=[float(v) for v in metadata["std"]],
        image_size=int(metadata["image_size"]),
        epoch=int(metadata.get("epoch", 0)),
        metrics={k: float(v) for k, v in (metadata.get("metrics") or {}).items()},
        mlflow_run_id=run_id,
        train_class_counts=metadata.get("train_class_counts"),
        test_ids_digest=metadata.get("test_ids_digest"),
        data_channels=metadata.get("data_channels"),
    )
