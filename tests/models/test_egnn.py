"""The EGNN denoiser respects the symmetries of a periodic slab; its graph matches ASE's neighbour list."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list

from gen2d.data.graphs import periodic_radius_graph
from gen2d.models.egnn import EGNNConfig, EGNNDenoiser

torch.set_num_threads(1)


def _two_slabs(dtype=torch.float64):
    """A 2H-MoS2-like cell (3 atoms) and an oblique 5-atom cell, as one batch."""
    lat = torch.tensor(
        [
            [[3.19, 0.0, 0.0], [-1.595, 2.7626, 0.0], [0.0, 0.0, 20.0]],
            [[4.1, 0.3, 0.0], [1.2, 5.3, 0.0], [0.0, 0.0, 20.0]],
        ],
        dtype=dtype,
    )
    frac0 = torch.tensor([[0.0, 0.0], [1 / 3, 2 / 3], [1 / 3, 2 / 3]], dtype=dtype)
    z0 = torch.tensor([0.0, 1.56, -1.56], dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    frac1 = torch.rand(5, 2, generator=gen, dtype=dtype)
    z1 = torch.randn(5, generator=gen, dtype=dtype)
    frac = torch.cat([frac0, frac1])
    z = torch.cat([z0, z1])
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    pos = torch.cat([torch.einsum("ni,nij->nj", frac, lat[batch][:, :2, :2]), z[:, None]], -1)
    types = torch.randn(8, 6, generator=gen, dtype=dtype)
    lat_feat = torch.randn(2, 3, generator=gen, dtype=dtype)
    t = torch.tensor([0.3, 0.7], dtype=dtype)
    cond = torch.tensor([[0.1, 0.0, 1.0, 1, 0, 1], [0.0, 0.0, 0.0, 0, 0, 0]], dtype=dtype)
    return pos, lat, types, lat_feat, t, batch, cond


@pytest.fixture(scope="module", params=[0, 3], ids=["cartesian_edges", "frac_fourier_edges"])
def model(request):
    """The original edges, and edges with harmonics of the fractional difference (what trains now)."""
    torch.manual_seed(0)
    m = EGNNDenoiser(
        EGNNConfig(n_types=6, hidden=32, n_layers=2, n_cond_layers=1, cutoff=5.0, frac_fourier=request.param)
    ).double()
    # the final coordinate layers start near zero; scale them up so the test sees real vectors
    with torch.no_grad():
        for layer in list(m.trunk) + list(m.cond_layers):
            layer.coord_mlp[-1].weight.mul_(100.0)
    return m.eval()


def _run(model, pos, lat, types, lat_feat, t, batch, cond):
    with torch.no_grad():
        return model(pos, lat, types, lat_feat, t, batch, cond)


def test_outputs_are_nontrivial(model):
    out = _run(model, *_two_slabs())
    assert out["eps_pos"].abs().max() > 1e-3
    assert out["eps_pos"][:, :2].abs().max() > 1e-3  # in-plane part is not identically zero


def test_rotation_about_z(model):
    pos, lat, types, lat_feat, t, batch, cond = _two_slabs()
    ref = _run(model, pos, lat, types, lat_feat, t, batch, cond)
    th = 0.7361
    rot = torch.tensor(
        [[math.cos(th), math.sin(th), 0], [-math.sin(th), math.cos(th), 0], [0, 0, 1]], dtype=pos.dtype
    )  # row vectors: v' = v @ rot
    out = _run(model, pos @ rot, lat @ rot, types, lat_feat, t, batch, cond)
    torch.testing.assert_close(out["eps_pos"], ref["eps_pos"] @ rot, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(out["eps_types"], ref["eps_types"], atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(out["eps_lattice"], ref["eps_lattice"], atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(out["heads"], ref["heads"], atol=1e-9, rtol=1e-7)


def test_translation(model):
    pos, lat, types, lat_feat, t, batch, cond = _two_slabs()
    ref = _run(model, pos, lat, types, lat_feat, t, batch, cond)
    shift = torch.tensor([0.37, -1.9, 2.4], dtype=pos.dtype)
    out = _run(model, pos + shift, lat, types, lat_feat, t, batch, cond)
    for key in ("eps_pos", "eps_types", "eps_lattice", "heads"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-9, rtol=1e-7)


def test_permutation(model):
    pos, lat, types, lat_feat, t, batch, cond = _two_slabs()
    ref = _run(model, pos, lat, types, lat_feat, t, batch, cond)
    perm = torch.tensor([2, 0, 1, 7, 5, 3, 6, 4])  # permute within each structure
    out = _run(model, pos[perm], lat, types[perm], lat_feat, t, batch, cond)
    torch.testing.assert_close(out["eps_pos"], ref["eps_pos"][perm], atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(out["eps_types"], ref["eps_types"][perm], atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(out["heads"], ref["heads"], atol=1e-9, rtol=1e-7)


def test_lattice_vector_shift_of_atoms(model):
    pos, lat, types, lat_feat, t, batch, cond = _two_slabs()
    ref = _run(model, pos, lat, types, lat_feat, t, batch, cond)
    moved = pos.clone()
    moved[1] += 2 * lat[0, 0] - lat[0, 1]
    moved[4] += -3 * lat[1, 1]
    moved[6] += lat[1, 0] + lat[1, 1]
    out = _run(model, moved, lat, types, lat_feat, t, batch, cond)
    for key in ("eps_pos", "eps_types", "eps_lattice", "heads"):
        torch.testing.assert_close(out[key], ref[key], atol=1e-9, rtol=1e-7)


def test_not_periodic_along_z(model):
    """Moving an atom by the c vector is a different structure (vacuum, not a neighbour image)."""
    pos, lat, types, lat_feat, t, batch, cond = _two_slabs()
    ref = _run(model, pos, lat, types, lat_feat, t, batch, cond)
    moved = pos.clone()
    moved[1] += lat[0, 2]
    out = _run(model, moved, lat, types, lat_feat, t, batch, cond)
    assert (out["eps_pos"] - ref["eps_pos"]).abs().max() > 1e-4


@pytest.mark.parametrize("cutoff", [3.0, 5.0, 7.5])
def test_graph_matches_ase_neighbour_list(cutoff):
    pos, lat, *_, batch, _ = _two_slabs()
    graph = periodic_radius_graph(pos, lat, batch, cutoff)
    r = graph.edge_vectors(pos, lat, batch)
    for g in range(2):
        from ase import Atoms

        sel = (batch == g).nonzero().flatten()
        atoms = Atoms("X" * len(sel), positions=pos[sel].numpy(), cell=lat[g].numpy(), pbc=(True, True, False))
        i, j, d = neighbor_list("ijd", atoms, cutoff)
        mine = batch[graph.edge_index[1]] == g
        ours = np.sort(r[mine].norm(dim=-1).numpy())
        assert len(ours) == len(d)
        np.testing.assert_allclose(ours, np.sort(d), atol=1e-9)
