"""scripts/train_generator.sh on a CPU: a short wall budget on a tiny subset writes a checkpoint and a
MANIFEST.json, and a second call resumes from that checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gen2d.diffusion.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_generator.sh"
TINY = ["-o", "max_records=16", "-o", "hidden=16", "-o", "n_layers=1", "-o", "log_every=2", "--device", "cpu"]


def _run(budget: str, out: Path, *more: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "GEN2D_PYTHON": sys.executable,
        "GEN2D_TRAIN_SOURCES": "[2dmatpedia_filtered.db]",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        ["bash", str(SCRIPT), budget, str(out), *TINY, *more], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_budgeted_run_writes_a_manifest_and_resumes(tmp_path, data_available):
    """Steps, not the clock, end these runs: a 10-minute budget that a step cap stops first. How long reading the
    data takes depends on the machine's load (36 s on 2 shared cores), so a test on a seconds budget would be a
    timed test; the budget's own stop is the exit-3 test below."""
    out = tmp_path / "run"
    first = _run("10", out, "-o", "max_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["steps"] == 2 and manifest["resumed"] is False
    assert manifest["device"]["device"] == "cpu" and manifest["device"]["batch_size"] == 32
    assert manifest["device"]["amp_dtype"] == "float32" and manifest["device"]["num_workers"] == 0
    src = manifest["sources"]["2dmatpedia_filtered.db"]
    assert len(src["sha256"]) == 64 and src["kept"] == 16
    assert manifest["n_train"] + manifest["n_val"] == 16 and manifest["n_val"] >= 1  # formulas held out
    assert "denoise" in manifest["final_train_losses"] and "denoise" in manifest["val_denoising"]
    assert manifest["wall_seconds"] > 0 and manifest["cpu_seconds"] > 0
    assert manifest["command"].startswith("scripts/train_generator.sh 10 ")
    if (ROOT / ".git").exists():
        assert len(manifest["git_commit"] or "") == 40
    _, payload = load_checkpoint(out / "checkpoint.pt", "cpu")
    assert payload["step"] == manifest["steps"] and payload["meta"]["config"]["strict_valid_only"] is True
    assert manifest["checkpoint"]["sha256"] and payload["meta"]["config"]["max_cpu_minutes"] is None

    second = _run("10", out, "-o", "max_steps=4")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / "MANIFEST.json").read_text())
    assert again["resumed"] is True and again["steps"] == 4  # on from step 2, never from 0
    _, resumed = load_checkpoint(out / "checkpoint.pt", "cpu")
    assert resumed["step"] == 4


@pytest.mark.slow
def test_a_fresh_run_with_no_training_step_fails_without_a_manifest(tmp_path, data_available):
    """A budget spent before the first step (reading data) is no result: exit 3, a message saying to rerun, and
    no MANIFEST that would pass an untrained checkpoint off as a trained one."""
    out = tmp_path / "run"
    done = _run("0", out)
    assert done.returncode == 3, done.stderr[-3000:]
    assert "no training step" in done.stderr and "run the same command again" in done.stderr
    assert not (out / "MANIFEST.json").exists()
    assert not (out / "checkpoint.pt").exists()  # else the next run would resume an untrained model
