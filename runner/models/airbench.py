"""The airbench94 network (Keller Jordan, 2024): 94% on CIFAR-10 in seconds of GPU time.

A fixed patch-whitening convolution set from the training images, then three conv groups
(conv, max-pool, BatchNorm, GELU, conv, BatchNorm, GELU) of 64, 256 and 256 channels, a
global max-pool and a bias-free linear head whose logits are scaled by 1/9. BatchNorm
scales stay at 1 (only the shifts learn); each conv's first filters start as the
identity. About 2M parameters. conf/experiment/airbench94.yaml is the recipe around it
(optimizer, schedule, flip + translate augmentation).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def _conv(in_channels: int, channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, channels, 3, padding="same", bias=False)
    # The first filters pass their input channel through: a deep plain conv stack starts
    # close to the identity, which lets the high learning rate of the recipe train it.
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(in_channels, channels)])
    return conv


def _batchnorm(channels: int, momentum: float) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    norm.weight.requires_grad_(False)  # scale fixed at 1; the shift learns
    return norm


class ConvGroup(nn.Module):
    """conv, 2x2 max-pool, BatchNorm, GELU, conv, BatchNorm, GELU.

    Args:
        in_channels: Channels of the input.
        channels: Channels of both convolutions' outputs.
        batchnorm_momentum: PyTorch's BatchNorm momentum.
    """

    def __init__(self, in_channels: int, channels: int, batchnorm_momentum: float):
        super().__init__()
        self.conv1 = _conv(in_channels, channels)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _batchnorm(channels, batchnorm_momentum)
        self.conv2 = _conv(channels, channels)
        self.norm2 = _batchnorm(channels, batchnorm_momentum)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halves the feature map's sides."""
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirBench94(nn.Module):
    """The airbench94 network; call `init_from_images` with training images before training.

    Args:
        num_classes: Size of the classifier head (from the data).
        in_channels: Input channels.
        widths: Channels of the three conv groups.
        batchnorm_momentum: PyTorch's BatchNorm momentum (airbench's 0.6 is 1 - this).
        logit_scale: Factor on the head's output.
        whiten_kernel_size: Side of the whitened patches.
        whiten_eps: Added to the eigenvalues of the patches' second-moment matrix before
            dividing by their square roots, so near-constant directions are not blown up.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: tuple[int, ...] = (64, 256, 256),
        batchnorm_momentum: float = 0.4,
        logit_scale: float = 1 / 9,
        whiten_kernel_size: int = 2,
        whiten_eps: float = 5e-4,
    ):
        super().__init__()
        # Each whitening direction appears with both signs, so the GELU after it keeps both.
        whiten_width = 2 * in_channels * whiten_kernel_size**2
        self.whiten = nn.Conv2d(in_channels, whiten_width, whiten_kernel_size, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)  # each +/- pair of filters starts symmetric
        self.whiten_eps = whiten_eps
        self.act = nn.GELU()
        groups, channels = [], whiten_width
        for width in widths:
            groups.append(ConvGroup(channels, width, batchnorm_momentum))
            channels = width
        self.layers = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)  # airbench's 3x3 max-pool on its 3x3 map
        self.head = nn.Linear(channels, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of normalised images."""
        features = self.layers(self.act(self.whiten(x)))
        return self.head(self.pool(features).flatten(1)) * self.logit_scale

    @torch.no_grad()
    def init_from_images(self, batches: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Sets the whitening filters from the patches of normalised training images.

        The filters are the eigenvectors of the patches' second-moment matrix (not
        centred, as in airbench), each divided by the square root of its eigenvalue
        (largest first), and their negatives: on these images the layer's output
        channels are uncorrelated, each with a mean square of 1.

        Args:
            batches: Float images (N, C, H, W), normalised as the model will see them:
                one tensor, or batches of them (which bound the memory it takes).
        """
        weight = self.whiten.weight
        size = weight.shape[1] * weight.shape[2] * weight.shape[3]
        covariance = torch.zeros(size, size, dtype=torch.float64, device=weight.device)
        count = 0
        for batch in [batches] if isinstance(batches, torch.Tensor) else batches:
            # Every patch as a row: (n, size, L) -> (n * L, size).
            patches = F.unfold(batch.to(weight.device).float(), self.whiten.kernel_size)
            patches = patches.transpose(1, 2).reshape(-1, size)
            covariance += (patches.T @ patches).double()  # float32 per batch: BLAS speed
            count += patches.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance / count)  # ascending
        scaled = eigenvectors / (eigenvalues.clamp(min=0) + self.whiten_eps).sqrt()
        filters = scaled.T.flip(0).reshape(-1, *weight.shape[1:]).to(weight.dtype)
        weight.copy_(torch.cat([filters, -filters]))


def airbench94(num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """Creates the airbench94 network (see `AirBench94`)."""
    return AirBench94(num_classes, in_channels=in_channels, **kwargs)
