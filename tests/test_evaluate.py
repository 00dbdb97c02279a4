"""mode=eval and mode=predict from a real trained checkpoint; analysis reports in MLflow."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchvision.io import write_png

from runner.checkpoint import CheckpointError
from runner.evaluate import FlipTTA, load_best, resolve_ckpt
from runner.main import run
from tests.conftest import CONF, TINY, query

ANALYSIS_FILES = ("confusion_matrix.png", "misclassified.png", "gradcam.png", "reliability.png")


def compose_cfg(tmp: Path, run_dir: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp}/outputs",
                                           f"paths.run_dir={tmp}/{run_dir}", *TINY,
                                           *overrides])  # fmt: skip


def artifacts_of(db: Path, run_id: str) -> Path:
    ((uri,),) = query(db, "SELECT artifact_uri FROM runs WHERE run_uuid = ?", run_id)
    return Path(uri.removeprefix("file://"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run with MLflow and the analysis reports on."""
    tmp = tmp_path_factory.mktemp("trained")
    run(compose_cfg(tmp, "train"))
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
def test_eval_reproduces_the_test_metrics_in_a_new_linked_run(trained):
    tmp, db, run_id = trained
    ckpt = tmp / "train" / "checkpoints" / "best.pt"
    acc = run(compose_cfg(tmp, "eval", "mode=eval", f"ckpt={ckpt}", "analysis.enabled=false"))
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
    # analysis.enabled=false: the per-class table only, no plots, no ECE.
    assert (tmp / "eval" / "per_class.csv").is_file()
    assert not any((tmp / "eval" / name).exists() for name in ANALYSIS_FILES)
    assert "test/ece" not in evaluated


@pytest.mark.slow
def test_eval_from_an_mlflow_run_id_with_flip_tta(trained):
    tmp, _, run_id = trained
    run(compose_cfg(tmp, "eval_tta", "mode=eval", f"ckpt=runs:/{run_id}", "eval.tta=flip"))
    evaluated = json.loads((tmp / "eval_tta" / "metrics.json").read_text())
    assert evaluated["tta"] == "flip" and evaluated["source_run_id"] == run_id
    assert 0 <= evaluated["test/ece"] <= 1
    for name in ANALYSIS_FILES:
        assert (tmp / "eval_tta" / name).is_file(), name
    assert not (tmp / "eval_tta" / "learning_curves.png").exists(), "no history in eval"


def test_flip_tta_averages_the_logits_of_both_views():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 5, 3))
    images = torch.randn(2, 3, 4, 5)
    expected = (model(images) + model(images.flip(-1))) / 2
    assert torch.allclose(FlipTTA(model)(images), expected)
    assert not torch.allclose(expected, model(images))


@pytest.mark.slow
def test_predict_writes_top_k_with_class_names_in_file_order(trained, tmp_path):
    tmp, _, run_id = trained
    ckpt = tmp / "train" / "checkpoints" / "best.pt"
    best = load_best(ckpt)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    image = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    write_png(image, str(folder / "a.png"))
    write_png(image, str(folder / "sub" / "c.png"))
    (folder / "b.jpg").write_bytes(b"not an image")
    out = tmp_path / "preds" / "p.csv"
    count = run(compose_cfg(tmp, "predict", "mode=predict", f"ckpt=runs:/{run_id}",
                            f"predict.input={folder}", f"predict.output={out}",
                            "predict.topk=3"))  # fmt: skip
    assert count == 2
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [Path(r["file"]).name for r in rows] == ["a.png", "b.jpg", "c.png"]
    assert "b.jpg" in rows[1]["error"] and rows[1]["predicted_class"] == ""
    for row in (rows[0], rows[2]):
        assert row["predicted_class"] == row["class_1"] in best["class_names"]
        probs = [float(row[f"prob_{k}"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert rows[0]["class_1"] == rows[2]["class_1"], "the same image gets the same label"


@pytest.mark.slow
def test_ckpt_errors_name_the_file_and_the_fix(tmp_path, trained):
    cfg = compose_cfg(trained[0], "unused")  # the trained run's MLflow store
    with pytest.raises(CheckpointError, match=r"ckpt='/nope/best.pt': no such file"):
        resolve_ckpt("/nope/best.pt", cfg, tmp_path)
    with pytest.raises(CheckpointError, match=r"a folder: point at its checkpoints/best\.pt"):
        resolve_ckpt(str(tmp_path), cfg, tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_best(junk)
    last = tmp_path / "last.pt"
    torch.save({"model": {}, "optimizer": {}, "state": {}}, last)
    with pytest.raises(CheckpointError, match=r"training-state checkpoint \(last.pt\)"):
        load_best(last)
    with pytest.raises(CheckpointError, match="run 'feedc0de' was not found in the MLflow"):
        resolve_ckpt("runs:/feedc0de", cfg, tmp_path / "dl")
