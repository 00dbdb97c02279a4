"""Fused batched augmentations for the presets, as Kornia augmentation modules.

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
* `RandomBoxErasing`: random erasing as one multiply by a keep mask;
* `RandomAffine`: Kornia's own, with its sampling grid built in fewer passes
  (`warp_affine`, bit for bit the same grid); `FastWarp` does the same for other Kornia
  affine ops.

Each applies its own per-sample probability inside the op (Kornia's `p` stays 1, which
skips Kornia's blend pass).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.augmentation import GeometricAugmentationBase2D, IntensityAugmentationBase2D
from kornia.geometry import transform as kornia_transform
from kornia.geometry.conversions import convert_affinematrix_to_homography, normalize_homography

from runner.augment import to_unit_float

# Per-sample loops pay ~20 us of Python per image; below this many pixels per image the
# batched gather is cheaper on the CPU (measured at 32x32, 64x64 and 224x224).
_PER_SAMPLE_MIN_PIXELS = 128 * 128
# Kornia inverts its warp matrices in closed form; the same inverse keeps the same grid.
_inverse_3x3 = getattr(kornia_transform.imgwarp, "_inverse_3x3_closed_form", torch.linalg.inv)
# ITU-R BT.601 luma weights as torchvision's rgb_to_grayscale rounds them.
_LUMA = (0.2989, 0.587, 0.114)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"{name}={value!r}: expected a positive size or a (height, width) pair")
    return int(pair[0]), int(pair[1])


def _range(value: Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
        raise ValueError(
            f"{name}={value!r}: expected (min, max) with {low} <= min <= max <= {high}"
        )
    return pair


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def _refuse_same_on_batch(module: torch.nn.Module) -> None:
    """These modules draw per sample; Kornia containers can set `same_on_batch` on them."""
    if module.same_on_batch:
        raise ValueError(
            f"{type(module).__name__} draws its parameters per sample and does not support "
            "same_on_batch=True; use the Kornia module it fuses for that"
        )


def _loops_per_sample(images: torch.Tensor) -> bool:
    """Whether a per-sample loop beats the batched kernel: large images on the CPU."""
    pixels = images.shape[-2] * images.shape[-1]
    return images.device.type == "cpu" and pixels >= _PER_SAMPLE_MIN_PIXELS


def _box_tries(
    n: int, height: int, width: int, scale, ratio, device: torch.device, tries: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """`tries` candidate box sides per sample, drawn as torchvision draws them.

    The area share is uniform in `scale` and the aspect log-uniform in `ratio`; returns
    sqrt(area * aspect) and sqrt(area / aspect), rounded, each (n, tries).
    """
    area = height * width * _uniform(n * tries, *scale, device).view(n, tries)
    log_ratio = _uniform(n * tries, *(math.log(r) for r in ratio), device)
    aspect = torch.exp(log_ratio).view(n, tries)
    return torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()


def _first_fit(fits: torch.Tensor, *sides: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Whether any try fits, then each side of the first try that fits (per sample)."""
    first = fits.long().argmax(1, keepdim=True)  # argmax returns the first maximum
    return fits.any(1), *(side.gather(1, first).squeeze(1) for side in sides)


def _random_corner(height: int, width: int, box_h, box_w, device) -> tuple[torch.Tensor, ...]:
    """A uniformly random top-left corner per sample that keeps the box inside."""
    top = (torch.rand(len(box_h), device=device) * (height - box_h + 1)).long()
    left = (torch.rand(len(box_w), device=device) * (width - box_w + 1)).long()
    return top, left


def _scale_shift_flip(scale_x, scale_y, shift_x, shift_y, flip, out_width, like):
    """(N, 3, 3): x -> scale_x x + shift_x, y -> scale_y y + shift_y, then mirrored where flip.

    The mirror maps x to out_width - 1 - x; `like` gives the device and dtype.
    """
    matrix = torch.eye(3, device=like.device, dtype=like.dtype).repeat(len(flip), 1, 1)
    matrix[:, 0, 0] = torch.where(flip, -scale_x, scale_x)
    matrix[:, 0, 2] = torch.where(flip, out_width - 1 - shift_x, shift_x)
    matrix[:, 1, 1] = scale_y
    matrix[:, 1, 2] = shift_y
    return matrix


class RandomCropFlip(GeometricAugmentationBase2D):
    """Pads, crops a random window and flips it horizontally, in one indexed copy.

    The CIFAR recipe (`RandomCrop(size, padding=4)` + `RandomHorizontalFlip()`) as one op:
    the crop is read through a sliding-window view of the padded batch, so the whole
    batch is cropped by a single advanced-indexing copy, and only the flipped samples are
    copied once more. On the CPU, images of 128x128 pixels or more are instead copied
    window by window, and it takes the loader's uint8 batch as it is (`DeviceAugment`
    hands it over when this is the first module): padding and cropping move bytes, and
    only the kept pixels are converted to float in [0, 1] (128 images of 224x224 take
    9 ms here, against about 15 ms converting the batch first).

    Args:
        size: Output (height, width), or one int for a square.
        padding: Pixels added on every side before cropping.
        padding_mode: "reflect", "replicate" or "constant" (zeros), as `F.pad` names them.
        flip_p: Probability of a horizontal flip per sample.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        padding: int = 0,
        padding_mode: str = "reflect",
        flip_p: float = 0.5,
    ):
        super().__init__(p=1.0)
        self.size = _pair(size, "size")
        if padding < 0:
            raise ValueError(f"padding={padding!r}: expected a number of pixels >= 0")
        if padding_mode not in ("reflect", "replicate", "constant"):
            raise ValueError(
                f"padding_mode={padding_mode!r}: expected 'reflect', 'replicate' or 'constant'"
            )
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p={flip_p!r}: expected a probability in [0, 1]")
        self.padding, self.padding_mode, self.flip_p = int(padding), padding_mode, float(flip_p)

    accepts_uint8 = True  # see the class docstring; returns float images in [0, 1]

    def transform_tensor(
        self, input: torch.Tensor, *, shape: torch.Tensor | None = None, match_channel: bool = True
    ) -> torch.Tensor:
        """Kornia's shape handling, letting a (N, C, H, W) uint8 batch through as it is."""
        if input.dtype == torch.uint8 and shape is None and input.dim() == 4:
            return input
        return super().transform_tensor(input, shape=shape, match_channel=match_channel)

    def validate_tensor(self, input: torch.Tensor) -> None:
        """Kornia's check, with uint8 among the accepted dtypes."""
        if input.dtype != torch.uint8:
            super().validate_tensor(input)
        elif input.dim() != 4:
            raise ValueError(f"RandomCropFlip: expected (N, C, H, W) images, got {input.shape}")

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Draws the window offsets (in padded coordinates) and the flips on `self.device`."""
        _refuse_same_on_batch(self)
        n, _, height, width = batch_shape
        room_y = height + 2 * self.padding - self.size[0]
        room_x = width + 2 * self.padding - self.size[1]
        if min(room_y, room_x) < 0:
            raise ValueError(
                f"RandomCropFlip: crop {self.size} does not fit images of {height}x{width} "
                f"padded by {self.padding}; set a smaller size or more padding"
            )
        return {
            "offset_y": torch.randint(0, room_y + 1, (n,), device=self.device),
            "offset_x": torch.randint(0, room_x + 1, (n,), device=self.device),
            "flip": torch.rand(n, device=self.device) < self.flip_p,
        }

    def compute_transformation(
        self, input: torch.Tensor, params: dict[str, torch.Tensor], flags: dict[str, Any]
    ) -> torch.Tensor:
        """Input pixel (x, y) -> output pixel: shift by padding - offset, then mirror."""
        like = input if input.is_floating_point() else input.float()
        shift_x = (self.padding - params["offset_x"]).to(like)
        shift_y = (self.padding - params["offset_y"]).to(like)
        one = torch.ones_like(shift_x)
        return _scale_shift_flip(one, one, shift_x, shift_y, params["flip"], self.size[1], like)

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Crops (and flips) every sample of `input`; uint8 comes back as float in [0, 1]."""
        offset_y = params["offset_y"].to(input.device)
        offset_x = params["offset_x"].to(input.device)
        flip = params["flip"].to(input.device)
        per_sample = _loops_per_sample(input)
        if not per_sample:  # uint8 indexing has no fast kernel: convert first
            input = to_unit_float(input)
        padded = input
        if self.padding:
            padded = F.pad(input, (self.padding,) * 4, mode=self.padding_mode)
        if per_sample:
            return self._per_sample(padded, offset_y, offset_x, flip)
        windows = padded.unfold(2, self.size[0], 1).unfold(3, self.size[1], 1)
        batch = torch.arange(input.shape[0], device=input.device)
        # Advanced indices around a slice put the batch first: (N, C, h, w), contiguous.
        return _flip_where(windows[batch, :, offset_y, offset_x], flip)

    def _per_sample(self, padded, offset_y, offset_x, flip) -> torch.Tensor:
        height, width = self.size
        dtype = torch.float32 if padded.dtype == torch.uint8 else padded.dtype
        out = torch.empty(*padded.shape[:2], height, width, dtype=dtype, device=padded.device)
        for index, (top, left, mirror) in enumerate(
            zip(offset_y.tolist(), offset_x.tolist(), flip.tolist(), strict=True)
        ):
            window = padded[index, :, top : top + height, left : left + width]
            out[index] = window.flip(-1) if mirror else window  # converts uint8 on the way
        return out.div_(255) if padded.dtype == torch.uint8 else out


def _flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirrors the samples where `flip` is set.

    On the CPU only the flipped samples are copied (about half a pass over the batch,
    where a blend costs two), one by one for large images; elsewhere a blend, which
    needs no host sync.
    """
    if images.device.type == "cpu" and not images.requires_grad:
        chosen = flip.nonzero().squeeze(1)
        if _loops_per_sample(images):
            for index in chosen.tolist():
                images[index] = images[index].flip(-1)
        elif len(chosen):
            images[chosen] = images.index_select(0, chosen).flip(-1)
        return images
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


class RandomResizedCropFlip(GeometricAugmentationBase2D):
    """torchvision's RandomResizedCrop followed by a horizontal flip, as one resampling.

    Boxes are drawn as torchvision draws them (area share from `scale`, aspect ratio
    log-uniform in `ratio`, up to 10 tries, else the central crop of the nearest allowed
    ratio), vectorised over the batch. On the CPU with images of 128x128 pixels or more,
    each box is resampled with bilinear `F.interpolate` (antialiased where it shrinks);
    otherwise the whole batch is resampled by one separable bilinear gather with the flip
    folded into the column indices, which does not antialias: where a box is larger than
    `size` (images bigger than the output) the two paths differ, on CUDA too.

    Args:
        size: Output (height, width), or one int for a square.
        scale: Range of the box's share of the image area.
        ratio: Range of the box's aspect ratio (width / height).
        flip_p: Probability of a horizontal flip per sample.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
    ):
        super().__init__(p=1.0)
        self.size = _pair(size, "size")
        self.scale = _range(scale, "scale", 0.0, 1.0)
        self.ratio = _range(ratio, "ratio", 1e-6, math.inf)
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p={flip_p!r}: expected a probability in [0, 1]")
        self.flip_p = float(flip_p)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Draws boxes (top, left, height, width) and flips on `self.device`."""
        _refuse_same_on_batch(self)
        n, _, height, width = batch_shape
        device = self.device
        box_w, box_h = _box_tries(n, height, width, self.scale, self.ratio, device)
        fits = (box_w > 0) & (box_w <= width) & (box_h > 0) & (box_h <= height)
        any_fit, box_w, box_h = _first_fit(fits, box_w, box_h)
        # No try fits: torchvision's fallback, the central crop of the nearest ratio.
        low, high = self.ratio
        if width / height < low:
            fallback = (width, min(height, round(width / low)))
        elif width / height > high:
            fallback = (min(width, round(height * high)), height)
        else:
            fallback = (width, height)
        box_w = torch.where(any_fit, box_w, fallback[0])
        box_h = torch.where(any_fit, box_h, fallback[1])
        top, left = _random_corner(height, width, box_h, box_w, device)
        top = torch.where(any_fit, top, (height - box_h) // 2)
        left = torch.where(any_fit, left, (width - box_w) // 2)
        return {
            "box": torch.stack([top, left, box_h, box_w], 1),
            "flip": torch.rand(n, device=device) < self.flip_p,
        }

    def compute_transformation(
        self, input: torch.Tensor, params: dict[str, torch.Tensor], flags: dict[str, Any]
    ) -> torch.Tensor:
        """Input pixel (x, y) -> output pixel, with pixel centres at +0.5 (align_corners=False)."""
        top, left, box_h, box_w = params["box"].to(input).unbind(1)
        out_h, out_w = self.size
        scale_x, scale_y = out_w / box_w, out_h / box_h
        shift_x = (0.5 - left) * scale_x - 0.5
        shift_y = (0.5 - top) * scale_y - 0.5
        return _scale_shift_flip(scale_x, scale_y, shift_x, shift_y, params["flip"], out_w, input)

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Resamples every sample's box to `size`, mirrored where its flip is set."""
        box, flip = params["box"].to(input.device), params["flip"].to(input.device)
        if _loops_per_sample(input):
            return self._per_sample(input, box, flip)
        return self._batched(input, box, flip)

    def _per_sample(self, input: torch.Tensor, box: torch.Tensor, flip: torch.Tensor):
        out_h, out_w = self.size
        crops = []
        for index, ((top, left, box_h, box_w), mirror) in enumerate(
            zip(box.tolist(), flip.tolist(), strict=True)
        ):
            crop = input[index : index + 1, :, top : top + box_h, left : left + box_w]
            crop = F.interpolate(
                crop,
                size=self.size,
                mode="bilinear",
                align_corners=False,
                antialias=box_h > out_h or box_w > out_w,
            )
            crops.append(crop.flip(-1) if mirror else crop)
        return torch.cat(crops)

    def _batched(self, input: torch.Tensor, box: torch.Tensor, flip: torch.Tensor):
        n, channels, _, width = input.shape
        out_h, out_w = self.size
        top, left, box_h, box_w = box.unbind(1)
        rows_lo, rows_hi, row_weight = _bilinear_taps(top, box_h, out_h)
        cols_lo, cols_hi, col_weight = _bilinear_taps(left, box_w, out_w)
        mirrored = flip.view(-1, 1)
        cols_lo = torch.where(mirrored, cols_lo.flip(1), cols_lo)
        cols_hi = torch.where(mirrored, cols_hi.flip(1), cols_hi)
        col_weight = torch.where(mirrored, col_weight.flip(1), col_weight)

        def rows(index):
            return input.gather(2, index.view(n, 1, out_h, 1).expand(n, channels, out_h, width))

        resized = torch.lerp(
            rows(rows_lo), rows(rows_hi), row_weight.to(input.dtype).view(n, 1, out_h, 1)
        )

        def cols(index):
            return resized.gather(3, index.view(n, 1, 1, out_w).expand(n, channels, out_h, out_w))

        return torch.lerp(
            cols(cols_lo), cols(cols_hi), col_weight.to(input.dtype).view(n, 1, 1, out_w)
        )


def _bilinear_taps(start: torch.Tensor, length: torch.Tensor, out: int):
    """Per sample and output index: the two source indices and the weight of the second.

    Pixel centres follow align_corners=False; positions are clamped to the box's own
    pixels, as cropping first and then resizing would.
    """
    steps = (torch.arange(out, device=start.device, dtype=torch.float32) + 0.5) / out
    position = start.view(-1, 1) + steps * length.view(-1, 1) - 0.5
    first, last = start.view(-1, 1).float(), (start + length - 1).view(-1, 1).float()
    position = torch.minimum(position.maximum(first), last)
    low = position.floor()
    weight = position - low
    high = torch.minimum(low + 1, last)
    return low.long(), high.long(), weight


class ColorJitterAffine(IntensityAugmentationBase2D):
    """ColorJitter as one affine colour transform per sample: x -> A x + t, then clamp.

    Brightness (scale by b), saturation (blend with the luma image by s), contrast (blend
    with the mean luma by c) and hue (rotation by 2*pi*h about the gray axis) are all
    affine maps of the RGB vector, so in any order they compose into one 3x3 matrix and
    an offset per sample, applied to the batch in a single matmul. Factors are drawn as
    torchvision draws them (b, c, s uniform in [1 - x, 1 + x], h uniform in [-x, x]), in
    a random order per batch. Two differences from torchvision's ColorJitter: values are
    clamped to [0, 1] once at the end rather than after every step, and hue is a rotation
    about the gray axis rather than a shift of HSV hue (both turn the colour wheel by the
    same angle; they differ in how saturated colours move: for hue 0.05 on random colours
    the two results differ by 0.040 on average where either moves a pixel by 0.05).

    Args:
        brightness: Brightness jitter x >= 0.
        contrast: Contrast jitter x >= 0.
        saturation: Saturation jitter x >= 0.
        hue: Hue jitter x in [0, 0.5] (a fraction of a full turn).
        p: Probability that a sample is jittered at all.
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        p: float = 1.0,
    ):
        super().__init__(p=1.0)
        for name, value in (("brightness", brightness), ("contrast", contrast),
                            ("saturation", saturation)):  # fmt: skip
            if value < 0:
                raise ValueError(f"{name}={value!r}: expected a jitter >= 0")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue={hue!r}: expected a jitter in [0, 0.5]")
        if not 0 <= p <= 1:
            raise ValueError(f"p={p!r}: expected a probability in [0, 1]")
        self.brightness, self.contrast = float(brightness), float(contrast)
        # Constants live on the module's device: building them from Python lists per call
        # would copy from pageable host memory, which waits for the GPU every step.
        self.register_buffer("luma", torch.tensor(_LUMA), persistent=False)
        cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])
        self.register_buffer("gray_axis_cross", cross / math.sqrt(3), persistent=False)
        self.saturation, self.hue, self.prob = float(saturation), float(hue), float(p)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Draws the four factors per sample, the order of the steps and who is jittered."""
        _refuse_same_on_batch(self)
        n, device = batch_shape[0], self.device

        def factor(jitter: float) -> torch.Tensor:  # torchvision's range, never negative
            return _uniform(n, max(0.0, 1 - jitter), 1 + jitter, device)

        return {
            "brightness": factor(self.brightness),
            "contrast": factor(self.contrast),
            "saturation": factor(self.saturation),
            "hue": _uniform(n, -self.hue, self.hue, device),
            "order": torch.randperm(4, device=device),
            "jitter": torch.rand(n, device=device) < self.prob,
        }

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Jitters every sample with its own matrix (the identity where it is skipped)."""
        if input.shape[1] != 3:
            raise ValueError(f"ColorJitterAffine needs RGB images (3 channels), got {input.shape}")
        matrix, offset = self.colour_transform(input, params)
        n, channels = input.shape[:2]
        # (N, 3, HW): a channels_last batch is copied to this layout first, because a
        # matmul over rows of 3 pixels values is five times slower than over rows of HW.
        flat = input.reshape(n, channels, input.shape[-2] * input.shape[-1])
        out = torch.baddbmm(offset.unsqueeze(-1), matrix, flat).view(input.shape)
        return out.clamp_(0, 1) if not out.requires_grad else out.clamp(0, 1)

    def colour_transform(
        self, input: torch.Tensor, params: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (N, 3, 3) matrices A and (N, 3) offsets t of x -> A x + t.

        Composed as 4x4 homogeneous matrices [A t; 0 1], step by step in the drawn order;
        the step is picked on the device (no host read of the order).
        """
        n, device, dtype = input.shape[0], input.device, input.dtype
        luma = self.luma.to(device=device, dtype=dtype)
        eye = torch.eye(3, device=device, dtype=dtype)
        factors = {k: params[k].to(device=device, dtype=dtype) for k in
                   ("brightness", "contrast", "saturation", "hue")}  # fmt: skip
        brightness = _homogeneous(factors["brightness"].view(n, 1, 1) * eye)
        saturation = _homogeneous(_blend(eye, luma.expand(3, 3), factors["saturation"]))
        cross = self.gray_axis_cross.to(device=device, dtype=dtype)
        hue = _homogeneous(_hue_rotation(factors["hue"], cross))
        # Contrast blends with the mean luma of the image as it is at that step: the
        # channel means pushed through the steps before it.
        channel_mean = torch.ones(n, 4, 1, device=device, dtype=dtype)
        if self.contrast > 0:
            channel_mean[:, :3, 0] = input.mean((2, 3))
        contrast = factors["contrast"].view(n, 1, 1)
        order = params["order"].to(device)
        current = torch.eye(4, device=device, dtype=dtype).expand(n, 4, 4)
        for position in range(4):
            mean_luma = (current @ channel_mean)[:, :3, 0] @ luma
            contrast_step = _homogeneous(
                contrast * eye, (1 - contrast.view(n, 1)) * mean_luma.view(n, 1)
            )
            steps = torch.stack([brightness, contrast_step, saturation, hue])
            # index_select with a tensor index: indexing with a 0-d tensor reads it back.
            step = steps.index_select(0, order[position : position + 1]).squeeze(0)
            current = step @ current
        jitter = params["jitter"].to(device).view(n, 1, 1)
        current = torch.where(jitter, current, torch.eye(4, device=device, dtype=dtype))
        return current[:, :3, :3], current[:, :3, 3]


def _homogeneous(matrix: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 3, 3) matrices and (N, 3) offsets -> (N, 4, 4) [[A, t], [0, 1]]."""
    out = torch.zeros(matrix.shape[0], 4, 4, device=matrix.device, dtype=matrix.dtype)
    out[:, :3, :3] = matrix
    out[:, 3, 3] = 1
    if offset is not None:
        out[:, :3, 3] = offset.expand(-1, 3)
    return out


def _blend(eye: torch.Tensor, target: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * I + (1 - factor) * target, per sample."""
    factor = factor.view(-1, 1, 1)
    return factor * eye + (1 - factor) * target


def _hue_rotation(hue: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """Rotation by 2*pi*hue about the gray axis (R = G = B) of the RGB cube (Rodrigues).

    Of the linear hue rotations this one is the closest to torchvision's HSV hue shift
    (mean absolute difference 0.040 vs 0.049 for the YIQ rotation at hue 0.05, on random
    colours, where the shift itself moves pixels by 0.050). `cross` is the cross-product
    matrix of the unit gray axis.
    """
    device, dtype = cross.device, cross.dtype
    angle = 2 * math.pi * hue.view(-1, 1, 1)
    axis = torch.full((3,), 1 / math.sqrt(3), device=device, dtype=dtype)
    eye = torch.eye(3, device=device, dtype=dtype)
    return (
        torch.cos(angle) * eye
        + torch.sin(angle) * cross
        + (1 - torch.cos(angle)) * torch.outer(axis, axis)
    )


class RandomBoxErasing(IntensityAugmentationBase2D):
    """Random erasing (Zhong et al., 2020) as one multiply of the batch by a keep mask.

    Boxes are drawn as torchvision's RandomErasing draws them (area share in `scale`,
    aspect ratio log-uniform in `ratio`, up to 10 tries; a sample whose tries all miss is
    left alone), vectorised, and filled with `value`.

    Args:
        p: Probability that a sample gets a box.
        scale: Range of the box's share of the image area.
        ratio: Range of the box's aspect ratio (height / width, as torchvision).
        value: Fill value (0 = black on the [0, 1] scale).
    """

    def __init__(
        self,
        p: float = 0.5,
        scale: Sequence[float] = (0.02, 0.33),
        ratio: Sequence[float] = (0.3, 3.3),
        value: float = 0.0,
    ):
        super().__init__(p=1.0)
        if not 0 <= p <= 1:
            raise ValueError(f"p={p!r}: expected a probability in [0, 1]")
        self.prob = float(p)
        self.scale = _range(scale, "scale", 0.0, 1.0)
        self.ratio = _range(ratio, "ratio", 1e-6, math.inf)
        self.value = float(value)

    def generate_parameters(self, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Draws one box (top, left, height, width; height 0 = no box) per sample."""
        _refuse_same_on_batch(self)
        n, _, height, width = batch_shape
        device = self.device
        box_h, box_w = _box_tries(n, height, width, self.scale, self.ratio, device)
        fits = (box_h < height) & (box_w < width) & (box_h > 0) & (box_w > 0)
        any_fit, box_h, box_w = _first_fit(fits, box_h, box_w)
        erase = any_fit & (torch.rand(n, device=device) < self.prob)
        box_h, box_w = box_h * erase, box_w * erase
        top, left = _random_corner(height, width, box_h, box_w, device)
        return {"box": torch.stack([top, left, box_h, box_w], 1)}

    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fills every sample's box with `value`."""
        height, width = input.shape[-2:]
        top, left, box_h, box_w = params["box"].to(input.device).view(-1, 4, 1, 1).unbind(1)
        rows = torch.arange(height, device=input.device).view(1, -1, 1)
        cols = torch.arange(width, device=input.device).view(1, 1, -1)
        in_rows = ((rows >= top) & (rows < top + box_h)).to(input.dtype)
        in_cols = ((cols >= left) & (cols < left + box_w)).to(input.dtype)
        inside = (in_rows * in_cols).unsqueeze(1)
        # A multiply by the keep mask: vectorised, where a broadcast masked_fill is not
        # (4.7 ms vs 18 ms for 128 images of 224x224 on the CPU).
        out = input * (1 - inside)
        return out + self.value * inside if self.value else out


def warp_affine(
    images: torch.Tensor,
    matrix: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    align_corners: bool = True,
) -> torch.Tensor:
    """Kornia's `warp_affine` to the same size, its sampling grid built in fewer passes.

    Kornia builds each grid coordinate from full-size products, `m0 * x + m1 * y + m2`, and
    then stacks the two coordinates: about ten passes over a grid as large as two image
    channels. Here `m0 * x` is a row and `m1 * y` a column, so each coordinate is one
    broadcast sum written straight into the grid, then the offset: the same additions in
    the same order, so the same grid bit for bit, and the same `grid_sample`.

    Args:
        images: (B, C, H, W) floating-point images.
        matrix: (B, 2, 3) source-to-destination pixel affine matrices.
        mode: `bilinear` or `nearest`.
        padding_mode: `zeros`, `border` or `reflection`.
        align_corners: as in Kornia's warp (and `grid_sample`).

    Returns:
        The warped (B, C, H, W) images.
    """
    batch, _, height, width = images.shape
    size = (height, width)
    to_normalized = normalize_homography(
        convert_affinematrix_to_homography(matrix), size, size, align_corners
    )
    inverse = _inverse_3x3(to_normalized)
    xs = _grid_axis(width, align_corners, images).view(1, 1, width)
    ys = _grid_axis(height, align_corners, images).view(1, height, 1)
    rows = [inverse[:, axis, 0, None, None] * xs for axis in (0, 1)]
    columns = [inverse[:, axis, 1, None, None] * ys for axis in (0, 1)]
    offsets = [inverse[:, axis, 2, None, None] for axis in (0, 1)]
    if torch.is_grad_enabled() and (images.requires_grad or inverse.requires_grad):
        # Autograd does not follow `out=`: the same sums, stacked.
        grid = torch.stack([rows[a] + columns[a] + offsets[a] for a in (0, 1)], dim=-1)
    else:
        grid = images.new_empty(batch, height, width, 2)
        for axis in (0, 1):
            torch.add(rows[axis], columns[axis], out=grid[..., axis]).add_(offsets[axis])
    return F.grid_sample(
        images, grid, mode=mode, padding_mode=padding_mode, align_corners=align_corners
    )


def _grid_axis(n: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """Normalised pixel coordinates along one side, as Kornia's (and `affine_grid`'s)."""
    edge = 1.0 if align_corners else 1.0 - 1.0 / n
    return torch.linspace(-edge, edge, n, device=like.device, dtype=like.dtype)


class FastWarp:
    """Mixin for Kornia's affine ops: `apply_transform` through `warp_affine` above.

    Falls back to Kornia's own warp where this one does not apply: half precision on the
    CPU (Kornia samples it in float32), a fill colour, a matrix shared by the batch.
    """

    _PADDING: str | None = "zeros"  # None: the op's own `padding_mode` flag

    def apply_transform(self, input, params, flags, transform=None):
        """Kornia's `apply_transform` for this op, through `warp_affine` where it applies."""
        padding = self._PADDING or flags["padding_mode"].name.lower()
        fast = (
            isinstance(transform, torch.Tensor)
            and input.ndim == 4
            and input.dtype in (torch.float32, torch.float64)
            and padding in ("zeros", "border", "reflection")
            and transform.shape[0] == input.shape[0]
            and not torch.jit.is_tracing()
        )
        if not fast:
            return super().apply_transform(input, params, flags, transform)
        matrix = transform[:, :2, :].to(input.dtype)
        mode = flags["resample"].name.lower()
        return warp_affine(input, matrix, mode, padding, flags["align_corners"])


class RandomAffine(FastWarp, K.RandomAffine):
    """Kornia's `RandomAffine` (same arguments, draws and pixels), warped by `warp_affine`."""

    _PADDING = None
