"""Fused batched augmentations for the presets, one Kornia augmentation module each.

May import runner.augment.device and runner.config (its errors), Kornia and torch;
nothing else of runner.

Kornia's generic modules pay for their generality: a crop is a warp or a padded copy,
a flip is computed for the whole batch and blended back, `ColorJitter` goes through HSV
in many passes, and every op with `p < 1` blends the whole batch once more. On the CPU,
where a pass over a batch of 224x224 images costs several milliseconds, that made the
batched pipeline slower than torchvision applied per sample in two DataLoader workers.

The modules here keep Kornia's contract (they subclass its base classes, so they live in
an `AugmentationSequential`, draw their parameters on the module's device, replay
`params`, and the geometric ones report their `transform_matrix`) but each does its work
in as few passes over the batch as it can:

* `RandomCropFlip`: padding, a random crop and a horizontal flip as one indexed copy;
* `RandomResizedCropFlip`: torchvision's random-resized-crop sampling and a flip, resampled
  per sample with `F.interpolate` on the CPU (its vectorised kernel) or as one batched
  separable bilinear gather elsewhere;
* `ColorJitterAffine`: brightness, contrast, saturation and hue folded into one 3x3 colour
  matrix and offset per sample, applied in one batched matmul;
* `RandomBoxErasing`: random erasing as one multiply by a keep mask.

Each applies its own per-sample probability inside the op (Kornia's `p` stays 1, which
skips Kornia's blend pass).
"""
