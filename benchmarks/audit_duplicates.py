"""Near duplicates the audit finds, by where their copies fell: one fold or two.

Writes an image folder of digits (4 classes x 60 images, 32x32 PNG), ten images of each
class saved twice (`NNN.png` and a byte-identical `NNN_dup.png`), runs the audit sweep on
it (`python run.py -m experiment=audit data=imagefolder data.num_folds=3`) and counts,
among the pairs whose both copies are train samples, those that near_duplicates.csv
lists together: pairs held out by one fold and pairs held out by two. Each fold job
embeds with its own model, so a pair in two folds is found only when the audit compares
one model's embeddings of both copies.

With `--compare-with <checkout>` (e.g. a git worktree of an earlier commit) the same
sweep runs in that checkout too, side by side.

Run from the repository root::

    .venv/bin/python benchmarks/audit_duplicates.py [--epochs 4] [--compare-with DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_results import record

REPO = Path(__file__).resolve().parent.parent
CLASSES, PER_CLASS, COPIED = 4, 60, 10


def write_folder(root: Path) -> Path:
    """The digits folder with COPIED images of each class saved twice."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(CLASSES):
        folder = root / "train" / f"c{label}"
        folder.mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(digits.target == label)[:PER_CLASS]):
            image = Image.fromarray((digits.images[i] * 16).astype(np.uint8)).resize((32, 32))
            image.save(folder / f"{k:03d}.png")
            if k < COPIED:
                image.save(folder / f"{k:03d}_dup.png")
    return root


def audit(repo: Path, data_root: Path, out: Path, epochs: int) -> Path:
    """Runs the audit sweep in `repo`; returns its sweep dir."""
    sweep = out / "sweep"
    command = [
        sys.executable,
        str(repo / "run.py"),
        "-m",
        "experiment=audit",
        "data=imagefolder",
        f"data.root={data_root}",
        "data.image_size=32",
        "data.num_folds=3",
        f"trainer.max_epochs={epochs}",
        f"paths.output_dir={out}",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=repo)
    if done.returncode != 0:
        raise SystemExit(f"the audit sweep failed in {repo}:\n{done.stderr[-3000:]}")
    return sweep


def found_pairs(sweep: Path) -> dict[str, tuple[int, int]]:
    """(found, pairs) for the pairs in one fold and in two."""
    with (sweep / "audit" / "near_duplicates.csv").open(newline="") as handle:
        listed = {
            r["sample_id"]: set(json.loads(r["duplicate_ids"])) for r in csv.DictReader(handle)
        }
    fold_of = {}
    for path in sweep.glob("*/out_of_fold.npz"):
        with np.load(path) as saved:
            fold_of.update({str(s): int(saved["fold"]) for s in saved["sample_id"]})
    pairs = [
        (copy, copy.replace("_dup", ""))
        for copy in fold_of
        if "_dup" in copy and copy.replace("_dup", "") in fold_of
    ]
    result = {}
    for where, same in (("one fold", True), ("two folds", False)):
        chosen = [p for p in pairs if (fold_of[p[0]] == fold_of[p[1]]) == same]
        hits = sum(b in listed.get(a, set()) or a in listed.get(b, set()) for a, b in chosen)
        result[where] = (hits, len(chosen))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--compare-with", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_root = write_folder(Path(tmp) / "digits_with_copies")
        checkouts = [("this checkout", REPO)]
        if args.compare_with is not None:
            checkouts.append(("compared", args.compare_with.resolve()))
        for name, repo in checkouts:
            counts = found_pairs(
                audit(repo, data_root, Path(tmp) / name.replace(" ", "_"), args.epochs)
            )
            (one, one_total), (two, two_total) = counts["one fold"], counts["two folds"]
            print(
                f"{name} ({repo}): copies in one fold {one} of {one_total} found; "
                f"in two folds {two} of {two_total} found"
            )
            if name == "this checkout":
                share = two / max(two_total, 1)
                record(
                    "audit_duplicates",
                    "duplicates found whose copies are in two folds",
                    f"{two} of {two_total}",
                    goal="all",
                    passed=two == two_total,
                    note=f"one fold: {one} of {one_total}; share {share:.2f}",
                )


if __name__ == "__main__":
    main()
