"""Batched augmentation on the device: the Kornia pipeline, MixUp/CutMix, the eval path.

The loader hands out uint8 batches; `DeviceAugment` turns them into float images in
[0, 1] and applies the chosen Kornia pipeline to the whole batch at once, on whatever
device the batch is on, then (optionally) MixUp or CutMix with soft targets. In eval
mode it only resizes and center-crops. `runner.augment.normalize.Normalize` follows, for
training and evaluation alike.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from runner.augment.mixing import MixUpCutMix
from runner.config.errors import ConfigError

log = logging.getLogger(__name__)


class DeviceAugment(nn.Module):
    """A Kornia pipeline plus MixUp/CutMix applied to a whole batch on its device.

    Args:
        transforms: Kornia augmentation modules (plain ones or `kornia.augmentation.auto`
            policies), applied in order as one `AugmentationSequential`. Empty = none.
        differentiable: Keep the autograd graph through the augmentation and mixing (for
            learned or adversarial augmentation). Off by default: under no_grad it keeps
            no graph (1.1x cheaper for `strong` on the CPU, benchmarks/augment.py).
        image_size: Side of the images the model sees; the eval path resizes and
            center-crops to it. None = evaluation images are used as they come.
        eval_crop_pct: Eval path: resize the short side to `image_size / eval_crop_pct`,
            then center-crop `image_size` (timm's `crop_pct`); 1.0 = resize only.
        mixup_alpha: MixUp's Beta(alpha, alpha) concentration; 0 = off.
        cutmix_alpha: CutMix's Beta(alpha, alpha) concentration; 0 = off.
        mix_prob: Probability that a training sample is mixed at all.
        num_classes: Class count for the soft targets; required when mixing is on
            (`runner.train` binds it from the data).
    """

    def __init__(
        self,
        transforms: Sequence[nn.Module] = (),
        differentiable: bool = False,
        image_size: int | None = None,
        eval_crop_pct: float = 1.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        num_classes: int | None = None,
    ):
        super().__init__()
        if not 0.5 <= eval_crop_pct <= 1:
            raise ValueError(f"eval_crop_pct={eval_crop_pct!r}: expected a number in [0.5, 1]")
        self.differentiable = differentiable
        self.image_size = image_size
        self.eval_crop_pct = eval_crop_pct
        self.pipeline = None
        self._policies: list[str] = []  # class names of the Kornia policies in `transforms`
        if transforms:
            import kornia.augmentation as K
            from kornia.augmentation.auto import PolicyAugmentBase

            self.pipeline = K.AugmentationSequential(*transforms)
            self._policies = [
                type(t).__name__ for t in transforms if isinstance(t, PolicyAugmentBase)
            ]
        first = transforms[0] if transforms else None
        self._first_takes_uint8 = bool(getattr(first, "accepts_uint8", False))
        # Kornia samples on the device its generators were last moved to; tracked so a
        # batch on another device moves them once instead of drawing on the host forever.
        self._rng_device = torch.device("cpu")
        self.mixer = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            if num_classes is None:
                raise ValueError(
                    "MixUp/CutMix need num_classes for their soft targets: build with "
                    "instantiate(cfg.aug, num_classes=...)"
                )
            self.mixer = MixUpCutMix(num_classes, mixup_alpha, cutmix_alpha, mix_prob)
            if mix_prob == 0:  # a warning, as below: a sweep may turn the mixing off
                alphas = {"mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha}
                given = [f"aug.{key}={alpha}" for key, alpha in alphas.items() if alpha > 0]
                log.warning(
                    "%s %s no effect with aug.mix_prob=0: no sample is mixed; set aug.mix_prob "
                    "above 0 to mix, or the alpha to 0 to train without mixing",
                    " and ".join(given),
                    "has" if len(given) == 1 else "have",
                )
        elif mix_prob != 1:  # a warning, not an error: a sweep may turn the mixing off
            log.warning(
                "aug.mix_prob=%s is ignored: MixUp and CutMix are off (aug.mixup_alpha=0, "
                "aug.cutmix_alpha=0); set one of them above 0 to mix",
                mix_prob,
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augments a batch (train mode) or resizes and center-crops it (eval mode).

        Args:
            images: (N, C, H, W) uint8 (0..255) or float (0..1) images. Pass float
                images with `requires_grad` to get gradients w.r.t. the input.

        Returns:
            Float images in [0, 1] (the augmentation may move values slightly outside).
        """
        # A first module that takes uint8 (runner.augment.ops.crop_flip.RandomCropFlip)
        # converts only the pixels it keeps; everything else wants floats in [0, 1].
        if not (self.training and self._first_takes_uint8):
            images = to_unit_float(images)
        if not self.training:
            return resize_center_crop(images, self.image_size, self.eval_crop_pct)
        if self.pipeline is None:
            return images
        with self._grad_mode():
            return self._run_pipeline(images)

    def mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Applies MixUp/CutMix to an augmented training batch.

        Args:
            images: (N, C, H, W) float images, the output of `forward`.
            labels: (N,) int64 class ids on the same device.

        Returns:
            (images, targets): targets are (N, num_classes) probabilities when mixing is
            on, else `labels` unchanged (in eval mode too). The losses accept both.
        """
        if self.mixer is None or not self.training:
            return images, labels
        with self._grad_mode():
            return self.mixer(images, labels)

    def flips_horizontally(self) -> bool:
        """Whether training shows the model mirror images (a horizontal flip with p > 0).

        Flip test-time augmentation helps only a model that learnt mirror images as their
        own class; on digits or text, a mirror image is another class.
        """
        if self.pipeline is None:
            return False
        from kornia.augmentation import RandomHorizontalFlip

        for module in self.pipeline.modules():
            flip_p = getattr(module, "flip_p", 0.0)  # the runner's fused crop-and-flip ops
            if isinstance(module, RandomHorizontalFlip):
                flip_p = module.p
            if flip_p > 0:
                return True
        return False

    def describe(self) -> str:
        """A one-line summary of the pipeline, e.g. for a preview's title."""
        names = [type(t).__name__ for t in self.pipeline.children()] if self.pipeline else []
        text = " + ".join(names) or "no augmentation"
        if self.mixer is not None:
            text += f" | {self.mixer.describe()}"
        return text

    def _grad_mode(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.differentiable else torch.no_grad()

    def _run_pipeline(self, images: torch.Tensor) -> torch.Tensor:
        if self._rng_device != images.device:
            self.pipeline.to(images.device)
            self._rng_device = images.device
        # Kornia's generators sample on their device, then move the result to the
        # device of the configured ranges, which for plain numbers from YAML is the
        # *default* device: the host, a copy back and forth per op and step (kornia
        # issue #4426). With the batch's device as the default, the parameters stay
        # where they were drawn.
        # Kornia's policies have colour ops that take RGB only (saturation raised at the
        # step that drew it): gray images go through as RGB with equal channels, which
        # every op keeps equal (gray has no saturation or hue), and come back as one.
        # Other channel counts are refused at every batch, so the start-up preview (the
        # first batch) fails instead of whichever training step first draws such an op.
        if self._policies and images.shape[1] not in (1, 3):
            raise ConfigError(
                f"the aug preset's {' and '.join(self._policies)} policy has colour ops that "
                f"take RGB or one-channel images, and data.channels={images.shape[1]}: "
                "choose an aug preset without a policy (aug=basic, aug=flip_crop, aug=none)"
            )
        gray = bool(self._policies) and images.shape[1] == 1
        if gray:
            images = images.repeat(1, 3, 1, 1)
        try:
            with torch.device(images.device):
                params = self.pipeline.forward_parameters(images.shape)
            augmented = self.pipeline(images, params=params)
        except ValueError as err:
            if images.shape[1] == 3:
                raise
            # Kornia's colour modules check for RGB input, with a shape error of their own
            # that names neither the config key nor the data's channel count.
            raise ConfigError(
                f"aug.transforms ({self.describe()}) failed on the data's "
                f"{images.shape[1]}-channel images (data.channels={images.shape[1]}): "
                f"{str(err).strip().splitlines()[0]}. Leave the modules that take RGB only "
                "(Kornia's ColorJiggle, RandomHue, RandomSaturation, ...) out of "
                "aug.transforms, or choose an aug preset (aug=basic, aug=strong)"
            ) from err
        return augmented.mean(dim=1, keepdim=True) if gray else augmented


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float32 in [0, 1]; float images pass unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def resize_center_crop(
    images: torch.Tensor, size: int | None, crop_pct: float = 1.0
) -> torch.Tensor:
    """The eval geometry: resize the short side to floor(size / crop_pct), center-crop size.

    Args:
        images: (N, C, H, W) float images.
        size: Output side; None returns `images` unchanged.
        crop_pct: Share of the resized short side that the crop keeps.

    Returns:
        (N, C, size, size) images; the input itself when nothing needs to change.
    """
    if size is None:
        return images
    height, width = images.shape[-2:]
    short = math.floor(size / crop_pct)
    if min(height, width) != short:
        scale = short / min(height, width)
        height, width = max(short, round(height * scale)), max(short, round(width * scale))
        images = F.interpolate(
            images, size=(height, width), mode="bilinear", align_corners=False, antialias=True
        )
    top, left = (height - size) // 2, (width - size) // 2
    if (top, left, height, width) == (0, 0, size, size):
        return images
    return images[..., top : top + size, left : left + size]
