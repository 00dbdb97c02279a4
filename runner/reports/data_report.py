"""What the train split looks like after the switches: class counts, bad files, noisy labels."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import torch

from runner.data.decoding import printable
from runner.data.splits import DataSplits, imbalance_ratio
from runner.reports.aug_preview import Preview, draw_preview
from runner.reports.drawing import draw_each, pyplot
from runner.tracking.protocol import Tracker

log = logging.getLogger(__name__)


def report_train_data(data: DataSplits, run_dir: Path, tracker: Tracker) -> None:
    """Logs the train class counts (a param), the bad files and the noisy labels.

    The bar chart of the counts is drawn by `draw_start_plots`.

    Args:
        data: The data set after the switches.
        run_dir: Where the files are written.
        tracker: The run's tracker (params and artifacts).
    """
    counts = data.class_counts()
    # The long tail the imbalance switch built: of the labels before the noise switch,
    # which fills the tail with flipped labels (5.2 for data.imbalance_ratio=20 at 20%).
    built = counts
    if data.clean_train_labels is not None:
        built = torch.bincount(data.clean_train_labels.cpu(), minlength=data.num_classes)
    params = {
        "data.train_class_counts": ",".join(str(int(c)) for c in counts),
        "data.actual_imbalance_ratio": round(imbalance_ratio(built), 4),
        "data.num_bad_files": len(data.bad_files),
        **data.extra_params,
    }
    log.info("train samples per class: %s", params["data.train_class_counts"])
    tracker.log_params(params)
    if data.bad_files:
        path = _write_bad_files(run_dir, data.bad_files)
        tracker.log_artifact(path)
        log.warning("%d bad file(s) skipped; listed in %s", len(data.bad_files), path)
    for key, source in data.curation_files.items():
        # The file as this run read it (data.exclude.csv): its path may hold another later.
        path = run_dir / f"{key}.csv"
        if Path(source).resolve() != path.resolve():  # not the run's own copy, read again
            shutil.copyfile(source, path)
        tracker.log_artifact(path)
    if data.clean_train_labels is not None:
        path = run_dir / "label_noise.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sample_id", "clean_label", "noisy_label", "train_index"])
            rows = zip(
                data.train.ids,
                data.clean_train_labels.tolist(),
                data.train.labels.tolist(),
                strict=True,
            )
            writer.writerows((sid, clean, noisy, i) for i, (sid, clean, noisy) in enumerate(rows))
        tracker.log_artifact(path)


def plot_class_counts(counts: torch.Tensor, class_names: list[str], path: Path) -> None:
    """Saves a bar chart of the train samples per class (log scale when long-tailed)."""
    plt = pyplot()

    values = counts.tolist()
    width = min(max(5.0, 0.3 * len(values) + 2), 24.0)
    fig, ax = plt.subplots(figsize=(width, 3.5))
    ax.bar(range(len(values)), values, color="tab:blue")
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) >= 10:
        ax.set_yscale("log")
    if len(values) <= 40:
        ax.set_xticks(range(len(values)), class_names, rotation=90 if len(values) > 10 else 0)
    ax.set_xlabel("class")
    ax.set_ylabel("train samples")
    ax.set_title(f"train samples per class ({sum(values)} in all)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_streamed_bad_files(
    data: DataSplits, loaders: list, run_dir: Path, tracker: Tracker
) -> None:
    """Adds the bad files that streaming loaders met while training to bad_files.txt.

    A streaming split decodes its files only when it reads them, so a truncated file may
    turn up after the start-of-run report; it is listed here, with those found at start.

    Args:
        data: The data set (its `bad_files` were reported at start).
        loaders: The run's loaders; resident ones have nothing to add.
        run_dir: Where bad_files.txt is written.
        tracker: The run's tracker (artifact and tag).
    """
    late = [bad for loader in loaders for bad in getattr(loader, "bad_files", [])]
    if not late:
        return
    path = _write_bad_files(run_dir, [*data.bad_files, *late])
    tracker.log_artifact(path)
    tracker.set_tags({"data.num_bad_files_streamed": str(len(late))})
    log.warning("%d more bad file(s) met while streaming; listed in %s", len(late), path)


def draw_start_plots(preview: Preview, data: DataSplits, run_dir: Path) -> list[Path]:
    """Draws aug_preview.png and class_counts.png; returns the files written.

    A plot that fails is named in the log and left out; the run goes on.
    """
    plots = {
        "aug_preview.png": lambda path: draw_preview(preview, path),
        "class_counts.png": lambda path: plot_class_counts(
            data.class_counts(), data.class_names, path
        ),
    }
    return draw_each(plots, run_dir)


def _write_bad_files(run_dir: Path, bad_files: list[tuple[str, str]]) -> Path:
    r"""bad_files.txt: one line per skipped file, saying which and why.

    A file name that is not valid UTF-8 keeps its bytes as backslash escapes
    (`caf\xe9.jpg`), as in its sample id.
    """
    path = run_dir / "bad_files.txt"
    text = "".join(f"{reason}\n" for _, reason in bad_files)
    path.write_text(printable(text), encoding="utf-8")
    return path
