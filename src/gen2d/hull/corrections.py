"""MP2020 compatibility for MLIP energies, with S/Se/Te anion corrections limited to sites with a partner that makes
them an anion (:func:`is_chalcogen_partner`)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pymatgen.core import Composition, Element, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from gen2d.hull.errors import HullError

try:  # pymatgen moved the module; both paths exist across the versions gen2d supports
    from pymatgen.entries.compatibility import CompatibilityError, MaterialsProject2020Compatibility
except ImportError:  # pragma: no cover
    from pymatgen.analysis.compatibility import CompatibilityError, MaterialsProject2020Compatibility


def mp2020_compatibility() -> MaterialsProject2020Compatibility:
    """MP2020 corrections as matbench-discovery applies them to MPtrj-trained MLIPs (no POTCAR check)."""
    return MaterialsProject2020Compatibility(check_potcar=False)


def mp_hubbards(composition: Composition) -> dict[str, float]:
    """The Hubbard U values Materials Project's MPRelaxSet would use for ``composition``.

    MP applies U only to transition metals in oxides and fluorides, keyed by the most electronegative
    element. MPtrj-trained MLIPs learnt exactly that mixture, so their energy is treated as the GGA or
    GGA+U energy MP would have computed, and MP2020 needs the matching ``hubbards`` to accept it.
    """
    comp = Composition(composition)
    elements = sorted((el for el in comp.elements if comp[el] > 0), key=lambda el: el.X)
    if len(elements) < 2:
        return {}
    u_table = mp2020_compatibility().u_settings.get(elements[-1].symbol, {})
    return {el.symbol: float(u_table[el.symbol]) for el in elements if float(u_table.get(el.symbol, 0)) != 0}


def mlip_entry(
    structure: Structure,
    energy: float,
    *,
    model: str,
    checkpoint_sha256: str | None = None,
    entry_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> ComputedStructureEntry:
    """A ``ComputedStructureEntry`` for an MLIP total energy (eV), with MP-style run parameters.

    The entry is uncorrected; pass it through :func:`apply_mp2020` before building a hull.
    """
    if not np.isfinite(energy):
        raise HullError("non_finite_energy", f"energy {energy} is not finite")
    hubbards = mp_hubbards(structure.composition)
    parameters = {
        "run_type": "GGA+U" if hubbards else "GGA",
        "hubbards": hubbards,
        "is_hubbard": bool(hubbards),
        "software": "mlip",
        "potcar_spec": [],
    }
    meta = {"gen2d_model": model, "gen2d_checkpoint_sha256": checkpoint_sha256, "energy_source": "mlip"}
    meta.update(data or {})
    return ComputedStructureEntry(
        structure,
        float(energy),
        parameters=parameters,
        data=meta,
        entry_id=entry_id or f"gen2d-{structure.composition.reduced_formula}",
    )


def apply_mp2020(entry: ComputedEntry) -> ComputedEntry:
    """Apply MP2020 corrections in place and return the entry.

    Raises
    ------
    HullError
        ``compatibility_rejected`` when MP2020 refuses the entry (e.g. a U setting it does not know).
    """
    compat = mp2020_compatibility()
    with warnings.catch_warnings():
        # "Failed to guess oxidation states" is expected for hypothetical compositions; MP2020 then
        # falls back to correcting the most electronegative element, which is what we want.
        warnings.simplefilter("ignore")
        try:
            processed = compat.process_entry(entry, clean=True)
        except CompatibilityError as exc:
            raise HullError(
                "compatibility_rejected", f"MP2020 rejected {entry.composition.reduced_formula}: {exc}"
            ) from exc
    if processed is None:
        raise HullError("compatibility_rejected", f"MP2020 rejected {entry.composition.reduced_formula}")
    return processed


# MP2020 fitted its S, Se and Te corrections on metal chalcogenides, polychalcogenides such as FeS2 or TiS3
# included (it corrects them as sulfides on purpose: there every S atom still has metal neighbours). A
# chalcogen atom bonded only to chalcogens and halogens (every S of SeS2 or TeS2, the S-Se network of a
# VSeS4 layer) has no metal to give it electrons: its bond is covalent and outside the fit, yet MP2020 still
# corrects it (S whenever the structure is not a sulfate, Se and Te whenever the first oxidation-state
# guess makes them negative). Nor has a chalcogen whose only other neighbours are more electronegative
# non-metals: the Se of an SeN layer is the cation there (N 3.04, Se 2.55), and MP2020 corrects both its
# "selenide" and its nitride, 0.42 eV/atom together. So each S/Se/Te correction is scaled by the share of
# that element's sites with at least one partner: a neighbour outside CHALCOGEN_HALOGEN that is a metal or a
# metalloid (B, Si, Ge, As, Sb: MoTe2's Mo and As2Te3's As count, though their Pauling electronegativities,
# 2.16 and 2.18, are above Te's 2.10), or a non-metal not clearly more electronegative than the chalcogen (by less
# than CLEARLY_MORE_ELECTRONEGATIVE on the Pauling scale: H2Te, CSe2 and P2Te3 stay tellurides and selenides, as
# they are conventionally written). So N is no chalcogen's partner and C not Te's. O and halogen corrections are
# never touched: most of them corrects the error of the O2 or X2 reference itself, whatever the cation.
CHALCOGEN_CORRECTIONS = ("S", "Se", "Te")
CHALCOGEN_HALOGEN = frozenset({"O", "S", "Se", "Te", "F", "Cl", "Br", "I"})
PARTNER_BOND_SCALE = 1.25  # x the covalent-radius sum, as the strict 2D check bonds atoms
# Pauling units: a non-metal this much more electronegative than a chalcogen makes it the cation (N: +0.46 over S,
# +0.49 over Se, +0.94 over Te; C: +0.45 over Te). Pauling gaps below it (C/Se 0.00, H/Te 0.10) are within the
# scales' own disagreement: on Allen's scale C is above Se.
CLEARLY_MORE_ELECTRONEGATIVE = 0.3
ANION_CORRECTION_NAME = "MP2020 anion correction"
# A layer more than this below a hull of bulk reference phases says more about the references than the layer.
BELOW_REFERENCE_HULL = -0.05  # eV/atom
# Part of every stored E_hull's provenance and of evaluation run keys: bump the version when the rule changes.
# v3: a non-metal neighbour clearly more electronegative than the chalcogen (N, and C for Te) is no partner.
CORRECTION_SCHEME = "mp2020+gen2d-chalcogen-partner-v3"
CORRECTION_SCHEME_DESCRIPTION = (
    "MaterialsProject2020Compatibility, except that each S, Se and Te anion correction "
    "is scaled by the share of that element's sites bonded (1.25 x covalent radii) "
    "to at least one partner: an element other than O, S, Se, Te, F, Cl, Br, I that is "
    "a metal, a metalloid or not more electronegative (Pauling) than the chalcogen by 0.3 or more; without a "
    "structure, dropped for compounds with no such partner element"
)


def is_chalcogen_partner(partner: str, chalcogen: str) -> bool:
    """Whether a neighbour ``partner`` makes ``chalcogen`` (S, Se, Te) an anion, as in MP2020's fit: a metal or
    metalloid, or a non-metal outside :data:`CHALCOGEN_HALOGEN` that is not :data:`CLEARLY_MORE_ELECTRONEGATIVE`
    than it (Pauling)."""
    if partner in CHALCOGEN_HALOGEN:
        return False
    el = Element(partner)
    return bool(el.is_metal or el.is_metalloid) or el.X < Element(chalcogen).X + CLEARLY_MORE_ELECTRONEGATIVE


def chalcogen_partner_shares(entry: ComputedEntry) -> dict[str, float]:
    """For each of S, Se, Te in ``entry``: the share of its sites with a partner (:func:`is_chalcogen_partner`).

    With a structure, a partner is such a neighbour within :data:`PARTNER_BOND_SCALE` x the covalent-radius sum,
    periodic images included: 1 for every S of MoS2 or pyrite FeS2, 0 for SeS2 and for the Se of SeN, 1/2 for
    the S of a cell holding a VS2 and an SeS2 layer. Without one, the composition decides: 1 when it holds a
    partner element of that chalcogen, 0 otherwise (SeS2, TeS2, SeN).
    """
    comp = entry.composition
    present = [el for el in CHALCOGEN_CORRECTIONS if comp[el] > 0]
    if not present:
        return {}
    elements = {el.symbol for el in comp.elements if comp[el] > 0}
    partners = {x: {p for p in elements if is_chalcogen_partner(p, x)} for x in present}
    structure = getattr(entry, "structure", None)
    if structure is None:
        if len(elements) == 1:  # an elemental phase has no anion correction to limit
            return {x: 1.0 for x in present}
        return {x: 1.0 if partners[x] else 0.0 for x in present}
    if not any(partners.values()):
        return {x: 0.0 for x in present}
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.pbc = True  # a monolayer's vacuum (>= 15 A) keeps its images apart
    symbols = np.array(atoms.get_chemical_symbols())
    i, j = neighbor_list(
        "ij", atoms, (covalent_radii[atoms.numbers] * PARTNER_BOND_SCALE).tolist(), self_interaction=False
    )
    out = {}
    for x in present:
        partnered = np.zeros(len(atoms), dtype=bool)
        partnered[i[(symbols[i] == x) & np.isin(symbols[j], sorted(partners[x]))]] = True
        out[x] = float(partnered[symbols == x].mean())
    return out


def anion_correction_scale(entry: ComputedEntry, shares: dict[str, float] | None = None) -> float:
    """Share of ``entry``'s MP2020 S/Se/Te corrections that :func:`limit_anion_corrections` keeps (1 if none).

    ``shares`` are :func:`chalcogen_partner_shares` of ``entry`` when the caller has them already.
    """
    shares = chalcogen_partner_shares(entry) if shares is None else shares
    adj = {a.name: a.value for a in entry.energy_adjustments}
    total = sum(adj.get(f"{ANION_CORRECTION_NAME} ({el})", 0.0) for el in shares)
    if total == 0:
        return 1.0
    return float(sum(adj.get(f"{ANION_CORRECTION_NAME} ({el})", 0.0) * f for el, f in shares.items()) / total)


def limit_anion_corrections(entry: ComputedEntry) -> ComputedEntry:
    """``entry`` with each MP2020 S/Se/Te correction scaled by :func:`chalcogen_partner_shares`.

    The same entry is returned when nothing changes (every chalcogen site has a partner, no such
    correction, or an entry limited already); otherwise a copy whose ``data`` records
    ``anion_correction_scale``, the shares and the dropped eV. All other adjustments (O and halogen
    corrections, GGA/GGA+U mixing) are kept.
    """
    from pymatgen.entries.computed_entries import ConstantEnergyAdjustment

    if "anion_correction_scale" in entry.data:  # limited already: never twice
        return entry
    shares = chalcogen_partner_shares(entry)
    names = {f"{ANION_CORRECTION_NAME} ({el})": el for el in shares}
    limited = [a for a in entry.energy_adjustments if a.name in names and shares[names[a.name]] < 1.0]
    if not limited:
        return entry
    scale = anion_correction_scale(entry, shares)
    kept = [a for a in entry.energy_adjustments if all(a is not b for b in limited)]
    scaled = [
        ConstantEnergyAdjustment(
            a.value * shares[names[a.name]],
            name=f"{a.name} x {shares[names[a.name]]:.3g} (partner share)",
            description="gen2d: MP2020 chalcogen correction for the sites with a partner only",
        )
        for a in limited
        if shares[names[a.name]] > 0
    ]
    out = entry.copy()
    out.energy_adjustments = kept + scaled
    out.data = {
        **entry.data,
        "anion_correction_scale": scale,
        "chalcogen_partner_shares": shares,
        "anion_correction_dropped": float(sum(a.value * (1 - shares[names[a.name]]) for a in limited)),
    }
    return out
