"""Generator metrics on known structures: each value is right and carries its description."""

from __future__ import annotations

import json

import numpy as np
from pymatgen.core import Lattice, Structure

from gen2d.data.templates import build_template
from gen2d.metrics import (Novelty, PredictedPropertyDistribution, SMACTValidity, StrictValidity, Uniqueness,
                           evaluate_samples)


def _squashed_mos2() -> Structure:
    """MoS2 with both S 0.4 Å from the Mo plane: the '0.5 Å apart' failure the metric must catch."""
    s = build_template("MoS2-2H").copy()
    c = s.lattice.c
    mo_z = s[0].frac_coords[2]
    for i in (1, 2):
        f = s[i].frac_coords.copy()
        f[0], f[1] = s[0].frac_coords[0] + 0.02, s[0].frac_coords[1]
        f[2] = mo_z + np.sign(f[2] - mo_z) * 0.4 / c
        s.replace(i, s[i].species, f)
    return s


def _thick_slab() -> Structure:
    """Two MoS2 layers 12 Å apart in one cell: a '12 Å thick monolayer'."""
    s = build_template("MoS2-2H")
    lat = Lattice.from_parameters(s.lattice.a, s.lattice.b, 40.0, 90, 90, 120)
    cart = s.cart_coords - [0, 0, s.cart_coords[:, 2].mean()]
    coords = np.concatenate([cart + [0, 0, 14.0], cart + [0, 0, 26.0]])
    return Structure(lat, [*s.species, *s.species], coords, coords_are_cartesian=True)


def test_strict_validity_accepts_real_layers_and_names_failures():
    good = [build_template(n) for n in ("MoS2-2H", "graphene", "hBN")]
    res = StrictValidity()(good + [_squashed_mos2(), _thick_slab()])
    assert res.details["per_sample"] == [True, True, True, False, False]
    assert res.value == 0.6 and res.unit == "fraction" and "validate_strict" in res.description
    assert "atoms_too_close" in res.details["reasons"] or "overlapping_atoms" in res.details["reasons"]


def test_smact_validity():
    structures = [build_template("MoS2-2H"), build_template("graphene"),
                  Structure(Lattice.hexagonal(4.0, 25.0), ["Na", "Na", "Cl"],
                            [[0, 0, 0.5], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.55]])]
    res = SMACTValidity()(structures)
    assert res.details["per_sample"] == [True, True, False]  # Na2Cl cannot be charge-neutral
    assert abs(res.value - 2 / 3) < 1e-9


def test_uniqueness_and_novelty_use_structure_matcher():
    mos2 = build_template("MoS2-2H")
    shifted = mos2.copy()
    shifted.translate_sites(list(range(len(shifted))), [0.21, 0.37, 0.0])  # same material, moved
    rotated = mos2.copy()
    rotated.perturb(0.01, min_distance=0.0)
    graphene = build_template("graphene")
    ws2 = build_template("WS2-2H")
    samples = [mos2, shifted, rotated, graphene, ws2]
    uniq = Uniqueness()(samples)
    assert uniq.details["per_sample"] == [True, False, False, True, True]
    nov = Novelty([mos2, graphene], reference_name="two templates")(samples)
    assert nov.details["per_sample"] == [False, False, False, False, True]
    assert nov.details["reference"] == "two templates"


def test_property_distribution_and_json_with_descriptions():
    res = PredictedPropertyDistribution("dg_h", "eV", "a test")([0.1, -0.2, 0.4, None, float("nan")])
    assert res.n == 3 and abs(res.value - 0.1) < 1e-12 and res.unit == "eV"
    out = evaluate_samples([build_template("MoS2-2H"), build_template("graphene")],
                           reference=[build_template("graphene")],
                           predicted=[{"dg_h": 0.1, "e_hull": 0.0, "p_synth": 0.9},
                                      {"dg_h": 0.5, "e_hull": 0.2, "p_synth": 0.4}])
    text = json.dumps(out)
    for name in ("strict_2d_validity", "smact_validity", "uniqueness", "novelty", "predicted_dg_h",
                 "predicted_e_hull", "predicted_p_synth"):
        assert out[name]["description"] and out[name]["unit"]
    assert out["novelty"]["value"] == 0.5 and "per_sample" not in text


def test_smact_validity_caps_many_element_compositions():
    """A 12-element 'composition' (what an undertrained model emits) is invalid at once, not enumerated."""
    els = ["K", "Pr", "Er", "Zr", "Be", "Al", "V", "Zn", "Ga", "Cu", "Ni", "Sn"]
    s = Structure(Lattice.hexagonal(12.0, 25.0), els, [[i / 12, (i * 5 % 12) / 12, 0.5] for i in range(12)])
    res = SMACTValidity()([s, build_template("MoS2-2H")])
    assert res.details["per_sample"] == [False, True] and res.details["too_many_elements"] == 1
