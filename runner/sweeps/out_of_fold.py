"""The out-of-fold outputs of a k-fold sweep: written by each fold job, merged for the audit.

A fold job writes its held-out fold's softmax probabilities and penultimate-layer
embeddings, keyed by sample id, into `<run dir>/out_of_fold.npz`; `merge_folds` joins the
K jobs' files into one row per train sample, each predicted by a model that never
trained on it.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runner.config.files import replaced_whole
from runner.sweeps.manifest import job_run_dir, read_manifest

log = logging.getLogger(__name__)

OOF_FILE = "out_of_fold.npz"  # what a fold job writes (runner.training.oof)


class AuditError(RuntimeError):
    """The sweep dir holds nothing an audit can use; the message says what to run."""


class UnreadableOutOfFold(ValueError):
    """A fold job's file is missing, cut short or not one (the message names it)."""


def read_out_of_fold(path: Path, numbers_only: bool = False) -> dict[str, np.ndarray]:
    """A fold job's saved outputs, by name (as `save_out_of_fold` wrote them).

    Args:
        path: The file.
        numbers_only: Read only its fold and fold count: enough to tell a whole file from
            one cut short (the archive's directory is at its end) without reading the
            embeddings, which for fold 0 cover the whole train split.

    Raises:
        UnreadableOutOfFold: The file is missing, damaged, or lacks the fold's numbers. A
            job writes it whole (temp file, then rename): a damaged one was copied so.
    """
    try:
        with np.load(path) as saved:
            names = ("fold", "num_folds") if numbers_only else saved.files
            part = {k: saved[k] for k in names}
        int(part["fold"]), int(part["num_folds"])
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:
        # numpy's own advice on pickled objects (allow_pickle) is no fix for a file
        # that was saved without any: its first sentence says what failed.
        reason = str(err).split(". ")[0] if str(err) else ""
        raise UnreadableOutOfFold(
            f"{path} cannot be read ({type(err).__name__}: {reason})"
        ) from err
    return part


@dataclass
class OutOfFold:
    """One model's outputs for some samples, as `OOF_FILE` holds them.

    Attributes:
        sample_id: (N,) str.
        label: (N,) int64, the label the job trained with (after noise/relabel).
        probabilities: (N, C) softmax probabilities of the job's best weights.
        embeddings: (N, D) penultimate-layer embeddings.
    """

    sample_id: np.ndarray
    label: np.ndarray
    probabilities: np.ndarray
    embeddings: np.ndarray


@dataclass
class MergedFolds:
    """The fold jobs' out-of-fold outputs, one row per audited sample.

    Attributes:
        sample_id: (N,) str.
        label: (N,) int64, the given label.
        probabilities: (N, C) out-of-fold softmax probabilities.
        embeddings: (N, D) penultimate-layer embeddings.
        fold: (N,) the fold that held each sample out.
        class_names: Name of each class.
        num_folds: K.
        run_dirs: The fold jobs' run dirs, by fold.
        train_seconds: The fold jobs' wall time (manifest), summed.
        shared_embeddings: (N, D) embeddings of every sample by one model, fold 0's
            (its own fold held out, the others trained on); None when its job wrote none.
            Each fold's `embeddings` come from that fold's model, so two images in
            different folds are not in one space: near duplicates across folds are
            found only in this one.
    """

    sample_id: np.ndarray
    label: np.ndarray
    probabilities: np.ndarray
    embeddings: np.ndarray
    fold: np.ndarray
    class_names: list[str]
    num_folds: int
    run_dirs: dict[int, Path]
    train_seconds: float = 0.0
    shared_embeddings: np.ndarray | None = None

    @property
    def missing_folds(self) -> list[int]:
        """Folds without outputs (their jobs failed or have not run)."""
        return [k for k in range(self.num_folds) if k not in self.run_dirs]


def save_out_of_fold(
    path: Path,
    held_out: OutOfFold,
    *,
    class_names: list[str],
    fold: int,
    num_folds: int,
    space: OutOfFold | None = None,
) -> Path:
    """Writes a fold job's out-of-fold outputs (the arrays `merge_folds` reads), atomically.

    Args:
        path: The file, `<run dir>/out_of_fold.npz`.
        held_out: The outputs for the held-out fold's samples.
        class_names: Name of each class.
        fold: The held-out fold.
        num_folds: K.
        space: The outputs for the job's train samples (the other folds), which fold 0's
            job computes too, so that every sample has an embedding by one model; only
            their ids and embeddings are kept.
    """
    path = Path(path)
    arrays = {
        "sample_id": np.asarray(held_out.sample_id, dtype=str),
        "label": np.asarray(held_out.label, dtype=np.int64),
        "probabilities": np.asarray(held_out.probabilities, dtype=np.float32),
        "embeddings": np.asarray(held_out.embeddings, dtype=np.float32),
        "class_names": np.asarray(class_names, dtype=str),
        "fold": np.int64(fold),
        "num_folds": np.int64(num_folds),
    }
    if space is not None:
        arrays["space_sample_id"] = np.asarray(space.sample_id, dtype=str)
        arrays["space_embeddings"] = np.asarray(space.embeddings, dtype=np.float32)
    with replaced_whole(path) as tmp, tmp.open("wb") as handle:  # never half a file
        np.savez(handle, **arrays)  # to a handle: given a name, np.savez adds ".npz"
    return path


def _fold_runs(sweep_dir: Path) -> list[tuple[Path, float]]:
    """(run dir, wall seconds) of the jobs that wrote out-of-fold outputs."""
    runs = []
    for entry in read_manifest(sweep_dir).values():
        run_dir = job_run_dir(sweep_dir, entry)
        if entry.get("status") == "FINISHED" and (run_dir / OOF_FILE).is_file():
            runs.append((run_dir, float(entry.get("seconds") or 0.0)))
    if not runs:  # no manifest (copied outputs): the job dirs themselves
        runs = [(p.parent, 0.0) for p in sorted(Path(sweep_dir).glob(f"*/{OOF_FILE}"))]
    return runs


def _shared_embeddings(
    first: dict[str, np.ndarray] | None, sample_id: np.ndarray
) -> np.ndarray | None:
    """Fold 0's model's embeddings of `sample_id`, in that order; None without them."""
    if first is None or "space_embeddings" not in first:
        return None
    ids = np.concatenate([first["sample_id"], first["space_sample_id"]])
    vectors = np.concatenate([first["embeddings"], first["space_embeddings"]])
    row = {str(sid): i for i, sid in enumerate(ids)}
    if not all(str(sid) in row for sid in sample_id):  # a file that no longer decoded
        log.warning("audit: fold 0's job embedded not every sample; each fold's own are used")
        return None
    return vectors[[row[str(sid)] for sid in sample_id]]


@dataclass
class _FoldOutputs:
    """The fold jobs' readable outputs, by the fold each held out.

    Attributes:
        parts: Each fold's arrays, as `read_out_of_fold` returns them.
        run_dirs: Each fold's run dir.
        class_names: Name of each class (the jobs agree on them).
        num_folds: K (the jobs agree on it).
    """

    parts: dict[int, dict[str, np.ndarray]]
    run_dirs: dict[int, Path]
    class_names: list[str]
    num_folds: int


def _read_folds(sweep_dir: Path, runs: list[tuple[Path, float]]) -> _FoldOutputs:
    """Reads the fold jobs' outputs; a file that cannot be read leaves its fold out, with a warning.

    Raises:
        AuditError: Two jobs held out the same fold, the jobs disagree on the classes or on
            K, or no job's file can be read.
    """
    parts: dict[int, dict[str, np.ndarray]] = {}
    run_dirs: dict[int, Path] = {}
    class_names, num_folds = None, None
    for run_dir, _ in runs:
        try:
            part = read_out_of_fold(run_dir / OOF_FILE)
        except UnreadableOutOfFold as err:
            log.warning(
                "audit: %s; its fold is left out. Copy it again, or run the sweep again "
                "with sweep.resume=%s: a finished fold job whose file is missing or "
                "unreadable tests its best weights again and rewrites it",
                err,
                sweep_dir,
            )
            continue
        fold, k = int(part["fold"]), int(part["num_folds"])
        names = [str(n) for n in part["class_names"]]
        if fold in run_dirs:
            raise AuditError(
                f"two jobs of {sweep_dir} held out fold {fold}: {run_dirs[fold]} and "
                f"{run_dir}. The audit merges one job per fold; audit a sweep whose jobs "
                "differ only by data.fold. Where a job's out_of_fold.npz was copied from "
                "another's, delete it and run the sweep again with sweep.resume=<sweep dir>: "
                "that job runs again and writes its own."
            )
        if class_names is not None and (names != class_names or k != num_folds):
            raise AuditError(
                f"{run_dir} has other classes or another data.num_folds than "
                f"{next(iter(run_dirs.values()))}: the jobs are not folds of one data set."
            )
        class_names, num_folds = names, k
        parts[fold], run_dirs[fold] = part, run_dir
    if not parts:
        raise AuditError(
            f"no fold job of {sweep_dir} has a readable {OOF_FILE} (see the warnings above): "
            "copy the sweep dir again, or rerun its jobs with sweep.resume=<sweep dir>"
        )
    return _FoldOutputs(parts, run_dirs, class_names, num_folds)


def _join_folds(sweep_dir: Path, outputs: _FoldOutputs, train_seconds: float) -> MergedFolds:
    """Joins the folds' outputs in fold order, one row per sample.

    Raises:
        AuditError: Two fold jobs held out the same sample.
    """
    parts = outputs.parts
    folds = sorted(parts)
    sample_id = np.concatenate([parts[f]["sample_id"] for f in folds])
    unique, counts = np.unique(sample_id, return_counts=True)
    if (counts > 1).any():
        raise AuditError(
            f"sample {str(unique[counts > 1][0])!r} is held out by two fold jobs of {sweep_dir}: "
            "the jobs did not cut the same train split (another data config or split_seed)."
        )
    return MergedFolds(
        sample_id=sample_id,
        label=np.concatenate([parts[f]["label"] for f in folds]).astype(np.int64),
        probabilities=np.concatenate([parts[f]["probabilities"] for f in folds]),
        embeddings=np.concatenate([parts[f]["embeddings"] for f in folds]),
        fold=np.concatenate([np.full(len(parts[f]["label"]), f) for f in folds]),
        class_names=outputs.class_names,
        num_folds=outputs.num_folds,
        run_dirs=outputs.run_dirs,
        train_seconds=train_seconds,
        shared_embeddings=_shared_embeddings(parts.get(0), sample_id),
    )


def merge_folds(sweep_dir: Path) -> MergedFolds:
    """Merges the out-of-fold outputs of a sweep's fold jobs.

    Raises:
        AuditError: No job wrote outputs, two jobs held out the same fold or sample,
            or the jobs disagree on the classes or on K.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        what = "is not a folder" if sweep_dir.exists() else "does not exist"
        raise AuditError(
            f"{sweep_dir} {what}: pass the dir of a k-fold sweep (its hydra.sweep.dir, "
            "e.g. multirun/<date>/<time>)."
        )
    runs = _fold_runs(sweep_dir)
    if not runs:
        raise AuditError(
            f"{sweep_dir} has no fold job with {OOF_FILE}: the audit needs the jobs of a "
            "k-fold sweep (python run.py -m experiment=audit, or data.num_folds=K "
            "'data.fold=range(K)'), finished."
        )
    outputs = _read_folds(sweep_dir, runs)
    merged = _join_folds(sweep_dir, outputs, train_seconds=sum(seconds for _, seconds in runs))
    if merged.missing_folds:
        log.warning(
            "audit: no outputs for fold(s) %s of %d; auditing the %d samples of the others",
            merged.missing_folds,
            merged.num_folds,
            len(merged.sample_id),
        )
    return merged
