"""Model creation: timm and torchvision, pretrained weights from a local file, offline errors."""

from __future__ import annotations

import time

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from runner.models.factories import (
    IMAGENET_MEAN,
    create_timm_model,
    create_torchvision_model,
    pretrained_normalization,
)
from runner.models.weights import PretrainedWeightsError


def test_timm_model_gets_the_data_class_count():
    model = create_timm_model(num_classes=4, name="resnet10t")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert pretrained_normalization(model) is None


def test_unknown_timm_name_suggests_similar_ones():
    with pytest.raises(ValueError, match=r"model\.name='resnet_18'.*resnet"):
        create_timm_model(num_classes=4, name="resnet_18")


def test_a_key_added_to_the_model_group_that_timm_does_not_take_is_refused_at_start(make_cfg):
    """+model.drop_rat=0.1 failed as a TypeError traceback once the data was built."""
    from runner.config.errors import ConfigError
    from runner.models.checks import check_model_config

    with pytest.raises(ConfigError, match=r"model\.drop_rat=0\.1 is not an argument of timm's"):
        check_model_config(make_cfg("+model.drop_rat=0.1", tiny=False).model)
    check_model_config(make_cfg("model=vit_tiny", "model.img_size=32", tiny=False).model)
    # timm's own wording for some families ("unexpected keyword argument(s): ['foo']").
    with pytest.raises(ConfigError, match=r"model\.foo=1 is not an argument of timm's"):
        check_model_config(
            make_cfg("model=timm", "model.name=poolformer_s12", "+model.foo=1").model
        )


def test_a_key_added_to_a_torchvision_model_group_that_it_does_not_take_is_refused(make_cfg):
    """+model.foo=1 with model=tv_resnet50 failed as a TypeError after the data was built."""
    from runner.config.errors import ConfigError
    from runner.models.checks import check_model_config

    with pytest.raises(ConfigError, match=r"model\.foo=1 is not an argument of torchvision's"):
        check_model_config(make_cfg("model=tv_resnet50", "+model.foo=1", tiny=False).model)
    check_model_config(
        make_cfg("model=tv_resnet50", "+model.zero_init_residual=true", tiny=False).model
    )


def test_model_timm_builds_a_timm_model_that_takes_no_drop_path_rate(make_cfg):
    """model=timm passed drop_path_rate=0.0 to every model: densenet121, vgg11, dla34 and
    others failed with a TypeError after the data was built."""
    from hydra.utils import instantiate

    from runner.config.errors import ConfigError
    from runner.models.checks import check_model_config

    cfg = make_cfg("model=timm", "model.name=dla34")
    check_model_config(cfg.model)
    with torch.device("meta"):
        assert instantiate(cfg.model)(num_classes=3) is not None
    given = make_cfg("model=timm", "model.name=dla34", "model.drop_path_rate=0.1")
    with pytest.raises(ConfigError, match=r"model\.drop_path_rate=0\.1 is not an argument"):
        check_model_config(given.model)
    # 0 is passed to timm as well (a preset's, with another name): checked too.
    preset = make_cfg("model=resnet18", "model.name=dla34", tiny=False)
    with pytest.raises(ConfigError, match=r"model\.drop_path_rate=0\.0 is not an argument"):
        check_model_config(preset.model)


def test_pretrained_without_network_says_how_to_use_a_local_file(monkeypatch, tmp_path):
    # An endpoint that refuses connections and an empty cache: the offline situation.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as info:
        create_timm_model(num_classes=10, name="resnet18", pretrained=True)
    assert "model.pretrained_file=" in str(info.value) and "unreachable" in str(info.value)
    assert time.monotonic() - start < 30, "an offline machine must not wait on retries"


def test_pretrained_weights_out_of_reach_are_refused_before_the_data(monkeypatch, tmp_path):
    """The weights were fetched when the model was built, after the data: a large folder
    was decoded whole before the run said it could not get them."""
    from omegaconf import OmegaConf

    from runner.models.checks import check_weights_at_hand

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = {"_target_": "runner.models.factories.create_timm_model", "name": "resnet18"}
    with pytest.raises(PretrainedWeightsError, match=r"'resnet18' are not cached and the Hug"):
        check_weights_at_hand(OmegaConf.create({**model, "pretrained": True}))
    check_weights_at_hand(OmegaConf.create({**model, "pretrained": False}))
    # Cached as huggingface_hub keeps a download: the run may go on offline.
    repo = tmp_path / "hub" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "model.safetensors").write_bytes(b"x")
    check_weights_at_hand(OmegaConf.create({**model, "pretrained": True}))


def test_timm_pretrained_from_a_local_file_loads_the_backbone(tmp_path):
    source = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_timm_model(num_classes=5, name="resnet10t", pretrained_file=str(path))
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model.get_classifier().out_features == 5
    assert pretrained_normalization(model)[0] == pytest.approx(IMAGENET_MEAN)


@pytest.mark.parametrize("layout", ["another_architecture", "wrapped"])
def test_a_timm_weights_file_that_loads_nothing_is_refused(tmp_path, layout):
    """For another class count timm loads the file loosely: a file of another model, or
    one whose names carry a Lightning module's 'model.' prefix, trained from scratch."""
    if layout == "another_architecture":
        weights = timm.create_model("test_vit", num_classes=1000).state_dict()
    else:
        own = timm.create_model("resnet10t", num_classes=1000).state_dict()
        weights = {f"model.{k}": v for k, v in own.items()}
    path = tmp_path / "model.safetensors"
    save_file(weights, str(path))
    with pytest.raises(
        PretrainedWeightsError, match=r"does not fit model.name='resnet10t': \d+ of"
    ):
        create_timm_model(num_classes=5, name="resnet10t", pretrained_file=str(path))


def test_a_timm_weights_file_leaves_the_head_to_the_runs_random_stream(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=1000).state_dict(), str(path))
    heads = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        model = create_timm_model(num_classes=5, name="resnet10t", pretrained_file=str(path))
        heads.append(model.get_classifier().weight)
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])


@pytest.mark.parametrize("channels", [1, 4])
def test_pretrained_weights_adapted_to_other_channels_get_stats_for_each(tmp_path, channels):
    """The weights' three RGB values normalised 1- and 4-channel input: the run was refused."""
    path = tmp_path / "model.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=1000).state_dict(), str(path))
    model = create_timm_model(
        num_classes=5, name="test_resnet", pretrained_file=str(path), in_chans=channels
    )
    mean, std = pretrained_normalization(model)
    assert len(mean) == len(std) == channels
    rgb = model.pretrained_cfg["mean"]
    expected = [sum(rgb) / 3] if channels == 1 else [*rgb, rgb[0]]
    assert mean == pytest.approx(expected)
    assert model(torch.rand(2, channels, 32, 32)).shape == (2, 5)


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(PretrainedWeightsError, match=r"nope\.safetensors.*no such file"):
        create_timm_model(
            num_classes=5, name="resnet10t", pretrained_file=str(tmp_path / "nope.safetensors")
        )


def test_torchvision_model_from_a_local_file_skips_the_head(tmp_path):
    source = create_torchvision_model(num_classes=1000, name="resnet18")
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = create_torchvision_model(num_classes=3, name="resnet18", pretrained_file=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 3


def test_torchvision_weights_of_a_wrapped_model_load_and_of_another_model_are_refused(tmp_path):
    """A DDP/Lightning prefix is taken off; a file that fits only the head is an error."""
    source = create_torchvision_model(num_classes=1000, name="resnet18")
    wrapped = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, wrapped)
    model = create_torchvision_model(num_classes=3, name="resnet18", pretrained_file=str(wrapped))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    other = tmp_path / "mobilenet.pth"
    torch.save(create_torchvision_model(num_classes=3, name="mobilenet_v2").state_dict(), other)
    with pytest.raises(PretrainedWeightsError, match=r"mobilenet\.pth.*does not fit ResNet"):
        create_torchvision_model(num_classes=3, name="resnet18", pretrained_file=str(other))


def test_files_that_are_not_state_dicts_are_refused_with_the_file_named(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\xff" * 64)
    for create, name in ((create_timm_model, "resnet10t"), (create_torchvision_model, "resnet18")):
        with pytest.raises(PretrainedWeightsError, match=r"broken\.safetensors"):
            create(num_classes=3, name=name, pretrained_file=str(broken))
    whole = tmp_path / "whole.pth"
    torch.save(create_torchvision_model(num_classes=3, name="resnet18"), whole)
    with pytest.raises(PretrainedWeightsError, match=r"whole\.pth.*state_dict"):
        create_torchvision_model(num_classes=3, name="resnet18", pretrained_file=str(whole))


def test_a_timm_weights_file_that_is_no_checkpoint_is_named_so_not_another_model(tmp_path):
    """A text file was said not to fit model.name ('KeyError: 101'), with the advice to
    change the model."""
    notes = tmp_path / "notes.pt"
    notes.write_text("these are notes, not weights\n")
    with pytest.raises(PretrainedWeightsError, match=r"does not load .* a state dict") as err:
        create_timm_model(num_classes=3, name="test_resnet", pretrained_file=str(notes))
    assert "set model.name" not in str(err.value)


def test_a_last_pt_as_pretrained_file_is_refused_naming_its_best_pt_and_resume(tmp_path):
    """A last.pt started a run from its weights with the head re-initialised and the
    earlier run's normalisation lost, without a word."""
    from runner.models.checks import check_model_config

    model = create_timm_model(num_classes=3, name="test_resnet")
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir()
    torch.save({"model": model.state_dict(), "optimizer": {}, "state": {"epoch": 1}}, last)
    cfg = {"_target_": "runner.models.factories.create_timm_model", "name": "test_resnet"}
    with pytest.raises(PretrainedWeightsError, match=r"last\.pt.*training-state") as err:
        check_model_config({**cfg, "pretrained_file": str(last)})
    assert f"its best.pt ({last.parent / 'best.pt'})" in str(err.value)
    assert f"trainer.resume={last}" in str(err.value)
    best = last.with_name("best.pt")
    torch.save({"model": model.state_dict(), "class_names": ["a", "b", "c"]}, best)
    check_model_config({**cfg, "pretrained_file": str(best)})  # a best.pt is what it takes


def test_a_torchvision_model_without_a_linear_head_is_refused_with_weights():
    """SqueezeNet's head is a convolution: replacing the last Linear would keep 1000 outputs."""
    from torchvision.models import squeezenet1_1

    from runner.config.errors import ConfigError
    from runner.models.factories import _replace_head

    with pytest.raises(ConfigError, match=r"model\.weights.*SqueezeNet.*no"):
        _replace_head(squeezenet1_1(), 10)


def test_an_unknown_timm_pretrained_tag_lists_the_tags():
    with pytest.raises(ValueError, match=r"resnet10t\.bogus.*'bogus'.*resnet10t\.c3_in1k"):
        create_timm_model(num_classes=4, name="resnet10t.bogus")
    assert create_timm_model(num_classes=4, name="resnet10t.c3_in1k").num_classes == 4


def test_both_heads_of_a_distilled_timm_model_train_at_the_heads_lr():
    """get_classifier() gives (head, head_dist): only head_dist got optim.lr, head 10x less."""
    from runner.models.heads import classifier_layer
    from runner.training.optim import build_optimizer

    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", num_classes=10, img_size=32, patch_size=8
    )
    assert classifier_layer(model) is model.head  # the embedding is the main head's input
    optimizer = build_optimizer(
        model, lambda params: torch.optim.AdamW(params, lr=1e-3), 0.05, backbone_lr_mult=0.1
    )
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, parameter in model.named_parameters():
        head = name.startswith(("head.", "head_dist."))
        assert lr_of[id(parameter)] == pytest.approx(1e-3 if head else 1e-4), name


def test_a_torchvision_model_with_auxiliary_logits_gives_plain_logits_in_training():
    """googlenet passed the eval-mode check, then failed its first step on a named tuple."""
    model = create_torchvision_model(num_classes=3, name="googlenet").train()
    logits = model(torch.rand(2, 3, 64, 64))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)


def test_a_model_built_with_auxiliary_heads_trains_on_plain_logits():
    """With weights, torchvision refuses aux_logits=False and inception_v3 keeps its head
    (googlenet with weights failed on aux_logits=False, which the builder refuses)."""
    from torchvision.models import googlenet

    from runner.models.factories import without_aux_logits

    model = without_aux_logits(googlenet(aux_logits=True, init_weights=False)).train()
    assert model.aux1 is None and model.aux2 is None
    assert isinstance(model(torch.rand(2, 3, 64, 64)), torch.Tensor)


def test_backbone_lr_mult_on_a_model_without_a_head_is_refused():
    """Every parameter took optim.lr x backbone_lr_mult, and no group had optim.lr."""
    from runner.config.errors import ConfigError
    from runner.training.optim import build_optimizer

    headless = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    with pytest.raises(ConfigError, match=r"optim\.backbone_lr_mult=0\.1 needs a classifier"):
        build_optimizer(
            headless, lambda params: torch.optim.SGD(params, lr=1e-3), 0.0, backbone_lr_mult=0.1
        )


def test_a_best_pt_of_the_same_classes_fine_tunes_with_its_head_and_normalisation(tmp_path):
    """timm dropped a best.pt's trained head (it keeps one only for 1000 classes) and both
    factories normalised with ImageNet's statistics, not the run's: a digits model fell
    from 0.81 to 0.10 test accuracy at lr 1e-9."""
    from runner.models.weights import keep_trained_head

    trained = timm.create_model("test_resnet", num_classes=10)
    stats = {"mean": [0.3, 0.3, 0.3], "std": [0.2, 0.2, 0.2]}
    best = tmp_path / "best.pt"
    names = [f"c{i}" for i in range(10)]
    payload = {"model": trained.state_dict(), "normalization": stats, "class_names": names}
    torch.save(payload, best)
    model = create_timm_model(num_classes=10, name="test_resnet", pretrained_file=str(best))
    assert model.runner_normalization == ((0.3, 0.3, 0.3), (0.2, 0.2, 0.2))
    # Other classes, even as many: the head stays new (trained for other classes).
    assert not keep_trained_head(model, str(best), list(reversed(names)))
    assert not torch.equal(model.fc.weight, trained.fc.weight)
    assert keep_trained_head(model, str(best), names)  # build_parts, with the data's names
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    # Another class count: the head is new, the body and the normalisation the run's.
    other = create_timm_model(num_classes=4, name="test_resnet", pretrained_file=str(best))
    assert other.get_classifier().out_features == 4
    assert other.runner_normalization == model.runner_normalization


def test_a_deeper_models_file_is_refused_for_a_torchvision_model(tmp_path):
    """resnet34's file loaded into resnet18: every tensor resnet18 needs was in it."""
    import torchvision

    state = torchvision.models.resnet18(num_classes=10).state_dict()
    state["layer1.2.conv1.weight"] = torch.zeros(64, 64, 3, 3)  # as resnet34's third block
    torch.save(state, tmp_path / "deeper.pth")
    with pytest.raises(PretrainedWeightsError, match=r"1 tensors the model has not \(e\.g\. lay"):
        create_torchvision_model(
            num_classes=10, name="resnet18", pretrained_file=str(tmp_path / "deeper.pth")
        )


def test_a_distilled_timm_models_own_weights_load_with_both_heads_new(tmp_path):
    """The distillation head counted as 'not loaded': DeiT's own weights were refused."""
    source = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=4)
    save_file(source.state_dict(), str(tmp_path / "deit.safetensors"))
    model = create_timm_model(
        num_classes=10,
        name="deit_tiny_distilled_patch16_224",
        pretrained_file=str(tmp_path / "deit.safetensors"),
        img_size=32,
        patch_size=4,
    )
    assert model.head.out_features == model.head_dist.out_features == 10


def test_googlenet_weights_from_a_file_must_say_whether_they_rescale_their_input(tmp_path):
    """torchvision's released googlenet weights expect transform_input=True, which a model
    built without model.weights lacks: their input was scaled wrongly, silently."""
    from omegaconf import OmegaConf
    from torchvision.models import googlenet

    from runner.config.errors import ConfigError
    from runner.models.checks import check_model_config

    path = tmp_path / "googlenet.pth"
    torch.save(googlenet(aux_logits=False, init_weights=False).state_dict(), path)
    target = "runner.models.factories.create_torchvision_model"
    settings = {"_target_": target, "name": "googlenet", "weights": None}
    with pytest.raises(ConfigError, match=r"add \+model.transform_input=true for torchvision"):
        check_model_config(OmegaConf.create({**settings, "pretrained_file": str(path)}))
    said = {**settings, "pretrained_file": str(path), "transform_input": True}
    check_model_config(OmegaConf.create(said))
    model = create_torchvision_model(
        num_classes=3, **{k: v for k, v in said.items() if k != "_target_"}
    )
    assert model.transform_input is True
    # A runner best.pt says what its model was built with.
    best = {"model": {}, "config": "model:\n  name: googlenet\n  weights: IMAGENET1K_V1\n"}
    torch.save(best, tmp_path / "best.pt")
    with pytest.raises(
        ConfigError, match=r"this best\.pt's googlenet was built with transform_input=True"
    ):
        check_model_config(
            OmegaConf.create({**settings, "pretrained_file": str(tmp_path / "best.pt")})
        )
