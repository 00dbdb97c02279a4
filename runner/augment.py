"""Batched augmentation, MixUp/CutMix and normalisation on the device (Kornia).

The loader hands out uint8 batches; `DeviceAugment` turns them into float images in
[0, 1] and applies the chosen Kornia pipeline to the whole batch at once, on whatever
device the batch is on, then (optionally) MixUp or CutMix with soft targets. In eval
mode it only resizes and center-crops. `Normalize` follows, for training and evaluation
alike. `save_preview_grid` draws what a preset does to a few training images per class.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from runner.data import Split


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
        if not 0 < eval_crop_pct <= 1:
            raise ValueError(f"eval_crop_pct={eval_crop_pct!r}: expected a number in (0, 1]")
        self.differentiable = differentiable
        self.image_size = image_size
        self.eval_crop_pct = eval_crop_pct
        self.pipeline = None
        if transforms:
            import kornia.augmentation as K

            self.pipeline = K.AugmentationSequential(*transforms)
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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augments a batch (train mode) or resizes and center-crops it (eval mode).

        Args:
            images: (N, C, H, W) uint8 (0..255) or float (0..1) images. Pass float
                images with `requires_grad` to get gradients w.r.t. the input.

        Returns:
            Float images in [0, 1] (the augmentation may move values slightly outside).
        """
        # A first module that takes uint8 (runner.aug_ops.RandomCropFlip) converts only
        # the pixels it keeps; everything else wants floats in [0, 1].
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
        with torch.device(images.device):
            params = self.pipeline.forward_parameters(images.shape)
        return self.pipeline(images, params=params)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float32 in [0, 1]; float images pass unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


class MixUpCutMix(nn.Module):
    """MixUp (Zhang et al., 2018) and CutMix (Yun et al., 2019), per sample, on the device.

    Each sample is paired with another of the batch (a random permutation) and, with
    probability `prob`, mixed with its own lambda ~ Beta(alpha, alpha): blended (MixUp)
    or with a box pasted in (CutMix, lambda corrected to the box actually pasted). With
    both on, each mixed sample uses one of the two, with equal chance. Every random draw
    is on the batch's device and nothing is read back, so a step adds no host sync.

    Written here rather than taken from kornia's RandomMixUpV2/RandomCutMixV2: those
    draw MixUp's lambda uniformly (no alpha), pair on the host, gate the batch with a
    host sync, and paste CutMix boxes by boolean-mask indexing (another sync on CUDA).

    Args:
        num_classes: Size of the soft targets.
        mixup_alpha: MixUp's Beta concentration; 0 = off.
        cutmix_alpha: CutMix's Beta concentration; 0 = off.
        prob: Probability that a sample is mixed.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
    ):
        super().__init__()
        if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1:
            raise ValueError(
                f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}, prob={prob}: "
                "expected alphas >= 0 and prob in [0, 1]"
            )
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob

    def describe(self) -> str:
        """E.g. "MixUp(0.8) or CutMix(1.0), p=1.0"."""
        parts = [f"MixUp({self.mixup_alpha:g})"] if self.mixup_alpha > 0 else []
        parts += [f"CutMix({self.cutmix_alpha:g})"] if self.cutmix_alpha > 0 else []
        return " or ".join(parts) + f", p={self.prob:g}"

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixes a batch.

        Args:
            images: (N, C, H, W) float images.
            labels: (N,) int64 class ids.

        Returns:
            Mixed images and (N, num_classes) soft targets (rows sum to 1).
        """
        n, device = images.shape[0], images.device
        pairs = torch.randperm(n, device=device)
        partners = images.index_select(0, pairs)
        mixed, lam = None, None
        if self.mixup_alpha > 0:
            lam = _beta(self.mixup_alpha, n, device)
            mixed = torch.lerp(partners, images, lam.view(-1, 1, 1, 1).to(images.dtype))
        if self.cutmix_alpha > 0:
            cut, cut_lam = _cutmix(images, partners, _beta(self.cutmix_alpha, n, device))
            if mixed is None:
                mixed, lam = cut, cut_lam
            else:
                use_cut = torch.rand(n, device=device) < 0.5
                mixed = torch.where(use_cut.view(-1, 1, 1, 1), cut, mixed)
                lam = torch.where(use_cut, cut_lam, lam)
        if self.prob < 1:
            apply = torch.rand(n, device=device) < self.prob
            mixed = torch.where(apply.view(-1, 1, 1, 1), mixed, images)
            lam = torch.where(apply, lam, torch.ones_like(lam))
        one_hot = F.one_hot(labels, self.num_classes).to(lam.dtype)
        lam = lam.unsqueeze(1)
        return mixed, lam * one_hot + (1 - lam) * one_hot.index_select(0, pairs)


def _beta(alpha: float, n: int, device: torch.device) -> torch.Tensor:
    concentration = torch.full((n,), float(alpha), device=device)
    # validate_args=False: validation reads the tensors back to the host.
    beta = torch.distributions.Beta(concentration, concentration, validate_args=False)
    return beta.sample()


def _cutmix(
    images: torch.Tensor, partners: torch.Tensor, lam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pastes a box of area ~(1 - lam) from `partners` into each image, vectorised.

    Returns the images and lambda recomputed from the box after clipping at the border.
    """
    n, device = images.shape[0], images.device
    height, width = images.shape[-2:]
    side = torch.sqrt(1 - lam)
    half_h = (side * height).long() // 2
    half_w = (side * width).long() // 2
    cy = torch.randint(0, height, (n,), device=device)
    cx = torch.randint(0, width, (n,), device=device)
    y0, y1 = (cy - half_h).clamp(0, height), (cy + half_h).clamp(0, height)
    x0, x1 = (cx - half_w).clamp(0, width), (cx + half_w).clamp(0, width)
    rows = torch.arange(height, device=device).view(1, -1, 1)
    cols = torch.arange(width, device=device).view(1, 1, -1)
    inside = (
        (rows >= y0.view(-1, 1, 1))
        & (rows < y1.view(-1, 1, 1))
        & (cols >= x0.view(-1, 1, 1))
        & (cols < x1.view(-1, 1, 1))
    )
    out = torch.where(inside.unsqueeze(1), partners, images)
    pasted = ((y1 - y0) * (x1 - x0)).to(lam.dtype) / (height * width)
    return out, 1 - pasted


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


class Normalize(nn.Module):
    """Per-channel (x - mean) / std on the batch's device, optionally channels_last.

    Args:
        mean: Per-channel mean on the [0, 1] scale.
        std: Per-channel std on the [0, 1] scale.
        channels_last: Return the batch in channels_last memory format.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels_last: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalises float images in [0, 1]; uint8 input is scaled first."""
        images = to_unit_float(images)
        return ((images - self.mean) / self.std).contiguous(memory_format=self.memory_format)


def save_preview_grid(
    augment: DeviceAugment,
    split: Split,
    class_names: Sequence[str],
    path: Path,
    *,
    seed: int,
    device: torch.device | None = None,
    per_class: int = 8,
    max_classes: int = 10,
    max_side: int = 128,
) -> Path:
    """Saves a PNG grid of augmented training images: one row per class.

    The draws come from a forked RNG seeded with `seed`, so the same seed gives the same
    grid, and previewing leaves the training run's random stream untouched.

    Args:
        augment: The training augmentation (its mode is restored afterwards).
        split: The training split (resident or streaming), on any device.
        class_names: Name per class id, for the row labels.
        path: Where the PNG goes.
        seed: Seed of the augmentation draws.
        device: Where to augment; None = where the split is.
        per_class: Images per row (fewer when a shown class has fewer).
        max_classes: Rows at most (the first classes).
        max_side: Larger images are shrunk to this side for the grid.

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    host_labels = split.labels.cpu()
    device = device or split.labels.device
    rows = [torch.nonzero(host_labels == c).flatten()[:per_class] for c in range(len(class_names))]
    shown = [(c, idx) for c, idx in enumerate(rows) if len(idx)][:max_classes]
    cols = min(len(idx) for _, idx in shown)
    index = torch.cat([idx[:cols] for _, idx in shown])
    images, labels = split.take(index)  # streaming splits decode just these
    batch, batch_labels = images.to(device), labels.to(device)

    was_training = augment.training
    # manual_seed seeds every CUDA device, so every one is forked and restored.
    cuda_devices = list(range(torch.cuda.device_count()))
    with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
        torch.manual_seed(seed)
        augment.train()
        out, _ = augment.mix(augment(batch), batch_labels)
    augment.train(was_training)

    out = out.detach().float().clamp(0, 1).cpu()
    if max(out.shape[-2:]) > max_side:
        out = F.interpolate(out, size=(max_side, max_side), mode="bilinear", antialias=True)
    grid = make_grid(out, nrow=cols, padding=2, pad_value=1.0)
    cell = out.shape[-1] + 2  # make_grid's pitch: image plus padding
    inches = max(1.0, 96 / cell) / 100  # per grid pixel; small images are drawn larger
    fig, ax = plt.subplots(figsize=(grid.shape[2] * inches + 1.5, grid.shape[1] * inches + 0.8))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    row_centres = [1 + cell * row + cell / 2 for row in range(len(shown))]
    ax.set_yticks(row_centres, [class_names[c] for c, _ in shown])
    ax.set_xticks([])
    ax.set_title(augment.describe(), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
