"""In-plane relaxation with CHGNet: known monolayer geometries, fixed vacuum, named failures."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, graphene, mx2

from gen2d.relax import RelaxResult, cached_calculator, relax_bulk, relax_in_plane

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chgnet():
    import torch

    torch.set_num_threads(1)
    return cached_calculator("chgnet")


def _mos2(a: float = 3.30, vacuum: float = 10.0):
    atoms = mx2("MoS2", kind="2H", a=a, thickness=3.13, vacuum=vacuum)
    atoms.pbc = (True, True, False)
    return atoms


def _mo_s_bond(atoms) -> float:
    d = atoms.get_all_distances(mic=True)
    mo = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Mo"]
    s_ = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "S"]
    return float(d[np.ix_(mo, s_)].min())


def test_cached_calculator_loads_once(chgnet):
    assert cached_calculator("chgnet") is chgnet
    assert chgnet.gen2d_model.startswith("CHGNet 0.3.0")
    assert len(chgnet.gen2d_checkpoint_sha256) == 64


def test_mos2_relaxes_to_known_lattice_and_bond(chgnet):
    start = _mos2(a=3.30)
    start.rattle(0.02, seed=1)
    traj: list = []
    res = relax_in_plane(start, chgnet, trajectory=traj)
    assert isinstance(res, RelaxResult)
    assert res.converged and res.failure is None
    assert res.final_fmax <= 0.05
    a = np.linalg.norm(res.atoms.cell[0])
    assert a == pytest.approx(3.18, abs=0.08)  # DFT-PBE 3.18-3.19 Å
    assert _mo_s_bond(res.atoms) == pytest.approx(2.41, abs=0.05)
    # c and the vacuum are untouched by the masked cell filter
    np.testing.assert_allclose(res.final_cell[2], res.initial_cell[2], atol=1e-10)
    np.testing.assert_allclose(res.final_cell[:2, 2], 0.0, atol=1e-10)
    assert tuple(res.atoms.pbc) == (True, True, False)
    assert res.atoms.calc is None
    # the trajectory went to the caller's list, one detached frame per step
    assert len(traj) == res.steps + 1 and all(f.calc is None for f in traj)
    assert traj[-1].info["energy"] == pytest.approx(res.energy)


def test_graphene_lattice(chgnet):
    start = graphene(a=2.40, vacuum=10.0)
    start.pbc = (True, True, False)
    res = relax_in_plane(start, chgnet)
    assert res.ok
    assert np.linalg.norm(res.atoms.cell[0]) == pytest.approx(2.47, abs=0.05)
    assert res.atoms.cell[2, 2] == pytest.approx(start.cell[2, 2], abs=1e-10)


def test_positions_only_keeps_cell(chgnet):
    start = _mos2(a=3.25)
    start.rattle(0.05, seed=2)
    res = relax_in_plane(start, chgnet, relax_cell=False, fixed_atoms=[0])
    assert res.ok
    np.testing.assert_allclose(res.final_cell, start.cell.array, atol=1e-12)
    np.testing.assert_allclose(res.atoms.positions[0], start.positions[0], atol=1e-12)
    assert res.settings["cell_filter"] is None


def test_not_converged_is_named(chgnet):
    start = _mos2(a=3.60)
    start.rattle(0.15, seed=3)
    res = relax_in_plane(start, chgnet, steps=3)
    assert not res.converged
    assert res.failure == "not_converged"
    assert res.steps == 3
    assert np.isfinite(res.energy)


def test_nan_input_is_named(chgnet):
    start = _mos2()
    start.positions[1, 0] = np.nan
    res = relax_in_plane(start, chgnet)
    assert res.failure == "non_finite_input"
    assert not res.converged and np.isnan(res.energy)


def test_vacuum_closed_is_flagged(chgnet):
    # 1 Å of vacuum: the layer touches its periodic image along z, i.e. it is a bulk, not a monolayer.
    start = _mos2(a=3.19, vacuum=0.5)
    res = relax_in_plane(start, chgnet, steps=50)
    assert res.failure == "vacuum_closed"


def test_layer_broke_is_flagged(chgnet):
    # An Ar atom squeezed 1.6 Å above a graphene C is within the loose bonding cutoff at the start;
    # the repulsion pushes it away (~3.4 Å), so the relaxed "layer" has two fragments.
    from ase import Atom

    layer = graphene(a=2.468, vacuum=10.0, size=(2, 2, 1))
    layer.pbc = (True, True, False)
    layer.append(Atom("Ar", layer.positions[0] + [0.0, 0.0, 1.6]))
    res = relax_in_plane(layer, chgnet, steps=200)
    assert res.failure == "layer_broke"
    assert res.atoms.positions[-1, 2] - res.atoms.positions[0, 2] > 2.5


def test_relax_bulk_silicon(chgnet):
    si = bulk("Si", "diamond", a=5.30)
    res = relax_bulk(si, chgnet)
    assert res.ok
    a = res.atoms.cell.cellpar()[0] * np.sqrt(2)  # primitive fcc vector -> cubic a
    assert a == pytest.approx(5.47, abs=0.06)  # PBE 5.47 Å (experiment 5.43 Å)


def test_exploding_forces_are_named_with_a_real_calculator():
    # Lennard-Jones atoms squeezed to 0.6 sigma: forces of ~1e4 eV/Å on the first step
    from ase import Atoms
    from ase.calculators.lj import LennardJones

    from gen2d.relax import relax_in_plane

    atoms = Atoms("Ar2", positions=[[0, 0, 10], [1.5, 0, 10]], cell=[8, 8, 20], pbc=(True, True, False))
    res = relax_in_plane(atoms, LennardJones(sigma=2.5, epsilon=1.0, rc=6.0), steps=20)
    assert res.failure == "exploding_forces" and not res.converged
