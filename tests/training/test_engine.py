"""The training loop: no host sync per step, accumulation, and clipping."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch
from hydra.utils import instantiate

from runner.augment.normalize import Normalize
from runner.data.loaders import ResidentLoader
from runner.data.samplers import RandomSampler
from runner.data.sets.synthetic import make_synthetic
from runner.training import engine
from runner.training.losses import CrossEntropyLoss
from runner.training.optim import build_optimizer, cosine_schedule
from runner.training.parts import TrainingParts
from tests.conftest import group_options


def setup_loop(make_cfg, aug: str = "basic", batches: int = 20, aug_overrides=()):
    data = make_synthetic(
        num_samples=batches * 8, num_classes=4, image_size=16, val_fraction=0, test_fraction=0
    )
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )
    optimizer = build_optimizer(model, lambda params: torch.optim.AdamW(params, lr=1e-3), 0.05)
    kwargs = dict(
        model=model,
        loader=ResidentLoader(data.train, 8, RandomSampler(data.train.labels)),
        parts=TrainingParts(
            model=model,
            augment=instantiate(
                make_cfg(f"aug={aug}", "data.image_size=16", "logger=none", *aug_overrides).aug,
                num_classes=4,
            ),
            normalize=Normalize(data.mean, data.std),
            loss_fn=CrossEntropyLoss(),
            optimizer=optimizer,
            scheduler=cosine_schedule(optimizer, total_steps=batches, steps_per_epoch=batches),
            scaler=torch.amp.GradScaler("cpu", enabled=False),
            ema=None,
        ),
        autocast=contextlib.nullcontext,
        device=torch.device("cpu"),
    )
    return kwargs


MIX = ("aug.mixup_alpha=0.8", "aug.cutmix_alpha=1.0", "aug.mix_prob=0.9")


@pytest.mark.parametrize(
    ("aug", "aug_overrides"),
    [
        *((option, ()) for option in group_options("aug")),
        ("none", MIX),
        ("basic", MIX),
    ],
    ids=[*group_options("aug"), "none+mix", "basic+mix"],
)
def test_no_host_sync_per_step(make_cfg, monkeypatch, aug, aug_overrides):
    """Counts .item()/.cpu()/.tolist() calls during a 20-step epoch, by caller.

    The runner's own code reads only at logging intervals and at the epoch's end.
    torch.optim's reads of its step counter are not syncs (the counter stays on the
    host even for CUDA parameters). Kornia's crop, colour-jitter and policy ops read
    their parameters back themselves; with `none` and `basic` the whole loop is
    sync-free, MixUp/CutMix (the runner's own) included.
    """
    kwargs = setup_loop(make_cfg, aug=aug, batches=20, aug_overrides=aug_overrides)
    calls = {"runner": 0, "other": 0}
    for name in ("item", "cpu", "tolist"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kw):
            caller = sys._getframe(1).f_code.co_filename
            if f"{os.sep}runner{os.sep}" in caller:
                calls["runner"] += 1
            elif f"torch{os.sep}optim{os.sep}" not in caller:
                calls["other"] += 1
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)
    logged = []
    stats = engine.train_one_epoch(
        **kwargs,
        settings=engine.StepSettings(log_every_n_steps=10),
        on_log=lambda step, loss, acc: logged.append(step),
    )
    assert stats.batches == 20 and stats.finished and logged == [10, 20]
    # One read of the NaN flag per logging interval, one read of the sums at the end.
    assert calls["runner"] == 3, calls
    if aug in ("none", "basic"):
        assert calls["other"] == 0, calls


def test_accumulation_steps_the_optimizer_every_k_batches(make_cfg):
    kwargs = setup_loop(make_cfg, aug="none", batches=20)
    engine.train_one_epoch(**kwargs, settings=engine.StepSettings(accumulate_grad_batches=4))
    assert kwargs["parts"].scheduler.last_epoch == 5


def gradients_of_each_step(batches: int, accumulate: int, nan_batch: int | None = None):
    """The gradient of a linear model at each optimizer step of one epoch over
    `batches` identical one-sample batches (lr 0: the weights stay, so should it)."""
    from runner.augment.device import DeviceAugment

    torch.manual_seed(0)  # the same weights in every call
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    steps = []
    optimizer.register_step_pre_hook(lambda *_: steps.append(model[1].weight.grad.detach().clone()))
    loss_fn = CrossEntropyLoss()
    image = torch.tensor([[[[10, 200], [30, 90]]]], dtype=torch.uint8)
    engine.train_one_epoch(
        model=model,
        loader=[(image, torch.tensor([1]))] * batches,
        parts=TrainingParts(
            model=model,
            augment=DeviceAugment(),
            normalize=Normalize([0.5], [0.25]),
            loss_fn=loss_fn if nan_batch is None else nan_at(loss_fn, nan_batch),
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
            scaler=torch.amp.GradScaler("cpu", enabled=False),
            ema=None,
        ),
        autocast=contextlib.nullcontext,
        device=torch.device("cpu"),
        settings=engine.StepSettings(accumulate_grad_batches=accumulate),
        nan_guard=None if nan_batch is None else engine.NanGuard(policy="skip"),
    )
    return steps


def test_a_short_last_window_or_a_skipped_batch_steps_with_the_mean_gradient():
    """The loss was divided by the full window always: 5 batches with accumulate=4 made
    a last step with a quarter of the gradient, and a skipped NaN batch one with 3/4."""
    steps = gradients_of_each_step(batches=5, accumulate=4)
    assert len(steps) == 2
    torch.testing.assert_close(steps[1], steps[0])
    (skipping,) = gradients_of_each_step(batches=4, accumulate=4, nan_batch=2)
    torch.testing.assert_close(skipping, steps[0])


def test_a_warmup_that_covers_the_run_or_its_first_milestone_is_reported(caplog):
    """Both were accepted without a word: the lr only ramped up (cifar10_resnet18 with
    trainer.max_epochs=2 is all warmup), or both decays fell into one inside the warmup."""
    from runner.training.optim import step_schedule

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    cosine_schedule(optimizer(), total_steps=16, steps_per_epoch=8, warmup_epochs=1)
    step_schedule(optimizer(), total_steps=160, steps_per_epoch=8, milestones=(0.5, 0.75))
    assert "covers the whole run" not in caplog.text and "inside the" not in caplog.text
    cosine_schedule(optimizer(), total_steps=16, steps_per_epoch=8, warmup_epochs=5)
    assert "sched.warmup_epochs=5 covers the whole run (16 optimizer steps)" in caplog.text
    assert caplog.records[-1].levelname == "WARNING"
    with caplog.at_level("INFO"):  # one epoch (debug=fast) with the default warmup: quietly
        cosine_schedule(optimizer(), total_steps=8, steps_per_epoch=8, warmup_epochs=1)
    assert caplog.records[-1].levelname == "INFO"
    step_schedule(
        optimizer(), total_steps=16, steps_per_epoch=8, milestones=(0.25, 0.5), warmup_epochs=1
    )
    assert "the first decay (step 4) falls inside the 8-step warmup" in caplog.text


def test_gradient_clipping_bounds_the_update(make_cfg):
    kwargs = setup_loop(make_cfg, aug="none", batches=4)
    before = [p.detach().clone() for p in kwargs["model"].parameters()]
    parts = kwargs["parts"]
    parts.optimizer = torch.optim.SGD(kwargs["model"].parameters(), lr=1.0)
    parts.scheduler = torch.optim.lr_scheduler.LambdaLR(parts.optimizer, lambda s: 1.0)
    settings = engine.StepSettings(gradient_clip_val=1e-3, accumulate_grad_batches=4)
    engine.train_one_epoch(**kwargs, settings=settings)
    moved = torch.cat(
        [
            (p.detach() - b).flatten()
            for p, b in zip(kwargs["model"].parameters(), before, strict=True)
        ]
    )
    assert moved.norm() <= 1e-3 + 1e-6


def nan_at(loss_fn, bad_call: int):
    """`loss_fn`, whose `bad_call`-th call (from 1) returns NaN."""
    calls = {"n": 0}

    def loss(logits, target):
        calls["n"] += 1
        value = loss_fn(logits, target)
        return value * float("nan") if calls["n"] == bad_call else value

    return loss


def test_nan_policy_stop_names_the_first_bad_step(make_cfg):
    kwargs = setup_loop(make_cfg, aug="none", batches=20)
    kwargs["parts"].loss_fn = nan_at(kwargs["parts"].loss_fn, 7)
    with pytest.raises(engine.NonFiniteLossError, match="non-finite loss at step 107"):
        engine.train_one_epoch(
            **kwargs, settings=engine.StepSettings(log_every_n_steps=10), first_step=101
        )


def test_nan_policy_skip_leaves_the_weights_untouched_by_bad_batches(make_cfg):
    kwargs = setup_loop(make_cfg, aug="none", batches=4)
    model = kwargs["model"]
    kwargs["parts"].loss_fn = lambda logits, target: logits.sum() * float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    guard = engine.NanGuard(policy="skip", max_skips=10)
    done = engine.train_one_epoch(**kwargs, nan_guard=guard)
    assert guard.skipped == 4 and done.seen == 0
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    with pytest.raises(engine.NonFiniteLossError, match="max_nan_skips=2"):
        engine.train_one_epoch(**kwargs, nan_guard=engine.NanGuard(policy="skip", max_skips=2))


def test_a_skipped_last_batch_leaves_its_window_to_the_others(make_cfg):
    """The window's good batches make its step; fp16's scaler once asserted ("No inf checks
    were recorded") on an empty window, and the good gradients were thrown away."""
    kwargs = setup_loop(make_cfg, aug="none", batches=4)
    parts = kwargs["parts"]
    parts.scaler = torch.amp.GradScaler("cpu", enabled=True)
    parts.loss_fn = nan_at(parts.loss_fn, 4)
    steps = parts.scheduler.last_epoch
    before = [p.detach().clone() for p in kwargs["model"].parameters()]
    guard = engine.NanGuard(policy="skip", max_skips=10)
    done = engine.train_one_epoch(
        **kwargs, nan_guard=guard, settings=engine.StepSettings(accumulate_grad_batches=4)
    )
    assert guard.skipped == 1 and done.batches == 4 and done.seen == 24
    assert parts.scheduler.last_epoch == steps + 1, "batches 1-3 make the window's step"
    after = list(kwargs["model"].parameters())
    assert not all(torch.equal(p, b) for p, b in zip(after, before, strict=True))


def test_a_skipped_batch_at_a_window_boundary_keeps_the_windows_step(make_cfg):
    """Windows of 2 over 4 batches, batch 2 not finite: still 2 steps (batch 1's was lost)."""
    kwargs = setup_loop(make_cfg, aug="none", batches=4)
    parts = kwargs["parts"]
    parts.loss_fn = nan_at(parts.loss_fn, 2)
    steps = parts.scheduler.last_epoch
    guard = engine.NanGuard(policy="skip", max_skips=10)
    engine.train_one_epoch(
        **kwargs, nan_guard=guard, settings=engine.StepSettings(accumulate_grad_batches=2)
    )
    assert guard.skipped == 1 and parts.scheduler.last_epoch == steps + 2


def test_a_stopped_epoch_continues_where_it_stopped(make_cfg):
    """Stopping after batch 5 and continuing gives the same sums as one pass."""
    torch.manual_seed(0)
    whole = setup_loop(make_cfg, aug="basic", batches=12)
    whole["loader"].set_epoch(1)
    state = {k: v.clone() for k, v in whole["model"].state_dict().items()}
    full = engine.train_one_epoch(**whole)

    torch.manual_seed(0)
    parts = setup_loop(make_cfg, aug="basic", batches=12)
    parts["model"].load_state_dict(state)
    parts["loader"].set_epoch(1)
    asked = iter(range(100))
    first = engine.train_one_epoch(**parts, should_stop=lambda: next(asked) == 4)
    assert not first.finished and first.batches == 5
    parts["loader"].set_epoch(1, start_batch=first.batches)
    rest = engine.train_one_epoch(**parts, progress=first)
    assert rest.finished and rest.batches == 12 and rest.seen == full.seen
    assert rest.loss == pytest.approx(full.loss, rel=1e-5)
    for a, b in zip(whole["model"].parameters(), parts["model"].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
