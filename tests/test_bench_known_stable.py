"""scripts/bench_known_stable.py: the four reference sets of one relaxed energy, and --resume."""

from __future__ import annotations

import json

import pytest
from conftest import load_script


@pytest.mark.slow
def test_known_stable_phosphorus_layers_resume_and_sit_on_their_own_parents(tmp_path, capsys):
    bench = load_script("bench_known_stable")
    out = tmp_path / "records.jsonl"
    # the MC2D layers made of P alone: two, with cheap elemental references
    common = ["--set", "mc2d", "--elements-within", "P", "--cache-dir", str(tmp_path / "refs"), "--out", str(out)]
    assert bench.main(["--n", "1", *common]) == 0
    [first] = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["failure"] is None and first["source_id"].startswith("mc2d:P")
    e = first["e_hull"]
    assert set(e) >= {"all", "self-out", "prototypes-only", "without-molecules"}
    # removing references can only raise the hull beneath the layer: against a subset, E_hull never goes up
    assert e["self-out"] <= e["all"] + 1e-9 and e["prototypes-only"] <= e["self-out"] + 1e-9
    # a layer exfoliated from a known parent lies on or just above its own stacked bulk, not far below it
    assert -0.05 < e["all"] < 0.2

    capsys.readouterr()
    assert bench.main(["--n", "2", "--resume", *common]) == 0
    printed = capsys.readouterr().out
    both = [json.loads(line) for line in out.read_text().splitlines()]
    assert "resuming: 1 records" in printed
    assert len(both) == 2 and both[0] == first and both[1]["source_id"] != first["source_id"]
    assert printed.count("] ") == 1  # only the missing layer is scored
    assert "layers: 2" in printed  # the summary covers the kept record too
    # without --resume the file starts again
    assert bench.main(["--n", "1", *common]) == 0
    assert [json.loads(line)["source_id"] for line in out.read_text().splitlines()] == [first["source_id"]]
