"""`python -m runner.sweeps summary|collect` on a sweep dir whose files are damaged or gone.

Each sweep dir is built on disk as its jobs leave it (manifest.json, run dirs with
metrics.json); no job trains.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from runner.sweeps.__main__ import main
from tests.sweeps.sweep_dirs import finished_job

TRAIN_SWEEP = "trainer: {monitor: val/acc, monitor_mode: max}\n"


def _sweep(tmp_path: Path) -> Path:
    """A train sweep of two finished jobs, as the launcher leaves it."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(TRAIN_SWEEP)
    finished_job(sweep, 0, ["optim.lr=0.1"], 0.8)
    finished_job(sweep, 1, ["optim.lr=0.01"], 0.9)
    return sweep


def _csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["job"]: row for row in csv.DictReader(handle)}


@pytest.mark.parametrize(
    ("content", "told"),
    [
        ('{"jobs": {"optim.lr=0.1": {"num": 0, "sta', "is cut short"),
        ("", "is empty"),
        ("{}", "is not what the runner writes there"),
    ],
)
def test_a_damaged_manifest_is_named_with_its_fix(tmp_path, capsys, content, told):
    """A cut-short or empty manifest.json ended summary and collect in a JSONDecodeError
    traceback, and `{}` in KeyError: 'jobs'."""
    sweep = _sweep(tmp_path)
    manifest = sweep / "manifest.json"
    manifest.write_text(content)
    for command in ("summary", "collect"):
        assert main([command, str(sweep)]) == 1
        out = capsys.readouterr().out
        assert out.startswith(f"Error: {manifest} {told}"), out
        assert "Restore it from a copy of the sweep dir" in out
    assert not (sweep / "summary.md").exists()
    assert manifest.read_text() == content  # left for the user to restore


@pytest.mark.parametrize(
    ("content", "told"),
    [
        ("trainer: {monitor: val/acc, monitor_mode: max\nhydra:\n  mode: MULTI", "is cut short"),
        ("", "is empty"),
        ("- 1\n- 2\n", "is not what Hydra writes there: it holds a list"),
        ("12\n", "cannot be read as the config"),
    ],
)
def test_a_damaged_multirun_yaml_is_named_with_its_fix(tmp_path, capsys, content, told):
    """summary, collect and audit loaded multirun.yaml unchecked: a cut-short one ended
    them in a yaml.scanner traceback."""
    sweep = _sweep(tmp_path)
    launched = sweep / "multirun.yaml"
    launched.write_text(content)
    for command in ("summary", "collect", "audit"):
        assert main([command, str(sweep)]) == 1
        out = capsys.readouterr().out
        assert out.startswith(f"Error: {launched} {told}"), (command, out)
        assert "Restore it from a copy of the sweep dir" in out
    assert not (sweep / "summary.md").exists()
    assert launched.read_text() == content


def test_a_cut_short_sweep_json_or_slurm_jobs_json_is_named_with_its_fix(tmp_path, capsys):
    """A cut-short sweep.json (summary) or slurm_jobs.json (collect) ended the command in
    a JSONDecodeError traceback."""
    sweep = _sweep(tmp_path)
    (sweep / "sweep.json").write_text('{"parent_run_id": "ab')
    assert main(["summary", str(sweep)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"Error: {sweep / 'sweep.json'} is cut short"), out
    assert "or delete it" in out
    (sweep / "sweep.json").unlink()
    (sweep / "slurm_jobs.json").write_text('[{"job_id": "12", "num": 0, "overr')
    assert main(["collect", str(sweep)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"Error: {sweep / 'slurm_jobs.json'} is cut short"), out
    assert not (sweep / "summary.md").exists()


def test_a_jobs_cut_short_metrics_json_is_named_and_the_other_jobs_are_summarised(tmp_path, capsys):
    """One job's cut-short metrics.json ended the whole summary (and collect) in a
    JSONDecodeError traceback."""
    sweep = _sweep(tmp_path)
    metrics = sweep / "1" / "metrics.json"
    metrics.write_text('{"test/acc": 0.8')
    assert main(["summary", str(sweep)]) == 0
    written = (sweep / "summary.md").read_text()
    assert "| 0 | 0.1 | FINISHED | 0.8000 | 0.7500 |" in written
    assert "| 1 | 0.01 | FINISHED (no metrics) | 0.9000 |  |" in written
    assert f"Job 1 finished, but {metrics} is cut short" in written
    assert "Restore it from a copy of the run dir; until then its monitored value is the " in (
        written
    )
    assert "its test metrics are lost." in written
    capsys.readouterr()
    main(["collect", str(sweep)])
    out = capsys.readouterr().out
    assert f"{metrics} is cut short" in out and "Traceback" not in out
    assert "#0 job - FINISHED" in out and "test/acc=0.7500" in out


def test_a_rerun_summary_keeps_the_test_metrics_of_a_deleted_run_dir(tmp_path, capsys):
    """After a finished job's run dir was deleted, `summary` rewrote summary.md and
    summary.csv with its test metrics blank, although summary.csv still held them."""
    sweep = _sweep(tmp_path)
    assert main(["summary", str(sweep)]) == 0
    assert _csv_rows(sweep / "summary.csv")["1"]["test/acc"] == "0.85"
    shutil.rmtree(sweep / "1")
    for _ in range(2):  # and again: the rewritten summary.csv keeps them too
        assert main(["summary", str(sweep)]) == 0
        rows = _csv_rows(sweep / "summary.csv")
        assert (rows["0"]["test/acc"], rows["1"]["test/acc"]) == ("0.75", "0.85")
        written = (sweep / "summary.md").read_text()
        assert "| 1 | 0.01 | FINISHED (test metrics of summary.csv) | 0.9000 | 0.8500 |" in (
            written
        )
        assert f"Job 1 finished, but its {sweep / '1' / 'metrics.json'} is gone" in written
        assert "its test metrics are the earlier summary.csv's." in written
    capsys.readouterr()


def test_only_the_same_jobs_row_of_the_earlier_summary_csv_is_kept(tmp_path):
    """A row of another job (another number, or other overrides) is not taken."""
    sweep = _sweep(tmp_path)
    assert main(["summary", str(sweep)]) == 0
    rows = list(csv.reader((sweep / "summary.csv").open(newline="", encoding="utf-8")))
    header, *body = rows
    overrides = header.index("overrides")
    for row in body:  # job 1's row now names other overrides
        if row[0] == "1":
            row[overrides] = "optim.lr=0.5"
    with (sweep / "summary.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *body])
    (sweep / "1" / "metrics.json").write_text("")
    assert main(["summary", str(sweep)]) == 0
    assert _csv_rows(sweep / "summary.csv")["1"]["test/acc"] == ""
    assert "its test metrics are lost." in (sweep / "summary.md").read_text()


def test_a_path_that_does_not_exist_is_called_so(tmp_path, capsys):
    """`summary <missing path>` said the path "has no manifest.json"."""
    missing = tmp_path / "swep"
    for command in ("summary", "collect"):
        assert main([command, str(missing)]) == 1
        out = capsys.readouterr().out
        assert out.startswith(f"Error: {missing} does not exist"), out
    assert not missing.exists()


def _preview_sweep(tmp_path: Path) -> Path:
    """A mode=preview sweep of two jobs, of which job 0 drew its preview."""
    sweep = tmp_path / "preview"
    for num in (0, 1):
        (sweep / str(num) / ".hydra").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("mode: preview\n")
    (sweep / "0" / "aug_preview.png").write_bytes(b"\x89PNG")
    return sweep


def test_the_summary_of_a_preview_sweep_says_such_a_sweep_has_none(tmp_path, capsys):
    """`summary` of a mode=preview sweep dir said it was not a sweep dir and to pass the
    sweep dir itself."""
    sweep = _preview_sweep(tmp_path)
    assert main(["summary", str(sweep)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(
        f"Error: {sweep} is the sweep dir of a sweep of mode=preview, which has no summary"
    ), out
    assert "not a sweep dir" not in out
    assert not (sweep / "summary.md").exists()


def test_collect_of_a_preview_sweep_says_what_its_jobs_left(tmp_path, capsys):
    """`collect` listed a mode=preview sweep's finished jobs as UNKNOWN."""
    sweep = _preview_sweep(tmp_path)
    assert main(["collect", str(sweep)]) == 0
    first, second, legend = capsys.readouterr().out.splitlines()[:3]
    assert "#0 job - FINISHED" in first and "#1 job - NO OUTPUT" in second
    assert "UNKNOWN" not in first + second
    assert "FINISHED means the job's dir holds its aug_preview.png" in legend
    assert not (sweep / "summary.md").exists()
    (sweep / "1" / "error.txt").write_text("aug.transforms.0 (Linear) fails on ...\n")
    assert main(["collect", str(sweep)]) == 1  # a failed job, as in a training sweep
    assert "#1 job - FAILED" in capsys.readouterr().out.splitlines()[1]


def test_a_tie_for_the_best_is_said_not_hidden(tmp_path):
    """Two learning rates with the same mean val/acc over two seeds: the summary named the
    first one best and tagged it, and said nothing of the other."""
    from runner.sweeps.summary import summarize

    for num, (lr, seed, value) in enumerate(
        [("0.001", 0, 0.92), ("0.001", 1, 0.92), ("0.003", 0, 0.91), ("0.003", 1, 0.93)]
    ):
        finished_job(tmp_path / "grid", num, [f"optim.lr={lr}", f"seed={seed}"], value)
    summary = summarize(tmp_path / "grid", monitor="val/acc", maximize=True)
    assert summary.best_tags["best.optim.lr"] == "0.001"
    assert "Tied with the best: jobs 2, 3 (optim.lr=0.003), the same mean val/acc" in (
        summary.markdown
    )
    for num, (lr, value) in enumerate([("0.1", 0.9), ("0.01", 0.95), ("0.3", 0.95)]):
        finished_job(tmp_path / "single", num, [f"optim.lr={lr}"], value)
    markdown = summarize(tmp_path / "single", monitor="val/acc", maximize=True).markdown
    assert "Best: job 1 (optim.lr=0.01)" in markdown
    assert "Tied with the best: job 2 (optim.lr=0.3), the same val/acc" in markdown
    finished_job(tmp_path / "clear", 0, ["optim.lr=0.1"], 0.9)
    finished_job(tmp_path / "clear", 1, ["optim.lr=0.01"], 0.8)
    assert "Tied" not in summarize(tmp_path / "clear", monitor="val/acc", maximize=True).markdown
