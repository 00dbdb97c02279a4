"""mode=eval and mode=predict from a real trained checkpoint; analysis reports in MLflow."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from runner.cli import run
from runner.config.errors import ConfigError
from runner.data.decoding import DataError, to_grayscale
from runner.from_checkpoint import resolve_ckpt
from runner.training.best_checkpoint import read_best
from runner.training.checkpoint_io import CheckpointError
from runner.training.final_eval import FlipTTA
from tests.conftest import compose_run, query

ANALYSIS_FILES = ("confusion_matrix.png", "misclassified.png", "gradcam.png", "reliability.png")


def artifacts_of(db: Path, run_id: str) -> Path:
    ((uri,),) = query(db, "SELECT artifact_uri FROM runs WHERE run_uuid = ?", run_id)
    return Path(uri.removeprefix("file://"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run with MLflow and the analysis reports on."""
    tmp = tmp_path_factory.mktemp("trained")
    run(compose_run(tmp, "train", "analysis.enabled=true", "logger.experiment_name=mine"))
    db = tmp / "outputs" / "mlflow.db"
    ((run_id,),) = query(db, "SELECT run_uuid FROM runs")
    return tmp, db, run_id


@pytest.mark.slow
def test_training_logs_the_analysis_reports_and_links_best_pt_to_its_run(trained):
    tmp, db, run_id = trained
    artifacts = artifacts_of(db, run_id)
    for name in (*ANALYSIS_FILES, "learning_curves.png", "per_class.csv"):
        assert (tmp / "train" / name).stat().st_size > 1000 or name.endswith(".csv"), name
        assert (artifacts / name).is_file(), name
    (ece,) = query(db, "SELECT value FROM metrics WHERE key = 'test/ece'")[0]
    assert 0.0 <= ece <= 1.0
    best = torch.load(tmp / "train" / "checkpoints" / "best.pt", weights_only=True)
    assert best["mlflow_run_id"] == run_id


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "key"),
    [("eval", "hydra.run.dir"), ("eval", "paths.run_dir"), ("predict", "hydra.run.dir")],
)
def test_eval_into_a_training_runs_dir_is_refused_before_anything_is_written(trained, mode, key):
    """Its metrics.json (best_epoch, epochs) and reports were replaced by eval's; through
    paths.run_dir, and with mode=predict (its .hydra/ config record), they still were."""
    from tests.conftest import run_cli

    tmp, _, _ = trained
    before = {p: p.read_bytes() for p in (tmp / "train").rglob("*") if p.is_file()}
    ckpt = tmp / "train" / "checkpoints" / "best.pt"
    images = tmp / "train" / "learning_curves.png"
    done = run_cli(
        f"mode={mode}",
        f"ckpt={ckpt}",
        f"predict.input={images}",
        f"{key}={tmp / 'train'}",
        f"paths.output_dir={tmp / 'out'}",
        "logger=none",
    )
    assert done.returncode == 1
    assert f"{key}={str(tmp / 'train')!r} holds a training run (checkpoints/)" in done.stderr
    after = {p: p.read_bytes() for p in (tmp / "train").rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.slow
def test_eval_reproduces_the_test_metrics_in_a_new_linked_run(trained):
    tmp, db, run_id = trained
    ckpt = tmp / "train" / "checkpoints" / "best.pt"
    acc = run(compose_run(tmp, "eval", "mode=eval", f"ckpt={ckpt}", "analysis.enabled=false"))
    trained_metrics = json.loads((tmp / "train" / "metrics.json").read_text())
    evaluated = json.loads((tmp / "eval" / "metrics.json").read_text())
    # Same weights, same data, same preprocessing: the same numbers.
    for key in ("test/acc", "test/loss", "test/macro_f1"):
        assert evaluated[key] == pytest.approx(trained_metrics[key], abs=1e-5), key
    assert acc == pytest.approx(evaluated["test/acc"])
    runs = dict(query(db, "SELECT run_uuid, status FROM runs"))
    assert len(runs) == 2 and set(runs.values()) == {"FINISHED"}
    (eval_id,) = set(runs) - {run_id}
    tags = dict(query(db, "SELECT key, value FROM tags WHERE run_uuid = ?", eval_id))
    assert tags["source_run_id"] == run_id and tags["mode"] == "eval"
    # In the training run's experiment (logger.experiment_name of its config), not "digits".
    experiments = query(
        db, "SELECT DISTINCT e.name FROM runs r JOIN experiments e USING (experiment_id)"
    )
    assert experiments == [("mine",)]
    # analysis.enabled=false: the per-class table only, no plots, no ECE.
    assert (tmp / "eval" / "per_class.csv").is_file()
    assert not any((tmp / "eval" / name).exists() for name in ANALYSIS_FILES)
    assert "test/ece" not in evaluated


@pytest.mark.slow
def test_eval_from_an_mlflow_run_id_with_flip_tta(trained, caplog):
    tmp, _, run_id = trained
    tta = ("mode=eval", f"ckpt=runs:/{run_id}", "eval.tta=flip", "analysis.enabled=true")
    run(compose_run(tmp, "eval_tta", *tta))
    # Trained with aug=basic (no flips): mirror images lowered the default digits run's
    # test/acc from 0.98 to 0.90, and nothing said why.
    assert "eval.tta=flip averages each image's logits with its mirror" in caplog.text
    evaluated = json.loads((tmp / "eval_tta" / "metrics.json").read_text())
    assert evaluated["tta"] == "flip" and evaluated["source_run_id"] == run_id
    # The model as the command named it; its downloaded copy's path apart (the tag held it).
    assert evaluated["ckpt"] == f"runs:/{run_id}"
    assert evaluated["ckpt_file"].startswith(str(tmp / "eval_tta" / "downloaded"))
    assert 0 <= evaluated["test/ece"] <= 1
    for name in ANALYSIS_FILES:
        assert (tmp / "eval_tta" / name).is_file(), name
    assert not (tmp / "eval_tta" / "learning_curves.png").exists(), "no history in eval"


def test_eval_on_stored_data_refuses_a_test_split_other_than_the_one_tested(trained, tmp_path):
    """A folder changed since training rebuilt another carved test split, which could hold
    images the model trained on, and eval scored it without a word."""
    tmp, db, run_id = trained
    best = read_best(tmp / "train" / "checkpoints" / "best.pt")
    assert best.test_ids_digest is not None
    logged = resolve_ckpt(f"runs:/{run_id}", compose_run(tmp, "x"), tmp_path / "from_mlflow")[0]
    assert read_best(logged).test_ids_digest == best.test_ids_digest  # the MLflow model too
    best.test_ids_digest = "0" * 16  # what a changed folder gives
    changed = tmp_path / "best.pt"
    torch.save(best.to_payload(), changed)
    before = query(db, "SELECT COUNT(*) FROM runs")
    with pytest.raises(DataError, match="not the one the training run was tested on"):
        run(compose_run(tmp, "eval_changed", "mode=eval", f"ckpt={changed}"))
    assert query(db, "SELECT COUNT(*) FROM runs") == before


def test_eval_on_current_data_decodes_at_the_checkpoints_image_size(trained):
    """It decoded at the data group's size (64 for data=imagefolder, a 224-px model's
    held-out set too) and the eval path resized to the model's: other metrics than the
    training run's on the same images."""
    tmp, _, _ = trained
    ckpt = tmp / "train" / "checkpoints" / "best.pt"
    current = ("mode=eval", f"ckpt={ckpt}", "eval.data=current", "data.image_size=16")
    run(compose_run(tmp, "eval_current_size", *current, "logger=none"))
    evaluated = json.loads((tmp / "eval_current_size" / "metrics.json").read_text())
    trained_metrics = json.loads((tmp / "train" / "metrics.json").read_text())
    assert evaluated["test/loss"] == pytest.approx(trained_metrics["test/loss"], abs=1e-5)


def test_eval_on_current_data_refuses_the_trained_data_split_another_way(trained):
    """The checkpoint's own data with another split seed was tested on a split carved
    anew from the images the model learnt from."""
    tmp, _, _ = trained
    ckpt = tmp / "train" / "checkpoints" / "best.pt"
    current = ("mode=eval", f"ckpt={ckpt}", "eval.data=current", "logger=none")
    with pytest.raises(DataError, match=r"synthetic is the data the checkpoint was trained on"):
        run(compose_run(tmp, "eval_resplit", *current, "data.split_seed=7"))
    assert not (tmp / "eval_resplit" / "metrics.json").exists()
    # Other classes are named as such, not blamed on the split keys, which are the run's.
    with pytest.raises(ConfigError, match=r"the data's classes .* differ from the checkpoint"):
        run(compose_run(tmp, "eval_classes", *current, "data.num_classes=5"))
    # Split as the run split it, the same data is tested: see the image size test above.


def test_eval_on_current_data_tells_a_carved_test_split_from_a_held_out_one(tmp_path, monkeypatch):
    """The trained folder named another way (a relative root, another data.name) and
    split another way was not recognised; a test/ folder added since, which the model
    never saw, was refused as if carved."""
    from tests.datagen import make_imagefolder

    root = make_imagefolder(tmp_path / "pics", per_class=10, splits=("train",), size=16)
    folder = ("data=imagefolder", "data.image_size=16", "data.cache_dir=null", "logger=none")
    small = ("trainer.max_epochs=1", "trainer.batch_size=8", "model=timm", "model.name=test_resnet")
    run(compose_run(tmp_path, "train", *folder, f"data.root={root}", *small, tiny=False))
    current = ("mode=eval", f"ckpt={tmp_path / 'train' / 'checkpoints' / 'best.pt'}")
    current += ("eval.data=current", "analysis.enabled=false", *folder)
    monkeypatch.chdir(tmp_path)
    resplit = ("data.root=pics", "data.name=my_pets", "data.split_seed=7")
    with pytest.raises(DataError, match=r"carved from its train listing"):
        run(compose_run(tmp_path, "eval_resplit", *current, *resplit, tiny=False))
    held_out = make_imagefolder(tmp_path / "new", per_class=3, splits=("test",), size=16)
    shutil.move(held_out / "test", root / "test")
    tested = run(compose_run(tmp_path, "eval_test", *current, f"data.root={root}", tiny=False))
    assert 0.0 <= tested <= 1.0


def test_eval_on_a_held_out_folder_without_train(trained, tmp_path, caplog):
    """eval.data=current data=imagefolder once needed a train/ folder beside the test set,
    and decoded the held-out folder into memory whatever its size."""
    from runner.data.build import build_data

    tmp, _, _ = trained
    ckpt = tmp / "train" / "checkpoints" / "best.pt"
    best = read_best(ckpt)
    stored = build_data(best.stored_config().data)  # its test images, as PNG files below
    held_out = tmp_path / "held_out"
    for i, (image, label) in enumerate(zip(stored.test.images, stored.test.labels, strict=True)):
        folder = held_out / "test" / best.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        write_png(image, str(folder / f"{i:03d}.png"))
    current = ("mode=eval", f"ckpt={ckpt}", "eval.data=current", "data=imagefolder")
    current += ("analysis.enabled=false", "logger.export_model=false")
    run(compose_run(tmp, "eval_held_out", *current, f"data.root={held_out}", tiny=False))
    evaluated = json.loads((tmp / "eval_held_out" / "metrics.json").read_text())
    trained_metrics = json.loads((tmp / "train" / "metrics.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(trained_metrics["test/acc"], abs=1e-6)
    # Past data.resident_max_gb it is streamed, with the same figures and reports; a file
    # that only fails as its batch is decoded is left out and listed.
    png = next((held_out / "test" / best.class_names[1]).iterdir()).read_bytes()
    (held_out / "test" / best.class_names[1] / "truncated.png").write_bytes(png[:60])
    streamed = ("data.resident_max_gb=1e-6", "data.num_workers=1", "analysis.enabled=true")
    with caplog.at_level("INFO", logger="runner.data.sets.held_out"):
        run(compose_run(tmp, "streamed", *current, *streamed, f"data.root={held_out}", tiny=False))
    assert f"held-out folder {held_out / 'test'}: {len(stored.test) + 1} images" in caplog.text
    assert "-> streaming" in caplog.text
    evaluated = json.loads((tmp / "streamed" / "metrics.json").read_text())
    assert evaluated["test/acc"] == pytest.approx(trained_metrics["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(trained_metrics["test/loss"], abs=1e-5)
    assert all((tmp / "streamed" / name).is_file() for name in ANALYSIS_FILES)
    assert "truncated.png" in (tmp / "streamed" / "bad_files.txt").read_text()
    (held_out / "test" / best.class_names[1] / "truncated.png").unlink()
    # The held-out set may lack a class; a class the model does not know is refused.
    shutil.rmtree(held_out / "test" / best.class_names[0])
    (held_out / "test" / "owl").mkdir()
    with pytest.raises(DataError, match=r"class folders the checkpoint does not know: \['owl'\]"):
        run(compose_run(tmp, "eval_owl", *current, f"data.root={held_out}", tiny=False))
    # A set with train/ and other classes is refused from its folder names, before its
    # images are decoded (and cached).
    (held_out / "test" / "owl").rmdir()
    (held_out / "test").rename(held_out / "train")
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="differ from the checkpoint's"):
        run(
            compose_run(
                tmp,
                "eval_other",
                *current,
                f"data.root={held_out}",
                f"data.cache_dir={cache}",
                tiny=False,
            )
        )
    assert not cache.exists()


def test_flip_tta_averages_the_logits_of_both_views():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 5, 3))
    images = torch.randn(2, 3, 4, 5)
    expected = (model(images) + model(images.flip(-1))) / 2
    assert torch.allclose(FlipTTA(model)(images), expected)
    assert not torch.allclose(expected, model(images))


@pytest.mark.slow
def test_predict_writes_top_k_with_class_names_in_file_order(trained, tmp_path, capsys):
    tmp, _, run_id = trained
    ckpt = tmp / "train" / "checkpoints" / "best.pt"
    best = read_best(ckpt)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    write_png(image, str(folder / "a.png"))
    write_png(image, str(folder / "sub" / "c.png"))
    (folder / "b.jpg").write_bytes(b"not an image")
    with (folder / "d.mp4").open("wb") as movie:  # 256 MB (sparse): its header says enough
        movie.truncate(256 << 20)
    out = tmp_path / "preds" / "p.csv"
    tracemalloc.start()
    try:
        count = run(
            compose_run(
                tmp,
                "predict",
                "mode=predict",
                f"ckpt=runs:/{run_id}",
                f"predict.input={folder}",
                f"predict.output={out}",
                "predict.topk=3",
            )
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 2
    assert peak < 64 << 20, f"predict held {peak >> 20} MB: it read the movie whole"
    # The summary names the checkpoint as the command did, not its downloaded copy.
    (shown,) = [r for r in capsys.readouterr().out.splitlines() if r.startswith("│ checkpoint ")]
    assert f"runs:/{run_id}" in shown and "downloaded" not in shown
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["file"]).name for r in rows] == ["a.png", "b.jpg", "d.mp4", "c.png"]
    assert "b.jpg" in rows[1]["error"] and rows[1]["predicted_class"] == ""
    assert "not an image" in rows[2]["error"] and rows[2]["predicted_class"] == ""
    rows = [rows[0], rows[1], rows[3]]
    for row in (rows[0], rows[2]):
        assert row["predicted_class"] == row["class_1"] in best.class_names
        probs = [float(row[f"prob_{k}"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert rows[0]["class_1"] == rows[2]["class_1"], "the same image gets the same label"


@pytest.mark.slow
def test_predict_of_no_readable_image_fails_after_writing_each_files_error(
    trained, tmp_path, caplog
):
    """A folder of files that are no images was labelled "0 images" with exit status 0,
    and a top-k beyond the class count was cut without a word."""
    tmp, _, _ = trained
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in ("a.txt", "b.png"):
        (folder / name).write_bytes(b"not an image")
    out = tmp_path / "p.csv"
    cfg = compose_run(
        tmp,
        "predict_none",
        "mode=predict",
        f"ckpt={tmp / 'train' / 'checkpoints' / 'best.pt'}",
        f"predict.input={folder}",
        f"predict.output={out}",
        "predict.topk=50",
    )
    with pytest.raises(DataError, match=r"none of its 2 file\(s\) could be read as an image"):
        run(cfg)
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["error"] for row in rows)
    assert "predict.topk=50: the checkpoint's model has 10 classes, so the CSV ranks 10" in (
        caplog.text
    )


@pytest.mark.slow
def test_predict_writes_a_file_name_that_is_not_utf8_as_escapes(trained, tmp_path):
    """A Latin-1 name (from an old archive) ended predict with UnicodeEncodeError, after
    every image was labelled and with no CSV written."""
    tmp, _, run_id = trained
    folder = tmp_path / "photos"
    folder.mkdir()
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    write_png(image, str(folder / "a.png"))
    os.rename(folder / "a.png", os.fsencode(folder) + b"/caf\xe9.png")
    (folder / "b.png").write_bytes(b"")  # its error names it too
    os.rename(folder / "b.png", os.fsencode(folder) + b"/th\xe9.png")
    out = tmp_path / "p.csv"
    predicting = (f"ckpt=runs:/{run_id}", f"predict.input={folder}", f"predict.output={out}")
    assert run(compose_run(tmp, "predict_latin1", "mode=predict", *predicting)) == 1
    with out.open(encoding="utf-8") as handle:  # valid UTF-8 throughout
        labelled, empty = list(csv.DictReader(handle))
    assert labelled["file"].endswith("/caf\\xe9.png") and labelled["predicted_class"]
    assert empty["file"].endswith("/th\\xe9.png") and "empty file" in empty["error"], empty


@pytest.mark.slow
def test_a_one_channel_model_predicts_files_by_their_luma_and_a_failure_leaves_no_file(
    tmp_path, monkeypatch
):
    """Files decode as RGB: a one-channel model once failed on them in predict and in eval
    (and the failure once left .predictions.csv.tmp behind)."""
    run(compose_run(tmp_path, "gray", "data.channels=1", "+model.in_chans=1", "logger=none"))
    folder = tmp_path / "photos"
    folder.mkdir()
    write_png(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8), str(folder / "a.png"))
    out = tmp_path / "preds"
    ckpt = tmp_path / "gray" / "checkpoints" / "best.pt"
    predicting = compose_run(
        tmp_path,
        "p",
        "mode=predict",
        f"ckpt={ckpt}",
        f"predict.input={folder}",
        f"predict.output={out}/",
        "logger=none",
    )
    assert run(predicting) == 1
    with (out / "predictions.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["predicted_class"] and row["error"] == ""
    (out / "predictions.csv").unlink()
    # eval on RGB data takes its luma too (it failed mid-test on a 3-channel batch).
    rgb = ("mode=eval", f"ckpt={ckpt}", "eval.data=current", "data.channels=3", "logger=none")
    assert 0 <= run(compose_run(tmp_path, "e", *rgb)) <= 1

    def broken(images):
        raise RuntimeError("a failure while predicting")

    monkeypatch.setattr("runner.predict.to_grayscale", broken)  # a fault, injected
    with pytest.raises(RuntimeError, match="while predicting"):
        run(predicting)
    assert list(out.iterdir()) == []


def test_gray_data_on_a_pretrained_rgb_model_predicts_a_colour_file_by_its_luma(trained, tmp_path):
    """best.pt kept only the pretrained 3-channel normalisation: predict fed colour files
    as RGB to a model that had only seen gray repeated into 3 channels (0.81 against 0.59
    for a file and its gray copy)."""
    tmp, _, _ = trained
    weights = f"model.pretrained_file={tmp / 'train' / 'checkpoints' / 'best.pt'}"
    run(compose_run(tmp_path, "gray", "data.channels=1", weights, "logger=none"))
    ckpt = tmp_path / "gray" / "checkpoints" / "best.pt"
    assert read_best(ckpt).image_channels() == 1 and len(read_best(ckpt).mean) == 3
    folder = tmp_path / "photos"
    folder.mkdir()
    colour = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)  # no resize: exact
    write_png(colour, str(folder / "colour.png"))
    write_png(to_grayscale(colour[None])[0], str(folder / "gray.png"))
    out = tmp_path / "preds"
    predicting = ("mode=predict", f"ckpt={ckpt}", f"predict.input={folder}", "predict.topk=1")
    run(compose_run(tmp_path, "p", *predicting, f"predict.output={out}/", "logger=none"))
    with (out / "predictions.csv").open() as handle:
        rows = {Path(row["file"]).name: row for row in csv.DictReader(handle)}
    assert rows["colour.png"]["prob_1"] == rows["gray.png"]["prob_1"], rows
    # So does eval on a held-out folder, in memory or streamed (which was refused).
    held_out = tmp_path / "held_out"
    (held_out / "class_0").mkdir(parents=True)
    shutil.copy(folder / "colour.png", held_out / "class_0")
    shutil.copy(folder / "gray.png", held_out / "class_0")
    evaluating = ("mode=eval", f"ckpt={ckpt}", "eval.data=current", "data=imagefolder")
    evaluating += (f"data.root={held_out}", "logger=none", "analysis.enabled=false")
    for name, where in (("in_memory", "data.resident=true"), ("streamed", "data.resident=false")):
        run(compose_run(tmp_path, name, *evaluating, where, "data.num_workers=1", tiny=False))
    metrics = [
        json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("in_memory", "streamed")
    ]
    assert metrics[0]["test/loss"] == metrics[1]["test/loss"]
    assert metrics[0]["test/acc"] in (0.0, 1.0)  # the two files: one prediction


def test_predict_output_refuses_what_it_must_not_overwrite_or_cannot_write(trained, tmp_path):
    """best.pt as predict.output was replaced by 566 bytes of CSV; /proc failed at the end."""
    from runner.config.errors import ConfigError
    from runner.predict import list_images, predictions_path

    ckpt = trained[0] / "train" / "checkpoints" / "best.pt"
    with pytest.raises(ConfigError, match="an existing file that is not a CSV"):
        predictions_path(str(ckpt), tmp_path)
    earlier = tmp_path / "earlier.csv"
    earlier.write_text("file,predicted_class,probability,error\n")
    assert predictions_path(str(earlier), tmp_path) == earlier  # earlier predictions: replaced
    relabel = tmp_path / "relabel.csv"  # a user's own CSV was overwritten with predictions
    relabel.write_text("sample_id,label\ntrain/cat/1.jpg,dog\n")
    with pytest.raises(ConfigError, match="an existing CSV that predict did not write"):
        predictions_path(str(relabel), tmp_path)
    # Written under another name, the same command was refused the next time.
    with pytest.raises(ConfigError, match=r"does not end in \.csv"):
        predictions_path(str(tmp_path / "preds"), tmp_path)
    with pytest.raises(ConfigError, match="cannot write in /proc"):
        predictions_path("/proc/predictions.csv", tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(folder / "a.png"))
    os.mkfifo(folder / "pipe")  # reading it would wait forever
    assert [p.name for p in list_images(str(folder))] == ["a.png"]


def test_weights_that_do_not_fit_the_checkpoints_model_name_the_fix(trained):
    from runner.from_checkpoint import rebuild_model

    best = read_best(trained[0] / "train" / "checkpoints" / "best.pt")
    best.model["fc.weight"] = best.model["fc.weight"][:, :3]
    with pytest.raises(CheckpointError, match="do not fit the model its config builds"):
        rebuild_model(best.stored_config(), best, torch.device("cpu"))


def test_a_torchvision_model_from_its_weights_is_rebuilt_with_the_arguments_they_set(
    tmp_path, monkeypatch
):
    """googlenet built from its weights rescales its input itself (transform_input).

    Eval and predict rebuilt it without the weights, so without the rescaling, and fed
    the trained weights differently scaled input.
    """
    from omegaconf import OmegaConf
    from torchvision.models import GoogLeNet_Weights, googlenet

    from runner.from_checkpoint import rebuild_model, without_pretrained_weights
    from runner.models.factories import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        arguments_set_by_weights,
        create_torchvision_model,
    )
    from runner.training.best_checkpoint import BestCheckpoint

    # Nothing is downloaded here: the weights' file is made where torchvision keeps them.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / Path(GoogLeNet_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    weights = googlenet(aux_logits=True, init_weights=False)
    # BatchNorm statistics of real activations (one batch, momentum None: its average);
    # with the initial ones every image's features are 0 and the logits are the bias.
    for module in weights.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        weights.train()(torch.rand(16, 3, 64, 64))
    torch.save(weights.state_dict(), cached)
    model_cfg = {
        "_target_": "runner.models.factories.create_torchvision_model",
        "_partial_": True,
        "name": "googlenet",
        "weights": "IMAGENET1K_V1",
        "pretrained_file": None,
    }
    trained = create_torchvision_model(3, **{k: v for k, v in model_cfg.items() if k[0] != "_"})
    best = BestCheckpoint(
        model=trained.state_dict(),
        config=OmegaConf.to_yaml({"model": model_cfg}),
        class_names=["a", "b", "c"],
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        image_size=64,
    )
    stored = best.stored_config()
    without_pretrained_weights(stored)
    assert stored.model.weights is None and stored.model.transform_input is True
    rebuilt = rebuild_model(stored, best, torch.device("cpu"))
    images = torch.rand(2, 3, 64, 64)
    without_rescaling = googlenet(num_classes=3, aux_logits=False, init_weights=False)
    without_rescaling.load_state_dict(best.model)
    with torch.no_grad():
        logits = trained.eval()(images)
        assert torch.allclose(rebuilt(images), logits, atol=1e-5)
        assert not torch.allclose(without_rescaling.eval()(images), logits, atol=1e-3)
    # A ViT takes the image size of its weights; other models take nothing from them.
    assert arguments_set_by_weights("vit_b_16", "IMAGENET1K_SWAG_E2E_V1") == {"image_size": 384}
    # Spelt as the builder also takes it (a KeyError in eval and predict).
    swag = "ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1"
    assert arguments_set_by_weights("vit_b_16", swag) == {"image_size": 384}
    assert arguments_set_by_weights("resnet50", "IMAGENET1K_V2") == {}


def test_eval_refuses_a_gradcam_layer_the_model_lacks_before_testing(trained):
    from runner.config.errors import ConfigError

    tmp, _, _ = trained
    ckpt = tmp / "train" / "checkpoints" / "best.pt"
    cfg = compose_run(
        tmp,
        "eval_bad",
        "mode=eval",
        f"ckpt={ckpt}",
        "analysis.enabled=true",
        "analysis.gradcam_layer=bogus",
    )
    with pytest.raises(ConfigError, match=r"analysis\.gradcam_layer='bogus' is not a module"):
        run(cfg)
    assert not (tmp / "eval_bad" / "metrics.json").exists()
    # Predict draws no Grad-CAM, and refused the same setting.
    photos = tmp / "gradcam_photos"
    photos.mkdir(exist_ok=True)
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(photos / "a.png"))
    predicting = ("mode=predict", f"ckpt={ckpt}", f"predict.input={photos}", "logger=none")
    bogus = ("analysis.enabled=true", "analysis.gradcam_layer=bogus")
    assert run(compose_run(tmp, "predict_bogus", *predicting, *bogus)) == 1
    # A layer that is no feature map, and a size no map reaches, were found after the test
    # ("gradcam.png was not written" in torch's words), as training refuses them before.
    for setting, expected in (
        ("analysis.gradcam_layer=fc", r"gradcam_layer='fc' outputs a tensor of shape \(1, 10\)"),
        ("analysis.gradcam_min_size=512", r"gradcam_min_size=512: the largest feature map"),
    ):
        cfg = compose_run(
            tmp, "eval_bad", "mode=eval", f"ckpt={ckpt}", "analysis.enabled=true", setting
        )
        with pytest.raises(ConfigError, match=expected):
            run(cfg)
        assert not (tmp / "eval_bad" / "metrics.json").exists()


@pytest.mark.slow
def test_ckpt_errors_name_the_file_and_the_fix(tmp_path, trained):
    cfg = compose_run(trained[0], "unused")  # the trained run's MLflow store
    with pytest.raises(CheckpointError, match=r"ckpt='/nope/best.pt': no such file"):
        resolve_ckpt("/nope/best.pt", cfg, tmp_path)
    with pytest.raises(CheckpointError, match=r"no such file \(a folder\)\. Pass a run's"):
        resolve_ckpt(str(tmp_path), cfg, tmp_path)
    # A run dir, or its checkpoints/ folder: the best.pt in it is named (it pointed the
    # checkpoints/ folder at checkpoints/checkpoints/best.pt).
    best = trained[0] / "train" / "checkpoints" / "best.pt"
    for folder in (best.parent.parent, best.parent):
        with pytest.raises(CheckpointError, match=rf"\(a folder: point at {best}\)"):
            resolve_ckpt(str(folder), cfg, tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        read_best(junk)
    last = tmp_path / "last.pt"
    torch.save({"model": {}, "optimizer": {}, "state": {}}, last)
    with pytest.raises(CheckpointError, match=r"training-state checkpoint \(last.pt\)"):
        read_best(last)
    with pytest.raises(CheckpointError, match="run 'feedc0de' was not found in the MLflow"):
        resolve_ckpt("runs:/feedc0de", cfg, tmp_path / "dl")
    # An eval run or a sweep's parent was told to pick a training run, not which one.
    from mlflow import MlflowClient

    client = MlflowClient(cfg.logger.tracking_uri)
    experiment = client.get_run(trained[2]).info.experiment_id
    for tags, fix in (
        ({"mode": "eval", "source_run_id": trained[2]}, "it is an eval run of training run"),
        ({"best.run_id": trained[2]}, "it is a sweep's parent run; its best job's run is"),
    ):
        other = client.create_run(experiment, tags=tags).info.run_id
        client.set_terminated(other)
        with pytest.raises(CheckpointError, match=rf"{fix} ckpt=runs:/{trained[2]}"):
            resolve_ckpt(f"runs:/{other}", cfg, tmp_path / "dl")
    # It was told to give an id of the form m-..., which it had.
    with pytest.raises(CheckpointError, match=r"32 hex digits.*'m-deadbeef' has 8 characters"):
        resolve_ckpt("models:/m-deadbeef", cfg, tmp_path / "dl")
    # A store that is not there: a mistyped SQLite path was created empty ("run not
    # found"), and a server that does not answer was retried for four minutes.
    typo = tmp_path / "typo" / "mlflow.db"
    cfg.logger.tracking_uri = f"sqlite:///{typo}"
    with pytest.raises(CheckpointError, match=r"names no store \(.*typo/mlflow.db is not there"):
        resolve_ckpt("runs:/feedc0de", cfg, tmp_path / "dl")
    assert not typo.exists()
    cfg.logger.tracking_uri = "http://127.0.0.1:9"  # the discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(CheckpointError, match=r"tracking server .* does not answer"):
        resolve_ckpt("models:/digits/1", cfg, tmp_path / "dl")
    assert time.monotonic() - started < 30


# --- best.pt written before the package was split into layers (schema version 1) -----

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def as_flat_layout(best_pt: Path, out: Path) -> Path:
    """The same best.pt as the flat layout wrote it: no schema_version, old `_target_`s."""
    from omegaconf import OmegaConf

    from runner.config.targets import legacy_target

    old_name = {}  # new target -> the flat layout's, from the mapping itself
    for path in FIXTURES.glob("legacy_best_config_*.yaml"):
        for target in _targets(OmegaConf.to_container(OmegaConf.load(path))):
            old_name[legacy_target(target)] = target
    payload = torch.load(best_pt, weights_only=True)
    del payload["schema_version"]
    config = OmegaConf.to_container(OmegaConf.create(payload["config"]))
    payload["config"] = OmegaConf.to_yaml(OmegaConf.create(_rename(config, old_name)))
    assert "runner.data.make_synthetic" in payload["config"]  # the flat layout's name
    torch.save(payload, out)
    return out


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return own + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []


def _rename(node, names: dict[str, str]):
    if isinstance(node, dict):
        return {
            k: names.get(v, v) if k == "_target_" else _rename(v, names) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rename(v, names) for v in node]
    return node


@pytest.mark.parametrize("name", ["resnet10t", "resnet32"])
def test_every_target_of_a_flat_layout_config_resolves_now(name):
    """Configs that best.pt files of the flat layout carry (captured before the move)."""
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    from runner.config.targets import upgrade_legacy_targets

    legacy = OmegaConf.load(FIXTURES / f"legacy_best_config_{name}.yaml")
    old = _targets(OmegaConf.to_container(legacy))
    assert any(t.startswith("runner.aug") for t in old)
    new = _targets(OmegaConf.to_container(upgrade_legacy_targets(legacy)))
    for target in new:
        assert get_object(target) is not None, target


@pytest.mark.slow
def test_a_flat_layout_best_pt_evaluates_and_predicts_as_before(trained, tmp_path):
    tmp, _, _ = trained
    current = tmp / "train" / "checkpoints" / "best.pt"
    legacy = as_flat_layout(current, tmp_path / "legacy.pt")
    assert read_best(legacy).stored_config().model._target_ == (
        read_best(current).stored_config().model._target_
    )
    run(compose_run(tmp, "eval_legacy", "mode=eval", f"ckpt={legacy}", "analysis.enabled=false"))
    evaluated = json.loads((tmp / "eval_legacy" / "metrics.json").read_text())
    trained_metrics = json.loads((tmp / "train" / "metrics.json").read_text())
    for key in ("test/acc", "test/loss", "test/macro_f1"):
        assert evaluated[key] == pytest.approx(trained_metrics[key], abs=1e-5), key
    image = tmp_path / "photos" / "a.png"
    image.parent.mkdir()
    write_png(torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8), str(image))
    rows = {}
    for label, ckpt in (("legacy", legacy), ("current", current)):
        out = tmp_path / f"{label}.csv"
        predict = ("mode=predict", f"ckpt={ckpt}", f"predict.input={image}")
        run(compose_run(tmp, f"predict_{label}", *predict, f"predict.output={out}"))
        with out.open() as handle:
            rows[label] = [row[1:] for row in csv.reader(handle)]
    assert rows["legacy"] == rows["current"]


def test_eval_on_stored_data_needs_no_exclude_file_and_no_folds(tmp_path):
    """The test split is the same without the train-only keys, whose files may be gone."""
    from runner.data.build import build_data
    from runner.from_checkpoint import train_only_keys_off

    cfg = compose_run(tmp_path, "run", "data.num_folds=5", "data.fold=0")
    stored = cfg.data.copy()
    stored.exclude = str(tmp_path / "gone.csv")  # an audit file deleted since training
    kept = train_only_keys_off(stored)
    assert (kept.exclude, kept.num_folds, kept.fold) == (None, None, None)
    assert stored.exclude is not None, "the stored config itself is left as it was"
    test = build_data(kept).test
    assert torch.equal(test.images, build_data(cfg.data).test.images)


@pytest.mark.slow
def test_eval_groups_head_and_tail_classes_by_the_counts_the_model_learnt_from(tmp_path):
    """A k-fold job of a long-tailed train split learns from 4/5 of it. Eval's data has
    no folds, so grouping by its own train counts would put other classes in the head
    and tail, and report other head/medium/tail accuracies for the same weights."""
    from runner.data.build import build_data
    from runner.from_checkpoint import train_only_keys_off
    from runner.reports.per_class import shot_groups

    long_tailed_fold = [
        "data.num_samples=2000",
        "data.image_size=16",
        "data.imbalance_ratio=20",
        "data.num_folds=5",
        "data.fold=0",
        "logger=none",
    ]
    cfg = compose_run(tmp_path, "train", *long_tailed_fold)
    learnt = build_data(cfg.data).class_counts()
    without_folds = build_data(train_only_keys_off(cfg.data)).class_counts()
    head_of = [shot_groups(counts)[0]["head"].tolist() for counts in (learnt, without_folds)]
    assert head_of[0] != head_of[1], "the case must tell the two groupings apart"
    run(cfg)
    ckpt = tmp_path / "train" / "checkpoints" / "best.pt"
    assert read_best(ckpt).train_class_counts == learnt.tolist()
    run(compose_run(tmp_path, "eval", "mode=eval", f"ckpt={ckpt}", "logger=none"))
    strict = {"parse_constant": lambda name: pytest.fail(f"{name} in metrics.json")}
    trained_metrics = json.loads((tmp_path / "train" / "metrics.json").read_text(), **strict)
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text(), **strict)
    for key in ("test/acc", "test/head_acc", "test/medium_acc", "test/tail_acc"):
        assert evaluated[key] == pytest.approx(trained_metrics[key], abs=1e-5), key
    # On this command line's data, which is not long-tailed: the groups were left out.
    current = ["eval.data=current", "data.num_samples=2000", "data.image_size=16"]
    run(compose_run(tmp_path, "current", "mode=eval", f"ckpt={ckpt}", *current, "logger=none"))
    on_current = json.loads((tmp_path / "current" / "metrics.json").read_text(), **strict)
    assert {"test/head_acc", "test/medium_acc", "test/tail_acc"} <= on_current.keys()


@pytest.mark.slow
def test_a_sweep_over_checkpoints_evaluates_each(trained, tmp_path):
    """The base config of `-m ckpt=a,b` has no ckpt: it was refused as 'needs a checkpoint'."""
    import shutil

    from tests.conftest import run_cli

    first = trained[0] / "train" / "checkpoints" / "best.pt"
    second = tmp_path / "copy.pt"
    shutil.copyfile(first, second)
    done = run_cli(
        "-m",
        "mode=eval",
        f"ckpt={first},{second}",
        f"paths.output_dir={tmp_path / 'out'}",
        "analysis.enabled=false",
        "logger=none",
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    metrics = sorted((tmp_path / "out").rglob("metrics.json"))
    assert len(metrics) == 2
    accs = [json.loads(m.read_text())["test/acc"] for m in metrics]
    assert accs[0] == accs[1]
    # A job that fails (a damaged file, found only when it is read): its error ended the
    # sweep there, and the jobs after it never ran.
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(first.read_bytes()[:1000])
    sweep = tmp_path / "sweep"
    done = run_cli(
        "-m",
        "mode=eval",
        f"ckpt={damaged},{second}",
        f"hydra.sweep.dir={sweep}",
        f"paths.output_dir={tmp_path / 'out'}",
        "analysis.enabled=false",
        "logger=none",
        timeout=600,
    )
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    assert "Error: 1 of 2 job(s) of this mode=eval sweep failed (the others ran):" in done.stderr
    assert f"{sweep}/0: checkpoint {damaged} cannot be loaded safely" in done.stderr
    assert json.loads((sweep / "1" / "metrics.json").read_text())["test/acc"] == accs[0]


def test_a_predict_sweep_whose_jobs_share_one_output_file_is_refused_at_start(trained, tmp_path):
    """-m ckpt=a,b predict.output=p.csv: each job replaced the one before's predictions."""
    import shutil

    from tests.conftest import run_cli

    first = trained[0] / "train" / "checkpoints" / "best.pt"
    second = tmp_path / "copy.pt"
    shutil.copyfile(first, second)
    from tests.datagen import write_image

    write_image(tmp_path / "photos" / "a.png", "gray", size=32)
    done = run_cli(
        "-m",
        "mode=predict",
        f"ckpt={first},{second}",
        f"predict.input={tmp_path / 'photos'}",
        f"predict.output={tmp_path / 'p.csv'}",
        f"paths.output_dir={tmp_path / 'out'}",
        "logger=none",
    )
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    assert f"would all write predict.output {tmp_path / 'p.csv'}, each replacing" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_streamed_test_file_that_does_not_decode_costs_only_its_own_cells(tmp_path):
    """One truncated file of a streamed test split dropped misclassified.png and
    gradcam.png from training and eval, and eval wrote no bad-file list to point to."""
    from tests.datagen import make_imagefolder, streamed_folder

    root = make_imagefolder(tmp_path / "pics", per_class=8, splits=("train", "test"), size=24)
    bad = sorted((root / "test" / "dog").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:300])  # a valid header: found only when decoded
    folder = streamed_folder(root)
    small = ["trainer.max_epochs=1", "trainer.batch_size=8", "model=timm", "model.name=test_resnet"]
    shared = [*folder, *small, "analysis.enabled=true", "logger=none"]
    run(compose_run(tmp_path, "train", *shared, tiny=False))
    ckpt = tmp_path / "train" / "checkpoints" / "best.pt"
    run(compose_run(tmp_path, "eval", "mode=eval", f"ckpt={ckpt}", "logger=none", tiny=False))
    for run_dir in ("train", "eval"):
        for name in ("misclassified.png", "gradcam.png"):
            assert (tmp_path / run_dir / name).is_file(), (run_dir, name)
        assert bad.name in (tmp_path / run_dir / "bad_files.txt").read_text(), run_dir


def test_a_data_root_from_the_environment_is_kept_as_typed_and_read_again_by_eval(
    tmp_path, monkeypatch
):
    """best.pt kept data.root as '***' (redacted): eval.data=stored looked for '***'/train."""
    from tests.datagen import make_imagefolder

    make_imagefolder(tmp_path / "sets" / "pics", per_class=6, splits=("train", "test"))
    monkeypatch.setenv("RUNNER_TEST_DATA", str(tmp_path / "sets"))
    typed = "${oc.env:RUNNER_TEST_DATA}/pics"
    small = ["trainer.max_epochs=1", "trainer.batch_size=8", "model=timm", "model.name=test_resnet"]
    folder = ["data=imagefolder", f"data.root={typed}", "data.image_size=16", "data.cache_dir=null"]
    run(compose_run(tmp_path, "train", *folder, *small, "logger=none", tiny=False))
    ckpt = tmp_path / "train" / "checkpoints" / "best.pt"
    assert f"root: {typed}" in read_best(ckpt).config  # the YAML text
    assert str(tmp_path / "sets") not in (tmp_path / "train" / "config_resolved.yaml").read_text()
    evaluating = ("mode=eval", f"ckpt={ckpt}", "logger=none")
    assert 0.0 <= run(compose_run(tmp_path, "eval", *evaluating, tiny=False)) <= 1.0
    monkeypatch.delenv("RUNNER_TEST_DATA")
    with pytest.raises(ConfigError, match=r"data.root is read from the environment.*RUNNER_TEST"):
        run(compose_run(tmp_path, "eval_unset", *evaluating, tiny=False))
    # What eval does not read may stay unset: the starting weights (best.pt has the
    # trained ones) and, with eval.data=current, the data and the data set's name.
    monkeypatch.setenv("RUNNER_TEST_DATA", str(tmp_path / "sets"))
    monkeypatch.setenv("RUNNER_TEST_WEIGHTS", str(tmp_path / "train" / "checkpoints"))
    tuned = [
        *folder,
        *small,
        "logger=none",
        "model.pretrained_file=${oc.env:RUNNER_TEST_WEIGHTS}/best.pt",
    ]
    run(compose_run(tmp_path, "tuned", *tuned, "data.name=${oc.env:RUNNER_TEST_DATA}", tiny=False))
    monkeypatch.delenv("RUNNER_TEST_DATA")
    monkeypatch.delenv("RUNNER_TEST_WEIGHTS")
    current = ["eval.data=current", "data=imagefolder", f"data.root={tmp_path / 'sets' / 'pics'}"]
    tuned_ckpt = f"ckpt={tmp_path / 'tuned' / 'checkpoints' / 'best.pt'}"
    evaluated = run(
        compose_run(
            tmp_path,
            "eval_tuned",
            "mode=eval",
            tuned_ckpt,
            "logger=none",
            *current,
            "data.image_size=16",
            tiny=False,
        )
    )
    assert 0.0 <= evaluated <= 1.0


def test_eval_on_stored_data_writes_its_decode_cache_under_its_own_output_dir(tmp_path):
    """The stored data.cache_dir, resolved at training, put the cache in the training
    run's output folder; this command's paths.output_dir was never made."""
    from runner.data import decode_cache
    from tests.datagen import make_imagefolder

    root = make_imagefolder(tmp_path / "pics", per_class=6, splits=("train", "test"), size=16)
    folder = ("data=imagefolder", f"data.root={root}", "data.image_size=16", "logger=none")
    small = ("trainer.max_epochs=1", "trainer.batch_size=8", "model=timm", "model.name=test_resnet")
    run(compose_run(tmp_path / "a", "train", *folder, *small, tiny=False))
    decode_cache.wait_for_cache_writes()
    trained_cache = tmp_path / "a" / "outputs" / "cache"
    assert list(trained_cache.iterdir())
    shutil.rmtree(trained_cache)
    decode_cache.clear_memory_cache()  # as in a new process
    ckpt = tmp_path / "a" / "train" / "checkpoints" / "best.pt"
    run(compose_run(tmp_path / "b", "eval", "mode=eval", f"ckpt={ckpt}", "logger=none", tiny=False))
    decode_cache.wait_for_cache_writes()
    assert list((tmp_path / "b" / "outputs" / "cache").iterdir())
    assert not trained_cache.exists()


def test_eval_on_stored_data_reads_a_relative_root_from_the_training_runs_directory(
    tmp_path, monkeypatch
):
    """data.root=pics was looked for under eval's own working directory. And once the
    folder was gone, the hint (the checkpoint's own data; eval.data=current for other
    data) never showed: Hydra's wrapper hid the DataError from the code that adds it."""
    from omegaconf import OmegaConf

    from tests.datagen import make_imagefolder

    work = tmp_path / "work"
    make_imagefolder(work / "pics", per_class=6, splits=("train", "test"), size=16)
    monkeypatch.chdir(work)
    folder = ("data=imagefolder", "data.root=pics", "data.image_size=16", "data.cache_dir=null")
    small = ("trainer.max_epochs=1", "trainer.batch_size=8", "model=timm", "model.name=test_resnet")
    run(compose_run(tmp_path, "train", *folder, *small, "logger=none", tiny=False))
    # Hydra's record of the directory a `python run.py` ran in (compose writes none).
    hydra_yaml = tmp_path / "train" / ".hydra" / "hydra.yaml"
    hydra_yaml.parent.mkdir(exist_ok=True)
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(work)}}}, hydra_yaml)
    monkeypatch.chdir(tmp_path)  # no pics/ here
    ckpt = tmp_path / "train" / "checkpoints" / "best.pt"
    evaluating = ("mode=eval", f"ckpt={ckpt}", "logger=none")
    assert 0.0 <= run(compose_run(tmp_path, "eval", *evaluating, tiny=False)) <= 1.0
    (work / "pics").rename(work / "moved")
    with pytest.raises(DataError, match=r"\(this is the checkpoint's own data, eval.data=stored"):
        run(compose_run(tmp_path, "eval_moved", *evaluating, tiny=False))


def test_the_way_to_other_data_is_told_in_the_checkpoints_data_keys():
    """A checkpoint of data=hf was told to test on other data with `data.root=...`, a key
    data=hf does not have."""
    from omegaconf import OmegaConf

    from runner.evaluate import other_data_keys

    hf = OmegaConf.create({"_target_": "runner.data.sets.hf.load_hf", "name": "a.csv"})
    assert other_data_keys(hf) == "eval.data=current data=hf data.name=..."
    folder = OmegaConf.create({"_target_": "runner.data.sets.imagefolder.load_imagefolder"})
    assert other_data_keys(folder) == "eval.data=current data=... data.root=..."


def test_eval_on_a_held_out_table_tests_it_whole(tmp_path):
    """A data=hf model could not be tested on a held-out table: `data.split_test=train`
    was refused as sharing samples with train, a carve tested a tenth of it, and a table
    of some of the classes was refused. `data.split_train=null` now tests it whole, as an
    image folder without train/ is."""
    from tests.datagen import make_imagefolder

    pics = make_imagefolder(tmp_path / "pics", per_class=8, size=16)
    rows = sorted(pics.glob("train/*/*.jpg"))
    (pics / "train.csv").write_text(
        "image,label\n" + "".join(f"{p.relative_to(pics)},{p.parent.name}\n" for p in rows)
    )
    some = [p for p in rows if p.parent.name != "fox"][::2]
    (pics / "held.csv").write_text(
        "image,label\n" + "".join(f"{p.relative_to(pics)},{p.parent.name}\n" for p in some)
    )
    table = ("data=hf", "data.image_size=16", "data.cache_dir=null", "logger=none")
    small = ("trainer.max_epochs=1", "trainer.batch_size=8", "model=timm", "model.name=test_resnet")
    train_on = (f"data.name={pics / 'train.csv'}", "data.split_test=null")
    run(compose_run(tmp_path, "train", *table, *train_on, *small, tiny=False))
    ckpt = tmp_path / "train" / "checkpoints" / "best.pt"
    held = ("mode=eval", f"ckpt={ckpt}", "eval.data=current", *table)
    whole = (f"data.name={pics / 'held.csv'}", "data.split_train=null", "data.split_test=train")
    assert 0.0 <= run(compose_run(tmp_path, "eval", *held, *whole, tiny=False)) <= 1.0
    with open(tmp_path / "eval" / "per_class.csv", newline="") as file:
        support = {row["class"]: int(row["support"]) for row in csv.DictReader(file)}
    assert support == {"cat": 4, "dog": 4, "fox": 0} and len(some) == 8
    # The table the checkpoint trained on: its rows are training images.
    trained_on = (f"data.name={pics / 'train.csv'}", *whole[1:])
    with pytest.raises(DataError, match=r"train.csv' is the data set the checkpoint was trai"):
        run(compose_run(tmp_path, "eval_trained", *held, *trained_on, tiny=False))
    # A class the checkpoint does not know, named with the split.
    (pics / "held.csv").write_text("image,label\n" + f"{rows[0].relative_to(pics)},yak\n")
    with pytest.raises(DataError, match=r"split 'train' \(data.split_test\) has classes the"):
        run(compose_run(tmp_path, "eval2", *held, *whole, tiny=False))
    # Outside eval on current data, or without the split to test.
    with pytest.raises(ConfigError, match=r"data.split_train=null \(a held-out set, tested"):
        run(compose_run(tmp_path, "train2", *table, *train_on, "data.split_train=null", tiny=False))
    with pytest.raises(ConfigError, match=r"tests the split data.split_test names, whole"):
        run(compose_run(tmp_path, "eval3", *held, *whole[:2], "data.split_test=null", tiny=False))


def test_predict_refuses_a_model_of_other_than_one_or_three_channels_before_reading(tmp_path):
    """A 4-channel model got the files' RGB batches: a bare "size of tensor a (3) must
    match" traceback after every image was decoded."""
    from runner.config.errors import ConfigError

    four = ("data.channels=4", "+model.in_chans=4", "logger=none")
    run(compose_run(tmp_path, "train4", *four))
    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(torch.zeros(3, 32, 32, dtype=torch.uint8), str(photos / "a.png"))
    ckpt = tmp_path / "train4" / "checkpoints" / "best.pt"
    cfg = compose_run(
        tmp_path, "p", "mode=predict", f"ckpt={ckpt}", f"predict.input={photos}", "logger=none"
    )
    with pytest.raises(ConfigError, match=r"trained on 4-channel images, and predict reads"):
        run(cfg)
    assert not (tmp_path / "p" / "predictions.csv").exists()


def test_eval_tests_at_the_precision_the_checkpoint_was_trained_with(tmp_path):
    """A bf16 run evaluated at the default precision (auto: 32 here) gave other test
    figures than its own final test."""
    run(compose_run(tmp_path, "bf16", "trainer.precision=bf16", "logger=none"))
    trained = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    ckpt = tmp_path / "bf16" / "checkpoints" / "best.pt"
    run(compose_run(tmp_path, "eval", "mode=eval", f"ckpt={ckpt}", "logger=none"))
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/loss", "test/acc"):
        assert evaluated[key] == pytest.approx(trained[key], abs=1e-6), key
    # Asked for, another precision is used: the figures move.
    more = ("mode=eval", f"ckpt={ckpt}", "logger=none", "trainer.precision=32")
    run(compose_run(tmp_path, "eval32", *more))
    at_32 = json.loads((tmp_path / "eval32" / "metrics.json").read_text())
    assert at_32["test/loss"] != pytest.approx(trained["test/loss"], abs=1e-6)
