"""The launcher presets compose on top of hydra-submitit-launcher's configs."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from tests.conftest import CONF


def launcher(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True
        )
    # The sweep dir holds submitit's folder (logs, pickles), shared by every job.
    assert cfg.hydra.launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"
    return cfg.hydra.launcher


@pytest.mark.parametrize("name", ["slurm", "slurm_submit"])
def test_slurm_presets(name):
    conf = launcher(name, "hydra.launcher.partition=gpu")
    assert conf.partition == "gpu" and conf.max_num_timeout > 0 and conf.signal_delay_s > 0
    assert get_class(conf._target_).__name__.endswith("SlurmLauncher")


def test_the_sweep_callback_knows_the_submit_only_launcher_by_the_presets_target():
    """A launch with it leaves its jobs running; the callback then summarises nothing."""
    from hydra_plugins.runner_slurm.launcher import SubmitOnlySlurmLauncher
    from runner.sweeps.manifest import SUBMIT_ONLY_LAUNCHER, submits_only

    assert launcher("slurm_submit")._target_ == SUBMIT_ONLY_LAUNCHER
    assert get_class(SUBMIT_ONLY_LAUNCHER) is SubmitOnlySlurmLauncher
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name, submits in (("slurm_submit", True), ("slurm", False), ("local", False)):
            cfg = compose("train", [f"hydra/launcher={name}"], return_hydra_config=True)
            assert submits_only(cfg) is submits, name


def test_local_preset():
    conf = launcher("local")
    assert get_class(conf._target_).__name__ == "LocalLauncher"


def test_resource_counts_sbatch_would_refuse_are_refused_before_the_sweep():
    """--nodes=0 and --time=-5 reached sbatch, after the sweep's parent run was made."""
    from runner.config.errors import ConfigError
    from runner.sweeps.start_checks import check_launcher

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in ("slurm", "slurm_submit", "local"):
            check_launcher(compose("train", [f"hydra/launcher={name}"], return_hydra_config=True))
        whole_node = ["hydra/launcher=slurm", "hydra.launcher.mem_gb=0"]  # sbatch --mem=0
        check_launcher(compose("train", whole_node, return_hydra_config=True))
        bad = ["hydra/launcher=slurm", "hydra.launcher.nodes=0", "hydra.launcher.timeout_min=-5"]
        cfg = compose("train", bad, return_hydra_config=True)
    with pytest.raises(ConfigError) as refused:
        check_launcher(cfg)
    assert "hydra.launcher.timeout_min=-5: expected an integer >= 1" in str(refused.value)
    assert "hydra.launcher.nodes=0" in str(refused.value)


def test_a_signal_delay_as_long_as_the_time_limit_is_refused():
    """timeout_min=2 kept signal_delay_s=120: each job was signalled as it started and
    requeued until its timeouts were spent."""
    from runner.config.errors import ConfigError
    from runner.sweeps.start_checks import check_launcher

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        short = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=2"]
        cfg = compose("train", short, return_hydra_config=True)
        fits = compose(
            "train", [*short, "hydra.launcher.signal_delay_s=30"], return_hydra_config=True
        )
    with pytest.raises(
        ConfigError, match=r"signal_delay_s=120 is not shorter than .*timeout_min=2"
    ):
        check_launcher(cfg)
    check_launcher(fits)


def test_an_unknown_launcher_key_is_refused():
    with pytest.raises(Exception, match="partiton"):
        launcher("slurm", "hydra.launcher.partiton=gpu")
