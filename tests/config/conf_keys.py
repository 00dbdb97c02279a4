"""Every key of conf/ that runs may have been written with, recorded in conf_keys.txt.

A run dir resumes only with its own config (`runner.config.changes`): a key added to an
option that runs already use makes every run dir written before it a "change", unless
`ADDED_KEYS` gives the value that does what its absence did (or `MAY_CHANGE_ON_RESUME`
lets it change). tests/config/test_config.py compares conf/ with the record, so that a new
key is sorted into one of them; `python -m tests.config.conf_keys` rewrites the record.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CONF, group_options

KEYS_FILE = Path(__file__).with_name("conf_keys.txt")
# The groups whose options put keys into a run's config: every folder of conf/ but
# Hydra's own and the searches (their keys are the sweeper's).
NOT_RUN_KEYS = ("hydra", "hparams_search")


def conf_keys() -> set[str]:
    """The flattened keys of the default config and of each option of each group."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from runner.config.changes import flatten

    groups = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in NOT_RUN_KEYS)
    choices = [[], *([f"{group}={option}"] for group in groups for option in group_options(group))]
    keys: set[str] = set()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for overrides in choices:
            cfg = compose("train", overrides=overrides)
            keys |= set(flatten(OmegaConf.to_container(cfg, resolve=False)))
    return keys


if __name__ == "__main__":
    KEYS_FILE.write_text("".join(f"{key}\n" for key in sorted(conf_keys())), encoding="utf-8")
    print(f"wrote {KEYS_FILE}")
