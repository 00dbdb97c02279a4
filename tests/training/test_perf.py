"""Performance guards: lean imports, the start-up report, throughput mode, no host syncs on CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runner.training import startup_clock
from tests.conftest import REPO

# Builds the run exactly as runner.train.run does up to its first training step (minus
# the preview grid, a plot), then prints which of the named modules were imported.
BUILD_DEFAULT_RUN = """
import json, sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from runner.config.validation import validate
from runner.data.build import build_data, build_loaders
from runner.tracking.run_record import start_run
from runner.training.context import resolve_device
from runner.training.parts import build_parts

out, logger, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
with initialize_config_dir(config_dir=str(Path.cwd() / "conf"), version_base="1.3"):
    cfg = compose("train", overrides=[f"paths.output_dir={out}", f"paths.run_dir={out}/run",
                                      f"logger={logger}"])
validate(cfg)
device = resolve_device(cfg.trainer.device)
tracker = instantiate(cfg.logger)
tracker.connect(experiment_name=cfg.data.name)
data = build_data(cfg.data)
augment = instantiate(cfg.aug, num_classes=data.num_classes).to(device)
loaders = build_loaders(data, cfg.sampler, cfg.trainer, cfg.seed, device)
parts = build_parts(cfg, data, augment, device, "32", len(loaders[0]))
run_dir = Path(cfg.paths.run_dir)
run_dir.mkdir(parents=True)
start_run(tracker, cfg, run_dir, device=str(device), run_name="run", tags={}, params={})
tracker.finish("FINISHED")
print(json.dumps({name: name in sys.modules for name in names}))
"""
# Heavy modules the default run (timm model, no sweep, no plot yet) must not import.
# torchvision itself is imported by timm (and torchvision's __init__ imports its
# models), so it cannot be on this list while the model comes from timm.
FORBIDDEN = ("optuna", "matplotlib", "torchmetrics", "scipy.signal", "datasets", "submitit")
USED = ("torch", "timm", "kornia", "mlflow")


@pytest.mark.slow
def test_a_default_run_imports_nothing_heavy_it_does_not_use(tmp_path):
    """The default run (timm resnet10t, MLflow), built in a fresh process."""
    names = ",".join((*FORBIDDEN, *USED))
    done = subprocess.run(
        [sys.executable, "-c", BUILD_DEFAULT_RUN, str(tmp_path), "mlflow", names],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(loaded[name] for name in USED), loaded
    assert not [name for name in FORBIDDEN if loaded[name]], loaded


def test_startup_clock_splits_time_into_phases(tmp_path, monkeypatch):
    """begin_run/phase/finish: phases add up; startup.json as an artifact, one startup_s."""
    clock = startup_clock.StartupClock()
    monkeypatch.setattr(startup_clock, "CLOCK", clock)
    clock.job_start()

    def build() -> int:
        with startup_clock.phase("data"):
            return sum(range(10_000))

    class Tracker:
        def __init__(self):
            self.logged = {}

        def log_metrics(self, metrics, step):
            self.logged.update(metrics)

        def log_artifact(self, path, artifact_path=None):
            self.logged[Path(path).name] = Path(path).read_text()

    startup_clock.begin_run()
    assert build() == sum(range(10_000))
    build()
    tracker = Tracker()
    report = startup_clock.finish(tmp_path, tracker)
    assert json.loads((tmp_path / "startup.json").read_text()) == report
    assert set(report) >= {"data_s", "other_s", "compose_s", "imports_s"}
    assert report["data_s"] > 0 and all(v >= 0 for v in report.values())
    if sys.platform == "linux":
        assert report["total_s"] >= report["data_s"] + report["other_s"]
    # The phases go to startup.json (an artifact); the metrics page gets the total only.
    assert json.loads(tracker.logged["startup.json"]) == report
    assert set(tracker.logged) == {"startup.json", "startup_s"}
    assert tracker.logged["startup_s"] == report.get("total_s", sum(report.values()))
    # A second run in the same process reports its own phases only.
    startup_clock.begin_run()
    build()
    second = startup_clock.finish(tmp_path, tracker)
    assert set(second) == {"data_s", "other_s"}


def test_process_age_is_plausible():
    """The process started before now and after the test session did (Linux /proc)."""
    age = startup_clock.process_age_s()
    if sys.platform != "linux":
        assert age is None or age >= 0
        return
    assert age is not None and 0 < age < 24 * 3600


def test_no_host_sync_per_step_with_clipping_accumulation_and_ema(make_cfg, monkeypatch):
    """tests/training/test_engine.py counts host reads for every aug preset and MixUp/CutMix
    under the default NaN guard; this adds the remaining step options: gradient clipping,
    accumulation and EMA. Reads come only at logging intervals and the epoch's end."""
    from timm.utils import ModelEmaV3

    from runner.training import engine
    from tests.training.test_engine import MIX, setup_loop

    kwargs = setup_loop(make_cfg, aug="basic", batches=20, aug_overrides=MIX)
    calls = []
    for name in ("item", "cpu", "tolist"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kw):
            calls.append((_name, sys._getframe(1).f_code.co_filename))
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)
    done = engine.train_one_epoch(
        **kwargs,
        log_every_n_steps=10,
        on_log=lambda *args: None,
        gradient_clip_val=1.0,
        accumulate_grad_batches=2,
        ema=ModelEmaV3(kwargs["model"], decay=0.9),
    )
    assert done.batches == 20 and done.finished
    # torch.optim reads its host-side step counter; not a device sync.
    outside_optim = [c for c in calls if f"torch{os.sep}optim{os.sep}" not in c[1]]
    assert len(outside_optim) == 3, outside_optim  # 2 logging intervals + the epoch's end


@pytest.mark.gpu
def test_no_host_sync_in_steady_state_steps_on_cuda(make_cfg):
    """Steady-state training steps on CUDA under torch.cuda.set_sync_debug_mode("error").

    The loop reads the host only at logging intervals and at the epoch's end; the loader
    turns the check on after two warm-up batches and off after the last batch's step.
    Runs with aug=none and aug=basic (Kornia ops that read back to the host are listed in
    tests/training/test_engine.py), MixUp/CutMix on, default NaN guard, clipping and EMA.
    """
    from timm.utils import ModelEmaV3

    from runner.training import engine
    from tests.training.test_engine import MIX, setup_loop

    device = torch.device("cuda")
    for aug, overrides in (("none", MIX), ("basic", ())):
        kwargs = setup_loop(make_cfg, aug=aug, batches=12, aug_overrides=overrides)
        kwargs["model"] = kwargs["model"].to(device)
        kwargs["augment"] = kwargs["augment"].to(device)
        kwargs["normalize"] = kwargs["normalize"].to(device)
        kwargs["device"] = device
        loader = kwargs.pop("loader")
        loader.split = loader.split.to(device)
        kwargs["loader"] = _SyncChecked(loader, warmup=2)
        engine.train_one_epoch(
            **kwargs,
            log_every_n_steps=10_000,
            gradient_clip_val=1.0,
            ema=ModelEmaV3(kwargs["model"], decay=0.9),
        )
        assert kwargs["loader"].checked == 10


class _SyncChecked:
    """Yields the loader's batches; from batch `warmup` on, a host sync raises."""

    def __init__(self, loader, warmup: int):
        self.loader, self.warmup, self.checked = loader, warmup, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            for index, batch in enumerate(self.loader):
                if index == self.warmup:
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                if index >= self.warmup:
                    self.checked += 1
                yield batch
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_throughput_experiment_prints_a_table(make_cfg, capsys, tmp_path):
    """experiment=throughput on CPU with tiny settings: one row per model and batch size."""
    from runner.cli import run

    cfg = make_cfg(
        "experiment=throughput",
        "throughput.models=[resnet10t]",
        "throughput.batch_sizes=[4,8]",
        "throughput.warmup_steps=1",
        "throughput.steps=2",
        "data.image_size=32",
        tiny=False,
    )
    best = run(cfg)
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("resnet10t")]
    assert [row[1] for row in rows] == ["4", "8"], out
    assert best == pytest.approx(max(float(row[2]) for row in rows), abs=0.06) and best > 0
    results = json.loads((tmp_path / "run" / "throughput.json").read_text())
    assert [r["batch_size"] for r in results] == [4, 8] and results[0]["model"] == "resnet10t"
    assert cfg.logger._target_.endswith("NullTracker")  # no tracking in throughput mode


def test_throughput_settings_are_validated(make_cfg):
    """A bad model list or batch size is named with the fix."""
    from runner.config.validation import ConfigError, validate

    cfg = make_cfg(
        "experiment=throughput", "throughput.batch_sizes=[0,8]", "throughput.models=[]", tiny=False
    )
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "throughput.batch_sizes=[0, 8] is invalid" in str(err.value)
    assert "throughput.models=[] is invalid" in str(err.value)
