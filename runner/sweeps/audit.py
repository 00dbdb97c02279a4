"""The audit of a k-fold sweep: label issues, near duplicates and outliers, by cleanlab.

Each fold job of `python run.py -m experiment=audit` (or any sweep over `data.fold`)
writes its held-out fold's softmax probabilities and penultimate-layer embeddings into
`<run dir>/out_of_fold.npz` (`runner.training.oof`). The audit merges them over the K
jobs (every train sample then has a prediction from a model that never trained on it)
and runs cleanlab's `Datalab` with `pred_probs` = the probabilities and `features` = the
embeddings (those of fold 0's model for every sample, which its job writes too, so that
they share one space): label issues (confident learning, from the probabilities), near
duplicates, outliers and class imbalance. It writes `<sweep dir>/audit/`:

    label_issues.csv     every sample, most suspect first: sample_id, given_label,
                         suggested_label, label_quality, is_label_issue
    near_duplicates.csv  the samples cleanlab flags as near duplicates, with their sets
    outliers.csv         the samples it flags as outliers
    summary.md           counts, folds, timings, the top suspects
    label_issues.png     the top suspects as thumbnails, given and suggested class

(written by `audit_report`) and logs them with `audit/num_label_issues`,
`audit/num_near_duplicates` and `audit/num_outliers` to the sweep's MLflow parent run.
It reads only the sweep dir, so it works whichever launcher ran the jobs (SLURM
included) and can be redone:

    python -m runner.sweeps audit <sweep dir>

An audit redone keeps the earlier one in `audit.replaced-<time>/` where it would lose
something: more samples, or CSV files edited since they were written (`earlier_audit`).
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runner.config.sweep_values import read_sweeps, values_of
from runner.sweeps.audit_report import (
    AUDIT_DIR,
    draw_suspects,
    few_per_class_caution,
    many_flags_caution,
    oof_accuracy,
    shown_count,
    summary_markdown,
    write_label_issues,
    write_near_duplicates,
    write_outliers,
)
from runner.sweeps.earlier_audit import keep_earlier_audit, record_written
from runner.sweeps.manifest import (
    PARENT_RUN,
    job_run_dir,
    read_launch_config,
    read_manifest,
    reopen_parent_run,
)
from runner.sweeps.out_of_fold import AuditError, MergedFolds, merge_folds
from runner.tracking.protocol import Tracker, end_run

log = logging.getLogger(__name__)

NUM_THUMBNAILS = 32  # top suspects drawn in label_issues.png (audit.num_thumbnails)
ISSUE_TYPES = ("label", "near_duplicate", "outlier", "class_imbalance")


@dataclass
class AuditResult:
    """What `run_audit` found and wrote."""

    # None = cleanlab could not check that issue type (too few samples).
    counts: dict[str, int | None]
    files: list[Path]
    datalab_seconds: float
    train_seconds: float
    known_noise: dict[str, float] = field(default_factory=dict)


def find_issues(merged: MergedFolds) -> tuple[Any, float]:
    """Runs cleanlab's Datalab on the merged outputs; returns it and its seconds."""
    from cleanlab import Datalab

    start = time.perf_counter()
    lab = Datalab(data={"label": merged.label}, label_name="label", verbosity=0)
    lab.find_issues(
        pred_probs=merged.probabilities,
        features=_features(merged),
        issue_types={name: {} for name in ISSUE_TYPES},
    )
    return lab, time.perf_counter() - start


def _features(merged: MergedFolds) -> np.ndarray:
    """The embeddings the neighbour checks (near duplicates, outliers) compare.

    One model's for every sample (fold 0's) when its job wrote them: each fold's own
    embeddings come from another model, so distances between folds mean nothing, and
    a duplicate whose copies fell into two folds was not found.
    """
    return merged.embeddings if merged.shared_embeddings is None else merged.shared_embeddings


def known_noise(
    merged: MergedFolds, flagged: np.ndarray, sweep_dir: Path | None = None
) -> dict[str, float]:
    """Precision and recall of `flagged` against the labels the runs flipped on purpose.

    The fold jobs of a run with `data.label_noise` list their train samples' clean and
    noisy labels in label_noise.csv: each job the other folds', so the files of every
    job of the sweep are read (a job that wrote no outputs may have written its own).
    Empty when they did not inject noise or leave an audited sample without its clean
    label.
    """
    clean: dict[str, int] = {}
    run_dirs = set(merged.run_dirs.values())
    if sweep_dir is not None:
        run_dirs |= {
            job_run_dir(sweep_dir, e) for e in read_manifest(sweep_dir).values() if "run_dir" in e
        }
    for run_dir in sorted(run_dirs):
        path = run_dir / "label_noise.csv"
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    if "sample_id" in row:
                        clean[row["sample_id"]] = int(row["clean_label"])
    known = np.array([sid in clean for sid in merged.sample_id])
    if not known.all():
        return {}
    flipped = np.array([clean[sid] for sid in merged.sample_id]) != merged.label
    hits = int((flipped & flagged).sum())
    return {
        "flipped": int(flipped.sum()),
        "precision": hits / max(int(flagged.sum()), 1),
        "recall": hits / max(int(flipped.sum()), 1),
    }


def run_audit(
    sweep_dir: Path, num_thumbnails: int = NUM_THUMBNAILS, merged: MergedFolds | None = None
) -> AuditResult:
    """Merges the fold outputs, runs Datalab and writes `<sweep dir>/audit/`.

    Args:
        sweep_dir: The k-fold sweep's directory.
        num_thumbnails: Top suspects drawn in label_issues.png (0 = no picture).
        merged: The fold outputs when already merged; None = merge them here.

    Returns:
        The counts, the files written and the timings.

    Raises:
        AuditError: See `merge_folds`; or `<sweep dir>/audit` is a file.
    """
    sweep_dir = Path(sweep_dir)
    out = sweep_dir / AUDIT_DIR
    if out.exists() and not out.is_dir():
        raise AuditError(
            f"{out} is a file, and the audit writes its files into a folder of that name: "
            f"move or rename the file, then redo the audit (python -m runner.sweeps audit "
            f"{sweep_dir})."
        )
    merged = merged if merged is not None else merge_folds(sweep_dir)
    keep_earlier_audit(out, len(merged.sample_id))
    lab, seconds = find_issues(merged)
    out.mkdir(exist_ok=True)
    names = np.array(merged.class_names, dtype=object)
    order, flagged, suggested, ranked = write_label_issues(
        out / "label_issues.csv", lab, merged, names
    )
    duplicates = write_near_duplicates(out / "near_duplicates.csv", lab, merged, names)
    outliers = write_outliers(out / "outliers.csv", lab, merged, names)
    record_written(out)
    counts = {
        "num_label_issues": int(flagged.sum()),
        "num_near_duplicates": duplicates,
        "num_outliers": outliers,
    }
    noise = known_noise(merged, flagged, sweep_dir)
    files = [out / "label_issues.csv", out / "near_duplicates.csv", out / "outliers.csv"]
    picture = draw_suspects(
        out / "label_issues.png", sweep_dir, merged, order, flagged, suggested, num_thumbnails
    )
    if picture is not None:
        files.append(picture)
    caution = _caution(sweep_dir, merged, flagged)
    summary = out / "summary.md"
    summary.write_text(
        summary_markdown(sweep_dir, merged, lab, counts, noise, seconds, ranked, names, caution),
        encoding="utf-8",
    )
    files.append(summary)
    log.info(
        "audit of %s: %s label issues, %s near duplicates, %s outliers among %d samples "
        "(Datalab %.1fs); %s",
        sweep_dir,
        counts["num_label_issues"],
        shown_count(counts["num_near_duplicates"]),
        shown_count(counts["num_outliers"]),
        len(merged.sample_id),
        seconds,
        out,
    )
    return AuditResult(counts, files, seconds, merged.train_seconds, noise)


def _caution(sweep_dir: Path, merged: MergedFolds, flagged: np.ndarray) -> str | None:
    """What to bear in mind reading this audit, logged as a warning; None when nothing."""
    cautions = [
        many_flags_caution(float(flagged.mean()), oof_accuracy(merged)),
        few_per_class_caution(merged.label),
    ]
    caution = " ".join(filter(None, cautions)) or None
    if caution is not None:
        log.warning("audit of %s: %s", sweep_dir, caution)
    return caution


def audit_and_log(
    sweep_dir: Path,
    tracker: Tracker | None = None,
    num_thumbnails: int = NUM_THUMBNAILS,
    merged: MergedFolds | None = None,
) -> AuditResult:
    """Runs the audit and logs its counts and files to the sweep's parent run.

    Args:
        sweep_dir: The k-fold sweep's directory.
        tracker: The parent run's open tracker; None = files only.
        num_thumbnails: Top suspects drawn in label_issues.png.
        merged: The fold outputs when already merged; None = merge them here.

    Returns:
        The audit's result.
    """
    result = run_audit(sweep_dir, num_thumbnails, merged)
    if tracker is not None:
        log_audit(tracker, result)
    return result


def log_audit(tracker: Tracker, result: AuditResult) -> None:
    """Logs an audit's counts and files to the sweep's parent run (artifacts in audit/)."""
    # Every audit metric, NaN for what this audit could not compute: a redone audit
    # leaves none of an earlier one's values standing beside its own.
    nan = float("nan")
    metrics = {
        f"audit/{name}": nan if value is None else float(value)
        for name, value in result.counts.items()
    }
    metrics["audit/datalab_seconds"] = result.datalab_seconds
    for key in ("precision", "recall"):
        metrics[f"audit/known_noise_{key}"] = float(result.known_noise.get(key, nan))
    tracker.log_metrics(metrics, step=0)
    for path in result.files:
        tracker.log_artifact(path, AUDIT_DIR)
    tracker.set_tags({"audit": f"{AUDIT_DIR}/summary.md"})


def audit_if_asked(config: DictConfig, sweep_dir: Path, tracker: Tracker | None) -> str | None:
    """Runs the audit at the end of a sweep whose config asks for it (`audit.enabled`).

    A failure leaves the sweep's summary and runs as they are: it is logged and tagged on
    the parent run, and returned, so the launching process can exit with an error.

    Returns:
        None when the audit ran or was not asked for, else why it failed and what to run.
    """
    if OmegaConf.select(config, "audit.enabled", default=False) is not True:
        return None
    thumbnails = OmegaConf.select(config, "audit.num_thumbnails", default=NUM_THUMBNAILS)
    try:
        audit_and_log(sweep_dir, tracker, int(thumbnails))
    except Exception as err:  # the jobs' results stand; the audit can be redone from them
        if isinstance(err, AuditError):  # what the sweep dir holds: the message says it
            log.error("audit of %s failed: %s", sweep_dir, err)
        else:
            log.exception("audit of %s failed", sweep_dir)
        if tracker is not None:
            tracker.set_tags({"audit": f"failed: {type(err).__name__}: {err}"[:250]})
        return (
            f"the audit failed ({type(err).__name__}: {err}); the jobs' outputs are kept: "
            f"redo it with python -m runner.sweeps audit {sweep_dir}"
        )
    return None


def partial_folds_warning(config: DictConfig) -> str | None:
    """A warning, at a sweep's start, that its audit will cover only some of the K folds.

    Without it, `experiment=audit 'data.fold=0,1'` trained both folds and said which were
    missing only when the audit ran at the end.
    """
    if OmegaConf.select(config, "audit.enabled", default=False) is not True:
        return None
    num_folds = OmegaConf.select(config, "data.num_folds", default=None)
    folds = values_of(config, "data.fold", read_sweeps(config)[0])
    if not isinstance(num_folds, int) or not all(isinstance(f, int) for f in folds):
        return None  # the config checks refuse these
    left_out = sorted(set(range(num_folds)) - set(folds))
    if not left_out:
        return None
    return (
        f"audit.enabled=true and this sweep runs fold(s) {sorted(set(folds))} of "
        f"data.num_folds={num_folds}: the audit at its end leaves out the samples of fold(s) "
        f"{left_out} (unless this sweep dir holds their outputs); sweep "
        f"'data.fold=range({num_folds})' to audit all of train"
    )


def configured_thumbnails(sweep_dir: Path) -> int:
    """The sweep's `audit.num_thumbnails` (its multirun.yaml), else NUM_THUMBNAILS.

    Raises:
        SweepFileError: multirun.yaml is damaged.
    """
    launched = read_launch_config(Path(sweep_dir))
    if launched is None:
        return NUM_THUMBNAILS
    value = OmegaConf.select(launched, "audit.num_thumbnails", default=None)
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if valid else NUM_THUMBNAILS


def redo_audit(sweep_dir: Path, num_thumbnails: int = NUM_THUMBNAILS) -> tuple[AuditResult, bool]:
    """Redoes the audit of a finished sweep and logs it to its parent run, reopened.

    For `python -m runner.sweeps audit <sweep dir>`: after the fold jobs of a sweep were
    collected from SLURM, or to audit again (another number of thumbnails, a newer
    cleanlab). The files are written first, from the sweep dir alone; the parent run
    then ends as the sweep did: FAILED when a job did not finish. A parent run that
    cannot be reached (the store moved, the server is down) leaves the files written
    and is reported as a warning.

    Returns:
        What the audit found and wrote, and False when Ctrl-C stopped the parent run's
        wait for the store (what it did not take is saved in the sweep dir).
    """
    sweep_dir = Path(sweep_dir).resolve()  # the paths of logs saved to send later
    result = run_audit(sweep_dir, num_thumbnails)
    try:
        tracker = reopen_parent_run(sweep_dir)
    except Exception as err:  # the files stand; only the logging is lost
        log.warning(
            "audit: the files are written, but not logged to the sweep's parent run (%s: %s)",
            type(err).__name__,
            err,
        )
        return result, True
    if tracker is None:
        return result, True
    jobs = read_manifest(sweep_dir).values()
    status = "FAILED" if any(job.get("status") != "FINISHED" for job in jobs) else "FINISHED"
    try:
        log_audit(tracker, result)
    finally:
        delivered = end_run(tracker, status, sweep_dir, PARENT_RUN)
    return result, delivered
