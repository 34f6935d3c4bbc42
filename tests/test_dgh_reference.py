"""The DFT ΔG_H reference table of scripts/bench_her_fidelity.py: every row is sourced and buildable."""

from __future__ import annotations

import pytest
from conftest import load_script
from pymatgen.core import Composition


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_her_fidelity")


def test_table_has_twelve_sourced_rows(bench):
    rows = bench.read_reference()
    assert len(rows) >= 12
    for row in rows:
        assert row["citation"].strip() and row["site"].strip() and row["functional"] is not None, row["material"]
        assert -3.0 < float(row["dg_h_eV"]) < 4.0 and float(row["dg_h_precision_eV"]) > 0
        assert row["h_start"] in ("ontop", "above")


def test_every_builder_makes_the_rows_monolayer(bench):
    """The starting cell has the row's formula, the H target element, and is one layer with vacuum along z."""
    from gen2d.structures import from_ase, orient_2d, validate_ingest

    for row in bench.read_reference():
        atoms = bench.build(row["builder"])
        assert Composition(atoms.get_chemical_formula()).reduced_formula == Composition(row["formula"]).reduced_formula
        assert row["site_atom"] in atoms.get_chemical_symbols(), row["material"]
        check = validate_ingest(orient_2d(from_ase(atoms)))
        assert check.ok, (row["material"], check.reasons)
