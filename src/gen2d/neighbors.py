"""One neighbour-list entry point: matscipy's C implementation, ASE's as the fallback.

``ase.neighborlist.neighbor_list`` costs 2-5 ms per call on a 3-atom monolayer (numpy overhead over
the periodic images), which made neighbour lists about 70 % of ``validate_ingest`` and half of the
DimeNet++ surrogate's time per material. matscipy's ``neighbour_list`` takes the same arguments, returns
the same pairs and shifts (tests compare them pair by pair, periodic and not, per-atom cutoffs, skewed and
tiny cells) and costs about 0.05-0.07 ms.

matscipy is only used where its answer is known to match: finite positions and cell, a non-singular cell
and a bin grid of reasonable size. Anything else (NaN coordinates, which matscipy silently turns into "no
neighbours"; a degenerate cell; a cell thousands of cutoffs long) goes to ASE, so the error or the
answer is ASE's, as before.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

MAX_BINS = 1_000_000
"""Above this many cutoff-sized bins in the cell, matscipy's binning costs memory (GBs for a
3000 x 3000 x 20000 Å box): ASE is used instead."""

try:  # matscipy is a dependency; the fallback keeps a broken install working, only slower
    from matscipy.neighbours import neighbour_list as _matscipy_neighbour_list
except Exception:  # pragma: no cover - exercised only without matscipy
    _matscipy_neighbour_list = None


def _matscipy_safe(atoms: Atoms, cutoff) -> bool:
    if _matscipy_neighbour_list is None or len(atoms) == 0:
        return False
    cell = np.asarray(atoms.cell, dtype=float)
    pos = atoms.positions
    if not (np.isfinite(cell).all() and np.isfinite(pos).all()):
        return False
    if abs(np.linalg.det(cell)) < 1e-6:
        return False
    cut = np.asarray(cutoff, dtype=float)
    if not np.isfinite(cut).all() or cut.size == 0:
        return False
    reach = float(2.0 * cut.max()) if cut.ndim else float(cut)
    if reach <= 0:
        return False
    lengths = np.linalg.norm(cell, axis=1)
    # non-periodic directions are spanned by the atoms, not the cell
    span = np.ptp(pos, axis=0) if len(atoms) > 1 else np.zeros(3)
    extent = np.where(atoms.pbc, lengths, np.maximum(lengths, np.linalg.norm(span)))
    return float(np.prod(np.ceil(extent / reach))) <= MAX_BINS


def neighbor_list(quantities: str, atoms: Atoms, cutoff, self_interaction: bool = False):
    """``ase.neighborlist.neighbor_list(quantities, atoms, cutoff, self_interaction)``, faster.

    ``cutoff`` is a radius (Å) or one sphere radius per atom (a pair is a neighbour when its distance is
    below the sum of the two radii), as in ASE. ``self_interaction=True`` (an atom is its own neighbour
    at zero shift) always uses ASE.
    """
    if not self_interaction and _matscipy_safe(atoms, cutoff):
        cut = cutoff if np.isscalar(cutoff) else np.asarray(cutoff, dtype=float)
        return _matscipy_neighbour_list(quantities, atoms, cut)
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    return ase_neighbor_list(quantities, atoms, cutoff, self_interaction=self_interaction)


__all__ = ["neighbor_list", "MAX_BINS"]
