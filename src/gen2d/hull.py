"""MLIP energies to formation energy and E_hull: MP2020 compatibility, reference-set providers, PhaseDiagram.

Providers: ``mlip-prototypes`` (offline default, same MLIP for references), ``entries-file`` and ``mp-api``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pymatgen.analysis.phase_diagram import PhaseDiagram
from pymatgen.core import Composition, Element, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from gen2d.scoring import PluginUnavailable
from gen2d.settings import get_settings

try:  # pymatgen moved the module; both paths exist across the versions gen2d supports
    from pymatgen.entries.compatibility import CompatibilityError, MaterialsProject2020Compatibility
except ImportError:  # pragma: no cover
    from pymatgen.analysis.compatibility import CompatibilityError, MaterialsProject2020Compatibility

log = logging.getLogger(__name__)

ENERGY_UNIT = "eV/atom"
# Bump when the prototype library or how references are relaxed changes: it is part of every cache key.
PROTOTYPE_LIBRARY_VERSION = "2"


class HullError(Exception):
    """A named failure while building entries or the hull (``reason`` is snake_case)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class ReferenceUnavailable(PluginUnavailable):
    """A reference provider cannot deliver (no key, no network, no file); ``reason`` names it."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# MP2020 compatibility for MLIP energies
# --------------------------------------------------------------------------------------------------

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


def mlip_entry(structure: Structure, energy: float, *, model: str, checkpoint_sha256: str | None = None,
               entry_id: str | None = None, data: dict[str, Any] | None = None) -> ComputedStructureEntry:
    """A ``ComputedStructureEntry`` for an MLIP total energy (eV), with MP-style run parameters.

    The entry is uncorrected; pass it through :func:`apply_mp2020` before building a hull.
    """
    if not np.isfinite(energy):
        raise HullError("non_finite_energy", f"energy {energy} is not finite")
    hubbards = mp_hubbards(structure.composition)
    parameters = {"run_type": "GGA+U" if hubbards else "GGA", "hubbards": hubbards,
                  "is_hubbard": bool(hubbards), "software": "mlip", "potcar_spec": []}
    meta = {"gen2d_model": model, "gen2d_checkpoint_sha256": checkpoint_sha256, "energy_source": "mlip"}
    meta.update(data or {})
    return ComputedStructureEntry(structure, float(energy), parameters=parameters, data=meta,
                                  entry_id=entry_id or f"gen2d-{structure.composition.reduced_formula}")


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
            raise HullError("compatibility_rejected", f"MP2020 rejected {entry.composition.reduced_formula}: {exc}") from exc
    if processed is None:
        raise HullError("compatibility_rejected", f"MP2020 rejected {entry.composition.reduced_formula}")
    return processed


# MP2020 fitted its S, Se and Te corrections on metal chalcogenides, polychalcogenides such as FeS2 or TiS3
# included (it corrects them as sulfides on purpose: there every S atom still has metal neighbours). A
# chalcogen atom bonded only to chalcogens and halogens (every S of SeS2 or TeS2, the S-Se network of a
# VSeS4 layer) has no metal to give it electrons: its bond is covalent and outside the fit, yet MP2020 still
# corrects it (S whenever the structure is not a sulfate, Se and Te whenever the first oxidation-state
# guess makes them negative). So each S/Se/Te correction is scaled by the share of that element's sites
# with at least one neighbour outside CHALCOGEN_HALOGEN. O and halogen corrections are never touched: most
# of them corrects the error of the O2 or X2 reference itself, whatever the cation.
CHALCOGEN_CORRECTIONS = ("S", "Se", "Te")
CHALCOGEN_HALOGEN = frozenset({"O", "S", "Se", "Te", "F", "Cl", "Br", "I"})
PARTNER_BOND_SCALE = 1.25  # x the covalent-radius sum, as the strict 2D check bonds atoms
ANION_CORRECTION_NAME = "MP2020 anion correction"
# A layer more than this below a hull of bulk reference phases says more about the references than the layer.
BELOW_REFERENCE_HULL = -0.05  # eV/atom
# Part of every stored E_hull's provenance and of evaluation run keys: bump the version when the rule changes.
CORRECTION_SCHEME = "mp2020+gen2d-chalcogen-partner-v2"
CORRECTION_SCHEME_DESCRIPTION = ("MaterialsProject2020Compatibility, except that each S, Se and Te anion correction "
                                 "is scaled by the share of that element's sites bonded (1.25 x covalent radii) "
                                 "to at least one element other than O, S, Se, Te, F, Cl, Br, I; without a "
                                 "structure, dropped for compounds made only of those elements")


def chalcogen_partner_shares(entry: ComputedEntry) -> dict[str, float]:
    """For each of S, Se, Te in ``entry``: the share of its sites with a metal (non-chalcogen/halogen) partner.

    With a structure, a partner is a neighbour within :data:`PARTNER_BOND_SCALE` x the covalent-radius sum,
    periodic images included: 1 for every S of MoS2 or pyrite FeS2, 0 for SeS2, 1/2 for the S of a cell
    holding a VS2 and an SeS2 layer. Without one, the composition decides: 0 for a compound made only of
    :data:`CHALCOGEN_HALOGEN` elements (SeS2, TeS2), 1 otherwise.
    """
    comp = entry.composition
    present = [el for el in CHALCOGEN_CORRECTIONS if comp[el] > 0]
    if not present:
        return {}
    elements = {el.symbol for el in comp.elements if comp[el] > 0}
    structure = getattr(entry, "structure", None)
    if structure is None:
        share = 0.0 if len(elements) > 1 and elements <= CHALCOGEN_HALOGEN else 1.0
        return {el: share for el in present}
    if elements <= CHALCOGEN_HALOGEN:
        return {el: 0.0 for el in present}
    from ase.data import covalent_radii
    from ase.neighborlist import neighbor_list
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.pbc = True  # a monolayer's vacuum (>= 15 A) keeps its images apart
    symbols = np.array(atoms.get_chemical_symbols())
    i, j = neighbor_list("ij", atoms, (covalent_radii[atoms.numbers] * PARTNER_BOND_SCALE).tolist(),
                         self_interaction=False)
    partnered = np.zeros(len(atoms), dtype=bool)
    partnered[i[~np.isin(symbols[j], sorted(CHALCOGEN_HALOGEN))]] = True
    return {el: float(partnered[symbols == el].mean()) for el in present}


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

    The same entry is returned when nothing changes (every chalcogen site has a metal partner, no such
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
    scaled = [ConstantEnergyAdjustment(a.value * shares[names[a.name]],
                                       name=f"{a.name} x {shares[names[a.name]]:.3g} (metal-partner share)",
                                       description="gen2d: MP2020 chalcogen correction for the sites with a "
                                                   "metal neighbour only")
              for a in limited if shares[names[a.name]] > 0]
    out = entry.copy()
    out.energy_adjustments = kept + scaled
    out.data = {**entry.data, "anion_correction_scale": scale, "chalcogen_partner_shares": shares,
                "anion_correction_dropped": float(sum(a.value * (1 - shares[names[a.name]]) for a in limited))}
    return out


# --------------------------------------------------------------------------------------------------
# Hull analysis
# --------------------------------------------------------------------------------------------------

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

    def as_dict(self) -> dict[str, Any]:
        return {"e_hull": self.e_hull, "e_form": self.e_form, "unit": ENERGY_UNIT, "chemsys": self.chemsys,
                "n_phases": self.n_phases, "provider": self.provider, "decomposition": self.decomposition,
                "corrected_energy_per_atom": self.energy_per_atom,
                "correction_per_atom": self.correction_per_atom, "correction_scheme": self.correction_scheme,
                "anion_correction_scale": self.anion_correction_scale, "e_hull_mp2020": self.e_hull_mp2020,
                "flags": list(self.flags)}


def _phase_record(entry: ComputedEntry) -> dict[str, Any]:
    return {"formula": entry.composition.reduced_formula, "entry_id": entry.entry_id,
            "prototype": entry.data.get("prototype"), "energy_per_atom": float(entry.energy_per_atom),
            "unit": ENERGY_UNIT, "source": entry.data.get("energy_source", "dft")}


def hull_analysis(entry: ComputedEntry, references: Sequence[ComputedEntry], provider: str) -> HullResult:
    """E_form against the elemental references and E_hull against all ``references``.

    The candidate and the references pass through :func:`limit_anion_corrections` first (S/Se/Te
    corrections only for sites with a metal partner); the plain-MP2020 E_hull is kept as
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
        raise HullError("missing_elemental_reference",
                        f"reference set {provider!r} has no elemental phase for {', '.join(missing)}")
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
    if e_hull < BELOW_REFERENCE_HULL:
        flags.append("below_reference_hull")
    products = [{**_phase_record(e), "fraction": float(frac)} for e, frac in
                sorted(decomp.items(), key=lambda kv: -kv[1])]
    return HullResult(e_hull=float(e_hull), e_form=float(e_form), chemsys="-".join(elements), n_phases=len(refs),
                      provider=provider, decomposition=products, energy_per_atom=float(limited_entry.energy_per_atom),
                      correction_per_atom=float(limited_entry.correction_per_atom),
                      reference_phases=[_phase_record(r) for r in limited_refs],
                      anion_correction_scale=float(limited_entry.data.get("anion_correction_scale", 1.0)),
                      e_hull_mp2020=e_hull_mp2020, flags=flags)


# --------------------------------------------------------------------------------------------------
# Reference providers
# --------------------------------------------------------------------------------------------------

class ReferenceProvider(Protocol):
    """Gives the MP2020-corrected reference entries of a chemical system.

    ``energy_source`` is ``"mlip"`` when references are computed with the candidate's own MLIP
    (self-consistent) and ``"dft"`` otherwise.
    """

    name: str
    energy_source: str

    def entries(self, elements: Iterable[str]) -> list[ComputedEntry]:
        ...

    def describe(self) -> dict[str, Any]:
        ...


def _decode_entry(d: dict[str, Any]) -> ComputedEntry:
    if d.get("@class") == "ComputedStructureEntry":
        return ComputedStructureEntry.from_dict(d)
    return ComputedEntry.from_dict(d)


def _entry_elements(entry: ComputedEntry) -> set[str]:
    return {el.symbol for el in entry.composition.elements}


class EntriesFileProvider:
    """Reference entries from a JSON(.gz) file of ``ComputedEntry`` / ``ComputedStructureEntry`` dicts.

    The file is a list of entry dicts or a mapping name -> entry dict (as
    ``mp_elemental_reference_entries.json.gz``). Entries are used as they are: they must already carry
    MP2020 corrections (MP's own entries do).
    """

    name = "entries-file"

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            path = get_settings().data_dir / "mp_elemental_reference_entries.json.gz"
        self.path = Path(path)
        self._entries: list[ComputedEntry] | None = None
        self._sha256: str | None = None

    def _load(self) -> list[ComputedEntry]:
        if self._entries is None:
            if not self.path.is_file():
                raise ReferenceUnavailable("reference_file_missing", f"entries file {self.path} does not exist")
            raw_bytes = self.path.read_bytes()
            self._sha256 = hashlib.sha256(raw_bytes).hexdigest()
            text = gzip.decompress(raw_bytes) if raw_bytes[:2] == b"\x1f\x8b" else raw_bytes
            try:
                raw = json.loads(text)
                items = raw.values() if isinstance(raw, dict) else raw
                self._entries = [_decode_entry(d) for d in items]
            except Exception as exc:
                raise ReferenceUnavailable("reference_file_invalid", f"cannot read entries from {self.path}: {exc}") from exc
        return self._entries

    @property
    def energy_source(self) -> str:
        sources = {e.data.get("energy_source", "dft") for e in self._load()}
        return sources.pop() if len(sources) == 1 else "mixed"

    def models(self) -> set[str]:
        """MLIP checkpoint hashes the file's entries were computed with (empty for DFT entries)."""
        return {e.data.get("gen2d_checkpoint_sha256") for e in self._load()
                if e.data.get("energy_source") == "mlip"} - {None}

    def entries(self, elements: Iterable[str]) -> list[ComputedEntry]:
        wanted = set(elements)
        return [e for e in self._load() if _entry_elements(e) <= wanted]

    def describe(self) -> dict[str, Any]:
        self._load()
        return {"provider": self.name, "path": str(self.path), "sha256": self._sha256,
                "n_entries": len(self._entries or []), "energy_source": self.energy_source}


def _mp_api_key(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    key = get_settings().mp_api_key
    if key is not None:
        return key.get_secret_value()
    try:
        from pymatgen.core import SETTINGS

        return SETTINGS.get("PMG_MAPI_KEY")
    except Exception:  # pragma: no cover - settings file unreadable
        return None


class MPAPIProvider:
    """Materials Project entries (GGA/GGA+U mixing, MP2020-corrected by MP) through ``mp_api``.

    Needs the ``mp-api`` package, an API key (argument, ``MP_API_KEY`` or pymatgen's
    ``PMG_MAPI_KEY``) and internet. Results are cached per chemical system in ``store`` (a connected
    maggma ``Store``) so a chemical system is fetched once.
    """

    name = "mp-api"
    energy_source = "dft"

    def __init__(self, api_key: str | None = None, store: Any = None, thermo_type: str = "GGA_GGA+U"):
        self.api_key = _mp_api_key(api_key)
        self.store = store
        self.thermo_type = thermo_type

    def _cache_key(self, chemsys: str) -> str:
        return f"mp-api:{self.thermo_type}:{chemsys}"

    def entries(self, elements: Iterable[str]) -> list[ComputedEntry]:
        elements = sorted(set(elements))
        chemsys = "-".join(elements)
        if self.store is not None:
            doc = self.store.query_one({"ref_key": self._cache_key(chemsys)})
            if doc:
                return [_decode_entry(d) for d in doc["entries"]]
        if get_settings().offline:
            raise ReferenceUnavailable("offline", f"GEN2D_OFFLINE is set and chemical system {chemsys} is not "
                                                  "cached: provider mp-api would need the network")
        if not self.api_key:
            raise ReferenceUnavailable("mp_api_key_missing",
                                       "provider mp-api needs a Materials Project API key: set MP_API_KEY "
                                       "(or PMG_MAPI_KEY in ~/.config/.pmgrc.yaml) and have internet access")
        try:
            from mp_api.client import MPRester
        except ImportError as exc:
            raise ReferenceUnavailable("mp_api_not_installed",
                                       f"provider mp-api needs the mp-api package ({exc}); pip install mp-api") from exc
        try:
            with MPRester(self.api_key) as mpr:
                found = mpr.get_entries_in_chemsys(elements, additional_criteria={"thermo_types": [self.thermo_type]})
        except Exception as exc:
            raise ReferenceUnavailable("mp_api_unreachable",
                                       f"Materials Project query for {chemsys} failed: {type(exc).__name__}: {exc}") from exc
        if self.store is not None:
            self.store.update([{"ref_key": self._cache_key(chemsys), "provider": self.name, "chemsys": chemsys,
                                "entries": [e.as_dict() for e in found]}], key="ref_key")
        return list(found)

    def describe(self) -> dict[str, Any]:
        return {"provider": self.name, "thermo_type": self.thermo_type, "energy_source": self.energy_source,
                "cached_in_store": self.store is not None}


# --- prototype library for mlip-prototypes ---------------------------------------------------------

@dataclass(frozen=True)
class Prototype:
    """A bulk prototype: space group, lattice and Wyckoff sites of template species A (and B)."""

    name: str
    spacegroup: str | int
    lattice: tuple[float, ...]  # a, b, c, alpha, beta, gamma (Å, degrees) of the template
    sites: tuple[tuple[str, tuple[float, float, float]], ...]
    symmetric: bool = False  # swapping A and B gives the same structure type

    def build(self, a: str, b: str | None = None) -> Structure:
        """The prototype decorated with elements ``a`` (and ``b``), scaled to covalent bond lengths."""
        mapping = {"A": a, "B": b or a}
        species = [mapping[s] for s, _ in self.sites]
        coords = [c for _, c in self.sites]
        lat = Lattice.from_parameters(*self.lattice)
        _keep_spacegroup(self.spacegroup)
        s = Structure.from_spacegroup(self.spacegroup, lat, species, coords, tol=1e-3)
        s = s.get_primitive_structure()
        # Scale so that no pair is shorter than its covalent bond length: FIRE then starts from a
        # sensible volume, and a compressed start never lands in an MLIP's short-range artefacts.
        ratio = max((_radius(site.specie.symbol) + _radius(nn.specie.symbol)) / nn.nn_distance
                    for site in s for nn in s.get_neighbors(site, 6.0))
        s.scale_lattice(s.volume * ratio ** 3)
        return s


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
ELEMENT_PROTOTYPES: dict[str, Prototype] = {p.name: p for p in [
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
    Prototype("alpha_b12", "R-3m", (4.908, 4.908, 12.567, 90, 90, 120),
              (("A", (0.1187, -0.1187, 0.8911)), ("A", (0.1967, -0.1967, 0.0243)))),
    # alpha-N2 packing (Pa-3) for every diatomic element; cell relaxation adapts it.
    Prototype("dimer_crystal", "Pa-3", (5.66, 5.66, 5.66, 90, 90, 90), (("A", (0.0528, 0.0528, 0.0528)),)),
]}

# Which elemental polymorphs are tried; the lowest MLIP energy per atom is the elemental reference.
_DIATOMIC = {"H", "N", "O", "F", "Cl", "Br", "I"}
_EXTRA_POLYMORPHS = {"C": ["graphite"], "P": ["black_p", "a7"], "As": ["a7", "black_p"], "Sb": ["a7"],
                     "Bi": ["a7"], "S": ["helical_chain"], "Se": ["helical_chain"], "Te": ["helical_chain"],
                     "Ga": ["alpha_ga"], "B": ["alpha_b12"]}


def element_polymorphs(symbol: str) -> list[str]:
    """Names of the elemental prototypes tried for ``symbol``."""
    if symbol in _DIATOMIC:
        return ["dimer_crystal"]
    return ["fcc", "bcc", "hcp", "sc", "diamond", *_EXTRA_POLYMORPHS.get(symbol, [])]


BINARY_PROTOTYPES: dict[str, Prototype] = {p.name: p for p in [
    Prototype("rocksalt", "Fm-3m", (4.2, 4.2, 4.2, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.5, 0.5, 0.5))), True),
    Prototype("zincblende", "F-43m", (5.4, 5.4, 5.4, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.25, 0.25, 0.25))), True),
    Prototype("wurtzite", "P6_3mc", (3.2, 3.2, 5.2, 90, 90, 120), (("A", (*_H, 0)), ("B", (*_H, 0.375))), True),
    Prototype("cscl", "Pm-3m", (3.0, 3.0, 3.0, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.5, 0.5, 0.5))), True),
    Prototype("nias", "P6_3/mmc", (3.6, 3.6, 5.0, 90, 90, 120), (("A", (0, 0, 0)), ("B", (*_H, 0.25)))),
    # Layered AB (h-BN, AA' stacking): graphite-like bulk of a honeycomb monolayer.
    Prototype("hbn_layered", "P6_3/mmc", (2.5, 2.5, 6.66, 90, 90, 120), (("A", (*_H, 0.25)), ("B", (*_H, 0.75))), True),
    Prototype("fluorite", "Fm-3m", (5.46, 5.46, 5.46, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.25, 0.25, 0.25)))),
    Prototype("cdi2", "P-3m1", (4.0, 4.0, 6.8, 90, 90, 120), (("A", (0, 0, 0)), ("B", (*_H, 0.25)))),
    Prototype("mos2_2h", "P6_3/mmc", (3.16, 3.16, 12.3, 90, 90, 120), (("A", (*_H, 0.25)), ("B", (*_H, 0.621)))),
    Prototype("rutile", "P4_2/mnm", (4.6, 4.6, 2.96, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.305, 0.305, 0)))),
    Prototype("pyrite", "Pa-3", (5.42, 5.42, 5.42, 90, 90, 90), (("A", (0, 0, 0)), ("B", (0.384, 0.384, 0.384)))),
    Prototype("corundum", "R-3c", (4.76, 4.76, 13.0, 90, 90, 120), (("A", (0, 0, 0.352)), ("B", (0.306, 0, 0.25)))),
    Prototype("l1_2", "Pm-3m", (3.8, 3.8, 3.8, 90, 90, 90), (("A", (0, 0.5, 0.5)), ("B", (0, 0, 0)))),
]}


def binary_decorations(a: str, b: str, names: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(prototype, A, B) for every prototype and both decorations of an asymmetric one."""
    a, b = sorted((a, b))
    out = []
    for name in names or BINARY_PROTOTYPES:
        proto = BINARY_PROTOTYPES[name]
        out.append((name, a, b))
        if not proto.symmetric:
            out.append((name, b, a))
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
    shipped : bool or path
        Also read the read-only reference cache shipped with gen2d (``gen2d/assets/references``, built by
        ``scripts/build_reference_cache.py`` for one chemical space; its MANIFEST says how), or the
        given directory. It is keyed exactly like the run-time cache (MLIP checkpoint hash, library
        version, fmax, steps, prototype list), so only an identical setup reads it. ``False``: never.
    """

    name = "mlip-prototypes"
    energy_source = "mlip"

    def __init__(self, calculator: Any, cache_dir: str | os.PathLike | bool | None = None, store: Any = None,
                 fmax: float = 0.1, steps: int = 200, binary_prototypes: Sequence[str] | None = None,
                 progress: bool = False, batched: bool = True, max_batch: int = 32,
                 shipped: bool | str | os.PathLike = True):
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
        self._memory: dict[str, list[ComputedEntry]] = {}
        if shipped is True:
            shipped = Path(__file__).resolve().parent / "assets" / "references"
        self.shipped_dir = Path(shipped) if shipped else None
        self.shipped_hits: set[str] = set()  # subsystems read from the shipped cache (provenance)

    # cache ---------------------------------------------------------------------------------------
    def _settings_tag(self) -> str:
        model = (self.checkpoint_sha256 or self.model.replace(" ", "_"))[:16]
        return f"{model}-v{PROTOTYPE_LIBRARY_VERSION}-f{self.fmax:g}-s{self.steps}"

    def _key(self, subsystem: str) -> str:
        protos = "" if "-" not in subsystem else "-" + hashlib.sha1(
            ",".join(self.binary_prototypes).encode()).hexdigest()[:8]
        return f"{self.name}:{self._settings_tag()}{protos}:{subsystem}"

    @staticmethod
    def _cache_path(root: Path | None, key: str) -> Path | None:
        """``root/<settings tag>/<subsystem>.json.gz``: the layout of the run-time and the shipped cache."""
        if root is None:
            return None
        tag, subsystem = key.split(":", 1)[1].rsplit(":", 1)
        return root / tag / f"{subsystem}.json.gz"

    def _cache_file(self, key: str) -> Path | None:
        return self._cache_path(self.cache_dir, key)

    def _read_cache(self, key: str) -> list[ComputedEntry] | None:
        if key in self._memory:
            return self._memory[key]
        path = self._cache_file(key)
        if path is not None and path.is_file():
            with gzip.open(path, "rt") as fh:
                found = [_decode_entry(d) for d in json.load(fh)["entries"]]
            self._memory[key] = found
            return found
        if self.store is not None:
            doc = self.store.query_one({"ref_key": key})
            if doc:
                found = [_decode_entry(d) for d in doc["entries"]]
                self._memory[key] = found
                return found
        path = self._cache_path(self.shipped_dir, key)
        if path is not None and path.is_file():
            with gzip.open(path, "rt") as fh:
                doc = json.load(fh)
            if doc.get("ref_key") == key:  # same MLIP, settings and prototypes, or not used at all
                found = [_decode_entry(d) for d in doc["entries"]]
                self._memory[key] = found
                self.shipped_hits.add(key.rsplit(":", 1)[1])
                return found
        return None

    def _write_cache(self, key: str, subsystem: str, found: list[ComputedEntry]) -> None:
        self._memory[key] = found
        doc = {"ref_key": key, "provider": self.name, "chemsys": subsystem, "model": self.model,
               "checkpoint_sha256": self.checkpoint_sha256, "entries": [e.as_dict() for e in found]}
        path = self._cache_file(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with gzip.open(tmp, "wt") as fh:  # write then rename: a crash never leaves half a cache file
                json.dump(doc, fh)
            tmp.replace(path)
        if self.store is not None:
            self.store.update([doc], key="ref_key")

    # relaxation ----------------------------------------------------------------------------------
    def _entry_from_result(self, structure: Structure, prototype: str, res: Any) -> ComputedStructureEntry | None:
        from pymatgen.io.ase import AseAtomsAdaptor

        # An unconverged energy is an upper bound of the relaxed one, so keeping it can only raise the
        # hull (never invent stability); a numerical failure is dropped.
        if res.failure not in (None, "not_converged"):
            log.info("reference %s %s dropped: %s", structure.composition.reduced_formula, prototype, res.message)
            return None
        relaxed = AseAtomsAdaptor.get_structure(res.atoms)
        if _collapsed(relaxed):
            log.info("reference %s %s dropped: atoms collapsed", relaxed.composition.reduced_formula, prototype)
            return None
        entry = mlip_entry(relaxed, res.energy, model=self.model, checkpoint_sha256=self.checkpoint_sha256,
                           entry_id=f"gen2d-ref:{relaxed.composition.reduced_formula}:{prototype}",
                           data={"prototype": prototype, "converged": res.converged, "steps": res.steps,
                                 "final_fmax": res.final_fmax})
        try:
            return apply_mp2020(entry)
        except HullError as exc:
            log.info("reference %s dropped: %s", entry.entry_id, exc)
            return None

    def _relax_phase(self, structure: Structure, prototype: str) -> ComputedStructureEntry | None:
        """Relax one reference phase serially (the entry, or None when it is dropped)."""
        from pymatgen.io.ase import AseAtomsAdaptor

        from gen2d.relax import relax_bulk

        res = relax_bulk(AseAtomsAdaptor.get_atoms(structure), self.calculator, fmax=self.fmax, steps=self.steps)
        return self._entry_from_result(structure, prototype, res)

    def _relax_jobs(self, jobs: list[tuple[str, Structure]], label: str) -> list[ComputedStructureEntry | None]:
        """Relax ``(prototype, structure)`` jobs: one entry (or None when dropped) per job, in order."""
        if not jobs:
            return []
        if not self.batched:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover
                def tqdm(x, **_):
                    return x
            return [self._relax_phase(structure, proto) for proto, structure in
                    tqdm(jobs, desc=f"references {label}", disable=not self.progress, leave=False)]
        from pymatgen.io.ase import AseAtomsAdaptor

        from gen2d.relax import relax_bulk_batch

        if self.progress:
            log.info("relaxing %d reference phases (%s) in lockstep batches", len(jobs), label)
        results = relax_bulk_batch([AseAtomsAdaptor.get_atoms(s) for _, s in jobs], self.calculator,
                                   fmax=self.fmax, steps=self.steps, max_batch=self.max_batch)
        return [self._entry_from_result(s, proto, res) for (proto, s), res in zip(jobs, results, strict=True)]

    def _subsystem_jobs(self, subsystem: str) -> list[tuple[str, Structure]]:
        if "-" in subsystem:
            a, b = subsystem.split("-")
            return [(name, BINARY_PROTOTYPES[name].build(x, y))
                    for name, x, y in binary_decorations(a, b, self.binary_prototypes)]
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
                out[sub] = cached
        if missing:
            jobs, owner = [], []
            for sub in missing:
                sub_jobs = self._subsystem_jobs(sub)
                jobs.extend(sub_jobs)
                owner.extend([sub] * len(sub_jobs))
            entries = self._relax_jobs(jobs, ", ".join(missing))
            for sub in missing:
                found = [e for e, o in zip(entries, owner, strict=True) if o == sub and e is not None]
                self._write_cache(self._key(sub), sub, found)
                out[sub] = found
        return out

    @staticmethod
    def _subsystems(elements: Iterable[str]) -> list[str]:
        elements = sorted(set(elements))
        return [*elements, *(f"{a}-{b}" for a, b in combinations(elements, 2))]

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

    def prefetch(self, element_sets: Iterable[Iterable[str]]) -> int:
        """Relax, in one lockstep run, every subsystem of ``element_sets`` not cached yet.

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
        return {"provider": self.name, "energy_source": self.energy_source, "model": self.model,
                "checkpoint_sha256": self.checkpoint_sha256, "library_version": PROTOTYPE_LIBRARY_VERSION,
                "fmax": self.fmax, "steps": self.steps, "binary_prototypes": list(self.binary_prototypes),
                "cache_dir": str(self.cache_dir) if self.cache_dir else None,
                "shipped_cache": str(self.shipped_dir) if self.shipped_dir and self.shipped_dir.is_dir() else None}


def _collapsed(structure: Structure, factor: float = 0.6) -> bool:
    """True when two atoms sit closer than ``factor`` x the sum of covalent radii (an MLIP artefact)."""
    if len(structure) < 2:
        return False
    from ase.data import atomic_numbers, covalent_radii

    radii = np.array([covalent_radii[atomic_numbers[s.specie.symbol]] for s in structure])
    d = structure.distance_matrix + np.eye(len(structure)) * 1e6
    return bool((d < factor * (radii[:, None] + radii[None, :])).any())


PROVIDERS: dict[str, Callable[..., ReferenceProvider]] = {
    "mlip-prototypes": MLIPPrototypesProvider,
    "entries-file": EntriesFileProvider,
    "mp-api": MPAPIProvider,
}


def get_reference_provider(name: str, **options: Any) -> ReferenceProvider:
    """Instantiate the reference provider ``name`` (``mlip-prototypes``, ``entries-file``, ``mp-api``)."""
    try:
        factory = PROVIDERS[name]
    except KeyError:
        raise KeyError(f"no reference provider {name!r} (known: {', '.join(PROVIDERS)})") from None
    return factory(**options)
