"""The audit of a k-fold sweep: merging the fold outputs, cleanlab's Datalab, the files,
the parent run, the `audit` command, and whole sweeps (in-process and through SLURM)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner.data.build import build_data
from runner.data.folds import fold_indices
from runner.data.sets.digits import load_digits
from runner.data.switches import apply_switches
from runner.sweeps.audit import partial_folds_warning, run_audit
from runner.sweeps.audit_report import LABEL_ISSUE_COLUMNS
from runner.sweeps.manifest import update_manifest
from runner.sweeps.out_of_fold import (
    OOF_FILE,
    AuditError,
    OutOfFold,
    merge_folds,
    save_out_of_fold,
)
from tests.conftest import REPO, TINY, query, run_cli, seed_store

DIGITS = {
    "_target_": "runner.data.sets.digits.load_digits",
    "name": "digits",
    "image_size": 8,
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "split_seed": 0,
    "mean": None,
    "std": None,
}


def fake_sweep(
    root: Path,
    noise: float = 0.1,
    num_folds: int = 4,
    skip: tuple[int, ...] = (),
    edit_embeddings=None,
    fold_spaces: bool = False,
    shared: bool = True,
    id_prefix: str = "",
) -> tuple[Path, object]:
    """A sweep dir as K fold jobs leave it, with a logistic regression as the model.

    Digits at 8x8 with `noise` symmetric label noise (the runner's own switches); each
    fold's held-out probabilities come from a model fitted on the other folds, and the
    embeddings are the pixels, or with `fold_spaces` the pixels turned by a rotation of
    each fold's own, as each fold's network embeds in a space of its own. With `shared`,
    fold 0's job also embeds the other folds. `id_prefix` starts every sample id (a folder
    of an image folder's ids). Returns the sweep dir and the noisy data set.
    """
    from sklearn.linear_model import LogisticRegression

    data = apply_switches(load_digits(image_size=8), seed=0, label_noise=noise)
    data.train.ids = np.array([f"{id_prefix}{i}" for i in data.train.ids], dtype=object)
    pixels = data.train.images[:, 0].reshape(len(data.train), -1).float().numpy() / 255
    labels = data.train.labels.numpy()
    embeddings = pixels.copy()
    if edit_embeddings is not None:
        edit_embeddings(embeddings)
    data_cfg = {**DIGITS, "label_noise": noise, "num_folds": num_folds}
    for fold, (train, held) in enumerate(fold_indices(data.train.labels, num_folds, seed=0)):
        if fold in skip:
            continue
        model = LogisticRegression(max_iter=400).fit(pixels[train], labels[train])
        run_dir = root / str(fold)
        run_dir.mkdir(parents=True)
        space = embeddings
        if fold_spaces:
            turn = np.linalg.qr(np.random.default_rng(fold).normal(size=(64, 64)))[0]
            space = embeddings @ turn.astype(np.float32)
        others = fold == 0 and shared

        outputs = [
            OutOfFold(
                data.train.ids[rows], labels[rows], model.predict_proba(pixels[rows]), space[rows]
            )
            for rows in (held, train)
        ]
        save_out_of_fold(
            run_dir / OOF_FILE,
            outputs[0],
            class_names=data.class_names,
            fold=fold,
            num_folds=num_folds,
            space=outputs[1] if others else None,
        )
        if data.clean_train_labels is not None:  # as report_train_data writes it
            with (run_dir / "label_noise.csv").open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["sample_id", "clean_label", "noisy_label", "train_index"])
                for i, position in enumerate(train):
                    clean = int(data.clean_train_labels[position])
                    writer.writerow([data.train.ids[position], clean, labels[position], i])
        OmegaConf.save({"data": {**data_cfg, "fold": fold}}, run_dir / "config_resolved.yaml")
        update_manifest(
            root,
            f"data.fold={fold}",
            status="FINISHED",
            run_dir=str(run_dir),
            sweep_dir=str(root.resolve()),  # as runner.sweeps.job records it
            num=fold,
            overrides=[f"data.fold={fold}"],
            seconds=2.0,
        )
    return root, data


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_copied_or_moved_sweep_dir_is_merged_from_its_own_job_dirs(tmp_path):
    """The manifest's absolute run dirs made a copy read the original's files (a fold
    deleted from the copy was still merged) and a moved one report 0.0 s of training."""
    import shutil

    original, _ = fake_sweep(tmp_path / "sweep")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(copy / "1")
    merged = merge_folds(copy)
    assert sorted(merged.run_dirs) == [0, 2, 3]
    assert all(d.parent == copy for d in merged.run_dirs.values()), merged.run_dirs
    moved = tmp_path / "moved"
    original.rename(moved)
    merged = merge_folds(moved)
    assert sorted(merged.run_dirs) == [0, 1, 2, 3] and merged.train_seconds == 8.0


def test_audit_ranks_every_sample_and_flags_the_flipped_labels(tmp_path):
    sweep, data = fake_sweep(tmp_path / "sweep")
    result = run_audit(sweep, num_thumbnails=8)
    audit = sweep / "audit"
    names = {p.name for p in result.files}
    assert names == {
        "label_issues.csv",
        "near_duplicates.csv",
        "outliers.csv",
        "summary.md",
        "label_issues.png",
    }
    rows = read_rows(audit / "label_issues.csv")
    assert tuple(rows[0]) == LABEL_ISSUE_COLUMNS
    assert sorted(r["sample_id"] for r in rows) == sorted(str(i) for i in data.train.ids)
    quality = [float(r["label_quality"]) for r in rows]
    assert quality == sorted(quality), "most suspect first"
    given = {
        str(i): data.class_names[int(y)]
        for i, y in zip(data.train.ids, data.train.labels, strict=True)
    }
    assert all(r["given_label"] == given[r["sample_id"]] for r in rows)
    flipped = {
        str(i)
        for i, clean, noisy in zip(
            data.train.ids, data.clean_train_labels, data.train.labels, strict=True
        )
        if clean != noisy
    }
    flagged = {r["sample_id"] for r in rows if r["is_label_issue"] == "True"}
    assert result.counts["num_label_issues"] == len(flagged) > 0
    precision = len(flagged & flipped) / len(flagged)
    recall = len(flagged & flipped) / len(flipped)
    assert precision > 0.6 and recall > 0.6, (precision, recall)  # the base rate is 0.1
    assert result.known_noise["precision"] == pytest.approx(precision)
    assert result.known_noise["recall"] == pytest.approx(recall)
    summary = (audit / "summary.md").read_text()
    assert f"precision {precision:.3f} and recall {recall:.3f}" in summary
    assert f"| label issues | {len(flagged)} |" in summary and "4 of 4 fold jobs" in summary
    assert "Check before acting" not in summary  # 10% of the labels, about as many flagged
    # cleanlab flags no class of digits as rare; the summary says how rare the rarest is.
    counts = np.bincount(data.train.labels.numpy(), minlength=10)
    rarest = int(np.argmin(counts))
    rarest_line = f"The rarest class, {data.class_names[rarest]}, has {counts[rarest]} samples"
    assert f"Class imbalance: none flagged. {rarest_line}" in summary
    assert "Only the train split was audited" in summary
    assert (audit / "label_issues.png").stat().st_size > 10_000
    top = rows[0]
    assert top["suggested_label"] != top["given_label"] and top["is_label_issue"] == "True"
    # Audited again without thumbnails: no picture of the earlier audit is left beside it.
    again = run_audit(sweep, num_thumbnails=0)
    assert "label_issues.png" not in {p.name for p in again.files}
    assert not (audit / "label_issues.png").exists()


def test_an_audit_that_flags_many_labels_says_what_to_check_before_acting(tmp_path, caplog):
    """An audit of weak fold models flagged a third of the samples, and its summary
    offered them to data.exclude as it did a handful."""
    sweep, _ = fake_sweep(tmp_path / "sweep", noise=0.4)
    with caplog.at_level("WARNING", logger="runner.sweeps.audit"):
        result = run_audit(sweep, num_thumbnails=0)
    rows = read_rows(sweep / "audit" / "label_issues.csv")
    share = result.counts["num_label_issues"] / len(rows)
    assert share > 0.2
    summary = (sweep / "audit" / "summary.md").read_text()
    assert f"**Check before acting:** {share:.1%} of the samples are flagged" in summary
    assert "model.pretrained=true" in summary and "flagged as label issues" in caplog.text


def test_near_duplicates_and_outliers_are_listed_by_sample_id(tmp_path):
    def edit(embeddings):
        embeddings[11] = embeddings[10]  # an exact copy
        embeddings[20] = 25.0  # far from every image

    sweep, data = fake_sweep(
        tmp_path / "sweep", noise=0.0, edit_embeddings=edit, id_prefix="train/grün/"
    )
    # Files the fold jobs skipped (streamed, a job may find one the others did not).
    (sweep / "0" / "bad_files.txt").write_text("a.jpg: empty\nb.txt: not an image\n")
    (sweep / "1" / "bad_files.txt").write_text("a.jpg: empty\n")
    result = run_audit(sweep, num_thumbnails=0)
    duplicates = {r["sample_id"]: r for r in read_rows(sweep / "audit" / "near_duplicates.csv")}
    first, second = str(data.train.ids[10]), str(data.train.ids[11])
    # A JSON list: image-folder ids are paths, which may hold spaces.
    assert second in json.loads(duplicates[first]["duplicate_ids"])
    assert first in json.loads(duplicates[second]["duplicate_ids"])
    # As written (not "gr\u00fcn"): an id copied from the list into data.exclude matches.
    assert second in duplicates[first]["duplicate_ids"]
    outliers = read_rows(sweep / "audit" / "outliers.csv")
    assert outliers[0]["sample_id"] == str(data.train.ids[20]), "the most outlying first"
    assert result.counts["num_near_duplicates"] == len(duplicates)
    assert result.counts["num_outliers"] == len(outliers)
    assert not (sweep / "audit" / "label_issues.png").exists()
    summary = (sweep / "audit" / "summary.md").read_text()
    assert "Injected label noise" not in summary
    assert "Act on it: `data.exclude=" in summary and "Only the train split" in summary
    assert (
        "2 file(s) did not decode, so no fold job trained on them and the audit does not "
        f"rank them: {sweep / '0' / 'bad_files.txt'} lists them." in summary
    )


@pytest.mark.parametrize("shared", [True, False])
def test_a_duplicate_whose_copies_are_in_two_folds_is_found_in_fold_0s_space(tmp_path, shared):
    """Each fold's embeddings come from its own model: stacked, the copies of an image in
    two folds were far apart, and only duplicates within one fold were found."""
    folds = list(fold_indices(load_digits(image_size=8).train.labels, 4, seed=0))
    first, second = int(folds[1][1][0]), int(folds[2][1][0])  # held out by folds 1 and 2

    def edit(embeddings):
        embeddings[second] = embeddings[first]

    sweep, data = fake_sweep(
        tmp_path / "sweep", noise=0.0, edit_embeddings=edit, fold_spaces=True, shared=shared
    )
    run_audit(sweep, num_thumbnails=0)
    duplicates = {r["sample_id"] for r in read_rows(sweep / "audit" / "near_duplicates.csv")}
    pair = {str(data.train.ids[first]), str(data.train.ids[second])}
    summary = (sweep / "audit" / "summary.md").read_text()
    if shared:
        assert pair <= duplicates and "embeddings of fold 0's model, for every sample" in summary
    else:
        assert not pair & duplicates and "duplicates whose copies are in two folds" in summary


def test_the_injected_noise_is_measured_with_the_record_of_a_job_without_outputs(tmp_path):
    """With two folds, the job that wrote out_of_fold.npz lists the other fold's clean
    labels, not its own: precision and recall vanished from the summary."""
    sweep, _ = fake_sweep(tmp_path / "sweep", noise=0.2, num_folds=2)
    (sweep / "1" / OOF_FILE).unlink()
    result = run_audit(sweep, num_thumbnails=0)
    assert result.known_noise["flipped"] > 0 and 0 < result.known_noise["precision"] <= 1
    assert "Injected label noise" in (sweep / "audit" / "summary.md").read_text()


def test_a_missing_fold_is_named_and_the_others_are_audited(tmp_path):
    sweep, data = fake_sweep(tmp_path / "sweep", skip=(2,))
    merged = merge_folds(sweep)
    assert merged.missing_folds == [2] and sorted(merged.run_dirs) == [0, 1, 3]
    assert len(merged.sample_id) < len(data.train)
    run_audit(sweep, num_thumbnails=0)
    assert "3 of 4 fold jobs (missing folds: [2])" in (sweep / "audit" / "summary.md").read_text()


def test_a_damaged_fold_file_is_named_and_the_others_are_audited(tmp_path, caplog):
    """A fold file cut short by a copy stopped the audit with a bare BadZipFile."""
    sweep, _ = fake_sweep(tmp_path / "sweep")
    damaged = next(sweep.glob(f"*/{OOF_FILE}"))
    damaged.write_bytes(damaged.read_bytes()[:500])
    merged = merge_folds(sweep)
    assert len(merged.missing_folds) == 1 and len(merged.run_dirs) == 3
    assert f"audit: {damaged} cannot be read (BadZipFile" in caplog.text
    assert "a finished fold job whose file is missing or unreadable tests" in caplog.text
    for path in sweep.glob(f"*/{OOF_FILE}"):
        path.write_bytes(b"")
    with pytest.raises(AuditError, match=r"no fold job of .* has a readable out_of_fold\.npz"):
        merge_folds(sweep)


def test_a_sample_two_fold_jobs_held_out_is_named_by_its_id(tmp_path):
    """The error named it as numpy writes a scalar: sample np.str_('synthetic:...')."""
    sweep, _ = fake_sweep(tmp_path / "sweep")
    first, second = sorted(sweep.glob(f"*/{OOF_FILE}"))[:2]
    taken = str(np.load(first)["sample_id"][0])
    arrays = dict(np.load(second))
    ids = arrays["sample_id"].astype(object)
    ids[0] = taken
    arrays["sample_id"] = np.asarray(ids, dtype=str)
    np.savez(second, **arrays)
    with pytest.raises(AuditError, match="is held out by two fold jobs") as caught:
        merge_folds(sweep)
    assert str(caught.value).startswith(f"sample {taken!r} is held out by two fold jobs of ")


def test_two_jobs_holding_out_one_fold_fail_the_audit_with_a_fix_and_no_traceback(tmp_path, caplog):
    """A fold file copied over another job's: the sweep's audit printed a traceback, and
    its advice did not say how to get the job's own file back."""
    from omegaconf import OmegaConf

    from runner.sweeps.audit import audit_if_asked

    sweep, _ = fake_sweep(tmp_path / "sweep")
    first, second = sorted(sweep.glob(f"*/{OOF_FILE}"))[:2]
    second.write_bytes(first.read_bytes())
    config = OmegaConf.create({"audit": {"enabled": True, "num_thumbnails": 0}})
    problem = audit_if_asked(config, sweep, None)
    assert problem is not None and "held out fold" in problem
    assert "delete it and run the sweep again with sweep.resume=" in caplog.text
    assert "Traceback" not in caplog.text


def test_an_audit_redone_with_a_fold_missing_keeps_the_complete_one_beside_it(tmp_path):
    """A redo after a fold's out_of_fold.npz went missing replaced the complete audit's
    files with those of fewer samples, and the complete ones were lost."""
    sweep, data = fake_sweep(tmp_path / "sweep")
    run_audit(sweep, num_thumbnails=0)
    complete = (sweep / "audit" / "label_issues.csv").read_text()
    assert len(read_rows(sweep / "audit" / "label_issues.csv")) == len(data.train)
    (sweep / "2" / OOF_FILE).unlink()
    run_audit(sweep, num_thumbnails=0)
    (aside,) = sweep.glob("audit.replaced-*")
    assert (aside / "label_issues.csv").read_text() == complete
    assert len(read_rows(sweep / "audit" / "label_issues.csv")) < len(data.train)
    run_audit(sweep, num_thumbnails=0)  # as many samples as the audit in place: replaced
    assert len(list(sweep.glob("audit.replaced-*"))) == 1
    # Rows flagged by hand (as README suggests) were written over by a redo, unsaid.
    issues = sweep / "audit" / "label_issues.csv"
    rows = list(csv.reader(issues.open(newline="", encoding="utf-8")))
    rows[1][4] = "False" if rows[1][4] == "True" else "True"
    with issues.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    edited = issues.read_text()
    run_audit(sweep, num_thumbnails=0)
    kept = [p for p in sweep.glob("audit.replaced-*") if p != aside]
    assert len(kept) == 1 and (kept[0] / "label_issues.csv").read_text() == edited
    assert issues.read_text() != edited


def test_an_audit_folder_that_is_a_file_or_a_sweep_dir_that_is_not_there_is_named(tmp_path, capsys):
    """A file named audit in the sweep dir ended the audit command with a traceback, and
    a mistyped sweep dir was said to have no fold job rather than not to exist."""
    from runner.sweeps.__main__ import main

    sweep, _ = fake_sweep(tmp_path / "sweep")
    (sweep / "audit").write_text("notes")
    assert main(["audit", str(sweep)]) == 1
    said = capsys.readouterr().out
    assert f"Error: {sweep / 'audit'} is a file" in said and "move or rename" in said
    assert (sweep / "audit").read_text() == "notes"
    assert main(["audit", str(tmp_path / "swep")]) == 1
    assert f"{tmp_path / 'swep'} does not exist" in capsys.readouterr().out


def test_a_sweep_of_some_folds_is_told_at_its_start_which_its_audit_leaves_out(make_cfg):
    """`experiment=audit 'data.fold=0,1'` trained both folds and named the missing ones
    only when the audit ran."""
    from omegaconf import open_dict

    def warning_for(*task: str, enabled: bool = True) -> str | None:
        cfg = make_cfg("experiment=audit", "data.num_folds=3", f"audit.enabled={enabled}")
        with open_dict(cfg):
            cfg.hydra = OmegaConf.create({"mode": "RunMode.MULTIRUN", "overrides": {"task": task}})
        return partial_folds_warning(cfg)

    warning = warning_for("data.fold=0,2")
    assert warning is not None and "leaves out the samples of fold(s) [1]" in warning
    assert "'data.fold=range(3)'" in warning
    assert warning_for("data.fold=0,1,2") is None
    assert warning_for("data.fold=0,1", enabled=False) is None


def test_what_cannot_be_audited_is_refused_with_what_to_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AuditError, match=r"no fold job with out_of_fold\.npz.*experiment=audit"):
        merge_folds(empty)
    sweep, _ = fake_sweep(tmp_path / "sweep", num_folds=2)
    twin = sweep / "9"
    twin.mkdir()
    (twin / OOF_FILE).write_bytes((sweep / "0" / OOF_FILE).read_bytes())
    update_manifest(sweep, "x", status="FINISHED", run_dir=str(twin), num=9, overrides=[])
    with pytest.raises(AuditError, match=r"two jobs of .* held out fold 0"):
        merge_folds(sweep)


def test_the_flagged_samples_can_be_excluded_by_the_audit_file(tmp_path, make_cfg):
    sweep, data = fake_sweep(tmp_path / "sweep")
    result = run_audit(sweep, num_thumbnails=0)
    path = sweep / "audit" / "label_issues.csv"
    overrides = ["data=digits", "data.image_size=8", "data.label_noise=0.1", f"data.exclude={path}"]
    cleaned = build_data(make_cfg(*overrides, tiny=False).data)
    assert cleaned.extra_params["data.num_excluded"] == result.counts["num_label_issues"]
    assert len(cleaned.train) == len(data.train) - result.counts["num_label_issues"]


def test_thumbnails_come_from_the_data_set_by_id(tmp_path):
    from runner.data.lookup import load_images

    data = load_digits(image_size=8)
    wanted = [str(data.train.ids[3]), str(data.test.ids[0])]
    images = load_images(DIGITS, wanted)
    assert set(images) == set(wanted)
    assert np.array_equal(images[wanted[0]].numpy(), data.train.images[3].numpy())


def test_a_relative_data_root_is_the_fold_jobs_own_when_audited_from_elsewhere(
    tmp_path, monkeypatch
):
    """data.root=../leaves was taken from the auditing command's working directory: the
    audit redone from another had no thumbnails (every tile 'no image')."""
    from types import SimpleNamespace

    from runner.sweeps.audit_report import _data_config

    job_cwd = tmp_path / "work"
    (job_cwd / "leaves" / "train").mkdir(parents=True)
    run_dir = tmp_path / "sweep" / "0"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save({"data": {"root": "leaves", "name": "leaves"}}, run_dir / "config_resolved.yaml")
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(job_cwd)}}}, run_dir / ".hydra" / "hydra.yaml")
    monkeypatch.chdir(tmp_path)  # the audit's own working directory has no leaves/
    data = _data_config(SimpleNamespace(run_dirs={0: run_dir}))
    assert data["root"] == str(job_cwd / "leaves") and data["name"] == str(job_cwd / "leaves")


def test_the_audit_command_draws_as_many_thumbnails_as_the_sweep_asked(tmp_path):
    """It drew 32 whatever the sweep's audit.num_thumbnails."""
    from runner.sweeps.audit import NUM_THUMBNAILS, configured_thumbnails

    assert configured_thumbnails(tmp_path) == NUM_THUMBNAILS  # no multirun.yaml
    OmegaConf.save({"audit": {"num_thumbnails": 3}}, tmp_path / "multirun.yaml")
    assert configured_thumbnails(tmp_path) == 3


def test_the_audit_is_logged_to_the_parent_run_and_the_command_redoes_it(tmp_path, capfd):
    from runner.sweeps.__main__ import main
    from runner.tracking.mlflow_tracker import MlflowTracker

    db = seed_store(tmp_path)
    uri = f"sqlite:///{db}"
    sweep, _ = fake_sweep(tmp_path / "sweep")
    parent = MlflowTracker(tracking_uri=uri, artifact_location=str(tmp_path / "mlartifacts"))
    parent.connect(experiment_name="digits")
    parent.start(run_name="sweep", tags={"sweep.role": "parent"}, local_dir=sweep)
    parent.finish("FINISHED")
    info = {"parent_run_id": parent.run_id, "tracking_uri": uri, "experiment_name": "digits"}
    (sweep / "sweep.json").write_text(json.dumps(info))

    capfd.readouterr()
    assert main(["audit", str(sweep), "--thumbnails", "4"]) == 0
    # The parent run's system metrics are the sweep's, not this command's.
    assert "system metrics" not in "".join(capfd.readouterr()).lower()
    metrics = dict(query(db, "SELECT key, value FROM metrics WHERE run_uuid=?", parent.run_id))
    flagged = sum(
        r["is_label_issue"] == "True" for r in read_rows(sweep / "audit" / "label_issues.csv")
    )
    assert metrics["audit/num_label_issues"] == flagged
    assert {"audit/num_near_duplicates", "audit/num_outliers"} <= set(metrics)
    assert 0.6 < metrics["audit/known_noise_precision"] <= 1
    tags = dict(query(db, "SELECT key, value FROM tags WHERE run_uuid=?", parent.run_id))
    assert tags["audit"] == "audit/summary.md"
    ((artifacts,),) = query(db, "SELECT artifact_uri FROM runs WHERE run_uuid=?", parent.run_id)
    logged = {p.name for p in (Path(artifacts.removeprefix("file://")) / "audit").iterdir()}
    assert {"label_issues.csv", "near_duplicates.csv", "outliers.csv", "summary.md"} <= logged
    ((status,),) = query(db, "SELECT status FROM runs WHERE run_uuid=?", parent.run_id)
    assert status == "FINISHED"
    # Audited again without the injected noise's record: no value of the first audit
    # stays the run's latest beside the second's.
    for path in sweep.glob("*/label_noise.csv"):
        path.unlink()
    assert main(["audit", str(sweep), "--thumbnails", "0"]) == 0
    latest = dict(
        query(db, "SELECT key, is_nan FROM latest_metrics WHERE run_uuid=?", parent.run_id)
    )
    assert latest["audit/known_noise_precision"] == 1 and latest["audit/known_noise_recall"] == 1


def test_the_audit_command_writes_its_files_when_the_parent_runs_store_is_gone(tmp_path, caplog):
    """A sweep dir copied off the cluster: the files come first, the store is not created."""
    from runner.sweeps.__main__ import main

    sweep, _ = fake_sweep(tmp_path / "sweep")
    gone = tmp_path / "gone" / "mlflow.db"
    info = {"parent_run_id": "0" * 32, "tracking_uri": f"sqlite:///{gone}", "experiment_name": "d"}
    (sweep / "sweep.json").write_text(json.dumps(info))
    assert main(["audit", str(sweep), "--thumbnails", "0"]) == 0
    assert read_rows(sweep / "audit" / "label_issues.csv")
    assert not gone.parent.exists()
    assert "not logged to the sweep's parent run" in caplog.text


def test_collect_summarises_and_audits_when_the_parent_runs_store_is_gone(tmp_path, caplog):
    from runner.sweeps.callback import finish_submitted_sweep

    sweep, _ = fake_sweep(tmp_path / "sweep")
    for fold in range(4):
        (sweep / str(fold) / "metrics.json").write_text(json.dumps({"test/acc": 0.9}))
    config = {
        "trainer": {"monitor": "val/acc", "monitor_mode": "max"},
        "audit": {"enabled": True, "num_thumbnails": 0},
    }
    OmegaConf.save(config, sweep / "multirun.yaml")
    gone = tmp_path / "gone" / "mlflow.db"
    info = {"parent_run_id": "0" * 32, "tracking_uri": f"sqlite:///{gone}", "experiment_name": "d"}
    (sweep / "sweep.json").write_text(json.dumps(info))
    assert finish_submitted_sweep(sweep) == 0
    assert (sweep / "summary.md").is_file() and (sweep / "audit" / "label_issues.csv").is_file()
    assert not gone.parent.exists()
    assert "the summary is written to the sweep dir only" in caplog.text


def test_checks_cleanlab_could_not_run_are_reported_as_not_checked(tmp_path):
    """With 8 samples Datalab skips the neighbour checks: no count of 0 is reported."""
    data = load_digits(image_size=8)
    pixels = data.train.images[:8, 0].reshape(8, -1).float().numpy() / 255
    labels = np.arange(8) % 2
    for fold in range(2):
        run_dir = tmp_path / "sweep" / str(fold)
        run_dir.mkdir(parents=True)
        held = np.arange(fold, 8, 2)
        probabilities = np.full((4, 2), 0.5)
        save_out_of_fold(
            run_dir / OOF_FILE,
            OutOfFold(data.train.ids[held], labels[held], probabilities, pixels[held]),
            class_names=["a", "b"],
            fold=fold,
            num_folds=2,
        )
        update_manifest(
            tmp_path / "sweep",
            f"data.fold={fold}",
            status="FINISHED",
            run_dir=str(run_dir),
            num=fold,
            overrides=[f"data.fold={fold}"],
            seconds=1.0,
        )
    result = run_audit(tmp_path / "sweep", num_thumbnails=0)
    assert result.counts["num_near_duplicates"] is None and result.counts["num_outliers"] is None
    summary = (tmp_path / "sweep" / "audit" / "summary.md").read_text()
    assert "| near duplicates | not checked" in summary


def test_the_audit_command_on_a_dir_without_fold_outputs_says_what_to_run(tmp_path, capsys):
    from runner.sweeps.__main__ import main

    assert main(["audit", str(tmp_path)]) == 1
    assert "experiment=audit" in capsys.readouterr().out


def test_experiment_audit_without_m_is_refused_before_any_output(tmp_path):
    out = tmp_path / "outputs"
    done = run_cli("experiment=audit", f"paths.output_dir={out}")
    assert done.returncode == 1
    assert "audits the K fold jobs of a sweep: add -m" in done.stderr
    assert not out.exists()


def test_an_audit_sweep_over_another_key_is_refused_before_any_output(tmp_path):
    out = tmp_path / "outputs"
    done = run_cli("-m", "experiment=audit", "optim.lr=1e-3,1e-2", f"paths.output_dir={out}")
    assert done.returncode == 1
    assert "optim.lr is swept as well" in done.stderr and "sweep only data.fold" in done.stderr
    assert not out.exists()


def test_an_audit_sweep_with_a_searched_range_is_refused_before_any_output(tmp_path):
    """An Optuna interval is swept too (it has no list of values to expand)."""
    out = tmp_path / "outputs"
    done = run_cli("-m", "experiment=audit", "hparams_search=optuna", f"paths.output_dir={out}")
    assert done.returncode == 1
    swept = "optim.lr, optim.weight_decay, loss.label_smoothing are swept as well"
    assert swept in done.stderr, done.stderr[-2000:]
    assert not out.exists()


# --- whole sweeps ------------------------------------------------------------------


def sweep_command(out: Path, *overrides: str) -> list[str]:
    seed_store(out)
    return [
        sys.executable,
        str(REPO / "run.py"),
        "-m",
        "experiment=audit",
        f"paths.output_dir={out}",
        *TINY,
        "data.num_samples=200",
        "data.num_folds=2",
        "audit.num_thumbnails=4",
        *overrides,
    ]


def check_audited_sweep(out: Path, sweep: Path) -> None:
    """Both fold jobs' outputs cover the train split; the audit is in the dir and MLflow."""
    merged = merge_folds(sweep)
    assert sorted(merged.run_dirs) == [0, 1] and merged.num_folds == 2
    for name in ("label_issues.csv", "near_duplicates.csv", "outliers.csv", "summary.md"):
        assert (sweep / "audit" / name).is_file(), name
    assert (sweep / "audit" / "label_issues.png").stat().st_size > 5_000
    rows = read_rows(sweep / "audit" / "label_issues.csv")
    assert len(rows) == len(merged.sample_id) and all(
        r["sample_id"].startswith("synthetic:") for r in rows
    )
    assert merged.embeddings.shape[1] == 96, "test_resnet's pooled features"
    assert merged.shared_embeddings.shape == merged.embeddings.shape, "fold 0's, for all"
    np.testing.assert_allclose(merged.probabilities.sum(1), 1, atol=1e-4)
    db = out / "mlflow.db"
    parent = json.loads((sweep / "sweep.json").read_text())["parent_run_id"]
    metrics = dict(query(db, "SELECT key, value FROM metrics WHERE run_uuid=?", parent))
    assert metrics["audit/num_label_issues"] == sum(r["is_label_issue"] == "True" for r in rows)
    assert "audit/num_near_duplicates" in metrics and "audit/num_outliers" in metrics
    assert "## Mean +- std over folds" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_experiment_audit_runs_the_fold_jobs_and_audits_them(tmp_path):
    out = tmp_path / "outputs"
    sweep = tmp_path / "sweep"
    command = sweep_command(out, f"hydra.sweep.dir={sweep}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    jobs = json.loads((sweep / "manifest.json").read_text())["jobs"]
    folds = sorted(
        o for job in jobs.values() for o in job["overrides"] if o.startswith("data.fold")
    )
    assert folds == ["data.fold=0", "data.fold=1"] and len(jobs) == 2
    assert {job["sweep_dir"] for job in jobs.values()} == {str(sweep.resolve())}
    check_audited_sweep(out, sweep)
    # Fold files damaged by a copy, or another job's copied over a job's: the audit's
    # advice, sweep.resume, kept the finished jobs as they were, and their folds stayed out
    # (or the audit failed with a traceback). Such a job now runs again and rewrites it.
    damaged, other = sweep / "1" / OOF_FILE, sweep / "0" / OOF_FILE
    other.write_bytes(damaged.read_bytes())
    damaged.write_bytes(damaged.read_bytes()[:1000])
    again = subprocess.run(
        [*command, f"sweep.resume={sweep}"], capture_output=True, text=True, timeout=600
    )
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert f"runs again: {damaged} cannot be read (BadZipFile" in output
    assert f"runs again: {other} holds the outputs of fold 1, not of its fold 0" in output
    assert sorted(merge_folds(sweep).run_dirs) == [0, 1] and "missing folds" not in output
    assert "Traceback" not in output


def test_folds_a_class_cannot_fill_stop_the_sweep_at_the_first_job_without_an_audit(tmp_path):
    """Every one of the K jobs failed on the same data (300 with data.num_folds=300),
    then the audit printed a traceback blaming the sweep for not being a k-fold one."""
    out, sweep = tmp_path / "outputs", tmp_path / "sweep"
    command = sweep_command(
        out, f"hydra.sweep.dir={sweep}", "data.num_folds=5", "data.samples_per_class=3"
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "every class needs at least 5 train samples" in done.stderr, done.stderr[-3000:]
    assert "audit skipped: no fold job finished" in done.stdout
    assert "Traceback" not in done.stderr + done.stdout and "AuditError" not in done.stdout
    jobs = json.loads((sweep / "manifest.json").read_text())["jobs"]
    statuses = [job["status"] for job in jobs.values()]
    assert statuses == ["FAILED", *["SKIPPED"] * 4], statuses  # fail_fast: not started


def test_an_audit_csv_is_replaced_whole_or_not_at_all(tmp_path):
    """A redo that fails while writing left a truncated label_issues.csv behind."""
    from runner.sweeps.audit_report import write_csv

    path = tmp_path / "label_issues.csv"
    write_csv(path, ("sample_id", "is_label_issue"), [("a.png", True)])
    before = path.read_text()

    def rows():
        yield ("b.png", True)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_csv(path, ("sample_id", "is_label_issue"), rows())
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_an_audit_of_few_samples_a_class_says_to_read_the_ranking_not_the_flags():
    """200 classes of 11 samples: is_label_issue found 57% of the flipped labels (1% at
    1000 classes of 8), the label_quality ranking 99%, and nothing said so."""
    from runner.sweeps.audit_report import few_per_class_caution

    caution = few_per_class_caution(np.repeat(np.arange(200), 11))
    assert caution is not None and "about 11 samples a class (200 classes)" in caution
    assert "is_label_issue is True on those rows" in caution
    assert few_per_class_caution(np.repeat(np.arange(10), 140)) is None  # digits


def test_an_audit_that_flags_nothing_does_not_offer_to_drop_the_flagged_samples(tmp_path):
    from runner.sweeps.audit_report import act_on_it

    assert act_on_it(tmp_path / "label_issues.csv", 3).startswith("Act on it: `data.exclude=")
    none = act_on_it(tmp_path / "label_issues.csv", 0)
    assert none.startswith("No label is flagged: data.exclude and data.relabel")
    assert "Only the train split was audited" in none
