"""The eval and predict recipes: test a checkpoint, or label new images with it.

Both start from a run's `checkpoints/best.pt` (runner.training.best_checkpoint), which
carries the weights, the run's resolved config, the class names, the normalisation and
the image size, so the model is rebuilt exactly as it was trained, with no access to the
training run's files:

    python run.py mode=eval ckpt=outputs/runs/<date>/<time>/checkpoints/best.pt
    python run.py mode=eval ckpt=runs:/<mlflow run id> eval.tta=flip
    python run.py mode=predict ckpt=<best.pt> predict.input=photos/

`ckpt=runs:/<run id>` downloads that MLflow run's logged model,
`ckpt=models:/<name>/<version>` a registered version and `ckpt=models:/<m-id>` a logged
model by its id, from the store `logger.tracking_uri` names.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner.augment.normalize import Normalize
from runner.config.targets import untrusted_targets
from runner.config.validation import ConfigError, validate
from runner.data import curation, folds
from runner.data.build import build_data
from runner.data.checks import require_splits
from runner.data.decoding import BadImageError, DataError, decode_record
from runner.data.sets.imagefolder import (
    load_imagefolder,
    load_test_folder,
    scan_layout,
    visible_files,
)
from runner.data.sets.records import sniff
from runner.data.splits import DataSplits, Split, ids_digest
from runner.reports import console
from runner.tracking.null import NullTracker
from runner.tracking.run_record import hydra_overrides
from runner.training import engine
from runner.training.best_checkpoint import BestCheckpoint, read_best
from runner.training.checkpoint_io import CheckpointError
from runner.training.context import (
    RunContext,
    resolve_device,
    resolve_precision,
    seed_everything,
    tracked_run,
)
from runner.training.distributed import World
from runner.training.exported_model import MODEL_URI_PREFIXES, checkpoint_from_mlflow
from runner.training.final_eval import evaluate_and_report, with_tta
from runner.training.preflight import check_gradcam_layer

log = logging.getLogger(__name__)

IMAGEFOLDER_TARGET = f"{load_imagefolder.__module__}.{load_imagefolder.__name__}"


@dataclass
class LoadedCheckpoint:
    """A best.pt ready to use: its content, the training run's config, the rebuilt model.

    Attributes:
        path: The local best.pt.
        source_run_id: The MLflow run that trained it, when known.
        best: The checkpoint's content.
        stored: The training run's config (targets checked against the allowlist).
        model: The trained model, in eval mode on the device.
        augment: The training augmentation (its eval path: resize, center-crop).
        normalize: The normalisation the model was trained with.
    """

    path: Path
    source_run_id: str | None
    best: BestCheckpoint
    stored: DictConfig
    model: nn.Module
    augment: nn.Module
    normalize: Normalize


# --- eval ----------------------------------------------------------------------------------


def run_eval(cfg: DictConfig) -> float:
    """Tests a checkpoint on the test split and records a new, linked MLflow run.

    The data is the checkpoint's own (`eval.data=stored`) or this command line's
    (`eval.data=current`); its classes must be the checkpoint's. Writes metrics.json
    and the analysis reports into this run's dir.

    Returns:
        Test accuracy.
    """
    ctx = start_context(cfg)
    refuse_ignored_overrides(cfg)
    loaded = load_checkpoint(ctx)
    ctx.tracker = instantiate(cfg.logger)
    # The training run's experiment, unless this command names one (logger.experiment_name).
    trained_in = OmegaConf.select(loaded.stored, "logger.experiment_name", default=None)
    ctx.tracker.connect(experiment_name=str(trained_in or loaded.stored.data.name))
    data = eval_data(cfg, loaded)
    test_loader = data.test.loader(cfg.trainer.eval_batch_size, ctx.device)
    source = loaded.source_run_id or "unknown"
    with tracked_run(ctx):
        tags = {
            "mode": "eval",
            "ckpt": str(loaded.path),
            "eval.tta": cfg.eval.tta,
            "run_dir": str(ctx.run_dir),
            "source_run_id": source,
        }
        ctx.tracker.start(run_name=f"eval-{ctx.run_dir.name}", tags=tags, local_dir=ctx.run_dir)
        ctx.tracker.log_params(
            {
                "ckpt": str(cfg.ckpt),
                "eval.tta": cfg.eval.tta,
                "eval.data": cfg.eval.data,
                "data.name": data.name,
                "data.num_test": len(data.test),
            }
        )
        metrics = evaluate_and_report(
            ctx,
            loaded.model,
            loaded.augment,
            loaded.normalize,
            data,
            test_loader,
            tta=cfg.eval.tta,
            # The groups of the training run: eval's data has no k-fold, exclude or relabel.
            train_counts=loaded.best.train_class_counts,
        )
        summary = {
            "ckpt": str(loaded.path),
            "source_run_id": loaded.source_run_id,
            "tta": cfg.eval.tta,
            **metrics,
        }
        (ctx.run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        ctx.tracker.log_artifact(ctx.run_dir / "metrics.json")
        rows = [
            *((name, f"{value:.4f}") for name, value in metrics.items()),
            ("checkpoint", str(loaded.path)),
            ("source run", source),
            ("run dir", str(ctx.run_dir)),
            ("tracking", ctx.tracker.describe()),
        ]
        console.print_summary(rows, title="eval summary")
    return metrics["test/acc"]


def eval_data(cfg: DictConfig, loaded: LoadedCheckpoint) -> DataSplits:
    """The data eval tests on, checked against the checkpoint before anything is tested.

    `eval.data=stored`: the training run's data (its train-only switches off), whose
    test split must be the one the run was tested on. `eval.data=current`: this command
    line's data; an image folder without train/ is a held-out set (see
    `load_test_folder`).

    Raises:
        DataError: The data cannot be built, or its test split is not the run's.
        ConfigError: The data's classes are not the checkpoint's.
    """
    if cfg.eval.data == "current":
        if held_out_folder(cfg.data):
            data = load_test_folder(
                cfg.data.root,
                loaded.best.class_names,
                image_size=loaded.best.image_size,
                mean=loaded.best.mean,
                std=loaded.best.std,
                name=cfg.data.name,
                num_workers=cfg.data.num_workers,
                on_bad_file=cfg.data.on_bad_file,
            )
            require_splits(data, ("test",))
            return with_channels(data, len(loaded.best.mean))
        if OmegaConf.select(cfg.data, "_target_") == IMAGEFOLDER_TARGET:
            # From the folder names, before a folder of any size is decoded.
            same_classes(cfg, scan_layout(cfg.data.root)[0], loaded.best.class_names)
        data = with_channels(build_data(cfg.data), len(loaded.best.mean))
    else:
        try:
            data = build_data(train_only_keys_off(loaded.stored.data))
        except DataError as err:
            raise DataError(
                f"{err} (this is the checkpoint's own data, eval.data=stored; to test on "
                "other data, add eval.data=current with data=... data.root=...)"
            ) from err
        tested_on = loaded.best.test_ids_digest  # None in a best.pt from before it was kept
        if tested_on not in (None, ids_digest(data.test.ids)):
            raise DataError(
                f"eval.data=stored: the test split rebuilt from the checkpoint's data config "
                f"({len(data.test)} samples of {data.name}) is not the one the training run "
                "was tested on: the data changed since (files added, removed or renamed), "
                "and the split may now hold images the model trained on. Restore the data "
                "as it was, or test on a held-out set with eval.data=current data=... "
                "data.root=..."
            )
    require_splits(data, ("test",))
    same_classes(cfg, data.class_names, loaded.best.class_names)
    return data


def same_classes(cfg: DictConfig, names: list[str], trained: list[str]) -> None:
    """Refuses data whose classes are not the checkpoint's, in the same order.

    Raises:
        ConfigError: Naming both lists.
    """
    if list(names) != list(trained):
        raise ConfigError(
            f"eval.data={cfg.eval.data}: the data's classes {list(names)[:10]} differ from "
            f"the checkpoint's {list(trained)[:10]}: evaluate on data with the same classes"
        )


def with_channels(data: DataSplits, channels: int) -> DataSplits:
    """The data with its test images in the model's channel count, as predict reads files.

    RGB becomes luma for a one-channel model and gray is repeated for a three-channel
    one, where the test split is in memory.

    Raises:
        ConfigError: Other channel counts, or a streamed split that is not RGB already.
    """
    test = data.test
    have = int(test.images.shape[1]) if isinstance(test, Split) else 3
    if have == channels:
        return data
    if isinstance(test, Split) and (have, channels) in ((3, 1), (1, 3)):
        images = to_grayscale(test.images) if channels == 1 else test.images.repeat(1, 3, 1, 1)
        data.test = Split(images, test.labels, test.ids)
        return data
    streamed = "" if isinstance(test, Split) else " (a streamed split: data.resident=true)"
    raise ConfigError(
        f"eval.data=current: the checkpoint's model takes {channels}-channel images and "
        f"this data gives {have}, which eval converts only between 1 and 3 channels of a "
        f"split in memory{streamed}: test on data with {channels} channel(s)"
    )


def held_out_folder(data_cfg: DictConfig) -> bool:
    """Whether the data group is an image folder whose existing root has no train/."""
    if OmegaConf.select(data_cfg, "_target_") != IMAGEFOLDER_TARGET:
        return False
    root = Path(str(data_cfg.root)).expanduser()
    return root.is_dir() and not (root / "train").is_dir()


# --- predict -------------------------------------------------------------------------------


def run_predict(cfg: DictConfig) -> float:
    """Labels images with a checkpoint and writes a CSV: file, class, probability, top-k.

    Files that do not decode get a row with their error instead of a prediction. Nothing
    is tracked in MLflow.

    Returns:
        The number of images labelled.
    """
    ctx = start_context(cfg)  # tracks nothing
    refuse_ignored_overrides(cfg)
    files = list_images(str(cfg.predict.input))
    output = predictions_path(cfg.predict.output, ctx.run_dir, files)  # before reading any
    # An earlier predictions CSV inside the input folder is not an image to label.
    files = [f for f in files if f.resolve() != output.resolve()]
    if not files:
        raise ConfigError(
            f"predict.input={cfg.predict.input!r} holds no file but predict.output's CSV"
        )
    loaded = load_checkpoint(ctx)
    names, size = loaded.best.class_names, loaded.best.image_size
    topk = min(int(cfg.predict.topk), len(names))
    predictor = with_tta(loaded.model, cfg.predict.tta)
    autocast = engine.make_autocast(ctx.device, ctx.precision)
    header = ["file", "predicted_class", "probability"]
    header += [f"{kind}_{rank}" for rank in range(1, topk + 1) for kind in ("class", "prob")]
    labelled = failed = 0
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*header, "error"])
            for start in range(0, len(files), cfg.predict.batch_size):
                chunk = files[start : start + cfg.predict.batch_size]
                rows: dict[int, list[str]] = {}
                images, kept = [], []
                for index, file in enumerate(chunk):
                    # From its first bytes: a movie or archive in the folder is not read whole.
                    reason = sniff(file)
                    if reason is not None:
                        rows[index] = [str(file), "", "", *[""] * (2 * topk), reason]
                        continue
                    try:
                        images.append(decode_record(file, size))
                        kept.append(index)
                    except BadImageError as err:
                        rows[index] = [str(file), "", "", *[""] * (2 * topk), str(err)]
                if images:
                    batch = torch.stack(images).to(ctx.device)
                    if len(loaded.best.mean) == 1:  # a one-channel model: files decode as RGB
                        batch = to_grayscale(batch)
                    with torch.inference_mode(), autocast():
                        logits = predictor(loaded.normalize(loaded.augment(batch)))
                    probs, classes = logits.float().softmax(-1).topk(topk, dim=-1)
                    for index, row_probs, row_classes in zip(
                        kept, probs.tolist(), classes.tolist(), strict=True
                    ):
                        ranked = [
                            v
                            for c, p in zip(row_classes, row_probs, strict=True)
                            for v in (names[c], f"{p:.6f}")
                        ]
                        rows[index] = [str(chunk[index]), ranked[0], ranked[1], *ranked, ""]
                writer.writerows(rows[index] for index in range(len(chunk)))  # in file order
                labelled += len(kept)
                failed += len(chunk) - len(kept)
        os.replace(tmp, output)  # a complete file or none: an earlier CSV is never half-written
    finally:
        tmp.unlink(missing_ok=True)  # after an error (or Ctrl-C) no partial file is left
    log.info(
        "predict: %d image(s) labelled, %d could not be read; wrote %s", labelled, failed, output
    )
    console.print_summary(
        [
            ("images labelled", str(labelled)),
            ("unreadable", str(failed)),
            ("checkpoint", str(loaded.path)),
            ("predictions", str(output)),
        ],
        title="predict summary",
    )
    return float(labelled)


def predictions_path(output: str | None, run_dir: Path, inputs: Sequence[Path | str] = ()) -> Path:
    """Where predict writes its CSV; its folder is made now, before any image is read.

    `predict.output`, or `<folder>/predictions.csv` when it names a folder (one that
    exists, or a path that ends with `/`), else `<run dir>/predictions.csv`.

    Raises:
        ConfigError: The folder cannot be made or written to, the path is one of the
            images to label (`inputs`) or another existing file that is not a CSV, or its
            name does not end in .csv.
    """
    path = Path(output).expanduser() if output else run_dir / "predictions.csv"
    if path.is_dir() or (output and str(output).endswith(("/", os.sep))):
        path = path / "predictions.csv"
    if path.exists() and (not path.is_file() or path.suffix.lower() != ".csv"):
        # Only an existing file can be an input image: a new output costs no look at them.
        if path.resolve() in {Path(image).resolve() for image in inputs}:
            raise ConfigError(
                f"predict.output={output!r} is one of the images to label and would be "
                "overwritten: point it at a CSV file (or a folder) elsewhere"
            )
        # An earlier predictions CSV is replaced; any other file (a checkpoint) is not.
        raise ConfigError(
            f"predict.output={output!r} is an existing file that is not a CSV and would be "
            "overwritten: point it at a .csv file (or a folder) instead"
        )
    if path.is_file() and not _is_predictions_csv(path):
        raise ConfigError(
            f"predict.output={output!r} is an existing CSV that predict did not write (it "
            "does not start with file,predicted_class) and would be overwritten: point it "
            "at a new .csv file (or a folder)"
        )
    if path.suffix.lower() != ".csv":  # written now, it would be refused the next time
        raise ConfigError(
            f"predict.output={output!r} does not end in .csv: name a .csv file, or a folder "
            "(with a trailing /) for predictions.csv in it"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"predict.output={output!r}: cannot make its folder ({err}); point it at a CSV file "
            "in a folder you can write to"
        ) from err
    probe = path.with_name(f".{path.name}.tmp")
    try:  # a real file: os.access says yes to root for /sys and /proc
        probe.open("w").close()
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"predict.output={output!r}: cannot write in {path.parent} ({err.strerror}); point "
            "it at a CSV file in a folder you can write to"
        ) from err
    return path


def _is_predictions_csv(path: Path) -> bool:
    """Whether a file starts with the header predict writes (an earlier predictions CSV)."""
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            return handle.readline().startswith("file,predicted_class,")
    except OSError:
        return False


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
    files = visible_files(path, regular_only=True)  # a FIFO would make predict wait
    if not files:
        raise ConfigError(f"predict.input={source!r}: the folder holds no files")
    return files


# --- the checkpoint ------------------------------------------------------------------------


def start_context(cfg: DictConfig) -> RunContext:
    """Validates the config; one process, its device, precision and run dir; no tracker yet."""
    validate(cfg)
    seed_everything(cfg.seed)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    return RunContext(cfg, device, precision, World(), run_dir, NullTracker())


def refuse_ignored_overrides(cfg: DictConfig) -> None:
    """Refuses command-line keys that eval or predict would silently ignore.

    The model and its augmentation always come from the checkpoint; the data too in
    predict, and in eval with eval.data=stored.

    Raises:
        ConfigError: Naming the overrides and why they do not apply.
    """

    def given(*groups: str) -> list[str]:
        keys = tuple(f"{g}{sep}" for g in groups for sep in (".", "="))
        return [o for o in hydra_overrides() if o.lstrip("+~").startswith(keys)]

    stored_parts = given("model", "aug")
    if stored_parts:
        raise ConfigError(
            f"{' '.join(stored_parts)}: mode={cfg.mode} uses the model and augmentation "
            "stored in the checkpoint and would ignore this: leave it out (they change only "
            "by training anew)"
        )
    data_keys = given("data")
    if data_keys and cfg.mode == "predict":
        raise ConfigError(
            f"{' '.join(data_keys)}: mode=predict reads predict.input at the checkpoint's "
            "image size and would ignore this: leave it out"
        )
    if data_keys and cfg.eval.data == "stored":
        raise ConfigError(
            f"{' '.join(data_keys)}: eval.data=stored tests on the data the checkpoint was "
            "trained on and would ignore this. Add eval.data=current to test on the command "
            "line's data"
        )


def load_checkpoint(ctx: RunContext) -> LoadedCheckpoint:
    """Resolves `ckpt`, reads the best.pt, checks its config and rebuilds the model."""
    path, run_id = resolve_ckpt(str(ctx.cfg.ckpt), ctx.cfg, ctx.run_dir / "downloaded")
    best = read_best(path)
    stored = best.stored_config()
    allowed = tuple(ctx.cfg.get("allowed_targets") or [])
    # Only this command line's allowed_targets count: a checkpoint cannot widen them itself.
    parts = OmegaConf.create({k: stored[k] for k in ("model", "aug", "data") if k in stored})
    problems = untrusted_targets(parts, extra_allowed=allowed)
    if problems:
        raise ConfigError("the checkpoint's config is refused:\n  - " + "\n  - ".join(problems))
    num_classes = len(best.class_names)
    augment = instantiate(stored.aug, num_classes=num_classes).to(ctx.device).eval()
    model = rebuild_model(stored, best, ctx.device)
    check_gradcam_layer(ctx.cfg, model)  # else found only after the test
    return LoadedCheckpoint(
        path=path,
        source_run_id=run_id or best.mlflow_run_id,
        best=best,
        stored=stored,
        model=model,
        augment=augment,
        normalize=Normalize(best.mean, best.std).to(ctx.device),
    )


def train_only_keys_off(data_cfg: DictConfig) -> DictConfig:
    """The stored data config without the keys that change only train and val splits.

    `data.exclude`/`relabel` and k-fold leave the test split as it is, and their files
    need not exist where eval runs.
    """
    data_cfg = data_cfg.copy()
    for key in (*curation.KEYS, *folds.KEYS):
        if key in data_cfg:
            data_cfg[key] = None
    return data_cfg


def rebuild_model(stored: DictConfig, best: BestCheckpoint, device: torch.device) -> nn.Module:
    """The trained model: its config from the checkpoint, its weights from best.pt.

    Pretrained weights are not loaded again (neither downloaded nor read from
    `model.pretrained_file`, which may not exist here): best.pt has the trained ones.
    """
    settings = OmegaConf.to_container(stored.model, resolve=True)
    for key, off in (("pretrained", False), ("pretrained_file", None), ("weights", None)):
        if key in settings:
            settings[key] = off
    model = instantiate(settings)(num_classes=len(best.class_names))
    try:
        model.load_state_dict(best.model)
    except RuntimeError as err:
        cause = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"the weights in the checkpoint do not fit the model its config builds ({cause}): "
            "it was changed or written by other code; use the best.pt its run wrote"
        ) from err
    return model.to(device).eval()


def resolve_ckpt(ckpt: str, cfg: DictConfig, download_dir: Path) -> tuple[Path, str | None]:
    """The local best.pt for `ckpt`, and the MLflow run id it came from when known.

    Args:
        ckpt: A file path, `runs:/<run id>` (that run's logged model, or its
            checkpoints/best.pt for runs logged before models were),
            `models:/<name>/<version>` (a registered model version) or
            `models:/<logged model id>`.
        cfg: The composed config (its `logger.tracking_uri` names the MLflow store).
        download_dir: Where a downloaded checkpoint is put.

    Raises:
        CheckpointError: The file does not exist, or the URI names no run, model or
            version the store has.
    """
    if not ckpt.startswith(MODEL_URI_PREFIXES):
        path = Path(ckpt).expanduser()
        if not path.is_file():
            hint = " (a folder: point at its checkpoints/best.pt)" if path.is_dir() else ""
            raise CheckpointError(
                f"ckpt={ckpt!r}: no such file{hint}. Pass a run's checkpoints/best.pt or "
                "ckpt=runs:/<mlflow run id> or ckpt=models:/<registered model>/<version>"
            )
        return path, None
    return checkpoint_from_mlflow(ckpt, cfg, download_dir)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 RGB -> (N, 1, H, W) uint8 luma (ITU-R BT.601, as Pillow's "L")."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
