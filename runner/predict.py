"""The predict recipe: label image files with a checkpoint into a CSV; nothing tracked.

    python run.py mode=predict ckpt=<best.pt> predict.input=photos/ predict.topk=3

The checkpoint is made ready by `runner.from_checkpoint`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from runner.config.files import replaced_whole
from runner.config.location_checks import predictions_file
from runner.config.validation import ConfigError
from runner.data.decoding import BadImageError, DataError, decode_record, to_grayscale
from runner.data.sets.imagefolder import visible_files
from runner.data.sets.records import sniff
from runner.data.splits import path_id
from runner.from_checkpoint import (
    LoadedCheckpoint,
    load_trained_model,
    refuse_ignored_overrides,
    start_context,
)
from runner.reports import console
from runner.training import engine
from runner.training.final_eval import with_tta

log = logging.getLogger(__name__)


def run_predict(cfg: DictConfig) -> float:
    """Labels images with a checkpoint and writes a CSV: file, class, probability, top-k.

    Files that do not decode get a row with their error instead of a prediction. Nothing
    is tracked in MLflow.

    Returns:
        The number of images labelled.
    """
    refuse_ignored_overrides(cfg)  # before validation, which checks what it would ignore
    ctx = start_context(cfg)  # tracks nothing
    files = list_images(str(cfg.predict.input))
    output = predictions_path(cfg.predict.output, ctx.run_dir, files)  # before reading any
    # An earlier predictions CSV inside the input folder is not an image to label; only
    # a file of its name can be it, so the others are not resolved (a call each).
    target = output.resolve()
    files = [f for f in files if f.name != output.name or f.resolve() != target]
    if not files:
        raise ConfigError(
            f"predict.input={cfg.predict.input!r} holds no file but predict.output's CSV"
        )
    loaded = load_trained_model(ctx)
    channels = loaded.best.image_channels()
    if channels not in (1, 3):  # before any image is read: files decode as RGB
        raise ConfigError(
            f"ckpt={cfg.ckpt}: its model was trained on {channels}-channel images, and predict "
            "reads image files as RGB (or gray for a 1-channel model): label such data "
            "with mode=eval on a data set of that many channels"
        )
    names = loaded.best.class_names
    topk = min(int(cfg.predict.topk), len(names))
    if topk < cfg.predict.topk:
        log.warning(
            "predict.topk=%s: the checkpoint's model has %d classes, so the CSV ranks %d",
            cfg.predict.topk,
            len(names),
            topk,
        )
    labeller = Labeller(
        loaded,
        with_tta(loaded.model, cfg.predict.tta),
        engine.make_autocast(ctx.device, ctx.precision),
        ctx.device,
        topk,
    )
    header = ["file", "predicted_class", "probability"]
    header += [f"{kind}_{rank}" for rank in range(1, topk + 1) for kind in ("class", "prob")]
    labelled = failed = 0
    # A complete file or none: an earlier CSV is never half-written, and an error (or
    # Ctrl-C) leaves no partial file. UTF-8 whatever the locale (a class named in any
    # script), as `_is_predictions_csv` reads it; a name that is not UTF-8 may also be in
    # an error's text: escaped.
    with (
        replaced_whole(output) as tmp,
        tmp.open("w", newline="", encoding="utf-8", errors="backslashreplace") as handle,
    ):
        writer = csv.writer(handle)
        writer.writerow([*header, "error"])
        for start in range(0, len(files), cfg.predict.batch_size):
            rows, kept = labeller.rows(files[start : start + cfg.predict.batch_size])
            writer.writerows(rows)
            labelled += kept
            failed += len(rows) - kept
    log.log(
        logging.WARNING if failed else logging.INFO,
        "predict: %d image(s) labelled, %d could not be read (the CSV's error column says "
        "why); wrote %s",
        labelled,
        failed,
        output,
    )
    console.print_summary(
        [
            ("images labelled", str(labelled)),
            ("unreadable", str(failed)),
            ("test-time augmentation", cfg.predict.tta),
            ("checkpoint", loaded.named),
            ("predictions", str(output)),
        ],
        title="predict summary",
    )
    if not labelled:  # the CSV stands: it says why each file could not be read
        raise DataError(
            f"predict.input={cfg.predict.input!r}: none of its {failed} file(s) could be "
            f"read as an image (their errors are in {output}): point predict.input at "
            "image files (PNG, JPEG, ...) or a folder of them"
        )
    return float(labelled)


@dataclass(frozen=True)
class Labeller:
    """Labels image files with a checkpoint: a CSV row for each, in the files' order.

    Attributes:
        loaded: The checkpoint (class names, image size, eval path, normalisation).
        predictor: Its model, wrapped for test-time augmentation if asked.
        autocast: The precision's autocast context.
        device: Where the batch runs.
        topk: How many ranked classes a row holds.
    """

    loaded: LoadedCheckpoint
    predictor: nn.Module
    autocast: Callable[[], AbstractContextManager]
    device: torch.device
    topk: int

    def rows(self, files: Sequence[Path]) -> tuple[list[list[str]], int]:
        """Labels a batch of files.

        Args:
            files: The image files of one batch.

        Returns:
            Their CSV rows, in the files' order (a file that does not decode gets its
            error instead of a prediction), and how many were labelled.
        """
        blank = [""] * (2 + 2 * self.topk)  # predicted class, probability, the ranks
        rows: dict[int, list[str]] = {}
        images, kept = [], []
        for index, file in enumerate(files):
            # From its first bytes: a movie or archive in the folder is not read whole.
            reason = sniff(file)
            if reason is not None:
                rows[index] = [path_id(str(file)), *blank, reason]
                continue
            try:
                images.append(decode_record(file, self.loaded.best.image_size))
                kept.append(index)
            except BadImageError as err:
                rows[index] = [path_id(str(file)), *blank, str(err)]
        if images:
            batch = torch.stack(images).to(self.device)
            if self.loaded.best.image_channels() == 1:  # trained on gray: files decode as RGB
                batch = to_grayscale(batch)
            with torch.inference_mode(), self.autocast():
                logits = self.predictor(self.loaded.normalize(self.loaded.augment(batch)))
            probs, classes = logits.float().softmax(-1).topk(self.topk, dim=-1)
            names = self.loaded.best.class_names
            for index, row_probs, row_classes in zip(
                kept, probs.tolist(), classes.tolist(), strict=True
            ):
                ranked = [
                    v
                    for c, p in zip(row_classes, row_probs, strict=True)
                    for v in (names[c], f"{p:.6f}")
                ]
                # A name that is not UTF-8 as backslash escapes (caf\xe9.png).
                rows[index] = [path_id(str(files[index])), *ranked[:2], *ranked, ""]
        return [rows[index] for index in range(len(files))], len(kept)


def predictions_path(output: str | None, run_dir: Path, inputs: Sequence[Path | str] = ()) -> Path:
    """Where predict writes its CSV; its folder is made now, before any image is read.

    `predict.output`, or `<folder>/predictions.csv` when it names a folder (one that
    exists, or a path that ends with `/`), else `<run dir>/predictions.csv`.

    Raises:
        ConfigError: The folder cannot be made or written to, the path is one of the
            images to label (`inputs`) or another existing file that is not a CSV, or its
            name does not end in .csv.
    """
    path = predictions_file(str(output)) if output else run_dir / "predictions.csv"
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
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
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
        pattern = any(mark in path.name for mark in "*?[")
        raise ConfigError(
            f"predict.input={source!r}: no such file or folder"
            + (
                f"; a pattern is not expanded: give the folder ({path.parent}), whose "
                "images are all labelled"
                if pattern
                else ""
            )
        )
    files = visible_files(path, regular_only=True)  # a FIFO would make predict wait
    if not files:
        raise ConfigError(f"predict.input={source!r}: the folder holds no files")
    return files
