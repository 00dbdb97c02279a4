"""runner.aug_auto: Kornia's auto-augment policies, the same pixels in fewer passes."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from kornia.augmentation.auto import AutoAugment as KorniaAutoAugment
from kornia.augmentation.auto import RandAugment as KorniaRandAugment
from kornia.augmentation.auto import TrivialAugment as KorniaTrivialAugment
from kornia.augmentation.auto.operations import ops as kornia_ops
from kornia.augmentation.auto.rand_augment import ops as rand_ops
from kornia.augmentation.auto.rand_augment.rand_augment import default_policy

from runner import aug_auto
from runner.aug_auto import AutoAugment, RandAugment, TrivialAugment, accelerate

OPS = [subpolicy[0] for subpolicy in default_policy]
FAST = ["sharpness", "posterize", "solarize", "solarize_add", "color", "auto_contrast"]
WARPS = ["rotate", "shear_x", "shear_y", "translate_x", "translate_y"]


def images(n: int = 12, size: int = 24) -> torch.Tensor:
    """Random colours plus the corner cases: a gray image, black and white pixels."""
    batch = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(7))
    batch[0] = 0.3
    batch[1, :, :4, :4] = 0.0
    batch[2, :, :4, :4] = 1.0
    return batch


def draw(op, batch: torch.Tensor, level: float) -> dict[str, torch.Tensor]:
    """Parameters as RandAugment draws them for one magnitude level in (0, 1)."""
    mag = None
    if op.magnitude_range is not None:
        low, high = op.magnitude_range
        mag = torch.full((batch.shape[0],), level) * (high - low) + low
        if op._factor_name in ("translate_x", "translate_y"):
            mag = mag * batch.shape[-1]
    return op.forward_parameters(batch.shape, mag=mag)


@pytest.mark.parametrize("level", [0.1, 0.5, 0.9])
@pytest.mark.parametrize(("name", "low", "high"), OPS, ids=[op[0] for op in OPS])
def test_each_operation_gives_kornias_pixels(name, low, high, level):
    kornia_op = getattr(rand_ops, name)(low, high)
    fast_op = accelerate(copy.deepcopy(kornia_op))
    batch = images()
    params = draw(kornia_op, batch, level)
    expected = kornia_op(batch.clone(), params=params)
    got = fast_op(batch.clone(), params=params)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_the_fast_operations_are_the_ones_switched():
    """The rewritten ops and the warps run their own code; the others keep Kornia's."""
    for name, low, high in OPS:
        op = accelerate(getattr(rand_ops, name)(low, high))
        assert isinstance(op, aug_auto._HardGate)
        assert (type(op.op).__module__ == aug_auto.__name__) == (name in FAST + WARPS), name


@pytest.mark.parametrize(
    ("ours", "theirs", "kwargs"),
    [
        (RandAugment, KorniaRandAugment, {"n": 2, "m": 9}),
        (TrivialAugment, KorniaTrivialAugment, {}),
        (AutoAugment, KorniaAutoAugment, {"policy": "imagenet"}),
    ],
    ids=["randaugment", "trivialaugment", "autoaugment"],
)
def test_policies_draw_and_apply_exactly_like_kornias(ours, theirs, kwargs):
    """Same seed, same draws (ops, magnitudes, signs, gates), same pixels, many batches."""
    fast, reference = ours(**kwargs), theirs(**kwargs)
    batch = images(n=16)
    for seed in range(12):
        torch.manual_seed(seed)
        expected = reference(batch.clone())
        torch.manual_seed(seed)
        got = fast(batch.clone())
        names = [item.name for item in fast._params]
        assert names == [item.name for item in reference._params], seed
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=f"seed {seed}: {names}")


@pytest.mark.parametrize("name", ["Rotate", "Equalize", "Posterize", "ShearX"])
def test_a_partial_gate_computes_its_rows_only_with_kornias_result(name):
    """AutoAugment's p < 1 on the CPU: the op sees the gated rows only; the pixels, the
    matrix and the recorded params are those of Kornia's whole-batch call."""
    reference = getattr(kornia_ops, name)(initial_probability=0.5)
    fast = accelerate(copy.deepcopy(reference))
    batch = images(n=12)
    torch.manual_seed(4)
    params = reference.forward_parameters(batch.shape)
    rows = int((params["batch_prob"] > 0).sum())
    assert 0 < rows < len(batch)  # the seed gives a partial gate
    seen = []
    apply = fast.op.apply_transform
    fast.op.apply_transform = lambda input, *args, **kw: (
        seen.append(len(input)) or apply(input, *args, **kw)
    )
    expected = reference(batch.clone(), params=params)
    got = fast(batch.clone(), params=params)
    assert seen == [rows]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    if reference.transform_matrix is not None:
        assert torch.equal(fast.transform_matrix, reference.transform_matrix)
    assert fast.op._params["batch_prob"].shape == (len(batch),)


def test_recorded_params_replay_the_same_batch():
    policy = RandAugment(n=2, m=9)
    batch = images()
    first = policy(batch.clone())
    assert torch.equal(policy(batch.clone(), params=policy._params), first)


@pytest.mark.parametrize("name", [name for name in FAST if name != "posterize"])
def test_gradients_reach_the_input_through_the_fast_operations(name):
    """Posterize is left out: it rounds to 8-bit levels, flat almost everywhere (Kornia's too)."""
    low, high = next((low, high) for op, low, high in OPS if op == name)
    op = accelerate(getattr(rand_ops, name)(low, high))
    batch = images().requires_grad_(True)
    out = op(batch, params=draw(op, batch, 0.5))
    out.square().sum().backward()
    assert batch.grad is not None and batch.grad.abs().sum() > 0, name


def test_an_accelerated_policy_pickles_and_keeps_its_classes():
    """The switched classes live in this module by name, so the policy pickles (spawned workers)."""
    policy = TrivialAugment()
    clone = pickle.loads(pickle.dumps(policy))
    assert [type(m) for m in clone.modules()] == [type(m) for m in policy.modules()]
    batch = images()
    torch.manual_seed(3)
    expected = policy(batch.clone())
    torch.manual_seed(3)
    torch.testing.assert_close(clone(batch.clone()), expected)


def test_accelerate_is_idempotent_and_leaves_user_subclasses_alone():
    policy = RandAugment(n=1, m=5)
    before = [type(m) for m in policy.modules()]
    accelerate(policy)
    assert [type(m) for m in policy.modules()] == before
    op = rand_ops.sharpness(0.1, 1.9)
    inner = type("MyRandomSharpness", (type(op.op),), {})
    op.op.__class__ = inner
    accelerate(op)
    assert type(op.op) is inner, "a subclass of Kornia's op keeps its own apply_transform"
