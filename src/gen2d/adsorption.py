"""Explicit-H adsorption on a monolayer: ΔG_H on every symmetry-distinct site of both faces.

Calculator-agnostic: any ASE calculator (from a ``gen2d.calculators`` backend) relaxes the layer with
one H on it at fixed cell; ΔE_H = E(slab+H) − E(slab) − ½E(H₂), ΔG_H = ΔE_H + ``dg_correction``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.optimize import BFGS
from pymatgen.analysis.adsorption import AdsorbateSiteFinder
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from gen2d.relax import bond_components

log = logging.getLogger(__name__)

#: Zero-point energy and entropy correction of Nørskov et al. (J. Electrochem. Soc. 152, J23 (2005)).
NORSKOV_DG_CORRECTION = 0.24
#: gen2d's default correction (eV): the value most monolayer HER screening papers use.
DEFAULT_DG_CORRECTION = 0.27

SITE_KINDS = ("ontop", "bridge", "hollow")
#: Flags that are recorded but do not disqualify a site: the energy is still a usable upper bound.
WARNING_FLAGS = frozenset({"not_converged"})


@dataclass
class AdsorptionSettings:
    """Every knob of the ΔG_H recipe; it is copied into provenance.

    Parameters
    ----------
    min_inplane_length : float
        The supercell repeats the cell until both in-plane lattice vectors are at least this long (Å),
        so that an H never sees its own image closer than this.
    dg_correction : float
        ΔG_H − ΔE_H (eV): zero-point energy and entropy of adsorbed H relative to ½H₂.
    site_kinds : tuple of str
        ``AdsorbateSiteFinder`` positions to try.
    initial_height : float
        Height (Å) of the H above the coordinating surface atoms before relaxation.
    fmax, steps : float, int
        FIRE convergence of the H relaxation (eV/Å, steps).
    max_sites_per_face : int or None
        Keep at most this many distinct sites per face (ontop first, then bridge, then hollow); None
        keeps them all. Labelling large sets uses a small value to bound the cost.
    symprec : float
        Tolerance (Å) of the symmetry analysis that reduces the sites and maps one face onto the other.
    desorbed_distance : float
        H whose nearest slab atom is farther than this (Å) after relaxation has left the surface.
    h2_distance : float
        H closer than this (Å) to another H has formed H₂.
    site_move_distance : float
        Lateral displacement (Å) of the H beyond which it has moved to another site.
    layer_break_factor : float
        Two slab atoms are bonded when closer than this times the sum of their covalent radii; a
        relaxation that splits the bonded network has broken the layer.
    layer_distortion_distance : float
        A slab atom displaced farther than this (Å) by the H means the layer reconstructed: the
        energy is no longer that of H on this material.
    dg_h_window : tuple of float
        ΔG_H outside this range (eV) is far beyond any H–surface bond and means the MLIP left its
        domain; the site is flagged ``implausible_energy``.
    """

    min_inplane_length: float = 6.0
    dg_correction: float = DEFAULT_DG_CORRECTION
    site_kinds: tuple[str, ...] = SITE_KINDS
    initial_height: float = 1.5
    fmax: float = 0.05
    steps: int = 300
    max_sites_per_face: int | None = None
    symprec: float = 0.1
    desorbed_distance: float = 2.5
    h2_distance: float = 0.9
    site_move_distance: float = 0.7
    layer_break_factor: float = 1.25
    layer_distortion_distance: float = 1.0
    dg_h_window: tuple[float, float] = (-3.0, 4.0)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["site_kinds"] = list(self.site_kinds)
        out["dg_h_window"] = list(self.dg_h_window)
        return out


@dataclass
class AdsorptionSite:
    """One candidate H position on the (unit-cell) slab."""

    face: str  # "top" (+z) or "bottom" (−z)
    kind: str  # ontop, bridge, hollow
    position: np.ndarray  # Cartesian, Å, in the unit cell frame
    n_surface_atoms: int  # surface atoms of this face in the unit cell


@dataclass
class SiteResult:
    """The relaxed H on one site and its ΔG_H."""

    face: str
    kind: str
    initial_position: list[float]
    final_position: list[float]
    nearest_atom: str
    nearest_atom_index: int
    nearest_distance: float  # Å
    lateral_displacement: float  # Å
    coverage: float  # H per surface atom of this face
    energy: float | None  # E(slab+H), eV
    delta_e_h: float | None  # eV
    delta_g_h: float | None  # eV
    converged: bool
    steps: int
    flags: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """A finite ΔG_H and no flag that disqualifies the site (not converging only warns)."""
        return self.delta_g_h is not None and not (set(self.flags) - WARNING_FLAGS)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["valid"] = self.valid
        return out


@dataclass
class AdsorptionResult:
    """All sites of one monolayer and the best one (minimum |ΔG_H| among valid sites)."""

    sites: list[SiteResult]
    supercell: tuple[int, int]
    n_slab_atoms: int  # in the supercell
    e_slab: float  # eV, supercell
    e_h2: float  # eV
    h2_bond_length: float  # Å
    settings: dict[str, Any]
    cpu_seconds: float  # process CPU time of the whole recipe

    @property
    def best(self) -> SiteResult | None:
        valid = [s for s in self.sites if s.valid]
        return min(valid, key=lambda s: abs(s.delta_g_h)) if valid else None

    @property
    def dg_h_best_site(self) -> float | None:
        best = self.best
        return None if best is None else best.delta_g_h

    def as_dict(self) -> dict[str, Any]:
        best = self.best
        return {
            "dg_h_best_site": self.dg_h_best_site,
            "best_site": None if best is None else best.as_dict(),
            "sites": [s.as_dict() for s in self.sites],
            "supercell": list(self.supercell),
            "n_slab_atoms": self.n_slab_atoms,
            "e_slab_eV": self.e_slab,
            "e_h2_eV": self.e_h2,
            "h2_bond_length_A": self.h2_bond_length,
            "cpu_seconds": self.cpu_seconds,
            "settings": self.settings,
        }


# ----------------------------------------------------------------------------------------------------
# Sites
# ----------------------------------------------------------------------------------------------------

def _mirror_z(structure: Structure) -> Structure:
    """The slab reflected through its mid-plane; c must lie along z (``orient_2d``)."""
    frac = structure.frac_coords.copy()
    frac[:, 2] = 1.0 - frac[:, 2]
    return Structure(structure.lattice, structure.species, frac, coords_are_cartesian=False)


def _face_sites(structure: Structure, settings: AdsorptionSettings) -> tuple[list[tuple[str, np.ndarray]], int]:
    """(kind, Cartesian position) of the symmetry-distinct sites on the +z face, and its surface atoms."""
    finder = AdsorbateSiteFinder(structure, height=0.9, mi_vec=[0.0, 0.0, 1.0])
    found = finder.find_adsorption_sites(distance=settings.initial_height, positions=settings.site_kinds,
                                         symm_reduce=1e-2, near_reduce=1e-2)
    sites = [(kind, np.asarray(pos, dtype=float)) for kind in settings.site_kinds for pos in found.get(kind, [])]
    return sites, len(finder.surface_sites)


def _symmetry_operations(structure: Structure, symprec: float) -> list:
    """Fractional symmetry operations of the slab (its layer group as 3D operations), or [] if spglib fails."""
    try:
        return list(SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_operations(cartesian=False))
    except Exception:  # spglib fails on odd cells: no reduction rather than no result
        return []


def _equivalent_to_any(lattice: Lattice, ops: Sequence, position: np.ndarray, kept: Sequence[np.ndarray],
                       tol: float = 0.15) -> bool:
    """True when a symmetry operation maps ``position`` (Cartesian) within ``tol`` Å of a kept site."""
    if not kept:
        return False
    frac = lattice.get_fractional_coords(position)
    targets = np.array([lattice.get_fractional_coords(k) for k in kept])
    for op in ops:
        diff = targets - op.operate(frac)
        diff -= np.round(diff)  # the vacuum is wide: wrapping along c cannot alias two faces
        if np.min(np.linalg.norm(lattice.get_cartesian_coords(diff), axis=1)) < tol:
            return True
    return False


def find_adsorption_sites(structure: Structure, settings: AdsorptionSettings | None = None) -> list[AdsorptionSite]:
    """Symmetry-distinct H sites on both faces of an oriented monolayer (c along z).

    The bottom face is found on the mirrored slab and mapped back. Sites are then reduced with the
    full symmetry of the slab, so a bottom site equivalent to a top one is dropped (the two S faces of
    2H-MoS₂) and so are equivalent sites that ``AdsorbateSiteFinder`` kept on one face.
    """
    settings = settings or AdsorptionSettings()
    c_len = structure.lattice.matrix[2, 2]
    top, n_top = _face_sites(structure, settings)
    bottom_mirrored, n_bottom = _face_sites(_mirror_z(structure), settings)
    bottom = [(kind, np.array([p[0], p[1], c_len - p[2]])) for kind, p in bottom_mirrored]

    ops = _symmetry_operations(structure, settings.symprec)
    kept: list[AdsorptionSite] = []
    per_face = {"top": 0, "bottom": 0}
    for face, face_sites, n_surface in (("top", top, n_top), ("bottom", bottom, n_bottom)):
        for kind, pos in face_sites:
            if settings.max_sites_per_face is not None and per_face[face] >= settings.max_sites_per_face:
                break
            if _equivalent_to_any(structure.lattice, ops, pos, [k.position for k in kept]):
                continue
            kept.append(AdsorptionSite(face, kind, pos, n_surface))
            per_face[face] += 1
    return kept


def supercell_repeats(lattice: Lattice, min_inplane_length: float) -> tuple[int, int]:
    """Repeats (n_a, n_b) that make both in-plane vectors at least ``min_inplane_length`` Å long."""
    return (max(1, math.ceil(min_inplane_length / lattice.a - 1e-9)),
            max(1, math.ceil(min_inplane_length / lattice.b - 1e-9)))


# ----------------------------------------------------------------------------------------------------
# H2 reference, cached per calculator
# ----------------------------------------------------------------------------------------------------

_H2_CACHE: dict[tuple[str, str | None], tuple[float, float]] = {}


def calculator_key(calculator) -> tuple[str, str | None]:
    """Identity of a calculator for caches and provenance: (model name + version, checkpoint sha256)."""
    model = getattr(calculator, "gen2d_model", None) or f"{type(calculator).__module__}.{type(calculator).__name__}"
    return str(model), getattr(calculator, "gen2d_checkpoint_sha256", None)


def h2_reference(calculator, fmax: float = 0.01, box: float = 15.0) -> tuple[float, float]:
    """(energy in eV, bond length in Å) of an H₂ molecule relaxed by ``calculator``; cached per model."""
    key = calculator_key(calculator)
    if key in _H2_CACHE:
        return _H2_CACHE[key]
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.75]], cell=[box, box, box], pbc=True)
    h2.center()
    h2.calc = calculator
    # a molecule is not a layer: plain BFGS, not relax_in_plane and its layer checks
    BFGS(h2, logfile=None).run(fmax=fmax, steps=200)
    result = (float(h2.get_potential_energy()), float(h2.get_distance(0, 1)))
    h2.calc = None
    _H2_CACHE[key] = result
    return result


# ----------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------

def _min_image_vector(atoms: Atoms, vector: np.ndarray) -> np.ndarray:
    """Shortest in-plane periodic image of a displacement."""
    from ase.geometry import find_mic

    return find_mic(np.atleast_2d(vector), atoms.cell, pbc=(True, True, False))[0][0]


def _flag_site(initial: Atoms, final: Atoms, h_index: int, n_components: int,
               settings: AdsorptionSettings) -> tuple[list[str], int, float, float]:
    """Named flags for one relaxed H, and its nearest slab atom (index, distance) and lateral move."""
    flags: list[str] = []
    slab_idx = np.array([k for k in range(len(final)) if k != h_index])
    dists = final.get_distances(h_index, slab_idx, mic=True)
    nearest = int(slab_idx[int(np.argmin(dists))])
    nearest_distance = float(np.min(dists))
    if nearest_distance > settings.desorbed_distance:
        flags.append("h_desorbed")
    other_h = [k for k in slab_idx if final.numbers[k] == 1]
    if other_h and np.min(final.get_distances(h_index, other_h, mic=True)) < settings.h2_distance:
        flags.append("h2_formed")
    move = _min_image_vector(final, final.positions[h_index] - initial.positions[h_index])
    lateral = float(np.linalg.norm(move[:2]))
    if lateral > settings.site_move_distance:
        flags.append("h_moved_site")
    slab_idx_list = [k for k in range(len(final)) if k != h_index]
    slab_final = final[slab_idx_list]
    if bond_components(slab_final, settings.layer_break_factor) > n_components:
        flags.append("layer_broke")
    from ase.geometry import find_mic

    moves = find_mic(final.positions[slab_idx_list] - initial.positions[slab_idx_list], final.cell,
                     pbc=(True, True, False))[1]
    if len(moves) and float(np.max(moves)) > settings.layer_distortion_distance:
        flags.append("layer_reconstructed")
    return flags, nearest, nearest_distance, lateral


# ----------------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------------

def _structure_to_atoms(structure: Structure) -> Atoms:
    from gen2d.structures import to_ase

    return to_ase(structure)


def adsorb_h(slab: Structure, calculator, settings: AdsorptionSettings | None = None,
             slab_energy_per_cell: float | None = None) -> AdsorptionResult:
    """ΔG_H on every distinct site of a relaxed, oriented monolayer.

    Parameters
    ----------
    slab : Structure
        The relaxed monolayer (c along z, in-plane a, b), as ``orient_2d`` and the stability scorer
        give it. Its cell is kept fixed.
    calculator : ase.calculators.calculator.Calculator
        The MLIP; the same one relaxed the slab.
    settings : AdsorptionSettings, optional
        The recipe; defaults as documented there.
    slab_energy_per_cell : float, optional
        E(slab) of the unit cell (eV) if already known; otherwise a single point on the supercell.

    Returns
    -------
    AdsorptionResult
        Every site's ΔG_H (eV), flags and final H position; ``best`` is the valid site of minimum
        |ΔG_H|. Never raises on a failed relaxation: that site carries a flag.
    """
    from gen2d.relax import relax_in_plane_batch

    settings = settings or AdsorptionSettings()
    start = time.process_time()
    sites = find_adsorption_sites(slab, settings)
    na, nb = supercell_repeats(slab.lattice, settings.min_inplane_length)
    base = _structure_to_atoms(slab).repeat((na, nb, 1))
    base.pbc = (True, True, False)
    n_slab = len(base)
    if slab_energy_per_cell is not None:
        e_slab = float(slab_energy_per_cell) * na * nb
    else:
        # fully periodic like relax_in_plane: the vacuum is wider than any MLIP cutoff
        probe = base.copy()
        probe.pbc = True
        probe.calc = calculator
        e_slab = float(probe.get_potential_energy())
    e_h2, h2_bond = h2_reference(calculator)
    n_components = bond_components(base, settings.layer_break_factor)

    starts = []
    for site in sites:
        start_atoms = base.copy()
        start_atoms += Atoms("H", positions=[site.position])
        start_atoms.pbc = (True, True, False)
        starts.append(start_atoms)
    # every site relaxes with its own FIRE; the MLIP evaluates all of them in one batch per step
    relaxed = relax_in_plane_batch([a.copy() for a in starts], calculator, fmax=settings.fmax,
                                   steps=settings.steps, relax_cell=False)
    results: list[SiteResult] = []
    for site, start_atoms, relax in zip(sites, starts, relaxed, strict=True):
        coverage = 1.0 / (site.n_surface_atoms * na * nb) if site.n_surface_atoms else float("nan")
        h_index = len(start_atoms) - 1
        final = relax.atoms
        flags, nearest, nearest_d, lateral = _flag_site(start_atoms, final, h_index, n_components, settings)
        energy = float(relax.energy) if relax.energy is not None and np.isfinite(relax.energy) else None
        # our own checks exclude the H from the layer: relax_in_plane's layer_broke also fires on desorption
        if relax.failure and relax.failure not in ("not_converged", "layer_broke") and relax.failure not in flags:
            flags.append(relax.failure)
        if not relax.converged and "not_converged" not in flags:
            flags.append("not_converged")
        de = None if energy is None else energy - e_slab - 0.5 * e_h2
        if de is not None and not (settings.dg_h_window[0] <= de + settings.dg_correction <= settings.dg_h_window[1]):
            flags.append("implausible_energy")
        results.append(SiteResult(
            face=site.face, kind=site.kind,
            initial_position=[float(x) for x in site.position],
            final_position=[float(x) for x in final.positions[h_index]],
            nearest_atom=final.get_chemical_symbols()[nearest], nearest_atom_index=nearest,
            nearest_distance=nearest_d, lateral_displacement=lateral, coverage=coverage,
            energy=energy, delta_e_h=de, delta_g_h=None if de is None else de + settings.dg_correction,
            converged=bool(relax.converged), steps=int(relax.steps), flags=flags,
        ))
    return AdsorptionResult(sites=results, supercell=(na, nb), n_slab_atoms=n_slab, e_slab=e_slab,
                            e_h2=e_h2, h2_bond_length=h2_bond, settings=settings.as_dict(),
                            cpu_seconds=time.process_time() - start)
