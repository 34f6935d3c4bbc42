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
