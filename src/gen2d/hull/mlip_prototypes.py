"""The ``mlip-prototypes`` reference set: elemental and binary bulk prototypes relaxed with the candidate's MLIP.

Offline and self-consistent (the same MLIP for candidates and references); results are cached per subsystem."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from gen2d.hull.corrections import apply_mp2020, mlip_entry
from gen2d.hull.errors import HullError, ReferenceUnavailable
from gen2d.hull.molecules import BOX_VACUUM, BOXED_PREFIX, MOLECULE_PREFIX, MOLECULE_VERSION, molecule_pairs, molecules
from gen2d.hull.references import _decode_entry
from gen2d.settings import get_settings

log = logging.getLogger(__name__)

# Part of every cache key. Each element's and pair's key also holds a hash of the starts it builds (its
# polymorphs or decorations and their definitions: content_tag), so adding or changing a
# prototype re-keys only the subsystems it touches; bump this when code changes how starts are built or how
# references are relaxed, which that hash does not see.
# v3: alpha-MoO3, ZrSe3/TiS3-type MX3, alpha-S8; v4: their A site limited to the groups that take them;
# v5: patronite VS4 (built as VS4 only); v6: no start denser than MIN_VOLUME_PER_ATOM (changes only pairs among H,
# B, C, N, O and F; the shipped cache's subsystems build exactly as in v5); v7: ice XI (H2O, built for H-O only),
# solid ammonia (NH3, built for H-N only) and solid methane (CH4, built for C-H only); v8: alpha-quartz (built for
# Si-O and Ge-O only); under v8 the keys gained their per-subsystem content hash.
PROTOTYPE_LIBRARY_VERSION = "8"


@dataclass(frozen=True)
class Prototype:
    """A bulk prototype: space group, lattice and Wyckoff sites of template species A (and B).

    ``template`` names the elements (A, or A and B) whose measured crystal ``lattice`` and ``sites`` are. Such a
    prototype is built isotypically: its cell is scaled by the ratio of the covalent A-B (or A-A) bond length of
    the new elements to the template's, so the template compound itself is built exactly as measured, and no
    pair starts closer than 0.65 x its covalent bond length (this only acts on swapped decorations, such as Ti
    on the S-S pair sites of TiS3). The idealised prototypes (no template) are scaled until no pair is shorter
    than its covalent bond length; that rule would stretch a measured crystal with short bonds (an S-S dimer at
    2.04 Å, a Mo=O bond at 1.67 Å) by 3 to 45 %.
    """

    name: str
    spacegroup: str | int
    lattice: tuple[float, ...]  # a, b, c, alpha, beta, gamma (Å, degrees) of the template
    sites: tuple[tuple[str, tuple[float, float, float]], ...]
    symmetric: bool = False  # swapping A and B gives the same structure type
    template: tuple[str, ...] = ()  # elements of the measured structure, e.g. ("Mo", "O"); () = idealised
    # periodic-table groups whose elements take the A site; () = any. Set where only those compounds take the
    # structure: decorated with other cations, an MLIP can put an unphysical phase on the hull (CHGNet puts
    # MoO3-type AlS3 and ZrSe3-type GaSe3 and AlSe3 there, making known-stable Al/Ga selenide layers unstable)
    a_groups: tuple[int, ...] = ()
    # elements that take the A (B) site, for a structure type known in one compound only; () = any
    a_elements: tuple[str, ...] = ()
    b_elements: tuple[str, ...] = ()

    def build(self, a: str, b: str | None = None, min_volume_per_atom: float | None = None) -> Structure:
        """The prototype decorated with elements ``a`` (and ``b``), scaled to their bond lengths, and then to
        at least ``min_volume_per_atom`` Å³ per atom (default :data:`MIN_VOLUME_PER_ATOM`; 0: no floor)."""
        mapping = {"A": a, "B": b or a}
        species = [mapping[s] for s, _ in self.sites]
        coords = [c for _, c in self.sites]
        lat = Lattice.from_parameters(*self.lattice)
        _keep_spacegroup(self.spacegroup)
        s = Structure.from_spacegroup(self.spacegroup, lat, species, coords, tol=1e-3)
        s = s.get_primitive_structure()
        # Shortest contact relative to its covalent bond length. Scaling so that none is below 1 makes FIRE
        # start from a sensible volume, and a compressed start never lands in an MLIP's short-range artefacts.
        closest = min(
            nn.nn_distance / (_radius(site.specie.symbol) + _radius(nn.specie.symbol))
            for site in s
            for nn in s.get_neighbors(site, 6.0)
        )
        if self.template:
            new = [a, b or a][: len(self.template)]
            ratio = sum(_radius(x) for x in new) / sum(_radius(x) for x in self.template)
            ratio = max(ratio, _MIN_CONTACT / closest)
        else:
            ratio = 1.0 / closest
        if ratio != 1.0:
            s.scale_lattice(s.volume * ratio**3)
        floor = MIN_VOLUME_PER_ATOM if min_volume_per_atom is None else min_volume_per_atom
        if s.volume / len(s) < floor:
            s.scale_lattice(floor * len(s))
        return s


#: subsystem names of stacked-layer references start with this (``stacked.Mo-S``)
STACKED_PREFIX = "stacked."
# No pair of an isotypically built prototype starts closer than this fraction of its covalent bond length.
_MIN_CONTACT = 0.65
#: Å³ per atom: no prototype starts denser. Covalent radii let molecular pairs pack absurdly (pyrite H₂F at 0.78,
#: L1₂ H₃F at 0.48 Å³/atom), and an MLIP graph at that density is huge: CHGNet's three-body angles grow as the
#: square of the density, and the pyrite H₂F cell alone took about 7 GB in one evaluation. No crystal at ambient
#: pressure is this dense (diamond 5.7 Å³/atom); of the 41,872 phases of every element pair up to Bi (no noble
#: gases, no lanthanides), 89 start below it, all of them pairs among H, B, C, N, O and F (the densest other
#: starts, fcc and hcp C at 2.48, are kept as they are).
MIN_VOLUME_PER_ATOM = 2.0

#: eV/Å: an unconverged reference relaxation stands for the phase it was settling into (its energy an upper bound of
#: that phase's) only if its last largest force is below this, 20x the references' fmax. Above it the structure was
#: still falling into a hole of the potential: SevenNet-0 took PO₂ in the MoS₂ prototype to 377 eV/Å and 16 eV/atom
#: below its elements, and Ge₂F (CdI₂) to 7 eV/Å and 8 eV/atom. Such a phase is dropped, when relaxed and when read
#: from a cache. No CHGNet reference here ends above 1.3 eV/Å.
UNSETTLED_FMAX = 2.0


def _still_falling(converged: bool | None, final_fmax: float | None) -> bool:
    """A relaxation that stopped unconverged with its largest force above :data:`UNSETTLED_FMAX`."""
    return converged is False and final_fmax is not None and float(final_fmax) > UNSETTLED_FMAX


def settled(entry: Any) -> bool:
    """False for a reference phase whose relaxation stopped unconverged with forces above :data:`UNSETTLED_FMAX`."""
    data = getattr(entry, "data", None) or {}
    return not _still_falling(data.get("converged"), data.get("final_fmax"))


_SPACEGROUPS: dict[str, Any] = {}


def _keep_spacegroup(sg: str | int) -> None:
    """Hold a strong reference to pymatgen's SpaceGroup for ``sg``.

    ``SpaceGroup`` is a monty ``cached_class`` with a *weak* cache, so without this every
    ``Structure.from_spacegroup`` rebuilds the group's operations (~0.3 s; a third of the non-MLIP time
    of a cold element pair). The instance is the one ``from_spacegroup`` would build: same result.
    """
    key = str(sg)
    if key not in _SPACEGROUPS:
        from pymatgen.symmetry.groups import SpaceGroup

        try:
            _SPACEGROUPS[key] = SpaceGroup.from_int_number(int(sg)) if key.isdigit() else SpaceGroup(key)
        except Exception:  # from_spacegroup will raise its own, clearer error
            return


def _radius(symbol: str) -> float:
    from ase.data import atomic_numbers, covalent_radii

    # Metals bond at longer range than their covalent radius suggests; 15 % more starts closer to them.
    r = float(covalent_radii[atomic_numbers[symbol]])
    return r * 1.15 if Element(symbol).is_metal else r


_H = (1 / 3, 2 / 3)
ELEMENT_PROTOTYPES: dict[str, Prototype] = {
    p.name: p
    for p in [
        Prototype("fcc", "Fm-3m", (4, 4, 4, 90, 90, 90), (("A", (0, 0, 0)),)),
        Prototype("bcc", "Im-3m", (3, 3, 3, 90, 90, 90), (("A", (0, 0, 0)),)),
        Prototype("hcp", "P6_3/mmc", (3, 3, 4.9, 90, 90, 120), (("A", (*_H, 0.25)),)),
        Prototype("sc", "Pm-3m", (3, 3, 3, 90, 90, 90), (("A", (0, 0, 0)),)),
        # F-43m with two sites: Fd-3m has two origin choices and would silently give another structure.
        Prototype("diamond", "F-43m", (5.43, 5.43, 5.43, 90, 90, 90), (("A", (0, 0, 0)), ("A", (0.25, 0.25, 0.25)))),
        Prototype("graphite", "P6_3/mmc", (2.46, 2.46, 6.7, 90, 90, 120), (("A", (0, 0, 0.25)), ("A", (*_H, 0.25)))),
        # A7 (alpha-As, Sb, Bi), black phosphorus (A17), trigonal Se/Te helices, alpha-Ga, alpha-B12.
        Prototype("a7", "R-3m", (3.76, 3.76, 10.55, 90, 90, 120), (("A", (0, 0, 0.2271)),)),
        Prototype("black_p", "Cmce", (3.314, 10.48, 4.376, 90, 90, 90), (("A", (0, 0.1017, 0.0806)),)),
        Prototype("helical_chain", "P3_121", (4.366, 4.366, 4.954, 90, 90, 120), (("A", (0.2254, 0, 1 / 3)),)),
        Prototype("alpha_ga", "Cmce", (4.52, 7.66, 4.53, 90, 90, 90), (("A", (0, 0.1549, 0.081)),)),
        Prototype(
            "alpha_b12",
            "R-3m",
            (4.908, 4.908, 12.567, 90, 90, 120),
            (("A", (0.1187, -0.1187, 0.8911)), ("A", (0.1967, -0.1967, 0.0243))),
        ),
        # alpha-N2 packing (Pa-3) for every diatomic element; cell relaxation adapts it.
        Prototype("dimer_crystal", "Pa-3", (5.66, 5.66, 5.66, 90, 90, 90), (("A", (0.0528, 0.0528, 0.0528)),)),
        # Orthorhombic alpha-S8 (A16), crowns of S8 rings, the stable form of sulfur: S. J. Rettig and
        # J. Trotter, Acta Cryst. C 43, 2260 (1987); parameters as in the AFLOW prototype library
        # (A_oF128_70_4h, Mehl et al., Comput. Mater. Sci. 136, S1 (2017)), which uses ORIGIN CHOICE 2 of Fddd:
        # origin choice 1 puts atoms 0.63 Å apart. S-S 2.039-2.058 Å in the rings.
        Prototype(
            "alpha_s8",
            "Fddd:2",
            (10.4646, 12.8660, 24.4860, 90, 90, 90),
            (
                ("A", (0.14415, 0.04732, 0.0486)),
                ("A", (0.29277, 0.2269, 0.25406)),
                ("A", (0.21598, 0.28022, 0.32618)),
                ("A", (0.21405, 0.15761, 0.37947)),
            ),
            template=("S",),
        ),
    ]
}

# Which elemental polymorphs are tried; the lowest MLIP energy per atom is the elemental reference.
_DIATOMIC = {"H", "N", "O", "F", "Cl", "Br", "I"}
_EXTRA_POLYMORPHS = {
    "C": ["graphite"],
    "P": ["black_p", "a7"],
    "As": ["a7", "black_p"],
    "Sb": ["a7"],
    "Bi": ["a7"],
    "S": ["helical_chain", "alpha_s8"],
    "Se": ["helical_chain"],
    "Te": ["helical_chain"],
    "Ga": ["alpha_ga"],
    "B": ["alpha_b12"],
}


def element_polymorphs(symbol: str) -> list[str]:
    """Names of the elemental prototypes tried for ``symbol``."""
    if symbol in _DIATOMIC:
        return ["dimer_crystal"]
    return ["fcc", "bcc", "hcp", "sc", "diamond", *_EXTRA_POLYMORPHS.get(symbol, [])]


BINARY_PROTOTYPES: dict[str, Prototype] = {
    p.name: p
    for p in [
        Prototype("rocksalt", "Fm-3m", (4.2, 4.2, 4.2, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.5, 0.5, 0.5))), True),
        Prototype(
            "zincblende", "F-43m", (5.4, 5.4, 5.4, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.25, 0.25, 0.25))), True
        ),
        Prototype("wurtzite", "P6_3mc", (3.2, 3.2, 5.2, 90, 90, 120), (("A", (*_H, 0)), ("B", (*_H, 0.375))), True),
        Prototype("cscl", "Pm-3m", (3.0, 3.0, 3.0, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.5, 0.5, 0.5))), True),
        Prototype("nias", "P6_3/mmc", (3.6, 3.6, 5.0, 90, 90, 120), (("A", (0, 0, 0)), ("B", (*_H, 0.25)))),
        # Layered AB (h-BN, AA' stacking): graphite-like bulk of a honeycomb monolayer.
        Prototype(
            "hbn_layered", "P6_3/mmc", (2.5, 2.5, 6.66, 90, 90, 120), (("A", (*_H, 0.25)), ("B", (*_H, 0.75))), True
        ),
        Prototype("fluorite", "Fm-3m", (5.46, 5.46, 5.46, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.25, 0.25, 0.25)))),
        Prototype("cdi2", "P-3m1", (4.0, 4.0, 6.8, 90, 90, 120), (("A", (0, 0, 0)), ("B", (*_H, 0.25)))),
        Prototype("mos2_2h", "P6_3/mmc", (3.16, 3.16, 12.3, 90, 90, 120), (("A", (*_H, 0.25)), ("B", (*_H, 0.621)))),
        Prototype("rutile", "P4_2/mnm", (4.6, 4.6, 2.96, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.305, 0.305, 0)))),
        Prototype("pyrite", "Pa-3", (5.42, 5.42, 5.42, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.384, 0.384, 0.384)))),
        Prototype("corundum", "R-3c", (4.76, 4.76, 13.0, 90, 90, 120), (("A", (0, 0, 0.352)), ("B", (0.306, 0, 0.25)))),
        Prototype("l1_2", "Pm-3m", (3.8, 3.8, 3.8, 90, 90, 90), (("A", (0, 0.5, 0.5)), ("B", (0, 0, 0)))),
        # Layered alpha-MoO3 (D0_8, molybdite): L. Kihlborg, Ark. Kemi 21, 357 (1963), here in the Pnma
        # setting (a = 13.855 Å across the layers; Kihlborg's Pbnm has it as b). Coordinates of entry
        # AB3_oP16_62_c_3c-004 of the AFLOW prototype library, which give Kihlborg's Mo-O distances 1.671,
        # 1.733, 1.948 (x2), 2.252 and 2.332 Å (its entry -001 is an older, less accurate determination).
        Prototype(
            "moo3",
            "Pnma",
            (13.855, 3.6964, 3.9628, 90, 90, 90),
            (
                ("A", (0.89836, 0.25, 0.41301)),
                ("B", (0.56487, 0.25, 0.0006)),
                ("B", (0.91343, 0.25, 0.9788)),
                ("B", (0.7786, 0.25, 0.4627)),
            ),
            template=("Mo", "O"),
            a_groups=(6,),  # alpha-MoO3 is the only member of its type
        ),
        # ZrSe3-type MX3 (TiS3, ZrS3, ZrSe3, HfS3...): trigonal-prismatic chains along b with one X2 pair per
        # metal, in layers stacked along c. Template ZrSe3 as given by the AFLOW prototype A3B_mP8_11_3e_e-001
        # (Hicks et al., Comput. Mater. Sci. 199, 110450 (2021)), first solved by W. Kroenert and K. Plieth,
        # Z. Anorg. Allg. Chem. 336, 207 (1965); Se-Se 2.344 Å, Zr-Se 2.72-2.87 Å. TiS3 (S. Furuseth et al.,
        # Acta Chem. Scand. A 29, 623 (1975)) is the same type and is built from this template by isotypic
        # scaling (its own atom coordinates differ: ZrSe3's put the S-S pair at 2.15 Å in TiS3's cell).
        Prototype(
            "tis3",
            "P2_1/m",
            (5.4109, 3.7488, 9.4440, 90, 97.48, 90),
            (
                ("A", (0.285, 0.25, 0.656)),
                ("B", (0.762, 0.25, 0.554)),
                ("B", (0.456, 0.25, 0.174)),
                ("B", (0.888, 0.25, 0.169)),
            ),
            template=("Zr", "Se"),
            a_groups=(4, 5),  # TiS3, ZrS3, ZrSe3, ZrTe3, HfS3, HfSe3 and the Nb/Ta trichalcogenides
        ),
        # Patronite VS4: chains of V along c, each V between eight S of four S2^2- pairs, the V-V distance
        # alternating 2.83 / 3.22 Å. AFLOW prototype A4B_mC40_15_4f_f-001 "VS4 Structure" (Eckert et al., AFLOW
        # Library of Crystallographic Prototypes Part 4, Comput. Mater. Sci. 2024, doi:10.1016/j.commatsci.2024.112988),
        # from R. Allmann, I. Baumann, A. Kutoglu, H. Rösch and E. Hellner, Naturwissenschaften 51, 263 (1964),
        # doi:10.1007/BF00638454, as corrected by Downs (2003). C2/c standard setting; S-S 2.031 and 2.041 Å,
        # V-S 2.38-2.54 Å. 40 atoms in the conventional cell, 20 in the primitive one.
        Prototype(
            "vs4",
            "C2/c",
            (12.72204, 10.42, 6.78, 90, 110.76689, 90),
            (
                ("B", (0.532, 0.848, 0.545)),
                ("B", (0.516, 0.654, 0.529)),
                ("B", (0.722, 0.800, 0.250)),
                ("B", (0.746, 0.933, 0.049)),
                ("A", (0.633, 0.751, 0.883)),
            ),
            template=("V", "S"),
            # Known only as VS4. Decorated with Nb, Ta or Se, CHGNet puts NbS4, TaS4 and TaSe4 on their hulls
            # (0.24, 0.24, 0.20 eV/atom below the v4 hull) and takes the known NbS3 and TaS3 off theirs:
            # phases that do not exist in this structure, so they are not built.
            a_elements=("V",),
            b_elements=("S",),
        ),
        # Ice XI, the proton-ordered form of ice Ih and the ground state of H2O at ambient pressure: Cmc2_1, four
        # molecules in the primitive cell, the dipoles along c. The O framework is ice Ih's (P6_3/mmc, O at 4f,
        # z = 0.06226, a = 4.511, c = 7.346 Å at 243 K: A. Goto, T. Hondoh and S. Mae, J. Chem. Phys. 93, 1412
        # (1990)) in its orthorhombic cell (b = a√3); every H sits on an O···O line at 1.00 Å from its O, in ice
        # XI's order (R. Howe and R. W. Whitworth, J. Chem. Phys. 90, 4450 (1989); C. M. B. Line and R. W.
        # Whitworth, J. Chem. Phys. 104, 10008 (1996): Cmc2_1, a = 4.465, b = 7.859, c = 7.292 Å for D2O at 5 K),
        # whose ice rules the test checks. Without it the H-O pair's best H2O phase (a relaxed rutile start) lies
        # 0.07 eV/atom above ice XI with CHGNet.
        Prototype(
            "ice_xi",
            "Cmc2_1",
            (4.511, 7.813281, 7.346, 90, 90, 90),
            (
                ("A", (0.5, 0.166667, 0.93774)),
                ("A", (0.0, 0.333333, 0.06226)),
                ("B", (0.5, 0.166667, 0.801611)),
                ("B", (0.5, 0.045911, 0.98285)),
                ("B", (0.181134, 0.272955, 0.01715)),
            ),
            template=("O", "H"),
            a_elements=("O",),
            b_elements=("H",),
        ),
        # Solid ammonia (phase I), P2_13: NH3 molecules on the 3-fold axes, each N H-bonded to six others. Neutron
        # diffraction of ND3 at 77 K: N at 4a with u = 0.2127, D at 12b (0.3740, 0.2632, 0.1094), N-D 1.005 Å,
        # D-N-D 110.4 deg (J. W. Reed and P. M. Harris, J. Chem. Phys. 35, 1730 (1961)); a = 5.073 Å for ND3 at
        # 77 K (I. Olovsson and D. H. Templeton, Acta Cryst. 12, 832 (1959)). Without it the H-N pair's
        # idealised prototypes put nothing near NH3: a CHGNet ammonia molecule in a box lies 0.34 eV/atom below
        # their hull.
        Prototype(
            "ammonia",
            "P2_13",
            (5.073, 5.073, 5.073, 90, 90, 90),
            (("A", (0.2127, 0.2127, 0.2127)), ("B", (0.3740, 0.2632, 0.1094))),
            template=("N", "H"),
            a_elements=("N",),
            b_elements=("H",),
        ),
        # Solid methane: C on an fcc lattice, a = 5.88 Å by X-ray at 18-21 K (H. Mooy, Nature 127, 707 (1931)). In
        # phase I the molecules rotate; here every CH4 takes one orientation, its C-H bonds along the cube's <111>
        # (F-43m, H at 16e (x, x, x) with the gas-phase C-H length 1.087 Å), an ordered model of that crystal: the
        # hull needs its energy, which orientational order barely changes. Without it the C-H pair's prototypes
        # put nothing near CH4: a CHGNet methane molecule in a box lies 0.195 eV/atom below their hull.
        Prototype(
            "methane",
            "F-43m",
            (5.88, 5.88, 5.88, 90, 90, 90),
            (("A", (0.0, 0.0, 0.0)), ("B", (0.10673, 0.10673, 0.10673))),
            template=("C", "H"),
            a_elements=("C",),
            b_elements=("H",),
        ),
        # Alpha-quartz, the ground state of SiO2 at ambient conditions: corner-sharing SiO4 tetrahedra in helices
        # along c, P3_221 (left-handed), three formula units per cell. L. Levien, C. T. Prewitt and D. J. Weidner,
        # Am. Mineral. 65, 920 (1980) at 1 atm (AMCSD 0000789): a = 4.916, c = 5.4054 Å, Si (0.4697, 0, 0),
        # O (0.4135, 0.2669, 0.1191) in their origin; here shifted by +2/3 along c into the standard setting
        # (Si at 3a, x 0 2/3). Si-O 1.605 and 1.614 Å, Si-O-Si 143.7 deg. Without it the Si-O pair's best SiO2 is a
        # rutile (stishovite) start, which CHGNet puts 0.20 eV/atom above quartz, and every Si-O layer reads that
        # much too stable (2DMatPedia benchmark: Si-O layers 0.31 eV/atom below DFT on average). GeO2 also
        # crystallises as quartz (metastable against its rutile form, argutite), so it is built for Ge-O as well.
        Prototype(
            "quartz",
            "P3_221",
            (4.916, 4.916, 5.4054, 90, 90, 120),
            (("A", (0.4697, 0.0, 2 / 3)), ("B", (0.4135, 0.2669, 0.1191 + 2 / 3))),
            template=("Si", "O"),
            a_elements=("Si", "Ge"),
            b_elements=("O",),
        ),
    ]
}


def _definition(proto: Prototype) -> list[Any]:
    """What a prototype builds from, for cache keys: its space group, lattice, sites and template (the fields that
    only choose decorations, such as ``a_groups``, are in the decorations themselves)."""
    return [str(proto.spacegroup), list(proto.lattice), [[s, list(c)] for s, c in proto.sites], list(proto.template)]


@dataclass(frozen=True)
class _Crashed:
    """A reference relaxation on which the MLIP itself failed (``calculator_error``), with its message."""

    message: str


def split_key(key: str) -> tuple[str, str, str]:
    """``(settings tag, subsystem, content tag)`` of a reference cache key
    ``<provider>:<settings tag>:<subsystem>[@<content tag>]`` (the content tag is "" in keys without one)."""
    tag, rest = key.split(":", 1)[1].rsplit(":", 1)
    subsystem, _, content = rest.partition("@")
    return tag, subsystem, content


def content_tag(subsystem: str, binary_prototypes: Sequence[str] | None = None) -> str:
    """A hash of what an element's or a pair's reference phases start from, part of its cache key: each polymorph
    or decoration it builds (prototype, A, B) with that prototype's space group, lattice, sites and template, and
    the start rules (:data:`MIN_VOLUME_PER_ATOM`, the minimum contact). A library change re-keys only the
    subsystems whose starts it changes: adding α-quartz re-keys Si-O and Ge-O, not Mo-S."""
    if "-" in subsystem:
        a, b = subsystem.split("-")
        starts = [
            [name, x, y, *_definition(BINARY_PROTOTYPES[name])]
            for name, x, y in binary_decorations(a, b, binary_prototypes)
        ]
    else:
        starts = [[name, *_definition(ELEMENT_PROTOTYPES[name])] for name in element_polymorphs(subsystem)]
    blob = json.dumps([sorted(starts), MIN_VOLUME_PER_ATOM, _MIN_CONTACT], separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def binary_decorations(a: str, b: str, names: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(prototype, A, B) for every prototype and both decorations of an asymmetric one, except decorations
    whose A element is outside the prototype's ``a_groups`` or ``a_elements``, or whose B element is outside its
    ``b_elements``."""
    a, b = sorted((a, b))
    out = []
    for name in names or BINARY_PROTOTYPES:
        proto = BINARY_PROTOTYPES[name]
        for x, y in ((a, b),) if proto.symmetric else ((a, b), (b, a)):
            if proto.a_groups and Element(x).group not in proto.a_groups:
                continue
            if (proto.a_elements and x not in proto.a_elements) or (proto.b_elements and y not in proto.b_elements):
                continue
            out.append((name, x, y))
    return out


def _with_installed_corrections(docs: list[dict[str, Any]], where: Any) -> list[ComputedEntry]:
    """Cached reference entries with the MP2020 corrections of the installed pymatgen.

    A cached entry keeps its MLIP energy (``uncorrected_energy``) and the corrections of the pymatgen that wrote it,
    which the cache key does not name. Every entry gen2d made from an MLIP energy (``data.energy_source`` "mlip")
    has its corrections derived again (``process_entry(clean=True)``, about 3 ms an entry), so a candidate and its
    references are always corrected by the same MP2020 values, whatever pymatgen wrote the cache. An entry MP2020
    now refuses is left out with a warning. Other entries are used as stored."""
    out = []
    for d in docs:
        entry = _decode_entry(d)
        if (entry.data or {}).get("energy_source") != "mlip":
            out.append(entry)
            continue
        before = entry.correction
        try:
            entry = apply_mp2020(entry)
        except HullError as exc:
            log.warning("%s: cached reference %s left out: %s", where, entry.entry_id, exc)
            continue
        if abs(entry.correction - before) > 1e-6:
            log.info(
                "%s: %s corrected by the installed MP2020 (%+.4f eV, was %+.4f)",
                where,
                entry.entry_id,
                entry.correction,
                before,
            )
        out.append(entry)
    return out


class MLIPPrototypesProvider:
    """References relaxed with the candidate's own MLIP: the offline, self-consistent default.

    For a chemical system it relaxes (full cell) every elemental polymorph of
    :func:`element_polymorphs` and every binary prototype of :data:`BINARY_PROTOTYPES` decorated with
    each pair of elements, turns the energies into MP2020-corrected entries and caches them per
    subsystem (one element or one pair) on disk and/or in a store. Ternary and higher prototypes are
    not built: for ternary candidates the hull is an upper bound and E_hull a lower bound.

    Parameters
    ----------
    calculator : ase Calculator
        The MLIP (same one as the candidates'); it must carry ``gen2d_model`` and
        ``gen2d_checkpoint_sha256`` (the cache key).
    cache_dir : path, optional
        Directory for JSON caches; default ``$GEN2D_CACHE/references`` or ``~/.cache/gen2d/references``.
        ``False`` disables the disk cache.
    store : maggma Store, optional
        A connected store to cache in as well (documents keyed by ``ref_key``).
    fmax, steps : float, int
        Full-cell relaxation settings for the reference phases (eV/Å, FIRE steps). Looser than for
        candidates because only their energies enter the hull and a pair of elements needs ~20 of them;
        an under-relaxed reference only raises the hull.
    binary_prototypes : sequence of str, optional
        Subset of :data:`BINARY_PROTOTYPES` names (default: all).
    progress : bool
        Show a progress bar while relaxing a new subsystem.
    batched : bool
        Relax all phases of the missing subsystems together, the MLIP evaluating every still-running
        structure in one batched call per FIRE step (:func:`gen2d.relax.relax_bulk_batch`). Each phase
        keeps its own optimiser, so energies equal the serial path's within float noise; backends
        without a batched evaluator relax serially anyway. Not part of the cache key.
    max_batch : int
        Largest number of structures evaluated together.
    checkpoint_jobs : int
        The missing subsystems of one call are relaxed in chunks of at least this many phases (whole
        subsystems, in order), and each chunk is cached before the next starts, so a stopped run loses at
        most one chunk; 0 relaxes them all together and caches at the end. Not part of the cache key: the
        energies do not depend on the grouping. Default 128 (four lockstep batches of 32).
    shipped : bool or path
        Also read the read-only reference cache shipped with gen2d (``gen2d/assets/references``, built by
        ``scripts/build_reference_cache.py`` for one chemical space; its MANIFEST says how), or the
        given directory. It is keyed exactly like the run-time cache (MLIP checkpoint hash, library
        version, fmax, steps, a hash of the subsystem's own starts), so only an identical setup reads it. ``False``: never.
    stacked_layers : bool or StackedLayerLibrary
        Also add the AA-stacked bulks of database monolayers exfoliated from known parents
        (:mod:`gen2d.hull.stacked`) for every chemical system within the candidate's elements, relaxed
        with the same MLIP and cached per chemical system under their own version and source
        fingerprint. ``True`` (default) reads them from the reference data folder; ``False``: none.
    molecules : bool
        Also add the molecules of every element pair that has them (:mod:`gen2d.hull.molecules`: CF₄, PH₃,
        SF₆, CO₂, …), each alone in a box with its atoms relaxed by the same MLIP: upper bounds of the molecular
        solids the prototypes lack. Cached per pair under their own version (``MOLECULE_VERSION``), apart
        from the prototype library's. Default True.
    """

    name = "mlip-prototypes"
    energy_source = "mlip"

    def __init__(
        self,
        calculator: Any,
        cache_dir: str | os.PathLike | bool | None = None,
        store: Any = None,
        fmax: float = 0.1,
        steps: int = 200,
        binary_prototypes: Sequence[str] | None = None,
        progress: bool = False,
        batched: bool = True,
        max_batch: int = 32,
        shipped: bool | str | os.PathLike = True,
        stacked_layers: bool | Any = True,
        checkpoint_jobs: int = 128,
        molecules: bool = True,
    ):
        self.calculator = calculator
        self.model = getattr(calculator, "gen2d_model", type(calculator).__name__)
        self.checkpoint_sha256 = getattr(calculator, "gen2d_checkpoint_sha256", None)
        if cache_dir is None:
            cache_dir = get_settings().cache_dir / "references"
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.store = store
        self.fmax, self.steps = fmax, steps
        self.binary_prototypes = tuple(binary_prototypes or BINARY_PROTOTYPES)
        unknown = set(self.binary_prototypes) - set(BINARY_PROTOTYPES)
        if unknown:
            raise ValueError(f"unknown binary prototypes {sorted(unknown)}; known: {sorted(BINARY_PROTOTYPES)}")
        self.progress = progress
        self.batched = bool(batched)
        self.max_batch = int(max_batch)
        self.checkpoint_jobs = max(0, int(checkpoint_jobs))
        self._memory: dict[str, list[ComputedEntry]] = {}
        self._content_tags: dict[str, str] = {}
        if shipped is True:
            shipped = Path(__file__).resolve().parents[1] / "assets" / "references"  # gen2d/assets
        self.shipped_dir = Path(shipped) if shipped else None
        self._unsettled_logged: set[str] = set()  # unsettled cached phases already reported
        self.shipped_hits: set[str] = set()  # subsystems read from the shipped cache (provenance)
        if stacked_layers is True:
            from gen2d.hull.stacked import StackedLayerLibrary

            stacked_layers = StackedLayerLibrary()
        # an empty library (no reference data) is kept, not dropped: its description says the set is empty and why,
        # and the E_hull it gives carries the stacked-set version the scorer's `current` expects (dropping it made
        # every such E_hull look out of date, so each score job computed it again)
        self.stacked = None if stacked_layers is None or stacked_layers is False else stacked_layers
        self.molecules = bool(molecules)

    # cache ---------------------------------------------------------------------------------------
    def _model_tag(self) -> str:
        return (self.checkpoint_sha256 or self.model.replace(" ", "_"))[:16]

    def _settings_tag(self) -> str:
        return f"{self._model_tag()}-v{PROTOTYPE_LIBRARY_VERSION}-f{self.fmax:g}-s{self.steps}"

    def _key(self, subsystem: str) -> str:
        if subsystem.startswith(MOLECULE_PREFIX):
            # the molecules have their own version, so a prototype-library change does not re-key them
            return (
                f"{self.name}:{self._model_tag()}-molecules{MOLECULE_VERSION}-f{self.fmax:g}-s{self.steps}:{subsystem}"
            )
        if subsystem.startswith(STACKED_PREFIX):
            from gen2d.hull.stacked import STACKED_VERSION

            return (
                f"{self.name}:{self._settings_tag()}-stacked{STACKED_VERSION}-{self.stacked.fingerprint()}:{subsystem}"
            )
        return f"{self.name}:{self._settings_tag()}:{subsystem}@{self._content_tag(subsystem)}"

    def _content_tag(self, subsystem: str) -> str:
        """:func:`content_tag` of ``subsystem`` under this provider's prototypes (memoised)."""
        tag = self._content_tags.get(subsystem)
        if tag is None:
            tag = self._content_tags[subsystem] = content_tag(subsystem, self.binary_prototypes)
        return tag

    @staticmethod
    def _cache_path(root: Path | None, key: str) -> Path | None:
        """``root/<settings tag>/<subsystem>[@<content tag>].json.gz``: the layout of the run-time and the shipped
        cache."""
        if root is None:
            return None
        tag, subsystem, content = split_key(key)
        return root / tag / f"{subsystem}{'@' + content if content else ''}.json.gz"

    def _cache_file(self, key: str) -> Path | None:
        return self._cache_path(self.cache_dir, key)

    def _same_model(self, doc: dict[str, Any], where: Any) -> bool:
        """Whether a cached document was made by this provider's MLIP as it is installed. The key holds the
        checkpoint's hash, not the package that runs it; the document's ``model`` names both (``CHGNet 0.3.0
        (chgnet 0.4.2)``), so the same weights under another package version are relaxed again, not read."""
        made_by = doc.get("model")
        if made_by is None or made_by == self.model:  # documents written before the field: trusted by their key
            return True
        log.info("%s: references made by %s, not %s; relaxing them again", where, made_by, self.model)
        return False

    def _read_cache(self, key: str) -> list[ComputedEntry] | None:
        if key in self._memory:
            return self._memory[key]
        path = self._cache_file(key)
        if path is not None and path.is_file():
            with gzip.open(path, "rt") as fh:
                doc = json.load(fh)
            if self._same_model(doc, path):
                found = _with_installed_corrections(doc["entries"], path)
                self._memory[key] = found
                return found
        if self.store is not None:
            doc = self.store.query_one({"ref_key": key})
            if doc and self._same_model(doc, f"store {key}"):
                found = _with_installed_corrections(doc["entries"], f"store {key}")
                self._memory[key] = found
                return found
        path = self._cache_path(self.shipped_dir, key)
        if path is not None and path.is_file():
            with gzip.open(path, "rt") as fh:
                doc = json.load(fh)
            # same MLIP, settings and prototypes, or not used at all
            if doc.get("ref_key") == key and self._same_model(doc, path):
                found = _with_installed_corrections(doc["entries"], path)
                self._memory[key] = found
                self.shipped_hits.add(split_key(key)[1])
                return found
        return None

    def _write_cache(self, key: str, subsystem: str, found: list[ComputedEntry]) -> None:
        self._memory[key] = found
        doc = {
            "ref_key": key,
            "provider": self.name,
            "chemsys": subsystem,
            "model": self.model,
            "checkpoint_sha256": self.checkpoint_sha256,
            "entries": [e.as_dict() for e in found],
        }
        path = self._cache_file(key)
        if path is not None:
            from gen2d.fileio import atomic_path

            # a crash never leaves half a file; no time or name in the gzip header, so a rebuild of the same
            # energies writes the same bytes (the shipped cache is in git)
            with (
                atomic_path(path) as tmp,
                open(tmp, "wb") as raw,
                gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
                io.TextIOWrapper(gz, encoding="utf-8") as fh,
            ):
                json.dump(doc, fh)
        if self.store is not None:
            self.store.update([doc], key="ref_key")

    # relaxation ----------------------------------------------------------------------------------
    def _entry_from_result(
        self, structure: Structure, prototype: str, res: Any
    ) -> ComputedStructureEntry | _Crashed | None:
        from pymatgen.io.ase import AseAtomsAdaptor

        # An unconverged energy is an upper bound of the relaxed one: keeping it lowers the hull towards, never
        # past, where the relaxed phase would put it (leaving it out would not lower it at all); a numerical failure is
        # dropped, and a crash of the model is no result at all.
        if res.failure == "calculator_error":  # the model crashed (out of memory, a failed batch): not the phase's
            log.warning("reference %s %s: %s", structure.composition.reduced_formula, prototype, res.message)
            return _Crashed(f"{structure.composition.reduced_formula} ({prototype}): {res.message}")
        if res.failure not in (None, "not_converged"):
            log.info("reference %s %s dropped: %s", structure.composition.reduced_formula, prototype, res.message)
            return None
        if _still_falling(bool(res.converged), res.final_fmax):
            log.info(
                "reference %s %s dropped: still falling after %d steps (max force %.3g eV/Å)",
                structure.composition.reduced_formula,
                prototype,
                res.steps,
                res.final_fmax,
            )
            return None
        relaxed = AseAtomsAdaptor.get_structure(res.atoms)
        if _collapsed(relaxed):
            log.info("reference %s %s dropped: atoms collapsed", relaxed.composition.reduced_formula, prototype)
            return None
        entry = mlip_entry(
            relaxed,
            res.energy,
            model=self.model,
            checkpoint_sha256=self.checkpoint_sha256,
            entry_id=f"gen2d-ref:{relaxed.composition.reduced_formula}:{prototype}",
            data={"prototype": prototype, "converged": res.converged, "steps": res.steps, "final_fmax": res.final_fmax},
        )
        try:
            return apply_mp2020(entry)
        except HullError as exc:
            log.info("reference %s dropped: %s", entry.entry_id, exc)
            return None

    def _relax_phase(
        self, structure: Structure, prototype: str, relax_cell: bool = True
    ) -> ComputedStructureEntry | _Crashed | None:
        """Relax one reference phase serially (the entry, None when it is dropped, :class:`_Crashed` when the MLIP
        failed on it)."""
        from pymatgen.io.ase import AseAtomsAdaptor

        from gen2d.relax import relax_bulk

        res = relax_bulk(
            AseAtomsAdaptor.get_atoms(structure),
            self.calculator,
            fmax=self.fmax,
            steps=self.steps,
            relax_cell=relax_cell,
        )
        return self._entry_from_result(structure, prototype, res)

    def _relax_jobs(
        self, jobs: list[tuple[str, Structure]], label: str
    ) -> list[ComputedStructureEntry | _Crashed | None]:
        """Relax ``(prototype, structure)`` jobs: one entry (None when dropped, :class:`_Crashed` when the MLIP
        failed on it) per job, in order. The crystals relax their cell too, packed molecules
        (``molecular-solid:…``) included; a molecule in its box (``molecule:…``) moves its atoms only."""
        cells = [relaxes_cell(proto) for proto, _ in jobs]
        out: list[ComputedStructureEntry | _Crashed | None] = [None] * len(jobs)
        for relax_cell in (True, False):
            group = [i for i, cell in enumerate(cells) if cell is relax_cell]
            for i, entry in zip(group, self._relax_group([jobs[i] for i in group], label, relax_cell), strict=True):
                out[i] = entry
        return out

    def _relax_group(
        self, jobs: list[tuple[str, Structure]], label: str, relax_cell: bool
    ) -> list[ComputedStructureEntry | _Crashed | None]:
        if not jobs:
            return []
        if not self.batched:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover

                def tqdm(x, **_):
                    return x

            return [
                self._relax_phase(structure, proto, relax_cell)
                for proto, structure in tqdm(jobs, desc=f"references {label}", disable=not self.progress, leave=False)
            ]
        from pymatgen.io.ase import AseAtomsAdaptor

        from gen2d.relax import relax_bulk_batch

        if self.progress:
            log.info("relaxing %d reference phases (%s) in lockstep batches", len(jobs), label)
        results = relax_bulk_batch(
            [AseAtomsAdaptor.get_atoms(s) for _, s in jobs],
            self.calculator,
            fmax=self.fmax,
            steps=self.steps,
            max_batch=self.max_batch,
            relax_cell=relax_cell,
        )
        return [self._entry_from_result(s, proto, res) for (proto, s), res in zip(jobs, results, strict=True)]

    def _subsystem_jobs(self, subsystem: str) -> list[tuple[str, Structure]]:
        if subsystem.startswith(MOLECULE_PREFIX):
            found = molecules(*subsystem[len(MOLECULE_PREFIX) :].split("-"))
            return [(m.name, m.build()) for m in found] + [(m.packed_name, m.build_packed()) for m in found]
        if subsystem.startswith(STACKED_PREFIX):
            from gen2d.hull.stacked import stack_layer

            chemsys = subsystem[len(STACKED_PREFIX) :]
            return [
                (f"stacked:{layer.source_id}", stack_layer(layer.structure))
                for layer in self.stacked.for_chemsys(chemsys)
            ]
        if "-" in subsystem:
            a, b = subsystem.split("-")
            return [
                (name, BINARY_PROTOTYPES[name].build(x, y))
                for name, x, y in binary_decorations(a, b, self.binary_prototypes)
            ]
        return [(name, ELEMENT_PROTOTYPES[name].build(subsystem)) for name in element_polymorphs(subsystem)]

    def _ensure(self, subsystems: Iterable[str]) -> dict[str, list[ComputedEntry]]:
        """Entries of each subsystem (``"Mo"`` or ``"Mo-S"``), relaxing all missing ones together."""
        out: dict[str, list[ComputedEntry]] = {}
        missing: list[str] = []
        for sub in dict.fromkeys(subsystems):
            cached = self._read_cache(self._key(sub))
            if cached is None:
                missing.append(sub)
            else:
                out[sub] = self._settled_only(cached)
        crashed: dict[str, list[str]] = {}
        for chunk in self._checkpoint_chunks({sub: self._subsystem_jobs(sub) for sub in missing}):
            # each chunk is relaxed together and cached before the next starts: a stopped run keeps its chunks
            jobs = [job for sub_jobs in chunk.values() for job in sub_jobs]
            owner = [sub for sub, sub_jobs in chunk.items() for _ in sub_jobs]
            entries = self._relax_jobs(jobs, ", ".join(chunk))
            for sub in chunk:
                mine = [e for e, o in zip(entries, owner, strict=True) if o == sub]
                if any(isinstance(e, _Crashed) for e in mine):
                    # a phase the model crashed on is not a phase that does not exist: caching the subsystem
                    # without it would lower the hull of every later candidate; the next run relaxes it again
                    crashed[sub] = [e.message for e in mine if isinstance(e, _Crashed)]
                    continue
                found = [e for e in mine if e is not None]
                self._write_cache(self._key(sub), sub, found)
                out[sub] = found
        if crashed:
            first = next(iter(crashed.values()))[0]
            raise ReferenceUnavailable(
                "reference_relaxation_failed",
                f"the MLIP failed on {sum(map(len, crashed.values()))} reference phase(s) of {sorted(crashed)}, e.g. "
                f"{first}; those subsystems are not cached and are relaxed again on the next run",
            )
        return out

    def _settled_only(self, entries: list[ComputedEntry]) -> list[ComputedEntry]:
        """``entries`` read from a cache without the phases a cache written before :func:`settled` held; each left
        out once with a warning (new relaxations drop them in :meth:`_entry_from_result`)."""
        kept = []
        for entry in entries:
            if settled(entry):
                kept.append(entry)
            elif entry.entry_id not in self._unsettled_logged:
                self._unsettled_logged.add(entry.entry_id)
                log.warning(
                    "reference %s left out: its relaxation stopped unconverged at max force %.3g eV/Å",
                    entry.entry_id,
                    float(entry.data["final_fmax"]),
                )
        return kept

    def _checkpoint_chunks(self, jobs: dict[str, list]) -> list[dict[str, list]]:
        """The missing subsystems' jobs, grouped in order into chunks of at least ``checkpoint_jobs`` phases (whole
        subsystems; the last chunk may be smaller); everything in one chunk when ``checkpoint_jobs`` is 0."""
        chunks: list[dict[str, list]] = []
        for sub, sub_jobs in jobs.items():
            if not chunks or (self.checkpoint_jobs and sum(map(len, chunks[-1].values())) >= self.checkpoint_jobs):
                chunks.append({})
            chunks[-1][sub] = sub_jobs
        return chunks

    def _subsystems(self, elements: Iterable[str]) -> list[str]:
        elements = sorted(set(elements))
        out = [*elements, *(f"{a}-{b}" for a, b in combinations(elements, 2)), *self.molecule_subsystems(elements)]
        if self.stacked is not None:
            out += [f"{STACKED_PREFIX}{cs}" for cs in self.stacked.chemical_systems(elements)]
        return out

    def molecule_subsystems(self, elements: Iterable[str]) -> list[str]:
        """The molecule subsystems (``molecule.C-S``) of the pairs among ``elements``; none without molecules."""
        return [f"{MOLECULE_PREFIX}{pair}" for pair in molecule_pairs(elements)] if self.molecules else []

    def stacked_entries(self, elements: Iterable[str]) -> list[ComputedEntry]:
        """The stacked-layer references within ``elements`` (cached; empty without a layer library)."""
        if self.stacked is None:
            return []
        subs = [f"{STACKED_PREFIX}{cs}" for cs in self.stacked.chemical_systems(elements)]
        found = self._ensure(subs)
        return [e for sub in subs for e in found[sub]]

    def element_entries(self, symbol: str) -> list[ComputedEntry]:
        """All relaxed polymorphs of ``symbol`` (cached)."""
        return self._ensure([symbol])[symbol]

    def binary_entries(self, a: str, b: str) -> list[ComputedEntry]:
        """All relaxed binary prototypes of the pair (cached)."""
        a, b = sorted((a, b))
        return self._ensure([f"{a}-{b}"])[f"{a}-{b}"]

    def entries(self, elements: Iterable[str]) -> list[ComputedEntry]:
        elements = sorted(set(elements))
        unknown = [el for el in elements if not Element.is_valid_symbol(el)]
        if unknown:
            raise ReferenceUnavailable("unsupported_element", f"unknown element symbols {unknown}")
        subsystems = self._subsystems(elements)
        found_by = self._ensure(subsystems)
        found: list[ComputedEntry] = []
        for sub in subsystems:
            found.extend(found_by[sub])
        return found

    def cached(self, elements: Iterable[str]) -> bool:
        """Whether every reference subsystem of ``elements`` is in a cache already (run-time, store or
        shipped), so that :meth:`entries` relaxes nothing. A caller with a tight budget (the sampler's
        steering reward) asks this first instead of paying for ~20 reference relaxations per new pair."""
        elements = sorted(set(elements))
        if not elements or any(not Element.is_valid_symbol(el) for el in elements):
            return False
        return all(self._read_cache(self._key(sub)) is not None for sub in self._subsystems(elements))

    def prefetch(self, element_sets: Iterable[Iterable[str]]) -> int:
        """Relax, in lockstep runs of ``checkpoint_jobs`` phases each cached as it ends, every subsystem of
        ``element_sets`` not cached yet.

        A scoring batch calls this with its candidates' elements so that all their missing reference
        phases share batched MLIP calls. Returns the number of subsystems that were missing.
        """
        wanted: list[str] = []
        for elements in element_sets:
            elements = sorted(set(elements))
            if any(not Element.is_valid_symbol(el) for el in elements):
                continue
            wanted.extend(self._subsystems(elements))
        wanted = list(dict.fromkeys(wanted))
        missing = [sub for sub in wanted if self._read_cache(self._key(sub)) is None]
        if missing:
            self._ensure(missing)
        return len(missing)

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "energy_source": self.energy_source,
            "model": self.model,
            "checkpoint_sha256": self.checkpoint_sha256,
            "library_version": PROTOTYPE_LIBRARY_VERSION,
            "fmax": self.fmax,
            "steps": self.steps,
            "binary_prototypes": list(self.binary_prototypes),
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "shipped_cache": str(self.shipped_dir) if self.shipped_dir and self.shipped_dir.is_dir() else None,
            "stacked_layers": self.stacked.describe() if self.stacked is not None else None,
            "molecules": {"version": MOLECULE_VERSION, "box_vacuum_A": BOX_VACUUM} if self.molecules else None,
            "unsettled_fmax_eV_per_A": UNSETTLED_FMAX,
        }


def relaxes_cell(prototype: str) -> bool:
    """Whether the reference phase of this prototype name relaxes its cell: every crystal does, packed molecules
    included; a molecule in its box (:data:`gen2d.hull.molecules.BOXED_PREFIX`) moves its atoms only."""
    return not prototype.startswith(BOXED_PREFIX)


def _collapsed(structure: Structure, factor: float = 0.6) -> bool:
    """True when two atoms sit closer than ``factor`` x the sum of covalent radii (an MLIP artefact)."""
    if len(structure) < 2:
        return False
    from ase.data import atomic_numbers, covalent_radii

    radii = np.array([covalent_radii[atomic_numbers[s.specie.symbol]] for s in structure])
    d = structure.distance_matrix + np.eye(len(structure)) * 1e6
    return bool((d < factor * (radii[:, None] + radii[None, :])).any())
