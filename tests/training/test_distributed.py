"""DDP set-up from torchrun/SLURM variables, lr scaling, the ranks' stop agreement, and
what each rank keeps and writes (RNG states, world size on resume, resume command,
profile, traceback)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from runner.training import distributed, rank_sync
from runner.training.signals import GracefulStop, TrainingInterrupted
from tests.conftest import REPO, TINY, for_logger, free_port


def test_detect_reads_torchrun_then_slurm_variables(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.detect() == distributed.World()
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    world = distributed.detect()
    assert (world.rank, world.local_rank, world.world_size, world.launcher) == (3, 1, 4, "slurm")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = distributed.detect()  # torchrun inside a SLURM allocation: torchrun's numbers
    assert (world.rank, world.world_size, world.launcher) == (1, 2, "torchrun")
    assert not world.is_main


def test_a_single_task_or_a_batch_script_is_not_distributed(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert not distributed.detect().distributed
    # The batch script of a 2-task job (no srun step): one process, not rank 0 of 2.
    monkeypatch.delenv("SLURM_STEP_ID")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert not distributed.detect().distributed


def test_a_sweep_or_another_mode_than_train_started_as_several_processes_is_refused(
    monkeypatch, make_cfg
):
    """Under torchrun, `-m` ran the whole sweep in each process (two parent runs; an
    Optuna study drew a trial per process and trained one model with both settings),
    and mode=eval made one MLflow eval run per process in one run dir."""
    from hydra import compose, initialize_config_dir

    from runner.config.callback import ValidateConfigCallback
    from runner.config.validation import ConfigError, validate
    from tests.conftest import CONF

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for mode in ("eval", "predict", "preview"):
        with pytest.raises(ConfigError) as refused:
            validate(make_cfg(f"mode={mode}", "ckpt=best.pt", "predict.input=photos/"))
        assert f"mode={mode} runs in one process" in str(refused.value)
        assert "(torchrun --nproc_per_node=2)" in str(refused.value)
    validate(make_cfg())  # training is what DDP is for
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        sweep = compose("train", ["optim.lr=1e-3"], return_hydra_config=True)
    with pytest.raises(SystemExit, match=r"a -m sweep runs in one process.*tasks_per_node=N"):
        ValidateConfigCallback().on_multirun_start(sweep)
    monkeypatch.delenv("RANK")  # an srun task of two (SLURM_STEP_ID: not a batch script)
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    with pytest.raises(SystemExit, match=r"as 2 \(2 SLURM tasks\).*\(one task\)"):
        ValidateConfigCallback().on_multirun_start(sweep)


def test_first_node_of_a_slurm_nodelist():
    assert distributed.first_node("gpu[03-05,07],cpu1") == "gpu03"
    assert distributed.first_node("node7") == "node7"


def test_lr_scaling_rules():
    for rule, factor in (("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        assert distributed.scale_lr(optimizer, rule, world_size=4) == factor
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * factor)
    with pytest.raises(ValueError, match=r"trainer.lr_scaling='cubic'.*none, linear, sqrt"):
        distributed.scale_lr(optimizer, "cubic", world_size=4)


def test_a_resume_on_another_number_of_processes_takes_this_runs_scaled_lr():
    """The saved schedule's base lrs (scaled for 2 processes) came back on 1 process: the
    lr stayed doubled, while the run's tags said effective batch 64 on 1 process."""
    from torch.optim.lr_scheduler import LambdaLR

    from runner.training.optim import load_schedule

    def schedule(world_size):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        distributed.scale_lr(optimizer, "linear", world_size=world_size)
        return LambdaLR(optimizer, lambda step: 1.0 / (1 + step))

    two = schedule(2)
    for _ in range(3):
        two.optimizer.step()
        two.step()
    one = schedule(1)
    load_schedule(one, two.state_dict())
    assert one.last_epoch == 3
    assert one.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 4)
    one.optimizer.step()
    one.step()
    assert one.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 5)


def test_the_effective_batch_tag_counts_the_batches_and_samples_an_epoch_has():
    """With accumulate_grad_batches above an epoch's batches the window is cut at the
    epoch's end, and the tag multiplied by the accumulation asked for (4 x 32 x 2 = 256
    where each step summed 3 x 32 x 2 = 192 images); a batch larger than a process's
    epoch is one batch of the epoch (batch 200 on 130 samples a process: 260, not 400)."""
    from omegaconf import OmegaConf

    from runner.data.loaders import EpochBatches

    world = distributed.World(world_size=2, backend="gloo", launcher="torchrun")
    trainer = OmegaConf.create(
        {"batch_size": 32, "accumulate_grad_batches": 4, "lr_scaling": "none"}
    )
    for batches, effective in ((3, "192"), (9, "256")):
        assert distributed.tags(world, trainer, batches, 32)["effective_batch_size"] == effective
    share = EpochBatches(range(130), batch_size=200, drop_last=True)
    assert (share.batches_per_epoch(), share.full_batch()) == (1, 130)
    trainer.accumulate_grad_batches = 1
    assert distributed.tags(world, trainer, 1, share.full_batch())["effective_batch_size"] == "260"


def test_lr_scaling_is_validated_with_the_config(make_cfg):
    from runner.config.validation import ConfigError, validate

    with pytest.raises(ConfigError, match=r"trainer\.lr_scaling"):
        validate(make_cfg("trainer.lr_scaling=cubic"))


AGREEMENT = textwrap.dedent("""
    import os, signal, sys
    import torch.distributed as dist
    from runner.training import distributed, rank_sync
    from runner.training.signals import GracefulStop
    import torch
    world, _ = distributed.init(torch.device("cpu"))
    stop = GracefulStop(rank_sync.stop_agreement(world))
    calls = 0
    with stop:
        while not stop.requested():
            calls += 1
            if world.rank == 1 and calls == 5:
                os.kill(os.getpid(), signal.SIGUSR2)  # only rank 1 gets the signal
    rank_sync.end_training(world, stop._agree)
    print(f"rank {world.rank} stopped at call {calls} by {stop.signum}")
""")


def two_gloo_ranks(code: str, *args: str) -> list[str]:
    """Runs `python -c code args` as ranks 0 and 1 of a gloo group; each rank's output."""
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        )
        for rank in (0, 1)
    ]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    return outs


@pytest.mark.slow
def test_two_gloo_ranks_stop_at_the_same_step_when_one_gets_the_signal(tmp_path):
    outs = two_gloo_ranks(AGREEMENT)
    usr2 = int(signal.SIGUSR2)
    # The signal came during call 5; the agreement answers one call late: both stop at 6.
    assert f"rank 0 stopped at call 6 by {usr2}" in outs[0], outs[0]
    assert f"rank 1 stopped at call 6 by {usr2}" in outs[1], outs[1]


NAN_ON_ONE_RANK = textwrap.dedent("""
    import os, sys
    import torch
    from torch import nn
    from runner.training import distributed, engine, rank_sync

    world, device = distributed.init(torch.device("cpu"))

    class Loss(nn.Module):  # rank 1's second batch only has a non-finite loss
        calls = 0

        def forward(self, logits, targets):
            self.calls += 1
            loss = nn.functional.cross_entropy(logits, targets)
            return loss * float("nan") if world.rank == 1 and self.calls == 2 else loss

    class Parts:
        augment = type("Same", (nn.Module,), {"forward": lambda s, x: x.float(),
                                             "mix": lambda s, x, y: (x, y)})()
        normalize, loss_fn, ema = nn.Identity(), Loss(), None

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    Parts.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    Parts.scheduler = torch.optim.lr_scheduler.LambdaLR(Parts.optimizer, lambda step: 1.0)
    Parts.scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(world.rank)
    loader = [(torch.randint(0, 255, (4, 3, 2, 2), generator=generator, dtype=torch.uint8),
               torch.randint(0, 3, (4,), generator=generator)) for _ in range(4)]
    guard = engine.NanGuard(sys.argv[1], 10, finite_everywhere=rank_sync.finite_on_every_rank,
                            first_bad_anywhere=rank_sync.first_bad_on_any_rank)
    try:
        done = engine.train_one_epoch(model=distributed.wrap(model, device), loader=loader,
                                      parts=Parts, autocast=engine.make_autocast(device, "32"),
                                      device=device, nan_guard=guard)
    except engine.NonFiniteLossError as err:
        print(f"rank {world.rank} stopped: {err}")
    else:
        weights = rank_sync.gather(model[1].weight.detach())
        print(f"rank {world.rank}: {done.seen} images, {guard.skipped} skipped, "
              f"same weights: {torch.equal(weights[0], weights[1])}")
    # Ended without the interpreter's finalization: gloo's worker thread may still be
    # freeing the last collective's tensors, and a thread that takes the GIL then aborts
    # the process (exit -6, "terminate called without an active exception"; 5 and 6 of 30
    # runs here; pytorch/pytorch#190489). A run does much more after its last collective.
    sys.stdout.flush()
    os._exit(0)
""")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_non_finite_loss_on_one_rank_is_handled_alike_on_every_rank(tmp_path, policy):
    """With skip, rank 1 alone skipped the batch and its all-reduces fell out of step with
    rank 0's (gloo: "collective mismatch"); with stop, rank 1 alone stopped and rank 0
    failed on the lost peer, its traceback naming no non-finite loss."""
    outs = two_gloo_ranks(NAN_ON_ONE_RANK, policy)
    for rank, out in enumerate(outs):
        if policy == "skip":  # the batch skipped on both ranks: 3 of 4 batches of 4 images
            assert f"rank {rank}: 12 images, 1 skipped, same weights: True" in out, out
        else:
            assert f"rank {rank} stopped: non-finite loss at step 2" in out, out


def test_graceful_stop_without_agreement_is_unchanged():
    with GracefulStop() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested() and stop.signum == signal.SIGUSR2
    stop.hand_over()  # no SLURM, no earlier handler: nothing to hand over to


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR2])
def test_ctrl_c_after_any_stop_request_stops_at_once(first):
    with GracefulStop() as stop:
        os.kill(os.getpid(), first)
        assert stop.requested() and stop.signum == first
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode of the main thread


def test_after_training_a_signal_stops_at_once_and_an_earlier_one_at_the_switch():
    with GracefulStop() as stop:
        stop.at_once()
        with pytest.raises(TrainingInterrupted) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # after the training loop last looked
        with pytest.raises(TrainingInterrupted):
            stop.at_once()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def two_ranks(*arguments: str, logs: Path | None = None, timeout: float = 300) -> None:
    """Runs `torchrun --nproc_per_node=2 run.py ARGUMENTS`, one thread a rank, to its end
    (exit status 0); `logs`: each rank's output in a folder of its own there."""
    options = ["--redirects=3", f"--log-dir={logs}"] if logs is not None else []
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--nproc_per_node=2", *options, str(REPO / "run.py"), *arguments]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


@pytest.mark.slow
def test_two_torchrun_ranks_validate_the_same_weights_and_log_the_same_numbers(tmp_path):
    """Each rank's last training batch once left it its own BatchNorm statistics: the ranks
    validated different models (2.3127 against 2.3129 here), so their best-epoch and
    early-stopping decisions could part, and one rank waited forever for the other."""
    arguments = [
        *for_logger(TINY, ["logger=none"]),
        "logger=none",
        "trainer.max_epochs=2",
        "trainer.batch_size=16",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    two_ranks(*arguments, logs=tmp_path / "logs")
    logs = {
        int(path.parent.name): re.findall(r"val loss \d+\.\d+ acc \d+\.\d+", path.read_text())
        for path in (tmp_path / "logs").rglob("stdout.log")
    }
    assert sorted(logs) == [0, 1] and len(logs[0]) == 2, logs
    assert logs[0] == logs[1], logs
    # Both ranks wrote run.log, every epoch twice; rank 1 writes a file of its own.
    assert (tmp_path / "run" / "run.log").read_text().count("epoch 2/2") == 1
    assert "epoch 2/2" in (tmp_path / "run" / "run-rank1.log").read_text()
    # Starting over from its own best weights: rank 0 sets the checkpoints aside, and
    # rank 1 looked for the weights where they were ('no such file').
    own_best = tmp_path / "run" / "checkpoints" / "best.pt"
    again = [*arguments, "trainer.resume=never", f"model.pretrained_file={own_best}"]
    two_ranks(*again, logs=tmp_path / "logs")
    (aside,) = (tmp_path / "run").glob("checkpoints.replaced-*")
    assert (aside / "best.pt").is_file() and own_best.is_file()


@pytest.mark.slow
def test_two_ranks_streaming_a_folder_with_bad_files_take_the_same_steps(tmp_path):
    """A rank whose batch bad files left with one sample or none dropped it alone: the
    ranks' collective calls parted, and the run hung until the process group's timeout."""
    from tests.datagen import make_imagefolder, streamed_folder, write_noise_jpeg

    # As many bad files as good: some batches of a rank keep one sample or none.
    root = make_imagefolder(tmp_path / "pics", classes=("a", "b"), per_class=10, size=16)
    for name in ("a", "b"):  # valid headers, cut short: found only when decoded
        for i in range(8):
            whole = write_noise_jpeg(tmp_path / "whole.jpg", seed=i, size=64).read_bytes()
            (root / "train" / name / f"cut{i}.jpg").write_bytes(whole[: len(whole) // 2])
    two_ranks(
        *[a for a in for_logger(TINY, ["logger=none"]) if not a.startswith(("data", "trainer"))],
        "logger=none",
        *streamed_folder(root),
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "trainer.max_epochs=2",
        "trainer.batch_size=4",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=240,  # the ranks hung until the 10-minute process-group timeout
    )
    # Every cut file, also those only rank 1 streamed (they were in its log alone).
    listed = (tmp_path / "run" / "bad_files.txt").read_text()
    cut = {f"{name}/cut{i}.jpg" for name in ("a", "b") for i in range(8)}
    assert {c for c in cut if c in listed} == cut, listed


@pytest.fixture
def rank1_of_2(monkeypatch):
    """This process as rank 1 of 2 torchrun processes (no process group is joined)."""
    world = distributed.World(
        rank=1, local_rank=1, world_size=2, backend="gloo", launcher="torchrun"
    )
    monkeypatch.setattr(distributed, "_WORLD", world)
    return world


def test_each_rank_restores_its_own_rng_states_and_an_old_checkpoint_reseeds(rank1_of_2):
    from runner.training.state import get_rng_state, restore_rng

    states = []
    for seed in (10, 11):  # what rank 0 and rank 1 held when last.pt was written
        torch.manual_seed(seed)
        states.append(get_rng_state())
    expected = torch.rand(3)  # rank 1's next draws, from the state saved just before
    restore_rng({"rng": states[0], "rng_by_rank": states, "world_size": 2}, seed=0, global_step=7)
    assert torch.equal(torch.rand(3), expected)
    # A last.pt from before every rank's states were kept: rank 0's, then this rank's stream.
    restore_rng({"rng": states[0]}, seed=0, global_step=7)
    reseeded = torch.rand(3)
    rank_sync.seed_rank(0, 7)
    assert torch.equal(reseeded, torch.rand(3)) and not torch.equal(reseeded, expected)


def test_a_partial_epoch_is_refused_with_another_world_size_and_a_finished_one_warned(caplog):
    from runner.config.errors import ConfigError
    from runner.training.resume_checks import check_world_size

    last = Path("run/checkpoints/last.pt")
    with pytest.raises(ConfigError) as refused:
        check_world_size(last, 2, 1, epoch=1, mid_epoch=True)
    message = str(refused.value)
    assert "in the middle of epoch 2 by 2 process(es)" in message and "this run has 1" in message
    assert "torchrun --nproc_per_node=2" in message and "trainer.resume=never" in message
    with pytest.raises(ConfigError, match=r"this run has 4.*a single process"):
        check_world_size(last, 1, 4, epoch=0, mid_epoch=True)

    check_world_size(last, 2, 1, epoch=3, mid_epoch=False)
    assert "saved by 2 process(es) at the end of epoch 3, and this run has 1" in caplog.text
    assert "steps per epoch change" in caplog.text and "lr schedule" in caplog.text
    caplog.clear()
    check_world_size(last, None, 2, epoch=1, mid_epoch=True)  # an old last.pt: no size kept
    check_world_size(last, 2, 2, epoch=1, mid_epoch=True)
    assert not caplog.text


def test_the_resume_command_keeps_the_launcher(rank1_of_2, monkeypatch):
    from omegaconf import OmegaConf

    from runner.tracking.null import NullTracker
    from runner.training.context import RunContext, resume_command

    def ctx(world: distributed.World) -> RunContext:
        cfg = OmegaConf.create({})
        return RunContext(cfg, torch.device("cpu"), "32", world, Path("/runs/a"), NullTracker())

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert (
        resume_command(ctx(rank1_of_2))
        == "torchrun --nproc_per_node=2 run.py trainer.resume=auto hydra.run.dir=/runs/a"
    )
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 2 nodes of 4
    eight = distributed.World(rank=1, world_size=8, launcher="torchrun")
    assert resume_command(ctx(eight)).startswith("torchrun --nnodes=2 --nproc_per_node=4 ")
    slurm = distributed.World(rank=1, world_size=4, launcher="slurm")
    assert resume_command(ctx(slurm)).startswith("the same SLURM job again (4 tasks")
    assert (
        resume_command(ctx(distributed.World()))
        == "python run.py trainer.resume=auto hydra.run.dir=/runs/a"
    )


def test_the_resume_command_of_a_run_started_with_resume_never_continues_it(monkeypatch):
    """It kept trainer.resume=never: the printed command set the checkpoints aside."""
    from omegaconf import OmegaConf

    from runner.tracking.null import NullTracker
    from runner.training import context
    from runner.training.context import RunContext, resume_command

    typed = ["seed=3", "trainer.resume=never", "hydra.run.dir=/runs/a"]
    expected = "python run.py seed=3 trainer.resume=auto hydra.run.dir=/runs/a"
    # never typed, or in a config file (not typed): the config says never; or auto, in a
    # job SLURM requeued (continue_requeued_run).
    for overrides in (typed, [o for o in typed if "resume" not in o]):
        monkeypatch.setattr(context, "hydra_overrides", lambda o=overrides: o)  # as Hydra's
        for resume in ("never", "auto"):
            cfg = OmegaConf.create({"trainer": {"resume": resume}})
            world = distributed.World()
            ctx = RunContext(cfg, torch.device("cpu"), "32", world, Path("/runs/a"), NullTracker())
            assert resume_command(ctx) == expected, (overrides, resume)


def test_short_epoch_advice_counts_each_process_share(make_cfg, caplog, rank1_of_2):
    from runner.data.build import build_data
    from runner.training.preflight import check_training_data

    cfg = make_cfg("data.num_samples=640", "trainer.batch_size=32")
    data = build_data(cfg.data)
    per_rank = -(-len(data.train) // 2)
    check_training_data(cfg, data, -(-per_rank // 32))  # the train loader's length on a rank
    assert f"{len(data.train)} train images ({per_rank} per process, 2 processes)" in caplog.text
    # A batch size that gives FEW_STEPS steps of this rank's share, not of the whole split.
    assert f"trainer.batch_size (e.g. {per_rank // 10})" in caplog.text


def test_only_rank_0_profiles_and_another_rank_keeps_its_own_traceback(tmp_path, rank1_of_2):
    from runner.tracking.null import NullTracker
    from runner.training.context import save_traceback
    from runner.training.profiling import profile

    with profile(True, tmp_path, NullTracker()):
        torch.ones(4).sum()
    assert not (tmp_path / "profile").exists(), "rank 1 wrote into rank 0's run dir"
    try:
        raise RuntimeError("only rank 1 failed")
    except RuntimeError:
        save_traceback(NullTracker(), tmp_path, rank=1)
    assert "only rank 1 failed" in (tmp_path / "traceback-rank1.txt").read_text()
    assert not (tmp_path / "traceback.txt").exists()
