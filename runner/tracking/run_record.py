"""What a run records so that it can be repeated: its config, overrides and environment.

`start_run` writes `config_resolved.yaml` and `environment.json` into the run dir, starts
(or reopens) the tracked run with the environment as tags, and logs the flattened config
as params.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config.changes import changed_values
from runner.config.redaction import redacted_container, redacted_overrides
from runner.config.resolvers import REPO_ROOT
from runner.tracking import provenance
from runner.tracking.protocol import Tracker

log = logging.getLogger(__name__)

_MAX_TAG_LENGTH = 1000  # a `resumed.<key>` tag's value: a changed list can be long


def start_run(
    tracker: Tracker,
    cfg: DictConfig,
    run_dir: Path,
    *,
    device: str,
    run_name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    resume_run_id: str | None = None,
) -> None:
    """Writes the run's record, starts the tracked run and logs the config as params.

    Args:
        tracker: The run's tracker, connected.
        cfg: The composed config (secrets are redacted in everything written).
        run_dir: Where config_resolved.yaml and environment.json go.
        device: The device the run computes on (a tag).
        run_name: The tracked run's display name.
        tags: More tags (e.g. a sweep job's).
        params: More params, logged in the same call as the config (e.g. values the
            config leaves null and the data fills in).
        resume_run_id: The run's earlier tracked run, to log into it again; its params
            are not logged twice (MLflow refuses to change a logged param).
    """
    overrides = redacted_overrides(hydra_overrides())
    env = provenance.environment(REPO_ROOT, device)
    resolved = redacted_container(cfg)
    # Read before the file is replaced: a resumed run's params stay those of its start.
    changed = resumed_changes(run_dir / "config_resolved.yaml", resolved) if resume_run_id else {}
    resolved_yaml = OmegaConf.to_yaml(OmegaConf.create(resolved))
    (run_dir / "config_resolved.yaml").write_text(resolved_yaml, encoding="utf-8")
    record = {**env, "overrides": overrides}
    (run_dir / "environment.json").write_text(json.dumps(record, indent=2))
    tracker.start(
        run_name=run_name,
        tags={
            **env,
            "overrides": " ".join(overrides) or "(none)",
            "run_dir": str(run_dir),
            **changed,
            **tags,
        },
        resume_run_id=resume_run_id,
        local_dir=run_dir,
    )
    if resume_run_id is None:
        tracker.log_params({**flatten(resolved), **params})
    tracker.log_artifact(run_dir / "config_resolved.yaml")
    tracker.log_artifact(run_dir / "environment.json")
    log.info("tracking: %s", tracker.describe())


def resumed_changes(saved: Path, resolved: dict[str, Any]) -> dict[str, str]:
    """Tags `resumed.<key>`: "old -> new" for each key a resume changed (max_epochs, ...).

    MLflow never changes a logged param, so a resumed run's params keep the values it
    started with; these tags say what it went on with.
    """
    if not saved.is_file():
        return {}
    before = OmegaConf.to_container(OmegaConf.load(saved))
    return {
        f"resumed.{key}": f"{old} -> {new}"[:_MAX_TAG_LENGTH]
        for key, (old, new) in changed_values(before, resolved).items()
    }


def hydra_overrides() -> list[str]:
    """The command-line overrides of this job as typed, when run through Hydra.

    Unresolved: `x=${oc.env:PW}` stays that text (reading the list resolved it, so the
    secret reached environment.json, the overrides tag and the log).
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False)


def group_overrides(*groups: str) -> list[str]:
    """This job's command-line overrides of the config groups named (`model=...`, `model.x=...`)."""
    keys = tuple(f"{group}{sep}" for group in groups for sep in (".", "="))
    return [o for o in hydra_overrides() if o.lstrip("+~").startswith(keys)]


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flattens nested dicts/lists into {"a.b": value} for MLflow params."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        items = ((str(i), v) for i, v in enumerate(tree))
    else:
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def debug_tags() -> dict[str, str]:
    """{"debug": <option>} for a run of a debug preset (debug=fast|overfit|profile), else {}.

    Debug runs are tagged so that they can be told apart from real ones in MLflow.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    choice = HydraConfig.get().runtime.choices.get("debug")
    return {"debug": str(choice)} if choice else {}
