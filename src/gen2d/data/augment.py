"""Data augmentation for monolayers: random rotation about z and small random in-plane strain.

Both act on the in-plane lattice only; fractional coordinates and z are unchanged, so a strained
sample is the same material under a few per cent of biaxial/shear strain.
"""

from __future__ import annotations

import math

import torch


def random_rotation_z(lattice2d: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate ``(B, 2, 2)`` in-plane lattices (rows a, b) by independent random angles about z."""
    theta = torch.rand(lattice2d.shape[0], generator=generator, dtype=lattice2d.dtype) * 2 * math.pi
    c, s = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], 1)  # row-vector convention
    return lattice2d @ rot.to(lattice2d.device)


def random_strain(
    lattice2d: torch.Tensor, max_strain: float = 0.02, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply a random symmetric in-plane strain with every component in ``[-max_strain, max_strain]``."""
    n = lattice2d.shape[0]
    e = (torch.rand(n, 3, generator=generator, dtype=lattice2d.dtype) * 2 - 1) * max_strain
    eps = torch.stack([torch.stack([e[:, 0], e[:, 2]], -1), torch.stack([e[:, 2], e[:, 1]], -1)], 1)
    eye = torch.eye(2, dtype=lattice2d.dtype).expand(n, 2, 2)
    return lattice2d @ (eye + eps).to(lattice2d.device)


def augment_lattice(
    lattice2d: torch.Tensor, rotate: bool = True, max_strain: float = 0.02, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rotation about z then strain; ``max_strain=0`` switches strain off."""
    out = lattice2d
    if max_strain > 0:
        out = random_strain(out, max_strain, generator)
    if rotate:
        out = random_rotation_z(out, generator)
    return out
