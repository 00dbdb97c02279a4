"""Sample orders for an epoch: a random permutation or class-weighted draws, DDP-aware.

A sampler returns the whole epoch's indices at once (`indices(epoch)`), so a loader
batches by tensor indexing. The order depends only on (seed, epoch), which makes a
resumed run draw exactly what an uninterrupted one would.

Under distributed training every rank computes the same epoch order (same seed, same
epoch) and takes the positions rank, rank + world_size, ...: the ranks' shares are
disjoint and together are the order a single process would draw. The order is padded
(by repeating its start) to a multiple of world_size so every rank runs the same number
of steps, as torch's DistributedSampler does.
"""

from __future__ import annotations

import torch


def _default_rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """The process's rank and the world size: as given, else from torch.distributed."""
    import torch.distributed as dist

    initialized = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialized else 1
    if rank is None:
        rank = dist.get_rank() if initialized else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside 0..{world_size - 1} (world_size={world_size})")
    return rank, world_size


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's order: (seed, epoch) mixed by numpy's SeedSequence.

    Not `seed + epoch` (torch's DistributedSampler): with it, seed 1's epoch 1 is seed 0's
    epoch 2, so the runs of a seed sweep see the same batches one epoch apart and their
    spread understates the seed's effect.
    """
    import numpy as np

    entropy = [seed % 2**64, epoch]  # SeedSequence takes no negative numbers; `seed` may be
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


class _ShardedSampler:
    """Common part: the epoch's full order (`_draw`), padded and strided by rank."""

    def __init__(self, total: int, seed: int, rank: int | None, world_size: int | None) -> None:
        self.seed = seed
        self.rank, self.world_size = _default_rank_and_world(rank, world_size)
        # Samples per rank; every rank takes the same number.
        self.num_samples = -(-total // self.world_size)
        self.total_size = self.num_samples * self.world_size

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def indices(self, epoch: int) -> torch.Tensor:
        """Returns this rank's share of the epoch's order (int64, on the CPU)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = self._draw(generator)
        if len(order) < self.total_size:
            repeats = -(-self.total_size // len(order))
            order = order.repeat(repeats)[: self.total_size]
        return order[self.rank : self.total_size : self.world_size]


class RandomSampler(_ShardedSampler):
    """A fresh permutation of the split each epoch.

    Args:
        labels: Train labels (int64).
        seed: Base seed; epoch e draws from `epoch_seed(seed, e)`.
        rank: This process's rank; None = from torch.distributed (0 when not distributed).
        world_size: Number of processes; None = from torch.distributed (else 1).
    """

    def __init__(
        self,
        labels: torch.Tensor,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        self.size = int(labels.shape[0])
        super().__init__(self.size, seed, rank, world_size)

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.size, generator=generator)


# The most categories torch.multinomial draws from.
MULTINOMIAL_LIMIT = 2**24


class WeightedClassSampler(_ShardedSampler):
    """Draws samples with replacement, weighting each class by count ** -power.

    power=1 balances classes (inverse frequency); power=0.5 is the square-root scheme;
    power=0 draws uniformly.

    Args:
        labels: Train labels (int64).
        seed: Base seed; epoch e draws from `epoch_seed(seed, e)`.
        power: Exponent of the inverse class frequency.
        num_samples: Draws per epoch over all ranks; None = the size of the split.
        rank: This process's rank; None = from torch.distributed (0 when not distributed).
        world_size: Number of processes; None = from torch.distributed (else 1).
    """

    def __init__(
        self,
        labels: torch.Tensor,
        seed: int = 0,
        power: float = 1.0,
        num_samples: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        labels = labels.cpu()
        counts = torch.bincount(labels).double()
        # Relative to the smallest class (weight 1): a large power makes the others' weights
        # tiny, never all zero (count ** -power underflowed and multinomial failed).
        smallest = counts[counts > 0].min()
        class_weight = torch.where(counts > 0, (counts.clamp_min(1) / smallest).pow(-power), 0.0)
        self.by_class_first = labels.shape[0] > MULTINOMIAL_LIMIT
        if self.by_class_first:  # a class first, then one of its samples
            self.class_mass = class_weight * counts
            self.counts = counts
            self.by_class = torch.argsort(labels, stable=True)
            self.class_start = torch.cumsum(counts, 0).long() - counts.long()
        else:
            self.weights = class_weight[labels]
        super().__init__(int(num_samples or labels.shape[0]), seed, rank, world_size)

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        # One draw of the padded size: the padding is fresh draws, not repeats.
        if not self.by_class_first:
            return torch.multinomial(
                self.weights, self.total_size, replacement=True, generator=generator
            )
        # torch.multinomial takes at most 2**24 categories: a class drawn by its share of
        # the weight, then one of its samples uniformly, is the same distribution.
        classes = torch.multinomial(
            self.class_mass, self.total_size, replacement=True, generator=generator
        )
        within = torch.rand(self.total_size, generator=generator, dtype=torch.float64)
        offset = (within * self.counts[classes]).long()
        return self.by_class[self.class_start[classes] + offset]
