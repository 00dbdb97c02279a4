"""The project's Optuna sweeper for Hydra (`hydra/sweeper=runner_optuna`)."""
