"""The eval recipe: test a checkpoint on the data it was trained on, or on other data.

    python run.py mode=eval ckpt=outputs/runs/<date>/<time>/checkpoints/best.pt
    python run.py mode=eval ckpt=runs:/<mlflow run id> eval.tta=flip
    python run.py mode=eval ckpt=... eval.data=current data=imagefolder data.root=/other/set

The checkpoint is made ready by `runner.from_checkpoint`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.config.files import from_job_cwd, job_cwd
from runner.config.validation import IMAGEFOLDER_TARGET, ConfigError
from runner.data.build import build_data
from runner.data.checks import require_splits
from runner.data.decoding import DataError, to_grayscale
from runner.data.sets.hf_held_out import is_held_out_split, is_hf_data, load_hf_test
from runner.data.sets.imagefolder import (
    class_folders,
    class_key,
    load_test_folder,
)
from runner.data.splits import DataSplits, Split, ids_digest, is_long_tailed
from runner.from_checkpoint import (
    LoadedCheckpoint,
    load_trained_model,
    refuse_ignored_overrides,
    resolved_part,
    start_context,
    train_only_keys_off,
)
from runner.reports import console
from runner.reports.data_report import report_streamed_bad_files
from runner.training.context import tracked_run
from runner.training.exported_model import model_tags
from runner.training.final_eval import evaluate_and_report, write_metrics_file
from runner.training.lineage import split_record
from runner.training.preflight import check_gradcam

log = logging.getLogger(__name__)


def run_eval(cfg: DictConfig) -> float:
    """Tests a checkpoint on the test split and records a new, linked MLflow run.

    The data is the checkpoint's own (`eval.data=stored`) or this command line's
    (`eval.data=current`); its classes must be the checkpoint's. Writes metrics.json
    and the analysis reports into this run's dir.

    Returns:
        Test accuracy.
    """
    refuse_ignored_overrides(cfg)  # before validation, which checks what it would ignore
    ctx = start_context(cfg)
    loaded = load_trained_model(ctx)
    ctx.tracker = instantiate(cfg.logger)
    # The training run's experiment, unless this command names one (logger.experiment_name).
    trained_in = [as_read_here(loaded.stored, k) for k in ("logger.experiment_name", "data.name")]
    ctx.tracker.connect(experiment_name=str(next(filter(None, trained_in), cfg.data.name)))
    # A best.pt file of a tracked run is that run's logged model, when the store has it.
    model_id = loaded.model_id
    if model_id is None and loaded.source_run_id is not None:
        model_id = ctx.tracker.find_model(model_tags(loaded.best), run_id=loaded.source_run_id)
    data, data_cfg = eval_data(cfg, loaded)
    first, _ = data.test.take(torch.arange(min(1, len(data.test))))
    example = loaded.normalize(loaded.augment(first.to(ctx.device)))
    check_gradcam(cfg, loaded.model, example)  # else gradcam.png is left out after the test
    test_loader = data.test.loader(cfg.trainer.eval_batch_size, ctx.device)
    # Hashed with the settings that built it: the training run's test split keeps its digest.
    test_set = split_record(data_cfg, data, "test")
    source = loaded.source_run_id or "unknown"
    with tracked_run(ctx):
        tags = {
            "mode": "eval",
            "ckpt": loaded.named,
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
        # The model it tested, as MLflow 3 links an evaluation to a logged model.
        ctx.tracker.log_inputs([test_set], model_ids=(model_id,) if model_id else ())
        metrics = evaluate_and_report(
            ctx,
            loaded.model,
            loaded.augment,
            loaded.normalize,
            data,
            test_loader,
            tta=cfg.eval.tta,
            # The groups of the training run: eval's data has no k-fold, exclude or relabel,
            # and, with eval.data=current or a held-out folder, not its imbalance either.
            train_counts=loaded.best.train_class_counts,
            long_tailed=(as_read_here(loaded.stored, "data.imbalance_ratio") or 1) > 1
            or is_long_tailed(loaded.best.train_class_counts or []),
            # Flip TTA's figures are of another predictor than the model's alone.
            model_id=model_id if cfg.eval.tta == "none" else None,
            dataset=test_set,
        )
        # Files of a streamed test split that did not decode while testing.
        report_streamed_bad_files(data, [test_loader], ctx.run_dir, ctx.tracker)
        summary = {
            "ckpt": loaded.named,
            "ckpt_file": str(loaded.path),
            "source_run_id": loaded.source_run_id,
            "tta": cfg.eval.tta,
            **metrics,
        }
        ctx.tracker.log_artifact(write_metrics_file(ctx.run_dir / "metrics.json", summary))
        rows = [
            *((name, f"{value:.4f}") for name, value in metrics.items()),
            ("test-time augmentation", cfg.eval.tta),
            ("checkpoint", loaded.named),
            ("source run", source),
            ("run dir", str(ctx.run_dir)),
            ("tracking", ctx.tracker.describe()),
        ]
        console.print_summary(rows, title="eval summary")
    return metrics["test/acc"]


def at_trained_size(data_cfg: DictConfig, loaded: LoadedCheckpoint) -> DictConfig:
    """The data config decoding at the checkpoint's image size, as predict and training do.

    At the data group's own size (64 for data=imagefolder), a model trained at another
    was tested on images decoded at one size and resized to the other.
    """
    size = loaded.best.image_size
    if data_cfg.get("image_size") == size:
        return data_cfg
    log.info(
        "eval.data=current: images decoded at the checkpoint's size %s (not data.image_size=%s)",
        size,
        data_cfg.get("image_size"),
    )
    data_cfg = data_cfg.copy()
    with open_dict(data_cfg):
        data_cfg.image_size = size
    return data_cfg


def as_read_here(stored: DictConfig, key: str) -> Any:
    """A value of the checkpoint's config; None where it reads an unset variable."""
    return OmegaConf.select(stored, key, default=None, throw_on_resolution_failure=False)


def trained_path(loaded: LoadedCheckpoint, key: str) -> Any:
    """A path of the checkpoint's config as its training run read it.

    A relative one (data.root=../leaves) from the directory that run ran in, so that eval
    from another directory reads the same files.
    """
    directory = job_cwd(loaded.path.parent.parent)  # <run>/checkpoints/best.pt
    return from_job_cwd(as_read_here(loaded.stored, key), directory)


def eval_data(cfg: DictConfig, loaded: LoadedCheckpoint) -> tuple[DataSplits, DictConfig]:
    """The data eval tests on, checked against the checkpoint before anything is tested.

    `eval.data=stored`: the training run's data (its train-only switches off), whose
    test split must be the one the run was tested on. `eval.data=current`: this command
    line's data; an image folder without train/, or a Hugging Face data set with
    `data.split_train=null`, is a held-out set (see `load_test_folder`, `load_hf_test`).

    Returns:
        The data, and the data config it was built from (at the checkpoint's image
        size): the test split's dataset digest hashes its settings.

    Raises:
        DataError: The data cannot be built, or its test split is not the run's.
        ConfigError: The data's classes are not the checkpoint's.
    """
    if cfg.eval.data == "current":
        root = image_folder_root(cfg.data)
        checkpoint = {
            "image_size": loaded.best.image_size,
            "mean": loaded.best.mean,
            "std": loaded.best.std,
        }
        held_out = None
        if root is not None and root.is_dir() and not (root / "train").is_dir():
            held_out = load_test_folder(cfg.data, loaded.best.class_names, **checkpoint)
        elif is_held_out_split(cfg.data):
            refuse_the_trained_data_as_held_out(cfg, loaded)
            held_out = load_hf_test(cfg.data, loaded.best.class_names, **checkpoint)
        if held_out is not None:
            require_splits(held_out, ("test",))
            data = with_channels(held_out, loaded.best.image_channels())
            return data, at_trained_size(cfg.data, loaded)  # the size it decoded at
        if root is not None and (root / "train").is_dir():
            # From the class folders' names, before a folder of any size is listed and decoded.
            same_classes(cfg, class_folders(root / "train"), loaded.best.class_names)
        data_cfg = at_trained_size(train_only_keys_off(cfg.data), loaded)
        data = with_channels(build_data(data_cfg), loaded.best.image_channels())
        # Other classes first: a split of other data than the run's is no new split of it.
        same_classes(cfg, data.class_names, loaded.best.class_names)
        refuse_a_new_split_of_the_trained_data(cfg, data, loaded)
    else:
        other_data = other_data_keys(OmegaConf.select(loaded.stored, "data", default=None))
        resolved_part(loaded.stored, "data", loaded.path, f", or test on other data: {other_data}")
        data_cfg = train_only_keys_off(loaded.stored.data)
        # The folder the training run read (root is no content setting: the test split's
        # digest stays the run's).
        found = trained_path(loaded, "data.root")
        if found != as_read_here(data_cfg, "root"):
            data_cfg.root = found
        if data_cfg.get("cache_dir") is not None:
            # Under this command's paths.output_dir, as everything it writes: the stored
            # value, resolved at training, wrote into the training run's output folder.
            data_cfg.cache_dir = str(Path(cfg.paths.output_dir) / "cache")
        try:
            data = build_data(data_cfg)
        except DataError as err:
            raise DataError(
                f"{err} (this is the checkpoint's own data, eval.data=stored; to test on "
                f"other data, add {other_data})"
            ) from err
        tested_on = loaded.best.test_ids_digest  # None in a best.pt from before it was kept
        if tested_on not in (None, ids_digest(data.test.ids)):
            raise DataError(
                f"eval.data=stored: the test split rebuilt from the checkpoint's data config "
                f"({len(data.test)} samples of {data.name}) is not the one the training run "
                "was tested on: the data changed since (files added, removed or renamed), "
                "and the split may now hold images the model trained on. Restore the data "
                f"as it was, or test on a held-out set with {other_data}"
            )
    require_splits(data, ("test",))
    same_classes(cfg, data.class_names, loaded.best.class_names)
    return data, data_cfg


def refuse_the_trained_data_as_held_out(cfg: DictConfig, loaded: LoadedCheckpoint) -> None:
    """Refuses `data.split_train=null` on the Hugging Face data set the checkpoint trained on.

    Its split, tested whole, holds the training images. The checkpoint's `data.name` is
    read from the directory its run ran in, as `eval.data=stored` reads it.

    Raises:
        DataError: Naming the data set and the fixes.
    """
    if not is_hf_data(OmegaConf.select(loaded.stored, "data", default=None)):
        return
    trained_on = trained_path(loaded, "data.name")
    same = [os.path.realpath(os.path.expanduser(str(n))) for n in (trained_on, cfg.data.name)]
    if trained_on and same[0] == same[1]:
        raise DataError(
            f"data.name={cfg.data.name!r} is the data set the checkpoint was trained on: "
            f"data.split_train=null would test all of data.split_test={cfg.data.split_test!r}, "
            "training images included. Test on its own test split (eval.data=stored), or "
            "on another data set"
        )


def refuse_a_new_split_of_the_trained_data(
    cfg: DictConfig, data: DataSplits, loaded: LoadedCheckpoint
) -> None:
    """Refuses `eval.data=current` on a test split carved anew from the trained data.

    The same data set (its `_target_` and `data.root`, or without a root its
    `data.name`) whose test split is carved from the train listing, and is not the one
    the run was tested on: this command's split keys differ (`data.split_seed`,
    `data.test_fraction`, ...) or the data changed since, so the split may hold images
    the model learnt from. A test split of the data set's own (a `test/` folder, a
    split named by `data.split_test`) holds none and is tested as asked.

    Raises:
        DataError: Naming the data set and the fixes.
    """
    tested_on = loaded.best.test_ids_digest  # None in a best.pt from before it was kept
    if not data.test_carved or tested_on in (None, ids_digest(data.test.ids)):
        return
    here = {key: cfg.data.get(key) for key in ("_target_", "root", "name")}
    there = {key: as_read_here(loaded.stored, f"data.{key}") for key in here}
    if here["_target_"] != there["_target_"]:
        return
    # The root names an image folder's or CIFAR's files, and `data.name` only labels
    # them; without a root, `data.name` is the data set (a path or a Hub id for hf).
    key = "root" if here["root"] is not None or there["root"] is not None else "name"
    if _as_path(here[key]) != _as_path(there[key]):
        return
    raise DataError(
        f"eval.data=current: {data.name} is the data the checkpoint was trained on, and "
        f"this command's test split ({len(data.test)} samples), carved from its train "
        "listing, is not the one its run was tested on: this command's split keys "
        "(data.split_seed, data.val_fraction, data.test_fraction) differ from the run's, "
        "or the data changed since, and the split may hold images the model trained on. "
        "Test on the run's own split with eval.data=stored, or on images it did not train "
        "on (a test split of the data set's own, or an image folder without train/: "
        "data=imagefolder data.root=<folder of test/<class>/...>)"
    )


def _as_path(value: Any) -> Any:
    """A local path, made absolute, as the same data set is named either way; else as is."""
    if value is None:
        return None
    path = Path(str(value)).expanduser()
    return path.resolve() if path.exists() else value


def same_classes(cfg: DictConfig, names: list[str], trained: list[str]) -> None:
    """Refuses data whose classes are not the checkpoint's, in the same order.

    Raises:
        ConfigError: Naming both lists.
    """
    if [class_key(n) for n in names] != [class_key(n) for n in trained]:  # "é" either way
        raise ConfigError(
            f"eval.data={cfg.eval.data}: the data's classes {list(names)[:10]} differ from "
            f"the checkpoint's {list(trained)[:10]}: evaluate on data with the same classes"
        )


def with_channels(data: DataSplits, channels: int) -> DataSplits:
    """The data with its test images in the channels the model was trained on.

    As predict reads files: RGB becomes luma for a model trained on gray images (also a
    3-channel pretrained one, whose normalisation repeats them), and gray is repeated for
    one trained on RGB. A streamed split is decoded as RGB and takes its luma batch by
    batch.

    Raises:
        ConfigError: Other channel counts.
    """
    test = data.test
    have = int(test.images.shape[1]) if isinstance(test, Split) else test.channels
    if have == channels:
        return data
    if (have, channels) not in ((3, 1), (1, 3)):
        raise ConfigError(
            f"eval.data=current: the checkpoint's model was trained on {channels}-channel "
            f"images and this data gives {have}, which eval converts only between 1 and 3 "
            f"channels: test on data with {channels} channel(s)"
        )
    if not isinstance(test, Split):  # streamed: each batch is decoded as RGB, then converted
        data.test = replace(test, channels=channels)
    elif channels == 1:
        data.test = Split(to_grayscale(test.images), test.labels, test.ids)
    else:
        data.test = Split(test.images.repeat(1, 3, 1, 1), test.labels, test.ids)
    return data


def other_data_keys(data_cfg: DictConfig | None) -> str:
    """The keys that test on other data than a checkpoint's, in its data's terms.

    A Hugging Face data set is named by `data.name`, the other file-based sets by
    `data.root`.
    """
    if is_hf_data(data_cfg):
        return "eval.data=current data=hf data.name=..."
    return "eval.data=current data=... data.root=..."


def image_folder_root(data_cfg: DictConfig) -> Path | None:
    """`data.root` of an image-folder data group; None for another data set."""
    if OmegaConf.select(data_cfg, "_target_") != IMAGEFOLDER_TARGET:
        return None
    return Path(str(data_cfg.root)).expanduser()
