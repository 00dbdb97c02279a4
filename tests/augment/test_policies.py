"""The policy presets: Kornia's own policies; RandAugment draws its op indices on the host."""

from __future__ import annotations

import pickle

import kornia.augmentation.auto as kornia_auto
import pytest
import torch
from hydra.utils import instantiate

from runner.augment.policies import RandAugment


def images(n: int = 12, size: int = 24) -> torch.Tensor:
    """Random colours plus the corner cases: a gray image, black and white pixels."""
    batch = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(7))
    batch[0] = 0.3
    batch[1, :, :4, :4] = 0.0
    batch[2, :, :4, :4] = 1.0
    return batch


@pytest.mark.parametrize("n", [2, 15])
def test_randaugment_draws_and_applies_exactly_like_kornias_on_the_cpu(n):
    """Same seed, same draws (ops, magnitudes, signs), same pixels, many batches; n=15
    draws every op of the policy in each batch."""
    ours, reference = RandAugment(n=n, m=9), kornia_auto.RandAugment(n=n, m=9)
    batch = images(n=16)
    for seed in range(12):
        torch.manual_seed(seed)
        expected = reference(batch.clone())
        torch.manual_seed(seed)
        got = ours(batch.clone())
        names = [item.name for item in ours._params]
        assert names == [item.name for item in reference._params], seed
        torch.testing.assert_close(got, expected, atol=0, rtol=0, msg=f"seed {seed}: {names}")


def test_randaugment_draws_its_op_indices_on_the_host():
    """Inside DeviceAugment the default device is the batch's; Kornia's randperm follows it
    and a GPU would then read the indices back every step. Ours stays on the host."""
    with torch.device("meta"):
        assert RandAugment(n=2, m=9).rand_selector(2).device.type == "cpu"
        assert kornia_auto.RandAugment(n=2, m=9).rand_selector(2).device.type == "meta"


def test_randaugment_draws_every_op_with_another_default_device():
    """Inside DeviceAugment the default device is the batch's, and brightness, contrast and
    color return their factor on the device Kornia built their range on (the host).
    Kornia's magnitude follows the default device, and on CUDA the two did not add up: a
    run failed at the first batch that drew one of those ops. `meta` stands in for the GPU
    here."""
    policy = RandAugment(n=15, m=9)  # every op, every batch
    with torch.device("meta"):
        params = policy.forward_parameters(torch.Size((4, 3, 16, 16)))
        with pytest.raises(RuntimeError, match="device"):  # Kornia's, with our op indices
            kornia_auto.RandAugment.forward_parameters(policy, torch.Size((4, 3, 16, 16)))
    assert len(params) == 15


def test_recorded_params_replay_the_same_batch():
    policy = RandAugment(n=2, m=9)
    batch = images()
    first = policy(batch.clone())
    assert torch.equal(policy(batch.clone(), params=policy._params), first)


def test_randaugment_pickles_for_spawned_workers():
    policy = RandAugment(n=2, m=9)
    clone = pickle.loads(pickle.dumps(policy))
    batch = images()
    torch.manual_seed(3)
    expected = policy(batch.clone())
    torch.manual_seed(3)
    torch.testing.assert_close(clone(batch.clone()), expected)


@pytest.mark.parametrize(
    ("preset", "policy"),
    [
        ("randaugment", RandAugment),
        ("trivialaugment", kornia_auto.TrivialAugment),
        ("autoaugment", kornia_auto.AutoAugment),
    ],
)
def test_the_policy_presets_build_kornias_public_policies(make_cfg, preset, policy):
    """No class swapping: every module of the pipeline is a class from Kornia's public API
    (or the project's own fused ops), unchanged after building and a forward pass."""
    augment = instantiate(make_cfg(f"aug={preset}").aug, num_classes=10)
    found = [m for m in augment.pipeline.children() if isinstance(m, policy)]
    assert len(found) == 1
    before = [type(m) for m in augment.modules()]
    augment.train()
    augment(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert [type(m) for m in augment.modules()] == before
    for module in augment.modules():
        assert type(module).__module__.startswith(("kornia.", "runner.", "torch.")), type(module)
