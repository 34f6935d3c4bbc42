"""scripts/dft_recheck.py reads back the geometry ASE's CP2K calculator writes into its input."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import graphene
from ase.calculators.cp2k import CP2K
from conftest import load_script
from gen2d_cp2k import ASE_INPUT_OFF


def test_the_geometry_of_a_written_cp2k_input_reads_back_exactly():
    layer = graphene(a=2.46, vacuum=7.5).repeat((4, 4, 1))
    layer.pbc = (True, True, False)
    layer.positions[3, 2] += 0.4  # a puckered atom, as under H
    calc = CP2K(command="cp2k_shell", **ASE_INPUT_OFF)  # the keywords gen2d's calculator gives ASE
    calc.atoms = layer
    back = load_script("dft_recheck").atoms_from_input(calc._generate_input())
    assert back.get_chemical_symbols() == layer.get_chemical_symbols()
    assert np.allclose(back.positions, layer.positions, atol=1e-9)
    assert np.allclose(back.cell, layer.cell, atol=1e-9)
    assert tuple(back.pbc) == (True, True, False)
    with pytest.raises(ValueError, match="COORD"):
        load_script("dft_recheck").atoms_from_input("&FORCE_EVAL\n&END FORCE_EVAL\n")


def test_set_overrides_are_json_values_and_a_mesh_is_a_tuple():
    parse = load_script("dft_recheck").parse_overrides
    assert parse(["kpoints=[3,3,1]", "cutoff_ry=500", "scf=diag"]) == {
        "kpoints": (3, 3, 1),
        "cutoff_ry": 500,
        "scf": "diag",
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse(["kpoints"])


def test_a_spin_start_names_an_element_and_a_number_and_the_spin_density_is_read_back():
    script = load_script("dft_recheck")
    assert script.parse_moments(["H=1", "Mo=-0.5"]) == {"H": 1.0, "Mo": -0.5}
    with pytest.raises(SystemExit, match="element symbol"):
        script.parse_moments(["Hx=1"])
    with pytest.raises(SystemExit, match="not a number"):
        script.parse_moments(["H=up"])
    out = (
        "  Integrated absolute spin density  :                               1.2154076511\n"
        "  ...\n"
        "  Integrated absolute spin density  :                               0.8894272911\n"
    )
    from gen2d_cp2k import abs_spin_density

    assert abs_spin_density(out) == pytest.approx(0.8894272911)  # the last SCF's
    assert abs_spin_density("closed shell: no spin density printed") is None


def test_a_site_is_rechecked_at_its_stored_geometry_and_a_mismatch_is_refused(tmp_path):
    """A relaxed site's input holds its first geometry; the geometry of its energy is in result.json."""
    import json

    from gen2d_cp2k import Cp2kSettings

    layer = graphene(a=2.46, vacuum=7.5).repeat((2, 2, 1))
    layer.pbc = (True, True, False)
    calc = CP2K(command="cp2k_shell", **ASE_INPUT_OFF)
    calc.atoms = layer
    run, part = tmp_path / "run", tmp_path / "run" / "site_0"
    part.mkdir(parents=True)
    settings = Cp2kSettings()
    (run / "run.json").write_text(
        json.dumps({"cp2k_settings": settings.model_dump(mode="json"), "settings_hash": settings.settings_hash()})
    )
    (part / "gen2d.inp").write_text(calc._generate_input())
    moved = layer.positions.copy()
    moved[3, 2] += 0.4  # the relaxed geometry: one atom puckered, as under H
    (part / "result.json").write_text(json.dumps({"energy": -1.0, "positions": moved.tolist()}))
    atoms = load_script("dft_recheck").part_atoms(part, json.loads((part / "result.json").read_text()))
    np.testing.assert_allclose(atoms.positions, moved, atol=1e-9)  # not the input's flat sheet
    with pytest.raises(SystemExit, match="does not hold"):  # a moment on an element the part lacks
        load_script("dft_recheck").main([str(part), "--workdir", str(tmp_path / "w"), "--moment", "Mo=1"])
    with pytest.raises(SystemExit, match="closed-shell"):  # graphene has an even count: no moment to start
        load_script("dft_recheck").main([str(part), "--workdir", str(tmp_path / "w"), "--moment", "C=1"])
    (part / "relax.traj").write_bytes(b"")
    with pytest.raises(SystemExit, match="holds no positions"):  # relaxed, but its geometry was not stored
        load_script("dft_recheck").part_atoms(part, {"energy": -1.0})
    wrong = layer.positions[:-1].tolist()  # one atom short: not this part's geometry
    (part / "result.json").write_text(json.dumps({"energy": -1.0, "positions": wrong}))
    with pytest.raises(SystemExit, match="7 positions, the input 8 atoms"):
        load_script("dft_recheck").main([str(part), "--workdir", str(tmp_path / "w")])
    with pytest.raises(Exception, match="kpointz"):  # a misspelt setting is refused by name
        load_script("dft_recheck").main([str(part), "--workdir", str(tmp_path / "w"), "--set", "kpointz=[3,3,1]"])
