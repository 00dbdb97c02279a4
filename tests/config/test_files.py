"""`replaced_whole`: a file is replaced whole or not at all, and no temp file stays."""

import pytest

from runner.config.files import replaced_whole


def test_a_finished_write_replaces_the_file_and_a_failed_one_keeps_the_old(tmp_path):
    path = tmp_path / "manifest.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), replaced_whole(path) as temp:
        temp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    with replaced_whole(path) as temp:
        assert temp.parent == path.parent and temp.name.startswith(".")
        temp.write_text("new")
        assert path.read_text() == "old"  # a reader sees the old file until the end
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
