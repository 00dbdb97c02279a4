"""Training: everything one training run does between its config and its reports.

The run context and lifecycle, the parts (model, optimizer, ...), the epoch loop and its
engine, checkpoints (last.pt state, the best.pt schema), optimizers and schedules,
losses, metrics, DDP, signals, and the test-and-report step.

May import every package below it (config, data, augment, models, tracking, reports,
sweeps); never a recipe.
"""
