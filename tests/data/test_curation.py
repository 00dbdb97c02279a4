"""data.exclude and data.relabel: files of sample ids, their counts and their bad input."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import torch

from runner.config.validation import ConfigError, validate
from runner.data.build import build_data
from runner.data.decoding import DataError
from runner.reports.data_report import report_train_data
from runner.tracking.null import NullTracker


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def digits(make_cfg, *overrides):
    return build_data(make_cfg("data=digits", *overrides, tiny=False).data)


def test_exclude_drops_the_listed_train_samples_and_counts_them(make_cfg, tmp_path):
    plain = digits(make_cfg)
    dropped = [str(i) for i in plain.train.ids[:7]]
    stranger = str(plain.test.ids[0])  # not a train sample: reported, not an error
    path = write_csv(tmp_path / "drop.csv", ["sample_id"], [[i] for i in [*dropped, stranger]])
    data = digits(make_cfg, f"data.exclude={path}")
    assert len(data.train) == len(plain.train) - 7
    assert not {str(i) for i in data.train.ids} & set(dropped)
    assert data.extra_params["data.num_excluded"] == 7
    assert data.extra_params["data.exclude_unmatched"] == 1
    assert len(data.test) == len(plain.test) and len(data.val) == len(plain.val)
    # The run keeps the file as it read it, and its digest: the path may hold another
    # file later (an audit redone, rows flagged by hand).
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    report_train_data(data, run_dir, NullTracker())
    read = path.read_bytes()
    assert (run_dir / "data.exclude.csv").read_bytes() == read
    assert data.extra_params["data.exclude_sha256"] == hashlib.sha256(read).hexdigest()
    # A run given its own copy (rerun in place) keeps it: copying it onto itself failed.
    again = digits(make_cfg, f"data.exclude={run_dir / 'data.exclude.csv'}")
    report_train_data(again, run_dir, NullTracker())
    assert (run_dir / "data.exclude.csv").read_bytes() == read


def test_exclude_of_an_audit_file_drops_only_the_flagged_rows(make_cfg, tmp_path):
    plain = digits(make_cfg, "data.label_noise=0.1")
    header = ["sample_id", "given_label", "suggested_label", "label_quality", "is_label_issue"]
    rows = [[str(i), 0, 1, 0.5, n % 3 == 0] for n, i in enumerate(plain.train.ids[:30])]
    path = write_csv(tmp_path / "label_issues.csv", header, rows)
    data = digits(make_cfg, "data.label_noise=0.1", f"data.exclude={path}")
    assert data.extra_params["data.num_excluded"] == 10
    kept = {str(i) for i in data.train.ids}
    assert all((row[0] in kept) != row[4] for row in rows)
    # The clean labels follow the kept samples (label_noise.csv stays aligned).
    assert len(data.clean_train_labels) == len(data.train)


def test_an_audit_file_that_flags_nothing_changes_nothing_with_a_warning(
    make_cfg, tmp_path, caplog
):
    """An audit that found nothing made its documented follow-up command fail."""
    plain = digits(make_cfg)
    header = ["sample_id", "label", "is_label_issue"]
    rows = [[str(i), 0, False] for i in plain.train.ids[:30]]
    path = write_csv(tmp_path / "label_issues.csv", header, rows)
    with caplog.at_level("WARNING", logger="runner.data.curation"):
        excluded = digits(make_cfg, f"data.exclude={path}")
        relabeled = digits(make_cfg, f"data.relabel={path}")
    assert caplog.text.count("no row has is_label_issue true") == 2
    assert excluded.extra_params["data.num_excluded"] == 0
    assert relabeled.extra_params["data.num_relabeled"] == 0
    for data in (excluded, relabeled):
        assert torch.equal(data.train.labels, plain.train.labels)
        assert list(data.train.ids) == list(plain.train.ids)
    # A file that lists nothing is still refused, and so is another data set's file.
    for name, columns in (("empty.csv", ["sample_id"]), ("header.csv", header)):
        empty = write_csv(tmp_path / name, columns, [])
        with pytest.raises(DataError, match=rf"data.exclude=.*{name}' lists no sample to drop"):
            digits(make_cfg, f"data.exclude={empty}")
    other = write_csv(tmp_path / "other.csv", header, [["cifar10:train:1", 0, False]])
    for key in ("data.exclude", "data.relabel"):
        with pytest.raises(DataError, match=rf"{key}=.*other.csv': none of its 1 sample ids"):
            digits(make_cfg, f"{key}={other}")


def test_relabel_gives_the_listed_samples_their_new_class(make_cfg, tmp_path):
    plain = digits(make_cfg)
    ids = [str(i) for i in plain.train.ids[:4]]
    old = plain.train.labels[:4].tolist()
    new = [(y + 1) % 10 for y in old]
    path = write_csv(
        tmp_path / "fix.csv",
        ["sample_id", "label"],
        [[ids[0], str(new[0])], [ids[1], str(new[1])], [ids[2], new[2]], [ids[3], old[3]]],
    )
    data = digits(make_cfg, f"data.relabel={path}")
    assert data.train.labels[:4].tolist() == [*new[:3], old[3]]
    assert torch.equal(data.train.labels[4:], plain.train.labels[4:])
    assert data.extra_params["data.num_relabeled"] == 4
    assert data.extra_params["data.num_label_changes"] == 3


def test_relabel_to_an_unknown_class_is_refused_naming_the_file(make_cfg, tmp_path):
    plain = digits(make_cfg)
    path = write_csv(tmp_path / "fix.csv", ["sample_id", "label"], [[plain.train.ids[0], "cat"]])
    with pytest.raises(DataError, match=r"data\.relabel=.*fix\.csv.*name no class") as err:
        digits(make_cfg, f"data.relabel={path}")
    assert "line 2: 'cat'" in str(err.value) and "a class name (0, 1, 2" in str(err.value)


def test_a_spreadsheets_utf8_csv_with_a_byte_order_mark_is_read(make_cfg, tmp_path):
    plain = digits(make_cfg)
    ids = [str(i) for i in plain.train.ids[:3]]
    new = (int(plain.train.labels[0]) + 1) % 10
    drop = tmp_path / "drop.csv"
    drop.write_text("sample_id\r\n" + "".join(f"{i}\r\n" for i in ids[1:]), encoding="utf-8-sig")
    fix = tmp_path / "fix.csv"
    fix.write_text(f"sample_id,label\r\n{ids[0]},{new}\r\n", encoding="utf-8-sig")
    assert drop.read_bytes().startswith(b"\xef\xbb\xbf")
    cfg = make_cfg("data=digits", f"data.exclude={drop}", f"data.relabel={fix}", tiny=False)
    validate(cfg)
    data = build_data(cfg.data)
    assert data.extra_params["data.num_excluded"] == 2
    assert data.extra_params["data.num_label_changes"] == 1


def test_a_label_that_is_a_digit_but_not_a_number_is_an_unknown_class(make_cfg, tmp_path):
    plain = digits(make_cfg)
    path = write_csv(tmp_path / "fix.csv", ["sample_id", "label"], [[plain.train.ids[0], "²"]])
    with pytest.raises(DataError, match=r"data\.relabel=.*name no class"):
        digits(make_cfg, f"data.relabel={path}")


@pytest.mark.parametrize("key", ["exclude", "relabel"])
def test_ids_that_match_nothing_are_refused_naming_the_file(make_cfg, tmp_path, key):
    path = write_csv(tmp_path / "other.csv", ["sample_id", "label"], [["cifar10:train:3", "1"]])
    with pytest.raises(DataError, match=rf"data\.{key}=.*other\.csv.*none of its 1 sample ids"):
        digits(make_cfg, f"data.{key}={path}")


def test_a_relabel_file_of_another_data_set_is_refused_for_its_ids_not_its_labels(
    make_cfg, tmp_path
):
    """A synthetic set's audit file given to digits was refused for its class names, and
    the message did not say that none of its samples is a digits sample."""
    rows = [[f"synthetic:{i}", f"class_{i % 10}"] for i in range(5)]
    path = write_csv(tmp_path / "other.csv", ["sample_id", "label"], rows)
    with pytest.raises(DataError, match=r"other\.csv.*none of its 5 sample ids") as err:
        digits(make_cfg, f"data.relabel={path}")
    assert "name no class" not in str(err.value)


def test_a_relabel_that_leaves_train_one_class_is_refused_before_training(make_cfg, tmp_path):
    """Every train sample relabelled to one class trained a model that predicts it for
    every image, with a warning only."""
    from runner.data.checks import require_splits

    plain = digits(make_cfg)
    rows = [[str(i), "3"] for i in plain.train.ids]
    path = write_csv(tmp_path / "all_three.csv", ["sample_id", "label"], rows)
    data = digits(make_cfg, f"data.relabel={path}")
    with pytest.raises(DataError, match=r"train split .* holds samples of one class only \('3'"):
        require_splits(data)
    require_splits(digits(make_cfg))  # the data set as it is passes


@pytest.mark.parametrize("key", ["exclude", "relabel"])
def test_an_id_of_no_sample_beside_train_ids_is_refused_naming_the_file(make_cfg, tmp_path, key):
    """A mistyped id beside good ones was a warning, and the run trained without it."""
    plain = digits(make_cfg)
    rows = [[plain.train.ids[0], "2"], ["digits:99999", "4"], [plain.test.ids[0], "1"]]
    path = write_csv(tmp_path / "typo.csv", ["sample_id", "label"], rows)
    with pytest.raises(DataError, match=r"typo\.csv.*1 of its sample ids name no sample.*99999"):
        digits(make_cfg, f"data.{key}={path}")


def test_relabel_ids_that_exclude_dropped_are_named_as_such(make_cfg, tmp_path):
    """They were said to be no train sample of the data set, with the fix "use a file
    written for this data set"."""
    plain = digits(make_cfg)
    ids = [str(i) for i in plain.train.ids[:6]]
    drop = write_csv(tmp_path / "drop.csv", ["sample_id"], [[i] for i in ids])
    fix = write_csv(tmp_path / "fix.csv", ["sample_id", "label"], [[i, "3"] for i in ids])
    both = (f"data.exclude={drop}", f"data.relabel={fix}")
    with pytest.raises(DataError, match=r"6 were dropped by data\.exclude\)\. Leave those"):
        digits(make_cfg, *both)
    fix = write_csv(tmp_path / "fix.csv", ["sample_id", "label"], [[i, "3"] for i in ids[3:]])
    drop = write_csv(tmp_path / "drop.csv", ["sample_id"], [[i] for i in ids[:4]])
    data = digits(make_cfg, *both)  # one of three dropped: reported, the others relabelled
    assert data.extra_params["data.relabel_unmatched"] == 1
    assert data.extra_params["data.num_relabeled"] == 2


def synthetic(make_cfg, *overrides):
    return build_data(make_cfg("data=synthetic", "data.num_samples=160", *overrides).data)


def test_ids_a_switch_dropped_are_named_as_such(make_cfg, tmp_path):
    """Train ids that data.samples_per_class dropped were said to be no train sample of
    the data set, with the fix "use a file written for this data set"; beside train ids,
    they were refused as ids of no sample."""
    plain = synthetic(make_cfg)
    kept = {str(i) for i in synthetic(make_cfg, "data.samples_per_class=2").train.ids}
    gone = [str(i) for i in plain.train.ids if str(i) not in kept][:2]
    path = write_csv(tmp_path / "gone.csv", ["sample_id", "label"], [[i, "1"] for i in gone])
    for key in ("exclude", "relabel"):
        with pytest.raises(DataError) as err:
            synthetic(make_cfg, "data.samples_per_class=2", f"data.{key}={path}")
        assert str(err.value) == (
            f"data.{key}={str(path)!r}: none of its 2 sample ids is a train sample of "
            "synthetic (2 were dropped by data.samples_per_class=2). To act on them, run "
            f"without data.samples_per_class=2; or leave data.{key} out, as those samples are "
            "not in this run's train split anyway."
        )
    with pytest.raises(DataError, match=r"dropped by data\.fraction=0\.5 and data\.imbalance"):
        synthetic(make_cfg, "data.fraction=0.5", "data.imbalance_ratio=3", f"data.exclude={path}")
    # Beside a train id they are reported and counted, as val/test ids are.
    both = write_csv(
        tmp_path / "both.csv", ["sample_id", "label"], [[i, "1"] for i in [*gone, *kept]]
    )
    data = synthetic(make_cfg, "data.samples_per_class=2", f"data.relabel={both}")
    assert data.extra_params["data.relabel_unmatched"] == 2
    assert data.extra_params["data.num_relabeled"] == len(kept)


@pytest.mark.parametrize(
    ("key", "header", "expected"),
    [
        ("exclude", None, "no such file"),
        ("exclude", ["id", "label"], "has no sample_id column (its columns: id, label)"),
        ("relabel", ["sample_id", "given_label"], "has no label or suggested_label column"),
        # It said "no such file", and a Latin-1 file "cannot be read" without a fix.
        ("exclude", "folder", "is a folder; give the path of a CSV file in it"),
        ("relabel", "latin-1", "is not UTF-8 text"),
    ],
)
def test_a_missing_file_or_column_fails_validation(make_cfg, tmp_path, key, header, expected):
    path = tmp_path / "ids.csv"
    if header == "folder":
        path.mkdir()
    elif header == "latin-1":
        path.write_bytes("sample_id,label\ndigits:3,caf\xe9\n".encode("latin-1"))
    elif header is not None:
        write_csv(path, header, [])
    with pytest.raises(ConfigError, match="1 problem") as err:
        validate(make_cfg(f"data.{key}={path}"))
    assert f"data.{key}='{path}' {expected}" in str(err.value)
    if header == "latin-1":
        assert "save it as UTF-8 CSV" in str(err.value)


@pytest.mark.parametrize(
    ("key", "text", "mark"),
    [
        ("relabel", "sample_id;label\n{id};3\n", "';' (a semicolon)"),
        ("exclude", "sample_id\tis_label_issue\n{id}\ttrue\n", "'\\t' (a tab)"),
        ("exclude", "sample_id|is_label_issue\n{id}|true\n", "'|' (a vertical bar)"),
    ],
)
def test_a_file_with_another_delimiter_is_refused_naming_the_delimiter(
    make_cfg, tmp_path, key, text, mark
):
    """A semicolon- or tab-separated file was only said to lack its columns, which it has
    (its columns: sample_id;label), without a word on commas."""
    path = tmp_path / "ids.csv"
    path.write_text(text.format(id=digits(make_cfg).train.ids[0]))
    hint = (
        f"The file must be comma-separated, but its header seems to use {mark} between "
        'columns: save it as CSV with commas (a spreadsheet\'s "CSV UTF-8 (comma delimited)")'
    )
    with pytest.raises(ConfigError) as err:  # the command line's check, before the data
        validate(make_cfg(f"data.{key}={path}"))
    assert "has no sample_id" in str(err.value) and str(err.value).endswith(hint)
    with pytest.raises(DataError) as err:  # the data step's own (a swept file)
        digits(make_cfg, f"data.{key}={path}")
    assert "has no sample_id" in str(err.value) and str(err.value).endswith(hint)
    # A comma-separated file that lacks a column gets no word on delimiters.
    write_csv(path, ["id", "label"], [])
    with pytest.raises(DataError, match="has no sample_id column") as err:
        digits(make_cfg, f"data.{key}={path}")
    assert "comma-separated" not in str(err.value)


def test_flag_values_of_every_usual_spelling_are_read_and_others_refused(make_cfg, tmp_path):
    plain = digits(make_cfg)
    ids = [str(i) for i in plain.train.ids[:8]]
    flags = ["True", "1.0", "yes", "T", "False", "0.0", "no", "N"]
    header = ["sample_id", "is_label_issue"]
    path = write_csv(tmp_path / "flags.csv", header, list(zip(ids, flags, strict=True)))
    assert digits(make_cfg, f"data.exclude={path}").extra_params["data.num_excluded"] == 4
    bad = write_csv(tmp_path / "bad.csv", header, [[ids[0], "True"], [ids[1], "x"]])
    with pytest.raises(DataError, match=r"bad.csv', line 3: is_label_issue='x' is neither"):
        digits(make_cfg, f"data.exclude={bad}")


@pytest.mark.parametrize("key", ["exclude", "relabel"])
def test_an_empty_flag_cell_is_refused_naming_the_line(make_cfg, tmp_path, key):
    """A blank is_label_issue cell was read as false: the sample was kept without a word,
    while the README calls any value other than true/false, 1/0, yes/no an error."""
    ids = [str(i) for i in digits(make_cfg).train.ids[:3]]
    header = ["sample_id", "label", "is_label_issue"]
    rows = [[ids[0], "3", "true"], [ids[1], "3", ""], [ids[2], "3", "  "]]
    path = write_csv(tmp_path / "blank.csv", header, rows)
    with pytest.raises(DataError) as err:
        digits(make_cfg, f"data.{key}={path}")
    assert str(err.value) == (
        f"data.{key}={str(path)!r}, line 3: is_label_issue is empty; write True or False "
        "(or 1/0, yes/no) in every row of that column, or remove the row."
    )


def test_a_header_written_with_spaces_keeps_its_flag_column(make_cfg, tmp_path):
    """`sample_id, is_label_issue` once read as an id list: the false rows were dropped too."""
    plain = digits(make_cfg)
    ids = [str(i) for i in plain.train.ids[:3]]
    path = tmp_path / "spaced.csv"
    path.write_text(
        f"sample_id, is_label_issue\n{ids[0]}, true\n{ids[1]}, false\n{ids[2]} , false\n"
    )
    assert digits(make_cfg, f"data.exclude={path}").extra_params["data.num_excluded"] == 1
    drop = tmp_path / "drop.csv"
    drop.write_text(f"sample_id\n{ids[2]} \n")  # an id with a trailing space still matches
    data = digits(make_cfg, f"data.exclude={drop}")
    assert data.extra_params["data.num_excluded"] == 1
    assert data.extra_params["data.exclude_unmatched"] == 0


def test_a_row_shorter_than_the_header_has_empty_cells_not_another_header(make_cfg, tmp_path):
    """A short first row turned the flag off for the whole file; a short later row was a
    bare KeyError."""
    ids = [str(i) for i in digits(make_cfg).train.ids[:4]]
    path = tmp_path / "short.csv"
    path.write_text(
        f"sample_id,is_label_issue,given_label\n{ids[0]},False\n{ids[1]},False,4\n"
        f"{ids[2]},True,4\n{ids[3]},False\n"
    )
    data = digits(make_cfg, f"data.exclude={path}")
    assert data.extra_params["data.num_excluded"] == 1 and ids[2] not in set(data.train.ids)
    # A row cut short before its flag has an empty flag cell: refused, naming its line.
    path.write_text(f"sample_id,given_label,is_label_issue\n{ids[2]},4,True\n{ids[0]}\n")
    with pytest.raises(DataError, match=r"short.csv', line 3: is_label_issue is empty"):
        digits(make_cfg, f"data.exclude={path}")


def test_a_file_that_is_not_utf8_past_its_header_is_refused_naming_it(make_cfg, tmp_path):
    plain = digits(make_cfg)
    path = tmp_path / "latin1.csv"
    lines = ["sample_id", *(str(i) for i in plain.train.ids[:600]), "caf\xe9"]
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(DataError, match=r"data.exclude=.*latin1.csv.*save it as UTF-8"):
        digits(make_cfg, f"data.exclude={path}")


def test_excluding_every_train_sample_is_refused_naming_the_key(make_cfg, tmp_path):
    plain = digits(make_cfg)
    path = write_csv(tmp_path / "all.csv", ["sample_id"], [[str(i)] for i in plain.train.ids])
    with pytest.raises(DataError, match=r"data.exclude=.*all.csv' lists all \d+ train samples"):
        digits(make_cfg, f"data.exclude={path}")


def test_relabel_of_an_audit_file_changes_only_the_flagged_rows(make_cfg, tmp_path):
    plain = digits(make_cfg)
    ids = [str(i) for i in plain.train.ids[:6]]
    old = plain.train.labels[:6].tolist()
    rows = [[i, (y + 1) % 10, n < 2] for n, (i, y) in enumerate(zip(ids, old, strict=True))]
    path = write_csv(tmp_path / "suggested.csv", ["sample_id", "label", "is_label_issue"], rows)
    data = digits(make_cfg, f"data.relabel={path}")
    assert data.extra_params["data.num_relabeled"] == 2
    assert data.train.labels[:6].tolist() == [(old[0] + 1) % 10, (old[1] + 1) % 10, *old[2:]]


def test_relabel_to_the_clean_labels_of_label_noise_csv_undoes_the_noise(make_cfg, tmp_path):
    """The run's own noise file, turned into a relabel file, gives back the clean split."""
    noisy = digits(make_cfg, "data.label_noise=0.1")
    report_train_data(noisy, tmp_path, NullTracker())  # label_noise.csv, as a run writes it
    with (tmp_path / "label_noise.csv").open(newline="") as handle:
        flipped = [r for r in csv.DictReader(handle) if r["clean_label"] != r["noisy_label"]]
    rows = [[r["sample_id"], r["clean_label"]] for r in flipped]
    path = write_csv(tmp_path / "clean.csv", ["sample_id", "label"], rows)
    fixed = digits(make_cfg, "data.label_noise=0.1", f"data.relabel={path}")
    clean = digits(make_cfg)
    assert len(flipped) > 100
    assert fixed.extra_params["data.num_label_changes"] == len(flipped)
    assert fixed.extra_params["data.actual_noise_rate"] == 0
    assert [str(i) for i in fixed.train.ids] == [str(i) for i in clean.train.ids]
    assert torch.equal(fixed.train.labels, clean.train.labels)


def test_relabel_of_an_audits_label_issues_gives_the_flagged_rows_their_suggested_class(
    make_cfg, tmp_path
):
    """The audit's own file was refused for want of a `label` column."""
    plain = digits(make_cfg)
    names = plain.class_names
    old = plain.train.labels[:6].tolist()
    header = ["sample_id", "given_label", "suggested_label", "label_quality", "is_label_issue"]
    rows = [
        [str(i), names[y], names[(y + 1) % 10], 0.1, n < 2]
        for n, (i, y) in enumerate(zip(plain.train.ids[:6], old, strict=True))
    ]
    path = write_csv(tmp_path / "label_issues.csv", header, rows)
    validate(make_cfg(f"data.relabel={path}"))  # the start check takes it
    data = digits(make_cfg, f"data.relabel={path}")
    assert data.extra_params["data.num_label_changes"] == 2
    assert data.train.labels[:6].tolist() == [(old[0] + 1) % 10, (old[1] + 1) % 10, *old[2:]]
    # A `label` column, where a file has both, is the one read.
    both = write_csv(
        tmp_path / "both.csv",
        ["sample_id", "label", "suggested_label"],
        [[str(plain.train.ids[0]), names[old[0]], names[(old[0] + 1) % 10]]],
    )
    assert digits(make_cfg, f"data.relabel={both}").extra_params["data.num_label_changes"] == 0


def test_relabel_errors_give_the_files_own_line_numbers(make_cfg, tmp_path):
    plain = digits(make_cfg)
    path = tmp_path / "blank.csv"
    path.write_text(f"sample_id,label\n\n{plain.train.ids[0]},1\n\n\n{plain.train.ids[1]},cat\n")
    with pytest.raises(DataError, match=r"line 6: 'cat'"):
        digits(make_cfg, f"data.relabel={path}")


def test_where_class_names_are_numbers_a_relabel_number_is_a_name_only(tmp_path):
    """Folders 1, 10, 2: label 0 once meant class '1' (index 0), label 2 class '2' (name)."""
    from runner.data.curation import relabel_samples
    from runner.data.sets.synthetic import make_synthetic

    data = make_synthetic(num_samples=30, num_classes=3, image_size=8)
    data.class_names = ["1", "10", "2"]
    ids = [str(i) for i in data.train.ids[:2]]
    path = write_csv(tmp_path / "fix.csv", ["sample_id", "label"], [[ids[0], "10"], [ids[1], "2"]])
    fixed = relabel_samples(data, str(path))
    assert fixed.train.labels[:2].tolist() == [1, 2]
    path = write_csv(tmp_path / "index.csv", ["sample_id", "label"], [[ids[0], "0"]])
    with pytest.raises(DataError, match=r"line 2: '0'\). A label is a class name \(1, 10, 2\)\."):
        relabel_samples(data, str(path))


def test_an_id_written_with_and_without_spaces_is_one_sample(make_cfg, tmp_path):
    """It was counted twice when excluded, and given two labels without a word."""
    plain = digits(make_cfg)
    first = str(plain.train.ids[0])
    drop = write_csv(tmp_path / "drop.csv", ["sample_id"], [[first], [f"{first} "]])
    dropped = digits(make_cfg, f"data.exclude={drop}")
    assert len(dropped.train) == len(plain.train) - 1
    assert dropped.extra_params["data.num_excluded"] == 1
    relabel = write_csv(
        tmp_path / "relabel.csv", ["sample_id", "label"], [[first, "3"], [f"{first} ", "5"]]
    )
    with pytest.raises(DataError, match="name the same train sample and give it two labels"):
        digits(make_cfg, f"data.relabel={relabel}")


def test_ids_and_class_names_match_in_either_unicode_form(tmp_path):
    """Files and folders copied from macOS spell "ü" as "u" plus an accent (NFD): a class
    name and an id typed on Linux (NFC) looked the same in the error that refused them."""
    import dataclasses
    import unicodedata

    import numpy as np

    from runner.data.curation import exclude_samples, relabel_samples
    from runner.data.sets.synthetic import make_synthetic

    def nfd(text: str) -> str:
        return unicodedata.normalize("NFD", text)

    typed = unicodedata.normalize("NFC", "train/grün/é {}.png")
    assert nfd(typed) != typed
    data = make_synthetic(num_samples=30, num_classes=3, image_size=8)
    data.class_names = ["blue", nfd("grün"), "red"]
    ids = np.array([nfd(typed.format(i)) for i in range(len(data.train))], dtype=object)
    data.train = dataclasses.replace(data.train, ids=ids)
    label = unicodedata.normalize("NFC", "grün")
    relabel = write_csv(tmp_path / "fix.csv", ["sample_id", "label"], [[typed.format(0), label]])
    assert relabel_samples(data, str(relabel)).train.labels[0].item() == 1
    drop = write_csv(tmp_path / "drop.csv", ["sample_id"], [[typed.format(1)]])
    assert len(exclude_samples(data, str(drop)).train) == len(data.train) - 1


def test_ids_of_files_that_do_not_decode_are_named_as_such(make_cfg, tmp_path):
    """An exclude file listing what bad_files.txt names was refused: its ids "name no
    sample" and the file was "written for another data set"."""
    from tests.datagen import make_imagefolder, write_bad_files

    root = make_imagefolder(tmp_path / "pics", classes=("a", "b"), per_class=8)
    bad = write_bad_files(root / "train" / "a")
    folder = ("data=imagefolder", f"data.root={root}", "data.cache_dir=null")
    bad_ids = [p.relative_to(root).as_posix() for p in bad.values()]
    drop = write_csv(
        tmp_path / "drop.csv", ["sample_id"], [["train/b/000.jpg"], *[[i] for i in bad_ids]]
    )
    data = build_data(make_cfg(*folder, f"data.exclude={drop}", tiny=False).data)
    assert data.extra_params["data.num_excluded"] == 1
    assert data.extra_params["data.exclude_unmatched"] == 3
    only_bad = write_csv(tmp_path / "bad.csv", ["sample_id"], [[i] for i in bad_ids])
    with pytest.raises(DataError, match=r"\(3 were dropped by data.on_bad_file=skip\)\. Those"):
        build_data(make_cfg(*folder, f"data.exclude={only_bad}", tiny=False).data)


def test_excluding_a_near_duplicates_file_says_it_drops_every_copy(make_cfg, tmp_path, caplog):
    """It dropped the copy to keep along with the others, unsaid."""
    import logging

    ids = [str(i) for i in digits(make_cfg).train.ids[:2]]
    rows = [[ids[0], "3", "0.0", "0", f'["{ids[1]}"]'], [ids[1], "3", "0.0", "0", f'["{ids[0]}"]']]
    header = ["sample_id", "given_label", "near_duplicate_score", "distance", "duplicate_ids"]
    path = write_csv(tmp_path / "near_duplicates.csv", header, rows)
    with caplog.at_level(logging.WARNING, logger="runner"):
        data = digits(make_cfg, f"data.exclude={path}")
    assert data.extra_params["data.num_excluded"] == 2
    assert "the one to keep included: all 2 are dropped" in caplog.text
