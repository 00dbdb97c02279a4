"""Data: uint8 splits, their loaders and samplers, decoding, switches, the data sets.

Splits as uint8 tensors with their loaders and samplers, image decoding and streaming,
the real-world switches, and the data sets themselves (sets/).

May import runner.config only: data knows no model, augmentation or tracker.
"""
