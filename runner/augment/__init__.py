"""Augmentation on the device, batched: Kornia pipelines, MixUp/CutMix, normalisation.

`DeviceAugment` (a Kornia pipeline plus MixUp/CutMix and the eval resize), `Normalize`,
the policy presets, and ops/ (one fused op per module).

May import runner.config only: it knows no data set, model or tracker.
"""
