"""The sampler's periodic prior: a one-piece layer that is a 0D island or a 1D chain in its cell gets its
lattice shrunk (the piece kept rigid) until its bonded network reaches its images in both in-plane directions."""

from __future__ import annotations

import math

import numpy as np
import torch
from ase.data import atomic_numbers, covalent_radii

from gen2d.diffusion import sampler as sampler_module
from gen2d.diffusion.sampler import SamplingConfig, percolate_lattice, sample, template_starts
from gen2d.diffusion.train import monolayer_structure
from gen2d.structures import validate_strict

BOND = 1.1  # the sampler's default fragment_scale


def _lattice(a: float, b: float, gamma_deg: float = 90.0, angle: float = 0.0) -> torch.Tensor:
    g = math.radians(gamma_deg)
    lat = torch.tensor([[a, 0.0, 0.0], [b * math.cos(g), b * math.sin(g), 0.0], [0.0, 0.0, 20.0]], dtype=torch.float64)
    return (lat @ _rot(angle).T)[None]


def _rot(angle: float) -> torch.Tensor:
    return torch.tensor(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )


def _radius(species: list[str]) -> torch.Tensor:
    return torch.tensor([covalent_radii[atomic_numbers[s]] for s in species], dtype=torch.float64)


def _strict(species, frac, z, lattice):
    """validate_strict on the structure (z in Å): (dimensionality, reasons)."""
    st = monolayer_structure(species, lattice[0, :2, :2].numpy(), frac.numpy(), z.numpy(), 20.0)
    v = validate_strict(st)
    return v.metrics.get("dimensionality"), v.reasons


def _rank(species, frac, z, lattice, scale: float = BOND) -> list[int]:
    """Periodicity rank of every bonded component under ``scale`` x the covalent sum (gen2d.structures)."""
    from gen2d.structures import _components_and_ranks, bond_edges

    st = monolayer_structure(species, lattice[0, :2, :2].numpy(), frac.numpy(), z.numpy(), 20.0)
    i, j, s = bond_edges(st, scale)
    return _components_and_ranks(len(st), i, j, s)[2]


def _percolate(species, frac, z, lattice, batch=None, **kw):
    batch = torch.zeros(len(frac), dtype=torch.long) if batch is None else batch
    return percolate_lattice(frac, z, _radius(species), lattice, batch, BOND, z_scale=1.0, **kw)


def _cartesian_bonds(species, frac, z, lattice, scale: float = 1.25) -> list[float]:
    """Sorted bonded distances (Å) of the structure (strict cutoff, periodic images included)."""
    from ase.neighborlist import neighbor_list

    from gen2d.structures import to_ase

    atoms = to_ase(monolayer_structure(species, lattice[0, :2, :2].numpy(), frac.numpy(), z.numpy(), 20.0))
    cut = (covalent_radii[atoms.numbers] * scale).tolist()
    return sorted(np.round(neighbor_list("d", atoms, cut), 6).tolist())


def _frac(xy, lattice) -> torch.Tensor:
    """Fractional in-plane coordinates of Cartesian (x, y) in Å."""
    xy = torch.as_tensor(xy, dtype=torch.float64)
    return torch.remainder(xy @ torch.linalg.inv(lattice[0, :2, :2]), 1.0)


# a zigzag chain of S-Mo-S units (Mo-S 2.41 Å) along a = 3.2 Å, which lies along x
CHAIN_SPECIES = ["Mo", "S", "S"]
CHAIN_XY = [[0.5, 0.5], [2.1, 1.5], [2.1, -0.5]]
CHAIN_Z = torch.tensor([0.0, 1.5, -1.5], dtype=torch.float64)


def _chain(height: float, gamma_deg: float = 80.0):
    """The chain in a cell whose rows are ``height`` Å apart: species, frac, z, lattice."""
    g = math.radians(gamma_deg)
    lattice = _lattice(3.2, height / math.sin(g), gamma_deg)
    return CHAIN_SPECIES, _frac(CHAIN_XY, lattice), CHAIN_Z, lattice


def test_a_chain_in_a_too_wide_cell_becomes_a_2d_layer_keeping_its_bonds_and_translation():
    species, frac, z, lattice = _chain(4.5)
    dim, reasons = _strict(species, frac, z, lattice)
    assert dim == 1 and reasons == ["not_2d_periodic"]
    bonds_before = _cartesian_bonds(species, frac, z, lattice)
    out_f, out_lat, changed = _percolate(species, frac, z, lattice)
    assert changed.tolist() == [True]
    dim, reasons = _strict(species, out_f, z, out_lat)
    assert dim == 2 and reasons == [], reasons
    # the chain's own translation a is kept; only the spacing of the rows (the cell height across a) shrinks
    assert torch.allclose(out_lat[0, 0], lattice[0, 0], atol=1e-9)
    assert torch.equal(out_lat[0, 2], lattice[0, 2])
    height = lambda lat: float(abs(torch.linalg.det(lat[0, :2, :2])) / lat[0, 0].norm())  # noqa: E731
    assert 0.7 * height(lattice) <= height(out_lat) < height(lattice) - 0.1
    # the chain is rigid: every old bond is still there with its length; new ones join the rows
    bonds_after = _cartesian_bonds(species, out_f, z, out_lat)
    for d in bonds_before:
        assert any(abs(d - e) < 1e-6 for e in bonds_after)
    assert len(bonds_after) > len(bonds_before)


def test_a_lone_island_in_a_too_large_cell_becomes_a_2d_layer():
    # a bent S-Mo-S unit alone in a 4.4 x 4.6 Å oblique cell: a 0D island (shrunk isotropically, then across
    # the chain it has become)
    species = ["Mo", "S", "S"]
    frac = torch.tensor([[0.40, 0.40], [0.62, 0.45], [0.35, 0.62]], dtype=torch.float64)
    z = torch.tensor([0.0, 1.3, -1.3], dtype=torch.float64)
    lattice = _lattice(4.4, 4.6, 105.0)
    dim, reasons = _strict(species, frac, z, lattice)
    assert dim == 0 and reasons == ["not_2d_periodic"]
    out_f, out_lat, changed = _percolate(species, frac, z, lattice)
    assert changed.tolist() == [True]
    dim, reasons = _strict(species, out_f, z, out_lat)
    assert dim == 2 and reasons == [], reasons
    assert abs(torch.linalg.det(out_lat[0, :2, :2])) < abs(torch.linalg.det(lattice[0, :2, :2]))


def test_a_single_shrink_round_turns_an_island_into_a_chain_only():
    species = ["Mo", "S", "S"]
    frac = torch.tensor([[0.40, 0.40], [0.62, 0.45], [0.35, 0.62]], dtype=torch.float64)
    z = torch.tensor([0.0, 1.3, -1.3], dtype=torch.float64)
    lattice = _lattice(4.4, 4.6, 105.0)
    out_f, out_lat, changed = _percolate(species, frac, z, lattice, rounds=1)
    assert _rank(species, frac, z, lattice) == [0]
    assert changed.tolist() == [True]
    assert _rank(species, out_f, z, out_lat) == [1]  # (at the sampler's bond scale; two rounds give [2])
    two_f, two_lat, _ = _percolate(species, frac, z, lattice)
    assert _rank(species, two_f, z, two_lat) == [2]
    # isotropic: a and b shrink by the same factor, the angle stays
    ratio = out_lat[0, :2].norm(dim=-1) / lattice[0, :2].norm(dim=-1)
    assert torch.allclose(ratio, ratio[0].expand(2), atol=1e-9) and float(ratio[0]) < 1.0
    cos = lambda lat: float(lat[0, 0] @ lat[0, 1] / (lat[0, 0].norm() * lat[0, 1].norm()))  # noqa: E731
    assert math.isclose(cos(out_lat), cos(lattice), abs_tol=1e-9)


def test_a_2d_layer_is_left_unchanged_and_only_the_chain_of_a_batch_is_shrunk():
    from gen2d.data.templates import build_template

    st = build_template("MoS2-2H")
    species_l = [s.specie.symbol for s in st]
    lat_l = torch.tensor(st.lattice.matrix, dtype=torch.float64)[None]
    frac_l = torch.tensor(st.frac_coords[:, :2], dtype=torch.float64)
    z_l = torch.tensor(st.cart_coords[:, 2] - st.cart_coords[:, 2].mean(), dtype=torch.float64)
    assert _strict(species_l, frac_l, z_l, lat_l) == (2, [])
    out_f, out_lat, changed = _percolate(species_l, frac_l, z_l, lat_l)
    assert changed.tolist() == [False] and torch.equal(out_f, frac_l) and torch.equal(out_lat, lat_l)

    species_c, frac_c, z_c, lat_c = _chain(4.5)
    lattice = torch.cat([lat_l, lat_c])
    frac = torch.cat([frac_l, frac_c])
    z = torch.cat([z_l, z_c])
    batch = torch.tensor([0] * len(frac_l) + [1] * len(frac_c))
    out_f, out_lat, changed = _percolate(species_l + species_c, frac, z, lattice, batch=batch)
    assert changed.tolist() == [False, True]
    assert torch.equal(out_lat[0], lattice[0]) and torch.equal(out_f[: len(frac_l)], frac_l)
    assert _strict(species_c, out_f[len(frac_l) :], z_c, out_lat[1:]) == (2, [])


def test_a_shrink_below_the_limit_or_of_several_pieces_is_not_made():
    # rows 6 Å apart: bonding them needs the cell height shrunk to 0.56 of it
    species, frac, z, far = _chain(6.0)
    out_f, out_lat, changed = _percolate(species, frac, z, far)
    assert changed.tolist() == [False] and torch.equal(out_lat, far) and torch.equal(out_f, frac)
    out_f, out_lat, changed = _percolate(species, frac, z, far, min_scale=0.3)
    assert changed.tolist() == [True] and _strict(species, out_f, z, out_lat)[0] == 2
    # two pieces (a lone atom next to the chain): the fragment step of project_geometry joins them first
    species, frac, z, lattice = _chain(4.5)
    two_f = torch.cat([frac, _frac([[1.0, 3.5]], lattice)])
    two_z = torch.cat([z, torch.tensor([0.0], dtype=torch.float64)])
    _, out_lat, changed = _percolate(species + ["Mo"], two_f, two_z, lattice)
    assert changed.tolist() == [False] and torch.equal(out_lat, lattice)


def test_the_step_keeps_rotation_permutation_and_translation_symmetry():
    # the chain with one more S on it, in an oblique cell
    species, _, z, _ = _chain(4.5)
    lattice = _lattice(3.2, 4.8, 75.0)
    species = species + ["S"]
    frac = _frac(CHAIN_XY + [[-0.9, 1.2]], lattice)
    z = torch.cat([z, torch.tensor([1.0], dtype=torch.float64)])
    f0, l0, c0 = _percolate(species, frac, z, lattice)
    assert c0.tolist() == [True]
    # rotating the input cell about z rotates the output cell; fractional coordinates are unchanged
    for angle in (0.7, -2.1):
        f1, l1, _ = _percolate(species, frac, z, _lattice(3.2, 4.8, 75.0, angle=angle))
        assert torch.allclose(l1, l0 @ _rot(angle).T, atol=1e-9)
        assert torch.allclose(f1, f0, atol=1e-9)
    # permuting the atoms permutes the output, the cell is the same
    perm = torch.tensor([2, 3, 0, 1])
    f2, l2, _ = _percolate([species[i] for i in perm], frac[perm], z[perm], lattice)
    assert torch.allclose(l2, l0, atol=1e-9) and torch.allclose(f2, f0[perm], atol=1e-9)
    # a rigid fractional translation (and an atom moved by a lattice vector) translates the output
    shift = torch.tensor([0.3, 0.55], dtype=torch.float64)
    moved = torch.remainder(frac + shift, 1.0)
    moved[1] += torch.tensor([1.0, -1.0], dtype=torch.float64)
    f3, l3, _ = _percolate(species, moved, z, lattice)
    assert torch.allclose(l3, l0, atol=1e-9)
    d = torch.remainder(f3 - f0 - shift + 0.5, 1.0) - 0.5
    assert d.abs().max() < 1e-9


def test_the_sampler_puts_the_shrunk_cell_into_its_state_and_never_touches_a_fixed_lattice(tiny_bundle, monkeypatch):
    """A spy in place of percolate_lattice shrinks every cell by 0.9 at every call: the free samples end with
    the last shrunk cell (through the encoded lattice), template starts never call it."""
    calls = []

    def spy(frac, z, radius, lattice, batch, *args):
        calls.append(lattice.clone())
        out = lattice.clone()
        out[:, :2, :2] *= 0.9
        return frac, out, torch.ones(lattice.shape[0], dtype=torch.bool)

    monkeypatch.setattr(sampler_module, "percolate_lattice", spy)
    cfg = SamplingConfig(n_steps=20)
    free = sample(tiny_bundle, 3, seed=4, config=cfg, device="cpu", n_atoms=[3, 4, 5])
    n_steps = sum(t <= cfg.periodic_from * tiny_bundle.schedule.T for t in tiny_bundle.schedule.timesteps(20))
    assert len(calls) == n_steps > 0
    for g, smp in enumerate(free):
        expected = 0.9 * calls[-1][g, :2, :2].norm(dim=-1)
        assert np.allclose(np.linalg.norm(smp.lattice2d, axis=-1), expected.numpy(), rtol=1e-4)
        assert smp.diagnostics["lattice_shrinks"] == n_steps

    calls.clear()
    from gen2d.data.templates import TEMPLATES, build_template

    usable = [n for n in TEMPLATES if {e.symbol for e in build_template(n).composition} <= set(tiny_bundle.rep.vocab)][
        :2
    ]
    assert usable, "no template inside the tiny model's vocabulary"
    starts, _ = template_starts(tiny_bundle, usable, repeats=2)
    fixed = sample(
        tiny_bundle, 0, seed=0, config=cfg.model_copy(update={"template_t_start": 0.3}), device="cpu", starts=starts
    )
    assert calls == []
    for smp, want in zip(fixed, torch.cat([s.lattice2d for s in starts])):
        assert np.array_equal(smp.lattice2d, want.numpy().astype(float))
        assert smp.diagnostics["lattice_shrinks"] == 0

    # switched off: never called
    sample(tiny_bundle, 2, seed=4, config=SamplingConfig(n_steps=20, periodic_scale=0.0), device="cpu", n_atoms=[3, 4])
    assert calls == []


def test_the_real_step_runs_in_the_sampler(tiny_bundle):
    """With the real step: the lattice of every sample is finite, a shrink is counted, and off gives none."""
    on = sample(tiny_bundle, 6, seed=1, config=SamplingConfig(n_steps=20), device="cpu", n_atoms=[2, 3, 4, 4, 5, 6])
    off = sample(
        tiny_bundle,
        6,
        seed=1,
        config=SamplingConfig(n_steps=20, periodic_scale=0.0),
        device="cpu",
        n_atoms=[2, 3, 4, 4, 5, 6],
    )
    assert all(s.diagnostics["lattice_shrinks"] == 0 for s in off)
    assert sum(s.diagnostics["lattice_shrinks"] for s in on) > 0  # the tiny model's small cells do need it
    for a, b in zip(on, off):
        assert np.isfinite(a.lattice2d).all()
        if a.diagnostics["lattice_shrinks"] == 0:  # the same random stream as long as nothing was shrunk
            assert np.array_equal(a.lattice2d, b.lattice2d)


def test_an_empty_structure_in_the_batch_is_passed_over(tiny_bundle):
    out = sample(tiny_bundle, 2, seed=0, config=SamplingConfig(n_steps=10), device="cpu", n_atoms=[0, 3])
    assert [len(s.species) for s in out] == [0, 3]
