"""Stores on a cluster: SQLite files that many SLURM jobs would write at once.

MLflow's SQLite store and Optuna's SQLite storage are single files: many jobs writing
one lock it ("database is locked"), and SQLite's locking is unsafe on NFS, where
cluster home and project folders usually live. A sweep sent to SLURM with such a store
gets one warning, in the launching process, naming the alternatives: an `mlflow server`
(logger.tracking_uri=http://...) and an Optuna journal file (journal:///...) or a
database server.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from runner.sweeps.optuna_study import is_optuna_sweep


def _is_slurm(config: DictConfig) -> bool:
    target = OmegaConf.select(config, "hydra.launcher._target_", default=None)
    return isinstance(target, str) and "slurm" in target.lower()


def cluster_store_warning(config: DictConfig) -> str | None:
    """The warning for a SLURM sweep that writes SQLite stores, or None.

    Args:
        config: The sweep's composed config (with its `hydra` node).
    """
    if not _is_slurm(config):
        return None
    problems, fixes = [], []
    uri = OmegaConf.select(config, "logger.tracking_uri", default=None)
    if isinstance(uri, str) and uri.startswith("sqlite:"):
        problems.append(f"logger.tracking_uri={uri}")
        fixes.append(
            "start an MLflow server once (mlflow server --backend-store-uri "
            "sqlite:///<its own disk>/mlflow.db --artifacts-destination <shared dir> --host "
            "0.0.0.0 --port 5000) and pass logger.tracking_uri=http://<server host>:5000"
        )
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    if is_optuna_sweep(config) and isinstance(storage, str) and storage.startswith("sqlite:"):
        problems.append(f"hydra.sweeper.storage={storage}")
        fixes.append(
            "pass hydra.sweeper.storage=journal:///<shared dir>/optuna.log (a journal file, "
            "safe on NFS) or a PostgreSQL/MySQL URL"
        )
    if not problems:
        return None
    return (
        f"SLURM jobs will all write SQLite: {' and '.join(problems)}. Many jobs writing one "
        "SQLite file lock it, and SQLite on NFS can corrupt it. Instead: "
        + "; ".join(fixes)
        + " (README: SLURM and multi-GPU, stores on a cluster)."
    )
