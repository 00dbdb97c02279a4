"""The CIFAR ResNets of He et al. (2016), section 4.2: resnet20/32/44/56/110.

Three stages of basic blocks (16, 32, 64 channels) on 32x32 inputs, 6n + 2 layers. The
long-tailed literature (CIFAR-10-LT, CIFAR-100-LT) reports its numbers with resnet32
(0.46M parameters); timm has no such model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            # Option B of the paper: a strided 1x1 projection.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet with `depth` = 6n + 2 layers.

    Args:
        num_classes: Size of the classifier head (from the data).
        depth: 20, 32, 44, 56, 110, ... (6n + 2).
        in_channels: Input channels.
    """

    def __init__(self, num_classes: int, depth: int = 32, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"model.depth={depth}: a CIFAR ResNet has 6n + 2 layers (20, 32, ...)")
        blocks = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        layers, channels = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(channels, width, stride))
                channels = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of normalised images."""
        features = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


def cifar_resnet(num_classes: int, depth: int = 32, in_channels: int = 3) -> nn.Module:
    """Creates a CIFAR ResNet (see `CifarResNet`)."""
    return CifarResNet(num_classes, depth=depth, in_channels=in_channels)
