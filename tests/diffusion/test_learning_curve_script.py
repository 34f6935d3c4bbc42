"""scripts/generator_learning_curve.py on a tiny subset: every point carries the bare network's validity beside the
sampler's, on the same held-out formulas, and a rerun keeps the finished points instead of training again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "generator_learning_curve.py"


def _run(work: Path, out: Path, sample_steps: int = 5) -> subprocess.CompletedProcess:
    args = [sys.executable, str(SCRIPT), "--fractions", "0.5", "1.0", "--steps", "2", "--samples", "3"]
    args += ["--sample-steps", str(sample_steps), "--sources", "2dmatpedia_filtered.db", "--device", "cpu"]
    args += ["-o", "max_records=20", "-o", "hidden=16", "-o", "n_layers=1", "--work-dir", str(work), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_curve_reports_bare_and_prior_validity_and_keeps_finished_points(tmp_path, data_available):
    out, work = tmp_path / "curve.json", tmp_path / "runs"
    first = _run(work, out)
    assert first.returncode == 0, first.stderr[-3000:]
    doc = json.loads(out.read_text())
    half, full = doc["points"]
    assert (half["fraction"], full["fraction"]) == (0.5, 1.0)
    # nested training shares, one validation set of held-out formulas for both
    assert 0 < half["n_train"] < full["n_train"] and half["n_val"] == full["n_val"] >= 1
    for point in (half, full):
        assert point["steps"] == 2 and point["n_samples"] == 3 and point["bare"]["n_samples"] == 3
        for figures in (point, point["bare"]):
            assert 0.0 <= figures["strict_validity"] <= 1.0 and 0.0 <= figures["smact_validity"] <= 1.0
            failed = round((1 - figures["strict_validity"]) * 3)  # each failed sample names a reason
            assert sum(figures["strict_failures"].values()) >= failed
    bare = doc["bare_sampling_config"]
    assert bare["overlap_scale"] == bare["fragment_scale"] == bare["periodic_scale"] == 0.0
    assert bare["charge_balance"] is False and doc["sampling_config"]["charge_balance"] is True
    assert doc["sampling_config"]["overlap_scale"] > 0

    again = _run(work, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("kept from") == 2
    assert json.loads(out.read_text())["points"] == doc["points"]
    # another sampler setting: the stored points are not its figures, so none is kept
    other = _run(work, out, sample_steps=4)
    assert other.returncode == 0, other.stderr[-3000:]
    assert "kept from" not in other.stdout
    assert json.loads(out.read_text())["sampling_config"]["n_steps"] == 4
