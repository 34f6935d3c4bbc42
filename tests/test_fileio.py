"""Atomic writes keep the old file whole when a write fails; append-only JSON lines survive a kill mid-line."""

import json

import pytest

from gen2d.fileio import (
    JsonlCorrupt,
    append_jsonl,
    atomic_path,
    end_torn_line,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)


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


def test_a_journal_cut_mid_line_keeps_its_whole_lines_and_takes_new_ones(tmp_path, caplog):
    """A kill during an append leaves half a line: reading skips it (that item is made again), and the next append
    starts on a line of its own instead of gluing itself to the cut one."""
    path = tmp_path / "records.jsonl"
    append_jsonl(path, {"id": "a", "e_hull": 0.01})
    append_jsonl(path, {"id": "b", "e_hull": 0.2})
    with path.open("a") as fh:
        fh.write('{"id": "c", "e_hu')  # the kill
    with caplog.at_level("WARNING"):
        assert [d["id"] for d in read_jsonl(path)] == ["a", "b"]
    assert "line 3" in caplog.text
    append_jsonl(path, {"id": "c", "e_hull": 0.05})
    assert [d["id"] for d in read_jsonl(path)] == ["a", "b", "c"]
    assert path.read_text().splitlines()[2] == '{"id": "c", "e_hu'  # the cut line stayed on its own


def test_a_damaged_line_in_a_file_written_whole_is_a_named_error_not_a_dropped_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl_atomic(path, [{"material": "MoS2"}, {"material": "WS2"}])
    path.write_text(path.read_text().replace('"WS2"}', '"WS2"'))
    with pytest.raises(JsonlCorrupt, match="line 2"):
        read_jsonl(path, strict=True)
    assert read_jsonl(tmp_path / "absent.jsonl", strict=True) == []


def test_ending_a_torn_line_leaves_a_whole_file_and_an_empty_one_alone(tmp_path):
    whole, empty = tmp_path / "whole.jsonl", tmp_path / "empty.jsonl"
    write_jsonl_atomic(whole, [{"a": 1}])
    empty.write_text("")
    before = whole.read_bytes()
    end_torn_line(whole)
    end_torn_line(empty)
    end_torn_line(tmp_path / "absent.jsonl")
    assert whole.read_bytes() == before and empty.read_bytes() == b""
    assert not (tmp_path / "absent.jsonl").exists()
