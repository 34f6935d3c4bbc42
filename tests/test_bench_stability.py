"""scripts/bench_stability.py --resume: a stopped benchmark goes on from its records instead of starting again."""

from __future__ import annotations

import json

import pytest
from conftest import load_script


@pytest.mark.slow
def test_a_resumed_run_keeps_its_records_and_scores_only_the_missing_layers(tmp_path, capsys):
    bench = load_script("bench_stability")
    out = tmp_path / "records.jsonl"
    common = ["--max-elements", "1", "--cache-dir", str(tmp_path / "refs"), "--out", str(out)]
    assert bench.main(["--n", "1", *common]) == 0
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(first) == 1 and first[0]["failure"] is None and "mlip-prototypes" in first[0]["e_hull"]
    capsys.readouterr()
    assert bench.main(["--n", "2", "--resume", *common]) == 0
    printed = capsys.readouterr().out
    both = [json.loads(line) for line in out.read_text().splitlines()]
    assert "resuming: 1 records" in printed and "[1/2]" not in printed  # the first layer is not scored again
    assert len(both) == 2 and both[0] == first[0] and both[1]["id"] != first[0]["id"]
    # without --resume the file starts again
    assert bench.main(["--n", "1", *common]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [first[0]["id"]]
