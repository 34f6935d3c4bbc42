"""Atomic writes keep the old file whole when a write fails."""

import json

import pytest

from gen2d.fileio import atomic_path, write_json_atomic, write_jsonl_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "doc.json", {"energy_eV": -1.5})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text('{"energy_eV": ')  # half a document, then the writer dies
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"energy_eV": -1.5}
    assert sorted(p.name for p in path.parent.iterdir()) == ["doc.json"]


def test_jsonl_is_one_document_per_line_and_a_rewrite_replaces_it(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl_atomic(path, [{"a": 1}, {"a": 2}])
    write_jsonl_atomic(path, [{"b": 3}], sort_keys=True)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"b": 3}]
