"""scripts/dft_convergence.py: a cached single point stands, and a failure cached under older SCF rules runs again."""

from __future__ import annotations

import json

import pytest
from ase import Atoms
from conftest import CP2K_TINY, load_script, needs_cp2k
from gen2d_cp2k import Cp2kSettings

from gen2d.adsorption import FAILURE_RULES


def _h2() -> Atoms:
    mol = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.75]], cell=[7.0] * 3, pbc=True)
    mol.center()
    return mol


def _cache(directory, doc) -> None:
    directory.mkdir(parents=True)
    (directory / "result.json").write_text(json.dumps(doc))


def test_a_failure_under_the_current_rules_stands_without_running_cp2k(tmp_path):
    study = load_script("dft_convergence")
    failed = {"energy_eV": None, "failure": "scf_not_converged", "scf_steps": 100, "wall_s": 9.0, "cpu_s": 9.0}
    _cache(tmp_path / "p", failed | {"failure_rules": FAILURE_RULES})
    # no calculator is made for a cached point, so settings CP2K would refuse do not matter here
    with pytest.raises(study.PointFailed, match="scf_not_converged after 100 SCF steps"):
        study.single_point(_h2(), Cp2kSettings(**CP2K_TINY), tmp_path / "p", threads=1)


@needs_cp2k
def test_a_failure_cached_under_older_rules_is_computed_again(tmp_path):
    study = load_script("dft_convergence")
    stale = {"energy_eV": None, "failure": "scf_not_converged", "scf_steps": 100, "wall_s": 9.0, "cpu_s": 9.0}
    _cache(tmp_path / "p", stale)  # no failure_rules: written before the SCF retry ladder
    # the calculator's ledger of that failed run: its 100 steps are the old computation's, not this point's
    ledger = {"n_evaluations": 1, "scf_steps": [100], "wall_seconds": 9.0, "n_processes": 1, "scf_failed": None}
    (tmp_path / "p" / "gen2d-cost.json").write_text(json.dumps(ledger))
    doc = study.single_point(_h2(), Cp2kSettings(**CP2K_TINY), tmp_path / "p", threads=1)
    assert doc["failure"] is None and doc["failure_rules"] == FAILURE_RULES
    assert -33.0 < doc["energy_eV"] < -30.0  # H₂'s total energy with GTH pseudopotentials (about −31.7 eV)
    assert doc["scf_steps"] > 0
    after = json.loads((tmp_path / "p" / "gen2d-cost.json").read_text())
    assert after["scf_steps"][0] == 100 and doc["scf_steps"] == sum(after["scf_steps"][1:])
    stored = json.loads((tmp_path / "p" / "result.json").read_text())
    assert stored["energy_eV"] == doc["energy_eV"]
    # and the stored result is what a rerun returns, without CP2K
    assert study.single_point(_h2(), Cp2kSettings(**CP2K_TINY), tmp_path / "p", threads=1) == doc


def test_a_study_row_that_failed_under_older_rules_is_not_done_and_a_later_row_supersedes(tmp_path):
    study = load_script("dft_convergence")
    rows = [
        {"scan": "cutoff", "label": "300 Ry", "failure": "scf_not_converged"},  # before the retry ladder
        {"scan": "precision", "label": "EPS_DEFAULT 1e-10", "failure": "scf_not_converged", "failure_rules": 99},
        {"scan": "base", "label": "base", "delta_e_h_eV": 2.127},
        {"scan": "kpoints", "label": "3×3×1 k-points", "delta_e_h_eV": 9.0},
        {"scan": "kpoints", "label": "3×3×1 k-points", "delta_e_h_eV": 1.800},  # a rerun's row, appended
    ]
    path = tmp_path / "study.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = study.points_done(path)
    assert ("cutoff", "300 Ry") not in done  # runs again on the current ladder
    assert ("precision", "EPS_DEFAULT 1e-10") in done  # a failure under the current rules stands
    assert done[("kpoints", "3×3×1 k-points")]["delta_e_h_eV"] == 1.800
    assert len(study.read_points(path)) == 4
