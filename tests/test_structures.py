"""2D conventions: every named validation reason, orientation, canonical form and content hash."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase.build import molecule
from conftest import make_mos2
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from gen2d.structures import (
    REASONS,
    StructureError,
    canonicalize,
    content_hash,
    from_ase,
    layer_thickness,
    load_structure,
    orient_2d,
    to_ase,
    vacuum_thickness,
    validate_ingest,
    validate_strict,
)


def reasons(v):
    return v.reasons


# ---------------------------------------------------------------- good layers


def test_mos2_and_graphene_pass_both_levels(mos2, graphene_layer):
    for s in (mos2, graphene_layer):
        vi, vs = validate_ingest(s), validate_strict(s)
        assert vi.ok, vi.reasons
        assert vs.ok, vs.reasons
        assert vs.metrics["dimensionality"] == 2


def test_mos2_geometry_is_physical(mos2):
    # Mo-S bond 2.41 Å, S-S height 3.13 Å: the fixture is a real monolayer
    d = min(
        mos2.get_distance(i, j)
        for i in range(len(mos2))
        for j in range(len(mos2))
        if mos2[i].specie.symbol == "Mo" and mos2[j].specie.symbol == "S"
    )
    assert d == pytest.approx(2.41, abs=0.03)
    assert layer_thickness(mos2) == pytest.approx(3.13, abs=0.01)
    assert vacuum_thickness(mos2) == pytest.approx(20.0, abs=0.01)


def test_ase_conversion_is_periodic_in_plane_only(mos2):
    atoms = to_ase(mos2)
    assert tuple(atoms.pbc) == (True, True, False)
    back = from_ase(atoms)
    assert np.allclose(back.lattice.matrix, mos2.lattice.matrix)
    assert [s.symbol for s in back.species] == [s.symbol for s in mos2.species]


# ---------------------------------------------------------------- ingest reasons


def test_bulk_crystal_rejected(bulk_si):
    v = validate_ingest(bulk_si)
    assert not v.ok and reasons(v) == ["bulk_crystal"]


def test_stacked_layers_rejected(mos2_bilayer):
    v = validate_ingest(mos2_bilayer)
    assert not v.ok and reasons(v) == ["stacked_layers"]


def test_molecule_in_box_rejected():
    atoms = molecule("H2O")
    atoms.center(vacuum=8.0)
    v = validate_ingest(from_ase(atoms))
    assert reasons(v) == ["molecule_in_box"]


def test_chain_with_in_plane_vacuum_rejected():
    # a carbon chain along a, 12 Å of vacuum along b and along c: a wire, not a layer
    s = Structure(Lattice.orthorhombic(1.3, 12.0, 20.0), ["C"], [[0, 0.5, 0.5]])
    assert reasons(validate_ingest(s)) == ["vacuum_gap_in_plane"]


def test_isolated_fragment_rejected(mos2):
    s = mos2.copy()
    top = s.cart_coords[:, 2].max()
    s.append("H", [0.0, 0.0, top + 4.2], coords_are_cartesian=True)
    s.append("H", [0.74, 0.0, top + 4.2], coords_are_cartesian=True)
    v = validate_ingest(s)
    assert reasons(v) == ["isolated_fragment"]


def test_two_sheets_out_of_contact_are_named_as_such():
    # a CHGNet-relaxed 2DMatPedia "N2" layer (2dm-5979): two zigzag N chains 3.3 Å apart in z, each
    # periodic in-plane only through loose contacts; not a stack by the strict bonds, not one layer
    lattice = Lattice([[2.181, 0, 0], [0, 3.91, 0], [0, 0, 22.872]])
    cart = [[0.0, 3.289, 13.108], [0.0, 0.621, 9.765], [1.091, 1.334, 9.765], [1.091, 2.576, 13.108]]
    v = validate_ingest(Structure(lattice, ["N"] * 4, cart, coords_are_cartesian=True))
    assert reasons(v) == ["isolated_fragment"]
    assert "2 periodic sheets" in v.messages[0] and "different heights" in v.messages[0]


def test_layer_of_separate_molecules_not_periodic():
    # flat-lying N2 molecules 3.5 Å apart end to end and 4.6 Å side by side: no in-plane vacuum gap
    # (< 5 Å), but beyond the loose contact cutoff (1.42 + 2.0 Å), so nothing spans the cell
    s = Structure(Lattice.orthorhombic(4.6, 4.6, 20.0), ["N", "N"], [[0, 0, 0.5], [1.1 / 4.6, 0, 0.5]])
    assert reasons(validate_ingest(s)) == ["not_periodic_in_plane"]


def test_overlapping_atoms_rejected(mos2):
    s = mos2.copy()
    s.append("S", s[1].coords + [0.3, 0.0, 0.0], coords_are_cartesian=True)
    assert reasons(validate_ingest(s)) == ["overlapping_atoms"]


def test_nan_coordinates_rejected(mos2):
    s = Structure(mos2.lattice, mos2.species, np.vstack([mos2.frac_coords[:-1], [[np.nan, 0.1, 0.5]]]))
    assert reasons(validate_ingest(s)) == ["non_finite_coordinates"]


def test_partial_occupancy_rejected(mos2):
    s = mos2.copy()
    s.replace(0, {"Mo": 0.5, "W": 0.5})
    assert reasons(validate_ingest(s)) == ["partial_occupancy"]


def test_degenerate_lattice_rejected():
    lat = Lattice([[3, 0, 0], [6, 0, 0], [0, 0, 20]])
    s = Structure(lat, ["C"], [[0, 0, 0.5]], validate_proximity=False)
    assert reasons(validate_ingest(s)) == ["degenerate_lattice"]


def test_too_many_atoms_refused_before_geometry(mos2):
    big = mos2 * (12, 12, 1)  # 432 atoms
    v = validate_ingest(big, max_atoms=100)
    assert reasons(v) == ["too_many_atoms"]
    assert "vacuum_gaps" not in v.metrics  # nothing past the count was computed


def test_empty_structure_rejected():
    s = Structure(Lattice.cubic(5), [], [])
    assert reasons(validate_ingest(s)) == ["empty_structure"]


def test_unknown_element_and_corrupt_files(tmp_path, mos2):
    cif = tmp_path / "good.cif"
    mos2.to(filename=str(cif))
    text = cif.read_text()
    bad_el = tmp_path / "bad_element.cif"
    bad_el.write_text(text.replace("Mo ", "Qq ").replace("Mo1", "Qq1").replace("Mo\n", "Qq\n"))
    # pymatgen reads an unknown symbol as a DummySpecies; validation names it
    assert validate_ingest(load_structure(bad_el)).reasons == ["unknown_element"]
    trunc = tmp_path / "truncated.cif"
    trunc.write_text(text[: len(text) // 3])
    junk = tmp_path / "junk.cif"
    junk.write_bytes(bytes(range(256)) * 8)
    empty = tmp_path / "empty.cif"
    empty.write_text("")
    for p in (trunc, junk, empty):
        with pytest.raises(StructureError) as e:
            load_structure(p)
        assert e.value.reason == "unreadable_file", p.name
    assert validate_ingest(load_structure(cif)).ok


def test_every_reason_is_documented():
    for name in (
        "bulk_crystal",
        "stacked_layers",
        "molecule_in_box",
        "isolated_fragment",
        "overlapping_atoms",
        "not_2d_periodic",
        "too_thick",
        "isolated_atoms",
        "multiple_fragments",
        "atoms_too_close",
    ):
        assert name in REASONS


# ---------------------------------------------------------------- strict reasons


def test_chain_layer_passes_ingest_fails_strict():
    # C chains 1.4 Å bonds along a, 3.4 Å apart along b: in contact (ingest) but bonded in 1D only
    s = Structure(Lattice.orthorhombic(1.4, 3.4, 20.0), ["C"], [[0, 0, 0.5]])
    assert validate_ingest(s).ok
    v = validate_strict(s)
    assert "not_2d_periodic" in v.reasons and v.metrics["dimensionality"] == 1


def test_isolated_atom_and_too_thick_fail_strict(graphene_layer):
    s = graphene_layer.copy()
    z = s.cart_coords[:, 2].max()
    s.append("H", [0.0, 0.0, z + 2.9], coords_are_cartesian=True)  # in contact, not bonded
    v = validate_strict(s)
    assert validate_ingest(s).ok
    assert "isolated_atoms" in v.reasons and "multiple_fragments" in v.reasons
    # H 2.9 Å above: still thin; now stretch a column of C to 11 Å
    col = Structure(
        Lattice([[2.46, 0, 0], [-1.23, 2.13, 0], [0, 0, 40]]), ["C"] * 8, [[0, 0, 0.3 + k * 1.5 / 40] for k in range(8)]
    )
    v2 = validate_strict(col)
    assert "too_thick" in v2.reasons
    assert v2.metrics["thickness"] == pytest.approx(10.5, abs=0.01)


def test_atoms_too_close_fail_strict(graphene_layer):
    s = graphene_layer.copy()
    s.append("C", s[0].coords + [0.7, 0, 0], coords_are_cartesian=True)  # 0.7 Å: passes ingest's 0.5 Å
    assert validate_ingest(s).ok
    assert "atoms_too_close" in validate_strict(s).reasons


def test_strict_thickness_bound_is_configurable(mos2):
    assert validate_strict(mos2).ok
    v = validate_strict(mos2, max_thickness=3.0)
    assert v.reasons == ["too_thick"]


# ---------------------------------------------------------------- orientation and identity


def test_orient_moves_vacuum_to_c_and_keeps_geometry(mos2):
    # build the same layer with its vacuum along a
    m = mos2.lattice.matrix
    lat = Lattice([m[2], m[0], m[1]])
    frac = mos2.frac_coords[:, [2, 0, 1]]
    sideways = Structure(lat, mos2.species, frac)
    assert validate_ingest(sideways).ok
    o = orient_2d(sideways)
    assert np.allclose(o.lattice.matrix[2, :2], 0) and np.allclose(o.lattice.matrix[:2, 2], 0)
    assert layer_thickness(o) == pytest.approx(layer_thickness(mos2), abs=1e-6)
    d0 = sorted(np.round(mos2.distance_matrix.ravel(), 4))
    d1 = sorted(np.round(o.distance_matrix.ravel(), 4))
    assert np.allclose(d0, d1, atol=1e-3)


def _rotated(s: Structure, deg: float) -> Structure:
    op = SymmOp.from_axis_angle_and_translation([0, 0, 1], deg)
    m = np.array([op.operate(v) for v in s.lattice.matrix])
    return Structure(Lattice(m), s.species, s.frac_coords)


def test_content_hash_invariances(mos2):
    h = content_hash(mos2)
    assert h.startswith("g2d-") and len(h) == 20
    moved = mos2.copy()
    moved.translate_sites(list(range(len(moved))), [0.31, 0.17, 0.05])
    permuted = Structure(mos2.lattice, list(reversed(mos2.species)), mos2.frac_coords[::-1])
    supercell = mos2 * (2, 3, 1)
    rotated = _rotated(mos2, 37.0)
    more_vacuum = make_mos2(vacuum=30.0)
    flipped = Structure(mos2.lattice, mos2.species, mos2.frac_coords * [1, 1, -1] + [0, 0, 1])
    for other in (moved, permuted, supercell, rotated, more_vacuum, flipped):
        assert content_hash(other) == h


def test_content_hash_tells_materials_apart(mos2, graphene_layer):
    ws2 = mos2.copy()
    ws2.replace_species({"Mo": "W"})
    strained = make_mos2(a=3.30)
    hashes = {content_hash(s) for s in (mos2, ws2, strained, graphene_layer)}
    assert len(hashes) == 4


def test_canonical_form_is_reduced_and_centred(mos2):
    c = canonicalize(mos2 * (3, 2, 1))
    assert len(c) == 3
    lat = c.lattice
    assert lat.a <= lat.b + 1e-6 and 90.0 - 1e-6 <= lat.gamma <= 120.0 + 1e-6
    z = c.frac_coords[:, 2]
    assert (z.max() + z.min()) / 2 == pytest.approx(0.5, abs=1e-6)
    assert math.isclose(vacuum_thickness(c), 20.0, abs_tol=1e-6)
