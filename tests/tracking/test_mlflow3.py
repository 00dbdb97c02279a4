"""What an MLflow 3 user finds in a run: the logged (and registered) model, its datasets,
system metrics, the experiment kind, source tags, run.log, and one copy of the weights."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from runner.augment.normalize import Normalize
from runner.cli import run
from runner.data.build import build_data
from runner.tracking.mlflow_tracker import MlflowTracker
from runner.tracking.models import fetch_checkpoint
from runner.tracking.opening import MODEL_TRAINING_KIND
from runner.training.best_checkpoint import read_best
from runner.training.lineage import content_settings, dataset_records, split_digest
from tests.conftest import TINY, compose_run, query, run_cli, seed_store

MODEL_NAME = "tiny-classifier"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run (`python run.py`, so Hydra writes run.log) that registers its
    model and samples system metrics often."""
    tmp = tmp_path_factory.mktemp("mlflow3")
    seed_store(tmp / "outputs")
    done = run_cli(*train_command(tmp))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    db = tmp / "outputs" / "mlflow.db"
    ((run_id,),) = query(db, "SELECT run_uuid FROM runs")
    return tmp, db, run_id, f"sqlite:///{db}"


def train_command(tmp: Path) -> list[str]:
    """The `trained` fixture's command line."""
    return [
        f"paths.output_dir={tmp}/outputs",
        f"hydra.run.dir={tmp}/train",
        *TINY,
        "logger.export_model=true",
        f"logger.registered_model_name={MODEL_NAME}",
        "logger.system_metrics_interval_s=0.5",
        "data.num_samples=320",
        "trainer.max_epochs=2",
    ]


def logged_test_digest(db: Path, run_id: str) -> str:
    """The digest of the test split a run logged as its input."""
    ((digest,),) = query(
        db,
        "SELECT d.digest FROM inputs i JOIN datasets d ON d.dataset_uuid = i.source_id "
        "JOIN input_tags t ON t.input_uuid = i.input_uuid "
        "WHERE i.destination_id = ? AND t.name = 'mlflow.data.context' AND t.value = 'test'",
        run_id,
    )
    return digest


def artifacts_of(db: Path, run_id: str) -> Path:
    ((uri,),) = query(db, "SELECT artifact_uri FROM runs WHERE run_uuid = ?", run_id)
    return Path(uri.removeprefix("file://"))


def eval_path_probabilities(best_pt: Path, images: torch.Tensor) -> np.ndarray:
    """What eval and predict compute for a uint8 batch: the reference for the model."""
    best = read_best(best_pt)
    stored = best.stored_config()
    model = instantiate(stored.model)(num_classes=len(best.class_names))
    model.load_state_dict(best.model)
    augment = instantiate(stored.aug, num_classes=len(best.class_names)).eval()
    with torch.inference_mode():
        logits = model.eval()(Normalize(best.mean, best.std)(augment(images)))
    return logits.softmax(-1).numpy()


@pytest.mark.slow
def test_the_best_weights_are_a_logged_model_that_returns_probabilities(trained):
    tmp, db, run_id, uri = trained
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    probs = model.predict(images.numpy())
    assert probs.shape == (5, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    reference = eval_path_probabilities(tmp / "train" / "checkpoints" / "best.pt", images)
    assert np.allclose(probs, reference, atol=1e-5)  # normalisation and geometry inside
    meta = model.metadata
    assert meta.metadata["class_names"] == [f"class_{i}" for i in range(10)]
    assert meta.metadata["image_size"] == 32 and len(meta.metadata["mean"]) == 3
    signature = meta.get_input_schema().inputs[0]
    assert signature.type == np.dtype(np.uint8) and signature.shape == (-1, 3, 32, 32)
    assert meta.get_output_schema().inputs[0].shape == (-1, 10)
    assert meta.saved_input_example_info is not None
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=tmp / "m"))
    config = (local / "extra_files" / "config_resolved.yaml").read_text()
    assert config == (tmp / "train" / "config_resolved.yaml").read_text()
    # Its input example is two of the run's test images, not noise: MLflow shows it and
    # serves it as what the model takes.
    trained_config = OmegaConf.load(local / "extra_files" / "config_resolved.yaml")
    test_images, _ = build_data(trained_config.data).test.take(torch.arange(2))
    assert np.array_equal(meta.load_input_example(str(local)), test_images.numpy())
    # What eval and predict rebuild from it is the run's best.pt, its data's channels
    # too (a 1-channel run with a pretrained 3-value mean was fed colour images).
    from runner.training.exported_model import best_from_model_dir

    rebuilt = best_from_model_dir(local, run_id)
    best = read_best(tmp / "train" / "checkpoints" / "best.pt")
    assert rebuilt.data_channels == best.data_channels is not None
    assert (rebuilt.class_names, rebuilt.mean, rebuilt.image_size) == (
        best.class_names,
        best.mean,
        best.image_size,
    )
    # One copy of the weights per run: the model's; no best.pt or safetensors uploaded.
    artifacts = artifacts_of(db, run_id)
    assert not (artifacts / "checkpoints").exists()
    weight_files = [p for p in (tmp / "outputs" / "mlartifacts").rglob("*") if p.is_file()]
    weight_files = [p for p in weight_files if p.suffix in (".pt", ".pt2", ".safetensors")]
    assert [p.name for p in weight_files] == ["model.pt2"]
    ((status, source_run),) = query(db, "SELECT status, source_run_id FROM logged_models")
    assert source_run == run_id and status == 2  # READY


@pytest.mark.slow
def test_the_logged_model_holds_the_test_metrics_on_the_test_input(trained):
    """MLflow 3 finds models by their metrics (`search_logged_models`) and shows each
    metric with its data set: the run's test metrics were the run's only."""
    tmp, db, run_id, uri = trained
    ((experiment_id,),) = query(db, "SELECT experiment_id FROM runs WHERE run_uuid = ?", run_id)
    found = MlflowClient(uri).search_logged_models(
        [str(experiment_id)], filter_string="metrics.`test/acc` >= 0"
    )
    assert [model.source_run_id for model in found] == [run_id]
    on_model = {metric.key: metric for metric in found[0].metrics}
    tested = json.loads((tmp / "train" / "metrics.json").read_text())
    assert set(on_model) == {key for key in tested if key.startswith("test/")}
    for key, metric in on_model.items():
        assert metric.value == pytest.approx(tested[key]) and metric.run_id == run_id, key
        assert (metric.dataset_name, metric.dataset_digest) == (
            "synthetic",
            logged_test_digest(db, run_id),
        ), key
    # Logged once: the run's own history holds each test metric a single time.
    sql = "SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key = 'test/acc'"
    assert query(db, sql, run_id) == [(1,)]


@pytest.mark.slow
def test_the_model_is_registered_and_eval_takes_models_and_runs_uris(trained):
    tmp, _, run_id, uri = trained
    # The registry named outright: an earlier test in this process may have set another.
    registry = MlflowClient(uri, registry_uri=uri)
    versions = registry.search_model_versions(f"name = '{MODEL_NAME}'")
    said = [
        line for line in (tmp / "train" / "run.log").read_text().splitlines() if "regist" in line
    ]
    assert [(int(v.version), v.run_id) for v in versions] == [(1, run_id)], said
    trained_metrics = json.loads((tmp / "train" / "metrics.json").read_text())
    # The training log names the model by its id (models:/m-...): that URI was refused.
    ((model_id,),) = query(tmp / "outputs" / "mlflow.db", "SELECT model_id FROM logged_models")
    assert f"logged model models:/{model_id}" in (tmp / "train" / "run.log").read_text()
    # MLflow's own forms /latest and @alias were refused ("has no version 'latest'"); a
    # registered name that starts with m- was taken for a logged model's id.
    registry.set_registered_model_alias(MODEL_NAME, "champion", "1")
    registry.create_registered_model("m-net")
    # MLflow finds a version's source (models:/m-...) through the process-wide store.
    mlflow.set_tracking_uri(uri)
    registry.create_model_version("m-net", versions[0].source, run_id=run_id)
    registry.set_registered_model_alias("m-net", "prod", "1")
    registry.create_registered_model("it's-net")  # a quote broke /latest's search
    registry.create_model_version("it's-net", versions[0].source, run_id=run_id)
    for name, ckpt in (
        ("by_version", f"models:/{MODEL_NAME}/1"),
        ("by_latest", f"models:/{MODEL_NAME}/latest"),
        ("by_alias", f"models:/{MODEL_NAME}@champion"),
        ("by_m_alias", "models:/m-net@prod"),
        ("by_quoted_latest", '"models:/it\'s-net/latest"'),  # quoted for Hydra's parser
        ("by_run", f"runs:/{run_id}"),
        ("by_model_id", f"models:/{model_id}"),
        # The run's own best.pt: it names its run, whose logged model it is.
        ("by_file", str(tmp / "train" / "checkpoints" / "best.pt")),
    ):
        cfg = compose_run(tmp, name, "mode=eval", f"ckpt={ckpt}", "logger.system_metrics=false")
        run(cfg)
        evaluated = json.loads((tmp / name / "metrics.json").read_text())
        for key in ("test/acc", "test/loss", "test/macro_f1"):
            assert evaluated[key] == pytest.approx(trained_metrics[key], abs=1e-5), key
        assert evaluated["source_run_id"] == run_id
    # Flip TTA's figures are another predictor's: the model is its input, not theirs.
    run(compose_run(tmp, "flip", "mode=eval", f"ckpt=runs:/{run_id}", "eval.tta=flip"))
    # The same data named on the command line at another size, decoded at the model's:
    # the same test split, hashed with the settings that built it (not data.image_size=16).
    current = ("eval.data=current", "data.num_samples=320", "data.image_size=16")
    run(compose_run(tmp, "current", "mode=eval", f"ckpt=runs:/{run_id}", *current))
    # Each eval run names the model it tested as its input, and its metrics are the
    # model's too, on the same test split as training's (eval.data=stored).
    client = MlflowClient(uri)
    evals = client.search_runs([client.get_run(run_id).info.experiment_id], "tags.mode = 'eval'")
    assert len(evals) == 10
    for evaluation in evals:
        inputs = client.get_run(evaluation.info.run_id).inputs  # search_runs leaves models out
        assert [m.model_id for m in inputs.model_inputs] == [model_id]
    db = tmp / "outputs" / "mlflow.db"
    linked = query(
        db,
        "SELECT run_id, metric_value, dataset_digest FROM logged_model_metrics "
        "WHERE model_id = ? AND metric_name = 'test/acc'",
        model_id,
    )
    plain = [e.info.run_id for e in evals if e.data.tags["eval.tta"] == "none"]
    assert len(plain) == 9 and {row[0] for row in linked} == {run_id, *plain}
    assert {row[2] for row in linked} == {logged_test_digest(db, run_id)}
    assert {round(row[1], 5) for row in linked} == {round(trained_metrics["test/acc"], 5)}


@pytest.mark.slow
def test_a_best_pt_of_a_run_another_store_tracked_is_tested_unlinked(trained, tmp_path, caplog):
    import logging

    tmp, _, run_id, _ = trained
    best = tmp / "train" / "checkpoints" / "best.pt"
    with caplog.at_level(logging.INFO, logger="runner"):
        run(compose_run(tmp_path, "elsewhere", "mode=eval", f"ckpt={best}"))
    assert f"run {run_id} is not in this store: its model is not linked" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "model" in r.msg]
    db = tmp_path / "outputs" / "mlflow.db"
    assert query(db, "SELECT COUNT(*) FROM inputs WHERE destination_type = 'MODEL_INPUT'") == [(0,)]


@pytest.mark.slow
def test_the_run_page_has_kind_source_datasets_system_metrics_and_run_log(trained):
    _, db, run_id, _ = trained
    (kind,) = query(db, "SELECT value FROM experiment_tags WHERE key = 'mlflow.experimentKind'")
    assert kind == (MODEL_TRAINING_KIND,)
    tags = dict(query(db, "SELECT key, value FROM tags WHERE run_uuid = ?", run_id))
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"] == "run.py"
    assert tags["mlflow.source.git.commit"] == tags["git_commit"]
    inputs = query(
        db,
        "SELECT d.name, d.digest, d.dataset_source_type, d.dataset_source, t.value "
        "FROM inputs i JOIN datasets d ON d.dataset_uuid = i.source_id "
        "JOIN input_tags t ON t.input_uuid = i.input_uuid "
        "WHERE i.destination_id = ? AND t.name = 'mlflow.data.context'",
        run_id,
    )
    assert sorted(row[4] for row in inputs) == ["test", "train", "val"]
    assert len({row[1] for row in inputs}) == 3  # a digest per split
    assert all(row[0] == "synthetic" and row[2] == "code" for row in inputs)
    assert "make_synthetic" in inputs[0][3]
    metrics = {
        k for (k,) in query(db, "SELECT DISTINCT key FROM metrics WHERE run_uuid = ?", run_id)
    }
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= metrics
    assert "startup_s" in metrics and not [m for m in metrics if m.startswith("startup/")]
    assert "model_logging_s" in metrics
    artifacts = artifacts_of(db, run_id)
    assert json.loads((artifacts / "startup.json").read_text())["data_s"] >= 0
    log = (artifacts / "run.log").read_text()
    assert "epoch 2/2" in log and "logged model models:/" in log


def test_a_digest_changes_with_the_data_and_every_switch_not_with_where_it_lives(tmp_path):
    def digests(*overrides: str) -> list[str]:
        cfg = compose_run(tmp_path, "unused", "data=digits", *overrides, tiny=False)
        return [r.digest for r in dataset_records(cfg.data, build_data(cfg.data))]

    base = digests()
    assert base == digests()  # the same data, the same digests
    for switch in (
        "data.label_noise=0.2",
        "data.imbalance_ratio=10",
        "data.fraction=0.5",
        "data.split_seed=1",
        "data.image_size=16",
    ):
        changed = digests(switch)
        assert changed[0] != base[0], switch  # the train split changed
        # The switches leave the test split as it is, and so its digest: models trained
        # with and without label noise were tested on two "data sets" of the same images.
        train_only = not switch.startswith(("data.split_seed", "data.image_size"))
        assert (changed[2] == base[2]) == train_only, switch
    cfg = compose_run(tmp_path, "unused", "data=digits", tiny=False)
    data = build_data(cfg.data)
    settings = content_settings(cfg.data)
    # Keys another data option adds (a fold, an exclusion list) count without being listed.
    OmegaConf.set_struct(cfg.data, False)
    with_fold = OmegaConf.merge(cfg.data, {"fold": 2, "exclude": ["a.png"]})
    assert split_digest(data.train, content_settings(with_fold), "train") != base[0]
    assert split_digest(data.test, content_settings(with_fold, "test"), "test") == base[2]
    assert split_digest(data.train, settings, "train") == base[0]
    moved = OmegaConf.merge(cfg.data, {"root": "/elsewhere", "num_workers": 7})
    assert split_digest(data.train, content_settings(moved), "train") == base[0]


def test_a_streamed_folder_keeps_its_digest_where_it_moves(tmp_path):
    """A streamed split hashed the absolute paths of its files: a moved copy got another."""
    import shutil

    from runner.data.sets.imagefolder import load_imagefolder
    from tests.datagen import make_imagefolder

    first = make_imagefolder(tmp_path / "a" / "pics", per_class=4, splits=("train", "test"))
    moved = shutil.copytree(first, tmp_path / "b" / "pics")
    common = {"image_size": 16, "num_workers": 0, "resident": False}
    splits = [load_imagefolder(str(root), **common) for root in (first, moved)]
    digests = [split_digest(data.train, {"name": "x"}, "train") for data in splits]
    assert digests[0] == digests[1]
    relabelled = splits[0].train.with_labels(1 - splits[0].train.labels.clamp(max=1))
    assert split_digest(relabelled, {"name": "x"}, "train") != digests[0]


class DataDependent(torch.nn.Module):
    """A model torch.export cannot trace (its branch depends on the pixels)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.float().mean() > 127:
            return torch.ones(images.shape[0], 2)
        return torch.zeros(images.shape[0], 2)


def test_a_model_that_cannot_be_logged_leaves_best_pt_in_the_run_instead(tmp_path):
    seed_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(uri, artifact_location=str(tmp_path / "art"), system_metrics=False)
    tracker.connect("x")
    tracker.start("r", tags={}, local_dir=tmp_path)
    best = tmp_path / "best.pt"
    torch.save({"model": {}}, best)
    example = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    assert tracker.log_model(DataDependent(), example, {}, [], fallback=best) is None
    tracker.finish("FINISHED")
    client = MlflowClient(uri)
    assert [f.path for f in client.list_artifacts(tracker.run_id, "checkpoints")] == [
        "checkpoints/best.pt"
    ]
    experiment = client.get_experiment_by_name("x").experiment_id
    assert list(client.search_logged_models([experiment])) == []  # no half-logged model
    fetched = fetch_checkpoint(f"runs:/{tracker.run_id}", uri, tmp_path / "dl")
    assert fetched.is_checkpoint and fetched.path.name == "best.pt"


def test_a_resumed_run_points_to_the_logs_an_earlier_outage_left_unsent(tmp_path, caplog):
    """The resume neither sent nor named them: its earlier epochs were missing from MLflow
    with nothing to say so."""
    import logging

    from runner.tracking.pending import write_pending

    seed_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = MlflowTracker(uri, artifact_location=str(tmp_path / "art"), system_metrics=False)
    first.connect("x")
    first.start("r", tags={}, local_dir=tmp_path)
    first.finish("KILLED")
    unsent = write_pending(tmp_path / "mlflow_pending.jsonl", uri, first.run_id, [("tags", {})])
    write_pending(tmp_path / "mlflow_pending.jsonl", uri, "another-run", [("tags", {})])
    again = MlflowTracker(uri, artifact_location=str(tmp_path / "art"), system_metrics=False)
    again.connect("x")
    with caplog.at_level(logging.WARNING, logger="runner"):
        again.start("r", tags={}, resume_run_id=first.run_id, local_dir=tmp_path)
    again.finish("FINISHED")
    assert f"python -m runner.tracking replay {unsent}" in caplog.text
    assert caplog.text.count("never received") == 1  # not the other run's file


def test_a_metric_that_is_not_finite_stays_the_runs_only(tmp_path):
    """MLflow stores a logged model's NaN as 0.0: a head/medium/tail group without test
    samples read `test/tail_acc = 0` on the model, which `< 0.2` searches matched."""
    from mlflow.entities import LoggedModelStatus

    from runner.tracking.inputs import DatasetRecord

    seed_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(uri, artifact_location=str(tmp_path / "art"), system_metrics=False)
    tracker.connect("x")
    tracker.start("r", tags={}, local_dir=tmp_path)
    client = MlflowClient(uri)
    logged = client.create_logged_model(tracker.experiment_id, source_run_id=tracker.run_id)
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    test_set = DatasetRecord("digits", "abc", "code", "{}", "test")
    tested = {"test/acc": 0.75, "test/tail_acc": float("nan")}
    tracker.log_metrics(tested, step=3, model_id=logged.model_id, dataset=test_set)
    tracker.finish("FINISHED")
    on_model = client.get_logged_model(logged.model_id).metrics
    assert [(m.key, m.value, m.dataset_digest) for m in on_model] == [("test/acc", 0.75, "abc")]
    run = client.get_run(tracker.run_id).data.metrics
    assert run["test/acc"] == 0.75 and math.isnan(run["test/tail_acc"])


def test_a_model_is_registered_once_whatever_quotes_its_name_holds(tmp_path):
    """A run tested again in place looked for its version with a filter on the name,
    which a name holding both quotes broke: the model was then never registered."""
    from mlflow.entities import LoggedModelStatus

    from runner.tracking.models import register_logged_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("x", artifact_location=str(tmp_path / "art"))
    run_id = client.create_run(experiment).info.run_id
    logged = client.create_logged_model(experiment, source_run_id=run_id)
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    for name in ('it\'s "net"', 'it\'s "net"', "net"):
        register_logged_model(uri, logged.model_id, name)
    versions = client.search_model_versions(f"source_path = 'models:/{logged.model_id}'")
    assert sorted((v.name, int(v.version)) for v in versions) == [
        ('it\'s "net"', 1),
        ("net", 1),
    ]


def test_a_param_too_long_for_mlflow_is_cut_visibly(tmp_path, caplog):
    """1,200 classes' train counts (over 6,000 characters) lost their tail in silence."""
    import logging

    seed_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MlflowTracker(uri, artifact_location=str(tmp_path / "art"), system_metrics=False)
    tracker.connect("x")
    tracker.start("r", tags={}, local_dir=tmp_path)
    counts = ",".join(["12"] * 2500)
    with caplog.at_level(logging.WARNING, logger="runner"):
        tracker.log_params({"data.train_class_counts": counts, "optim.lr": 0.1})
    tracker.finish("FINISHED")
    params = MlflowClient(uri).get_run(tracker.run_id).data.params
    assert len(params["data.train_class_counts"]) == 6000
    assert params["data.train_class_counts"].endswith("\u2026") and params["optim.lr"] == "0.1"
    assert "param(s) data.train_class_counts cut to MLflow's 6000 characters" in caplog.text


@pytest.mark.slow
def test_without_the_export_the_run_uploads_best_pt_and_eval_finds_it(tmp_path):
    """logger.export_model=false (TINY sets it): no torch.export, no logged model; the
    run's one copy of its weights is checkpoints/best.pt, which ckpt=runs:/ fetches."""
    assert "logger.export_model=false" in TINY
    run(compose_run(tmp_path, "train", "logger.system_metrics=false"))
    db = tmp_path / "outputs" / "mlflow.db"
    ((run_id,),) = query(db, "SELECT run_uuid FROM runs")
    client = MlflowClient(f"sqlite:///{db}")
    assert [f.path for f in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert [f.path for f in client.list_artifacts(run_id) if f.path == "model"] == []
    assert query(db, "SELECT COUNT(*) FROM logged_models") == [(0,)]
    metrics = {k for (k,) in query(db, "SELECT key FROM metrics WHERE run_uuid=?", run_id)}
    assert "test/acc" in metrics and "model_logging_s" not in metrics
    trained = json.loads((tmp_path / "train" / "metrics.json").read_text())
    run(compose_run(tmp_path, "eval", "mode=eval", f"ckpt=runs:/{run_id}"))
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["source_run_id"] == run_id
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-5)


def test_the_experiment_is_tagged_for_model_training_unless_a_kind_was_chosen(tmp_path):
    seed_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_experiment("old")
    client.create_experiment("genai", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("old", "genai", "new"):
        MlflowTracker(uri, artifact_location=str(tmp_path / "art")).connect(name)
    kinds = {
        name: client.get_experiment_by_name(name).tags.get("mlflow.experimentKind")
        for name in ("old", "genai", "new")
    }
    assert kinds == {
        "old": MODEL_TRAINING_KIND,
        "genai": "genai_development",
        "new": MODEL_TRAINING_KIND,
    }


@pytest.mark.slow
def test_a_rerun_in_place_logs_and_registers_no_second_copy_of_the_model(trained):
    """The same command in the finished run's dir tests and reports again, and it logged
    a second model and registered version 2 of the same weights in the same run. (Last in
    this file: the tests above count the fixture's one model.)"""
    tmp, db, run_id, uri = trained
    done = run_cli(*train_command(tmp))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    ((model_id, source),) = query(db, "SELECT model_id, source_run_id FROM logged_models")
    assert source == run_id
    assert f"is logged already (models:/{model_id})" in done.stdout + done.stderr
    registry = MlflowClient(uri, registry_uri=uri)
    assert [int(v.version) for v in registry.search_model_versions(f"name = '{MODEL_NAME}'")] == [1]
