"""scripts/bench_scf_variants.py: one SCF of a stored frame per settings variant, failures included."""

from __future__ import annotations

import json

import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import Trajectory
from conftest import CP2K_TINY, load_script, needs_cp2k


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_scf_variants")


def test_variants_parse_as_yaml_values_and_a_bad_one_is_named(bench):
    assert bench.parse_variant("rks:spin=off,dipole_correction=false,mixing_alpha=0.05") == (
        "rks",
        {"spin": "off", "dipole_correction": False, "mixing_alpha": 0.05},
    )
    assert bench.parse_variant("base:") == ("base", {})
    with pytest.raises(ValueError, match="not key=value"):
        bench.parse_variant("rks:spin")
    with pytest.raises(ValueError, match="name"):
        bench.parse_variant(":spin=off")


@needs_cp2k
def test_an_h_atom_frame_restricted_and_not(bench, tmp_path, capsys):
    """The restricted H atom runs (smearing) and lies about 1 eV above the spin-polarised one; a variant CP2K
    cannot run (OT with a half-filled level) is recorded as that variant's failure and the others go on."""
    h = Atoms("H", positions=[[3.5, 3.5, 3.5]], cell=[7.0] * 3, pbc=True)
    h.calc = SinglePointCalculator(h, energy=0.0, forces=[[0.0, 0.0, 0.0]])
    with Trajectory(str(tmp_path / "frame.traj"), "w") as tr:
        tr.write(h)
    (tmp_path / "settings.json").write_text(json.dumps(CP2K_TINY))
    argv = ["--traj", str(tmp_path / "frame.traj"), "--settings", str(tmp_path / "settings.json")]
    argv += ["--variant", "uks:", "--variant", "rks:spin=off", "--variant", "rks-ot:spin=off,scf=ot"]
    assert bench.main([*argv, "--max-scf", "40", "--workdir", str(tmp_path / "runs"), "--json"]) == 0
    out = capsys.readouterr().out
    records = json.loads(out[out.index("{") :])["variants"]
    assert records["uks"]["converged"] and records["rks"]["converged"]
    assert 0.7 < records["rks"]["energy_eV"] - records["uks"]["energy_eV"] < 1.4
    assert not records["rks-ot"]["converged"] and "odd electron count" in records["rks-ot"]["failure"]
    assert records["uks"]["settings_hash"] != records["rks"]["settings_hash"]
