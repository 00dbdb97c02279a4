"""Hydra launchers the project ships: `hydra/launcher=slurm_submit` (submit, do not wait)."""
