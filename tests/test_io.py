"""t5kit.io: a write either lands whole or leaves the old file / directory as it was."""

from __future__ import annotations

import pytest

from t5kit import io


class Boom(Exception):
    pass


def test_a_failed_file_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    io.write_json(path, {"step": 1})
    with pytest.raises(Boom), io.atomic_open(path) as f:
        f.write('{"step": 2, "half')
        raise Boom
    assert path.read_text(encoding="utf-8") == '{\n  "step": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert io.write_jsonl(tmp_path / "a.jsonl", [{"x": "é"}, {"x": 2}]) == 2
    assert (tmp_path / "a.jsonl").read_text(encoding="utf-8") == '{"x": "é"}\n{"x": 2}\n'


def test_atomic_path_keeps_the_suffix_for_writers_that_read_it(tmp_path):
    with io.atomic_path(tmp_path / "curves.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "curves.png").read_bytes() == b"png"


def test_a_directory_is_replaced_in_one_rename_or_not_at_all(tmp_path):
    target = tmp_path / "best"
    with io.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("one")
    with pytest.raises(Boom), io.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("half")
        raise Boom
    assert (target / "weights").read_text() == "one"
    with io.atomic_directory(target) as tmp:
        (tmp / "weights").write_text("two")
    assert (target / "weights").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no .tmp- or .old- left behind
    io.remove_directory(target)
    assert list(tmp_path.iterdir()) == []
