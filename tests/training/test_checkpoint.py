"""Atomic, weights-only checkpoints and the background writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from runner.training.checkpoint_io import (
    AsyncCheckpointWriter,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)


class NotATensor:
    """A pickled object that weights-only loading must refuse."""


def test_round_trip_with_weights_only(tmp_path):
    state = {"w": torch.arange(4.0), "epoch": 3, "names": ["a", "b"], "rng": (1, (2, 3), None)}
    save_checkpoint(state, tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["w"], state["w"]) and loaded["epoch"] == 3
    assert loaded["rng"] == (1, (2, 3), None)


def test_pickled_objects_are_refused_with_the_file_named(tmp_path):
    torch.save({"obj": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt.*pickled objects"):
        load_checkpoint(tmp_path / "evil.pt")


def test_truncated_file_is_reported(tmp_path):
    save_checkpoint({"w": torch.randn(1000)}, tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"c\.pt"):
        load_checkpoint(tmp_path / "c.pt")


def test_failed_write_keeps_the_previous_file_and_no_temp(tmp_path):
    save_checkpoint({"w": torch.ones(3)}, tmp_path / "c.pt")
    with pytest.raises(Exception):  # noqa: B017  (any pickling error will do)
        save_checkpoint({"w": torch.zeros(3), "bad": lambda: None}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_async_writer_saves_a_snapshot_not_the_live_tensor(tmp_path):
    weights = torch.zeros(1_000_000)
    writer = AsyncCheckpointWriter()
    writer.submit({tmp_path / "a.pt": {"w": weights}, tmp_path / "b.pt": {"w": weights}})
    weights.add_(1)  # training goes on at once
    writer.wait()
    assert load_checkpoint(tmp_path / "a.pt")["w"].sum() == 0
    assert load_checkpoint(tmp_path / "b.pt")["w"].sum() == 0


def test_async_writer_reports_a_failed_write(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    writer = AsyncCheckpointWriter()
    writer.submit({blocker / "c.pt": {"w": torch.ones(1)}})
    with pytest.raises(CheckpointError, match="writing a checkpoint failed"):
        writer.wait()


@pytest.mark.slow
def test_a_run_resumed_from_another_dirs_last_pt_takes_its_best_pt_along(tmp_path, caplog):
    """The resumed state keeps that run's best value: with no epoch left to beat it, the
    new run dir would have no best.pt to test. It is copied at the start; a best.pt that
    is not beside last.pt is refused before anything trains."""
    import json

    from runner.cli import run
    from runner.config.errors import ConfigError
    from tests.conftest import compose_run

    run(compose_run(tmp_path, "first", "logger=none"))
    last = tmp_path / "first" / "checkpoints" / "last.pt"
    with caplog.at_level("INFO", logger="runner"):
        run(compose_run(tmp_path, "second", "logger=none", f"trainer.resume={last}"))
    # A finished last.pt: it went straight to the test without a word.
    assert "nothing to train: the checkpoint this run resumed finished its 1 epoch(s)" in (
        caplog.text
    )
    second = tmp_path / "second"
    assert (second / "checkpoints" / "best.pt").read_bytes() == (
        tmp_path / "first" / "checkpoints" / "best.pt"
    ).read_bytes()
    tested = json.loads((second / "metrics.json").read_text())
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert tested["test/acc"] == pytest.approx(first["test/acc"])

    (tmp_path / "first" / "checkpoints" / "best.pt").unlink()
    with pytest.raises(ConfigError, match=r"trainer\.resume=.*best\.pt does not exist"):
        run(compose_run(tmp_path, "third", "logger=none", f"trainer.resume={last}"))
    assert not (tmp_path / "third" / "checkpoints" / "last.pt").exists()


@pytest.mark.slow
def test_a_run_resumed_from_a_path_is_its_own_run_and_goes_on_from_its_own_last_pt(
    tmp_path, caplog
):
    """It reopened the source's MLflow run (its record overwritten), and running it again
    (the printed "continue it with" command, a requeue) restarted from the path each time."""
    import logging

    from runner.cli import run
    from runner.config.errors import ConfigError
    from tests.conftest import compose_run, query

    run(compose_run(tmp_path, "first"))
    last = tmp_path / "first" / "checkpoints" / "last.pt"
    run(compose_run(tmp_path, "second", f"trainer.resume={last}", "trainer.max_epochs=2"))
    db = tmp_path / "outputs" / "mlflow.db"
    assert len(query(db, "SELECT run_uuid FROM runs")) == 2, "a run of its own"
    own = tmp_path / "second" / "checkpoints" / "last.pt"
    with caplog.at_level(logging.INFO, logger="runner"):
        run(compose_run(tmp_path, "second", f"trainer.resume={last}", "trainer.max_epochs=3"))
    assert f"resumed from {own}: epoch 2 done" in caplog.text
    assert f"trainer.resume={last}: this run dir has a last.pt of its own" in caplog.text
    assert "trainer.max_epochs 2 -> 3 on resume: the lr schedule is rebuilt" in caplog.text
    assert len(query(db, "SELECT run_uuid FROM runs")) == 2, "the second run, continued"
    # Its param keeps its start's value (MLflow never changes one); a tag says what it ran.
    ((changed,),) = query(db, "SELECT value FROM tags WHERE key = 'resumed.trainer.max_epochs'")
    assert changed == "2 -> 3"
    best = tmp_path / "first" / "checkpoints" / "best.pt"
    with pytest.raises(ConfigError, match=r"is not a last\.pt .*a best\.pt has weights only"):
        run(compose_run(tmp_path, "third", f"trainer.resume={best}"))
    # Its optimizer and schedule would override these: the lr was ignored, SGD crashed.
    for changed in (("optim.lr=1e-6",), ("optim=sgd",)):
        with pytest.raises(ConfigError, match=r"continues a run of another config") as info:
            run(compose_run(tmp_path, "fourth", f"trainer.resume={last}", *changed))
        assert changed[0].partition("=")[0] in str(info.value)
        assert not (tmp_path / "fourth" / "checkpoints").exists()


@pytest.mark.slow
def test_a_resume_without_its_config_file_compares_with_best_pts_and_a_moved_dir_resumes(
    tmp_path,
):
    """Without the run dir's config_resolved.yaml the check was skipped: a last.pt copied
    alone resumed under optim=sgd and failed at its first step (KeyError: 'momentum'),
    and a changed lr was taken in place. A copied run dir was refused for its new
    paths.run_dir, with trainer.resume=never (which drops the progress) as the way out."""
    import json
    import shutil

    from runner.cli import run
    from runner.config.errors import ConfigError
    from tests.conftest import compose_run

    run(compose_run(tmp_path, "first", "logger=none"))
    checkpoints = tmp_path / "first" / "checkpoints"
    lone = tmp_path / "copies" / "lone"
    lone.mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        shutil.copy(checkpoints / name, lone / name)
    with pytest.raises(ConfigError, match=r"continues a run of another config") as info:
        run(
            compose_run(
                tmp_path, "second", "logger=none", f"trainer.resume={lone}/last.pt", "optim=sgd"
            )
        )
    assert f"({lone}/best.pt)" in str(info.value) and "optim._target_" in str(info.value)
    (lone / "best.pt").unlink()
    with pytest.raises(ConfigError, match=r"cannot check that this command's config is the one"):
        run(compose_run(tmp_path, "second", "logger=none", f"trainer.resume={lone}/last.pt"))
    assert not (tmp_path / "second" / "checkpoints").exists()

    shutil.copytree(tmp_path / "first", tmp_path / "moved")
    run(compose_run(tmp_path, "moved", "logger=none", "trainer.max_epochs=2"))  # goes on
    assert json.loads((tmp_path / "moved" / "metrics.json").read_text())["epochs"] == 2
    (tmp_path / "moved" / "config_resolved.yaml").unlink()
    with pytest.raises(ConfigError, match=r"holds checkpoints of a run with another config"):
        run(compose_run(tmp_path, "moved", "logger=none", "trainer.max_epochs=3", "optim.lr=0.1"))
    # trainer.resume=never sets the checkpoints aside with their config: a resume of the
    # set-aside last.pt was compared with the newer run's config two folders up.
    run(compose_run(tmp_path, "first", "logger=none", "trainer.resume=never", "optim.lr=0.01"))
    (aside,) = (tmp_path / "first").glob("checkpoints.replaced-*")
    resumed = ("logger=none", f"trainer.resume={aside}/last.pt", "trainer.max_epochs=2")
    run(compose_run(tmp_path, "from_aside", *resumed))
    assert json.loads((tmp_path / "from_aside" / "metrics.json").read_text())["epochs"] == 2


def test_a_run_written_before_a_key_was_added_resumes_with_that_keys_old_behaviour(tmp_path):
    """A key added to conf/ (optim.norm_lr_mult, ...) made every run dir written before it
    hold "another config": a job requeued across the upgrade was refused."""
    from omegaconf import OmegaConf

    from runner.cli import run
    from runner.config.errors import ConfigError
    from tests.conftest import compose_run

    run(compose_run(tmp_path, "run"))
    saved = tmp_path / "run" / "config_resolved.yaml"
    config = OmegaConf.load(saved)
    # As a run dir written before these keys were added has it.
    for key in ("optim.norm_lr_mult", "optim.filter_bias_and_bn", "logger.delivery_timeout_s"):
        parent, _, leaf = key.rpartition(".")
        del OmegaConf.select(config, parent)[leaf]
    OmegaConf.save(config, saved)
    with pytest.raises(ConfigError, match=r"optim\.norm_lr_mult: '\(absent\)' -> 2\n"):
        run(compose_run(tmp_path, "run", "trainer.max_epochs=2", "optim.norm_lr_mult=2"))
    run(compose_run(tmp_path, "run", "trainer.max_epochs=2"))
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["state"]["epoch"] == 2


def small_parts(total_steps: int, ema_decay: float | None = None, seed: int = 0):
    """A linear model's training parts with a cosine schedule over `total_steps`."""
    from runner.augment.normalize import Normalize
    from runner.training.optim import cosine_schedule
    from runner.training.parts import TrainingParts, build_ema

    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return TrainingParts(
        model=model,
        augment=torch.nn.Identity(),
        normalize=Normalize((0.5,), (0.5,)),
        loss_fn=torch.nn.CrossEntropyLoss(),
        optimizer=optimizer,
        scheduler=cosine_schedule(optimizer, total_steps, steps_per_epoch=2, warmup_epochs=1),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        ema=build_ema(model, ema_decay),
    )


def tiny_data(ids: tuple[str, ...] = ("a", "b", "c")):
    """Splits of three one-pixel images with these train ids."""
    from runner.data.splits import DataSplits, Split

    def split(names):
        return Split(
            torch.zeros(len(names), 1, 1, 1, dtype=torch.uint8),
            torch.zeros(len(names), dtype=torch.int64),
            np.array(names),
        )

    return DataSplits("tiny", split(ids), split(["v"]), split(["t"]), ["x"], (0.0,) * 3, (1.0,) * 3)


def saved_after_steps(run_dir, parts, steps: int) -> None:
    """`steps` optimizer steps, then last.pt in the run dir as the loop writes it."""
    from runner.training.state import TrainState, last_payload

    for _ in range(steps):
        parts.model(torch.randn(2, 4)).sum().backward()
        parts.optimizer.step()
        parts.scheduler.step()
    state = TrainState(epoch=steps // 2, global_step=steps)
    save_checkpoint(last_payload(state, parts), run_dir / "checkpoints" / "last.pt")


def test_a_resumed_run_takes_its_own_schedules_lr_and_starts_its_ema_from_the_weights(tmp_path):
    """With max_epochs raised, the first resumed step took the old schedule's last lr; and
    an EMA turned on at resume averaged from the new model's random init, not the weights."""
    from runner.training.state import resume_or_start

    saved_after_steps(tmp_path, small_parts(total_steps=6), steps=6)
    longer = small_parts(total_steps=12, ema_decay=0.99, seed=1)
    resume_or_start(tmp_path, "auto", longer, tiny_data(), seed=0)
    straight = small_parts(total_steps=12)
    for _ in range(6):
        straight.optimizer.step()
        straight.scheduler.step()
    assert longer.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    assert longer.optimizer.param_groups[0]["lr"] > 0.05  # mid-cosine, not the old end
    for name, value in longer.model.state_dict().items():
        assert torch.equal(longer.ema.module.state_dict()[name], value), name


def test_a_last_pt_of_another_model_is_refused_naming_the_key_and_its_tensors(tmp_path):
    """Without a config beside it, a last.pt of another model was refused with only
    "Error(s) in loading state_dict for ...:", naming neither the key nor a tensor."""
    from runner.config.errors import ConfigError
    from runner.training.state import TrainState, last_payload, resume_or_start

    other = small_parts(total_steps=6)
    other.model = torch.nn.Linear(4, 5)  # another class count
    alone = tmp_path / "alone" / "last.pt"
    save_checkpoint(last_payload(TrainState(epoch=1, global_step=2), other), alone)
    with pytest.raises(ConfigError, match=rf"trainer\.resume={alone}: .* does not fit") as err:
        resume_or_start(tmp_path / "new", str(alone), small_parts(6), tiny_data(), seed=0)
    assert "size mismatch for weight" in str(err.value)


def test_a_checkpoint_resumes_only_on_the_data_it_was_trained_on(tmp_path):
    """An image folder with files added since reshuffles its carved splits under the same
    config; the resumed run went on with other samples at the same positions."""
    from runner.config.errors import ConfigError
    from runner.training.state import last_payload, resume_or_start

    parts = small_parts(total_steps=6)
    state = resume_or_start(tmp_path, "auto", parts, tiny_data(), seed=0)  # a fresh start
    save_checkpoint(last_payload(state, parts), tmp_path / "checkpoints" / "last.pt")
    again = resume_or_start(tmp_path, "auto", small_parts(total_steps=6), tiny_data(), seed=0)
    assert again.data_digest == state.data_digest
    for changed in (tiny_data(("a", "b", "d")), tiny_data(("b", "a", "c"))):
        with pytest.raises(ConfigError, match="was trained on other data"):
            resume_or_start(tmp_path, "auto", small_parts(total_steps=6), changed, seed=0)


def test_a_file_that_is_no_checkpoint_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    """torch's error went on into how to load the file with weights_only=False, which
    runs whatever the file holds: no fix for random bytes, and a risk for a foreign file."""
    junk = tmp_path / "best.pt"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(junk)
    assert "(UnpicklingError: Weights only load failed)" in str(err.value)
    assert "weights_only" not in str(err.value).replace("Weights only", "")
    assert "truncated, not a checkpoint, or carries pickled objects" in str(err.value)


def test_the_system_metrics_settings_may_change_on_resume(make_cfg):
    """logger.system_metrics=false on a resume was refused as "another config": it changes
    what is sampled from then on, not what was trained."""
    from omegaconf import OmegaConf

    from runner.config.errors import ConfigError
    from runner.training.resume_checks import check_resume

    cfg = make_cfg()
    run_dir = Path(cfg.paths.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    check_resume(run_dir, make_cfg("logger.system_metrics=false"))
    check_resume(run_dir, make_cfg("logger.system_metrics_interval_s=1"))
    with pytest.raises(ConfigError, match=r"another config"):
        check_resume(run_dir, make_cfg("optim.lr=0.5"))


def test_data_on_bad_file_may_change_on_resume(make_cfg):
    """A streamed run with data.on_bad_file=error that met a bad test file failed after
    training; the fix its error named, data.on_bad_file=skip, was then refused as "another
    config". A train file skipped now that was not before changes the train ids, which the
    resume refuses on its own."""
    from omegaconf import OmegaConf

    from runner.training.resume_checks import check_resume

    folder = ("data=imagefolder", "data.root=/data/leaves")
    cfg = make_cfg(*folder, "data.on_bad_file=error", tiny=False)
    run_dir = Path(cfg.paths.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    check_resume(run_dir, make_cfg(*folder, "data.on_bad_file=skip", tiny=False))


def test_starting_over_sets_aside_the_files_the_earlier_run_wrote_under_its_settings(tmp_path):
    """trainer.resume=never moved the checkpoints, metrics.json and config_resolved.yaml:
    the earlier run's label_noise.csv stayed beside a config without label noise."""
    from runner.training.state import RUN_RECORDS, set_aside_checkpoints

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"weights")
    for name in RUN_RECORDS:
        (tmp_path / name).write_text(name)
    (tmp_path / "data.exclude.csv").write_text("sample_id\n")  # this run may read it
    aside = set_aside_checkpoints(tmp_path)
    assert aside is not None and (aside / "last.pt").read_bytes() == b"weights"
    assert {"label_noise.csv", "bad_files.txt", "per_class.csv"} <= set(RUN_RECORDS)
    assert all((aside / name).read_text() == name for name in RUN_RECORDS)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([aside.name, "data.exclude.csv"])
