"""Pooling leave-one-material-out folds run apart (scripts/bench_finetune_lomo.py --pool)."""

from __future__ import annotations

import json

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def lomo():
    return load_script("bench_finetune_lomo")


def _report(fold, rows, frames_sha256="f1", options=None):
    rows = [
        {"fold": fold, "group": f"{fold}/{k}", "dft_eV": d, "base_eV": b, "tuned_eV": t}
        for k, (d, b, t) in enumerate(rows)
    ]
    return {
        "calculator": "chgnet-her",
        "options": options or {"epochs": 15, "alignment": "host"},
        "settings_hash": "s1",
        "frames_sha256": frames_sha256,
        "folds": [{"material": fold, "held_out": [r["group"] for r in rows], "cpu_s": 60.0}],
        "rows": rows,
    }


def test_folds_run_apart_pool_to_one_run_and_each_material_counts_once(lomo, tmp_path):
    """Two relaxations of MoS2 (errors 1.0 and 0.6 after tuning) and one of C (0.2): pooled over rows the tuned MAE
    is 0.6, per material (0.8 and 0.2) 0.5."""
    a = _report("MoS2", [(2.0, 1.0, 1.0), (2.0, 1.2, 1.4)])
    b = _report("C", [(1.7, 0.3, 1.5)])
    pooled = lomo.pool_reports([a, b])
    assert pooled["pooled"]["tuned"]["n"] == 3
    assert pooled["pooled"]["tuned"]["mae_eV"] == pytest.approx((1.0 + 0.6 + 0.2) / 3)
    assert pooled["per_material"]["tuned"]["mae_eV"] == pytest.approx((0.8 + 0.2) / 2)
    assert pooled["per_material"]["base"]["mae_eV"] == pytest.approx((0.9 + 1.4) / 2)
    assert pooled["cpu_s"] == 120.0 and [f["material"] for f in pooled["folds"]] == ["MoS2", "C"]
    # the command line does the same, and writes it
    paths = []
    for name, rep in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(rep))
    assert lomo.main(["--pool", *map(str, paths), "--out", str(tmp_path / "pooled.json")]) == 0
    assert json.loads((tmp_path / "pooled.json").read_text())["per_material"] == pooled["per_material"]


def test_folds_made_another_way_or_twice_are_not_pooled(lomo, tmp_path):
    a = _report("MoS2", [(2.0, 1.0, 1.0)])
    with pytest.raises(lomo.FoldsDiffer, match="frames"):
        lomo.pool_reports([a, _report("C", [(1.7, 0.3, 1.5)], frames_sha256="f2")])
    with pytest.raises(lomo.FoldsDiffer, match="options"):
        lomo.pool_reports([a, _report("C", [(1.7, 0.3, 1.5)], options={"epochs": 4})])
    with pytest.raises(lomo.FoldsDiffer, match="twice"):
        lomo.pool_reports([a, a])
    # a fold that predates the frames record pools, and is named
    old = _report("C", [(1.7, 0.3, 1.5)], frames_sha256=None)
    assert lomo.pool_reports([a, old])["frames_sha256_missing"] == ["C"]
    (tmp_path / "a.json").write_text(json.dumps(a))
    assert lomo.main(["--pool", str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 2


def test_the_shift_baseline_uses_only_the_other_materials(lomo):
    """MoS2's relaxations are off by +1.0 and +0.8 (mean +0.9), C's by +1.4, P's by +0.2. Each fold is shifted by the
    mean of the other materials' mean errors, never by its own: MoS2 by (1.4 + 0.2) / 2 = 0.8, C by 0.55, P by 1.15."""
    rows = [
        {"fold": "MoS2", "dft_eV": 2.0, "base_eV": 1.0, "tuned_eV": 1.0},
        {"fold": "MoS2", "dft_eV": 2.0, "base_eV": 1.2, "tuned_eV": 1.4},
        {"fold": "C", "dft_eV": 1.7, "base_eV": 0.3, "tuned_eV": 1.5},
        {"fold": "P", "dft_eV": 0.5, "base_eV": 0.3, "tuned_eV": 0.4},
    ]
    assert lomo.shifted_base(rows) == pytest.approx([1.8, 2.0, 0.85, 1.45])
    summary = lomo.summarise(rows)
    assert summary["pooled"]["shift"]["mae_eV"] == pytest.approx((0.2 + 0.0 + 0.85 + 0.95) / 4)
    assert summary["per_material"]["shift"]["mae_eV"] == pytest.approx((0.1 + 0.85 + 0.95) / 3)
    # one fold has no other material to learn a shift from
    assert lomo.shifted_base(rows[:2]) is None and "shift" not in lomo.summarise(rows[:2])["pooled"]
