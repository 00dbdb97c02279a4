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

# Runs the real `run.py` up to its first training step: the probe stands in for the
# training loop's epoch function (the first step is its first batch) and the clock's end,
# then prints what start-up left behind and ends the process.
PROBE_FIRST_STEP = """
import json, sys, runpy
import runner.training.engine as engine
import runner.training.startup_clock as startup_clock

names, at_finish, real_finish = sys.argv[1].split(","), {}, startup_clock.finish

def finish(*args, **kwargs):
    at_finish["modules"] = set(sys.modules)
    return real_finish(*args, **kwargs)

def first_epoch(*args, **kwargs):
    new = sorted(set(sys.modules) - at_finish.get("modules", set(sys.modules)))
    print(json.dumps({"clock_ended": "modules" in at_finish, "imported_after_clock": new,
                      "loaded": {name: name in sys.modules for name in names}}), flush=True)
    raise SystemExit(0)

startup_clock.finish, engine.train_one_epoch = finish, first_epoch
sys.argv = ["run.py", *sys.argv[2:]]
runpy.run_path("run.py", run_name="__main__")
"""
# Heavy modules the default run (timm model, no sweep, no plot yet) must not import
# before its first step. torchvision itself is imported by timm (and torchvision's
# __init__ imports its models), so it cannot be on this list while the model comes from
# timm. torchmetrics is needed at the first validation, not before.
FORBIDDEN = ("optuna", "matplotlib", "torchmetrics", "scipy.signal", "datasets", "submitit")
USED = ("torch", "timm", "kornia")


@pytest.mark.slow
def test_the_default_run_reaches_its_first_step_with_nothing_heavy_it_does_not_use(tmp_path):
    """The real default run (digits, timm resnet10t, no tracking), stopped at its first step.

    The start-up clock ends when the first step is next: nothing is imported after it.
    """
    names = ",".join((*FORBIDDEN, *USED))
    overrides = [f"paths.output_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run", "logger=none"]
    done = subprocess.run(
        [sys.executable, "-c", PROBE_FIRST_STEP, names, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(next(x for x in done.stdout.splitlines() if x.startswith('{"clock')))
    assert found["clock_ended"] and (tmp_path / "run" / "startup.json").is_file(), found
    assert found["imported_after_clock"] == [], found["imported_after_clock"]
    loaded = found["loaded"]
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
    kwargs["parts"].ema = ModelEmaV3(kwargs["model"], decay=0.9)
    done = engine.train_one_epoch(
        **kwargs,
        settings=engine.StepSettings(
            log_every_n_steps=10, gradient_clip_val=1.0, accumulate_grad_batches=2
        ),
        on_log=lambda *args: None,
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
        parts = kwargs["parts"]
        parts.augment = parts.augment.to(device)
        parts.normalize = parts.normalize.to(device)
        parts.ema = ModelEmaV3(kwargs["model"], decay=0.9)
        kwargs["device"] = device
        loader = kwargs.pop("loader")
        loader.split = loader.split.to(device)
        kwargs["loader"] = _SyncChecked(loader, warmup=2)
        engine.train_one_epoch(
            **kwargs,
            settings=engine.StepSettings(log_every_n_steps=10_000, gradient_clip_val=1.0),
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
        "throughput.models=[resnet10t,inception_v3,vit_tiny_patch16_224]",
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
    results = json.loads((tmp_path / "run" / "throughput.json").read_text())
    measured = [r["img_s"] for r in results if r["img_s"]]
    assert best == pytest.approx(max(measured)) and best > 0  # the fastest of every model
    shown = [float(row[2]) for row in rows]
    assert shown == pytest.approx([r["img_s"] for r in results[:2]], abs=0.06)
    assert [r["batch_size"] for r in results] == [4, 8] * 3 and results[0]["model"] == "resnet10t"
    # Inception needs larger images: its rows say why, and the models after it still run.
    failed = [r for r in results if r["model"] == "inception_v3"]
    assert all(r["img_s"] is None and "Kernel size" in r["error"] for r in failed)
    # A ViT at 32 px, built for that size as in training (it crashed the whole table).
    assert all(r["img_s"] > 0 for r in results if r["model"] == "vit_tiny_patch16_224")
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


def test_what_the_config_check_imports_while_hydra_composes_counts_as_imports(monkeypatch):
    """The check reads the targets' signatures, so the training stack's import moved into
    composition: 1.1 s of compose_s that the start-up figure wrongly counted."""
    from runner.config import group_keys
    from runner.training.startup_clock import StartupClock

    clock = StartupClock()
    clock.runner_imported -= 3.0  # composition took 3 s ...
    monkeypatch.setattr(group_keys, "_import_seconds", 2.0)  # ... 2 of them importing targets
    clock.job_start()
    clock.begin_run()
    report = clock.finish()
    assert report["compose_s"] == pytest.approx(1.0, abs=0.05)
    assert report["imports_s"] == pytest.approx(2.0, abs=0.05)
