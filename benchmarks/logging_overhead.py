"""What MLflow logging costs relative to training, measured side by side.

Measurements in one process:

1. The runner's real fit loop (`runner.training.loop.fit`: train epochs, validation,
   checkpoints, per-epoch logging) on the default run's config (digits, timm resnet18,
   aug basic, batch 128) with three trackers: `mlflow` as runs log now (dataset inputs
   logged at the start, MLflow's system metrics sampled every `--interval` s: 1 s by
   default, 10x the config's default rate, so that fits of a few seconds include
   samples), `mlflow-before` (metrics only, as runs logged before: no inputs, no system
   metrics) and `none`. Each round builds every side afresh exactly as `runner.train.run`
   does and times only `fit` plus the wait for its checkpoint writes; the order rotates.
   Goals: mlflow / none >= 0.99, and mlflow / mlflow-before >= 0.99 (the new logging
   costs at most 1% of an epoch); medians of per-round ratios.
2. The per-epoch costs alone, as a share of a default epoch (resnet18, batch 128, 9
   steps): the epoch's `log_batch`, and MLflow's system-metrics sampler (CPU time per
   sample, times the samples that fall in an epoch at the default 10 s interval and at
   `--interval`). The dataset inputs are logged once per run: their time is reported.
3. The end-of-run model logging (`mlflow.pytorch.log_model` of the default resnet18,
   pt2 export, signature, input example) into a SQLite store, with and without
   registering a version.

    .venv/bin/python benchmarks/logging_overhead.py [--rounds 8] [--fit-epochs 2]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import timm
import torch
from bench_results import quick, record
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from runner.data.build import build_data, build_loaders
from runner.tracking.mlflow_tracker import MlflowTracker
from runner.tracking.run_record import start_run
from runner.training.best_checkpoint import BestCheckpoint
from runner.training.checkpoint_io import AsyncCheckpointWriter
from runner.training.context import RunContext, resolve_device, resolve_precision, seed_everything
from runner.training.distributed import World
from runner.training.exported_model import exported_classifier
from runner.training.lineage import log_data_inputs
from runner.training.loop import fit
from runner.training.parts import build_parts, init_from_data
from runner.training.state import TrainState

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
FIT_GOAL = 0.99
DEFAULT_INTERVAL_S = 10.0  # conf/logger/mlflow.yaml: system_metrics_interval_s
SIDES = ("mlflow", "mlflow-before", "none")

EPOCH_METRICS = (
    "train/loss",
    "train/acc",
    "train/throughput",
    "epoch_time_s",
    "lr",
    "val/loss",
    "val/acc",
    "val/balanced_acc",
    "val/macro_f1",
    "val/top5",
)


def compose_default(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def time_logging(epochs: int) -> list[float]:
    """Seconds per epoch of logging: buffer the epoch's metrics and flush them."""
    with tempfile.TemporaryDirectory() as tmp:
        tracker = MlflowTracker(
            f"sqlite:///{tmp}/mlflow.db", artifact_location=f"{tmp}/art", system_metrics=False
        )
        tracker.connect("bench")
        tracker.start("bench", tags={})
        times = []
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            tracker.log_metrics({name: 0.5 + epoch for name in EPOCH_METRICS}, step=epoch)
            tracker.flush()
            times.append(time.perf_counter() - start)
        tracker.finish("FINISHED")
    return times


def time_system_metrics(seconds: float, interval_s: float) -> tuple[float, int]:
    """CPU seconds per system-metrics sample (collect + log into SQLite), and samples.

    The main thread sleeps meanwhile, so the process's CPU time is the sampler's.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tracker = MlflowTracker(
            f"sqlite:///{tmp}/mlflow.db",
            artifact_location=f"{tmp}/art",
            system_metrics_interval_s=interval_s,
        )
        tracker.connect("bench")
        tracker.start("bench", tags={})
        time.sleep(1.0)  # the monitor's own start-up (its first sample's baseline)
        cpu = time.process_time()
        time.sleep(seconds)
        cpu = time.process_time() - cpu
        tracker.finish("FINISHED")
        history = tracker.client.get_metric_history(
            tracker.run_id, "system/cpu_utilization_percentage"
        )
    samples = max(len(history) - 1, 1)  # the one before the timed window
    return cpu / samples, samples


def time_steps(steps: int, device: torch.device) -> list[float]:
    """Seconds per training step of resnet18 at batch 128, 32x32."""
    model = timm.create_model("resnet18", num_classes=10).to(
        device, memory_format=torch.channels_last
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(128, 3, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, 10, (128,), device=device)
    times = []
    for step in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:  # the first steps warm up allocators and kernels
            times.append(time.perf_counter() - start)
    return times


def time_fit(
    side: str, out: Path, run_name: str, epochs: int, data, interval_s: float
) -> tuple[float, int, float]:
    """Builds a run as `runner.train.run` does and times its `fit` (see the module doc).

    Returns:
        Seconds of `fit` plus the wait for its checkpoint writes, images trained, and
        seconds spent logging the dataset inputs (0 for the other sides).
    """
    overrides = {
        "mlflow": [f"logger.system_metrics_interval_s={interval_s}"],
        "mlflow-before": ["logger.system_metrics=false"],
        "none": ["logger=none"],
    }[side]
    cfg = compose_default(
        *overrides,
        f"paths.output_dir={out}",
        f"paths.run_dir={out}/{run_name}",
        f"trainer.max_epochs={epochs}",
        "trainer.batch_size=128",  # the batch the step timing and the figures use
    )
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    ctx = RunContext(
        cfg=cfg,
        device=device,
        precision=resolve_precision(cfg.trainer.precision, device),
        world=World(),
        run_dir=run_dir,
        tracker=instantiate(cfg.logger),
        writer=AsyncCheckpointWriter(),
    )
    ctx.tracker.connect(experiment_name=cfg.data.name)
    augment = instantiate(cfg.aug, num_classes=data.num_classes).to(device)
    loaders = build_loaders(data, cfg.sampler, cfg.trainer, cfg.seed, device)
    parts = build_parts(cfg, data, augment, device, ctx.precision, len(loaders.train))
    init_from_data(parts.model, data, parts.normalize, device)
    start_run(ctx.tracker, cfg, run_dir, device=str(device), run_name=run_name, tags={}, params={})
    inputs_s = 0.0
    if side == "mlflow":
        started = time.perf_counter()
        log_data_inputs(ctx.tracker, cfg.data, data)
        inputs_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit(ctx, TrainState(), parts, loaders, data)
    ctx.writer.wait()
    seconds = time.perf_counter() - start
    ctx.writer.close()
    ctx.tracker.finish("FINISHED")
    return seconds, epochs * loaders.train.batches_per_epoch() * cfg.trainer.batch_size, inputs_s


def compare_fit(rounds: int, epochs: int, interval_s: float) -> dict[str, float]:
    """Rounds of fit with each side, order rotating; returns the ratios and inputs time."""
    data = build_data(compose_default("paths.run_dir=unused").data)
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    inputs: list[float] = []
    orders = itertools.cycle(itertools.permutations(SIDES))
    print(f"fit loop, default run (digits, resnet18, batch 128), {epochs} epochs per fit")
    print("img/s per side; mlflow = inputs + system metrics every", interval_s, "s")
    print(f"{'round':>5}  " + "  ".join(f"{s:>13}" for s in SIDES) + "  new/before  new/none")
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds + 1):  # round 0 warms up (and creates the stores)
            for side in next(orders):
                seconds, images, inputs_s = time_fit(
                    side, Path(tmp) / side, f"r{round_index}", epochs, data, interval_s
                )
                if round_index:
                    rates[side].append(images / seconds)
                    if side == "mlflow":
                        inputs.append(inputs_s)
            if round_index:
                last = {side: rates[side][-1] for side in SIDES}
                cells = "  ".join(f"{last[s]:>13.1f}" for s in SIDES)
                print(
                    f"{round_index:>5}  {cells}  {last['mlflow'] / last['mlflow-before']:>10.3f}"
                    f"  {last['mlflow'] / last['none']:>8.3f}",
                    flush=True,
                )

    def ratio(a: str, b: str) -> tuple[float, float]:
        values = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        return statistics.median(values), statistics.pstdev(values)

    new_before, spread_nb = ratio("mlflow", "mlflow-before")
    new_none, spread_nn = ratio("mlflow", "none")
    before_none, _ = ratio("mlflow-before", "none")
    for name, value, spread in (
        ("logging now / before (inputs + system metrics)", new_before, spread_nb),
        ("MLflow on / off", new_none, spread_nn),
    ):
        ok = value >= FIT_GOAL
        print(
            f"{name}: median of per-round ratios {value:.3f} (spread {spread:.3f}); "
            f"goal >= {FIT_GOAL}: {'OK' if ok else 'MISSED'}"
        )
    print(f"metrics only (as before) / off: {before_none:.3f}")
    note = f"{rounds} rounds of {epochs} epochs; system metrics every {interval_s:g} s"
    record(
        "logging_overhead",
        "fit loop img/s, logging now (inputs + system metrics) / logging before",
        new_before,
        goal=f">= {FIT_GOAL}",
        passed=new_before >= FIT_GOAL,
        note=f"{note}; spread {spread_nb:.3f}",
    )
    record(
        "logging_overhead",
        "fit loop img/s, logger=mlflow / logger=none",
        new_none,
        goal=f">= {FIT_GOAL}",
        passed=new_none >= FIT_GOAL,
        note=f"{note}; spread {spread_nn:.3f}",
    )
    inputs_ms = statistics.median(inputs) * 1000
    print(f"dataset inputs (digest of 3 splits + one log_inputs), once per run: {inputs_ms:.1f} ms")
    record("logging_overhead", "dataset inputs, once per run (ms)", f"{inputs_ms:.1f}")
    return {"new_before": new_before, "new_none": new_none, "inputs_ms": inputs_ms}


def time_model_logging(repeats: int) -> tuple[float, float]:
    """Seconds to log the default run's model (resnet18, 32x32): plain, and registered."""
    cfg = compose_default("paths.run_dir=unused")
    net = instantiate(cfg.model)(num_classes=10)
    augment = instantiate(cfg.aug, num_classes=10)
    best = BestCheckpoint(
        model=net.state_dict(),
        config="{}",
        class_names=[str(i) for i in range(10)],
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        image_size=32,
    )

    parts = SimpleNamespace(eval_model=net, augment=augment)  # what exported_classifier reads
    seconds: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config_resolved.yaml"
        config.write_text("{}\n")
        for index in range(repeats):
            for register in (False, True):
                tracker = MlflowTracker(
                    f"sqlite:///{tmp}/mlflow.db",
                    artifact_location=f"{tmp}/art",
                    system_metrics=False,
                    registered_model_name="bench" if register else None,
                )
                tracker.connect("bench")
                tracker.start(f"r{index}", tags={})
                started = time.perf_counter()
                wrapper, example = exported_classifier(parts, best)
                model_id = tracker.log_model(wrapper, example, {"image_size": 32}, [config])
                tracker.register_model(model_id)  # after the test, in a run
                seconds[register].append(time.perf_counter() - started)
                assert model_id is not None, "the model was not logged"
                tracker.finish("FINISHED")
    plain, registered = (statistics.median(seconds[r]) for r in (False, True))
    return plain, registered


def main() -> None:
    """Measures every side and prints the shares of an epoch that logging takes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3 if quick() else 6, help="fit rounds")
    parser.add_argument("--fit-epochs", type=int, default=1 if quick() else 2, help="epochs a fit")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of logging to time")
    parser.add_argument("--steps", type=int, default=8, help="training steps to time")
    parser.add_argument("--steps-per-epoch", type=int, default=9, help="digits: 1259 // 128")
    parser.add_argument("--interval", type=float, default=1.0, help="system metrics, s")
    parser.add_argument("--model-repeats", type=int, default=2, help="model logging repeats")
    args = parser.parse_args()
    compare_fit(args.rounds, args.fit_epochs, args.interval)
    print()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log_ms = statistics.median(time_logging(args.epochs)) * 1000
    sample_s, samples = time_system_metrics(seconds=5.0, interval_s=0.25)
    step_ms = statistics.median(time_steps(args.steps, device)) * 1000
    epoch_ms = step_ms * args.steps_per_epoch
    print(f"device: {device}; store: SQLite; torch {torch.__version__}")
    print(f"training step (resnet18, batch 128, 32x32): {step_ms:.1f} ms (median)")
    print(f"epoch of {args.steps_per_epoch} steps: {epoch_ms:.0f} ms")
    print(f"logging per epoch ({len(EPOCH_METRICS)} metrics, one log_batch): {log_ms:.2f} ms")
    print(f"system metrics: {sample_s * 1000:.2f} ms CPU per sample ({samples} samples timed)")
    before = log_ms / epoch_ms
    shares = {}
    for interval in (DEFAULT_INTERVAL_S, args.interval):
        sampler_ms = sample_s * 1000 * epoch_ms / (interval * 1000)  # samples in one epoch
        shares[interval] = (log_ms + sampler_ms) / epoch_ms
        print(
            f"per-epoch logging share, system metrics every {interval:g} s: "
            f"{100 * shares[interval]:.3f}% (before: {100 * before:.3f}%; goal <= 1%)"
        )
    record(
        "logging_overhead",
        "per-epoch logging share of a default epoch (log_batch + system metrics every 10 s)",
        f"{shares[DEFAULT_INTERVAL_S]:.3%}",
        goal="<= 1%",
        passed=shares[DEFAULT_INTERVAL_S] <= 0.01,
        note=(
            f"before (log_batch only) {before:.3%}; {log_ms:.2f} ms log_batch, "
            f"{sample_s * 1000:.2f} ms CPU per system-metrics sample; every "
            f"{args.interval:g} s: {shares[args.interval]:.3%}"
        ),
    )
    print()
    plain, registered = time_model_logging(args.model_repeats)
    print(
        f"end-of-run model logging (resnet18, 32x32, pt2 export + signature + input example, "
        f"SQLite): {plain:.2f} s; with a registered version: {registered:.2f} s"
    )
    record("logging_overhead", "end-of-run model logging, resnet18 (s)", plain)
    record("logging_overhead", "end-of-run model logging + registry version (s)", registered)


if __name__ == "__main__":
    main()
