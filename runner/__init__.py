"""Hydra-composed experiment runner for PyTorch image classification.

The package is layered (README "Architecture"; the rule is checked by import-linter):

    cli                      mode dispatch
    train, evaluate,         the recipes, one per mode
    predict, throughput,
    preview
    from_checkpoint          what eval and predict share: a trained model from its ckpt
    training                 run context and lifecycle, parts, the loop, checkpoints
    sweeps, reports          sweep files and summaries; what a person reads
    data, augment,           independent of each other
    models, tracking
    config                   resolvers, choices, validation, target allowlist

Importing the package registers the OmegaConf resolvers the configs use; it stays light
(no torch) so that composing and validating a config is fast.
"""

from runner.config.resolvers import register_resolvers
from runner.training import startup_clock  # noqa: F401  (first: notes when the runner loaded)

register_resolvers()
