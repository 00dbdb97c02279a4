"""The training recipe: validate, build, fit, test, report. Reads top to bottom.

conf/*.yaml --Hydra--> cfg --validate--> RunContext (device, precision, world,
run dir, tracker, checkpoint writer, stop flag, sweep job)
-> data (uint8 splits, real-world switches) -> loaders -> augmentation
-> parts (model, loss, optimizer, schedule, scaler, EMA) -> resume or start
-> fit: train / validate / decide / checkpoint / log, epoch by epoch
-> the MLflow model -> test the best weights (its metrics), reports -> metrics.json, summary
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from runner.augment.checks import check_transforms
from runner.config.validation import validate
from runner.data.build import Loaders, build_data, build_loaders
from runner.data.debug import overfit_subset
from runner.data.loaders import EpochBatches
from runner.data.splits import DataSplits
from runner.models.checks import check_model_config, check_weights_at_hand
from runner.reports import console
from runner.reports.aug_preview import augment_preview
from runner.reports.data_report import (
    draw_start_plots,
    report_streamed_bad_files,
    report_train_data,
)
from runner.sweeps.job import SweepJob
from runner.tracking.null import NullTracker
from runner.tracking.run_record import debug_tags, start_run
from runner.training import checkpoint_io, distributed, engine, rank_sync, startup_clock
from runner.training.best_checkpoint import export_safetensors, read_best
from runner.training.context import (
    RunContext,
    claim_run_dir,
    release_run_dir,
    resolve_device,
    resolve_precision,
    seed_everything,
    tracked_run,
)
from runner.training.exported_model import log_best_model
from runner.training.final_eval import evaluate_and_report, write_metrics_file
from runner.training.lineage import log_data_inputs, split_record
from runner.training.loop import fit
from runner.training.oof import check_embedding_layer, write_out_of_fold
from runner.training.parts import build_parts, init_from_data
from runner.training.preflight import check_model_takes_data, check_training_data
from runner.training.profiling import profile
from runner.training.resume_checks import check_resume
from runner.training.signals import GracefulStop
from runner.training.state import (
    TrainState,
    continue_requeued_run,
    resume_or_start,
    start_over_if_asked,
)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Trains and tests one model as `cfg` says.

    Args:
        cfg: The composed config (conf/train.yaml and its groups).

    Returns:
        The best value of `trainer.monitor`, for a sweeper to optimise.
    """
    startup_clock.begin_run()
    job = SweepJob.current(cfg)  # None outside `-m`
    try:
        if job is not None and distributed.detect().is_main:
            return job.run(cfg, train_and_test)  # records the job; a failure returns NaN
        if job is not None:  # another rank of the job's processes (DDP)
            return job.run_on_another_rank(cfg, train_and_test)
        return train_and_test(cfg, job=None)
    finally:
        release_run_dir()  # another process may continue it now (a notebook's run ended)


def train_and_test(cfg: DictConfig, job: SweepJob | None) -> float:
    """The run itself; `job` is the sweep job it belongs to, if any."""
    ctx = start_context(cfg, job)
    if job is None or job.num == 0:  # a sweep shows its config tree once
        console.print_config(cfg)
    experiment = (job and job.experiment_name) or cfg.data.name
    if ctx.is_main:  # before the data: a tracking server that is down fails in seconds
        with startup_clock.phase("mlflow"):
            ctx.tracker.prepare(experiment)  # the store opens beside the data and model build

    with startup_clock.phase("model"):  # a wrong name or weights file, before the data
        check_model_config(cfg.model)
        check_weights_at_hand(cfg.model)
    check_transforms(cfg.aug, cfg.data)  # a bad transform, before the data is built
    with startup_clock.phase("data"):
        data = build_data(cfg.data)
    data = overfit_subset(data, cfg.trainer.overfit_batches, cfg.trainer.batch_size, cfg.seed)
    loaders = build_loaders(data, cfg.sampler, cfg.trainer, cfg.seed, ctx.device)
    check_training_data(cfg, data, len(loaders.train))  # before the model: nothing spent yet
    augment = instantiate(cfg.aug, num_classes=data.num_classes).to(ctx.device)
    if ctx.is_main:  # only rank 0 draws it (a forked RNG: the training draws are unchanged)
        preview = augment_preview(
            augment, data.train, data.class_names, seed=cfg.seed, device=ctx.device
        )
    with startup_clock.phase("model"):
        parts = build_parts(cfg, data, augment, ctx.device, ctx.precision, len(loaders.train))
    check_embedding_layer(cfg.data, parts.model, data.num_classes)  # a k-fold job's outputs
    check_model_takes_data(cfg, parts, data, ctx.device)  # one forward pass, before tracking
    init_from_data(parts.model, data, parts.normalize, ctx.device)  # once it takes the images
    if ctx.is_main:
        with startup_clock.phase("mlflow"):
            ctx.tracker.connect(experiment_name=experiment)
    # Also each rank's RNG states: restored from last.pt, or seeded apart on a fresh start.
    state = resume_or_start(ctx.run_dir, cfg.trainer.resume, parts, data, seed=cfg.seed)

    agreement = rank_sync.stop_agreement(ctx.world)  # under DDP all ranks stop together
    ctx.stop = GracefulStop(agreement)
    # From here on the tracked run always ends with a status; a signal stops it at a step
    # boundary (also one that comes while record_start runs).
    with tracked_run(ctx), ctx.stop:
        if ctx.is_main:
            record_start(ctx, data, state, loaders.train)
        rank_sync.barrier()  # the run's config file exists before any rank reads it
        state.mlflow_run_id = ctx.tracker.run_id
        with profile(cfg.trainer.profile, ctx.run_dir, ctx.tracker):
            fit(ctx, state, parts, loaders, data)
        rank_sync.gather_bad_files(loaders.train)  # each rank streamed its own share
        ctx.writer.wait()
        rank_sync.end_training(ctx.world, agreement)  # the other ranks are done
        ctx.stop.at_once()
        if ctx.is_main:  # rank 0 tests the best weights and reports
            # Drawn now, not before the first step: matplotlib takes about a second that
            # training need not wait for (a thread saves nothing: it holds the GIL).
            for path in draw_start_plots(preview, data, ctx.run_dir):
                ctx.tracker.log_artifact(path)
            evaluate_best(ctx, parts, data, loaders, state)
    return state.best_value


def start_context(cfg: DictConfig, job: SweepJob | None) -> RunContext:
    """Validates the config and sets up device, precision, world, run dir and tracker."""
    with startup_clock.phase("validate"):
        validate(cfg)
    run_dir = Path(cfg.paths.run_dir)
    continue_requeued_run(cfg)
    check_resume(run_dir, cfg)  # before anything in the dir changes
    main = distributed.detect().is_main
    claim_run_dir(run_dir, main=main)  # a second run is refused
    if main:  # the other ranks leave the dir's files to rank 0
        checkpoint_io.remove_stale_temp_files(run_dir / "checkpoints")
    seed_everything(cfg.seed)
    world, device = distributed.init(resolve_device(cfg.trainer.device))  # DDP or one process
    start_over_if_asked(cfg, run_dir)  # before the data: a requeued job continues its own
    is_main = world.is_main
    return RunContext(
        cfg=cfg,
        device=device,
        precision=resolve_precision(cfg.trainer.precision, device),
        world=world,
        run_dir=distributed.shared_run_dir(run_dir),
        tracker=instantiate(cfg.logger) if is_main else NullTracker(),  # rank 0 tracks
        writer=checkpoint_io.AsyncCheckpointWriter()
        if is_main
        else checkpoint_io.NullCheckpointWriter(),
        job=job,
    )


def record_start(ctx: RunContext, data: DataSplits, state: TrainState, train: EpochBatches) -> None:
    """Starts the tracked run; records the config, environment, data and batching."""
    with startup_clock.phase("mlflow"):
        start_run(
            ctx.tracker,
            ctx.cfg,
            ctx.run_dir,
            device=str(ctx.device),
            run_name=ctx.job.run_name if ctx.job else ctx.run_dir.name,
            tags={**(ctx.job.tracking_tags() if ctx.job else {}), **debug_tags()},
            # One call: data.num_classes may be null in the config (inferred from the
            # data), and MLflow refuses to change a logged param.
            params={"data.num_train": len(data.train), "data.num_classes": data.num_classes},
            resume_run_id=state.mlflow_run_id,
        )
    batching = (train.batches_per_epoch(), train.full_batch())
    ctx.tracker.set_tags(distributed.tags(ctx.world, ctx.cfg.trainer, *batching))
    if ctx.job is not None:
        ctx.job.record_run(ctx.tracker.run_id)
    log_data_inputs(ctx.tracker, ctx.cfg.data, data)  # train/val/test as MLflow datasets
    report_train_data(data, ctx.run_dir, ctx.tracker)


def evaluate_best(
    ctx: RunContext, parts, data: DataSplits, loaders: Loaders, state: TrainState
) -> None:
    """Tests the best weights, reports, and writes metrics.json and the summary table."""
    checkpoints = ctx.run_dir / "checkpoints"
    if state.best_epoch == 0:  # under nan_policy=skip, no epoch validated to a finite loss
        raise engine.NonFiniteLossError(
            f"none of the {state.epoch} epoch(s) gave a finite val loss "
            f"(trainer.nan_policy={ctx.cfg.trainer.nan_policy}), so there are no best "
            "weights to test. Lower optim.lr or set trainer.gradient_clip_val (e.g. 1.0)"
        )
    best = read_best(checkpoints / "best.pt")
    export_safetensors(best.model, best.class_names, checkpoints / "best.safetensors")
    model = parts.eval_model
    model.load_state_dict(best.model)
    # The run's one uploaded copy, logged first: the test metrics are then the model's.
    model_id = log_best_model(ctx, parts, best, data, state.epoch)
    test_metrics = evaluate_and_report(
        ctx,
        model,
        parts.augment,
        parts.normalize,
        data,
        loaders.test,
        history=state.history,
        step=state.epoch,  # the last epoch logged: fewer than max_epochs after an early stop
        model_id=model_id,
        dataset=split_record(ctx.cfg.data, data, "test") if model_id else None,
    )
    write_out_of_fold(ctx, model, parts, data)  # a k-fold job's held-out outputs, for the audit
    ctx.tracker.register_model(model_id)  # a registered version: a model whose test passed
    report_streamed_bad_files(data, list(loaders), ctx.run_dir, ctx.tracker)
    results = {
        "best_epoch": state.best_epoch,
        "best_value": state.best_value,
        "epochs": state.epoch,
        **test_metrics,
    }
    ctx.tracker.log_artifact(write_metrics_file(ctx.run_dir / "metrics.json", results))
    ctx.tracker.set_tags({"best_epoch": str(state.best_epoch)})
    overfit = []  # debug=overfit is there to show that the model fits its few batches
    if ctx.cfg.trainer.overfit_batches and state.history:
        overfit = [("final train/acc", f"{state.history[-1]['train/acc']:.4f}")]
    console.print_summary(
        [
            ("best epoch", f"{state.best_epoch} of {state.epoch}"),
            *overfit,
            *((name, f"{value:.4f}") for name, value in test_metrics.items()),
            ("run dir", str(ctx.run_dir)),
            ("tracking", ctx.tracker.describe()),
        ]
    )
