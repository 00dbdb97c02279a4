"""The OmegaConf resolvers that conf/ uses (`${runner_repo_root:}`, ...)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
_UNIQUE_ID = secrets.token_hex(3)


def register_resolvers() -> None:
    """Registers the resolvers used by conf/ (idempotent)."""
    if not OmegaConf.has_resolver("runner_repo_root"):
        OmegaConf.register_new_resolver("runner_repo_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("runner_unique_id"):
        # One id per launching process: Hydra may resolve the run dir more than once, and
        # every resolution must give the same dir. The pid and random part keep two runs
        # started in the same second apart. Cached (like Hydra's `now`): the cache travels
        # with the config to a launcher's job processes, so they resolve the same id.
        OmegaConf.register_new_resolver(
            "runner_unique_id", lambda: f"{os.getpid()}{_UNIQUE_ID}", use_cache=True
        )
    if not OmegaConf.has_resolver("runner_monitor_mode"):
        # trainer.monitor_mode follows trainer.monitor unless set: losses go down.
        OmegaConf.register_new_resolver("runner_monitor_mode", monitor_mode_for)
    if not OmegaConf.has_resolver("runner_help_groups"):
        # `python run.py --help`: each group's options with their one-line descriptions.
        OmegaConf.register_new_resolver("runner_help_groups", _help_groups)
    if not OmegaConf.has_resolver("runner_sweep_dir"):
        # `sweep.resume=<dir>` sends a sweep back into the dir of the earlier one.
        OmegaConf.register_new_resolver(
            "runner_sweep_dir",
            lambda resume, fresh: str(Path(resume).resolve()) if resume else fresh,
        )


def _help_groups() -> str:
    from runner.config.catalog import help_listing

    return help_listing()


def monitor_mode_for(monitor: str) -> str:
    """The direction that improves a monitored metric: "min" for a loss, else "max"."""
    return "min" if str(monitor).rsplit("/", 1)[-1].endswith("loss") else "max"
