"""Data: uint8 splits, their loaders and samplers, decoding, switches, the data sets.

Splits as uint8 tensors (each sample with a stable id) with their loaders and samplers,
image decoding and streaming, the real-world switches, k-fold splits, acting on an audit
(`data.exclude`, `data.relabel`), finding samples by id, and the data sets themselves
(sets/).

May import runner.config only: data knows no model, augmentation or tracker.
"""
