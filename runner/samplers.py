"""Sample orders for an epoch: a random permutation or class-weighted draws.

A sampler returns the whole epoch's indices at once (`indices(epoch)`), so a loader
batches by tensor indexing. The order depends only on (seed, epoch), which makes a
resumed run draw exactly what an uninterrupted one would.
"""

from __future__ import annotations

import torch


class RandomSampler:
    """A fresh permutation of the split each epoch.

    Args:
        labels: Train labels (int64).
        seed: Base seed; epoch e uses seed + e.
    """

    def __init__(self, labels: torch.Tensor, seed: int = 0):
        self.num_samples = int(labels.shape[0])
        self.seed = seed

    def indices(self, epoch: int) -> torch.Tensor:
        """Returns the epoch's sample order (int64, on the CPU)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=generator)


class WeightedClassSampler:
    """Draws samples with replacement, weighting each class by count ** -power.

    power=1 balances classes (inverse frequency); power=0.5 is the square-root scheme.

    Args:
        labels: Train labels (int64).
        seed: Base seed; epoch e uses seed + e.
        power: Exponent of the inverse class frequency.
        num_samples: Draws per epoch; None = the size of the split.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        seed: int = 0,
        power: float = 1.0,
        num_samples: int | None = None,
    ):
        labels = labels.cpu()
        counts = torch.bincount(labels).double()
        class_weight = torch.where(counts > 0, counts.clamp_min(1).pow(-power), 0.0)
        self.weights = class_weight[labels]
        self.num_samples = int(num_samples or labels.shape[0])
        self.seed = seed

    def indices(self, epoch: int) -> torch.Tensor:
        """Returns the epoch's draws (int64, on the CPU)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.multinomial(
            self.weights, self.num_samples, replacement=True, generator=generator
        )
