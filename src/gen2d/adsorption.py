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
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize import BFGS
from pymatgen.analysis.adsorption import AdsorbateSiteFinder
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from gen2d.fileio import write_json_atomic
from gen2d.relax import bond_components

log = logging.getLogger(__name__)

#: Zero-point energy and entropy correction of Nørskov et al. (J. Electrochem. Soc. 152, J23 (2005)).
NORSKOV_DG_CORRECTION = 0.24
#: gen2d's default correction (eV): the value most monolayer HER screening papers use.
DEFAULT_DG_CORRECTION = 0.27

SITE_KINDS = ("ontop", "bridge", "hollow")
#: Flags that are recorded but do not disqualify a site: the energy is still a usable upper bound, or (in a
#: refinement) the expensive calculator found its own minimum near the cheap one's site.
#: ``spin_start_not_relaxed``: a fresh SCF start found a lower solution at the converged geometry, the relaxation
#: from it failed, and the site's energy is that start's single point (an upper bound of its relaxed energy).
#: ``scf_jump_unexplained``: a relaxation step rose where its forces say it fell, and a fresh start there was not
#: lower (:class:`_ScfJumpGuard`): the step is anharmonic, or the fresh start found the same higher solution.
WARNING_FLAGS = frozenset(
    {"not_converged", "h_moved_site_in_refinement", "spin_start_not_relaxed", "scf_jump_unexplained"}
)


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
    inside_depth : float
        H that ends more than this (Å) below the outermost atom of its face, with a slab atom within
        :data:`COVER_RADIUS` laterally sitting more than this above it, has gone into the layer
        (``h_inside_layer``): an absorbed H, not an adsorbed one, so not an HER site. Measured: CHGNet takes H
        from the hollow over C of Ti₂CO₂ through the O plane to 1.10 Å from C, 0.95 Å below the O atoms.
    hollow_plane_depth : float
        Atoms within this (Å) of a face's outermost atom form its outermost plane, whose hollows are offered
        besides ``AdsorbateSiteFinder``'s (:func:`_plane_hollows`). That finder counts every atom within 0.9 Å of the
        top as surface and drops obtuse triangles, so it offers no hollow on a honeycomb (graphene, h-BN) nor where a
        lower atom comes within 0.9 Å (CHGNet's Sc₂CO₂: Sc 0.79 Å under the O plane). 0.5 Å keeps silicene's
        0.44 Å buckled honeycomb one plane and puts germanene's lower atoms (0.64 Å) below it.
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
    inside_depth: float = 0.5
    hollow_plane_depth: float = 0.5
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
    run_dir: str | None = None  # refinement only: where this site's frames and final geometry are kept
    spin_starts: dict[str, Any] | None = None  # refinement only: the fresh-start SCF check (RefineSettings)
    vibrations: dict[str, Any] | None = None  # refinement only: the computed ΔZPE − TΔS (RefineSettings)
    # refinement only: eV/Å, the largest force the refining calculator puts on the bare slab's free atoms at the
    # geometry E(slab) is computed at; what relaxing them with H would count as binding grows as its square
    slab_free_force: float | None = None
    # refinement only: eV, the cheap recipe's ΔG_H of the site this refinement started from (the MLIP's value of
    # the same site; two sites of one kind and nearest element are told apart by it)
    start_delta_g_h: float | None = None
    # refinement only: the fresh-start checks of the steps that jumped (RefineSettings.scf_jump_check); [] for a
    # guarded relaxation without a jump, None for one made without the guard
    scf_jump_checks: list[dict[str, Any]] | None = None

    @property
    def valid(self) -> bool:
        """A finite ΔG_H and no flag that disqualifies the site (not converging only warns)."""
        return self.delta_g_h is not None and not (set(self.flags) - WARNING_FLAGS)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("run_dir", "spin_starts", "vibrations", "slab_free_force", "start_delta_g_h", "scf_jump_checks"):
            if out[key] is None:
                del out[key]
        out["valid"] = self.valid
        return out


#: eV: a valid site with ΔG_H below −this, other than the reported one, holds H before it does
#: (``stronger_site_fills_first``); the default hit window's width
STRONG_SITE_DG_H = 0.2


def site_cautions(best: SiteResult | None, first: SiteResult | None, dg_h_first: float | None) -> list[str]:
    """``["stronger_site_fills_first"]`` when ``first``, the most stable site, is not ``best`` and its ΔG_H
    (``dg_h_first``, eV, on the scale the value is reported on) is below −``STRONG_SITE_DG_H``; else none."""
    if best is None or first is None or first is best or dg_h_first is None:
        return []
    return ["stronger_site_fills_first"] if dg_h_first < -STRONG_SITE_DG_H else []


@dataclass
class AdsorptionResult:
    """All sites of one monolayer and the best one (minimum |ΔG_H| among valid sites).

    The best site is the one closest to thermoneutral, the usual HER descriptor. At low coverage H first fills the
    most stable site (lowest ΔG_H); where that is another site and binds H strongly (ΔG_H < −``STRONG_SITE_DG_H``),
    the reported value holds only if the filled site leaves the best one as it is. Such a result carries the flag
    ``stronger_site_fills_first`` (a caution that is shown, not one that blocks a hit), and every result records
    ``dg_h_most_stable_site``.
    """

    sites: list[SiteResult]
    supercell: tuple[int, int]
    n_slab_atoms: int  # in the supercell
    e_slab: float  # eV, supercell
    e_h2: float  # eV
    h2_bond_length: float  # Å
    settings: dict[str, Any]
    cpu_seconds: float  # process CPU time of the whole recipe
    #: a DFT refinement's supercell at Γ holds the hexagonal K point (:func:`gamma_samples_k`; None: not hexagonal)
    gamma_samples_k: bool | None = None

    @property
    def best(self) -> SiteResult | None:
        valid = [s for s in self.sites if s.valid]
        return min(valid, key=lambda s: abs(s.delta_g_h)) if valid else None

    @property
    def dg_h_best_site(self) -> float | None:
        best = self.best
        return None if best is None else best.delta_g_h

    @property
    def most_stable(self) -> SiteResult | None:
        """The valid site of lowest ΔG_H: where H goes first at low coverage."""
        valid = [s for s in self.sites if s.valid]
        return min(valid, key=lambda s: s.delta_g_h) if valid else None

    @property
    def flags(self) -> list[str]:
        """Cautions about the reported value (see the class docstring); none disqualifies it."""
        first = self.most_stable
        return site_cautions(self.best, first, None if first is None else first.delta_g_h)

    def as_dict(self) -> dict[str, Any]:
        best, first = self.best, self.most_stable
        return {
            "dg_h_best_site": self.dg_h_best_site,
            "dg_h_most_stable_site": None if first is None else first.delta_g_h,
            "flags": self.flags,
            "best_site": None if best is None else best.as_dict(),
            "sites": [s.as_dict() for s in self.sites],
            "supercell": list(self.supercell),
            "n_slab_atoms": self.n_slab_atoms,
            "e_slab_eV": self.e_slab,
            "e_h2_eV": self.e_h2,
            "h2_bond_length_A": self.h2_bond_length,
            "cpu_seconds": self.cpu_seconds,
            "settings": self.settings,
            "gamma_samples_k": self.gamma_samples_k,
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
    found = finder.find_adsorption_sites(
        distance=settings.initial_height, positions=settings.site_kinds, symm_reduce=1e-2, near_reduce=1e-2
    )
    sites = [(kind, np.asarray(pos, dtype=float)) for kind in settings.site_kinds for pos in found.get(kind, [])]
    if "bridge" in settings.site_kinds:
        spurious = _hollow_polygon_diagonals(finder)
        sites = [(k, p) for k, p in sites if k != "bridge" or not _laterally_near(structure.lattice, p, spurious, 0.05)]
    if "hollow" in settings.site_kinds:
        known = [pos for kind, pos in sites if kind == "hollow"]
        sites += [("hollow", pos) for pos in _plane_hollows(structure, settings, known)]
    return sites, len(finder.surface_sites)


#: Å: two Delaunay triangles whose circumcentres are this close share one circle: their atoms form one polygon.
COCIRCULAR_TOL = 0.05


def _circumcentre(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray | None:
    """The circumcentre of a triangle in the plane (x, y), or None for three collinear points."""
    d = 2.0 * (a[0] * (b[1] - c[1]) + b[0] * (c[1] - a[1]) + c[0] * (a[1] - b[1]))
    if abs(d) < 1e-8:
        return None
    sq = (a**2).sum(), (b**2).sum(), (c**2).sum()
    return np.array(
        [
            (sq[0] * (b[1] - c[1]) + sq[1] * (c[1] - a[1]) + sq[2] * (a[1] - b[1])) / d,
            (sq[0] * (c[0] - b[0]) + sq[1] * (a[0] - c[0]) + sq[2] * (b[0] - a[0])) / d,
        ]
    )


def _empty_polygons(xy: np.ndarray) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """The empty polygons of a planar point set and the diagonals that cut them into triangles.

    Delaunay cuts four or more points on one empty circle (a honeycomb's hexagon, a square) into triangles
    arbitrarily; those triangles share their circumcentre, and the edges between them (the diagonals) are not
    bonds. Returns each polygon's point indices (a lone triangle is a polygon of three) and the diagonals.
    """
    from scipy.spatial import Delaunay

    tri = Delaunay(xy)
    centres = [_circumcentre(*xy[simplex]) for simplex in tri.simplices]
    parent = list(range(len(tri.simplices)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    diagonals = []
    for t, simplex in enumerate(tri.simplices):
        for k in range(3):
            u = int(tri.neighbors[t, k])  # the triangle across the edge opposite vertex k
            if u < t or centres[t] is None or centres[u] is None:
                continue
            if np.linalg.norm(centres[t] - centres[u]) < COCIRCULAR_TOL:
                parent[root(u)] = root(t)
                diagonals.append(tuple(int(simplex[j]) for j in range(3) if j != k))
    groups: dict[int, set[int]] = {}
    for t, simplex in enumerate(tri.simplices):
        if centres[t] is not None:
            groups.setdefault(root(t), set()).update(int(i) for i in simplex)
    return [sorted(g) for g in groups.values()], diagonals


def _hollow_polygon_diagonals(finder: AdsorbateSiteFinder) -> list[np.ndarray]:
    """Midpoints of the edges that ``AdsorbateSiteFinder`` calls bridges but that are diagonals of an empty polygon.

    The finder puts a "bridge" at the middle of every Delaunay edge, the diagonals of a honeycomb's hexagon
    included: on graphene one of those is the hexagon's centre, another a point 0.71 Å from a C atom that bridges
    nothing (:func:`_empty_polygons`).
    """
    mesh = finder.get_extended_surface_mesh()
    xy = np.array([m.coords[:2] for m in mesh])
    if len(xy) < 4:
        return []
    _, diagonals = _empty_polygons(xy)
    return [np.array([*xy[list(edge)].mean(axis=0), 0.0]) for edge in diagonals]


def _plane_hollows(structure: Structure, settings: AdsorptionSettings, known: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Hollows of the +z face's outermost plane that ``AdsorbateSiteFinder`` did not offer (Cartesian, Å).

    A hollow is the centre of an empty polygon of the plane's atoms (:func:`_empty_polygons`): a three-fold
    hollow of a close-packed plane (the finder's own, kept as they are), a honeycomb's hexagon, a square's
    four-fold hollow. The finder offers only acute triangles of every atom within 0.9 Å of the top, so it misses
    the last two, and every hollow of a plane with a lower atom within 0.9 Å. An obtuse lone triangle has no
    hollow (its centroid sits at its long edge), as in the finder. The H starts ``initial_height`` above the
    polygon's mean height.
    """
    plane = AdsorbateSiteFinder(structure, height=settings.hollow_plane_depth, mi_vec=[0.0, 0.0, 1.0])
    mesh = plane.get_extended_surface_mesh()  # the unit cell's plane repeated 5×5: fractional a, b in [0, 5)
    xyz = np.array([m.coords for m in mesh])
    if len(xyz) < 3:
        return []
    polygons, _ = _empty_polygons(xyz[:, :2])
    lattice = structure.lattice
    candidates = []
    for polygon in polygons:
        corners = xyz[polygon]
        if len(polygon) == 3:
            sides = [corners[(i + 1) % 3, :2] - corners[i, :2] for i in range(3)]
            cosines = [-np.dot(sides[i], sides[i - 1]) for i in range(3)]
            if min(cosines) < 1e-5 * max(np.dot(v, v) for v in sides):
                continue  # obtuse or right
        centre = np.array([*corners[:, :2].mean(axis=0), corners[:, 2].mean() + settings.initial_height])
        frac = lattice.get_fractional_coords(centre)
        if 1.0 < frac[0] < 4.0 and 1.0 < frac[1] < 4.0:  # the middle of the mesh, away from its ragged edge
            frac[:2] -= np.floor(frac[:2])
            candidates.append(frac)
    kept: list[np.ndarray] = []
    ops = _symmetry_operations(structure, settings.symprec)
    for frac in candidates:
        position = lattice.get_cartesian_coords(frac)
        if _laterally_near(lattice, position, [*known, *kept], 0.3):
            continue
        if _equivalent_to_any(lattice, ops, position, kept):
            continue
        kept.append(position)
    return kept


def _laterally_near(lattice: Lattice, position: np.ndarray, others: Sequence[np.ndarray], tol: float) -> bool:
    """True when a point of ``others`` lies within ``tol`` Å of ``position`` in the plane (periodic in a, b)."""
    for other in others:
        diff = lattice.get_fractional_coords(np.asarray(other) - position)
        diff[:2] -= np.round(diff[:2])
        diff[2] = 0.0
        if np.linalg.norm(lattice.get_cartesian_coords(diff)) < tol:
            return True
    return False


def _symmetry_operations(structure: Structure, symprec: float) -> list:
    """Fractional symmetry operations of the slab (its layer group as 3D operations), or [] if spglib fails."""
    try:
        return list(SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_operations(cartesian=False))
    except Exception:  # spglib fails on odd cells: no reduction rather than no result
        return []


def _equivalent_to_any(
    lattice: Lattice, ops: Sequence, position: np.ndarray, kept: Sequence[np.ndarray], tol: float = 0.15
) -> bool:
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


def supercell_repeats(lattice: Lattice, min_inplane_length: float, fold_k: bool = False) -> tuple[int, int]:
    """Repeats (n_a, n_b) that make both in-plane vectors at least ``min_inplane_length`` Å long.

    ``fold_k``: on a hexagonal lattice, also round each up to a multiple of 3, so that the supercell's Γ point
    holds the primitive cell's K and K′ (:func:`gamma_samples_k`).
    """
    na = max(1, math.ceil(min_inplane_length / lattice.a - 1e-9))
    nb = max(1, math.ceil(min_inplane_length / lattice.b - 1e-9))
    if fold_k and gamma_samples_k(lattice, (1, 1)) is not None:
        na, nb = 3 * math.ceil(na / 3), 3 * math.ceil(nb / 3)
    return na, nb


def gamma_samples_k(lattice: Lattice, repeats: tuple[int, int]) -> bool | None:
    """Whether a Γ-only calculation on the ``repeats`` supercell of a hexagonal ``lattice`` samples K and K′.

    An n_a × n_b supercell's Γ point holds the primitive cell's k-points (i/n_a, j/n_b); K = (1/3, 1/3) (or
    (1/3, 2/3) with a 60° γ) is among them only when both n are multiples of 3. Graphene's Dirac point and the
    band edges of the 2H dichalcogenides sit at K, so a cell that misses it misses the states H's electron
    goes into. None: the lattice is not hexagonal in plane (a ≠ b, or γ not 60° or 120°), and K has no such role.
    """
    a, b, gamma = lattice.a, lattice.b, lattice.gamma
    # loose enough for an MLIP-relaxed or generated layer that is hexagonal within its noise
    if abs(a - b) > 1e-2 * a or min(abs(gamma - 60.0), abs(gamma - 120.0)) > 1.0:
        return None
    return repeats[0] % 3 == 0 and repeats[1] % 3 == 0


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


def _flag_site(
    initial: Atoms, final: Atoms, h_index: int, n_components: int, settings: AdsorptionSettings
) -> tuple[list[str], int, float, float]:
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

    moves = find_mic(
        final.positions[slab_idx_list] - initial.positions[slab_idx_list], final.cell, pbc=(True, True, False)
    )[1]
    if len(moves) and float(np.max(moves)) > settings.layer_distortion_distance:
        flags.append("layer_reconstructed")
    if _inside_layer(initial, final, h_index, slab_idx_list, settings.inside_depth):
        flags.append("h_inside_layer")
    return flags, nearest, nearest_distance, lateral


#: Lateral distance (Å) within which a slab atom above the H covers it (:func:`_inside_layer`): beyond the
#: in-plane distance from a threefold hollow to its corners on the layers here (1.7-1.9 Å), within a bond.
COVER_RADIUS = 2.2


def _inside_layer(initial: Atoms, final: Atoms, h_index: int, slab_idx: list[int], depth: float) -> bool:
    """Whether the H ended inside the layer: more than ``depth`` (Å) below the outermost atom of the face it
    started on, and covered by a slab atom within :data:`COVER_RADIUS` laterally that sits more than ``depth``
    farther out than it. Both, so that H in a valley of a buckled face, beside a higher atom, is still a surface H."""
    z0 = initial.positions[slab_idx, 2]
    outward = 1.0 if initial.positions[h_index, 2] > z0.mean() else -1.0  # +1: the top face, -1: the bottom one
    z = final.positions[slab_idx, 2] * outward
    zh = final.positions[h_index, 2] * outward
    if float(z.max()) - zh <= depth:
        return False
    from ase.geometry import find_mic

    lateral = final.positions[slab_idx] - final.positions[h_index]
    lateral[:, 2] = 0.0
    distances = find_mic(lateral, final.cell, pbc=(True, True, False))[1]
    return bool(np.any((distances < COVER_RADIUS) & (z - zh > depth)))


# ----------------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------------


def _structure_to_atoms(structure: Structure) -> Atoms:
    from gen2d.structures import to_ase

    return to_ase(structure)


def adsorb_h(
    slab: Structure, calculator, settings: AdsorptionSettings | None = None, slab_energy_per_cell: float | None = None
) -> AdsorptionResult:
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
    relaxed = relax_in_plane_batch(
        [a.copy() for a in starts], calculator, fmax=settings.fmax, steps=settings.steps, relax_cell=False
    )
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
        results.append(
            SiteResult(
                face=site.face,
                kind=site.kind,
                initial_position=[float(x) for x in site.position],
                final_position=[float(x) for x in final.positions[h_index]],
                nearest_atom=final.get_chemical_symbols()[nearest],
                nearest_atom_index=nearest,
                nearest_distance=nearest_d,
                lateral_displacement=lateral,
                coverage=coverage,
                energy=energy,
                delta_e_h=de,
                delta_g_h=None if de is None else de + settings.dg_correction,
                converged=bool(relax.converged),
                steps=int(relax.steps),
                flags=flags,
            )
        )
    return AdsorptionResult(
        sites=results,
        supercell=(na, nb),
        n_slab_atoms=n_slab,
        e_slab=e_slab,
        e_h2=e_h2,
        h2_bond_length=h2_bond,
        settings=settings.as_dict(),
        cpu_seconds=time.process_time() - start,
    )


# ----------------------------------------------------------------------------------------------------
# Refinement: a costlier calculator (DFT) on the best sites a cheaper one (an MLIP) found
# ----------------------------------------------------------------------------------------------------


@dataclass
class RefineSettings:
    """How :func:`refine_adsorption` bounds the cost of an expensive calculator.

    Parameters
    ----------
    n_sites : int
        Refine this many of the cheap recipe's valid sites: those of smallest |ΔG_H|, and always the
        most stable one (lowest ΔG_H), which H occupies first at low coverage.
    free_radius : float
        Slab atoms within this distance (Å) of the H's start relax with it; the rest of the slab stays
        at the cheap recipe's relaxed geometry, as does the cell.
    fmax, steps : float, int
        BFGS convergence of the constrained relaxation (eV/Å, steps). Not converging is a named
        failure of the site (``geometry_not_converged``), never a ranked value.
    min_inplane_length : float
        Supercell of the refinement: both in-plane vectors at least this long (Å). DFT at the Γ point
        needs ~9 Å; the coverage changes with it and is recorded.
    h2_box : float
        Edge (Å) of the cubic box of the H₂ reference.
    vacuum : float or None
        Vacuum (Å) of the refinement cell along z, the slab re-centred in it; None keeps the cheap
        recipe's cell. A plane-wave grid costs in proportion to c, and the dipole correction removes
        the field across the vacuum, so 15 Å is enough for H adsorption energies.
    relax_slab_reference : bool
        Also relax the same free atoms of the bare slab, so that E(slab) and E(slab+H) are both
        relaxed by the same calculator around the site (otherwise E(slab) is a single point at the
        cheap geometry, which lets the calculator's own relaxation of the neighbours count as binding).
    prerelax : str or None
        A ``gen2d.calculators`` MLIP (``chgnet``) that prepares each site's start: it relaxes the same free
        atoms (the neighbours' response to H, e.g. the sp³ pucker of graphene, which the clean slab lacks)
        and gives the expensive BFGS its Hessian of those atoms (:func:`mlip_hessian`) instead of a uniform
        70 eV/Å². The expensive calculator still decides the geometry and the energy, but an open-shell SCF
        can land in another spin solution from another start (docs/dft.md measures one, 68 meV apart on
        graphene). None starts from the clean slab with H at the cheap recipe's position.
    spin_starts : tuple of float
        Initial magnetic moments (μB) on H for fresh-start single points at each converged site geometry
        (``0.0``: the calculator's plain atomic guess), set as the atoms' initial magnetic moments. An
        open-shell slab+H can have several SCF solutions, and a relaxation that restarts each SCF from the last
        one stays in whichever it found first. If a fresh start is lower by more than ``SPIN_START_TOLERANCE``,
        the relaxation continues from that solution's wavefunction and the site takes its energy. Every
        start's energy is recorded with the site. Empty: no check. It is not part of a run's key: a finished
        site gains the check when asked, and keeps it.
    h_jitter : float
        In-plane displacement (Å, fixed direction per site) of the H's start. A cheap recipe's minimum can
        be a saddle of the expensive one on a symmetric site (H bridging two equivalent S atoms): a
        gradient method started exactly there never leaves it, since the forces that would take it off
        vanish by symmetry. 0 starts exactly at the cheap recipe's position.
    hold_site : bool
        Keep H over its start in the plane (it relaxes along z only; the slab atoms around it relax freely), and
        start it exactly there (no ``h_jitter``): ΔG_H *of that site* even where the expensive calculator would
        move H off it. Published per-site values (the P top of blue phosphorene, the S top of MoS₂) are of this
        kind where the site is not a minimum; the free relaxation says where H goes. Its sites have their own
        directories (``-held``); the bare slab is shared with free runs.
    vibrations : bool
        After a site converges, compute H*'s harmonic frequencies with the slab held (7 more single points from the
        site's wavefunction) and H₂'s (13, once per settings), and record the ΔZPE − TΔS they give
        (:func:`vibrational_dg_correction`) with the site as ``vibrations``. ΔG_H itself keeps ``dg_correction``,
        the constant the published values use; ``vibrations.dg_correction_eV`` says how far this site's own
        correction is from it. Not part of a run's key: a finished site gains it in place.
    scf_jump_check : bool
        Watch each site relaxation for a step that jumped to a higher SCF solution (the energy rose by more than
        20 meV while the forces at both ends of the step say it went downhill, :func:`gen2d.frames.is_scf_jump`),
        recompute that geometry from a fresh start, and go on from it where it is lower (:class:`_ScfJumpGuard`).
        It costs one SCF per such step, and nothing where none occurs. Not part of a run's key: the relaxation it
        guards is the same calculation.
    fold_k : bool
        On a hexagonal lattice, round the supercell's repeats up to multiples of 3, so that a Γ-only DFT
        calculation samples the K and K′ points (:func:`gamma_samples_k`), where graphene's Dirac point and the
        2H dichalcogenides' band edges are. The 2H-MoS₂ convergence study measured what missing them costs: in a
        2×2 cell at Γ, ΔE_H is 0.33 eV above the same cell with a 3×3 k-mesh (docs/benchmarks/dft-reference.md).
        Off by default, so that stored runs keep their keys and a confirm stage's cost stays as measured (a
        hexagonal cell of a ≈ 5 Å goes from 2×2 to 3×3); each result records whether its Γ held K.
    """

    n_sites: int = 2
    free_radius: float = 3.0
    fmax: float = 0.05
    steps: int = 60
    min_inplane_length: float = 9.0
    relax_slab_reference: bool = False
    vacuum: float | None = 15.0
    h2_box: float = 12.0
    h_jitter: float = 0.1
    prerelax: str | None = None
    spin_starts: tuple[float, ...] = ()
    hold_site: bool = False
    vibrations: bool = False
    fold_k: bool = False
    scf_jump_check: bool = False

    def __post_init__(self) -> None:
        self.spin_starts = tuple(float(m) for m in self.spin_starts)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.h_jitter:  # runs keyed before the option existed keep their key
            out.pop("h_jitter")
        if self.prerelax is None:  # likewise
            out.pop("prerelax")
        if not self.spin_starts:
            out.pop("spin_starts")
        else:
            out["spin_starts"] = list(self.spin_starts)
        if not self.hold_site:  # runs keyed before the option keep their key
            out.pop("hold_site")
        if not self.vibrations:
            out.pop("vibrations")
        if not self.fold_k:  # runs keyed before the option keep their key
            out.pop("fold_k")
        if not self.scf_jump_check:
            out.pop("scf_jump_check")
        return out


#: eV: a fresh SCF start lower than the relaxation's own solution by more than this takes the site over
SPIN_START_TOLERANCE = 0.005


def pick_sites_to_refine(sites: Sequence[dict[str, Any]], n_sites: int) -> list[dict[str, Any]]:
    """The cheap recipe's valid sites worth refining: the most stable one, then smallest |ΔG_H| first."""
    valid = [s for s in sites if s.get("valid", True) and s.get("delta_g_h") is not None]
    if not valid or n_sites <= 0:
        return []
    chosen = [min(valid, key=lambda s: s["delta_g_h"])]
    for s in sorted(valid, key=lambda s: abs(s["delta_g_h"])):
        if len(chosen) >= n_sites:
            break
        if s is not chosen[0]:
            chosen.append(s)
    return chosen


def jitter_offset(k: int, amplitude: float) -> np.ndarray:
    """The in-plane start offset (Å) of refined site ``k``: ``amplitude`` along a fixed, site-dependent
    direction (an irrational angle, so it lies on no mirror line of a common lattice)."""
    angle = 0.7853981 * math.sqrt(2.0) * (k + 1)
    return np.array([math.cos(angle), math.sin(angle), 0.0]) * amplitude


def site_tag(site: dict[str, Any], h_pos: np.ndarray) -> str:
    """Eight hex digits naming a refined site's start: its face, kind and the H start position (to 0.01 Å)."""
    import hashlib

    start = ",".join(f"{x:.2f}" for x in np.asarray(h_pos, float))
    text = f"{site.get('face', 'top')}|{site.get('kind', '?')}|{start}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _wrap_into_cell(position: np.ndarray, lattice: Lattice) -> np.ndarray:
    """A Cartesian position moved into the unit cell in-plane (z kept)."""
    frac = lattice.get_fractional_coords(position)
    frac[:2] -= np.floor(frac[:2])
    return lattice.get_cartesian_coords(frac)


def _free_indices(atoms: Atoms, centre: np.ndarray, radius: float, n_slab: int) -> list[int]:
    from ase.geometry import find_mic

    d = find_mic(atoms.positions[:n_slab] - centre, atoms.cell, pbc=(True, True, False))[1]
    return [int(i) for i in np.nonzero(d < radius)[0]]


def _constrained_bfgs(
    atoms: Atoms,
    calculator,
    free: Sequence[int],
    fmax: float,
    steps: int,
    trajectory: str | None,
    hessian: np.ndarray | None = None,
    hold: Sequence[int] = (),
    guard=None,
) -> tuple[Atoms, float, bool, int]:
    """BFGS on ``free`` atoms only (the rest fixed); resumes from ``trajectory``'s last frame if it exists.

    ``guard(calculator, previous)``, if given, wraps the calculator for the relaxation (:class:`_ScfJumpGuard`);
    ``previous`` is the resumed frame as (positions, energy, forces), or None on a fresh start.

    ``hessian`` (3N×3N, eV/Å², positive definite) replaces BFGS's uniform initial Hessian on a fresh start.
    Atoms in ``hold`` keep their in-plane (x, y) position and relax along z only.

    Every evaluated frame (positions, energy, forces) is appended to ``trajectory``: the frames are
    training data, and the last one is where a killed run starts again. Its stored energy and forces are handed
    to the optimizer as the calculator's results, so the resumed run does not evaluate that frame a second time
    (with DFT, one SCF per restart: measured here, 7 to 110 steps of about a minute on a metallic slab + H) and
    does not write it twice. The BFGS state (Hessian, last step) is kept beside it (``<trajectory>.bfgs.json``),
    so a resumed run takes the step the killed one would have taken instead of starting again from a unit
    Hessian.
    """
    import os

    from ase.constraints import FixAtoms, FixCartesian
    from ase.io import Trajectory, read

    work = atoms.copy()
    done_steps = 0
    stored: dict[str, Any] | None = None
    if trajectory and os.path.isfile(trajectory) and os.path.getsize(trajectory) > 0:
        try:
            frames = read(trajectory, index=":")
        except Exception:  # a frame cut by the kill: keep the whole frames before it
            frames = _whole_frames(trajectory)
        if frames and len(frames[-1]) == len(work):
            work.positions = frames[-1].positions
            done_steps = len(frames) - 1  # frame 0 is the start: n steps leave n + 1 frames
            if np.array_equal(frames[-1].numbers, work.numbers):
                stored = _stored_result(frames[-1])
    fixed = [i for i in range(len(work)) if i not in set(free)]
    constraints = [FixAtoms(indices=fixed)]
    if hold:
        constraints.append(FixCartesian(list(hold), mask=(True, True, False)))
    work.set_constraint(constraints)
    if guard is not None:
        previous = None if stored is None else (work.positions.copy(), stored["energy"], stored["forces"])
        calculator = guard(calculator, previous)
    # the last frame was evaluated by this directory's calculator at these positions: its results stand
    work.calc = calculator if stored is None else _ResumedFrame(calculator, work.positions, stored)
    restart = f"{trajectory}.bfgs.json" if trajectory else None
    if restart and done_steps == 0 and os.path.isfile(restart):
        os.remove(restart)  # a Hessian without the frames it was built on
    opt = BFGS(work, logfile=None, maxstep=0.15, restart=restart)
    if hessian is not None and done_steps == 0:
        if np.shape(hessian) != np.shape(opt.H0):
            raise ValueError(f"initial Hessian of shape {np.shape(hessian)}, expected {np.shape(opt.H0)}")
        opt.H0 = np.asarray(hessian, float)
    if trajectory:
        traj = Trajectory(trajectory, "a", work)
        replayed = [stored is not None]

        def _write() -> None:
            if replayed[0]:  # the resumed frame is the trajectory's last already
                replayed[0] = False
                return
            traj.write()

        opt.attach(_write, interval=1)
    try:
        converged = bool(opt.run(fmax=fmax, steps=max(0, steps - done_steps)))
        energy = float(work.get_potential_energy())
    finally:
        if trajectory:
            traj.close()
    final = work.copy()
    final.calc = None
    final.set_constraint()
    return final, energy, converged, done_steps + int(opt.nsteps)


class _ResumedFrame(Calculator):
    """``inner``, except at ``positions``, where it hands out ``stored`` (a resumed relaxation's last frame,
    evaluated before the kill) without calling ``inner``. Once the atoms move it passes every call on."""

    def __init__(self, inner: Calculator, positions: np.ndarray, stored: dict[str, Any]):
        super().__init__()
        self.inner = inner
        self.implemented_properties = list(getattr(inner, "implemented_properties", ())) or ["energy", "forces"]
        self._positions: np.ndarray | None = np.array(positions, float)
        self._stored = stored

    @property
    def name(self) -> str:  # the trajectory records the calculator that computed the frames, not this wrapper
        return self.inner.name

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self._positions is not None and np.array_equal(self.atoms.positions, self._positions):
            self.results = dict(self._stored)
            return
        self._positions = None  # moved: from here on every evaluation is the inner calculator's
        for name in properties:
            self.inner.get_property(name, self.atoms)
        self.results = dict(self.inner.results)


class _ScfJumpGuard(Calculator):
    """``inner``, watched for a relaxation step that jumps to a higher SCF solution (:func:`gen2d.frames.is_scf_jump`:
    the energy rose by more than 20 meV while the forces at both ends of the step say it went downhill).

    A CP2K relaxation starts each SCF from the last step's wavefunction; once an SCF lands in a higher solution
    the chain can stay there for the rest of the relaxation (2H-MoSe₂'s Se-top site did for 14 steps, 88 meV high,
    which the fresh start at its end found). At such a step ``fresh(atoms)`` recomputes the geometry from a fresh
    start in a folder of its own and returns ``{"energy", "forces", "directory"}`` (or a ``failure``). If that is
    lower by more than :data:`SPIN_START_TOLERANCE`, its energy and forces are this step's, and the chain goes on
    from its wavefunction: ``reopen(directory)`` closes the old calculator and returns the new one. Every check is
    written to ``check.json`` beside the fresh start (:func:`scf_jump_checks` reads them). ``previous`` is the last
    evaluated frame of a resumed run (positions, energy, forces).
    """

    def __init__(self, inner: Calculator, fresh, reopen, previous: tuple | None = None):
        super().__init__()
        self.inner = inner
        self.implemented_properties = list(getattr(inner, "implemented_properties", ())) or ["energy", "forces"]
        self._fresh, self._reopen = fresh, reopen
        self._previous = previous

    @property
    def name(self) -> str:  # the trajectory records the calculator that computed the frames, not this wrapper
        return self.inner.name

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from gen2d.frames import SCF_JUMP_TOLERANCE, is_scf_jump, predicted_energy_change

        super().calculate(atoms, properties, system_changes)
        for name in {"energy", "forces", *properties}:
            self.inner.get_property(name, self.atoms)
        results = dict(self.inner.results)
        energy, forces = float(results["energy"]), np.asarray(results["forces"], float)
        if self._previous is not None:
            x0, e0, f0 = self._previous
            rose = energy - e0
            predicted = predicted_energy_change(x0, f0, self.atoms.positions, forces)
            if is_scf_jump(rose, predicted):
                check: dict[str, Any] = {
                    "rose_eV": rose,
                    "predicted_eV": predicted,
                    "tolerance_eV": SCF_JUMP_TOLERANCE,
                    "chain_energy_eV": energy,
                    "taken": False,
                }
                found = self._fresh(self.atoms.copy())
                check.update({k: v for k, v in found.items() if k not in ("forces", "directory")})
                if found.get("energy") is not None and found["energy"] < energy - SPIN_START_TOLERANCE:
                    log.warning(
                        "%s: a step rose %+.3f eV where its forces give %+.3f eV; a fresh SCF start there is "
                        "%.3f eV lower, and the relaxation goes on from it",
                        found.get("directory"),
                        rose,
                        predicted,
                        energy - found["energy"],
                    )
                    energy, forces = float(found["energy"]), np.asarray(found["forces"], float)
                    results = {"energy": energy, "forces": forces}
                    if "free_energy" in self.inner.results:
                        results["free_energy"] = energy
                    self.inner = self._reopen(found["directory"])
                    check["taken"] = True
                if found.get("directory"):
                    import os

                    write_json_atomic(os.path.join(found["directory"], "check.json"), check)
        self._previous = (self.atoms.positions.copy(), energy, forces.copy())
        self.results = results


#: a site relaxation's fresh-start checks after an SCF jump (:class:`_ScfJumpGuard`), one folder per geometry
SCF_JUMP_FOLDER = "scf_jump-"


class _Chain:
    """The calculator of one relaxation in ``directory``, and the SCF-jump guard around it when ``guarded``.

    ``guard`` is the ``guard`` argument of :func:`_constrained_bfgs` (None unguarded); :attr:`calc` is the
    calculator the relaxation ends on (a fresh start that took over runs on in a calculator of its own), which
    :meth:`close` stops; :meth:`record` is what the part's result adds (its checks, when guarded)."""

    def __init__(self, directory: str, make_calculator, guarded: bool):
        self.directory, self._make = directory, make_calculator
        self.first = make_calculator(directory)  # the calculator the relaxation starts with
        self._guard: _ScfJumpGuard | None = None
        self.guard = self._wrap if guarded else None

    def _wrap(self, inner, previous) -> _ScfJumpGuard:
        self._guard = _ScfJumpGuard(
            inner,
            lambda atoms: _fresh_start_at(self.directory, atoms, self._make),
            lambda source: _continue_from(self.directory, source, self.calc, self._make),
            previous,
        )
        return self._guard

    @property
    def calc(self):
        return self._guard.inner if self._guard is not None else self.first

    def record(self) -> dict[str, Any]:
        return {} if self.guard is None else {"scf_jump_checks": scf_jump_checks(self.directory)}

    def close(self) -> None:
        _close_calculator(self.calc)


def _fresh_single_point(folder: str, atoms: Atoms, make_calculator, forces: bool = False) -> dict[str, Any]:
    """A single point of ``atoms`` (their own initial moments) from a fresh start in ``folder``, a killed attempt's
    wavefunction there removed first: ``{"energy", "forces" (with ``forces``), "cost"}``, or the named failure of
    an SCF that does not converge. A crash of the calculator raises: it is no result to keep."""
    import os

    os.makedirs(folder, exist_ok=True)
    _clear_restart(folder)
    probe = atoms.copy()
    probe.set_constraint()
    calc = make_calculator(folder)
    try:
        probe.calc = calc
        out: dict[str, Any] = {"energy": float(probe.get_potential_energy())}
        if forces:
            out["forces"] = np.asarray(probe.get_forces(apply_constraint=False), float).tolist()
        return out | {"cost": _cost(calc)}
    except Exception as exc:  # noqa: BLE001 - a fresh start that does not converge is recorded, not fatal
        if _failure_name(exc) == "calculator_error":  # a crash, not a result: nothing to cache
            raise
        return _failure_doc(exc, calc)
    finally:
        _close_calculator(calc)


def _fresh_start_at(directory: str, atoms: Atoms, make_calculator) -> dict[str, Any]:
    """A fresh-start single point of ``atoms`` in ``directory/scf_jump-<geometry>/``, cached there:
    ``{"energy", "forces", "directory"}`` or a failure (:func:`_fresh_single_point`)."""
    import os

    folder = os.path.join(directory, SCF_JUMP_FOLDER + _geometry_sha256(atoms, [])[:12])
    doc = _cached_result(os.path.join(folder, "result.json"))
    if doc is None:
        doc = _fresh_single_point(folder, atoms, make_calculator, forces=True)
        write_json_atomic(os.path.join(folder, "result.json"), doc)
    return {**doc, "directory": folder}


def _continue_from(directory: str, source: str, old, make_calculator):
    """Close ``old``, put ``source``'s wavefunction in place of ``directory``'s own and start the calculator of
    ``directory`` again: the relaxation goes on from the lower solution."""
    _close_calculator(old)
    _clear_restart(directory)
    _seed_restart(source, directory)
    return make_calculator(directory)


def _clear_restart(directory: str) -> None:
    """Remove a calculator's wavefunction restart files (CP2K's ``*-RESTART.wfn`` and ``.kp``) from ``directory``:
    the next SCF there starts from the atomic guess."""
    import glob
    import os

    for suffix in ("wfn", "kp"):
        for path in glob.glob(os.path.join(directory, f"*-RESTART.{suffix}")):
            os.remove(path)


def scf_jump_checks(directory: str) -> list[dict[str, Any]]:
    """The fresh-start checks a relaxation in ``directory`` made after SCF jumps (energies in eV), in folder
    order; each says whether it took the relaxation over (its energy lower than the chain's)."""
    import glob
    import json
    import os

    out = []
    for path in sorted(glob.glob(os.path.join(directory, SCF_JUMP_FOLDER + "*", "check.json"))):
        with open(path) as fh:
            doc = json.load(fh)
        out.append(doc | {"folder": os.path.basename(os.path.dirname(path))})
    return out


def _stored_result(frame: Atoms) -> dict[str, Any] | None:
    """The energy and forces (eV, eV/Å; forces as the calculator gave them, before constraints) stored with a
    trajectory frame; None when either is missing or not finite."""
    results = getattr(frame.calc, "results", None) or {}
    energy, forces = results.get("energy"), results.get("forces")
    if energy is None or forces is None:
        return None
    forces = np.asarray(forces, float)
    if not np.isfinite(energy) or forces.shape != (len(frame), 3) or not np.isfinite(forces).all():
        return None
    out: dict[str, Any] = {"energy": float(energy), "forces": forces.copy()}
    if results.get("free_energy") is not None:
        out["free_energy"] = float(results["free_energy"])
    return out


def _keep_frame(atoms: Atoms, path: str) -> None:
    """Store an evaluated single point (energy, and forces where the calculator has them) for training."""
    from gen2d.frames import save_frame

    try:
        atoms.get_forces()  # CP2K evaluates energy and forces together: no extra cost
    except Exception:  # noqa: BLE001 - an energy-only calculator still gives an energy frame
        pass
    save_frame(atoms, path)


def _whole_frames(trajectory: str) -> list[Atoms]:
    """The frames of a trajectory that read whole, up to the first that does not (a write cut by a kill)."""
    from ase.io import Trajectory

    frames: list[Atoms] = []
    try:
        with Trajectory(trajectory) as traj:
            for k in range(len(traj)):
                frames.append(traj[k])
    except Exception:  # noqa: BLE001 - the damaged tail
        pass
    return frames


def mlip_hessian(
    atoms: Atoms,
    calculator,
    free: Sequence[int],
    delta: float = 0.01,
    min_curvature: float = 1.0,
    fixed_curvature: float = 70.0,
) -> np.ndarray:
    """A positive-definite 3N×3N Hessian (eV/Å²) of ``atoms`` by ``calculator``: central differences of the
    forces (``delta`` Å) on the ``free`` atoms' coordinates, symmetrised, with eigenvalues raised to at least
    ``min_curvature``; the fixed atoms get ``fixed_curvature`` (BFGS's default) and no coupling.

    Costs 6·len(free) force evaluations. As BFGS's initial Hessian it carries the cheap model's curvatures
    (stiff X–H stretch, soft out-of-plane pucker) into the expensive relaxation.
    """
    free = sorted(int(i) for i in free)
    dofs = [3 * i + c for i in free for c in range(3)]
    work = atoms.copy()
    work.set_constraint()
    work.calc = calculator
    x0 = work.positions.copy()
    block = np.zeros((len(dofs), len(dofs)))
    for col, dof in enumerate(dofs):
        atom, c = divmod(dof, 3)
        grads = []
        for sign in (1.0, -1.0):
            pos = x0.copy()
            pos[atom, c] += sign * delta
            work.positions = pos
            grads.append(-work.get_forces().ravel()[dofs])
        block[:, col] = (grads[0] - grads[1]) / (2 * delta)
    block = 0.5 * (block + block.T)
    w, v = np.linalg.eigh(block)
    block = (v * np.maximum(w, min_curvature)) @ v.T
    hessian = np.eye(3 * len(atoms)) * fixed_curvature
    hessian[np.ix_(dofs, dofs)] = block
    return hessian


def prepare_start(
    atoms: Atoms, calculator, free: Sequence[int], fmax: float = 0.02, steps: int = 300, hold: Sequence[int] = ()
) -> tuple[Atoms, np.ndarray, dict[str, Any]]:
    """The start of an expensive relaxation, prepared by a cheap one: ``free`` atoms relaxed by ``calculator``
    (``hold`` atoms along z only) and its :func:`mlip_hessian` there. Returns the atoms, the Hessian and what
    was done (steps, converged, largest displacement in Å)."""
    relaxed, _, converged, n = _constrained_bfgs(atoms, calculator, free, fmax, steps, None, hold=hold)
    hessian = mlip_hessian(relaxed, calculator, free)
    moved = float(np.linalg.norm(relaxed.positions - atoms.positions, axis=1).max())
    return relaxed, hessian, {"steps": n, "converged": converged, "max_displacement_A": moved}


def refine_adsorption(
    slab: Structure,
    sites: Sequence[dict[str, Any]],
    make_calculator,
    workdir: str,
    settings: AdsorptionSettings | None = None,
    refine: RefineSettings | None = None,
    h2: tuple[float, float] | None = None,
    metadata: dict[str, Any] | None = None,
    prerelax_calculator=None,
    h2_directory: str | None = None,
) -> AdsorptionResult:
    """ΔG_H on a few sites with an expensive calculator, started from a cheaper recipe's relaxed H.

    Parameters
    ----------
    slab : Structure
        The relaxed, oriented monolayer the cheap recipe used (its cell is kept).
    sites : sequence of dict
        The cheap recipe's site records (``SiteResult.as_dict()``: ``face``, ``kind``,
        ``final_position``, ``delta_g_h``, ``valid``); :func:`pick_sites_to_refine` chooses among them.
    make_calculator : callable
        ``make_calculator(directory) -> Calculator``: one calculator (one CP2K process, one working
        directory) per system, so that each keeps its own wavefunction for restarts.
    workdir : str
        Cache and restart directory: ``slab/`` and ``site_<k>-<start>/`` (``<start>``: :func:`site_tag` of
        the H start) each hold the calculator's files, a ``relax.traj`` of every evaluated frame and, when
        done, ``result.json``. A rerun reuses every
        finished part and resumes an unfinished relaxation from its last frame.
    settings : AdsorptionSettings
        Flags and ``dg_correction``, as for :func:`adsorb_h`.
    refine : RefineSettings
        Number of sites, free radius, convergence, supercell.
    h2 : (float, float), optional
        (E(H₂) in eV, bond in Å) by the same calculator and settings; computed (and cached in
        ``workdir/h2``) when None.
    metadata : dict, optional
        What is computed (formula, content hash, calculator settings and their hash): written with the
        refinement settings to ``workdir/run.json``, which makes the frames a dataset
        (:mod:`gen2d.frames`).
    prerelax_calculator : callable, optional
        Returns the MLIP of ``refine.prerelax``; called only when a fresh relaxation needs it (default: the
        MLIP loaded by name with :func:`gen2d.relax.cached_calculator`).
    h2_directory : str, optional
        Where :func:`h2_reference_dft` computed the given ``h2``; ``refine.vibrations`` computes H₂'s frequency
        there (default ``workdir/h2``, where an ``h2`` of None is computed).

    Returns
    -------
    AdsorptionResult
        Sites with flags (``geometry_not_converged``, ``scf_not_converged`` and the flags of
        :func:`adsorb_h`); ``settings`` holds both the adsorption and refinement settings.
    """
    import json
    import os

    settings = settings or AdsorptionSettings()
    refine = refine or RefineSettings()
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    if metadata is not None:
        from gen2d.frames import write_run_metadata

        write_run_metadata(
            workdir, {**metadata, "refine": refine.as_dict(), "adsorption": settings.as_dict(), "system_kind": None}
        )
    chosen = pick_sites_to_refine(sites, refine.n_sites)
    na, nb = supercell_repeats(slab.lattice, refine.min_inplane_length, fold_k=refine.fold_k)
    base = _structure_to_atoms(slab).repeat((na, nb, 1))
    base.pbc = (True, True, False)
    z_shift = 0.0
    if refine.vacuum is not None:
        z = base.positions[:, 2]
        c = float(z.max() - z.min()) + refine.vacuum
        cell = base.cell.array.copy()
        cell[2] = [0.0, 0.0, c]
        z_shift = c / 2 - (z.max() + z.min()) / 2
        base.set_cell(cell, scale_atoms=False)
        base.positions += [0.0, 0.0, z_shift]
    n_slab = len(base)
    n_components = bond_components(base, settings.layer_break_factor)
    surface_counts = {face: n for face, n in _surface_atom_counts(slab, settings).items()}

    def cached(name: str, compute):
        path = os.path.join(workdir, name, "result.json")
        doc = _cached_result(path)
        if doc is not None:
            return doc
        os.makedirs(os.path.dirname(path), exist_ok=True)
        out = compute(os.path.dirname(path))
        write_json_atomic(path, out)
        return out

    if h2 is None:
        h2_directory = os.path.join(workdir, "h2")
        h2 = h2_reference_dft(h2_directory, make_calculator, box=refine.h2_box)
    e_h2, h2_bond = h2
    h2_modes: list[complex] | None = None
    h2_vib_failure: dict[str, str] | None = None
    if refine.vibrations:
        if h2_directory is None:
            raise ValueError("vibrations need the directory of the given H2 reference (h2_directory)")
        try:
            h2_modes = h2_vibrations_dft(h2_directory, make_calculator, box=refine.h2_box)
        except RefinementFailed as exc:  # the sites keep their ΔG_H; their vibrations say why they have none
            h2_vib_failure = {"failure": exc.reason, "message": str(exc)}

    def _slab_single(d):
        calc = make_calculator(d)
        try:
            probe = base.copy()
            probe.calc = calc
            energy = float(probe.get_potential_energy())
            _keep_frame(probe, os.path.join(d, "frame.traj"))  # a single point is training data too
            return {"energy": energy, "cost": _cost(calc)}
        except Exception as exc:
            if _failure_name(exc) == "calculator_error":  # not a result of the calculation: nothing to cache
                raise
            # a named DFT failure is the slab's result: cached, so a rerun does not pay for it again
            return _failure_doc(exc, calc)
        finally:
            _close_calculator(calc)

    slab_doc = cached("slab", _slab_single)
    if slab_doc.get("energy") is None:
        raise RefinementFailed(
            slab_doc.get("failure", "calculator_error"), f"the bare slab: {slab_doc.get('message', '')}"
        )
    slab_frames = _whole_frames(os.path.join(workdir, "slab", "frame.traj"))
    if slab_frames:
        moved = _largest_displacement(slab_frames[-1], base)
        if moved is None or moved > SLAB_GEOMETRY_TOLERANCE:
            # the run key hashes the candidate and the settings, not the MLIP-relaxed slab: another MLIP (or a
            # changed MLIP stage) builds its sites on another slab, whose energy this cached one is not
            what = "other atoms or another cell" if moved is None else f"atoms up to {moved:.3f} Å away"
            raise RefinementFailed(
                "slab_geometry_mismatch",
                f"{workdir}/slab holds the bare slab of another geometry ({what}; tolerance "
                f"{SLAB_GEOMETRY_TOLERANCE} Å): its energy is not the reference of sites built on this slab. The "
                "MLIP stage changed (e.g. another mlip or model); give this run its own directory (GEN2D_DFT_DIR)",
            )
        log.info("%s/slab: the cached bare slab lies within %.2e Å of this slab", workdir, moved)
    slab_results = getattr(slab_frames[-1].calc, "results", {}) if slab_frames else {}
    slab_forces = np.asarray(slab_results["forces"]) if "forces" in slab_results else None

    def _start(
        atoms: Atoms, free: list[int], traj: str, hold: Sequence[int] = ()
    ) -> tuple[Atoms, np.ndarray | None, dict | None]:
        """(atoms, initial Hessian, what prepared them) of a relaxation: the MLIP-prepared start on a fresh run
        with ``refine.prerelax`` (the MLIP loaded only then), otherwise the atoms as given. A resumed run
        starts from its own last frame; a run killed before its first frame was written (an empty trajectory)
        has none, and is prepared as a fresh one. What prepared a start is kept beside the trajectory
        (``<traj>.prerelax.json``), so that a resumed run's result still records it."""
        if not refine.prerelax:
            return atoms, None, None
        record = traj + ".prerelax.json"
        if _whole_frames(traj):
            if not os.path.isfile(record):  # prepared before the record was kept
                return atoms, None, None
            with open(record) as fh:
                return atoms, None, json.load(fh)
        if prerelax_calculator is not None:
            calc = prerelax_calculator()
        else:
            from gen2d.relax import cached_calculator

            calc = cached_calculator(refine.prerelax)
        begin, hessian, prepared = prepare_start(atoms, calc, free, hold=hold)
        prepared = {**prepared, "calculator": refine.prerelax}
        write_json_atomic(record, prepared)
        return begin, hessian, prepared

    results: list[SiteResult] = []
    for k, site in enumerate(chosen):
        h_pos = _wrap_into_cell(np.asarray(site["final_position"], float), slab.lattice) + [0.0, 0.0, z_shift]
        if not refine.hold_site:  # a held site starts, and stays, exactly over the cheap recipe's H
            h_pos = h_pos + jitter_offset(k, refine.h_jitter)
        # the directory names the start, so that a cached site is never reused for another one (other site
        # rules or another cheap stage pick another site k)
        tag = site_tag(site, h_pos)
        start_atoms = base.copy()
        start_atoms += Atoms("H", positions=[h_pos])
        start_atoms.pbc = (True, True, False)
        h_index = len(start_atoms) - 1
        free = _free_indices(start_atoms, h_pos, refine.free_radius, n_slab) + [h_index]
        e_slab = float(slab_doc["energy"])
        slab_free_force = None  # with relax_slab_reference, E(slab) has the free atoms relaxed: no such term
        if not refine.relax_slab_reference and slab_forces is not None and len(slab_forces) == n_slab and len(free) > 1:
            slab_free_force = float(np.max(np.linalg.norm(slab_forces[[i for i in free if i != h_index]], axis=1)))
        flags: list[str] = []
        if refine.prerelax:  # another start: its own directories
            tag = f"{tag}-pre-{refine.prerelax}"
        if refine.hold_site:
            tag = f"{tag}-held"
        hold = [h_index] if refine.hold_site else []
        if refine.relax_slab_reference:
            slab_free = [i for i in free if i != h_index]

            def _slab_relaxed(d, slab_free=slab_free):
                _seed_restart(os.path.join(workdir, "slab"), d)  # same atoms, same start: 1-3 SCF steps, not 30
                traj = os.path.join(d, "relax.traj")
                begin, hessian, prepared = _start(base, slab_free, traj)
                chain = _Chain(d, make_calculator, refine.scf_jump_check)
                try:
                    _, e, conv, n = _constrained_bfgs(
                        begin, chain.first, slab_free, refine.fmax, refine.steps, traj, hessian, guard=chain.guard
                    )
                    out = {"energy": e, "converged": conv, "steps": n, "cost": _cost(chain.calc)}
                    if prepared is not None:
                        out["prerelax"] = prepared
                    return out | chain.record()
                except Exception as exc:  # noqa: BLE001 - recorded as a named failure of the site
                    if _failure_name(exc) == "calculator_error":  # a crash, not a result: nothing to cache
                        raise
                    return _failure_doc(exc, chain.calc)
                finally:
                    chain.close()

            ref = cached(f"slab_site_{k}-{tag}", _slab_relaxed)
            if ref.get("energy") is None:
                flags.append(ref.get("failure", "calculator_error"))
            else:
                e_slab = float(ref["energy"])
                if not ref.get("converged", True):
                    flags.append("geometry_not_converged")

        def _site(d, start_atoms=start_atoms, free=free, hold=hold):
            traj = os.path.join(d, "relax.traj")
            begin, hessian, prepared = _start(start_atoms, free, traj, hold)
            chain = _Chain(d, make_calculator, refine.scf_jump_check)
            try:
                final, e, conv, n = _constrained_bfgs(
                    begin, chain.first, free, refine.fmax, refine.steps, traj, hessian, hold=hold, guard=chain.guard
                )
                out = {
                    "energy": e,
                    "converged": conv,
                    "steps": n,
                    "positions": final.positions.tolist(),
                    "cost": _cost(chain.calc),
                }
                if prepared is not None:
                    out["prerelax"] = prepared
                return out | chain.record()
            except Exception as exc:  # noqa: BLE001 - a failed SCF is this site's named failure
                if _failure_name(exc) == "calculator_error":  # a crash, not a result: nothing to cache
                    raise
                return _failure_doc(exc, chain.calc) | {"steps": 0}
            finally:
                chain.close()

        doc = cached(f"site_{k}-{tag}", _site)
        if refine.spin_starts and doc.get("energy") is not None and doc.get("converged"):
            doc = _check_spin_starts(
                os.path.join(workdir, f"site_{k}-{tag}"), doc, start_atoms, free, h_index, make_calculator, refine
            )
        energy = doc.get("energy")
        # set where a lower start's relaxation failed and the energy is that start's single point
        from_start = (doc.get("spin_starts") or {}).get("energy_from_start")
        if from_start is not None:
            flags.append("spin_start_not_relaxed")
        jump_checks = _jump_checks_of(doc)
        if jump_checks and not all(c.get("taken") for c in _final_part_checks(doc)):
            flags.append("scf_jump_unexplained")
        final = start_atoms.copy()
        if doc.get("positions"):
            final.positions = np.asarray(doc["positions"])
        vibrations = None
        if refine.vibrations and energy is not None and doc.get("converged"):
            site_dir = os.path.join(workdir, f"site_{k}-{tag}")
            taken = (doc.get("spin_starts") or {}).get("relaxed_from_start")
            # the solution the site's energy is: where a fresh start took over, its wavefunction and moment on H
            took_over = spin_start_took_over(doc)
            atoms = _with_moment_on(final, h_index, float(taken)) if took_over else final
            wfn_from = _takeover_dir(site_dir, taken, taken) if took_over else site_dir
            vibrations = h2_vib_failure or _site_vibrations(
                site_dir, atoms, h_index, make_calculator, h2_modes, h2_bond, wfn_from
            )
            if from_start is not None and "failure" not in vibrations:
                # the energy is the lower start's single point, the modes are of the relaxation's own solution
                vibrations = {**vibrations, "solution": "the relaxation's own, not the lower start's"}
        if energy is None:
            flags.append(doc.get("failure", "calculator_error"))
            site_flags, nearest, nearest_d, lateral = [], h_index - 1, float("nan"), 0.0
        else:
            site_flags, nearest, nearest_d, lateral = _flag_site(start_atoms, final, h_index, n_components, settings)
            # the cheap recipe's minimum is only a start: where DFT takes the H is the answer, recorded
            site_flags = ["h_moved_site_in_refinement" if f == "h_moved_site" else f for f in site_flags]
            if not doc.get("converged", False):
                flags.append("geometry_not_converged")
        flags += [f for f in site_flags if f not in flags]
        de = None if energy is None or e_slab is None else float(energy) - e_slab - 0.5 * e_h2
        if de is not None and not (settings.dg_h_window[0] <= de + settings.dg_correction <= settings.dg_h_window[1]):
            flags.append("implausible_energy")
        n_surface = surface_counts.get(site.get("face", "top"), 0)
        coverage = 1.0 / (n_surface * na * nb) if n_surface else float("nan")
        results.append(
            SiteResult(
                face=site.get("face", "top"),
                kind=site.get("kind", "?"),
                initial_position=[float(x) for x in h_pos],
                final_position=[float(x) for x in final.positions[h_index]],
                nearest_atom=final.get_chemical_symbols()[nearest],
                nearest_atom_index=int(nearest),
                nearest_distance=float(nearest_d),
                lateral_displacement=float(lateral),
                coverage=coverage,
                energy=None if energy is None else float(energy),
                delta_e_h=de,
                delta_g_h=None if de is None else de + settings.dg_correction,
                converged=bool(doc.get("converged", False)),
                steps=int(doc.get("steps", 0)),
                flags=flags,
                run_dir=os.path.join(workdir, f"site_{k}-{tag}"),
                spin_starts=doc.get("spin_starts"),
                scf_jump_checks=jump_checks,
                vibrations=vibrations,
                slab_free_force=slab_free_force,
                start_delta_g_h=None if site.get("delta_g_h") is None else float(site["delta_g_h"]),
            )
        )
    all_settings = settings.as_dict() | {"refine": refine.as_dict()}
    result = AdsorptionResult(
        sites=results,
        supercell=(na, nb),
        n_slab_atoms=n_slab,
        e_slab=float(slab_doc["energy"]),
        e_h2=float(e_h2),
        h2_bond_length=float(h2_bond),
        settings=all_settings,
        cpu_seconds=time.process_time() - start_cpu,
        gamma_samples_k=gamma_samples_k(slab.lattice, (na, nb)),
    )
    result.wall_seconds = time.perf_counter() - start_wall  # type: ignore[attr-defined]
    return result


def _jump_checks_of(doc: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every SCF-jump check of a site document (its relaxation's and a spin takeover's, in that order), or None when
    neither was guarded (made before ``scf_jump_check`` or without it)."""
    takeover = (doc.get("spin_starts") or {}).get("scf_jump_checks")
    if "scf_jump_checks" not in doc and takeover is None:
        return None
    return [*(doc.get("scf_jump_checks") or []), *(takeover or [])]


def spin_start_took_over(doc: dict[str, Any]) -> bool:
    """Whether a site document's spin check took the site over and relaxed on from the lower start
    (``spin_starts.relaxed_from_start`` names a start, not "failed: …")."""
    taken = (doc.get("spin_starts") or {}).get("relaxed_from_start")
    return bool(taken) and not str(taken).startswith("failed")


def _final_part_checks(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The SCF-jump checks of the relaxation the site's energy comes from: a spin takeover's when one ran, else the
    site's own."""
    if spin_start_took_over(doc):
        return list((doc.get("spin_starts") or {}).get("scf_jump_checks") or [])
    return list(doc.get("scf_jump_checks") or [])


def _close_calculator(calc) -> None:
    """Stop a calculator's process (CP2K's shell) where it has one; a no-op for in-process calculators."""
    close = getattr(calc, "close", None)
    if callable(close):
        close()


def _with_moment_on(atoms: Atoms, index: int, moment: float) -> Atoms:
    """A copy of ``atoms`` whose only initial magnetic moment (μB) is ``moment`` on atom ``index``."""
    out = atoms.copy()
    moments = np.zeros(len(out))
    moments[index] = moment
    out.set_initial_magnetic_moments(moments)
    return out


def _takeover_dir(site_dir: str, taken: str, recorded: str | None) -> str:
    """The folder where a site relaxes on from its fresh start ``taken`` (e.g. "+1"): ``lowest_start_H+1``, or
    ``lowest_start``, the one folder of a takeover made before the folders were named by start, when that takeover
    (``recorded``, the site's ``relaxed_from_start``) was from the same start."""
    import os

    named = os.path.join(site_dir, f"lowest_start_H{float(taken):+g}")
    older = os.path.join(site_dir, "lowest_start")
    same = recorded is not None and recorded == f"{float(taken):+g}"
    return older if same and not os.path.isdir(named) and os.path.isdir(older) else named


def _check_spin_starts(
    site_dir: str,
    doc: dict[str, Any],
    start_atoms: Atoms,
    free: list[int],
    h_index: int,
    make_calculator,
    refine: RefineSettings,
) -> dict[str, Any]:
    """A converged site's geometry recomputed from fresh SCF starts (``refine.spin_starts``); see RefineSettings.

    Each start is a single point in ``site_dir/start_H<moment>/`` (cached), always at the relaxation's own converged
    geometry (``chain_positions`` once a start has taken over), so that every start is compared with the chain's
    energy at one geometry; if the lowest is below it by more than :data:`SPIN_START_TOLERANCE`, the relaxation
    continues in ``site_dir/lowest_start_H<moment>/`` from that start's wavefunction (a start added later that is
    lower still relaxes in its own folder, never on another start's frames). The site document gains
    ``spin_starts`` (energy of every start, eV) and, when a start took over, ``relaxed_from_start``; it is
    rewritten in ``site_dir/result.json``.
    """
    import os

    recorded = {float(k): v for k, v in doc.get("spin_starts", {}).get("energies_eV", {}).items()}
    # a start that failed under older rules (:func:`_stale_failure`) is not recorded: it runs again
    recorded = {m: e for m, e in recorded.items() if e is not None or _cached_start(site_dir, m) is not None}
    if all(m in recorded for m in refine.spin_starts) and "relaxed_from_start" in doc.get("spin_starts", {}):
        return doc
    final = start_atoms.copy()
    final.positions = np.asarray(doc.get("chain_positions", doc["positions"]))
    chain_energy = float(doc.get("chain_energy", doc["energy"]))
    energies: dict[float, float | None] = dict(recorded)
    failures: dict[str, str] = dict(doc.get("spin_starts", {}).get("failures", {}))
    for moment in refine.spin_starts:
        if moment in energies:
            continue
        d = os.path.join(site_dir, f"start_H{moment:+g}")
        one = _cached_start(site_dir, moment)
        if one is None:
            one = _fresh_single_point(d, _with_moment_on(final, h_index, moment), make_calculator)
            one["moment_on_H_muB"] = moment
            write_json_atomic(os.path.join(d, "result.json"), one)
        energies[moment] = one.get("energy")
        if one.get("energy") is None:
            failures[f"{moment:+g}"] = one.get("failure", "calculator_error")
        else:  # a start that failed under older rules and now has an energy
            failures.pop(f"{moment:+g}", None)
    found = {m: e for m, e in energies.items() if e is not None}
    out = dict(doc)
    out["chain_energy"] = chain_energy
    out["chain_positions"] = final.positions.tolist()
    check: dict[str, Any] = {
        "energies_eV": {f"{m:+g}": e for m, e in sorted(energies.items())},
        "chain_energy_eV": chain_energy,
        "tolerance_eV": SPIN_START_TOLERANCE,
        "relaxed_from_start": None,
        "unit": "eV",
    }
    if failures:
        check["failures"] = failures
    if found:
        best = min(found, key=found.get)
        if found[best] < chain_energy - SPIN_START_TOLERANCE:
            d = _takeover_dir(site_dir, f"{best:+g}", (doc.get("spin_starts") or {}).get("relaxed_from_start"))
            os.makedirs(d, exist_ok=True)  # its trajectory goes there even where the calculator keeps no files
            _seed_restart(os.path.join(site_dir, f"start_H{best:+g}"), d)
            probe = _with_moment_on(final, h_index, best)
            chain = _Chain(d, make_calculator, refine.scf_jump_check)
            try:
                again, e, conv, n = _constrained_bfgs(
                    probe,
                    chain.first,
                    free,
                    refine.fmax,
                    refine.steps,
                    os.path.join(d, "relax.traj"),
                    hold=[h_index] if refine.hold_site else (),
                    guard=chain.guard,
                )
                out.update(
                    {"energy": e, "converged": conv, "positions": again.positions.tolist(), "steps": doc["steps"] + n}
                )
                check["relaxed_from_start"] = f"{best:+g}"
                check["steps"] = n
                check["cost"] = _cost(chain.calc)
                check.update(chain.record())
            except Exception as exc:  # noqa: BLE001 - the lower solution's single point stands, flagged
                # the fresh start is a lower SCF solution at the chain's converged geometry: its single point bounds
                # the site's energy from above more tightly than the chain's own energy, so the site takes it; that
                # geometry was relaxed in the other solution, which the flag ``spin_start_not_relaxed`` says
                log.debug("%s: relaxing from the lower start failed", site_dir, exc_info=True)
                check["relaxed_from_start"] = f"failed: {_failure_name(exc)}"
                check["energy_from_start_eV"] = float(found[best])
                check["energy_from_start"] = f"{best:+g}"
                out["energy"] = float(found[best])
            finally:
                chain.close()
    out["spin_starts"] = check
    write_json_atomic(os.path.join(site_dir, "result.json"), out)
    return out


# ----------------------------------------------------------------------------------------------------
# Vibrations: ΔZPE − TΔS of H* from the calculator itself
# ----------------------------------------------------------------------------------------------------

#: K: the temperature of the computed ΔG_H correction (the standard hydrogen electrode's 298.15 K)
STANDARD_TEMPERATURE = 298.15
#: Pa: the H₂ pressure of the standard hydrogen electrode (1 bar)
STANDARD_PRESSURE = 1.0e5
#: Å: the finite-difference step of the harmonic frequencies (ASE ``Vibrations``, central differences)
VIBRATION_DELTA = 0.01
#: cm⁻¹: an H* mode with an imaginary part above this is a saddle, not a minimum
IMAGINARY_TOLERANCE_CM1 = 50.0
#: cm⁻¹: in the entropy of H*, a softer mode counts as this stiff (a quasi-harmonic treatment, ASE's default)
ENTROPY_MODE_FLOOR_CM1 = 100.0


def vibrational_dg_correction(
    h_energies: Sequence[complex],
    h2_energies: Sequence[complex],
    h2_bond: float,
    temperature: float = STANDARD_TEMPERATURE,
    pressure: float = STANDARD_PRESSURE,
) -> dict[str, Any]:
    """ΔG_H − ΔE_H from harmonic vibrations: ΔZPE − TΔS of H* against ½H₂, the terms Nørskov's 0.24 eV stands for.

    Parameters
    ----------
    h_energies : sequence of complex
        The vibrational energies (eV) of H* with the slab held (ASE ``Vibrations.get_energies``, three modes).
    h2_energies : sequence of complex
        Those of H₂ (all six of ``Vibrations`` on both atoms; the stretch is the highest).
    h2_bond : float
        H₂ bond (Å), for its moment of inertia.
    temperature, pressure : float
        K and Pa (default 298.15 K, 1 bar).

    Returns
    -------
    dict
        ``dg_correction_eV`` = ZPE(H*) − ½ZPE(H₂) − T[S(H*) − ½S(H₂)]; every term in eV. S(H₂) is an ideal gas at
        ``pressure`` (ASE ``IdealGasThermo``: translation, rotation with symmetry number 2, vibration). S(H*) is
        quasi-harmonic (ASE ``QuasiHarmonicThermo``): a mode softer than :data:`ENTROPY_MODE_FLOOR_CM1` counts as
        that stiff in the entropy only, since a harmonic entropy diverges as a mode softens (a weakly bound H);
        ZPE keeps the computed frequencies. ``h2_cp_term_eV`` is H₂'s ∫Cp dT from 0 K, which the correction
        leaves out as Nørskov's does (with it, the correction would be lower by half of it).
        ``h_frequencies_cm1`` lists the H* modes, an imaginary one as a negative number. A mode with an imaginary
        part above :data:`IMAGINARY_TOLERANCE_CM1` makes H* a saddle (``saddle: True``, as a held site that is
        not an in-plane minimum often is): it is left out of ZPE and entropy.
    """
    from ase import units
    from ase.thermochemistry import IdealGasThermo, QuasiHarmonicThermo

    to_cm1 = 1.0 / units.invcm
    # cm⁻¹, a mode imaginary beyond the tolerance as a negative number (a smaller imaginary part is noise)
    modes = [complex(e) for e in h_energies]
    frequencies = [
        float(e.real * to_cm1) if abs(e.imag) * to_cm1 <= IMAGINARY_TOLERANCE_CM1 else -abs(e.imag) * to_cm1
        for e in modes
    ]
    imaginary = [-f for f in frequencies if f < 0]
    real = [e.real for e, f in zip(modes, frequencies) if f > 0]
    stretch = max(complex(e).real for e in h2_energies)
    h2 = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, h2_bond]])
    gas = IdealGasThermo([stretch], geometry="linear", atoms=h2, symmetrynumber=2, spin=0)
    zpe_h, zpe_h2 = 0.5 * sum(real), 0.5 * stretch
    floor = ENTROPY_MODE_FLOOR_CM1 * units.invcm
    s_h = QuasiHarmonicThermo(real, raise_to=floor).get_entropy(temperature, verbose=False) if real else 0.0
    # in Pa: ASE's IdealGasThermo divides by its reference pressure in Pa (its default, units.bar, is in eV/Å³)
    s_h2 = gas.get_entropy(temperature, pressure, verbose=False)
    cp_h2 = gas.get_enthalpy(temperature, verbose=False) - zpe_h2
    correction = zpe_h - 0.5 * zpe_h2 - temperature * (s_h - 0.5 * s_h2)
    return {
        "dg_correction_eV": float(correction),
        "zpe_h_eV": float(zpe_h),
        "zpe_h2_eV": float(zpe_h2),
        "ts_h_eV": float(temperature * s_h),
        "ts_h2_eV": float(temperature * s_h2),
        "h2_cp_term_eV": float(cp_h2),
        "h_frequencies_cm1": frequencies,
        "imaginary_modes_cm1": imaginary,
        "h2_frequency_cm1": float(stretch * to_cm1),
        "entropy_mode_floor_cm1": ENTROPY_MODE_FLOOR_CM1,
        "saddle": bool(imaginary),
        "temperature_K": temperature,
        "pressure_Pa": pressure,
        "unit": "eV",
    }


def vibration_energies(atoms: Atoms, indices: Sequence[int], calc, directory: str) -> list[complex]:
    """Harmonic vibrational energies (eV) of the ``indices`` atoms, every other atom held, by ASE's ``Vibrations``
    (central differences of ``calc``'s forces, :data:`VIBRATION_DELTA` Å: the undisplaced geometry and 6 displaced
    ones per atom). Each evaluation is cached in ``directory/vib``, so a killed run goes on where it stopped (one
    process per directory: the lock file a killed evaluation left is removed). Every displaced geometry is also
    appended, with its energy and forces, to ``directory/frames.traj``, training data that
    :func:`gen2d.frames.collect_frames` reads (ASE's cache keeps forces only)."""
    import os

    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.vibrations import Vibrations

    from gen2d.frames import VIBRATION_FRAMES, save_frame

    # the vibrations folder of a site or of H₂ (``<part>/vibrations``), where collect_frames looks
    frames_path = os.path.join(directory, os.path.basename(VIBRATION_FRAMES))

    # a displacement recomputed after a kill (its cache entry lost, its frame kept) is recorded once, and the
    # undisplaced geometry never: it is the relaxation's last frame already
    recorded = [f.positions for f in _whole_frames(frames_path)] if os.path.isfile(frames_path) else []
    recorded.append(np.array(atoms.positions))

    class _Recorded(Vibrations):
        def calculate(self, atoms, disp):
            results = super().calculate(atoms, disp)
            energy = getattr(self.calc, "results", {}).get("energy")
            seen = any(np.allclose(p, atoms.positions, rtol=0.0, atol=1e-8) for p in recorded)
            if energy is not None and not seen:  # the displaced geometry (moved in place) and what the calc gave
                recorded.append(atoms.positions.copy())
                frame = atoms.copy()
                frame.calc = SinglePointCalculator(frame, energy=float(energy), forces=np.array(results["forces"]))
                save_frame(frame, frames_path)
            return results

    work = atoms.copy()
    work.set_constraint()
    work.calc = calc
    vib = _Recorded(work, indices=list(indices), name=os.path.join(directory, "vib"), delta=VIBRATION_DELTA)
    vib.clean(empty_files=True)  # the lock files a killed run left: those displacements run again
    vib.run()
    return [complex(e) for e in vib.get_energies()]


def _energies_of(doc: dict[str, Any]) -> list[complex]:
    return [complex(r, i) for r, i in zip(doc["real_eV"], doc["imag_eV"])]


def _geometry_sha256(atoms: Atoms, indices: Sequence[int]) -> str:
    """What a vibrations cache is valid for: symbols, cell, positions (to 1e-6 Å) and the displaced atoms."""
    import hashlib

    text = "|".join(
        [
            ",".join(atoms.get_chemical_symbols()),
            np.array2string(np.round(np.asarray(atoms.cell), 6), precision=6),
            np.array2string(np.round(atoms.positions, 6), precision=6, threshold=10**9),
            ",".join(map(str, indices)),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _vibrations_part(directory: str, atoms: Atoms, indices: Sequence[int], make_calculator, wfn_from: str) -> dict:
    """The cached ``directory/result.json`` of :func:`vibration_energies` (``real_eV``, ``imag_eV``, cost), or of
    its named failure. Each is valid for one geometry (:func:`_geometry_sha256`, also kept in
    ``directory/geometry.sha256`` while it runs): a cache or half-finished run of another geometry (a site
    relaxed on since, from another spin start) is removed and computed again; the displaced frames already in
    ``directory/frames.traj`` are kept as ``frames-<old geometry>.traj``. The first SCF starts from the
    wavefunction in ``wfn_from``."""
    import os
    import shutil

    from gen2d.frames import VIBRATION_FRAMES

    geometry = _geometry_sha256(atoms, indices)
    path, marker = os.path.join(directory, "result.json"), os.path.join(directory, "geometry.sha256")
    doc = _cached_result(path)
    stored = doc.get("geometry_sha256") if doc is not None else None
    if stored is None and os.path.isfile(marker):
        with open(marker) as fh:
            stored = fh.read().strip()
    if stored is not None and stored != geometry:
        # the cache and result belong to the old geometry. Its displaced frames are DFT energies and forces, kept
        # beside the new ones as frames-<old geometry>.traj (not read as training frames: the old geometry may be
        # another SCF solution, a spin start that lost, at nearly the same positions)
        log.info("%s: vibrations of another geometry; computing them again", directory)
        for entry in os.listdir(directory):
            target = os.path.join(directory, entry)
            if entry == os.path.basename(VIBRATION_FRAMES):
                os.replace(target, os.path.join(directory, f"frames-{stored[:12]}.traj"))
            elif not (entry.startswith("frames-") and entry.endswith(".traj")):
                shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        doc = None
    if doc is not None:
        return doc
    os.makedirs(directory, exist_ok=True)
    with open(marker, "w") as fh:
        fh.write(geometry)
    _seed_restart(wfn_from, directory)
    calc = make_calculator(directory)
    try:
        energies = vibration_energies(atoms, indices, calc, directory)
        doc = {
            "real_eV": [float(e.real) for e in energies],
            "imag_eV": [float(e.imag) for e in energies],
            "n_single_points": 1 + 6 * len(indices),
            "cost": _cost(calc),
        }
    except Exception as exc:  # noqa: BLE001 - a named DFT failure is this part's cached result
        if _failure_name(exc) == "calculator_error":
            raise
        doc = _failure_doc(exc, calc)
    finally:
        _close_calculator(calc)
    doc["geometry_sha256"] = geometry
    write_json_atomic(path, doc)
    return doc


def h2_vibrations_dft(directory: str, make_calculator, box: float = 12.0) -> list[complex]:
    """H₂'s vibrational energies (eV) at the bond :func:`h2_reference_dft` relaxed in ``directory``, by
    ``make_calculator``, from that run's wavefunction; 13 single points, cached in ``directory/vibrations``.

    Raises
    ------
    RefinementFailed
        When an SCF failed in a named way (cached like a result).
    """
    import json
    import os

    with open(os.path.join(directory, "result.json")) as fh:
        bond = float(json.load(fh)["bond"])
    mol = Atoms("H2", positions=[[0, 0, 0], [0, 0, bond]], cell=[box, box, box], pbc=True)
    mol.center()
    doc = _vibrations_part(os.path.join(directory, "vibrations"), mol, [0, 1], make_calculator, directory)
    if doc.get("failure"):
        raise RefinementFailed(doc["failure"], f"H2 vibrations: {doc.get('message', '')}")
    return _energies_of(doc)


def _site_vibrations(
    site_dir: str,
    final: Atoms,
    h_index: int,
    make_calculator,
    h2_energies: Sequence[complex],
    h2_bond: float,
    wfn_from: str,
) -> dict[str, Any]:
    """The computed ΔG_H correction of a converged site (:func:`vibrational_dg_correction`), its H modes computed
    in ``site_dir/vibrations`` (7 single points) from the wavefunction in ``wfn_from`` and cached there; a failed
    SCF is recorded, not fatal (the site keeps its ΔG_H from ``dg_correction``)."""
    import os

    doc = _vibrations_part(os.path.join(site_dir, "vibrations"), final, [h_index], make_calculator, wfn_from)
    if doc.get("failure"):
        return {"failure": doc["failure"], "message": doc.get("message", "")}
    return vibrational_dg_correction(_energies_of(doc), h2_energies, h2_bond)


def h2_reference_dft(
    directory: str, make_calculator, box: float = 12.0, metadata: dict[str, Any] | None = None
) -> tuple[float, float]:
    """E(H₂) (eV) and bond (Å) relaxed by ``make_calculator(directory)``, cached in ``directory/result.json``.

    Unlike :func:`h2_reference` (one in-memory value per MLIP), this is for calculators whose settings
    live in the directory name: a DFT H₂ costs minutes and is shared by every run with those settings.
    ``metadata`` (calculator settings and their hash) goes to ``directory/run.json`` with the frames.
    """
    import json
    import os

    path = os.path.join(directory, "result.json")
    if metadata is not None:
        from gen2d.frames import write_run_metadata

        write_run_metadata(directory, {**metadata, "formula": "H2", "system_kind": "molecule", "box": box})

    def checked(doc: dict[str, Any]) -> tuple[float, float]:
        # every ΔG_H of these settings subtracts this energy: an unrelaxed H₂ is no reference
        if doc.get("converged") is False:
            raise RefinementFailed(
                "geometry_not_converged",
                f"the H2 reference in {directory} did not reach fmax 0.01 eV/Å in {doc.get('steps')} BFGS steps; "
                "delete its result.json to relax it again",
            )
        return float(doc["energy"]), float(doc["bond"])

    if os.path.isfile(path):
        with open(path) as fh:
            return checked(json.load(fh))
    os.makedirs(directory, exist_ok=True)
    calc = make_calculator(directory)
    try:
        mol = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.75]], cell=[box, box, box], pbc=True)
        mol.center()
        final, energy, converged, steps = _constrained_bfgs(
            mol, calc, [0, 1], 0.01, 50, os.path.join(directory, "relax.traj")
        )
    finally:
        _close_calculator(calc)
    bond = float(np.linalg.norm(final.positions[1] - final.positions[0]))
    doc = {
        "energy": energy,
        "bond": bond,
        "converged": converged,
        "steps": steps,
        "energy_unit": "eV",
        "bond_unit": "Å",
    }
    write_json_atomic(path, doc)
    return checked(doc)


def _surface_atom_counts(slab: Structure, settings: AdsorptionSettings) -> dict[str, int]:
    """Surface atoms of each face of the unit cell, as ``AdsorbateSiteFinder`` counts them."""
    _, n_top = _face_sites(slab, settings)
    _, n_bottom = _face_sites(_mirror_z(slab), settings)
    return {"top": n_top, "bottom": n_bottom}


def _seed_restart(src: str, dst: str) -> None:
    """Copy a calculator's wavefunction restart files (CP2K's ``*-RESTART.wfn`` at Γ, ``*-RESTART.kp`` with
    k-points) from ``src`` to ``dst`` if ``dst`` has none of that kind.

    For a DFT run that starts at a geometry another run has converged; a no-op for calculators without one.
    """
    import glob
    import os
    import shutil

    for suffix in ("wfn", "kp"):
        if glob.glob(os.path.join(dst, f"*-RESTART.{suffix}")):
            continue
        for path in glob.glob(os.path.join(src, f"*-RESTART.{suffix}")):
            os.makedirs(dst, exist_ok=True)
            shutil.copy2(path, os.path.join(dst, os.path.basename(path)))


#: Å: how far a cached bare slab's atoms may lie from the slab a rerun builds (:func:`refine_adsorption`). The
#: 2H-WS₂ reference row's slab, rebuilt by the MLIP stage on another machine, lay 2.3e-7 Å from its cached one
SLAB_GEOMETRY_TOLERANCE = 0.01


def _largest_displacement(a: Atoms, b: Atoms) -> float | None:
    """Largest minimum-image distance (Å) between the same atoms of ``a`` and ``b``, or None when their symbols or
    cells (to 1e-4 Å) differ."""
    from ase.geometry import find_mic

    if a.get_chemical_symbols() != b.get_chemical_symbols():
        return None
    if not np.allclose(np.asarray(a.cell), np.asarray(b.cell), atol=1e-4):
        return None
    d, _ = find_mic(a.positions - b.positions, b.cell, b.pbc)
    return float(np.max(np.linalg.norm(d, axis=1))) if len(d) else 0.0


class RefinementFailed(RuntimeError):
    """A part every site needs (the bare slab's single point) failed in a named way (``reason``:
    ``scf_not_converged``, ``dft_aborted``); the failure is cached like a result."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _failure_name(exc: BaseException) -> str:
    """The stored name of a calculator failure, by its class or any base class (``FalseConvergence`` is an
    ``ScfNotConverged``); the classes are matched by name so that this module needs no CP2K plugin."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "ScfNotConverged" in names:
        return "scf_not_converged"
    if "Cp2kAborted" in names:
        return "dft_aborted"
    return "calculator_error"


#: How calculator failures are classified, stored with each cached failure. A cached failure that the current rules
#: would retry is computed again (:func:`_stale_failure`): 1, a CP2K abort on an SCF whose density spread into the
#: vacuum was ``dft_aborted``; 2, it is an SCF failure that climbs the retry ladder (``gen2d_cp2k.scf_diverged``);
#: 3, the ladder has an annealing rung (``ScfFallback.anneal_temperature_k``); 4, a false convergence (CP2K's
#: "converged" with the energy still moving, ``gen2d_cp2k.FalseConvergence``) is restarted once before it fails;
#: 5, a false convergence is named ``scf_not_converged`` (under 4 it was stored as ``calculator_error``); 6, a crash
#: (``calculator_error``: the CP2K process died, a broken pipe) is never cached, for a site as for the slab; 7, the
#: ladder has a rung that converges a slab without the dipole correction before the SCF with it
#: (``ScfFallback.prepare_without_dipole``).
FAILURE_RULES = 7
# CP2K's abort when the surface dipole correction finds no empty plane (in a ``dft_aborted`` message)
_DIPOLE_VACUUM_ABORT = "dipole correction needs more vacuum space"


def _failure_doc(exc: BaseException, calc) -> dict[str, Any]:
    """The cached result of a part (slab, site) whose calculation failed in a named way: no energy, the failure's
    name and message, what the calculator spent (with the SCF rung it reached) and the rules that named it
    (:data:`FAILURE_RULES`, read by :func:`_stale_failure`)."""
    return {
        "energy": None,
        "failure": _failure_name(exc),
        "message": str(exc),
        "cost": _cost(calc),
        "failure_rules": FAILURE_RULES,
    }


def _cost(calc) -> dict[str, Any]:
    """What a calculator reports about its own cost (CP2K: evaluations, SCF steps, wall time, and the SCF
    fallback rung it needed with every retry)."""
    out: dict[str, Any] = {}
    for attr in ("n_evaluations", "wall_seconds", "scf_level"):
        if hasattr(calc, attr):
            out[attr] = getattr(calc, attr)
    if hasattr(calc, "scf_steps"):
        out["scf_steps_total"] = int(sum(calc.scf_steps))
    if getattr(calc, "scf_retries", None):
        out["scf_retries"] = list(calc.scf_retries)
    return out


def _cached_start(site_dir: str, moment: float) -> dict[str, Any] | None:
    """The stored result of a site's fresh SCF start with ``moment`` on H (:func:`_cached_result`)."""
    import os

    return _cached_result(os.path.join(site_dir, f"start_H{moment:+g}", "result.json"))


def _cached_result(path: str) -> dict[str, Any] | None:
    """A part's stored ``result.json`` (slab, site, spin start), or None if there is none or it is a failure that
    the current rules retry (:func:`_stale_failure`)."""
    import json
    import os

    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        one = json.load(fh)
    stale = _stale_failure(one)
    if stale is not None:
        log.info("%s: %s; computing it again", path, stale)
        return None
    return one


def _stale_failure(doc: dict[str, Any]) -> str | None:
    """Why a cached part's failure is computed again, or None when it stands (a result always stands).

    - an SCF failure made before calculators retried a stalled SCF (its cost records no ``scf_level``);
    - an SCF failure from before the ladder's annealing rung (``failure_rules`` < 3); the calculator's ledger
      knows the rung that failed, so the retry goes on from the next one;
    - a false convergence from before such an SCF was restarted once from its own wavefunction (``failure_rules``
      < 4); the calculator's ledger names a route without that restart, so the retry runs on the rung it failed on;
    - a CP2K abort on a diverging SCF (the dipole correction's vacuum check, after the first step) from before
      such aborts went to the retry ladder: under the current rules it climbs the ladder, and an abort at the
      first step, the cell's lack of vacuum, is cached again as ``dft_aborted`` under them;
    - a false convergence stored as ``calculator_error`` (``failure_rules`` < 5, when only the exact class
      ``ScfNotConverged`` was named): the retry names it, and a failure that stands is cached as
      ``scf_not_converged``;
    - any other ``calculator_error`` (``failure_rules`` < 6): a crash of the calculator, cached as a site's or a
      spin start's failure before crashes were re-raised; the retry resumes from the part's last frame;
    - an SCF failure from before the ladder's rung that converges a slab without the dipole correction first
      (``failure_rules`` < 7); the ledger knows the rung that failed, so the retry goes on from the next one.
    """
    failure, cost = doc.get("failure"), doc.get("cost") or {}
    if (
        failure == "calculator_error"
        and doc.get("failure_rules", 1) < 5
        and "false convergence" in str(doc.get("message", ""))
    ):
        return "a false convergence stored as calculator_error, from before it was named scf_not_converged"
    if failure == "calculator_error" and doc.get("failure_rules", 1) < 6:
        return "a calculator crash cached as a failure, from before crashes were re-raised"
    if failure == "scf_not_converged" and "scf_level" not in cost:
        return "an SCF failure from before the SCF fallback ladder"
    if failure == "scf_not_converged" and doc.get("failure_rules", 1) < 3:
        return "an SCF failure from before the ladder's annealing rung (a hotter SCF to start from)"
    if (
        failure == "scf_not_converged"
        and doc.get("failure_rules", 1) < 4
        and "false convergence" in str(doc.get("message", ""))
    ):
        return "a false convergence from before such an SCF was restarted once from its own wavefunction"
    if (
        failure == "dft_aborted"
        and doc.get("failure_rules", 1) < 2
        and _DIPOLE_VACUUM_ABORT in " ".join(str(doc.get("message", "")).split()).lower()
    ):
        return "a CP2K dipole-correction abort from before diverging SCFs went to the SCF fallback ladder"
    if failure == "scf_not_converged" and doc.get("failure_rules", 1) < 7:
        return "an SCF failure from before the ladder's rung that converges without the dipole correction first"
    return None
