"""2D conventions for gen2d: orientation, validation (ingest and strict), canonical form, content hash.

A monolayer is a pymatgen ``Structure`` with a, b in the xy-plane, c along z, at least 15 Å of vacuum,
and in-plane periodicity only (neighbour lists use pbc = (True, True, False)).

Cutoffs were chosen by measuring on ../shared/data/2dmatpedia_filtered.db (1,224 monolayers):

* ingest contact cutoff: covalent-radius sum + 2.0 Å. 99.1 % of the rows form a component periodic in
  both in-plane directions (sum + 1.0 Å: 84.9 %; sum + 1.5 Å: 94.0 %). Molecular and chain layers
  join through van der Waals contacts at this distance, as they should at the ingest level.
* strict bonding cutoff: 1.25 x covalent-radius sum. 74 % of rows are then one connected layer with
  Larsen dimensionality 2, matching the ~75 % that CrystalNN + Larsen gives on the same data.
* stacked layers: bonded components (1.35 x covalent sum) that fall into z-disjoint groups, two or
  more of them periodic in-plane. At 1.25 x, three MC2D PbFX layers split at their 2.6 Å Pb-F bonds;
  at 1.35 x no MC2D layer is called stacked and 15 hypothetical 2DMatPedia entries are, while a
  MoS2 bilayer (S-S 3.5 Å across the gap, cutoff 2.8 Å) still is.
* strict thickness bound: 10 Å. 90 % of the strictly valid exfoliated (top-down) layers are at most
  9.1 Å thick; the thicker tail is mostly tilted molecular chains.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import covalent_radii
from pymatgen.core import Element, Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from gen2d.neighbors import neighbor_list

DEFAULT_VACUUM = 20.0  # Å, what orient_2d normalises to
MIN_VACUUM = 15.0  # Å, DESIGN minimum for a stored monolayer
VACUUM_GAP_DETECT = 5.0  # Å; bulk graphite's interlayer gap is 3.35 Å, a slab's vacuum is >= 7 Å
OVERLAP_DISTANCE = 0.5  # Å
INGEST_CONTACT_MARGIN = 2.0  # Å added to the covalent sum
STRICT_BOND_SCALE = 1.25  # x covalent sum
STACK_BOND_SCALE = 1.35  # x covalent sum; looser, so long ionic bonds (Pb-F in PbFCl-type) keep a layer whole
STRICT_MAX_THICKNESS = 10.0  # Å
STRICT_MIN_DISTANCE_SCALE = 0.6  # x covalent sum: closer than this is unphysical for a generated layer
MAX_ATOMS_INGEST = 500
PBC_2D = (True, True, False)

#: every named reason a validation can give, with its meaning
REASONS: dict[str, str] = {
    "unreadable_file": "the file could not be parsed as a structure",
    "empty_structure": "the structure has no atoms",
    "too_many_atoms": "more atoms than the configured limit (refused before any graph is built)",
    "degenerate_lattice": "the lattice has zero or non-finite volume",
    "non_finite_coordinates": "a coordinate or lattice entry is NaN or infinite",
    "unknown_element": "a species is not a chemical element",
    "partial_occupancy": "a site is disordered or partially occupied",
    "overlapping_atoms": f"two atoms closer than {OVERLAP_DISTANCE} Å",
    "bulk_crystal": f"no vacuum gap of at least {VACUUM_GAP_DETECT} Å along any lattice direction",
    "vacuum_gap_in_plane": "vacuum along two lattice directions: a wire or chain, not a layer",
    "molecule_in_box": "vacuum along all three lattice directions: a molecule or cluster",
    "stacked_layers": "more than one layer along the vacuum direction",
    "not_periodic_in_plane": "no component is periodic in both in-plane directions under the contact cutoff",
    "isolated_fragment": "a fragment not in contact with the periodic layer",
    "multiple_fragments": "the layer is not one connected component under the bonding cutoff",
    "not_2d_periodic": "the bonded layer is not periodic in both in-plane directions (Larsen dimensionality != 2)",
    "isolated_atoms": "an atom has no bonded neighbour",
    "too_thick": f"the layer is thicker than the bound ({STRICT_MAX_THICKNESS} Å by default)",
    "atoms_too_close": f"two atoms closer than {STRICT_MIN_DISTANCE_SCALE} x their covalent-radius sum",
    "insufficient_vacuum": f"less than {MIN_VACUUM} Å of vacuum",
}


class StructureError(ValueError):
    """A structure that cannot be used, with a named ``reason`` from :data:`REASONS`."""

    def __init__(self, reason: str, message: str = ""):
        self.reason = reason
        self.message = message or REASONS.get(reason, reason)
        super().__init__(f"{reason}: {self.message}")


@dataclass
class Validation:
    """A verdict at one level (``ingest`` or ``strict``); ``reasons`` are names from :data:`REASONS`."""

    level: str
    ok: bool = True
    reasons: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str, message: str = "") -> Validation:
        self.ok = False
        self.reasons.append(reason)
        self.messages.append(message or REASONS.get(reason, reason))
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "ok": self.ok,
            "reasons": list(self.reasons),
            "messages": list(self.messages),
            "metrics": dict(self.metrics),
        }


# ----------------------------------------------------------------------------------------------
# conversion and reading


def to_ase(structure: Structure) -> Atoms:
    """ASE ``Atoms`` with in-plane periodicity only."""
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.pbc = PBC_2D
    return atoms


def from_ase(atoms: Atoms) -> Structure:
    """pymatgen ``Structure`` from ASE ``Atoms`` (a non-periodic c is kept as the vacuum axis)."""
    atoms = atoms.copy()
    atoms.pbc = True  # pymatgen structures are periodic in 3D; the vacuum keeps images apart
    return AseAtomsAdaptor.get_structure(atoms)


def load_structure(path: str | Path) -> Structure:
    """Read one structure from CIF, POSCAR/CONTCAR/.vasp, extxyz/xyz or pymatgen JSON.

    Raises
    ------
    StructureError
        ``unreadable_file`` for a missing, empty, truncated or corrupt file; ``unknown_element`` when
        the parser got as far as an unknown symbol.
    """
    path = Path(path)
    if not path.is_file():
        raise StructureError("unreadable_file", f"{path.name}: no such file")
    if path.stat().st_size == 0:
        raise StructureError("unreadable_file", f"{path.name}: empty file")
    name = path.name.lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name.endswith(".json"):
                return Structure.from_dict(json.loads(path.read_text()))
            if name.endswith((".xyz", ".extxyz")):
                from ase.io import read as ase_read

                return from_ase(ase_read(path, index=0))
            return Structure.from_file(path)
    except StructureError:
        raise
    except Exception as exc:  # parsers raise anything from ValueError to IndexError on junk
        text = f"{type(exc).__name__}: {exc}"[:300]
        lowered = text.lower()
        if (
            ("element" in lowered or "species" in lowered or "symbol" in lowered)
            and "unknown" in lowered
            or "is not a valid element" in lowered
        ):
            raise StructureError("unknown_element", f"{path.name}: {text}") from None
        raise StructureError("unreadable_file", f"{path.name}: {text}") from None


# ----------------------------------------------------------------------------------------------
# geometry helpers


def _interplanar_spacings(lattice: Lattice) -> np.ndarray:
    m = lattice.matrix
    vol = abs(np.linalg.det(m))
    return np.array([vol / np.linalg.norm(np.cross(m[(i + 1) % 3], m[(i + 2) % 3])) for i in range(3)])


def _largest_gap(frac: np.ndarray) -> tuple[float, float]:
    """Largest gap (fraction of the period) in wrapped fractional coordinates, and where it ends."""
    f = np.sort(np.mod(frac, 1.0))
    gaps = np.diff(np.concatenate([f, [f[0] + 1.0]]))
    k = int(np.argmax(gaps))
    return float(gaps[k]), float(f[(k + 1) % len(f)])


def vacuum_gaps(structure: Structure) -> np.ndarray:
    """Largest empty slab (Å) along each lattice direction."""
    d = _interplanar_spacings(structure.lattice)
    frac = structure.frac_coords
    return np.array([_largest_gap(frac[:, i])[0] * d[i] for i in range(3)])


def _cart_from_in_plane(a: np.ndarray, b: np.ndarray, cart: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split Cartesian positions into in-plane fractional (a, b) and height along the normal."""
    n = np.cross(a, b)
    n /= np.linalg.norm(n)
    height = cart @ n
    in_plane = cart - np.outer(height, n)
    basis = np.stack([a, b], axis=1)  # 3x2
    frac_ab, *_ = np.linalg.lstsq(basis, in_plane.T, rcond=None)
    return frac_ab.T, height


def _build_2d(
    a_vec: np.ndarray,
    b_vec: np.ndarray,
    species: Sequence,
    cart: np.ndarray,
    vacuum: float,
    site_properties: dict | None = None,
) -> Structure:
    """A monolayer in the gen2d frame from in-plane vectors and unwrapped Cartesian positions."""
    la, lb = np.linalg.norm(a_vec), np.linalg.norm(b_vec)
    cos_g = float(np.clip(a_vec @ b_vec / (la * lb), -1.0, 1.0))
    sin_g = math.sqrt(max(0.0, 1.0 - cos_g * cos_g))
    frac_ab, height = _cart_from_in_plane(a_vec, b_vec, cart)
    thickness = float(height.max() - height.min())
    c_len = thickness + vacuum
    matrix = np.array([[la, 0.0, 0.0], [lb * cos_g, lb * sin_g, 0.0], [0.0, 0.0, c_len]])
    frac = np.empty((len(species), 3))
    frac[:, :2] = np.mod(frac_ab, 1.0)
    frac[:, :2][np.isclose(frac[:, :2], 1.0, atol=1e-9)] = 0.0
    frac[:, 2] = (height - height.min() + vacuum / 2.0) / c_len
    return Structure(Lattice(matrix), species, frac, site_properties=site_properties)


def orient_2d(structure: Structure, vacuum: float = DEFAULT_VACUUM, vacuum_axis: int | None = None) -> Structure:
    """Put the layer in the gen2d frame: a, b in the xy-plane, c along z, layer centred, vacuum normalised.

    The vacuum axis is the lattice direction with the largest empty gap unless given.
    """
    if vacuum_axis is None:
        vacuum_axis = int(np.argmax(vacuum_gaps(structure)))
    ia, ib = (vacuum_axis + 1) % 3, (vacuum_axis + 2) % 3
    m = structure.lattice.matrix
    frac = structure.frac_coords.copy()
    # unwrap along the vacuum axis so the layer is contiguous
    _, start = _largest_gap(frac[:, vacuum_axis])
    frac[:, vacuum_axis] = np.mod(frac[:, vacuum_axis] - start, 1.0)
    cart = frac @ m
    props = structure.site_properties or None
    return _build_2d(m[ia], m[ib], structure.species, cart, vacuum, props)


def layer_thickness(structure: Structure) -> float:
    """Thickness (Å) of an oriented layer: the z extent of its atoms (unwrapped across the cell)."""
    frac_c = structure.frac_coords[:, 2]
    gap, start = _largest_gap(frac_c)
    extent = (1.0 - gap) * _interplanar_spacings(structure.lattice)[2]
    return float(extent)


def vacuum_thickness(structure: Structure) -> float:
    """Vacuum (Å) along c of an oriented layer."""
    return float(_largest_gap(structure.frac_coords[:, 2])[0] * _interplanar_spacings(structure.lattice)[2])


# ----------------------------------------------------------------------------------------------
# graphs on the 2D-periodic layer


def _radii(numbers: np.ndarray) -> np.ndarray:
    return covalent_radii[numbers]


def bond_edges(structure: Structure, scale: float = STRICT_BOND_SCALE, margin: float = 0.0):
    """Edges (i, j, image shift) of the in-plane periodic graph with cutoff scale*(r_i+r_j)+margin.

    The structure must be oriented (vacuum along c); pbc is (True, True, False).
    """
    atoms = to_ase(structure)
    cut = _radii(atoms.numbers) * scale + margin / 2.0
    i, j, shifts = neighbor_list("ijS", atoms, cut.tolist(), self_interaction=False)
    return i, j, shifts.astype(int)


def _components_and_ranks(n: int, i: np.ndarray, j: np.ndarray, shifts: np.ndarray):
    """Connected components and, for each, the rank of its lattice of cycle translations (0-3)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    ncomp, labels = connected_components(graph, directed=False)
    adj: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n)]
    for a, b, s in zip(i, j, shifts):
        adj[a].append((b, s))
    ranks = []
    for c in range(ncomp):
        root = int(np.flatnonzero(labels == c)[0])
        offset = {root: np.zeros(3, dtype=int)}
        stack, cycles = [root], []
        while stack:
            u = stack.pop()
            for v, s in adj[u]:
                o = offset[u] + s
                if v not in offset:
                    offset[v] = o
                    stack.append(v)
                elif (o - offset[v]).any():
                    cycles.append(o - offset[v])
        ranks.append(int(np.linalg.matrix_rank(np.array(cycles))) if cycles else 0)
    return ncomp, labels, ranks


def _z_groups(structure: Structure, labels: np.ndarray, ncomp: int, tol: float = 0.3) -> int:
    """Number of groups of components whose z ranges do not overlap (layers along the normal)."""
    z = structure.cart_coords[:, 2]
    spans = sorted((z[labels == c].min(), z[labels == c].max()) for c in range(ncomp))
    groups, hi = 0, -np.inf
    for lo, top in spans:
        if lo > hi + tol:
            groups += 1
            hi = top
        else:
            hi = max(hi, top)
    return groups


# ----------------------------------------------------------------------------------------------
# validation


def _basic_checks(structure: Structure, v: Validation, max_atoms: int) -> bool:
    """Checks that need no geometry; False means stop (later checks would be meaningless)."""
    if len(structure) == 0:
        v.fail("empty_structure")
        return False
    if len(structure) > max_atoms:
        v.fail("too_many_atoms", f"{len(structure)} atoms > limit {max_atoms}")
        return False
    m = structure.lattice.matrix
    if not np.all(np.isfinite(m)):
        v.fail("non_finite_coordinates", "non-finite lattice")
        return False
    if not np.all(np.isfinite(structure.frac_coords)):
        v.fail("non_finite_coordinates")
        return False
    if not np.isfinite(structure.volume) or abs(structure.volume) < 1e-3:
        v.fail("degenerate_lattice", f"volume {structure.volume:.3g} Å³")
        return False
    if not structure.is_ordered:
        v.fail("partial_occupancy")
        return False
    for sp in structure.composition.elements:
        if not isinstance(sp, Element) and not hasattr(sp, "element") or getattr(sp, "Z", 0) in (0, None):
            v.fail("unknown_element", f"species {sp!s}")
            return False
    try:
        symbols = {el.symbol for el in structure.composition.element_composition.elements}
        for s in symbols:
            Element(s)
    except Exception as exc:
        v.fail("unknown_element", str(exc))
        return False
    return True


def min_distance(structure: Structure, pbc: tuple[bool, bool, bool] = (True, True, True)) -> float:
    """Smallest interatomic distance (Å), images included."""
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.pbc = pbc
    if len(atoms) == 1 and not any(pbc):
        return math.inf
    d = neighbor_list("d", atoms, 3.0)
    if len(d):
        return float(d.min())
    return math.inf


def validate_ingest(structure: Structure, max_atoms: int = MAX_ATOMS_INGEST) -> Validation:
    """Is this a usable monolayer entry (database row or user file)?

    Checks, in order, each failing with a named reason: atoms present and within ``max_atoms``
    (checked first, so a 10,000-atom file costs nothing), finite lattice and coordinates, ordered
    sites of known elements, no overlap closer than 0.5 Å, vacuum along exactly one direction
    (``bulk_crystal``, ``vacuum_gap_in_plane``, ``molecule_in_box``), one layer along it
    (``stacked_layers``) and periodic in both in-plane directions under the loose contact cutoff
    (``not_periodic_in_plane``, ``isolated_fragment``).
    """
    v = Validation("ingest")
    if not _basic_checks(structure, v, max_atoms):
        return v
    gaps = vacuum_gaps(structure)
    v.metrics["vacuum_gaps"] = [round(float(g), 3) for g in gaps]
    if min_distance(structure) < OVERLAP_DISTANCE:
        return v.fail("overlapping_atoms", f"minimum distance {min_distance(structure):.3f} Å")
    n_vac = int((gaps >= VACUUM_GAP_DETECT).sum())
    if n_vac == 0:
        return v.fail("bulk_crystal", f"largest gap {gaps.max():.2f} Å")
    if n_vac == 3:
        return v.fail("molecule_in_box")
    if n_vac == 2:
        return v.fail("vacuum_gap_in_plane")
    layer = orient_2d(structure, vacuum_axis=int(np.argmax(gaps)))
    v.metrics["thickness"] = round(layer_thickness(layer), 3)
    n = len(layer)
    # stacked layers: bonded components that separate into z-disjoint groups, each periodic in-plane
    i, j, s = bond_edges(layer, STACK_BOND_SCALE)
    ncomp_b, labels_b, ranks_b = _components_and_ranks(n, i, j, s)
    if ncomp_b > 1 and sum(r == 2 for r in ranks_b) >= 2 and _z_groups(layer, labels_b, ncomp_b) >= 2:
        return v.fail("stacked_layers", f"{_z_groups(layer, labels_b, ncomp_b)} layers along the normal")
    i, j, s = bond_edges(layer, 1.0, INGEST_CONTACT_MARGIN)
    ncomp, labels, ranks = _components_and_ranks(n, i, j, s)
    v.metrics["contact_components"] = ncomp
    if max(ranks) < 2:
        return v.fail("not_periodic_in_plane", f"component periodicity ranks {sorted(ranks)}")
    if ncomp > 1:
        n_frag = ncomp - sum(r == 2 for r in ranks)
        if n_frag == 0:  # every piece is itself a periodic sheet (only through the loose contacts)
            where = "at different heights" if _z_groups(layer, labels, ncomp) >= 2 else "at overlapping heights"
            return v.fail("isolated_fragment", f"{ncomp} periodic sheets not in contact with each other, {where}")
        return v.fail("isolated_fragment", f"{n_frag} fragment(s) apart from the layer")
    return v


def strict_verdict(structure: Structure) -> tuple[bool, list[str]]:
    """``validate_strict``'s (ok, reasons) that never raises: a crash of the validator is a failed
    sample with the reason ``validator_error:<ExceptionType>``, never a failed batch."""
    try:
        v = validate_strict(structure)
    except Exception as exc:
        return False, [f"validator_error:{type(exc).__name__}"]
    return bool(v.ok), list(v.reasons)


def validate_strict(
    structure: Structure,
    bond_scale: float = STRICT_BOND_SCALE,
    max_thickness: float = STRICT_MAX_THICKNESS,
    max_atoms: int = MAX_ATOMS_INGEST,
    use_larsen: bool = True,
) -> Validation:
    """Is this one clean monolayer? What a generated structure must pass (after ingest's checks).

    One component under the bonding cutoff, Larsen dimensionality 2 (pymatgen
    ``get_dimensionality_larsen`` on the bonded graph), no isolated atoms, no pair closer than
    0.6 x the covalent sum, thickness at most ``max_thickness`` and vacuum at least 15 Å.
    """
    v = Validation("strict")
    ing = validate_ingest(structure, max_atoms=max_atoms)
    if not ing.ok and ing.reasons[0] in {
        "empty_structure",
        "too_many_atoms",
        "non_finite_coordinates",
        "degenerate_lattice",
        "partial_occupancy",
        "unknown_element",
        "overlapping_atoms",
        "bulk_crystal",
        "molecule_in_box",
        "vacuum_gap_in_plane",
    }:
        for r, m in zip(ing.reasons, ing.messages):
            v.fail(r, m)
        return v
    layer = orient_2d(structure, vacuum_axis=int(np.argmax(vacuum_gaps(structure))))
    n = len(layer)
    thick = layer_thickness(layer)
    vac = vacuum_thickness(structure) if np.argmax(vacuum_gaps(structure)) == 2 else vacuum_gaps(structure).max()
    v.metrics.update(thickness=round(thick, 3), vacuum=round(float(vac), 3))
    if vac < MIN_VACUUM - 1e-6:
        v.fail("insufficient_vacuum", f"{vac:.2f} Å < {MIN_VACUUM} Å")
    if thick > max_thickness:
        v.fail("too_thick", f"{thick:.2f} Å > {max_thickness} Å")
    atoms = to_ase(layer)
    radii = _radii(atoms.numbers)
    ii, jj, dd = neighbor_list("ijd", atoms, (radii * bond_scale).tolist())
    close = dd < STRICT_MIN_DISTANCE_SCALE * (radii[ii] + radii[jj])
    if close.any():
        k = int(np.argmin(dd / (radii[ii] + radii[jj])))
        v.fail("atoms_too_close", f"{atoms[ii[k]].symbol}-{atoms[jj[k]].symbol} at {dd[k]:.2f} Å")
    deg = np.bincount(ii, minlength=n)
    if (deg == 0).any():
        v.fail("isolated_atoms", f"{int((deg == 0).sum())} atom(s) without a bonded neighbour")
    i, j, s = bond_edges(layer, bond_scale)
    ncomp, _, ranks = _components_and_ranks(n, i, j, s)
    v.metrics["components"] = ncomp
    if ncomp > 1:
        v.fail("multiple_fragments", f"{ncomp} components")
    dim = larsen_dimensionality(layer, i, j, s) if use_larsen else max(ranks)
    v.metrics["dimensionality"] = dim
    if dim != 2 and ncomp == 1:
        v.fail("not_2d_periodic", f"dimensionality {dim}")
    return v


def larsen_dimensionality(layer: Structure, i: np.ndarray, j: np.ndarray, shifts: np.ndarray) -> int:
    """pymatgen's Larsen dimensionality of the bonded graph given by edges (i, j, image shift)."""
    from pymatgen.analysis.dimensionality import get_dimensionality_larsen
    from pymatgen.analysis.graphs import StructureGraph

    sg = StructureGraph.from_empty_graph(layer, name="bonds")
    seen = set()
    for a, b, s in zip(i, j, shifts):
        key = (min(a, b), max(a, b), tuple(s if a <= b else -s))
        if key in seen:
            continue
        seen.add(key)
        if a <= b:
            sg.add_edge(int(a), int(b), to_jimage=tuple(int(x) for x in s), warn_duplicates=False)
    return int(get_dimensionality_larsen(sg))


# ----------------------------------------------------------------------------------------------
# identity


def _gauss_reduce(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction of a 2D lattice basis, then gamma in [90, 120] degrees."""
    for _ in range(100):
        if np.linalg.norm(b) < np.linalg.norm(a) - 1e-8:
            a, b = b, a
        mu = round(float(a @ b) / float(a @ a))
        if mu == 0:
            break
        b = b - mu * a
    if a @ b > 1e-8:
        b = -b
    return a, b


def canonicalize(structure: Structure, vacuum: float = DEFAULT_VACUUM) -> Structure:
    """Canonical monolayer: primitive in-plane cell, Gauss-reduced (|a| <= |b|, 90 <= gamma <= 120),
    oriented, centred in z, vacuum normalised, sites sorted by (Z, z, a, b)."""
    layer = orient_2d(structure, vacuum=vacuum)
    try:
        prim = layer.get_primitive_structure(tolerance=0.1, use_site_props=False)
        if len(prim) < len(layer) and int(np.argmax(vacuum_gaps(prim))) >= 0:
            layer = orient_2d(prim, vacuum=vacuum)
    except Exception:  # spglib/pymatgen can fail on odd cells; the oriented cell is still valid
        pass
    m = layer.lattice.matrix
    a, b = _gauss_reduce(m[0].copy(), m[1].copy())
    cart = layer.cart_coords
    out = _build_2d(a, b, layer.species, cart, vacuum)
    order = sorted(
        range(len(out)),
        key=lambda k: (
            out[k].specie.Z,
            round(out.frac_coords[k, 2], 3),
            round(out.frac_coords[k, 0], 4),
            round(out.frac_coords[k, 1], 4),
        ),
    )
    return Structure(out.lattice, [out.species[k] for k in order], out.frac_coords[order])


def _q(x: float, step: float = 0.01) -> int:
    """Quantise on a grid offset by 0.37 step, so round literature values (1.565 Å) sit mid-bin
    rather than on a rounding boundary where float noise would flip them."""
    return int(math.floor(float(x) / step + 0.37))


def content_hash(structure: Structure, cutoff: float = 4.0) -> str:
    """A stable id for a material: ``g2d-`` plus 16 hex digits.

    Built from invariants of the canonical form (reduced formula, 2D cell lengths and angle, per-site
    neighbour-distance fingerprints and heights, up to flipping the layer), so origin, rotation,
    site order and supercell choice do not change it. Distinct materials that the rounding cannot
    tell apart would share an id; uniqueness and novelty therefore use ``StructureMatcher``.
    """
    can = canonicalize(structure)
    atoms = to_ase(can)
    ii, jj, dd = neighbor_list("ijd", atoms, cutoff)
    z = can.cart_coords[:, 2]
    mid = 0.5 * (z.max() + z.min())
    syms = atoms.get_chemical_symbols()
    env = []
    for k in range(len(atoms)):
        mask = ii == k
        neigh = sorted(f"{syms[j]}{_q(d)}" for j, d in zip(jj[mask], dd[mask]))
        env.append((syms[k], neigh))
    heights = sorted((syms[k], _q(z[k] - mid)) for k in range(len(atoms)))
    flipped = sorted((syms[k], _q(mid - z[k])) for k in range(len(atoms)))
    lat = can.lattice
    payload = {
        "formula": can.composition.reduced_formula,
        "nsites": len(can),
        "ab": sorted([_q(lat.a), _q(lat.b)]),
        "gamma": _q(lat.gamma, 0.1),
        "env": sorted(json.dumps(e) for e in env),
        "heights": min(heights, flipped),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return "g2d-" + digest[:16]


def structure_summary(structure: Structure) -> dict[str, Any]:
    """Formula, chemsys, nsites and 2D cell figures of an oriented layer."""
    lat = structure.lattice
    return {
        "formula": structure.composition.reduced_formula,
        "chemsys": structure.composition.chemical_system,
        "nsites": len(structure),
        "a": round(lat.a, 4),
        "b": round(lat.b, 4),
        "gamma": round(lat.gamma, 3),
        "area": round(float(np.linalg.norm(np.cross(lat.matrix[0], lat.matrix[1]))), 4),
        "thickness": round(layer_thickness(structure), 4),
    }
