"""DDP set-up from torchrun/SLURM variables, lr scaling, and the ranks' stop agreement."""

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

from runner.training import distributed
from runner.training.signals import GracefulStop
from tests.conftest import REPO, TINY, for_logger


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


def test_lr_scaling_is_validated_with_the_config(make_cfg):
    from runner.config.validation import ConfigError, validate

    with pytest.raises(ConfigError, match=r"trainer\.lr_scaling"):
        validate(make_cfg("trainer.lr_scaling=cubic"))


AGREEMENT = textwrap.dedent("""
    import os, signal, sys
    import torch.distributed as dist
    from runner.training import distributed
    from runner.training.signals import GracefulStop
    import torch
    world, _ = distributed.init(torch.device("cpu"))
    stop = GracefulStop(distributed.stop_agreement(world))
    calls = 0
    with stop:
        while not stop.requested():
            calls += 1
            if world.rank == 1 and calls == 5:
                os.kill(os.getpid(), signal.SIGUSR2)  # only rank 1 gets the signal
    distributed.end_training(world, stop._agree)
    print(f"rank {world.rank} stopped at call {calls} by {stop.signum}")
""")


@pytest.mark.slow
def test_two_gloo_ranks_stop_at_the_same_step_when_one_gets_the_signal(tmp_path):
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29517",
        "OMP_NUM_THREADS": "1",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", AGREEMENT],
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
    usr2 = int(signal.SIGUSR2)
    # The signal came during call 5; the agreement answers one call late: both stop at 6.
    assert f"rank 0 stopped at call 6 by {usr2}" in outs[0], outs[0]
    assert f"rank 1 stopped at call 6 by {usr2}" in outs[1], outs[1]


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


@pytest.mark.slow
def test_two_torchrun_ranks_validate_the_same_weights_and_log_the_same_numbers(tmp_path):
    """Each rank's last training batch once left it its own BatchNorm statistics: the ranks
    validated different models (2.3127 against 2.3129 here), so their best-epoch and
    early-stopping decisions could part, and one rank waited forever for the other."""
    command = [
        str(Path(sys.executable).with_name("torchrun")),
        "--nproc_per_node=2",
        "--redirects=3",
        f"--log-dir={tmp_path / 'logs'}",
        str(REPO / "run.py"),
        *for_logger(TINY, ["logger=none"]),
        "logger=none",
        "trainer.max_epochs=2",
        "trainer.batch_size=16",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    logs = {
        int(path.parent.name): re.findall(r"val loss \d+\.\d+ acc \d+\.\d+", path.read_text())
        for path in (tmp_path / "logs").rglob("stdout.log")
    }
    assert sorted(logs) == [0, 1] and len(logs[0]) == 2, logs
    assert logs[0] == logs[1], logs
