"""Stability scorers ``ehull.<mlip>``: in-plane MLIP relaxation, MP2020 compatibility, E_hull via PhaseDiagram.

One core scorer, :class:`EHullScorer`, parameterised by the calculator backend name.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field
from pymatgen.core import Element, Structure

from gen2d.hull import (
    CORRECTION_SCHEME,
    CORRECTION_SCHEME_DESCRIPTION,
    ENERGY_UNIT,
    HullError,
    ReferenceUnavailable,
    apply_mp2020,
    get_reference_provider,
    hull_analysis,
    mlip_entry,
)
from gen2d.relax import cached_calculator, calculator_provenance, relax_in_plane, relax_in_plane_batch
from gen2d.scoring import CALCULATOR_GROUP, BaseScorer, PluginUnavailable, Provenance, ScoreResult, ScorerOptions

log = logging.getLogger(__name__)

# MPtrj-trained models (CHGNet, MatterSim, SevenNet-0) embed elements up to Pu; beyond that the model
# has never seen the element and MP2020 has no reference for it either.
MAX_SUPPORTED_Z = 94


def _to_monolayer_atoms(structure: Structure):
    """ASE atoms of a monolayer in gen2d's convention (vacuum along z, pbc (T, T, F))."""
    from gen2d.structures import orient_2d, to_ase

    return to_ase(orient_2d(structure))


def _from_atoms(atoms) -> Structure:
    from gen2d.structures import from_ase

    return from_ase(atoms)


def _backend_available(name: str, model: str | None) -> tuple[bool, str]:
    for ep in md.entry_points(group=CALCULATOR_GROUP):
        if ep.name == name:
            try:
                factory = ep.load()
            except Exception as exc:
                return False, f"calculator backend {name!r} failed to import: {type(exc).__name__}: {exc}"
            avail = getattr(factory, "available", None)
            if not callable(avail):
                return True, ""
            return avail(model) if model else avail()
    return False, f"no calculator backend {name!r} is registered in {CALCULATOR_GROUP}"


class EHullOptions(ScorerOptions):
    """Options of the ``ehull.*`` scorers (the parameters of :class:`EHullScorer`)."""

    calculator: str | None = Field(None, description="calculator backend; default: the scorer's own")
    model: str | None = Field(None, description="backend model name or checkpoint path")
    device: str = "auto"
    provider: str = Field("mlip-prototypes", description="reference set: mlip-prototypes, entries-file, mp-api")
    provider_options: dict[str, Any] | None = None
    fmax: float = Field(0.05, gt=0, description="relaxation convergence, eV/Å")
    steps: int = Field(500, ge=0, description="FIRE step limit")
    store: Any = None
    progress: bool = True
    stable_threshold: float = Field(0.1, description="E_hull (eV/atom) at or below which extra.stable is True")
    max_elements: int | None = Field(4, ge=1)
    dispersion: Literal["none", "d3bj", "d3zero"] = Field(
        "none",
        description="Grimme D3 (PBE parameters) added to the MLIP for the layer and every reference phase alike "
        "(gen2d.dispersion)",
    )


class EHullScorer(BaseScorer):
    """E_hull of a monolayer after in-plane relaxation with an MLIP.

    Parameters
    ----------
    calculator : str
        Calculator backend (entry point in ``gen2d.calculators``).
    model : str, optional
        Backend model name or checkpoint path (backend default when None).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    provider : str
        Reference set: ``mlip-prototypes`` (default, same MLIP, offline), ``entries-file`` or ``mp-api``.
    provider_options : dict, optional
        Passed to the provider (``path`` for entries-file; ``api_key`` for mp-api; ``cache_dir``,
        ``binary_prototypes``, ``fmax``, ``steps``, ``stacked_layers``, ``molecules`` for mlip-prototypes).
    fmax, steps : float, int
        Monolayer relaxation: convergence in eV/Å and the FIRE step limit.
    store : maggma Store, optional
        Connected store in which providers cache reference entries.
    progress : bool
        Show a progress bar over the batch.
    stable_threshold : float
        E_hull (eV/atom) at or below which ``extra["stable"]`` is True, unless the layer is flagged
        ``below_reference_hull``.
    max_elements : int or None
        Refuse (``too_many_elements``) candidates with more distinct elements. The offline reference
        set holds no phase beyond binaries, so an E_hull for a 6-element layer would be a loose lower
        bound bought with dozens of reference relaxations (one per element pair). None: no limit.
    dispersion : {"none", "d3bj", "d3zero"}
        Grimme's D3 with PBE parameters added to the MLIP (:mod:`gen2d.dispersion`), for the layer and for
        every reference phase the ``mlip-prototypes`` provider relaxes; the reference cache is keyed by the
        corrected model. A layer then pays its exfoliation energy against its layered bulk. Not for
        ``entries-file`` or ``mp-api`` (their DFT energies have no D3): refused with those.

    Examples
    --------
    >>> from gen2d.scoring import get_scorer
    >>> [res] = get_scorer("ehull.chgnet").score([mos2])  # doctest: +SKIP
    >>> res.value, res.unit, res.extra["decomposition"]  # doctest: +SKIP
    >>> res.relaxed()  # the relaxed layer, read by the HER scorers  # doctest: +SKIP
    """

    Options = EHullOptions
    property = "e_hull"
    unit = ENERGY_UNIT
    requires: tuple[str, ...] = ()
    calculator_name = "chgnet"
    # a stored E_hull made under another correction scheme is redone (gen2d score, score jobs)
    current = {"provenance.settings.correction_scheme": CORRECTION_SCHEME}

    def __init__(
        self,
        calculator: str | None = None,
        model: str | None = None,
        device: str = "auto",
        provider: str = "mlip-prototypes",
        provider_options: dict[str, Any] | None = None,
        fmax: float = 0.05,
        steps: int = 500,
        store: Any = None,
        progress: bool = True,
        stable_threshold: float = 0.1,
        max_elements: int | None = 4,
        dispersion: str = "none",
    ):
        self.calculator_name = calculator or self.calculator_name
        self.name = f"ehull.{self.calculator_name}"
        self.model = model
        self.device = device
        self.provider_name = provider
        self.provider_options = dict(provider_options or {})
        self.fmax, self.steps = fmax, steps
        self.store = store
        self.progress = progress
        self.stable_threshold = stable_threshold
        self.max_elements = max_elements
        if dispersion != "none" and provider != "mlip-prototypes":
            raise ValueError(
                f"dispersion={dispersion!r} needs references computed the same way (provider mlip-prototypes), "
                f"not {provider!r}"
            )
        self.dispersion = dispersion
        self._dispersion_calc = None  # the MLIP + D3 sum, built once per MLIP calculator
        self._provider = None
        if provider == "mlip-prototypes":
            # an E_hull against an older prototype library, stacked-layer set or molecule set is redone
            from gen2d.hull.mlip_prototypes import PROTOTYPE_LIBRARY_VERSION
            from gen2d.hull.molecules import MOLECULE_VERSION
            from gen2d.hull.stacked import STACKED_VERSION

            # truth as the provider reads it (`stacked_layers or None`, `bool(molecules)`), so 0 or None turn them off
            stacked = bool(self.provider_options.get("stacked_layers", True))
            with_molecules = bool(self.provider_options.get("molecules", True))
            self.current = {
                **type(self).current,
                "provenance.settings.reference_set.library_version": PROTOTYPE_LIBRARY_VERSION,
                "provenance.settings.reference_set.stacked_layers.version": STACKED_VERSION if stacked else None,
                "provenance.settings.reference_set.molecules.version": MOLECULE_VERSION if with_molecules else None,
            }
        # a stored E_hull with the other dispersion setting is redone (missing counts as none)
        self.current = {**self.current, "provenance.settings.dispersion": None if dispersion == "none" else dispersion}

    # plumbing --------------------------------------------------------------------------------------
    def available(self) -> tuple[bool, str]:
        ok, why = _backend_available(self.calculator_name, self.model)
        if ok and self.dispersion != "none":
            try:
                import torch_dftd  # noqa: F401
            except ImportError as exc:
                return False, f"dispersion={self.dispersion!r} needs torch-dftd ({exc}); pip install torch-dftd"
        return ok, why

    def _calculator(self):
        options: dict[str, Any] = {"device": self.device}
        if self.model:
            options["model"] = self.model
        calc = cached_calculator(self.calculator_name, **options)
        if self.dispersion == "none":
            return calc
        if self._dispersion_calc is None or self._dispersion_calc.base is not calc:
            from gen2d.dispersion import with_dispersion

            self._dispersion_calc = with_dispersion(calc, self.dispersion)
        return self._dispersion_calc

    def _reference_provider(self, calculator):
        if self._provider is None:
            options = dict(self.provider_options)
            if self.provider_name == "mlip-prototypes":
                options.setdefault("calculator", calculator)
                options.setdefault("store", self.store)
                options.setdefault("progress", self.progress)
            elif self.provider_name == "mp-api":
                options.setdefault("store", self.store)
            self._provider = get_reference_provider(self.provider_name, **options)
        return self._provider

    def settings(self) -> dict[str, Any]:
        return {
            "calculator": self.calculator_name,
            "model": self.model,
            "device": self.device,
            "relaxation": {
                "optimizer": "FIRE",
                "cell_filter": "FrechetCellFilter",
                "cell_mask": [1, 1, 0, 0, 0, 1],
                "fmax": self.fmax,
                "fmax_unit": "eV/Å",
                "steps": self.steps,
            },
            "compatibility": "MaterialsProject2020Compatibility(check_potcar=False)",
            "correction_scheme": CORRECTION_SCHEME,
            "correction_scheme_description": CORRECTION_SCHEME_DESCRIPTION,
            "provider": self.provider_name,
            "dispersion": None if self.dispersion == "none" else self.dispersion,
            "stable_threshold": self.stable_threshold,
            "stable_threshold_unit": ENERGY_UNIT,
        }

    def _provenance(self, calculator=None, provider=None) -> Provenance:
        calc = calculator_provenance(calculator) if calculator is not None else {"model": "", "checkpoint_sha256": None}
        notes: list[str] = []
        reference_set = self.provider_name
        settings = self.settings()
        if provider is not None:
            try:
                desc = provider.describe()
            except PluginUnavailable as exc:
                desc = {"provider": self.provider_name, "error": str(exc)}
            settings["reference_set"] = desc
            reference_set = _reference_label(desc)
            notes.extend(_consistency_notes(provider, calc))
        return Provenance(
            plugin=self.name,
            model=calc["model"],
            checkpoint_sha256=calc["checkpoint_sha256"],
            reference_set=reference_set,
            settings=settings,
            notes=notes,
        )

    def _fail(self, prov: Provenance, reason: str, message: str, **extra: Any) -> ScoreResult:
        return ScoreResult.failed(self.property, self.unit, reason, message, prov, **extra)

    # scoring ---------------------------------------------------------------------------------------
    def score(
        self, structures: Sequence[Structure], context: Sequence[dict[str, ScoreResult]] | None = None
    ) -> list[ScoreResult]:
        """Relax each structure in-plane and score its E_hull (eV/atom); one result per input, in order."""
        return [res for res, _ in self._score_batch(structures)]

    def _score_batch(self, structures: Sequence[Structure]) -> list[tuple[ScoreResult, dict[str, Any]]]:
        try:
            calculator = self._calculator()
        except Exception as exc:  # PluginUnavailable, or the backend failing to build its model
            reason = "calculator_unavailable"
            message = f"{self.name}: calculator {self.calculator_name!r} cannot run here: {exc}"
            prov = self._provenance()
            return [(self._fail(prov, reason, message), {}) for _ in structures]
        functional = getattr(calculator, "gen2d_functional", "PBE")
        if functional != "PBE":
            message = (
                f"{self.name}: the {functional} model's energies cannot take MP2020's corrections (fitted to PBE and "
                "PBE+U, with U mixing); choose a PBE-trained model"
            )
            prov = self._provenance(calculator)
            return [(self._fail(prov, "unsupported_functional", message), {}) for _ in structures]
        try:
            provider = self._reference_provider(calculator)
        except Exception as exc:
            prov = self._provenance(calculator)
            return [(self._fail(prov, "reference_unavailable", f"{type(exc).__name__}: {exc}"), {}) for _ in structures]
        prov = self._provenance(calculator, provider)
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover

            def tqdm(x, **_):
                return x

        relaxed = self._relax_valid(structures, calculator, provider)
        out = []
        for i, structure in enumerate(
            tqdm(structures, desc=self.name, disable=not self.progress or len(structures) < 2)
        ):
            try:
                out.append(self._score_one(structure, calculator, provider, prov, relaxed=relaxed.get(i)))
            except Exception as exc:  # last line of defence: a bug on one structure never loses the batch
                log.exception("%s crashed on one structure", self.name)
                out.append((self._fail(prov, "scorer_crashed", f"{type(exc).__name__}: {exc}"), {}))
        return out

    def _relax_valid(self, structures: Sequence[Any], calculator, provider) -> dict[int, Any]:
        """Relax every valid structure of the batch together (lockstep batched MLIP calls).

        Then relaxes, in one go, the reference phases of the chemical systems of all structures that
        relaxed cleanly, when the provider can (``prefetch``). Returns ``{index: RelaxResult}``;
        structures left out (invalid input, a batch of one, or any problem here) are relaxed one by one
        in :meth:`_score_one`, which names their failure.
        """
        valid: dict[int, Any] = {}
        for i, structure in enumerate(structures):
            try:
                if self._check_input(structure) is None:
                    valid[i] = _to_monolayer_atoms(structure)
            except Exception:
                continue
        if len(valid) < 2:
            return {}
        try:
            relaxed = dict(
                zip(
                    valid,
                    relax_in_plane_batch(list(valid.values()), calculator, fmax=self.fmax, steps=self.steps),
                    strict=True,
                )
            )
        except Exception:
            log.exception("%s: batched relaxation crashed; relaxing one by one", self.name)
            return {}
        prefetch = getattr(provider, "prefetch", None)
        if callable(prefetch):
            try:
                prefetch(
                    [
                        [el.symbol for el in structures[i].composition.elements]
                        for i, res in relaxed.items()
                        if res.failure is None
                    ]
                )
            except Exception as exc:  # each structure then asks for its own references and names the failure
                log.info("%s: reference prefetch failed (%s: %s)", self.name, type(exc).__name__, exc)
        return relaxed

    def _check_input(self, structure: Any) -> tuple[str, str] | None:
        if not isinstance(structure, Structure):
            return "invalid_input", f"expected a pymatgen Structure, got {type(structure).__name__}"
        if len(structure) == 0:
            return "invalid_input", "structure has no sites"
        if not np.all(np.isfinite(structure.cart_coords)) or not np.all(np.isfinite(structure.lattice.matrix)):
            return "non_finite_input", "coordinates or lattice contain NaN or inf"
        if not structure.is_ordered:
            return "invalid_input", "partial occupancies cannot be relaxed with an MLIP"
        bad = sorted(
            {
                el.symbol
                for el in structure.composition.elements
                if not isinstance(el, Element) or el.Z > MAX_SUPPORTED_Z
            }
        )
        if bad:
            return "unsupported_element", (
                f"element(s) {', '.join(bad)} are outside the MLIP's training set (Z <= {MAX_SUPPORTED_Z}) and MP2020"
            )
        n_el = len(structure.composition.elements)
        if self.max_elements is not None and n_el > self.max_elements:
            return "too_many_elements", (
                f"{n_el} elements > max_elements={self.max_elements}: the reference set "
                f"has no phases beyond binaries, so this hull would be meaningless"
            )
        return None

    def _score_one(
        self, structure: Any, calculator, provider, prov: Provenance, relaxed: Any = None
    ) -> tuple[ScoreResult, dict[str, Any]]:
        bad = self._check_input(structure)
        if bad:
            return self._fail(prov, *bad), {}
        if relaxed is None:  # not relaxed with its batch (alone, or the batch path was unavailable)
            relaxed = relax_in_plane(_to_monolayer_atoms(structure), calculator, fmax=self.fmax, steps=self.steps)
        convergence = relaxed.summary()
        details: dict[str, Any] = {"relax": convergence}
        relaxed_structure = _from_atoms(relaxed.atoms) if np.all(np.isfinite(relaxed.atoms.positions)) else None
        extra: dict[str, Any] = {"convergence": convergence, "provider": provider.name}
        relaxed_dict = None
        if relaxed_structure is not None:
            relaxed_dict = relaxed_structure.as_dict()  # the declared hand-off to the HER scorers
            extra["relaxed_validation"] = _validation(relaxed_structure)
        if relaxed.failure:
            return self._fail(prov, relaxed.failure, relaxed.message, relaxed_structure=relaxed_dict, **extra), details
        try:
            elements = sorted({el.symbol for el in relaxed_structure.composition.elements})
            references = provider.entries(elements)
            entry = apply_mp2020(
                mlip_entry(
                    relaxed_structure, relaxed.energy, model=prov.model, checkpoint_sha256=prov.checkpoint_sha256
                )
            )
            hull = hull_analysis(entry, references, provider.name)
        except (HullError, ReferenceUnavailable) as exc:
            return self._fail(prov, exc.reason, str(exc), relaxed_structure=relaxed_dict, **extra), details
        details["reference_phases"] = hull.reference_phases
        extra.update(
            {
                "e_form": hull.e_form,
                "e_form_unit": ENERGY_UNIT,
                "energy_per_atom": relaxed.energy_per_atom,
                "energy_per_atom_unit": ENERGY_UNIT,
                "correction_per_atom": hull.correction_per_atom,
                "chemsys": hull.chemsys,
                "n_phases": hull.n_phases,
                "decomposition": hull.decomposition,
                # a layer below its references points to a missing phase, never to stability (docs/scorers/ehull.md)
                "stable": bool(hull.e_hull <= self.stable_threshold and "below_reference_hull" not in hull.flags),
                "correction_scheme": hull.correction_scheme,
                "anion_correction_scale": hull.anion_correction_scale,
                "e_hull_mp2020": hull.e_hull_mp2020,
                "flags": hull.flags,
                "missing_reference": hull.missing_reference,
            }
        )
        shipped = getattr(provider, "shipped_hits", None)
        if shipped is not None:  # which reference subsystems came from gen2d's shipped cache
            subsystems = set(elements) | {f"{a}-{b}" for i, a in enumerate(elements) for b in elements[i + 1 :]}
            extra["references_from_shipped_cache"] = sorted(subsystems & shipped)
        return ScoreResult(
            property=self.property,
            value=hull.e_hull,
            unit=self.unit,
            extra=extra,
            relaxed_structure=relaxed_dict,
            provenance=prov,
        ), details

    def explain(self, structure: Structure) -> dict[str, Any]:
        """Everything this scorer does with one structure: settings, reference phases, relaxed cell, result."""
        [(result, details)] = self._score_batch([structure])
        convergence = result.extra.get("convergence", {})
        return {
            "scorer": self.name,
            "property": self.property,
            "unit": self.unit,
            "settings": result.provenance.settings,
            "model": result.provenance.model,
            "checkpoint_sha256": result.provenance.checkpoint_sha256,
            "reference_set": result.provenance.reference_set,
            "notes": result.provenance.notes,
            "reference_phases": details.get("reference_phases", []),
            "initial_cell": convergence.get("initial_cell"),
            "relaxed_cell": convergence.get("final_cell"),
            "cell_unit": "Å",
            "convergence": {
                k: convergence.get(k)
                for k in (
                    "converged",
                    "steps",
                    "final_fmax",
                    "final_fmax_unit",
                    "energy",
                    "energy_unit",
                    "failure",
                    "message",
                )
            },
            "result": result.model_dump(mode="json"),
        }


def _validation(structure: Structure) -> dict[str, Any]:
    """Ingest validation of the relaxed layer (recorded, not enforced: curated layers may fail strict)."""
    try:
        from gen2d.structures import validate_ingest
    except ImportError:
        return {"ok": None, "reasons": ["validator_unavailable"]}
    try:
        v = validate_ingest(structure)
        return {"ok": bool(v.ok), "reasons": list(v.reasons)}
    except Exception as exc:
        return {"ok": False, "reasons": ["validator_crashed"], "message": f"{type(exc).__name__}: {exc}"}


def _reference_label(desc: dict[str, Any]) -> str:
    name = desc.get("provider", "?")
    if name == "mlip-prototypes":
        stacked = desc.get("stacked_layers") or {}
        plus = (
            f" + stacked layers v{stacked['version']} ({stacked['n_layers']}, {stacked['fingerprint']})"
            if stacked.get("n_layers")
            else ""
        )
        if desc.get("molecules"):
            plus += f" + molecules v{desc['molecules']['version']}"
        return (
            f"mlip-prototypes v{desc.get('library_version')}{plus} ({desc.get('model')}; fmax {desc.get('fmax')} eV/Å)"
        )
    if name == "entries-file":
        sha = (desc.get("sha256") or "")[:12]
        return f"entries-file {desc.get('path')} (sha256 {sha}…, {desc.get('n_entries')} entries, {desc.get('energy_source')})"
    return f"{name} ({desc.get('thermo_type', '')})".strip()


def _consistency_notes(provider, calc: dict[str, Any]) -> list[str]:
    """Say so when candidate (MLIP) and reference energies do not come from the same model."""
    source = getattr(provider, "energy_source", "dft")
    if provider.name == "entries-file" and source == "mlip":
        models = provider.models()
        if models == {calc["checkpoint_sha256"]}:
            return []
        source = "mlip (other model)"
    if source == "mlip":
        return []
    return [
        f"mixed energy scales: the candidate energy is {calc['model']} (MP2020-corrected) while the "
        f"reference energies are {source}; E_form and E_hull then carry the MLIP's absolute error against "
        "DFT (tens of meV/atom) and are for screening only. Use provider mlip-prototypes for a "
        "self-consistent hull."
    ]


class CHGNetEHullScorer(EHullScorer):
    """``ehull.chgnet``: the offline default (CHGNet weights ship in its wheel)."""

    calculator_name = "chgnet"


class MatterSimEHullScorer(EHullScorer):
    """``ehull.mattersim``: needs MatterSim weights on disk (named model in MatterSim's cache or a path)."""

    calculator_name = "mattersim"


class SevenNetEHullScorer(EHullScorer):
    """``ehull.sevennet``: SevenNet-0 by default (weights ship in the sevenn wheel)."""

    calculator_name = "sevennet"


__all__ = ["EHullScorer", "CHGNetEHullScorer", "MatterSimEHullScorer", "SevenNetEHullScorer"]
