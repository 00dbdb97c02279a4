"""The analysis reports on small real models and predictions (no training)."""

from __future__ import annotations

import logging

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.models import resnet18

from runner.augment.device import DeviceAugment
from runner.augment.normalize import Normalize
from runner.data.splits import Split
from runner.reports.analysis import AnalysisInputs, most_confident_mistakes, write_reports
from runner.reports.calibration import expected_calibration_error
from runner.reports.gradcam import GradCamError, find_gradcam_layer, gradcam_maps
from runner.tracking.null import NullTracker


@pytest.fixture(scope="module")
def tv_resnet():
    torch.manual_seed(0)
    return resnet18(num_classes=3).eval()


def test_auto_layer_is_the_last_feature_map_big_enough(tv_resnet):
    example = torch.randn(1, 3, 64, 64)  # layer3 gives 4x4, layer4 2x2
    assert find_gradcam_layer(tv_resnet, example, "auto", min_size=4)[0] == "layer3"
    assert find_gradcam_layer(tv_resnet, example, "auto", min_size=1)[0] == "layer4"
    assert find_gradcam_layer(tv_resnet, example, "layer2.1")[0] == "layer2.1"
    with pytest.raises(GradCamError, match=r"analysis\.gradcam_layer='layer9' is not a module"):
        find_gradcam_layer(tv_resnet, example, "layer9")
    with pytest.raises(GradCamError, match="no layer with a feature map of at least 64x64"):
        find_gradcam_layer(tv_resnet, example, "auto", min_size=64)


def test_auto_layer_of_a_timm_model_is_its_last_stage_that_fits():
    """At 32 px a bottleneck ResNet got layer3.0.bn1, a layer early in the next stage."""
    import timm
    from torchvision.models import mobilenet_v2

    example = torch.randn(1, 3, 32, 32)
    for name, stage in (("test_resnet", "layer2"), ("efficientnet_b0", "blocks.2")):
        model = timm.create_model(name, num_classes=3).eval()  # bottleneck blocks
        assert find_gradcam_layer(model, example)[0] == stage, name
    # A model without timm's stage names keeps the last layer whose map fits, also
    # inside a container whose own output is 1x1.
    assert find_gradcam_layer(mobilenet_v2(num_classes=3).eval(), example)[0].startswith(
        "features."
    )


def test_gradcam_maps_are_per_image_heat_maps_in_0_1(tv_resnet):
    images = torch.randn(2, 3, 64, 64)
    _, layer = find_gradcam_layer(tv_resnet, images[:1])
    maps = gradcam_maps(tv_resnet, images, torch.tensor([0, 2]), layer)
    assert maps.shape == (2, 64, 64)
    assert maps.min() >= 0 and maps.max() <= 1 and maps.flatten(1).std(1).min() > 0


def test_the_confusion_matrix_figure_stops_growing_with_many_classes(tmp_path):
    """300 classes once drew a 16,440 px square (12.6 GB of memory); it is capped now."""
    from PIL import Image

    from runner.reports.analysis import MAX_CONFUSION_INCHES, plot_confusion_matrix

    classes = 300
    matrix = torch.eye(classes, dtype=torch.long) * 3
    plot_confusion_matrix(matrix, [f"class_{i}" for i in range(classes)], tmp_path / "cm.png")
    width, height = Image.open(tmp_path / "cm.png").size
    assert width <= MAX_CONFUSION_INCHES * 120 and height <= MAX_CONFUSION_INCHES * 120
    plot_confusion_matrix(torch.eye(3, dtype=torch.long), ["a", "b", "c"], tmp_path / "3.png")
    assert Image.open(tmp_path / "3.png").size[0] < 1000  # a few classes: a small figure


def test_calibration_error_and_confident_mistakes():
    labels = torch.tensor([0, 1, 2, 0])
    right = torch.nn.functional.one_hot(labels, 3).float()
    assert expected_calibration_error(right, labels, 15) == pytest.approx(0.0, abs=1e-6)
    wrong = torch.nn.functional.one_hot((labels + 1) % 3, 3).float()
    assert expected_calibration_error(wrong, labels, 15) == pytest.approx(1.0)
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.5, 0.4]])
    assert most_confident_mistakes(probs, labels, 5).tolist() == [2, 3]


def six_test_images(model, predicted: int = 6, history=()):
    """The inputs of 6 test images of 3 classes; `predicted` of them have predictions."""
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    return AnalysisInputs(
        model,
        DeviceAugment(image_size=32).eval(),
        Normalize((0.5,) * 3, (0.25,) * 3),
        Split(images, labels),
        torch.rand(predicted, 3).softmax(-1),
        labels[:predicted],
        torch.eye(3, dtype=torch.long) * 2,
        ["a", "b", "c"],
        torch.device("cpu"),
        list(history),
    )


def report_settings(gradcam_layer: str = "auto"):
    return OmegaConf.create(
        {
            "enabled": True,
            "num_misclassified": 4,
            "num_gradcam": 2,
            "gradcam_layer": gradcam_layer,
            "gradcam_min_size": 4,
            "calibration_bins": 10,
        }
    )


def test_a_failing_report_does_not_stop_the_others(tv_resnet, tmp_path, caplog):
    inputs = six_test_images(tv_resnet, history=[{"epoch": 1, "train/loss": 1.0, "lr": 0.1}])
    settings = report_settings(gradcam_layer="nope")
    with caplog.at_level(logging.ERROR, logger="runner"):
        metrics = write_reports(settings, inputs, tmp_path, NullTracker())
    assert "gradcam.png was not written" in caplog.text
    assert not (tmp_path / "gradcam.png").exists()
    for name in (
        "per_class.csv",
        "confusion_matrix.png",
        "misclassified.png",
        "reliability.png",
        "learning_curves.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    assert 0 <= metrics["test/ece"] <= 1


def test_images_of_two_channels_are_drawn_by_their_first(tmp_path, caplog):
    """data.channels=2: misclassified.png, gradcam.png and aug_preview.png were not
    written ("Invalid shape (32, 32, 2) for image data")."""
    from runner.reports.aug_preview import Preview, draw_preview

    torch.manual_seed(0)
    model = resnet18(num_classes=3).eval()
    model.conv1 = torch.nn.Conv2d(2, 64, 7, 2, 3, bias=False)
    inputs = six_test_images(model)
    inputs.split = Split(inputs.split.images[:, :2], inputs.split.labels)
    inputs.normalize = Normalize((0.5,) * 2, (0.25,) * 2)
    with caplog.at_level(logging.ERROR, logger="runner"):
        write_reports(report_settings(), inputs, tmp_path, NullTracker())
    assert "was not written" not in caplog.text
    assert (tmp_path / "misclassified.png").is_file() and (tmp_path / "gradcam.png").is_file()
    preview = Preview(torch.rand(4, 2, 16, 16), 2, ["a", "b"], "aug")
    assert draw_preview(preview, tmp_path / "aug_preview.png").stat().st_size > 0


def test_per_image_reports_are_left_out_when_a_test_image_did_not_decode(
    tv_resnet, tmp_path, caplog
):
    # A streamed test split of 6 where one file failed to decode while testing: the
    # evaluation has 5 predictions, so position i of the predictions is not image i.
    inputs = six_test_images(tv_resnet, predicted=5)
    settings = report_settings()
    with caplog.at_level(logging.WARNING, logger="runner"):
        metrics = write_reports(settings, inputs, tmp_path, NullTracker())
    assert "1 of the 6 test images did not decode while testing" in caplog.text
    assert not (tmp_path / "misclassified.png").exists()
    assert not (tmp_path / "gradcam.png").exists()
    for name in ("per_class.csv", "confusion_matrix.png", "reliability.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert 0 <= metrics["test/ece"] <= 1


@pytest.mark.parametrize("path", ["/runs/ck[v2]/best.pt", "/runs/x[/y]/best.pt"])
def test_the_summary_shows_a_path_with_brackets_as_written(path, capsys):
    """Rich read `[v2]` as markup (dropped) and `[/y]` as a closing tag (MarkupError)."""
    from runner.reports.console import print_config, print_summary

    print_summary([("checkpoint", path), ("[b]", "x")])
    print_config(OmegaConf.create({"ckpt": path}))
    shown = capsys.readouterr().out
    assert shown.count(path) == 2 and "[b]" in shown, shown


def test_report_files_are_utf8_on_a_locale_that_is_not(tmp_path):
    """Written in the locale's encoding, per_class.csv of a class named 'café' failed the
    run at its end on an ASCII locale (and summary.md a sweep's, label_noise.csv a run's)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    script = (
        "import sys, torch; from pathlib import Path\n"
        "from runner.reports.analysis import write_per_class_csv\n"
        "from runner.reports.per_class import per_class_table\n"
        # Escaped: the command line itself is read in the ASCII locale.
        "table = per_class_table(torch.eye(2, dtype=torch.long), ['caf\\u00e9', 'th\\u00e9'])\n"
        "write_per_class_csv(table, Path(sys.argv[1]))\n"
    )
    path = tmp_path / "per_class.csv"
    ascii_locale = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        env={**os.environ, **ascii_locale},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "café" in path.read_text(encoding="utf-8")


def test_long_class_names_are_cut_to_fit_their_image_titles():
    """A 50-character class name ran into the next image's title and hid its probability
    (misclassified.png), and the audit's caption, cut whole at 60 characters, kept "t" of
    the sample id."""
    from runner.reports.drawing import fitted
    from runner.sweeps.audit_report import _fit

    name = "Acrocephalus_scirpaceus_juvenile_plumage_variant_03"
    assert fitted(name) == "Acrocephalus_scir\u2026" and fitted("Ærø") == "Ærø"
    assert _fit(name) == "Acrocephalus_s\u2026"
    sample_id = f"train/{name}/img_0004.png"
    assert _fit(sample_id, 34, keep_end=True) == "\u2026" + sample_id[-33:]
    assert _fit(sample_id, 34, keep_end=True).endswith("/img_0004.png")


def test_gradcam_images_are_spread_over_the_test_split():
    """A test folder lists its classes in order: the first 8 images were of 3 of 200."""
    from runner.reports.analysis import spread_indices

    assert spread_indices(3000, 8).tolist() == [0, 428, 857, 1285, 1714, 2142, 2571, 2999]
    assert spread_indices(5, 8).tolist() == [0, 1, 2, 3, 4]
    assert spread_indices(8, 8).tolist() == list(range(8))
