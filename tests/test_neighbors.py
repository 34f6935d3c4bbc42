"""gen2d.neighbors must give exactly ASE's neighbour list, pair by pair, and fall back to ASE on odd input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import graphene, mx2
from ase.neighborlist import neighbor_list as ase_neighbor_list

from gen2d import neighbors
from gen2d.data.templates import build_template, list_templates
from gen2d.structures import STRICT_BOND_SCALE, _radii, to_ase


def _canonical(result):
    i, j, S, d = result
    order = np.lexsort((S[:, 2], S[:, 1], S[:, 0], j, i))
    return i[order], j[order], S[order], d[order]


def _assert_same(atoms, cutoff):
    ours = _canonical(neighbors.neighbor_list("ijSd", atoms, cutoff))
    ref = _canonical(ase_neighbor_list("ijSd", atoms, cutoff, self_interaction=False))
    assert len(ours[0]) == len(ref[0])
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-9)
    return len(ref[0])


def _cases():
    rng = np.random.default_rng(0)
    mos2 = mx2("MoS2", vacuum=10)
    mos2.pbc = (True, True, False)
    shifted = mos2.copy()
    shifted.positions += [7.3, -11.2, 30.0]  # outside the cell in-plane and along the non-periodic c
    gr = graphene(vacuum=10)
    gr.pbc = (True, True, False)
    tiny = Atoms("C", positions=[[0, 0, 5]], cell=[[1.5, 0, 0], [0.3, 1.4, 0], [0, 0, 20]], pbc=(True, True, False))
    skewed = Atoms(
        "C2", positions=[[0, 0, 5], [1, 0.2, 5.3]], cell=[[3, 0, 0], [2.9, 0.5, 0], [0, 0, 20]], pbc=(True, True, False)
    )
    rnd = Atoms(
        "C8", positions=rng.uniform(0, 6, (8, 3)), cell=[[6, 0, 0], [-3, 5.2, 0], [0, 0, 18]], pbc=(True, True, False)
    )
    bulk = rnd.copy()
    bulk.pbc = True
    return {
        "MoS2": (mos2, 5.0),
        "MoS2 shifted": (shifted, 5.0),
        "graphene 7.5 Å": (gr, 7.5),
        "one atom, cell smaller than cutoff": (tiny, 7.5),
        "skewed cell": (skewed, 5.0),
        "random, per-atom radii": (rnd, [0.9] * 8),
        "random, 3D periodic": (bulk, 3.0),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_matches_ase_pair_by_pair(name):
    atoms, cutoff = _cases()[name]
    assert neighbors._matscipy_safe(atoms, cutoff)  # the fast path is the one under test
    assert _assert_same(atoms, cutoff) > 0


def test_matches_ase_on_every_template_at_the_bond_cutoffs():
    for name in list_templates():
        atoms = to_ase(build_template(name))
        _assert_same(atoms, (_radii(atoms.numbers) * STRICT_BOND_SCALE).tolist())
        _assert_same(atoms, 5.0)


def test_odd_input_goes_to_ase():
    good = Atoms(
        "C2", positions=[[0, 0, 5], [1, 0.2, 5.3]], cell=[[3, 0, 0], [0, 3, 0], [0, 0, 20]], pbc=(True, True, False)
    )
    nan = good.copy()
    nan.positions[0, 0] = np.nan  # matscipy would answer "no neighbours" without complaint
    flat = good.copy()
    flat.cell = [[3, 0, 0], [3, 0, 0], [0, 0, 20]]
    huge = good.copy()
    huge.cell = [[3000, 0, 0], [0, 3000, 0], [0, 0, 20000]]  # GBs of bins in matscipy
    assert neighbors._matscipy_safe(good, 3.0)
    for atoms, cut in ((nan, 3.0), (flat, 3.0), (huge, 0.5), (good, [np.nan, 1.0])):
        assert not neighbors._matscipy_safe(atoms, cut)
    # the fallback is ASE itself: the same answer (or the same error) as before
    i, j = neighbors.neighbor_list("ij", huge, 0.5)
    assert len(i) == 0 and len(j) == 0
