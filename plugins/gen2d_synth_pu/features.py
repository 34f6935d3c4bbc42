"""Feature vector of a monolayer for the PU synthesizability classifier.

Composition statistics from pymatgen element data, simple layer descriptors, and SMACT's charge
neutrality / electronegativity screens. Every feature has a name, so the saved model says what it read.
"""

from __future__ import annotations

import math
import warnings
from functools import cache, lru_cache

import numpy as np
from pymatgen.core import Element, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from pymatgen.symmetry.groups import PointGroup

#: Element properties averaged over the composition (pymatgen ``Element`` attributes, or derived).
ELEMENT_PROPERTIES: tuple[str, ...] = (
    "Z",
    "row",
    "group",
    "X",
    "atomic_radius",
    "mendeleev_no",
    "n_valence",
    "block",
)
#: Statistics of each property over the atoms of the formula (atomic-fraction weighted).
STATISTICS: tuple[str, ...] = ("mean", "std", "min", "max")
#: Layer descriptors; none of them reads the vacuum size, which says more about the database than
#: about the material.
STRUCTURE_FEATURES: tuple[str, ...] = (
    "n_elements",
    "n_sites_primitive",
    "atoms_per_area",
    "thickness",
    "min_bond_ratio",
    "mean_coordination",
    "spacegroup_number",
    "n_point_ops",
)
SMACT_FEATURES: tuple[str, ...] = ("smact_charge_neutral", "smact_electronegativity_ok", "smact_all_metal")

FEATURE_NAMES: tuple[str, ...] = tuple(
    [f"{p}_{s}" for p in ELEMENT_PROPERTIES for s in STATISTICS] + list(STRUCTURE_FEATURES) + list(SMACT_FEATURES)
)

_BLOCK_INDEX = {"s": 0.0, "p": 1.0, "d": 2.0, "f": 3.0}
# A pair closer than this multiple of the summed covalent radii counts as bonded; 1.25 is the
# usual tolerance of covalent-radius bond detection (e.g. ASE's natural cutoffs scaled by ~1.2).
BOND_TOLERANCE = 1.25
FIRST_SHELL = 1.2


class FeatureError(ValueError):
    """A structure whose features cannot be computed; ``reason`` is a snake_case token."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@cache
def element_properties(symbol: str) -> tuple[float, ...]:
    """The ``ELEMENT_PROPERTIES`` of one element, as floats (NaN where pymatgen has no value)."""
    el = Element(symbol)
    group = float(el.group)
    if group <= 2:
        n_valence = group
    elif group >= 13:
        n_valence = group - 10
    else:
        n_valence = group
    values = {
        "Z": float(el.Z),
        "row": float(el.row),
        "group": group,
        "X": float(el.X),  # pymatgen gives NaN for noble gases
        "atomic_radius": float(el.atomic_radius) if el.atomic_radius is not None else math.nan,
        "mendeleev_no": float(el.mendeleev_no) if el.mendeleev_no is not None else math.nan,
        "n_valence": float(n_valence),
        "block": _BLOCK_INDEX.get(el.block, math.nan),
    }
    return tuple(values[p] for p in ELEMENT_PROPERTIES)


@lru_cache(maxsize=4096)
def smact_screens(reduced_formula: str) -> tuple[float, float, float]:
    """SMACT screens of a composition: (charge neutral, neutral and electronegativity-ordered, all metal).

    An elemental layer (graphene, phosphorene) passes both screens: it has no ions to balance.
    """
    from smact.screening import smact_validity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        neutral = smact_validity(reduced_formula, use_pauling_test=False, include_alloys=False)
        en_ok = smact_validity(reduced_formula, use_pauling_test=True, include_alloys=False)
        # include_alloys=True accepts any all-metal composition without an oxidation-state check,
        # so the difference between the two calls is exactly "an alloy SMACT would wave through".
        alloy_ok = smact_validity(reduced_formula, use_pauling_test=False, include_alloys=True)
    return float(neutral), float(en_ok), float(alloy_ok and not neutral)


def _layer_normal(structure: Structure) -> np.ndarray:
    normal = np.cross(structure.lattice.matrix[0], structure.lattice.matrix[1])
    return normal / np.linalg.norm(normal)


def layer_thickness_along_normal(structure: Structure) -> float:
    """Extent of the atoms along the normal of the a×b plane (Å), unwrapping the periodic c axis.

    Fractional c coordinates are shifted so the largest empty gap lies at the cell boundary; this
    keeps a layer that straddles c = 0 in one piece.
    """
    fc = np.sort(np.mod(structure.frac_coords[:, 2], 1.0))
    gaps = np.diff(np.concatenate([fc, [fc[0] + 1.0]]))
    start = fc[(int(np.argmax(gaps)) + 1) % len(fc)]
    frac = structure.frac_coords.copy()
    frac[:, 2] = np.mod(frac[:, 2] - start, 1.0)
    cart = frac @ structure.lattice.matrix
    heights = cart @ _layer_normal(structure)
    return float(heights.max() - heights.min())


def structure_features(structure: Structure) -> dict[str, float]:
    """The ``STRUCTURE_FEATURES`` of one monolayer (a, b in-plane; c the vacuum direction)."""
    n = len(structure)
    area = float(np.linalg.norm(np.cross(structure.lattice.matrix[0], structure.lattice.matrix[1])))
    # pymatgen's CovalentRadius table (Cordero et al. 2008); the empirical atomic radius stands in
    # for the few heavy elements it lacks.
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius

    cov = np.array(
        [CovalentRadius.radius.get(site.specie.symbol) or float(site.specie.atomic_radius or 1.5) for site in structure]
    )
    dists = structure.distance_matrix if n > 1 else np.zeros((1, 1))
    bond_sum = cov[:, None] + cov[None, :]
    if n > 1:
        off = ~np.eye(n, dtype=bool)
        min_bond_ratio = float(np.min((dists / bond_sum)[off]))
    else:
        min_bond_ratio = math.nan
    # First-shell coordination: bonded neighbours (covalent radii) no farther than 1.2 × the nearest
    # one. The shell limit keeps metal–metal contacts such as Mo–Mo at 3.16 Å in MoS2 out of the
    # count, so textbook layers get textbook numbers (Mo 6, S 3, C 3). Images are included: graphene's
    # two-atom cell would otherwise see one neighbour.
    cutoff = float(BOND_TOLERANCE * 2 * cov.max())
    coordination = []
    for i, neighbours in enumerate(structure.get_all_neighbors(cutoff)):
        bonded = [nb.nn_distance for nb in neighbours if nb.nn_distance <= BOND_TOLERANCE * (cov[i] + cov[nb.index])]
        coordination.append(sum(1 for d in bonded if d <= FIRST_SHELL * min(bonded)) if bonded else 0)
    # Counts per primitive cell, so a supercell of a layer gets the same features (and score) as
    # the layer itself: spglib's pure translations give the supercell multiple.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
            sga = SpacegroupAnalyzer(structure, symprec=0.1)
            spg = float(sga.get_space_group_number())
            ops = sga.get_symmetry_operations()
            point_group = sga.get_point_group_symbol()
        n_translations = max(1, sum(1 for op in ops if np.allclose(op.rotation_matrix, np.eye(3))))
        # The order of the crystal's point group, not len(ops)/n_translations: a supercell whose
        # basis breaks a rotation (2×3 of a hexagonal cell) would lose it from the operation list.
        n_point_ops = float(len(PointGroup(point_group).symmetry_ops))
    except Exception:  # spglib gives up on some distorted cells; the model tolerates NaN
        spg, n_point_ops, n_translations = math.nan, math.nan, 1
    return {
        "n_elements": float(len(structure.composition.elements)),
        "n_sites_primitive": n / n_translations,
        "atoms_per_area": n / area,
        "thickness": layer_thickness_along_normal(structure),
        "min_bond_ratio": min_bond_ratio,
        "mean_coordination": float(np.mean(coordination)),
        "spacegroup_number": spg,
        "n_point_ops": n_point_ops,
    }


def composition_features(structure: Structure) -> dict[str, float]:
    """Atomic-fraction-weighted statistics of the ``ELEMENT_PROPERTIES``."""
    comp = structure.composition.fractional_composition
    symbols = [el.symbol for el in comp.elements]
    weights = np.array([comp[s] for s in symbols], dtype=float)
    table = np.array([element_properties(s) for s in symbols], dtype=float)  # (n_el, n_prop)
    out: dict[str, float] = {}
    for j, prop in enumerate(ELEMENT_PROPERTIES):
        col = table[:, j]
        mean = float(np.sum(weights * col))
        out[f"{prop}_mean"] = mean
        out[f"{prop}_std"] = float(math.sqrt(max(np.sum(weights * (col - mean) ** 2), 0.0)))
        out[f"{prop}_min"] = float(np.min(col))
        out[f"{prop}_max"] = float(np.max(col))
    return out


def featurize(structure: Structure) -> np.ndarray:
    """Feature vector (ordered as ``FEATURE_NAMES``) of one monolayer.

    Raises
    ------
    FeatureError
        With a named ``reason`` when the structure cannot be described (empty, disordered, ...).
    """
    if not isinstance(structure, Structure):
        raise FeatureError("not_a_structure", f"expected a pymatgen Structure, got {type(structure).__name__}")
    if len(structure) == 0:
        raise FeatureError("empty_structure", "the structure has no sites")
    if not structure.is_ordered:
        raise FeatureError("partial_occupancy", "disordered sites: the model needs one element per site")
    if not np.all(np.isfinite(structure.cart_coords)) or not np.all(np.isfinite(structure.lattice.matrix)):
        raise FeatureError("non_finite_coordinates", "coordinates or lattice contain NaN or inf")
    if abs(structure.lattice.volume) < 1e-6:
        raise FeatureError("degenerate_lattice", "the lattice has zero volume")
    # Oxidation-state decorations would split "Mo" and "Mo4+" into two keys of the composition.
    structure = structure.copy()
    structure.remove_oxidation_states()
    for el in structure.composition.elements:
        try:
            element_properties(Element(el.symbol).symbol)
        except Exception:  # DummySpecies, "X0+" placeholders, elements with no data
            raise FeatureError("unknown_element", f"no element data for {el}") from None
    values = composition_features(structure)
    values.update(structure_features(structure))
    neutral, en_ok, all_metal = smact_screens(structure.composition.reduced_formula)
    values.update({"smact_charge_neutral": neutral, "smact_electronegativity_ok": en_ok, "smact_all_metal": all_metal})
    return np.array([values[name] for name in FEATURE_NAMES], dtype=float)
