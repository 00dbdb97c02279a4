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
    PretrainedWeightsError,
    create_timm_model,
    create_torchvision_model,
    pretrained_normalization,
)


def test_timm_model_gets_the_data_class_count():
    model = create_timm_model(num_classes=4, name="resnet10t")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert pretrained_normalization(model) is None


def test_unknown_timm_name_suggests_similar_ones():
    with pytest.raises(ValueError, match=r"model\.name='resnet_18'.*resnet"):
        create_timm_model(num_classes=4, name="resnet_18")


def test_pretrained_without_network_says_how_to_use_a_local_file(monkeypatch, tmp_path):
    # An endpoint that refuses connections and an empty cache: the offline situation.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError) as info:
        create_timm_model(num_classes=10, name="resnet18", pretrained=True)
    assert "model.pretrained_file=" in str(info.value) and "unreachable" in str(info.value)
    assert time.monotonic() - start < 30, "an offline machine must not wait on retries"


def test_timm_pretrained_from_a_local_file_loads_the_backbone(tmp_path):
    source = timm.create_model("resnet10t", num_classes=1000)
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    model = create_timm_model(num_classes=5, name="resnet10t", pretrained_file=str(path))
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model.get_classifier().out_features == 5
    assert pretrained_normalization(model)[0] == pytest.approx(IMAGENET_MEAN)


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
