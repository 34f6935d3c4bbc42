"""Molecules in a box: upper-bound references for the molecular solids the prototype library lacks.

A layer of CF₄, NF₃, GeF₄, BBr₃ or PH₃ molecules competes with the molecular solid of the same molecules, and the
binary prototypes (rocksalt, fluorite, …) have no such phase: against them such a layer sits far below the hull
(docs/scorers/ehull.md measures −0.6 to −1.1 eV/atom for 2DMatPedia's molecular halides). Building every
molecular crystal from its space group, as the library does for ice XI, solid NH₃ and solid CH₄, does not scale to
the hydrides, halides and chalcogenides of the whole p-block.

A molecule alone in a box does. Its energy bounds that of its solid from above, by the lattice (sublimation)
energy, so a molecule reference can lower the hull towards the missing solid, never below it: a layer's E_hull
can only rise towards its true value. A layer of the molecules can still lie below its molecule by as much as
the MLIP binds them to each other (CHGNet: 0.05-0.1 eV/atom in layers of CF₄ and GeF₄, docs/scorers/ehull.md).

Which molecules: a central p-block atom A with n ligands X, in the shape valence-shell electron-pair repulsion
gives it (:data:`SHAPES`):

- hydrides and halides (X = H, F, Cl, Br, I) of groups 13–16: AX₃ planar (BF₃), AX₄ tetrahedral (CF₄, GeF₄),
  AX₃ pyramidal (NF₃, PH₃), AX₂ bent (H₂S, OF₂, SCl₂), AX₄ seesaw (SF₄, TeCl₄); and the hypervalent fluorides and
  chlorides that exist as molecules: PF₅, PCl₅, AsF₅, SbF₅, SbCl₅, and SF₆, SeF₆, TeF₆;
- the diatomics HX and the interhalogens ClF, BrCl, ICl and IBr;
- the chalcogenides of carbon (CO₂, CS₂, CSe₂) and the oxides SO₂, SO₃, SeO₂ and NO₂.

Only compounds that exist at room temperature are built (:data:`RULES` names what is left out and why): a molecule
that does not exist bounds nothing. The MP2020 anion corrections apply to a molecule per anion atom, as to a layer of
the same elements, so they cancel between the two; against the elements they do not, and they make covalent
molecules too stable (PCl₅ against PCl₃ + Cl₂ by about 0.4 eV/atom more than measured), which can only make a layer
that decomposes into such a molecule look less stable than it is.

Every molecule starts at the covalent bond length (Cordero et al., Dalton Trans. 2008, 2832, via ASE) and the
MLIP relaxes the atoms (not the box). The start shape holds the molecule's point group, so the relaxation keeps
it; tests/test_molecule_references.py checks the relaxed bond lengths against experiment.

Not built: transition-metal halides (WF₆, TiCl₄), the T-shaped and square-pyramidal interhalogens (ClF₃, BrF₅, IF₅,
IF₇); the network solids (SiO₂, P₄O₁₀) are bulk prototypes' business.

Packed molecules (version 3). The box is an upper bound far above the solid when the MLIP binds the molecules to each
other, as every MLIP with D3 does: a layer of AsCl₃ molecules then lies below AsCl₃ in its box by its own
intermolecular binding, and so below the hull (SevenNet-0 + D3 on 2DMatPedia's AsCl₃ and PCl₃ layers: −0.05 to
−0.24 eV/atom, where DFT puts them at +0.02 to +0.04). Each molecule is therefore also built as a molecular solid,
one molecule per primitive cell of a face-centred cubic lattice (twelve neighbours, every molecule in one
orientation), its neighbours' nearest atoms at about van der Waals contact, and the MLIP relaxes atoms *and* cell
(:meth:`Molecule.build_packed`). The result is a real periodic structure of that composition, so its energy is still
an upper bound of the MLIP's own molecular crystal: it can only bring the hull down towards the real solid, and it
holds whatever the MLIP, with or without D3, binds between molecules, which the layer of the same molecules holds
too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pymatgen.core import Lattice, Structure

#: Bump when the molecule set or how it is built changes, and with the prototype library's version whenever the entry
#: code the two share changes (mlip_entry, apply_mp2020, the collapse check). It is part of the molecule references'
#: cache key only: a prototype-library change does not re-key them, nor they it.
#: v2: only molecules that exist at room temperature; the seesaw AX₄ (SF₄, TeCl₄)
#: v3: every molecule also packed as a molecular solid (``molecular-solid:…``, cell relaxed)
MOLECULE_VERSION = "3"
#: subsystem names of molecule references start with this (``molecule.F-Ge``)
MOLECULE_PREFIX = "molecule."
#: Å of vacuum between a molecule's periodic images, more than any MLIP cutoff (≤ 6 Å): the box holds one molecule.
BOX_VACUUM = 10.0
#: prototype names of the molecules in their boxes start with this (``molecule:CF4``); they relax their atoms only
BOXED_PREFIX = "molecule:"
#: prototype names of the packed molecular solids start with this (``molecular-solid:AsCl3``); they relax their cell
PACKED_PREFIX = "molecular-solid:"
#: the start's closest contact between atoms of neighbouring molecules, as a fraction of the sum of the two atoms'
#: van der Waals radii (Bondi, via ASE): molecular crystals pack their halogens at 0.9–1.0 of it (Cl···Cl 3.3–3.5 Å)
PACKED_CONTACT = 0.95


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _pyramid(angle_deg: float, n: int = 3) -> list[np.ndarray]:
    """n bonds about -z with the given angle between any two (C_nv), from the bond-axis tilt that gives it."""
    # for bonds at tilt θ from the axis, spaced 2π/n around it: cos(angle) = cos²θ + sin²θ·cos(2π/n)
    c, phi = math.cos(math.radians(angle_deg)), 2 * math.pi / n
    cos_t = math.sqrt(max(0.0, (c - math.cos(phi)) / (1 - math.cos(phi))))  # 0 for a planar angle (120° at n = 3)
    sin_t = math.sqrt(1 - cos_t**2)
    return [np.array([sin_t * math.cos(k * phi), sin_t * math.sin(k * phi), -cos_t]) for k in range(n)]


#: Bond directions from the central atom, per shape (the point group each start holds).
SHAPES: dict[str, list[np.ndarray]] = {
    "diatomic": [np.array([0.0, 0.0, 1.0])],  # C∞v / D∞h
    "linear": [np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -1.0])],  # D∞h: CO₂
    # C2v, started at water's angle; the relaxation finds each molecule's own (H₂S 92°, SO₂ 119°)
    "bent": [
        _unit([math.sin(math.radians(52.25)), 0, math.cos(math.radians(52.25))]),
        _unit([-math.sin(math.radians(52.25)), 0, math.cos(math.radians(52.25))]),
    ],
    "trigonal_planar": _pyramid(120.0),  # D3h: the pyramid flattened
    "trigonal_pyramidal": _pyramid(100.0),  # C3v, between NH₃ (107°) and AsH₃ (92°)
    "tetrahedral": [_unit(v) for v in ([1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1])],  # Td
    # D3h: three equatorial bonds and two axial ones
    "trigonal_bipyramidal": [*_pyramid(120.0), np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.0, -1.0])],
    "octahedral": [np.array(v, float) for v in ([1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1])],
    # C2v with the lone pair along -x: two equatorial bonds 102° apart, two axial ones bent 3.5° away from the lone
    # pair (SF₄: 101.6° and 173.1°)
    "seesaw": [
        np.array([math.cos(math.radians(51)), math.sin(math.radians(51)), 0.0]),
        np.array([math.cos(math.radians(51)), -math.sin(math.radians(51)), 0.0]),
        np.array([math.sin(math.radians(3.5)), 0.0, math.cos(math.radians(3.5))]),
        np.array([math.sin(math.radians(3.5)), 0.0, -math.cos(math.radians(3.5))]),
    ],
}


#: Every molecule built: (central atoms, ligands, ligand count, shape). Only compounds that exist at room temperature,
#: alone, as dimers (Al₂Cl₆, B₂H₆) or in molecular solids (SeCl₄), so each is an upper bound of a real solid. Left
#: out as not existing or not lasting: BrF and IF (they disproportionate), the lead hydride and tetrahalides,
#: NBr₃ and NI₃, BiH₃, AsCl₅ (decomposes above −50 °C), and the dihalides of S, Se and Te but SCl₂.
RULES: tuple[tuple[str, str, int, str], ...] = (
    ("H", "F Cl Br I", 1, "diatomic"),
    ("Cl", "F", 1, "diatomic"),
    ("Br", "Cl", 1, "diatomic"),
    ("I", "Cl Br", 1, "diatomic"),
    ("B", "H F Cl Br I", 3, "trigonal_planar"),
    ("Al Ga In", "F Cl Br I", 3, "trigonal_planar"),
    ("C Si Ge Sn", "H F Cl Br I", 4, "tetrahedral"),
    ("N", "H F Cl", 3, "trigonal_pyramidal"),
    ("P As Sb", "H F Cl Br I", 3, "trigonal_pyramidal"),
    ("Bi", "F Cl Br I", 3, "trigonal_pyramidal"),
    ("P Sb", "F Cl", 5, "trigonal_bipyramidal"),
    ("As", "F", 5, "trigonal_bipyramidal"),
    ("O S Se Te", "H", 2, "bent"),
    ("O", "F Cl", 2, "bent"),
    ("S", "Cl", 2, "bent"),
    ("S", "F", 4, "seesaw"),
    ("Se", "F Cl", 4, "seesaw"),
    ("Te", "F Cl Br I", 4, "seesaw"),
    ("S Se Te", "F", 6, "octahedral"),
    ("C", "O S Se", 2, "linear"),
    ("S Se N", "O", 2, "bent"),
    ("S", "O", 3, "trigonal_planar"),
)
_BUILT: dict[tuple[str, str], list[tuple[int, str]]] = {}
for _centrals, _ligands, _n, _shape in RULES:
    for _c in _centrals.split():
        for _x in _ligands.split():
            _BUILT.setdefault((_c, _x), []).append((_n, _shape))


@dataclass(frozen=True)
class Molecule:
    """A molecule AXₙ: central atom, ligand, ligand count and shape."""

    central: str
    ligand: str
    n: int
    shape: str

    @property
    def formula(self) -> str:
        return f"{self.central}{self.ligand}{self.n if self.n > 1 else ''}"

    @property
    def name(self) -> str:
        """The reference's prototype name (``molecule:CF4``)."""
        return f"{BOXED_PREFIX}{self.formula}"

    def atoms_and_positions(self) -> tuple[list[str], np.ndarray]:
        from ase.data import atomic_numbers, covalent_radii

        bond = float(covalent_radii[atomic_numbers[self.central]] + covalent_radii[atomic_numbers[self.ligand]])
        directions = SHAPES[self.shape]
        if len(directions) != self.n:
            raise ValueError(f"shape {self.shape} has {len(directions)} bonds, {self.formula} needs {self.n}")
        species = [self.central, *[self.ligand] * self.n]
        positions = np.vstack([np.zeros(3), *[bond * d for d in directions]])
        return species, positions

    @property
    def packed_name(self) -> str:
        """The packed molecular solid's prototype name (``molecular-solid:CF4``)."""
        return f"{PACKED_PREFIX}{self.formula}"

    def build_packed(self, contact: float = PACKED_CONTACT) -> Structure:
        """The molecule packed as a molecular solid: one molecule per primitive cell of a face-centred cubic lattice,
        the lattice the smallest whose closest contact between atoms of neighbouring molecules is ``contact`` times
        the sum of their van der Waals radii (the molecule's orientation as built, the same in every cell).

        The MLIP relaxes atoms and cell from here (:mod:`gen2d.hull.mlip_prototypes`), so the start only has to be
        near contact, neither overlapping nor beyond the MLIP's cutoff."""
        from ase.data import atomic_numbers, vdw_radii

        species, positions = self.atoms_and_positions()
        radii = np.array([float(vdw_radii[atomic_numbers[e]]) for e in species])
        unit = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]) * math.sqrt(2.0)  # nn distance 1
        images = [np.array(v) for v in ((i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1))]
        images = [v for v in images if v.any()]
        need = contact * (radii[:, None] + radii[None, :])

        def too_close(scale: float) -> bool:
            for v in images:
                shift = (v @ unit) * scale
                gap = np.linalg.norm(positions[:, None, :] - (positions[None, :, :] + shift), axis=-1)
                if (gap < need).any():
                    return True
            return False

        low, high = 0.5, 30.0  # nearest-neighbour distance (Å) between molecular centres: bisect to contact
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if too_close(mid) else (low, mid)
        lattice = Lattice(unit * high)
        return Structure(lattice, species, positions, coords_are_cartesian=True)

    def build(self, vacuum: float = BOX_VACUUM) -> Structure:
        """The molecule, centred in a cubic box with ``vacuum`` Å between its periodic images."""
        species, positions = self.atoms_and_positions()
        extent = float((positions.max(axis=0) - positions.min(axis=0)).max())
        edge = extent + vacuum
        centred = positions - (positions.max(axis=0) + positions.min(axis=0)) / 2 + edge / 2
        return Structure(Lattice.cubic(edge), species, centred, coords_are_cartesian=True)


def molecules(a: str, b: str) -> list[Molecule]:
    """The molecules of the element pair ``a``–``b`` (either order) that :data:`RULES` builds."""
    a, b = sorted((a, b))
    return [
        Molecule(central, ligand, n, shape)
        for central, ligand in ((a, b), (b, a))
        for n, shape in _BUILT.get((central, ligand), [])
    ]


def molecule_pairs(elements) -> list[str]:
    """The ``A-B`` pairs (sorted symbols) among ``elements`` that have molecules."""
    from itertools import combinations

    return [f"{a}-{b}" for a, b in combinations(sorted(set(elements)), 2) if molecules(a, b)]
