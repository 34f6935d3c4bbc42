"""Formation energy and E_hull of one entry against a reference set, through pymatgen's ``PhaseDiagram``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.entries.computed_entries import ComputedEntry

from gen2d.hull.corrections import BELOW_REFERENCE_HULL, CORRECTION_SCHEME, limit_anion_corrections
from gen2d.hull.errors import HullError

ENERGY_UNIT = "eV/atom"


@dataclass
class HullResult:
    """Formation energy and E_hull of one entry against one reference set (all energies eV/atom)."""

    e_hull: float
    e_form: float
    chemsys: str
    n_phases: int
    provider: str
    decomposition: list[dict[str, Any]]
    energy_per_atom: float
    correction_per_atom: float
    reference_phases: list[dict[str, Any]] = field(default_factory=list)
    correction_scheme: str = CORRECTION_SCHEME
    anion_correction_scale: float = 1.0
    e_hull_mp2020: float | None = None  # plain MP2020 (no chalcogen limit), when that differs
    flags: list[str] = field(default_factory=list)
    #: with ``below_reference_hull``: which bulk phase the reference set probably lacks, in words
    missing_reference: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "e_hull": self.e_hull,
            "e_form": self.e_form,
            "unit": ENERGY_UNIT,
            "chemsys": self.chemsys,
            "n_phases": self.n_phases,
            "provider": self.provider,
            "decomposition": self.decomposition,
            "corrected_energy_per_atom": self.energy_per_atom,
            "correction_per_atom": self.correction_per_atom,
            "correction_scheme": self.correction_scheme,
            "anion_correction_scale": self.anion_correction_scale,
            "e_hull_mp2020": self.e_hull_mp2020,
            "flags": list(self.flags),
            "missing_reference": self.missing_reference,
        }


def _phase_record(entry: ComputedEntry) -> dict[str, Any]:
    return {
        "formula": entry.composition.reduced_formula,
        "entry_id": entry.entry_id,
        "prototype": entry.data.get("prototype"),
        "energy_per_atom": float(entry.energy_per_atom),
        "unit": ENERGY_UNIT,
        "source": entry.data.get("energy_source", "dft"),
    }


def hull_analysis(entry: ComputedEntry, references: Sequence[ComputedEntry], provider: str) -> HullResult:
    """E_form against the elemental references and E_hull against all ``references``.

    The candidate and the references pass through :func:`limit_anion_corrections` first (S/Se/Te
    corrections only for sites with a partner: :func:`is_chalcogen_partner`); the plain-MP2020 E_hull is kept as
    ``e_hull_mp2020`` when the limit changed anything. Flags: ``anion_correction_limited`` (the
    candidate's correction was cut) and ``below_reference_hull`` (E_hull < :data:`BELOW_REFERENCE_HULL`:
    a layer below its bulk references points to a missing reference phase before a discovery).

    Parameters
    ----------
    entry : ComputedEntry
        The candidate, already MP2020-corrected. It is not added to the hull, so E_hull may be
        negative: the candidate lies below the reference hull.
    references : sequence of ComputedEntry
        Corrected reference entries; at least one per element of ``entry``.
    provider : str
        Name of the reference set, recorded in the result.

    Raises
    ------
    HullError
        ``missing_elemental_reference`` when an element of the candidate has no reference phase.
    """
    elements = sorted({el.symbol for el in entry.composition.elements})
    refs = [r for r in references if {el.symbol for el in r.composition.elements} <= set(elements)]
    have = {r.composition.elements[0].symbol for r in refs if len(r.composition.elements) == 1}
    missing = sorted(set(elements) - have)
    if missing:
        raise HullError(
            "missing_elemental_reference", f"reference set {provider!r} has no elemental phase for {', '.join(missing)}"
        )
    # the candidate and every reference under the same scheme, so the hull stays self-consistent
    limited_entry = limit_anion_corrections(entry)
    limited_refs = [limit_anion_corrections(r) for r in refs]
    changed = limited_entry is not entry or any(a is not b for a, b in zip(limited_refs, refs))
    pd = PhaseDiagram(limited_refs)
    decomp, e_hull = pd.get_decomp_and_e_above_hull(limited_entry, allow_negative=True)
    e_form = pd.get_form_energy_per_atom(limited_entry)
    e_hull_mp2020 = None
    if changed:
        e_hull_mp2020 = float(PhaseDiagram(refs).get_decomp_and_e_above_hull(entry, allow_negative=True)[1])
    flags = []
    if limited_entry is not entry:
        flags.append("anion_correction_limited")
    missing_reference = None
    if e_hull < BELOW_REFERENCE_HULL:
        flags.append("below_reference_hull")
        missing_reference = probable_missing_reference(limited_entry, limited_refs)
    products = [
        {**_phase_record(e), "fraction": float(frac)} for e, frac in sorted(decomp.items(), key=lambda kv: -kv[1])
    ]
    return HullResult(
        e_hull=float(e_hull),
        e_form=float(e_form),
        chemsys="-".join(elements),
        n_phases=len(refs),
        provider=provider,
        decomposition=products,
        energy_per_atom=float(limited_entry.energy_per_atom),
        correction_per_atom=float(limited_entry.correction_per_atom),
        reference_phases=[_phase_record(r) for r in limited_refs],
        anion_correction_scale=float(limited_entry.data.get("anion_correction_scale", 1.0)),
        e_hull_mp2020=e_hull_mp2020,
        flags=flags,
        missing_reference=missing_reference,
    )


class ReferenceHull:
    """The reference hull of one chemical system, prepared once for many E_hull queries.

    :func:`hull_analysis` limits the anion corrections of every reference and builds a ``PhaseDiagram``
    on each call (about 0.3 s for a binary with its stacked layers); a caller scoring many candidates of
    the same chemical system (the sampler's steering reward) prepares both once here. :meth:`e_hull`
    gives the value ``hull_analysis(entry, references, ...).e_hull`` gives, without its report.

    Parameters
    ----------
    elements : iterable of str
        The chemical system; only candidates with exactly these elements are asked.
    references : sequence of ComputedEntry
        Corrected reference entries (those outside ``elements`` are ignored).
    """

    def __init__(self, elements: Sequence[str], references: Sequence[ComputedEntry], provider: str = ""):
        self.elements = sorted(set(elements))
        refs = [r for r in references if {el.symbol for el in r.composition.elements} <= set(self.elements)]
        have = {r.composition.elements[0].symbol for r in refs if len(r.composition.elements) == 1}
        missing = sorted(set(self.elements) - have)
        if missing:
            raise HullError(
                "missing_elemental_reference",
                f"reference set {provider!r} has no elemental phase for {', '.join(missing)}",
            )
        self.n_phases = len(refs)
        self.phase_diagram = PhaseDiagram([limit_anion_corrections(r) for r in refs])

    def e_hull(self, entry: ComputedEntry) -> float:
        """E_hull (eV/atom, negative below the hull) of an MP2020-corrected entry of this chemical system."""
        elements = sorted({el.symbol for el in entry.composition.elements})
        if elements != self.elements:
            raise ValueError(f"entry of {'-'.join(elements)} asked of the {'-'.join(self.elements)} hull")
        limited = limit_anion_corrections(entry)
        return float(self.phase_diagram.get_decomp_and_e_above_hull(limited, allow_negative=True)[1])


def probable_missing_reference(entry: ComputedEntry, references: Sequence[ComputedEntry]) -> str:
    """Which bulk phase a reference set probably lacks when ``entry`` lies below its hull, in words.

    A monolayer sits above the bulk phases it competes with (at least by its exfoliation energy), so an
    entry below the hull means the set has no phase near its composition. When no reference holds all
    the entry's elements, that is the missing family (e.g. any ternary V-S-Se phase); otherwise it is a
    phase near the entry's own composition, of which the nearest reference (by composition) is named.

    >>> from pymatgen.entries.computed_entries import ComputedEntry as E
    >>> probable_missing_reference(E("VSe2S2", -30.0), [E("V", -9.0), E("S", -4.0), E("Se", -3.5), E("VS2", -20.0)])
    'no S-Se-V phase with all 3 elements (the set has none): a ternary bulk phase, e.g. the layered parent of V(SeS)2'
    """
    elements = {el.symbol for el in entry.composition.elements}
    chemsys = "-".join(sorted(elements))
    formula = entry.composition.reduced_formula
    full = [r for r in references if {el.symbol for el in r.composition.elements} == elements]
    if not full:
        kind = {1: "elemental", 2: "binary", 3: "ternary", 4: "quaternary"}.get(
            len(elements), f"{len(elements)}-element"
        )
        return (
            f"no {chemsys} phase with all {len(elements)} elements (the set has none): "
            f"a {kind} bulk phase, e.g. the layered parent of {formula}"
        )
    frac = entry.composition.fractional_composition

    def distance(r: ComputedEntry) -> float:
        other = r.composition.fractional_composition
        return sum(abs(frac[el] - other[el]) for el in elements)

    # among references at the same distance (several polymorphs of one composition), the lowest in energy: the
    # phase on the hull, not the first decoration in the list
    nearest = min(full, key=lambda r: (round(distance(r), 9), r.energy_per_atom))
    proto = nearest.data.get("prototype")
    named = f"{nearest.composition.reduced_formula}" + (f" ({proto})" if proto else "")
    if distance(nearest) < 1e-9:
        return (
            f"a lower-energy {formula} polymorph, e.g. the layered parent of {formula}; the set's {formula} is {named}"
        )
    return (
        f"a {chemsys} bulk phase near {formula}, e.g. the layered parent of {formula}; "
        f"the nearest reference composition is {named}"
    )
