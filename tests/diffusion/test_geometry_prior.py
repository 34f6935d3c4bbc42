"""The sampler's geometry prior: overlapping pairs pushed apart, lone atoms brought to a neighbour."""

from __future__ import annotations

import math

import numpy as np
import torch
from ase.data import covalent_radii

from gen2d.diffusion.sampler import SamplingConfig, project_geometry, sample
from gen2d.structures import strict_verdict, to_ase

R_C, R_MO, R_S = (float(covalent_radii[z]) for z in (6, 42, 16))


def _lattice(a: float, b: float, gamma_deg: float = 90.0, angle: float = 0.0) -> torch.Tensor:
    g = math.radians(gamma_deg)
    lat = torch.tensor([[a, 0.0, 0.0], [b * math.cos(g), b * math.sin(g), 0.0], [0.0, 0.0, 20.0]], dtype=torch.float64)
    rot = torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    return (lat @ rot.T)[None]


def _pair_distance(frac, z, lattice) -> float:
    """Shortest in-plane periodic distance between atoms 0 and 1 (Å); z in Å."""
    df = (frac[1] - frac[0]) - torch.round(frac[1] - frac[0])
    xy = df @ lattice[0, :2, :2]
    return float(torch.sqrt((xy**2).sum() + (z[1] - z[0]) ** 2))


def _project(frac, z, radius, lattice, batch=None, overlap=0.85, lone=1.1, iterations=8):
    batch = torch.zeros(len(frac), dtype=torch.long) if batch is None else batch
    return project_geometry(frac, z, radius, lattice, batch, overlap, lone, iterations, z_scale=1.0)


def test_overlapping_pair_is_pushed_apart_across_the_cell_boundary():
    lattice = _lattice(5.0, 5.0)
    frac = torch.tensor([[0.01, 0.5], [0.97, 0.5]], dtype=torch.float64)  # 0.2 Å apart through the boundary
    z = torch.zeros(2, dtype=torch.float64)
    radius = torch.tensor([R_C, R_C], dtype=torch.float64)
    out_f, out_z, moved = _project(frac, z, radius, lattice, lone=0.0)
    assert moved.all()
    assert _pair_distance(out_f, out_z, lattice) >= 0.85 * 2 * R_C - 1e-6
    # pushed along the boundary-crossing separation, not the 4.8 Å one inside the cell
    assert _pair_distance(out_f, out_z, lattice) < 2 * R_C


def test_lone_atom_is_brought_to_bonding_distance_and_a_bonded_pair_is_left_alone():
    lattice = _lattice(8.0, 8.0)
    frac = torch.tensor([[0.2, 0.5], [0.2 + 3.0 / 8.0, 0.5]], dtype=torch.float64)  # 3.0 Å: no C-C bond
    z = torch.zeros(2, dtype=torch.float64)
    radius = torch.tensor([R_C, R_C], dtype=torch.float64)
    out_f, out_z, moved = _project(frac, z, radius, lattice, overlap=0.0)
    assert moved.all()
    assert math.isclose(_pair_distance(out_f, out_z, lattice), 1.1 * 2 * R_C, abs_tol=0.05)
    bonded = torch.tensor([[0.2, 0.5], [0.2 + 1.42 / 8.0, 0.5]], dtype=torch.float64)
    same_f, same_z, moved = _project(bonded, z, radius, lattice)
    assert not moved.any() and torch.equal(same_f, bonded)


def test_a_detached_dimer_moves_rigidly_to_bonding_distance():
    lattice = _lattice(12.0, 12.0)
    # two C2 dimers (1.3 Å bonds) 3.5 Å apart end to end: two pieces, each moves as a whole
    x = [1.0, 2.3, 5.8, 7.1]
    frac = torch.tensor([[v / 12.0, 0.5] for v in x], dtype=torch.float64)
    z = torch.zeros(4, dtype=torch.float64)
    radius = torch.full((4,), R_C, dtype=torch.float64)
    out_f, out_z, moved = _project(frac, z, radius, lattice, overlap=0.0)
    assert moved.all()
    xs = (out_f[:, 0] * 12.0).tolist()
    assert math.isclose(xs[1] - xs[0], 1.3, abs_tol=1e-9) and math.isclose(xs[3] - xs[2], 1.3, abs_tol=1e-9)
    assert math.isclose(xs[2] - xs[1], 1.1 * 2 * R_C, abs_tol=1e-6)


def test_a_real_layer_is_not_touched():
    from gen2d.data.templates import build_template

    st = build_template("MoS2-2H")
    lat = torch.tensor(st.lattice.matrix, dtype=torch.float64)[None]
    frac = torch.tensor(st.frac_coords[:, :2], dtype=torch.float64)
    z = torch.tensor(st.cart_coords[:, 2] - st.cart_coords[:, 2].mean(), dtype=torch.float64)
    radius = torch.tensor([covalent_radii[s.specie.Z] for s in st], dtype=torch.float64)
    _, _, moved = _project(frac, z, radius, lat)
    assert not moved.any()


def test_projection_keeps_the_symmetries():
    gen = torch.Generator().manual_seed(0)
    frac = torch.rand(6, 2, generator=gen, dtype=torch.float64)
    z = torch.randn(6, generator=gen, dtype=torch.float64) * 0.5
    z = z - z.mean()
    radius = torch.tensor([R_MO, R_S, R_S, R_MO, R_S, R_C], dtype=torch.float64)
    lattice = _lattice(4.0, 4.5, 110.0)
    f0, z0, _ = _project(frac, z, radius, lattice)
    # rotating the cell about z (fractional coordinates are unchanged by it) gives the same fractions
    f1, z1, _ = _project(frac, z, radius, _lattice(4.0, 4.5, 110.0, angle=0.7))
    assert torch.allclose(f0, f1, atol=1e-9) and torch.allclose(z0, z1, atol=1e-9)
    # permuting atoms permutes the output; shifting one atom by a lattice vector changes nothing
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    f2, z2, _ = _project(frac[perm], z[perm], radius[perm], lattice)
    assert torch.allclose(f2, f0[perm], atol=1e-9) and torch.allclose(z2, z0[perm], atol=1e-9)
    shifted = frac.clone()
    shifted[2] += torch.tensor([1.0, -2.0], dtype=torch.float64)
    f3, z3, _ = _project(shifted, z, radius, lattice)
    assert torch.allclose(f3, f0, atol=1e-9) and torch.allclose(z3, z0, atol=1e-9)
    # a rigid in-plane translation of every atom translates the output
    f4, _, _ = _project(torch.remainder(frac + torch.tensor([0.3, 0.1], dtype=torch.float64), 1.0), z, radius, lattice)
    d = torch.remainder(f4 - f0 - torch.tensor([0.3, 0.1], dtype=torch.float64) + 0.5, 1.0) - 0.5
    assert d.abs().max() < 1e-9


def test_a_non_finite_structure_is_left_as_it_is_and_the_batch_goes_on():
    lattice = torch.cat([_lattice(5.0, 5.0), _lattice(5.0, 5.0)])
    frac = torch.tensor([[0.1, 0.1], [0.12, 0.1], [0.5, 0.5], [0.52, 0.5]], dtype=torch.float64)
    frac[0, 0] = float("nan")
    z = torch.zeros(4, dtype=torch.float64)
    radius = torch.full((4,), R_C, dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1])
    out_f, _, moved = _project(frac, z, radius, lattice, batch=batch)
    assert torch.isnan(out_f[0, 0]) and torch.equal(out_f[1], frac[1]) and not moved[:2].any()
    assert moved[2:].all() and _pair_distance(out_f[2:], z[2:], lattice[1:]) >= 0.85 * 2 * R_C - 1e-6


def test_sampler_applies_the_prior_and_records_it(tiny_bundle):
    on = sample(tiny_bundle, 6, seed=1, config=SamplingConfig(n_steps=20), device="cpu", n_atoms=[4, 5, 6, 6, 8, 8])
    off = sample(
        tiny_bundle,
        6,
        seed=1,
        config=SamplingConfig(n_steps=20, overlap_scale=0.0, fragment_scale=0.0),
        device="cpu",
        n_atoms=[4, 5, 6, 6, 8, 8],
    )
    assert all(s.diagnostics["projection_moves"] == 0 for s in off)
    assert any(s.diagnostics["projection_moves"] > 0 for s in on)
    for smp in on:
        ok, reasons = strict_verdict(smp.to_structure())
        assert "atoms_too_close" not in reasons and "isolated_atoms" not in reasons, reasons
        atoms = to_ase(smp.to_structure())
        d = atoms.get_all_distances(mic=True)
        np.fill_diagonal(d, np.inf)
        assert d.min() > 0.6 * 2 * min(covalent_radii[atoms.numbers])
