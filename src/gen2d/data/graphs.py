"""Periodic in-plane radius graphs for batches of monolayers, in plain torch.

Edges carry the integer image shift of their source atom, so a model sees the same neighbourhood
whatever periodic image an atom was written in. Periodicity is in-plane only (pbc = True, True, False).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PeriodicGraph:
    """Edges ``src -> dst`` with the Cartesian shift added to the source atom.

    The edge vector is ``r = pos[dst] - (pos[src] + shift)``; it does not change when an atom is moved
    by a lattice vector, because the shift is recomputed to follow it.

    Attributes
    ----------
    edge_index : torch.LongTensor
        ``(2, E)``: row 0 the source ``j``, row 1 the destination ``i``.
    cell_shift : torch.LongTensor
        ``(E, 2)`` integer image of the source along the lattice vectors a, b.
    """

    edge_index: torch.Tensor
    cell_shift: torch.Tensor

    def shift_vectors(self, lattice: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """Cartesian shifts ``(E, 3)`` from ``lattice`` ``(B, 3, 3)``; differentiable in the lattice."""
        graph_of_edge = batch[self.edge_index[1]]
        cell = lattice[graph_of_edge]  # (E, 3, 3), rows a, b, c
        return (self.cell_shift.to(cell.dtype).unsqueeze(-1) * cell[:, :2, :]).sum(1)

    def edge_vectors(self, pos: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """``r_ij = pos_i - (pos_j + shift_ij)`` for every edge, shape ``(E, 3)``."""
        src, dst = self.edge_index
        return pos[dst] - pos[src] - self.shift_vectors(lattice, batch)


def _in_plane_heights(lattice: torch.Tensor) -> torch.Tensor:
    """Distance between neighbouring lattice lines along a and along b, ``(B, 2)`` in Å."""
    a, b = lattice[:, 0, :2], lattice[:, 1, :2]
    area = (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).abs().clamp_min(1e-6)
    return torch.stack([area / b.norm(dim=-1).clamp_min(1e-6), area / a.norm(dim=-1).clamp_min(1e-6)], -1)


@torch.no_grad()
def periodic_radius_graph(
    pos: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor, cutoff: float, max_images: int = 6
) -> PeriodicGraph:
    """All pairs closer than ``cutoff`` across in-plane periodic images.

    Parameters
    ----------
    pos : torch.Tensor
        ``(N, 3)`` Cartesian positions in Å (any periodic image).
    lattice : torch.Tensor
        ``(B, 3, 3)`` lattice rows a, b, c; a and b lie in the xy-plane.
    batch : torch.Tensor
        ``(N,)`` graph index of every atom, sorted.
    cutoff : float
        Radius in Å.
    max_images : int
        Bound on images searched along each lattice vector, so a degenerate (noisy) cell cannot ask
        for an unbounded search.

    Returns
    -------
    PeriodicGraph
        Self-interactions (``i == j``) are kept only for non-zero images.
    """
    device = pos.device
    n_graphs = lattice.shape[0]
    counts = torch.bincount(batch, minlength=n_graphs)
    ptr = torch.zeros(n_graphs + 1, dtype=torch.long, device=device)
    ptr[1:] = torch.cumsum(counts, 0)
    # Wrapping into the home cell first keeps the image search symmetric and small.
    frac = _fractional_in_plane(pos, lattice, batch)
    home = pos - (torch.floor(frac).unsqueeze(-1) * lattice[batch][:, :2, :]).sum(1)
    heights = _in_plane_heights(lattice)
    reach = torch.ceil(cutoff / heights).clamp(max=max_images).long() + 1  # +1: atoms sit anywhere in [0,1)
    k = int(reach.max().item()) if n_graphs else 0
    rng = torch.arange(-k, k + 1, device=device)
    images = torch.stack(torch.meshgrid(rng, rng, indexing="ij"), -1).reshape(-1, 2)  # (S, 2)

    # every ordered pair (i, j) inside one graph
    per_atom = counts[batch]
    dst = torch.repeat_interleave(torch.arange(pos.shape[0], device=device), per_atom)
    start = torch.repeat_interleave(torch.cumsum(per_atom, 0) - per_atom, per_atom)
    src = ptr[batch[dst]] + (torch.arange(dst.shape[0], device=device) - start)

    g = batch[dst]
    # restrict each graph to its own image reach before forming vectors
    keep_img = (images[None, :, 0].abs() <= reach[g][:, None, 0]) & (images[None, :, 1].abs() <= reach[g][:, None, 1])
    pair_idx, img_idx = keep_img.nonzero(as_tuple=True)
    shift = images[img_idx]
    cell = lattice[g[pair_idx]]
    shift_cart = (shift.to(pos.dtype).unsqueeze(-1) * cell[:, :2, :]).sum(1)
    d = (home[dst[pair_idx]] - home[src[pair_idx]] - shift_cart).norm(dim=-1)
    is_self = (dst[pair_idx] == src[pair_idx]) & (shift == 0).all(-1)
    ok = (d < cutoff) & ~is_self
    pair_idx, shift = pair_idx[ok], shift[ok]
    e_src, e_dst = src[pair_idx], dst[pair_idx]
    # Express the shift relative to the atoms' own (unwrapped) images, not the home-cell copies.
    wrap = torch.floor(frac)
    shift = shift + wrap[e_dst].long() - wrap[e_src].long()
    return PeriodicGraph(edge_index=torch.stack([e_src, e_dst]), cell_shift=shift)


def _fractional_in_plane(pos: torch.Tensor, lattice: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """In-plane fractional coordinates ``(N, 2)`` of Cartesian ``pos``."""
    lat2 = lattice[:, :2, :2]
    inv = torch.linalg.inv(lat2)
    return torch.einsum("ni,nij->nj", pos[:, :2], inv[batch])


def lattice_from_params(a: torch.Tensor, b: torch.Tensor, cos_gamma: torch.Tensor, c: float = 20.0) -> torch.Tensor:
    """``(B, 3, 3)`` lattice with a along x, b in the xy-plane, c along z."""
    sin_gamma = torch.sqrt((1 - cos_gamma**2).clamp_min(1e-6))
    zero = torch.zeros_like(a)
    rows = [
        torch.stack([a, zero, zero], -1),
        torch.stack([b * cos_gamma, b * sin_gamma, zero], -1),
        torch.stack([zero, zero, torch.full_like(a, c)], -1),
    ]
    return torch.stack(rows, 1)


def gauss_reduce_2d(a: list[float], b: list[float]) -> tuple[list[float], list[float], list[list[int]]]:
    """Lagrange-Gauss reduction of a 2D basis: |a| <= |b| and |a.b| <= |a|^2 / 2.

    Returns the reduced vectors and the integer matrix ``M`` with ``[a', b'] = M [a, b]``, so that
    fractional coordinates transform as ``f' = f M^-1``.
    """
    import numpy as np

    basis = np.array([a, b], float)
    m = np.eye(2, dtype=int)
    for _ in range(100):
        if basis[0] @ basis[0] > basis[1] @ basis[1]:
            basis = basis[::-1].copy()
            m = m[::-1].copy()
        mu = round(float(basis[0] @ basis[1] / (basis[0] @ basis[0])))
        if mu == 0:
            break
        basis[1] -= mu * basis[0]
        m[1] -= mu * m[0]
    if basis[0] @ basis[1] > 0:  # prefer gamma >= 90 degrees; flipping b keeps the lattice
        basis[1] *= -1
        m[1] *= -1
    return basis[0].tolist(), basis[1].tolist(), m.tolist()


__all__ = ["PeriodicGraph", "periodic_radius_graph", "lattice_from_params", "gauss_reduce_2d"]
