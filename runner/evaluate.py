"""After training: test a checkpoint (`mode=eval`) or label new images (`mode=predict`).

Both start from a run's `checkpoints/best.pt`, which carries the weights, the run's
resolved config, the class names, the normalisation and the image size, so the model
is rebuilt exactly as it was trained, with no access to the training run's files:

    python run.py mode=eval ckpt=outputs/runs/<date>/<time>/checkpoints/best.pt
    python run.py mode=eval ckpt=runs:/<mlflow run id> eval.tta=flip
    python run.py mode=predict ckpt=<best.pt> predict.input=photos/

`ckpt=runs:/<run id>` downloads `checkpoints/best.pt` from that MLflow run's artifacts,
from the store `logger.tracking_uri` names.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner import analysis, checkpoint, console, engine
from runner.augment import Normalize
from runner.checkpoint import CheckpointError
from runner.config import ConfigError, untrusted_targets, validate
from runner.metrics import build_confusion_matrix, build_metrics

log = logging.getLogger("runner")

RUN_URI_PREFIX = "runs:/"
# What a best.pt has that a last.pt or any other file has not.
BEST_KEYS = ("model", "config", "class_names", "normalization", "image_size")


# --- the checkpoint ------------------------------------------------------------------------


def resolve_ckpt(ckpt: str, cfg: DictConfig, download_dir: Path) -> tuple[Path, str | None]:
    """The local best.pt for `ckpt`, and the MLflow run id it came from when known.

    Args:
        ckpt: A file path, or `runs:/<run id>` (downloads that run's checkpoints/best.pt).
        cfg: The composed config (its `logger.tracking_uri` names the MLflow store).
        download_dir: Where a downloaded checkpoint is put.

    Raises:
        CheckpointError: The file does not exist, the run does not exist in the store,
            or the run has no checkpoints/best.pt artifact.
    """
    if not ckpt.startswith(RUN_URI_PREFIX):
        path = Path(ckpt).expanduser()
        if not path.is_file():
            hint = " (a folder: point at its checkpoints/best.pt)" if path.is_dir() else ""
            raise CheckpointError(
                f"ckpt={ckpt!r}: no such file{hint}. Pass a run's checkpoints/best.pt or "
                "ckpt=runs:/<mlflow run id>"
            )
        return path, None
    run_id = ckpt.removeprefix(RUN_URI_PREFIX).strip("/").split("/")[0]
    tracking_uri = OmegaConf.select(cfg, "logger.tracking_uri", default=None)
    if not run_id or tracking_uri is None:
        raise CheckpointError(
            f"ckpt={ckpt!r}: expected runs:/<mlflow run id> with logger=mlflow "
            "(logger.tracking_uri names the store to download from)"
        )
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        client.get_run(run_id)
    except MlflowException as err:
        raise CheckpointError(
            f"ckpt={ckpt!r}: run {run_id!r} was not found in the MLflow store "
            f"logger.tracking_uri={tracking_uri!r} ({err.error_code}). Check the id "
            "(mlflow ui lists the runs) or point logger.tracking_uri at the right store"
        ) from err
    download_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar in logs
    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="checkpoints/best.pt", dst_path=str(download_dir),
            tracking_uri=tracking_uri,
        )  # fmt: skip
    except (MlflowException, OSError) as err:
        raise CheckpointError(
            f"ckpt={ckpt!r}: run {run_id!r} has no checkpoints/best.pt artifact ({err}). "
            "Only runs that finished training log it; pick a FINISHED training run"
        ) from err
    log.info("downloaded checkpoints/best.pt of MLflow run %s to %s", run_id, local)
    return Path(local), run_id


def load_best(path: Path) -> dict[str, Any]:
    """Loads a best.pt (weights only) and checks that it has what rebuilding needs.

    Raises:
        CheckpointError: The file cannot be loaded safely, or is not a best.pt (e.g. a
            last.pt, which holds training state but not the config and class names).
    """
    state = checkpoint.load_checkpoint(path)
    missing = [key for key in BEST_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        kind = "a training-state checkpoint (last.pt)" if "optimizer" in state else "not a best.pt"
        raise CheckpointError(
            f"ckpt={str(path)!r} is {kind}: it lacks {', '.join(missing)}. "
            "Pass the run's checkpoints/best.pt"
        )
    return state


def stored_config(best: dict[str, Any], allowed: list[str]) -> DictConfig:
    """The training run's config from best.pt, refused when it names untrusted code.

    Only `allowed_targets` of this command line extend the trusted packages: a
    checkpoint cannot widen them for itself.
    """
    stored = OmegaConf.create(best["config"])
    parts = OmegaConf.create({k: stored[k] for k in ("model", "aug", "data") if k in stored})
    problems = untrusted_targets(parts, extra_allowed=tuple(allowed))
    if problems:
        raise ConfigError("the checkpoint's config is refused:\n  - " + "\n  - ".join(problems))
    return stored


def rebuild_model(stored: DictConfig, best: dict[str, Any], device: torch.device) -> nn.Module:
    """The trained model: its config from the checkpoint, its weights from best.pt.

    Pretrained weights are not loaded again (neither downloaded nor read from
    `model.pretrained_file`, which may not exist here): best.pt has the trained ones.
    """
    settings = OmegaConf.to_container(stored.model, resolve=True)
    for key, off in (("pretrained", False), ("pretrained_file", None), ("weights", None)):
        if key in settings:
            settings[key] = off
    model = instantiate(settings)(num_classes=len(best["class_names"]))
    model.load_state_dict(best["model"])
    return model.to(device).eval()


class FlipTTA(nn.Module):
    """Test-time augmentation: the mean of the logits of the images and their mirror images."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits averaged over the image and its horizontal flip."""
        return (self.model(images) + self.model(images.flip(-1))) / 2


def with_tta(model: nn.Module, tta: str) -> nn.Module:
    """The model wrapped for `tta` ("none" or "flip")."""
    return FlipTTA(model) if tta == "flip" else model


def _setup(cfg: DictConfig, run_dir: Path):
    """Validates, resolves and loads the checkpoint; returns what both modes need."""
    from runner.train import resolve_device, resolve_precision, seed_everything

    validate(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    path, run_id = resolve_ckpt(str(cfg.ckpt), cfg, run_dir / "downloaded")
    best = load_best(path)
    stored = stored_config(best, list(cfg.get("allowed_targets") or []))
    model = rebuild_model(stored, best, device)
    augment = instantiate(stored.aug, num_classes=len(best["class_names"])).to(device).eval()
    normalization = best["normalization"]
    normalize = Normalize(normalization["mean"], normalization["std"]).to(device)
    source = run_id or best.get("mlflow_run_id")
    return device, precision, path, source, best, stored, model, augment, normalize


# --- eval ----------------------------------------------------------------------------------


def run_eval(cfg: DictConfig) -> float:
    """Tests a checkpoint on the test split and records a new, linked MLflow run.

    The data is the checkpoint's own (`eval.data=stored`) or this command line's
    (`eval.data=current`); its classes must be the checkpoint's. Writes metrics.json
    and the analysis reports into this run's dir.

    Returns:
        Test accuracy.
    """
    from runner.train import build_data, log_failure

    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device, precision, path, source, best, stored, model, augment, normalize = _setup(cfg, run_dir)
    data_cfg = stored.data if cfg.eval.data == "stored" else cfg.data
    tracker = instantiate(cfg.logger)
    tracker.connect(experiment_name=str(data_cfg.name))
    data = build_data(data_cfg)
    if list(data.class_names) != list(best["class_names"]):
        raise ConfigError(
            f"eval.data={cfg.eval.data}: the data's classes {data.class_names[:10]} differ "
            f"from the checkpoint's {best['class_names'][:10]}: evaluate on data with the "
            "same classes"
        )
    test_loader = data.test.loader(cfg.trainer.eval_batch_size, device)
    status = "FAILED"
    try:
        tags = {"mode": "eval", "ckpt": str(path), "eval.tta": cfg.eval.tta,
                "run_dir": str(run_dir), "source_run_id": source or "unknown"}  # fmt: skip
        tracker.start(run_name=f"eval-{run_dir.name}", tags=tags, local_dir=run_dir)
        tracker.log_params({"ckpt": str(cfg.ckpt), "eval.tta": cfg.eval.tta,
                            "eval.data": cfg.eval.data, "data.name": data.name,
                            "data.num_test": len(data.test)})  # fmt: skip
        confusion = build_confusion_matrix(data.num_classes).to(device)
        predictions = analysis.PredictionCollector()
        metric_set = build_metrics(data.num_classes, with_auroc=True).to(device)
        results = engine.evaluate(
            model=with_tta(model, cfg.eval.tta), loader=test_loader, augment=augment,
            normalize=normalize, metrics=metric_set,
            autocast=engine.make_autocast(device, precision), device=device,
            extra_metrics=[confusion, predictions],
        )  # fmt: skip
        metrics = {f"test/{name}": value for name, value in results.items()}
        inputs = analysis.AnalysisInputs(model, augment, normalize, data.test,
                                         *predictions.result(), confusion.compute().cpu(),
                                         data.class_names, device)  # fmt: skip
        metrics.update(analysis.report(cfg.analysis, inputs, run_dir, tracker))
        tracker.log_metrics(metrics, step=0)
        summary = {"ckpt": str(path), "source_run_id": source, "tta": cfg.eval.tta, **metrics}
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        tracker.log_artifact(run_dir / "metrics.json")
        rows = [*((name, f"{value:.4f}") for name, value in metrics.items()),
                ("checkpoint", str(path)), ("source run", source or "unknown"),
                ("run dir", str(run_dir)), ("tracking", tracker.describe())]  # fmt: skip
        console.print_summary(rows, title="eval summary")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        log_failure(tracker, run_dir)
        raise
    finally:
        tracker.finish(status)
    return metrics["test/acc"]


# --- predict -------------------------------------------------------------------------------


def list_images(source: str) -> list[Path]:
    """The file, or every visible file under the folder (recursively, sorted).

    Raises:
        ConfigError: The path does not exist or the folder holds no files.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"predict.input={source!r}: no such file or folder")
    files = []
    for parent, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(parent) / n for n in sorted(names) if not n.startswith("."))
    if not files:
        raise ConfigError(f"predict.input={source!r}: the folder holds no files")
    return files


def run_predict(cfg: DictConfig) -> float:
    """Labels images with a checkpoint and writes a CSV: file, class, probability, top-k.

    Files that do not decode get a row with their error instead of a prediction. Nothing
    is tracked in MLflow.

    Returns:
        The number of images labelled.
    """
    from runner.decoding import BadImageError, decode_record

    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    files = list_images(str(cfg.predict.input))
    device, precision, path, _, best, _, model, augment, normalize = _setup(cfg, run_dir)
    output = Path(cfg.predict.output or run_dir / "predictions.csv")
    output.parent.mkdir(parents=True, exist_ok=True)
    names, size = best["class_names"], int(best["image_size"])
    topk = min(int(cfg.predict.topk), len(names))
    predictor = with_tta(model, cfg.predict.tta)
    autocast = engine.make_autocast(device, precision)
    header = ["file", "predicted_class", "probability"]
    header += [f"{kind}_{rank}" for rank in range(1, topk + 1) for kind in ("class", "prob")]
    labelled = failed = 0
    tmp = output.with_name(f".{output.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*header, "error"])
        for start in range(0, len(files), cfg.predict.batch_size):
            chunk = files[start : start + cfg.predict.batch_size]
            rows: dict[int, list[str]] = {}
            images, kept = [], []
            for index, file in enumerate(chunk):
                try:
                    images.append(decode_record(file, size))
                    kept.append(index)
                except BadImageError as err:
                    rows[index] = [str(file), "", "", *[""] * (2 * topk), str(err)]
            if images:
                batch = torch.stack(images).to(device)
                with torch.inference_mode(), autocast():
                    logits = predictor(normalize(augment(batch)))
                probs, classes = logits.float().softmax(-1).topk(topk, dim=-1)
                for index, row_probs, row_classes in zip(kept, probs.tolist(), classes.tolist(),
                                                         strict=True):  # fmt: skip
                    ranked = [v for c, p in zip(row_classes, row_probs, strict=True)
                              for v in (names[c], f"{p:.6f}")]  # fmt: skip
                    rows[index] = [str(chunk[index]), ranked[0], ranked[1], *ranked, ""]
            writer.writerows(rows[index] for index in range(len(chunk)))  # in file order
            labelled += len(kept)
            failed += len(chunk) - len(kept)
    os.replace(tmp, output)  # a complete file or none: an earlier CSV is never half-written
    log.info("predict: %d image(s) labelled, %d could not be read; wrote %s",
             labelled, failed, output)  # fmt: skip
    console.print_summary([("images labelled", str(labelled)), ("unreadable", str(failed)),
                           ("checkpoint", str(path)), ("predictions", str(output))],
                          title="predict summary")  # fmt: skip
    return float(labelled)
