"""Hydra-composed experiment runner for PyTorch image classification.

Importing the package registers the OmegaConf resolvers the configs use; it stays light
(no torch) so that composing and validating a config is fast.
"""

from runner import startup  # noqa: F401  (first: its clock notes when the runner loaded)
from runner.config import register_resolvers

register_resolvers()
