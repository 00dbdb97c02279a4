"""Hydra launchers the project ships: `slurm` (submit, then wait) and `slurm_submit`.

`hydra/launcher=slurm` waits for the jobs; `hydra/launcher=slurm_submit` returns once they
are submitted (`python -m runner.sweeps collect` summarises them later).
"""
