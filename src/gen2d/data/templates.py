"""Built-in template library: real 2D monolayers built from literature lattice constants.

Each template fixes a lattice family and an atom count for template-driven generation, and gives the
scorers a set of known materials to check themselves against.

Geometry sources, in order of preference:

* the experimental bulk crystal (in-plane lattice and, where the refinement is well known, the
  internal coordinate that sets the layer height), cited by author, journal and year;
* the Materials Cloud MC2D database (Mounet et al., Nat. Nanotechnol. 13, 246 (2018),
  DOI 10.1038/s41565-017-0035-5): PBE-relaxed monolayers exfoliated from ICSD/COD parents, cited by the
  parent's database id; used for heights that are not in a refinement we can quote, and for whole
  structures (low-symmetry 1T' layers, halides);
* first-principles papers or 2DMatPedia (Zhou et al., Sci. Data 6, 86 (2019)) for elemental layers
  that have no bulk parent;
* for MXenes, the M–X slab of the parent MAX phase; terminations on the fcc hollow site.

Every template is in the gen2d frame: a, b in the xy-plane, c along z, the layer centred in z,
``vacuum`` Å of empty space (default 20, never below 15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pymatgen.core import Lattice, Structure

DEFAULT_VACUUM = 20.0  # Å; the gen2d default (DESIGN, "2D conventions")
MIN_VACUUM = 15.0  # Å; DESIGN minimum for a stored monolayer

#: one site of a template: element, fractional coordinate along a, along b, height z (Å) from the mid-plane
Site = tuple[str, float, float, float]

MC2D = "MC2D (Mounet et al., Nat. Nanotechnol. 13, 246 (2018), DOI 10.1038/s41565-017-0035-5)"

# in-plane positions of the three close-packed stacking sites of a hexagonal (gamma = 120 deg) cell
_A = (0.0, 0.0)
_B = (1.0 / 3.0, 2.0 / 3.0)
_C = (2.0 / 3.0, 1.0 / 3.0)


@dataclass(frozen=True)
class TemplateSpec:
    """A literature monolayer: its in-plane lattice, its sites and where they come from.

    Parameters
    ----------
    name
        Unique name, e.g. ``"MoS2-2H"``.
    family
        Prototype family, e.g. ``"MX2-2H"``, ``"MX2-1T"``, ``"hBN"``, ``"MXene-M2X"``.
    formula
        Reduced formula of the layer.
    a, b, gamma
        In-plane lattice: lengths in Å, angle in degrees. ``b`` is None when it equals ``a``.
    citation
        Source of the lattice and of the internal coordinates.
    experimental
        True when the monolayer itself has been made (exfoliated or grown); the reference is in
        ``notes``. False for layers known only as part of a bulk crystal or only with other
        surface terminations.
    notes
        Caveats: experimental realisation, idealisations, values that are computed rather than
        measured.
    sites
        ``(element, frac_a, frac_b, z)`` with z the height in Å above the layer's mid-plane.
    """

    name: str
    family: str
    formula: str
    a: float
    b: float | None
    gamma: float
    citation: str
    experimental: bool
    notes: str = ""
    sites: tuple[Site, ...] = ()

    @property
    def b_length(self) -> float:
        """The second in-plane lattice length (Å)."""
        return self.a if self.b is None else self.b

    @property
    def thickness(self) -> float:
        """Height (Å) between the lowest and the highest atom of the layer."""
        z = [site[3] for site in self.sites]
        return max(z) - min(z)


# ------------------------------------------------------------------------------------------------
# prototype builders: each turns a handful of literature parameters into the site list
# ------------------------------------------------------------------------------------------------


def _mx2_2h(metal: str, chalcogen: str, h: float) -> tuple[Site, ...]:
    """Trigonal-prismatic MX2 (P-6m2): both X layers sit over the same hollow; h is the X–X height."""
    return ((metal, *_B, 0.0), (chalcogen, *_C, h / 2), (chalcogen, *_C, -h / 2))


def _mx2_1t(metal: str, anion: str, h: float) -> tuple[Site, ...]:
    """Octahedral MX2 / CdI2 type (P-3m1): the X layers sit over opposite hollows; h is the X–X height."""
    return ((metal, *_A, 0.0), (anion, *_B, h / 2), (anion, *_C, -h / 2))


def _honeycomb(first: str, second: str, buckling: float = 0.0) -> tuple[Site, ...]:
    """Two-site honeycomb (graphene, h-BN, silicene ...); buckling is the height between sublattices."""
    return ((first, *_B, buckling / 2), (second, *_C, -buckling / 2))


def _gas_type(metal: str, chalcogen: str, z_metal: float, z_chalcogen: float) -> tuple[Site, ...]:
    """X–M–M–X quadruple layer of GaS / GaSe / InSe (P-6m2); z are the heights of M and X."""
    return (
        (metal, *_C, z_metal),
        (metal, *_C, -z_metal),
        (chalcogen, *_B, z_chalcogen),
        (chalcogen, *_B, -z_chalcogen),
    )


def _bii3_type(metal: str, halogen: str, a: float, bond: float) -> tuple[Site, ...]:
    """BiI3-type MX3 (P-31m): a CdI2 layer in a sqrt3 x sqrt3 cell with one metal site in three empty.

    The metals form a honeycomb. The anions are kept on their ideal close-packed positions and their
    height is set from the M–X bond length, so the octahedra are the bulk size.
    """
    a_small = a / math.sqrt(3.0)  # the CdI2 sub-cell
    half_height = math.sqrt(bond**2 - a_small**2 / 3.0)
    third = 1.0 / 3.0
    # CdI2 sites mapped into the sqrt3 cell (a' = 2a + b, b' = -a + b): metals at 0, B, C (0 left
    # empty), the upper anions on (1/3, 1/3), (2/3, 0), (0, 2/3), the lower ones on the inverted sites.
    return (
        (metal, *_B, 0.0),
        (metal, *_C, 0.0),
        (halogen, third, third, half_height),
        (halogen, 2 * third, 0.0, half_height),
        (halogen, 0.0, 2 * third, half_height),
        (halogen, 2 * third, 2 * third, -half_height),
        (halogen, third, 0.0, -half_height),
        (halogen, 0.0, third, -half_height),
    )


def _mxene(
    metal: str, x: str, heights: dict[str, float], termination: str | None = None, termination_height: float = 0.0
) -> tuple[Site, ...]:
    """Bare or terminated M(n+1)X(n) MXene (P-3m1), close-packed layers stacked ABC as in the MAX phase.

    ``heights`` holds ``"M_outer"``, ``"X"`` and, for M3X2, ``"M_inner"`` (Å from the mid-plane).
    M2X: X on A at z = 0, M on B (top) and C (bottom). M3X2: inner M on A, X on C (top) / B (bottom),
    outer M on B (top) / C (bottom). A termination goes on the fcc hollow, the site that continues
    the ABC sequence (for M2X above the bottom metal, for M3X2 above the inner metal).
    """
    sites: list[Site] = []
    if "M_inner" not in heights:  # M2X
        sites += [(x, *_A, 0.0), (metal, *_B, heights["M_outer"]), (metal, *_C, -heights["M_outer"])]
        top_fcc, bottom_fcc = _C, _B
    else:  # M3X2
        sites += [
            (metal, *_A, 0.0),
            (x, *_C, heights["X"]),
            (x, *_B, -heights["X"]),
            (metal, *_B, heights["M_outer"]),
            (metal, *_C, -heights["M_outer"]),
        ]
        top_fcc, bottom_fcc = _A, _A
    if termination is not None:
        z_t = heights["M_outer"] + termination_height
        sites += [(termination, *top_fcc, z_t), (termination, *bottom_fcc, -z_t)]
    return tuple(sites)


def _mxene_height(a: float, bond: float) -> float:
    """Height (Å) between adjacent close-packed layers whose atoms are ``bond`` Å apart."""
    return math.sqrt(bond**2 - a**2 / 3.0)


def _spec(
    name: str,
    family: str,
    formula: str,
    a: float,
    citation: str,
    experimental: bool,
    sites: tuple[Site, ...],
    notes: str = "",
    b: float | None = None,
    gamma: float = 120.0,
) -> TemplateSpec:
    return TemplateSpec(
        name=name,
        family=family,
        formula=formula,
        a=a,
        b=b,
        gamma=gamma,
        citation=citation,
        experimental=experimental,
        notes=notes,
        sites=sites,
    )


# ------------------------------------------------------------------------------------------------
# the library
# ------------------------------------------------------------------------------------------------

_SPECS: list[TemplateSpec] = [
    # ---- MX2-2H: layer height h = (1.5 - 2 z) c from the bulk 2H (P6_3/mmc) X position z ----
    _spec(
        "MoS2-2H",
        "MX2-2H",
        "MoS2",
        3.1604,
        "bulk 2H-MoS2: a = 3.1604 Å, c = 12.295 Å, z(S) = 0.621 (Schönfeld, Huang & Moss, "
        "Acta Cryst. B 39, 404 (1983))",
        True,
        _mx2_2h("Mo", "S", (1.5 - 2 * 0.621) * 12.295),
        "monolayer: Mak et al., Phys. Rev. Lett. 105, 136805 (2010), DOI 10.1103/PhysRevLett.105.136805",
    ),
    _spec(
        "WS2-2H",
        "MX2-2H",
        "WS2",
        3.153,
        "bulk 2H-WS2: a = 3.153 Å, c = 12.323 Å, z(S) = 0.622 (Schutte, de Boer & Jellinek, "
        "J. Solid State Chem. 70, 207 (1987))",
        True,
        _mx2_2h("W", "S", (1.5 - 2 * 0.622) * 12.323),
        "monolayer: Gutiérrez et al., Nano Lett. 13, 3447 (2013)",
    ),
    _spec(
        "MoSe2-2H",
        "MX2-2H",
        "MoSe2",
        3.288,
        "bulk 2H-MoSe2: a = 3.288 Å, c = 12.92 Å, z(Se) = 0.621 (James & Lavik, Acta Cryst. 16, 1183 (1963))",
        True,
        _mx2_2h("Mo", "Se", (1.5 - 2 * 0.621) * 12.92),
        "monolayer: Tonndorf et al., Opt. Express 21, 4908 (2013)",
    ),
    _spec(
        "WSe2-2H",
        "MX2-2H",
        "WSe2",
        3.282,
        "bulk 2H-WSe2: a = 3.282 Å, c = 12.96 Å, z(Se) = 0.621 (Schutte, de Boer & Jellinek, "
        "J. Solid State Chem. 70, 207 (1987))",
        True,
        _mx2_2h("W", "Se", (1.5 - 2 * 0.621) * 12.96),
        "monolayer: Tonndorf et al., Opt. Express 21, 4908 (2013)",
    ),
    _spec(
        "MoTe2-2H",
        "MX2-2H",
        "MoTe2",
        3.519,
        "a: bulk 2H-MoTe2, a = 3.519 Å (Puotinen & Newnham, Acta Cryst. 14, 691 (1961)); Te–Te "
        f"height 3.625 Å from the PBE monolayer of {MC2D}, COD 9009147",
        True,
        _mx2_2h("Mo", "Te", 3.625),
        "monolayer: Ruppert, Aslan & Heinz, Nano Lett. 14, 6231 (2014)",
    ),
    _spec(
        "NbSe2-2H",
        "MX2-2H",
        "NbSe2",
        3.444,
        "bulk 2H-NbSe2: a = 3.444 Å, c = 12.55 Å, z(Se) = 0.116 with Nb at z = 1/4 (Marezio, Dernier, "
        "Menth & Hull, J. Solid State Chem. 4, 425 (1972))",
        True,
        _mx2_2h("Nb", "Se", 2 * (0.25 - 0.116) * 12.55),
        "monolayer: Xi et al., Nat. Phys. 12, 139 (2016); Ugeda et al., Nat. Phys. 12, 92 (2016). "
        "Metallic; charge-density wave below ~30 K not represented",
    ),
    _spec(
        "TaS2-2H",
        "MX2-2H",
        "TaS2",
        3.314,
        "a: bulk 2H-TaS2, a = 3.314 Å (Jellinek, J. Less-Common Met. 4, 9 (1962)); S–S height "
        f"3.131 Å from the PBE monolayer of {MC2D}, ICSD 651083",
        True,
        _mx2_2h("Ta", "S", 3.131),
        "monolayer grown on Au(111) (Sanders et al., Phys. Rev. B 2016). Metallic",
    ),
    # ---- MX2-1T: octahedral dichalcogenides; h = 2 z c from the bulk (P-3m1) X position, else MC2D ----
    _spec(
        "TiS2-1T",
        "MX2-1T",
        "TiS2",
        3.4073,
        "bulk 1T-TiS2: a = 3.4073 Å, c = 5.6953 Å, z(S) = 0.25 (Chianelli, Scanlon & Thompson, "
        "Mater. Res. Bull. 10, 1379 (1975))",
        True,
        _mx2_1t("Ti", "S", 2 * 0.25 * 5.6953),
        "exfoliated ultrathin and monolayer flakes are reported; specific monolayer reference not verified here",
    ),
    _spec(
        "TiSe2-1T",
        "MX2-1T",
        "TiSe2",
        3.536,
        f"PBE monolayer of {MC2D}, COD 1010276 (a = 3.536 Å, Se–Se height 3.102 Å)",
        True,
        _mx2_1t("Ti", "Se", 3.1016),
        "monolayer grown by MBE: Chen et al., Nat. Commun. 6, 8943 (2015). CDW (2x2) below ~230 K not represented",
    ),
    _spec(
        "ZrS2-1T",
        "MX2-1T",
        "ZrS2",
        3.662,
        "a: bulk 1T-ZrS2, a = 3.662 Å (McTaggart & Wadsley, Aust. J. Chem. 11, 445 (1958)); S–S height "
        f"2.917 Å from the PBE monolayer of {MC2D}, COD 5910006",
        True,
        _mx2_1t("Zr", "S", 2.917),
        "few-layer and monolayer flakes exfoliated and grown; specific reference not verified here",
    ),
    _spec(
        "HfS2-1T",
        "MX2-1T",
        "HfS2",
        3.635,
        "a: bulk 1T-HfS2, a = 3.635 Å (Greenaway & Nitsche, J. Phys. Chem. Solids 26, 1445 (1965)); "
        f"S–S height 2.908 Å from the PBE monolayer of {MC2D}, ICSD 638847",
        True,
        _mx2_1t("Hf", "S", 2.908),
        "few-layer flakes exfoliated (transistors); monolayer reference not verified here",
    ),
    _spec(
        "SnS2-1T",
        "MX2-1T",
        "SnS2",
        3.6486,
        "a: bulk SnS2 (2H polytype, CdI2-type layers), a = 3.6486 Å (Hazen & Finger, Am. Mineral. 63, "
        f"289 (1978)); S–S height 3.001 Å from the PBE monolayer of {MC2D}, ICSD 43003",
        True,
        _mx2_1t("Sn", "S", 3.001),
        "monolayer and few-layer flakes exfoliated; specific reference not verified here",
    ),
    _spec(
        "SnSe2-1T",
        "MX2-1T",
        "SnSe2",
        3.855,
        f"PBE monolayer of {MC2D}, ICSD 43857 (a = 3.855 Å, Se–Se height 3.212 Å)",
        True,
        _mx2_1t("Sn", "Se", 3.2118),
        "few-layer and monolayer flakes exfoliated; specific reference not verified here. PBE a is "
        "~1 % above the bulk value",
    ),
    _spec(
        "PtS2-1T",
        "MX2-1T",
        "PtS2",
        3.556,
        f"PBE monolayer of {MC2D}, COD 5910085 (a = 3.556 Å, S–S height 2.473 Å)",
        True,
        _mx2_1t("Pt", "S", 2.4728),
        "monolayer exfoliated: Zhao et al., Adv. Mater. 2016 (strong interlayer coupling in PtS2)",
    ),
    _spec(
        "PtSe2-1T",
        "MX2-1T",
        "PtSe2",
        3.728,
        "a: bulk 1T-PtSe2, a = 3.728 Å (Furuseth, Selte & Kjekshus, Acta Chem. Scand. 19, 257 (1965)); "
        f"Se–Se height 2.666 Å from the PBE monolayer of {MC2D}, COD 9009117",
        True,
        _mx2_1t("Pt", "Se", 2.666),
        "monolayer grown by selenisation of Pt(111): Wang et al., Nano Lett. 15, 4013 (2015)",
    ),
    _spec(
        "VSe2-1T",
        "MX2-1T",
        "VSe2",
        3.339,
        f"PBE (ferromagnetic) monolayer of {MC2D}, ICSD 86520 (a = 3.339 Å, Se–Se height 3.157 Å)",
        True,
        _mx2_1t("V", "Se", 3.1572),
        "monolayer grown by MBE: Bonilla et al., Nat. Nanotechnol. 13, 289 (2018). Magnetic moments not set",
    ),
    # ---- MX2-1T': distorted octahedral (P2_1/m); whole structure from MC2D ----
    _spec(
        "WTe2-1T'",
        "MX2-1T'",
        "WTe2",
        3.50033,
        f"PBE monolayer of {MC2D}, COD 2310355 (a = 3.500 Å, b = 6.328 Å). Bulk Td-WTe2: a = 3.477 Å, "
        "b = 6.249 Å (Mar, Jobic & Ibers, J. Am. Chem. Soc. 114, 8963 (1992))",
        True,
        (
            ("Te", 0.0, 0.19781, -2.1085),
            ("Te", 0.5, 0.70669, -1.4844),
            ("Te", 0.5, 0.35861, 2.1085),
            ("Te", 0.0, 0.84968, 1.4844),
            ("W", 0.0, 0.45572, 0.1041),
            ("W", 0.5, 0.10064, -0.1041),
        ),
        "monolayer: Fei et al., Nat. Phys. 13, 677 (2017); Tang et al., Nat. Phys. 13, 683 (2017). "
        "Quantum spin Hall insulator",
        b=6.32779,
        gamma=90.0,
    ),
    _spec(
        "MoTe2-1T'",
        "MX2-1T'",
        "MoTe2",
        3.46244,
        f"PBE monolayer of {MC2D}, COD 2310356 (a = 3.462 Å, b = 6.378 Å), from bulk beta-MoTe2",
        True,
        (
            ("Te", 0.75, 0.51123, 2.0819),
            ("Te", 0.25, 0.3536, -2.0819),
            ("Te", 0.25, 0.00195, 1.4901),
            ("Te", 0.75, 0.86288, -1.4901),
            ("Mo", 0.75, 0.2517, -0.0968),
            ("Mo", 0.25, 0.61311, 0.0968),
        ),
        "monolayer 1T' grown by CVD: Naylor et al., Nano Lett. 16, 4297 (2016)",
        b=6.37783,
        gamma=90.0,
    ),
    # ---- planar honeycombs ----
    _spec(
        "graphene",
        "graphene",
        "C",
        2.4612,
        "graphite: a = 2.4612 Å (Trucano & Chen, Nature 258, 136 (1975))",
        True,
        _honeycomb("C", "C"),
        "Novoselov et al., Science 306, 666 (2004), DOI 10.1126/science.1102896",
    ),
    _spec(
        "hBN",
        "hBN",
        "BN",
        2.504,
        "bulk h-BN: a = 2.504 Å (Pease, Acta Cryst. 5, 356 (1952))",
        True,
        _honeycomb("B", "N"),
        "monolayer exfoliated: Novoselov et al., PNAS 102, 10451 (2005)",
    ),
    # ---- buckled honeycombs (Xenes); no layered bulk parent, so first-principles geometries ----
    _spec(
        "silicene",
        "buckled-honeycomb",
        "Si",
        3.83,
        "low-buckled silicene, a = 3.83 Å, buckling 0.44 Å (LDA; Cahangirov et al., Phys. Rev. Lett. "
        "102, 236804 (2009), DOI 10.1103/PhysRevLett.102.236804)",
        True,
        _honeycomb("Si", "Si", 0.44),
        "grown on Ag(111) as a reconstructed superstructure (Vogt et al., Phys. Rev. Lett. 108, 155501 "
        "(2012)); free-standing silicene is not isolated. PBE gives a ~ 3.87 Å. CHGNet 0.3.0 keeps a "
        "(-0.8 %) but doubles the buckling on relaxation: an MLIP limit, not a template error",
    ),
    _spec(
        "germanene",
        "buckled-honeycomb",
        "Ge",
        4.0388,
        "PBE monolayer, a = 4.039 Å, buckling 0.688 Å (2DMatPedia 2dm-3095; Zhou et al., Sci. Data 6, "
        "86 (2019), DOI 10.1038/s41597-019-0097-3)",
        True,
        _honeycomb("Ge", "Ge", 0.6883),
        "grown on Au(111) (Dávila et al., New J. Phys. 16, 095002 (2014)) and other substrates; "
        "free-standing germanene is not isolated. CHGNet 0.3.0 leaves the low-buckled minimum (a -12 %, "
        "buckling 0.69 -> 1.49 Å): an MLIP limit, not a template error",
    ),
    _spec(
        "stanene",
        "buckled-honeycomb",
        "Sn",
        4.67,
        "PBE low-buckled stanene, a = 4.67 Å, buckling 0.85 Å (Xu et al., Phys. Rev. Lett. 111, 136804 (2013))",
        True,
        _honeycomb("Sn", "Sn", 0.85),
        "grown on Bi2Te3(111) (Zhu et al., Nat. Mater. 14, 1020 (2015)); free-standing stanene is "
        "not isolated. CHGNet 0.3.0 leaves the low-buckled minimum (a -27 %, buckling 0.85 -> 2.52 Å): "
        "an MLIP limit, not a template error",
    ),
    _spec(
        "antimonene",
        "buckled-honeycomb",
        "Sb",
        4.10391,
        f"PBE beta-antimonene from bulk grey Sb (A7): {MC2D}, ICSD 20459 (a = 4.104 Å, buckling 1.648 Å)",
        True,
        _honeycomb("Sb", "Sb", 1.6482),
        "exfoliated: Ares et al., Adv. Mater. 28, 6332 (2016); grown: Ji et al., Nat. Commun. 7, 13352 (2016)",
    ),
    # ---- black phosphorus ----
    _spec(
        "phosphorene",
        "phosphorene",
        "P",
        3.3136,
        "bulk black P (Cmce): a = 3.3136 Å (zigzag), b = 10.478 Å (layer normal), c = 4.3763 Å "
        "(armchair), P at 8f (0, 0.10168, 0.08056) (Brown & Rundqvist, Acta Cryst. 19, 684 (1965))",
        True,
        (
            ("P", 0.0, 0.08056, 0.10168 * 10.478),
            ("P", 0.0, -0.08056 % 1.0, -0.10168 * 10.478),
            ("P", 0.5, 0.58056, -0.10168 * 10.478),
            ("P", 0.5, 0.5 - 0.08056, 0.10168 * 10.478),
        ),
        "Li et al., Nat. Nanotechnol. 9, 372 (2014); Liu et al., ACS Nano 8, 4033 (2014). "
        "a is the zigzag, b the armchair direction",
        b=4.3763,
        gamma=90.0,
    ),
    # ---- MXenes: M-X slab of the MAX phase; bonds set from the MAX-phase M-X distances ----
    _spec(
        "Ti2C",
        "MXene-M2X",
        "Ti2C",
        3.04,
        "Ti2C slab of the MAX phase Ti2AlC: a = 3.04 Å, c = 13.60 Å, z(Ti) = 0.086 (Ti–C 2.11 Å; "
        "values as commonly quoted for Ti2AlC, not checked against the original refinement)",
        False,
        _mxene("Ti", "C", {"M_outer": 0.086 * 13.60}),
        "bare idealisation. Ti2CTx (Tx = O, OH, F) monolayers: Naguib et al., ACS Nano 6, 1322 (2012)",
    ),
    _spec(
        "V2C",
        "MXene-M2X",
        "V2C",
        2.91,
        "V2C slab of the MAX phase V2AlC, a = 2.91 Å; V–C bond 2.06 Å assumed (MAX-phase value, not a "
        "quoted refinement)",
        False,
        _mxene("V", "C", {"M_outer": _mxene_height(2.91, 2.06)}),
        "bare idealisation. V2CTx: Naguib et al., J. Am. Chem. Soc. 135, 15966 (2013)",
    ),
    _spec(
        "Nb2C",
        "MXene-M2X",
        "Nb2C",
        3.10,
        "Nb2C slab of the MAX phase Nb2AlC, a = 3.10 Å; Nb–C bond 2.19 Å assumed (MAX-phase value, not "
        "a quoted refinement)",
        False,
        _mxene("Nb", "C", {"M_outer": _mxene_height(3.10, 2.19)}),
        "bare idealisation. Nb2CTx: Naguib et al., J. Am. Chem. Soc. 135, 15966 (2013)",
    ),
    _spec(
        "Mo2C",
        "MXene-M2X",
        "Mo2C",
        3.03,
        "Mo2C slab of the parent Mo2Ga2C, a = 3.03 Å; Mo–C bond 2.10 Å assumed (not a quoted refinement)",
        False,
        _mxene("Mo", "C", {"M_outer": _mxene_height(3.03, 2.10)}),
        "bare idealisation. Mo2CTx: Halim et al., Adv. Funct. Mater. 26, 3118 (2016)",
    ),
    _spec(
        "Ti3C2",
        "MXene-M3X2",
        "Ti3C2",
        3.075,
        "Ti3C2 slab of the MAX phase Ti3AlC2: a = 3.075 Å, c = 18.578 Å, z(Ti2) = 0.128, z(C) = 0.0694 "
        "(z values as commonly quoted; not checked against the original refinement)",
        False,
        _mxene("Ti", "C", {"M_inner": 0.0, "X": 0.0694 * 18.578, "M_outer": 0.128 * 18.578}),
        "bare idealisation. Ti3C2Tx: Naguib et al., Adv. Mater. 23, 4248 (2011), DOI 10.1002/adma.201102306",
    ),
    _spec(
        "Ti2CO2",
        "MXene-M2XO2",
        "Ti2CO2",
        3.04,
        "Ti2C slab as in Ti2C (Ti2AlC, a = 3.04 Å); O on the fcc hollow (above the Ti of the opposite "
        "face), the site DFT finds most stable (Khazaei et al., Adv. Funct. Mater. 23, 2185 (2013)); "
        "Ti–O 1.97 Å assumed",
        True,
        _mxene("Ti", "C", {"M_outer": 0.086 * 13.60}, "O", _mxene_height(3.04, 1.97)),
        "O-only limit of Ti2CTx (Naguib et al., ACS Nano 6, 1322 (2012)); real flakes carry mixed O/OH/F terminations",
    ),
    _spec(
        "Ti3C2O2",
        "MXene-M3X2O2",
        "Ti3C2O2",
        3.075,
        "Ti3C2 slab as in Ti3C2 (Ti3AlC2, a = 3.075 Å); O on the fcc hollow above the inner Ti (Xie & "
        "Kent, Phys. Rev. B 87, 235441 (2013)); Ti–O 1.97 Å assumed",
        True,
        _mxene(
            "Ti",
            "C",
            {"M_inner": 0.0, "X": 0.0694 * 18.578, "M_outer": 0.128 * 18.578},
            "O",
            _mxene_height(3.075, 1.97),
        ),
        "O-only limit of Ti3C2Tx (Naguib et al., Adv. Mater. 23, 4248 (2011)); real flakes carry "
        "mixed O/OH/F terminations",
    ),
    # ---- GaS type (X-M-M-X): experimental a, heights from the MC2D PBE monolayer ----
    _spec(
        "GaS",
        "MX-GaS",
        "GaS",
        3.587,
        "a: bulk beta-GaS, a = 3.587 Å (experimental, ICSD); Ga ±1.235 Å, S ±2.319 Å from the PBE "
        f"monolayer of {MC2D}, ICSD 635254",
        True,
        _gas_type("Ga", "S", 1.2353, 2.319),
        "few-layer to monolayer flakes: Late et al., Adv. Mater. 24, 3549 (2012)",
    ),
    _spec(
        "GaSe",
        "MX-GaS",
        "GaSe",
        3.755,
        "a: bulk epsilon-GaSe, a = 3.755 Å (experimental, ICSD); Ga ±1.234 Å, Se ±2.407 Å from the PBE "
        f"monolayer of {MC2D}, COD 9008968",
        True,
        _gas_type("Ga", "Se", 1.2342, 2.407),
        "few-layer to monolayer flakes: Late et al., Adv. Mater. 24, 3549 (2012)",
    ),
    _spec(
        "InSe",
        "MX-GaS",
        "InSe",
        4.002,
        "a: bulk gamma-InSe, a = 4.002 Å (Rigoult, Rimsky & Kuhn, Acta Cryst. B 36, 916 (1980)); "
        f"In ±1.411 Å, Se ±2.699 Å from the PBE monolayer of {MC2D}, COD 9008967",
        True,
        _gas_type("In", "Se", 1.4107, 2.6989),
        "atomically thin InSe down to the monolayer: Bandurin et al., Nat. Nanotechnol. 12, 223 (2017)",
    ),
    # ---- CdI2 type (octahedral dihalides); whole geometry from MC2D ----
    _spec(
        "CdI2",
        "CdI2",
        "CdI2",
        4.27654,
        f"PBE monolayer of {MC2D}, ICSD 20745 (a = 4.277 Å, I–I height 3.508 Å)",
        False,
        _mx2_1t("Cd", "I", 3.5082),
        "layered bulk is experimental; monolayer isolation not verified here. PBE a ~1 % above bulk",
    ),
    _spec(
        "PbI2",
        "CdI2",
        "PbI2",
        4.64483,
        f"PBE monolayer of {MC2D}, COD 9009143 (a = 4.645 Å, I–I height 3.754 Å)",
        True,
        _mx2_1t("Pb", "I", 3.7536),
        "monolayers grown: Zhong et al., Nanoscale 2017 (large-scale 2D PbI2 monolayers). PBE a is "
        "~2 % above the bulk 4.557 Å",
    ),
    _spec(
        "MgBr2",
        "CdI2",
        "MgBr2",
        3.86631,
        f"PBE monolayer of {MC2D}, COD 9009107 (a = 3.866 Å, Br–Br height 3.025 Å)",
        False,
        _mx2_1t("Mg", "Br", 3.0252),
        "layered bulk is experimental; monolayer isolation not verified here",
    ),
    _spec(
        "NiI2",
        "CdI2",
        "NiI2",
        3.95619,
        f"PBE (ferromagnetic) monolayer of {MC2D}, COD 9009133 (a = 3.956 Å, I–I height 3.021 Å)",
        True,
        _mx2_1t("Ni", "I", 3.021),
        "single-layer multiferroic: Song et al., Nature 602, 601 (2022). Helimagnetic order not represented",
    ),
    # ---- BiI3 type: honeycomb of metals in a CdI2 framework, sqrt3 x sqrt3 cell ----
    _spec(
        "CrI3",
        "BiI3",
        "CrI3",
        6.867,
        "bulk CrI3: a = 6.867 Å (McGuire, Dixit, Cooper & Sales, Chem. Mater. 27, 612 (2015)); "
        "idealised close-packed I layers at the bulk Cr–I bond 2.73 Å",
        True,
        _bii3_type("Cr", "I", 6.867, 2.73),
        "monolayer ferromagnet: Huang et al., Nature 546, 270 (2017), DOI 10.1038/nature22391",
    ),
    _spec(
        "CrCl3",
        "BiI3",
        "CrCl3",
        5.942,
        "bulk CrCl3: a = 5.942 Å (Morosin & Narath, J. Chem. Phys. 40, 1958 (1964)); idealised "
        "close-packed Cl layers at the bulk Cr–Cl bond 2.34 Å",
        True,
        _bii3_type("Cr", "Cl", 5.942, 2.34),
        "monolayers exfoliated (magneto-optics and tunnelling studies, 2019); specific reference not verified here",
    ),
    _spec(
        "BiI3",
        "BiI3",
        "BiI3",
        7.516,
        "bulk BiI3: a = 7.516 Å (Trotter & Zobel, Z. Kristallogr. 123, 67 (1966)); idealised "
        "close-packed I layers at the mean bulk Bi–I bond 3.09 Å",
        False,
        _bii3_type("Bi", "I", 7.516, 3.09),
        "layered bulk is experimental; ultrathin flakes reported, monolayer not verified here",
    ),
    # ---- FeSe type (anti-PbO, P4/nmm) ----
    _spec(
        "FeSe",
        "FeSe",
        "FeSe",
        3.7734,
        "bulk tetragonal FeSe (anti-PbO, P4/nmm): a = 3.7734 Å, c = 5.5258 Å, z(Se) = 0.2672 (McQueen et al., "
        "Phys. Rev. B 79, 014522 (2009))",
        True,
        (
            ("Fe", 0.0, 0.0, 0.0),
            ("Fe", 0.5, 0.5, 0.0),
            ("Se", 0.5, 0.0, 0.2672 * 5.5258),
            ("Se", 0.0, 0.5, -0.2672 * 5.5258),
        ),
        "monolayer on SrTiO3: Wang et al., Chin. Phys. Lett. 29, 037402 (2012)",
        b=None,
        gamma=90.0,
    ),
    # ---- tetradymite quintuple layers: X2-Bi-X1-Bi-X2 from bulk R-3m ----
    _spec(
        "Bi2Se3",
        "Bi2Te3-QL",
        "Bi2Se3",
        4.143,
        "bulk Bi2Se3 (R-3m): a = 4.143 Å, c = 28.636 Å, z(Bi) = 0.4008, z(Se2) = 0.2117 (Nakajima, "
        "J. Phys. Chem. Solids 24, 479 (1963))",
        True,
        (
            ("Se", *_A, 0.0),
            ("Bi", *_B, (0.4008 - 1 / 3) * 28.636),
            ("Bi", *_C, -(0.4008 - 1 / 3) * 28.636),
            ("Se", *_C, (1 / 3 - 0.2117) * 28.636),
            ("Se", *_B, -(1 / 3 - 0.2117) * 28.636),
        ),
        "one quintuple layer grown by MBE: Zhang et al., Nat. Phys. 6, 584 (2010)",
    ),
    _spec(
        "Bi2Te3",
        "Bi2Te3-QL",
        "Bi2Te3",
        4.386,
        "bulk Bi2Te3 (R-3m): a = 4.386 Å, c = 30.497 Å, z(Bi) = 0.4001, z(Te2) = 0.2095 (Nakajima, "
        "J. Phys. Chem. Solids 24, 479 (1963))",
        True,
        (
            ("Te", *_A, 0.0),
            ("Bi", *_B, (0.4001 - 1 / 3) * 30.497),
            ("Bi", *_C, -(0.4001 - 1 / 3) * 30.497),
            ("Te", *_C, (1 / 3 - 0.2095) * 30.497),
            ("Te", *_B, -(1 / 3 - 0.2095) * 30.497),
        ),
        "single quintuple layers exfoliated: Teweldebrhan, Goyal & Balandin, Nano Lett. 10, 1209 (2010)",
    ),
]

#: every built-in template by name
TEMPLATES: dict[str, TemplateSpec] = {spec.name: spec for spec in _SPECS}
if len(TEMPLATES) != len(_SPECS):  # a duplicated name would silently drop a template
    raise RuntimeError("duplicate template names in gen2d.data.templates")


def list_families() -> list[str]:
    """The prototype families of the library, in library order."""
    return list(dict.fromkeys(spec.family for spec in TEMPLATES.values()))


def list_templates(family: str | None = None) -> list[str]:
    """Names of the templates, optionally of one prototype family, in library order.

    Raises
    ------
    ValueError
        If ``family`` is not one of :func:`list_families`.
    """
    if family is None:
        return list(TEMPLATES)
    if family not in list_families():
        raise ValueError(f"unknown template family {family!r}; known: {', '.join(list_families())}")
    return [name for name, spec in TEMPLATES.items() if spec.family == family]


def build_template(name: str, vacuum: float = DEFAULT_VACUUM) -> Structure:
    """Build a template monolayer in the gen2d frame.

    Parameters
    ----------
    name
        A key of :data:`TEMPLATES`, e.g. ``"MoS2-2H"``.
    vacuum
        Empty space along c in Å (at least 15).

    Returns
    -------
    Structure
        a along x, b in the xy-plane at ``gamma``, c along z with length thickness + vacuum, the
        layer centred at z = c/2. ``structure.properties`` records the template name, family and
        citation.

    Examples
    --------
    >>> s = build_template("MoS2-2H")
    >>> s.composition.reduced_formula
    'MoS2'
    """
    if name not in TEMPLATES:
        raise KeyError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}")
    if not vacuum >= MIN_VACUUM:
        raise ValueError(f"vacuum must be at least {MIN_VACUUM} Å, got {vacuum}")
    spec = TEMPLATES[name]
    gamma = math.radians(spec.gamma)
    b = spec.b_length
    c = spec.thickness + vacuum
    lattice = Lattice([[spec.a, 0.0, 0.0], [b * math.cos(gamma), b * math.sin(gamma), 0.0], [0.0, 0.0, c]])
    species = [site[0] for site in spec.sites]
    frac = [[site[1] % 1.0, site[2] % 1.0, 0.5 + site[3] / c] for site in spec.sites]
    properties = {
        "template": spec.name,
        "family": spec.family,
        "citation": spec.citation,
        "experimental": spec.experimental,
    }
    return Structure(lattice, species, frac, properties=properties)
