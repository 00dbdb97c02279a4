"""Samplers: class weighting, (seed, epoch) determinism, disjoint DDP shares (2 gloo ranks)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runner.data.samplers import RandomSampler, WeightedClassSampler

LABELS = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)


def test_sqrt_sampler_draws_classes_by_the_square_root_of_their_counts():
    sampler = WeightedClassSampler(LABELS, seed=0, power=0.5, num_samples=60000)
    shares = torch.bincount(LABELS[sampler.indices(0)], minlength=3).double() / 60000
    roots = torch.tensor([900, 90, 10]).double().sqrt()
    assert torch.allclose(shares, roots / roots.sum(), atol=0.01), shares


def test_balanced_sampler_draws_classes_equally():
    sampler = WeightedClassSampler(LABELS, seed=0, power=1.0, num_samples=30000)
    shares = torch.bincount(LABELS[sampler.indices(0)], minlength=3).double() / 30000
    assert torch.allclose(shares, torch.full((3,), 1 / 3).double(), atol=0.01), shares


def test_a_train_split_over_two_to_the_24_samples_is_balanced_too():
    """torch.multinomial takes at most 2**24 categories: a larger streamed folder or
    Hugging Face set failed at its first epoch (number of categories cannot exceed 2^24)."""
    labels = torch.zeros(2**24 + 10, dtype=torch.long)
    labels[-10:] = 1  # 10 samples of class 1 among 16.8M of class 0
    sampler = WeightedClassSampler(labels, seed=0, power=1.0, num_samples=20000)
    drawn = sampler.indices(0)
    shares = torch.bincount(labels[drawn], minlength=2).double() / len(drawn)
    assert torch.allclose(shares, torch.full((2,), 0.5).double(), atol=0.02), shares
    assert set(drawn[labels[drawn] == 1].tolist()) == set(range(2**24, 2**24 + 10))
    assert torch.equal(drawn, sampler.indices(0)) and not torch.equal(drawn, sampler.indices(1))


def test_a_large_power_draws_the_smallest_class_instead_of_failing():
    """count ** -1000 underflowed to 0 for every class: multinomial refused the weights."""
    sampler = WeightedClassSampler(LABELS, seed=0, power=1000.0, num_samples=500)
    assert (LABELS[sampler.indices(0)] == 2).all()


def _shares(sampler_cls, world_size, epoch, **kwargs):
    return [
        sampler_cls(LABELS, seed=5, rank=r, world_size=world_size, **kwargs).indices(epoch)
        for r in range(world_size)
    ]


@pytest.mark.parametrize("sampler_cls", [RandomSampler, WeightedClassSampler])
@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shares_interleave_to_the_single_process_draw(sampler_cls, world_size):
    shares = _shares(sampler_cls, world_size, epoch=4)
    per_rank = -(-len(LABELS) // world_size)
    assert all(len(s) == per_rank for s in shares), "every rank runs the same steps"
    interleaved = torch.stack(shares, dim=1).flatten()
    if sampler_cls is RandomSampler:
        whole = RandomSampler(LABELS, seed=5).indices(4)
        assert torch.equal(interleaved[: len(whole)], whole)
        assert set(interleaved.tolist()) == set(range(len(LABELS))), "every sample is seen"
    else:
        whole = WeightedClassSampler(LABELS, seed=5, num_samples=per_rank * world_size)
        assert torch.equal(interleaved, whole.indices(4))


def test_random_rank_shares_are_disjoint_when_the_split_divides():
    first, second = _shares(RandomSampler, 2, epoch=1)
    assert not set(first.tolist()) & set(second.tolist())
    assert len(first) + len(second) == len(LABELS)


def _ddp_worker(rank: int, world_size: int, init_file: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        # No rank/world_size arguments: the samplers must find them in torch.distributed.
        for name, sampler in (
            ("random", RandomSampler(LABELS, seed=7)),
            ("balanced", WeightedClassSampler(LABELS, seed=7, power=1.0)),
            ("sqrt", WeightedClassSampler(LABELS, seed=7, power=0.5)),
        ):
            share = sampler.indices(3)
            gathered = [torch.empty_like(share) for _ in range(world_size)]
            dist.all_gather(gathered, share)
            if rank == 0:
                out[name] = (sampler.rank, sampler.world_size, gathered)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_draw_disjoint_shares_of_the_same_weighted_sample(tmp_path):
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    assert set(out) == {"random", "balanced", "sqrt"}
    for name, power in (("random", None), ("balanced", 1.0), ("sqrt", 0.5)):
        rank, world, (first, second) = out[name]
        assert (rank, world) == (0, 2)
        assert len(first) == len(second) == 500
        interleaved = torch.stack([first, second], dim=1).flatten()
        if power is None:
            assert torch.equal(interleaved, RandomSampler(LABELS, seed=7).indices(3))
            assert not set(first.tolist()) & set(second.tolist())
        else:
            single = WeightedClassSampler(LABELS, seed=7, power=power).indices(3)
            assert torch.equal(interleaved, single), "the ranks split one weighted draw"


@pytest.mark.parametrize("sampler_cls", [RandomSampler, WeightedClassSampler])
def test_the_orders_of_two_seeds_are_not_the_same_orders_an_epoch_apart(sampler_cls):
    """With seed + epoch, seed 1's epoch 1 was seed 0's epoch 2: a seed sweep's runs saw
    the same batches, one epoch apart. A seed and epoch still give one order (resume)."""
    labels = torch.arange(64) % 4

    def order(seed: int, epoch: int) -> torch.Tensor:
        return sampler_cls(labels, seed=seed, rank=0, world_size=1).indices(epoch)

    for epoch in (1, 2, 3):
        assert not torch.equal(order(1, epoch), order(0, epoch + 1))
        assert torch.equal(order(0, epoch), order(0, epoch))
    assert not torch.equal(order(-1, 1), order(0, 1))  # a negative seed is a seed too
