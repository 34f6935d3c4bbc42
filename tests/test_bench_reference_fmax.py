"""scripts/bench_reference_fmax.py on a pair the shipped cache holds: no reference is built, a vertex already
below the layers' fmax does not move, and each cached energy is the MLIP's own energy of its cached structure."""

from __future__ import annotations

import json

import pytest
from conftest import load_script


@pytest.mark.slow
def test_hull_vertices_relax_on_from_their_cached_structures(tmp_path):
    bench = load_script("bench_reference_fmax")
    out = tmp_path / "fmax.json"
    assert bench.main(["Mo-S", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["formula"]: r for r in report["rows"]}
    assert set(rows) == {"Mo", "MoS2", "S"}  # the Mo-S hull: bcc Mo, 2H-MoS2, alpha-S8
    # the cache holds the MLIP's energy of the structure it stores (to float noise, meV/atom)
    assert all(abs(r["stored_minus_single_point_meV_per_atom"]) < 0.01 for r in rows.values())
    # bcc Mo was relaxed below 0.05 eV/Å already: nothing to do; the others only go down in energy
    assert rows["Mo"]["stored_final_fmax_eV_per_A"] < 0.05 and rows["Mo"]["steps"] == 0
    assert rows["Mo"]["fall_meV_per_atom"] == pytest.approx(0.0, abs=1e-6)
    assert all(r["fall_meV_per_atom"] <= 1e-6 for r in rows.values())
    assert rows["S"]["prototype"] == "alpha_s8" and rows["S"]["converged"]
