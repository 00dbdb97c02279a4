"""The files an audit writes into `<sweep dir>/audit/`, from cleanlab's findings.

The CSVs (written whole or not at all: a run may read one as `data.exclude`
meanwhile), the thumbnails of the most suspect samples (label_issues.png) and
summary.md. `audit.run_audit` finds the issues and calls these.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from omegaconf import OmegaConf

from runner.config.files import from_job_cwd, job_cwd, replaced_whole
from runner.sweeps.out_of_fold import MergedFolds

log = logging.getLogger(__name__)


AUDIT_DIR = "audit"
# label_issues.csv, most suspect first.
LABEL_ISSUE_COLUMNS = (
    "sample_id",
    "given_label",
    "suggested_label",
    "label_quality",
    "is_label_issue",
)


def issue_table(lab: Any, name: str):
    """Datalab's table of one issue type, or None when it could not check that type."""
    try:
        return lab.get_issues(name)
    except ValueError:  # e.g. too few samples for the neighbours a check needs
        log.warning("audit: cleanlab did not check %s", name)
        return None


def write_csv(path: Path, header, rows) -> None:
    """Writes a CSV whole or not at all: a run may read it as data.exclude meanwhile."""
    with replaced_whole(path) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


class LabelIssues(NamedTuple):
    """cleanlab's label issues; the arrays follow the merged samples' order.

    Attributes:
        order: The samples' indices, most suspect (lowest label quality) first.
        flagged: (N,) bool, whether cleanlab flags the sample's label as an issue.
        suggested: (N,) int64, the class cleanlab suggests.
        ranked: Each sample's row, most suspect first: sample_id, given, suggested,
            label_quality, is_label_issue.
    """

    order: np.ndarray
    flagged: np.ndarray
    suggested: np.ndarray
    ranked: list[tuple[Any, ...]]


def write_label_issues(path: Path, lab: Any, merged: MergedFolds, names: np.ndarray) -> LabelIssues:
    """Writes label_issues.csv, most suspect first; returns the label issues it holds."""
    label = lab.get_issues("label")
    quality = label["label_score"].to_numpy()
    order = np.argsort(quality, kind="stable")
    flagged = label["is_label_issue"].to_numpy(dtype=bool)
    suggested = label["predicted_label"].to_numpy(dtype=np.int64)
    # sample_id, given, suggested, label_quality, is_label_issue; most suspect first.
    ranked = [
        (
            merged.sample_id[i],
            names[merged.label[i]],
            names[suggested[i]],
            float(quality[i]),
            bool(flagged[i]),
        )
        for i in order
    ]
    write_csv(path, LABEL_ISSUE_COLUMNS, ((*row[:3], f"{row[3]:.6f}", row[4]) for row in ranked))
    return LabelIssues(order, flagged, suggested, ranked)


def write_near_duplicates(path: Path, lab: Any, merged: MergedFolds, names) -> int | None:
    """Writes near_duplicates.csv; returns its row count, None when cleanlab could not check."""
    table = issue_table(lab, "near_duplicate")
    rows = []
    if table is not None:
        hit = np.flatnonzero(table["is_near_duplicate_issue"].to_numpy(dtype=bool))
        scores = table["near_duplicate_score"].to_numpy()
        for i in hit[np.argsort(scores[hit], kind="stable")]:
            members = [merged.sample_id[j] for j in table["near_duplicate_sets"].iat[i]]
            rows.append(
                (
                    merged.sample_id[i],
                    names[merged.label[i]],
                    f"{scores[i]:.6f}",
                    f"{table['distance_to_nearest_neighbor'].iat[i]:.6g}",
                    # A JSON list (image paths may hold spaces) of the ids as written,
                    # so that one copied into data.exclude matches.
                    json.dumps(members, ensure_ascii=False),
                )
            )
    header = ("sample_id", "given_label", "near_duplicate_score", "distance", "duplicate_ids")
    write_csv(path, header, rows)
    return None if table is None else len(rows)


def write_outliers(path: Path, lab: Any, merged: MergedFolds, names) -> int | None:
    """Writes outliers.csv; returns its row count, None when cleanlab could not check."""
    table = issue_table(lab, "outlier")
    rows = []
    if table is not None:
        hit = np.flatnonzero(table["is_outlier_issue"].to_numpy(dtype=bool))
        scores = table["outlier_score"].to_numpy()
        rows = [
            (merged.sample_id[i], names[merged.label[i]], f"{scores[i]:.6f}")
            for i in hit[np.argsort(scores[hit], kind="stable")]
        ]
    write_csv(path, ("sample_id", "given_label", "outlier_score"), rows)
    return None if table is None else len(rows)


def _data_config(merged: MergedFolds) -> dict[str, Any] | None:
    """The fold jobs' resolved data config (config_resolved.yaml), for the thumbnails.

    A relative folder (data.root=../leaves) is the job's: it is taken from the working
    directory the job ran in (.hydra/hydra.yaml), so the audit redone from another finds
    the files too.
    """
    for run_dir in merged.run_dirs.values():
        path = run_dir / "config_resolved.yaml"
        if path.is_file():
            data = OmegaConf.load(path).get("data")
            if data is not None:
                data = OmegaConf.to_container(data, resolve=True)
                cwd = job_cwd(run_dir)
                for key in ("root", "name", "cache_dir"):
                    if key in data:
                        data[key] = from_job_cwd(data[key], cwd)
                return data
    return None


def draw_suspects(
    path: Path,
    sweep_dir: Path,
    merged: MergedFolds,
    order: np.ndarray,
    flagged: np.ndarray,
    suggested: np.ndarray,
    count: int,
) -> Path | None:
    """The `count` most suspect samples as thumbnails: given -> suggested class."""
    top = [int(i) for i in order[:count]]
    if not top:
        path.unlink(missing_ok=True)  # an earlier audit's picture would not match the CSVs
        return None
    images = {}
    try:  # the data moved since, or its folder came from an unset ${oc.env:...}
        data_cfg = _data_config(merged)
        if data_cfg is not None:
            from runner.data.lookup import load_images

            images = load_images(data_cfg, [str(merged.sample_id[i]) for i in top])
    except Exception as err:  # the figure says so, the CSVs stand
        log.warning("audit: no thumbnails (%s: %s)", type(err).__name__, err)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(8, len(top))
    rows = -(-len(top) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    names = merged.class_names
    for ax, i in zip(axes.flat, top, strict=False):
        image = images.get(str(merged.sample_id[i]))
        if image is not None:
            picture = image.permute(1, 2, 0).numpy()
            ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray")
        else:
            ax.text(0.5, 0.5, "no image", ha="center", va="center", transform=ax.transAxes)
        # Each part cut on its own: the whole caption cut at 60 characters left the id
        # line at "t" or "trai" when the class names were long.
        ax.set_title(
            f"{_fit(names[merged.label[i]])} -> {_fit(names[suggested[i]])}\n"
            f"{_fit(str(merged.sample_id[i]), 34, keep_end=True)}",
            fontsize=7,
            color="tab:red" if flagged[i] else "black",
        )
    fig.suptitle(
        f"{sweep_dir.name}: most suspect labels (given -> suggested; red = label issue)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fit(text: str, width: int = 15, keep_end: bool = False) -> str:
    """`text` cut to `width` characters with an ellipsis; `keep_end` keeps a path's file name."""
    if len(text) <= width:
        return text
    return "\u2026" + text[1 - width :] if keep_end else text[: width - 1] + "\u2026"


def shown_count(value: int | None) -> str:
    """An issue count as the summary and the log show it (None: cleanlab did not check)."""
    return "not checked (too few samples for cleanlab)" if value is None else str(value)


# Above this share of flagged samples the summary asks for a look before acting: data sets
# in use hold a few percent of wrong labels (Northcutt et al. 2021 found 3.3% on average
# in ten test sets), and fold models too weak for their data flag their own mistakes.
MANY_FLAGS_SHARE = 0.2


def oof_accuracy(merged: MergedFolds) -> float:
    """The share of samples whose out-of-fold prediction is their given label."""
    return float((merged.probabilities.argmax(1) == merged.label).mean())


def many_flags_caution(flagged_share: float, accuracy: float) -> str | None:
    """What to check before acting on an audit that flags many labels; None when few."""
    if flagged_share <= MANY_FLAGS_SHARE:
        return None
    return (
        f"{flagged_share:.1%} of the samples are flagged as label issues, with an "
        f"out-of-fold accuracy of {accuracy:.4f}. A share this large means very noisy "
        "labels or fold models too weak to tell a wrong label from their own mistake: look "
        "at the top suspects (label_issues.csv) before acting on them, and if the models are "
        "weak, train the fold jobs longer (trainer.max_epochs) or from pretrained weights "
        "(e.g. model.pretrained=true for a timm model) and audit again."
    )


def rarest_class_line(labels: np.ndarray, names: Sequence[str]) -> str:
    """summary.md's line when cleanlab flags no class as rare: how rare the rarest is.

    cleanlab flags only a rarest class holding under a tenth of an even share, so a class
    at a quarter of the others' size passed without a word.
    """
    counts = np.bincount(labels, minlength=len(names))
    present = np.flatnonzero(counts)
    rarest = present[np.argmin(counts[present])]
    share = counts[rarest] / (len(labels) / len(present))
    return (
        f"Class imbalance: none flagged. The rarest class, {names[rarest]}, has "
        f"{counts[rarest]} samples, {share:.0%} of an even share; cleanlab flags the rarest "
        "class only below 10% (to train with a rare class: sampler=balanced or "
        "loss=balanced_softmax)."
    )


# Below this mean of audited samples a class, confident learning's per-class thresholds
# rest on a handful of samples. In a probe with 10% of the labels flipped, is_label_issue
# found 57% of them at 11 samples a class (200 classes) and 1% at 8 (1000), while the
# lowest label_quality ranked 99% and 94% of them first; digits (140 a class) found 90%.
FEW_PER_CLASS = 20


def few_per_class_caution(labels: np.ndarray) -> str | None:
    """What to do instead of trusting is_label_issue when classes have few samples."""
    counts = np.bincount(labels)
    classes = int((counts > 0).sum())
    per_class = len(labels) / max(classes, 1)
    if per_class >= FEW_PER_CLASS:
        return None
    return (
        f"the audit saw about {per_class:.0f} samples a class ({classes} classes), too few "
        "for confident learning's per-class thresholds: is_label_issue then misses most "
        "wrong labels (in a probe with 10% flipped, 57% found at 11 a class, 1% at 8), "
        "while the ranking by label_quality still puts them first. Read label_issues.csv "
        "from the top, cut it where the suggested labels stop looking right, and give "
        "data.exclude or data.relabel a copy whose is_label_issue is True on those rows."
    )


def act_on_it(label_issues: Path, flagged: int) -> str:
    """summary.md's paragraph on what to do with the files, and what they leave out."""
    using = (
        f"Act on it: `data.exclude={label_issues}` drops the flagged samples; "
        "`data.relabel=` with the same path gives them their suggested label instead."
        if flagged
        else "No label is flagged: data.exclude and data.relabel of label_issues.csv would "
        "change nothing (its ranking is there to read)."
    )
    return (
        f"{using} Only the train split was audited: the test split and a carved val split, "
        "which picks each run's best weights, keep their labels (audit with "
        "data.val_fraction=0 to check the val samples too). near_duplicates.csv lists "
        "every copy of a set: as data.exclude it would drop them all, so keep one of each "
        "and exclude the others' ids."
    )


def _unreadable_files(merged: MergedFolds) -> tuple[int, Path | None]:
    """The files the fold jobs skipped as bad (their bad_files.txt lines), and one list."""
    lines: set[str] = set()
    listed = None
    for run_dir in merged.run_dirs.values():
        path = run_dir / "bad_files.txt"
        if path.is_file():
            lines.update(line for line in path.read_text(encoding="utf-8").splitlines() if line)
            listed = listed or path
    return len(lines), listed


def summary_markdown(sweep_dir, merged, lab, counts, noise, seconds, ranked, names, caution) -> str:
    """summary.md's text: counts, timings, the caution, the top suspects, cleanlab's table."""
    n = len(merged.sample_id)
    accuracy = oof_accuracy(merged)
    folds = f"{len(merged.run_dirs)} of {merged.num_folds}"
    lines = [
        f"# Audit of {sweep_dir.name}",
        "",
        f"{n} train samples audited from the out-of-fold outputs of {folds} fold jobs"
        + (f" (missing folds: {merged.missing_folds})" if merged.missing_folds else "")
        + f"; out-of-fold accuracy against the given labels: {accuracy:.4f}.",
        "",
        "| issue | samples |",
        "|---|---|",
        f"| label issues | {shown_count(counts['num_label_issues'])} |",
        f"| near duplicates | {shown_count(counts['num_near_duplicates'])} |",
        f"| outliers | {shown_count(counts['num_outliers'])} |",
        "",
    ]
    unreadable, listed = _unreadable_files(merged)
    if unreadable:
        lines += [
            f"{unreadable} file(s) did not decode, so no fold job trained on them and the "
            f"audit does not rank them: {listed} lists them.",
            "",
        ]
    if caution is not None:
        lines += [f"**Check before acting:** {caution}", ""]
    lines += [
        f"cleanlab Datalab: {seconds:.1f} s; the fold jobs: {merged.train_seconds:.1f} s.",
        "",
        "Near duplicates and outliers are found among the penultimate-layer embeddings of "
        + (
            "fold 0's model, for every sample (it trained on the other folds, whose samples "
            "may therefore look a little less outlying than those of fold 0)."
            if merged.shared_embeddings is not None
            else "each fold's own model (fold 0's job embedded no other fold): duplicates "
            "whose copies are in two folds are not found."
        ),
    ]
    if noise:
        lines += [
            "",
            f"Injected label noise (label_noise.csv): {noise['flipped']} flipped labels; "
            f"is_label_issue has precision {noise['precision']:.3f} and recall "
            f"{noise['recall']:.3f} against them.",
        ]
    imbalance = issue_table(lab, "class_imbalance")
    rare_rows = (
        imbalance["is_class_imbalance_issue"].to_numpy(dtype=bool) if imbalance is not None else []
    )
    if np.any(rare_rows):
        rare = sorted({names[g] for g in merged.label[rare_rows]})
        lines += ["", f"Class imbalance: cleanlab flags the rare class(es) {', '.join(rare)}."]
    else:
        lines += ["", rarest_class_line(merged.label, names)]
    lines += [
        "",
        act_on_it(sweep_dir / AUDIT_DIR / "label_issues.csv", counts["num_label_issues"]),
        "",
        "## Most suspect labels",
        "",
        "| sample_id | given | suggested | label_quality | is_label_issue |",
        "|---|---|---|---|---|",
    ]
    for sample_id, given, suggested, quality, flagged in ranked[:20]:
        lines.append(f"| {sample_id} | {given} | {suggested} | {quality:.4f} | {flagged} |")
    lines += ["", "## cleanlab's issue summary", ""]
    table = lab.get_issue_summary()
    lines += [
        "| issue_type | score | num_issues |",
        "|---|---|---|",
        *(
            f"| {r.issue_type} | {r.score:.4f} | {int(r.num_issues)} |"
            for r in table.itertuples(index=False)
        ),
    ]
    return "\n".join(lines) + "\n"
