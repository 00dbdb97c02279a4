"""Sweep dirs written as a sweep's jobs leave them, for the tests of the sweep reports."""

from __future__ import annotations

import json
from pathlib import Path

from runner.sweeps.manifest import job_key, update_manifest


def finished_job(sweep_dir: Path, num: int, overrides: list[str], value: float, **fields) -> Path:
    """A finished job of a train sweep: its run dir, metrics.json and manifest entry.

    Its test accuracy is `value - 0.05`; `fields` go into its manifest entry.
    """
    run_dir = sweep_dir / str(num)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"test/acc": value - 0.05}))
    update_manifest(
        sweep_dir,
        job_key(overrides),
        status="FINISHED",
        value=value,
        num=num,
        overrides=overrides,
        run_dir=str(run_dir),
        mlflow_run_id=f"id{num}",
        **fields,
    )
    return run_dir
