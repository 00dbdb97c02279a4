"""Out-of-fold outputs: the classifier layer of each model family, ids kept with images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from runner.data.sets.imagefolder import load_imagefolder
from runner.models.cifar_resnet import cifar_resnet
from runner.models.factories import create_timm_model, create_torchvision_model
from runner.training.oof import classifier_layer, predict_split
from tests.datagen import make_imagefolder, write_bad_files

CPU = torch.device("cpu")


class ToFloat(nn.Module):
    """Stands for the augmentation's eval path: uint8 -> [0, 1]."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: create_timm_model(3, "resnet10t"), "fc"),
        (lambda: create_timm_model(3, "vit_tiny_patch16_224", img_size=32), "head"),
        (lambda: create_torchvision_model(3, "resnet18"), "fc"),
        (lambda: cifar_resnet(3, depth=8), "fc"),
    ],
)
def test_the_classifier_layer_of_each_model_family(build, expected):
    model = build()
    layer = classifier_layer(model, 3)
    assert layer is dict(model.named_modules())[expected]


def test_a_model_without_a_classifier_layer_is_named():
    with pytest.raises(ValueError, match="Sequential has no classifier layer"):
        classifier_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), 3)


def test_predictions_keep_every_id_with_its_image_when_a_streamed_file_fails(tmp_path):
    root = make_imagefolder(tmp_path / "pics", per_class=5, size=20)
    write_bad_files(root / "train" / "cat")
    (root / "train" / "cat" / "zero.jpg").unlink()
    (root / "train" / "cat" / "notes.txt").unlink()
    common = {"image_size": 16, "num_workers": 0, "val_fraction": 0, "test_fraction": 0}
    streamed = load_imagefolder(str(root), resident=False, **common).train
    resident = load_imagefolder(str(root), resident=True, **common).train
    assert "train/cat/truncated.jpg" in set(streamed.ids), "only decoding finds it"
    torch.manual_seed(0)
    model = create_timm_model(3, "resnet10t").eval()
    outputs = [
        predict_split(model, split, 3, ToFloat(), nn.Identity(), CPU, "32", batch_size=4)
        for split in (streamed, resident)
    ]
    for out in outputs:
        assert "train/cat/truncated.jpg" not in set(out.sample_id)
        assert out.probabilities.shape == (15, 3) and out.embeddings.shape == (15, 512)
        np.testing.assert_allclose(out.probabilities.sum(1), 1, atol=1e-5)
    by_id = [dict(zip(o.sample_id, o.probabilities, strict=True)) for o in outputs]
    assert set(by_id[0]) == set(by_id[1])
    for sample_id, probabilities in by_id[0].items():
        np.testing.assert_allclose(probabilities, by_id[1][sample_id], atol=1e-5)
    labels = dict(zip(outputs[0].sample_id, outputs[0].label, strict=True))
    assert labels["train/fox/000.jpg"] == 2
