"""``dgh.dft``: ΔG_H (eV) from CP2K DFT on the best sites an MLIP found: the last stage of the funnel.

The recipe is ``dgh.mlip``'s (explicit H on both faces, the same site rules and failure names). The MLIP
relaxes the slab and every site; DFT then relaxes H and the slab atoms around it, at fixed cell, on the
few best sites (:class:`gen2d.adsorption.RefineSettings`), with E(H₂) by the same DFT settings.
Every evaluated DFT frame is kept (``relax.traj`` in the work directory) for fine-tuning an MLIP.
"""

from __future__ import annotations

import hashlib
import logging
import typing
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from pydantic import create_model
from pymatgen.core import Structure

from gen2d.adsorption import (
    AdsorptionSettings,
    RefinementFailed,
    RefineSettings,
    h2_reference_dft,
    refine_adsorption,
)
from gen2d.scoring import BaseScorer, PluginUnavailable, Provenance, ScoreResult, ScorerOptions

log = logging.getLogger(__name__)

__all__ = ["DFTAdsorptionScorer", "default_workdir"]


def default_workdir() -> Path:
    """Where DFT runs keep their restart files and frames: ``$GEN2D_DFT_DIR`` or ``<cache>/dft``."""
    from gen2d.settings import get_settings

    settings = get_settings()
    return Path(settings.dft_dir) if settings.dft_dir else Path(settings.cache_dir) / "dft"


#: dgh.dft's relaxation protocol where it differs from :class:`RefineSettings`' generic defaults: the MLIP prepares
#: each site's start (its relaxation of the free atoms and its Hessian), DFT relaxes to 0.1 eV/Å, and one fresh
#: atomic-guess SCF checks the converged site's spin solution. On the 2H-MoS₂ reference row (3×3, S top) this gives
#: ΔG_H within 0.1 meV of the clean-slab start at 0.05 eV/Å with half the SCF steps (168 against 337–351;
#: docs/dft.md, ``dft-runs/fast``). The reference set's rows record the protocol each was built with. A step that
#: jumps to a higher SCF solution mid-relaxation is recomputed from a fresh start (``scf_jump_check``; 2H-MoSe₂'s
#: Se-top relaxation spent its last 14 steps 88 meV high, until the check at its end).
DFT_PROTOCOL: dict[str, Any] = {"fmax": 0.1, "prerelax": "chgnet", "spin_starts": (0.0,), "scf_jump_check": True}


#: refinement settings that leave the bare slab's and every site's calculation as they are, so that runs differing
#: only in them share one directory: the H₂ reference has its own directory; the spin-start check and the vibrations
#: are added to a finished site in place; held and free sites share the slab in directories of their own; and
#: ``n_sites`` takes a prefix of one ordered list of sites (:func:`gen2d.adsorption.pick_sites_to_refine`), each in a
#: directory named by its index and start, so raising it reuses the slab and the sites already finished; the SCF-jump
#: guard recomputes a step only where the chain's SCF left its solution
RUN_UNKEYED = ("h2_box", "spin_starts", "hold_site", "vibrations", "n_sites", "scf_jump_check")
#: the ``n_sites`` values :meth:`DFTAdsorptionScorer.run_dir` looks for among directories keyed with ``n_sites``
RUN_N_SITES_KEYED = range(1, 9)


def _options_model() -> type[ScorerOptions]:
    """The scorer's own options, the refinement's and every field of :class:`AdsorptionSettings`."""
    hints = typing.get_type_hints(AdsorptionSettings)
    refine_hints = typing.get_type_hints(RefineSettings)
    refine = {f.name: (refine_hints[f.name], f.default) for f in fields(RefineSettings)}
    # fmax, steps and min_inplane_length name the DFT refinement; the MLIP stage keeps its defaults for them
    refine.update({k: (refine_hints[k], v) for k, v in DFT_PROTOCOL.items()})
    recipe = {f.name: (hints[f.name], f.default) for f in fields(AdsorptionSettings) if f.name not in refine}
    return create_model(
        "DFTAdsorptionOptions",
        __base__=ScorerOptions,
        __module__=__name__,
        mlip=(str, "chgnet"),
        mlip_model=(str | None, None),
        cp2k=(dict | None, None),
        threads=(int | None, None),
        workdir=(str | None, None),
        device=(str, "auto"),
        **refine,
        **recipe,
    )


#: options of ``dgh.dft``: its own, :class:`RefineSettings` and :class:`AdsorptionSettings`
DFTAdsorptionOptions = _options_model()


class DFTAdsorptionScorer(BaseScorer):
    """ΔG_H (eV) at the best DFT-refined site (minimum |ΔG_H| among unflagged sites).

    Parameters
    ----------
    mlip : str
        ``gen2d.calculators`` backend of the cheap stage that supplies the slab and the sites when no
        ``dgh.mlip`` result is in the context (default chgnet).
    mlip_model : str, optional
        Model of that backend.
    cp2k : dict
        :class:`gen2d_cp2k.Cp2kSettings` fields (cutoff_ry, basis_set, scf, kpoints, ...).
    threads : int, optional
        OpenMP threads of each CP2K process; default ``GEN2D_CP2K_THREADS`` (1). A local flow runs its DFT
        candidates one after another, so on a small machine give CP2K every core: on 2 cores, 2 threads run
        one SCF step 1.67× faster than 1 (``scripts/bench_dft.py threads``, docs/benchmarks/dft-reference.md).
    workdir : str, optional
        Restart and frame directory; default :func:`default_workdir`. Runs are keyed by candidate
        structure hash and settings hash, so a rerun resumes where a killed one stopped. ``n_sites`` is not in
        the key: raising it reuses the slab and the sites already finished.
    n_sites, free_radius, steps, min_inplane_length, relax_slab_reference, vacuum, h2_box, h_jitter
        :class:`gen2d.adsorption.RefineSettings`.
    fmax : float
        eV/Å, the DFT relaxations' force criterion (default 0.1, :data:`DFT_PROTOCOL`).
    prerelax : str, optional
        An MLIP (``gen2d.calculators`` name; the ``mlip`` one gets ``mlip_model`` and ``device``) that relaxes
        each site's free atoms before DFT and gives DFT's BFGS its Hessian there
        (:attr:`gen2d.adsorption.RefineSettings.prerelax`; default chgnet): fewer DFT steps; an open-shell SCF
        can end in another spin solution than from the clean-slab start. None starts DFT from the clean slab.
    spin_starts : tuple of float
        Initial moments on H (μB) of fresh-start single points at each converged site
        (:attr:`gen2d.adsorption.RefineSettings.spin_starts`; default ``(0.0,)``, one atomic-guess SCF): a lower
        SCF solution takes the site over. ``[0, 1]`` also tries a moment on H (one more SCF), the thorough
        choice for open-shell sheets; ``[]`` skips the check. Not part of the run key, so finished runs gain
        the check in place.
    hold_site : bool
        Keep H over each site in the plane (z relaxes; :attr:`gen2d.adsorption.RefineSettings.hold_site`): the
        ΔG_H of that site even where DFT would move H off it, as published per-site values are.
    vibrations : bool
        Also compute each converged site's ΔZPE − TΔS from H*'s and H₂'s harmonic frequencies
        (:attr:`gen2d.adsorption.RefineSettings.vibrations`; 7 single points per site, 13 once for H₂), stored
        with the site as ``vibrations``; the score stays ΔE_H + ``dg_correction``. Not part of the run key.
    fold_k : bool
        Hexagonal supercells in multiples of 3, so that Γ holds K and K′
        (:attr:`gen2d.adsorption.RefineSettings.fold_k`); every result records ``gamma_samples_k``.
    **settings
        :class:`gen2d.adsorption.AdsorptionSettings` fields of the MLIP stage and the flags
        (``dg_correction``, ``max_sites_per_face``, ...).
    """

    name = "dgh.dft"
    property = "dg_h"
    unit = "eV"
    requires = ("e_hull", "dg_h")
    batch_size = 1
    Options = DFTAdsorptionOptions
    #: a rerun tries these again: CP2K installed since, an SCF that the retry ladder may converge, a CP2K abort,
    #: a crashed or killed process. A slab or site that failed with the ladder comes back from its cached
    #: result.json at once, so retrying it costs nothing; a crash is not cached and runs again.
    retry_failures = ("calculator_unavailable", "scf_not_converged", "dft_aborted", "adsorption_failed")

    def __init__(
        self,
        mlip: str = "chgnet",
        mlip_model: str | None = None,
        cp2k: dict | None = None,
        threads: int | None = None,
        workdir: str | None = None,
        n_sites: int = 2,
        free_radius: float = 3.0,
        fmax: float = DFT_PROTOCOL["fmax"],
        steps: int = 60,
        min_inplane_length: float = 9.0,
        relax_slab_reference: bool = False,
        vacuum: float | None = 15.0,
        h2_box: float = 12.0,
        h_jitter: float = 0.1,
        prerelax: str | None = DFT_PROTOCOL["prerelax"],
        spin_starts: tuple[float, ...] | list[float] = DFT_PROTOCOL["spin_starts"],
        hold_site: bool = False,
        vibrations: bool = False,
        fold_k: bool = False,
        scf_jump_check: bool = DFT_PROTOCOL["scf_jump_check"],
        device: str = "auto",
        **settings: Any,
    ):
        from gen2d_cp2k import Cp2kSettings

        known = {f.name for f in fields(AdsorptionSettings)}
        unknown = set(settings) - known
        if unknown:
            raise TypeError(f"unknown dgh.dft settings: {sorted(unknown)} (known: {sorted(known)})")
        for key in ("site_kinds", "dg_h_window"):
            if key in settings:
                settings[key] = tuple(settings[key])
        self.settings = AdsorptionSettings(**settings)
        self.refine = RefineSettings(
            n_sites=n_sites,
            free_radius=free_radius,
            fmax=fmax,
            steps=steps,
            min_inplane_length=min_inplane_length,
            relax_slab_reference=relax_slab_reference,
            vacuum=vacuum,
            h2_box=h2_box,
            h_jitter=h_jitter,
            prerelax=prerelax,
            spin_starts=tuple(spin_starts),
            hold_site=hold_site,
            vibrations=vibrations,
            fold_k=fold_k,
            scf_jump_check=scf_jump_check,
        )
        self.cp2k = Cp2kSettings(**(cp2k or {}))
        from gen2d.settings import get_settings

        self.threads = int(threads or get_settings().cp2k_threads)
        self.workdir = Path(workdir) if workdir else default_workdir()
        self.mlip = mlip
        self.mlip_model = mlip_model
        self.device = device
        # a stored result made with other DFT settings is redone, and with fold_k one made without it (a supercell
        # it does not change is shared, so that costs nothing there)
        self.current = {"provenance.settings.cp2k_settings_hash": self.cp2k.settings_hash()}
        if self.refine.fold_k:
            self.current["provenance.settings.refine.fold_k"] = True

    def available(self) -> tuple[bool, str]:
        from gen2d_cp2k import available

        return available()

    def _make_calculator(self, directory: str, unrestricted: bool = False):
        from gen2d_cp2k import make_calculator

        extra = {"unrestricted": True} if unrestricted else {}
        return make_calculator(settings=self.cp2k, directory=directory, threads=self.threads, **extra)

    def _slab_needs_uks(self, slab: Structure) -> bool:
        """Whether the DFT supercell of ``slab`` has an odd electron count under spin "auto", so that it is computed
        unrestricted (a doublet whose moment relaxes under smearing). Its slab+H is even and would be restricted:
        the two energies of ΔE_H would come from different treatments, and a slab+H with unpaired electrons would be
        forced closed-shell. Such a refinement computes its slab+H parts unrestricted as well."""
        from gen2d_cp2k.settings import valence_electrons

        from gen2d.adsorption import supercell_repeats

        if self.cp2k.spin != "auto":
            return False
        na, nb = supercell_repeats(slab.lattice, self.refine.min_inplane_length, fold_k=self.refine.fold_k)
        per_cell = sum(valence_electrons(site.specie.symbol, self.cp2k.potential) for site in slab)
        return (per_cell * na * nb) % 2 == 1

    def provenance(self, notes: Sequence[str] = (), cost: dict | None = None) -> Provenance:
        from gen2d_cp2k import cp2k_version_cached

        settings = {
            "mlip": self.mlip,
            "mlip_model": self.mlip_model,
            "cp2k": self.cp2k.model_dump(mode="json"),
            "cp2k_settings_hash": self.cp2k.settings_hash(),
            "cp2k_version": cp2k_version_cached(),
            "threads": self.threads,
            "refine": self.refine.as_dict(),
            **self.settings.as_dict(),
        }
        if cost:
            settings["cost"] = cost
        return Provenance(
            plugin=self.name,
            model=f"CP2K {self.cp2k.xc}"
            f"{'+' + self.cp2k.dispersion if self.cp2k.dispersion else ''}/{self.cp2k.basis_set}",
            checkpoint_sha256=None,
            reference_set="H2 relaxed by the same DFT settings",
            settings=settings,
            notes=list(notes),
        )

    def _mlip_stage(self, structure: Structure, ctx: dict | None) -> tuple[Structure, list[dict], list[str]]:
        """(relaxed slab, MLIP site records, notes): from a dgh.mlip result in the context, else run it."""
        notes: list[str] = []
        upstream = (ctx or {}).get("dg_h")
        if upstream is not None and upstream.ok and upstream.extra.get("sites") and upstream.relaxed() is not None:
            notes.append(f"sites and slab from {upstream.provenance.plugin} ({upstream.provenance.model})")
            return upstream.relaxed(), list(upstream.extra["sites"]), notes
        from gen2d.scoring import get_scorer

        # through the registry: plugins never import each other
        mlip = get_scorer(
            "dgh.mlip", calculator=self.mlip, model=self.mlip_model, device=self.device, **self.settings.as_dict()
        )
        res = mlip.score([structure], [ctx] if ctx is not None else None)[0]
        if not res.extra.get("sites"):
            raise _StageFailure(
                res.failure.reason if res.failure else "no_valid_site",
                f"MLIP stage found no site: {res.failure.message if res.failure else ''}",
            )
        notes.append(f"sites and slab from dgh.mlip on {self.mlip} ({res.provenance.model})")
        return res.relaxed(), list(res.extra["sites"]), notes

    def _run_metadata(self) -> dict[str, Any]:
        """What every DFT frame of this scorer carries: calculator, settings and their hash, CP2K version."""
        from gen2d_cp2k import cp2k_version_cached

        return {
            "calculator": "cp2k",
            "settings_hash": self.cp2k.settings_hash(),
            "cp2k_settings": self.cp2k.model_dump(mode="json"),
            "cp2k_version": cp2k_version_cached(),
            "scorer": self.name,
        }

    def _prerelax_calculator(self):
        """The MLIP that prepares each DFT start, with this scorer's model and device; loaded once per process."""
        from gen2d.relax import cached_calculator

        options: dict[str, Any] = {"device": self.device}
        if self.refine.prerelax == self.mlip and self.mlip_model:
            options["model"] = self.mlip_model
        return cached_calculator(self.refine.prerelax, **options)

    def run_dir(self, structure: Structure, slab: Structure | None = None) -> Path:
        """The work directory of one structure under these settings (``slab``: the MLIP-relaxed slab the
        refinement builds its supercell from, when known).

        Its name hashes the structure, the CP2K settings and the refinement settings but :data:`RUN_UNKEYED`.
        Directories keyed with ``n_sites`` as well (:meth:`_run_key_with_n_sites`: the committed ones under
        ``dft-runs/``, whose paths rows.jsonl files hold) are used in place where this one does not exist: the one
        of this ``n_sites`` if it is there, else the one with the most finished sites (then a finished slab, then the
        most sites begun), so that their slab and sites are not computed again.
        """
        current = self.workdir / self._run_key(structure, slab, self.refine, RUN_UNKEYED)
        if current.is_dir():
            return current
        keyed_with_n = {n: self.workdir / self._run_key_with_n_sites(structure, slab, n) for n in RUN_N_SITES_KEYED}
        found = {n: d for n, d in keyed_with_n.items() if d.is_dir()}
        if not found:
            return current
        if self.refine.n_sites in found:
            return found[self.refine.n_sites]
        # ties go to the smallest n_sites: max keeps the first of equals
        return max(found.values(), key=_progress)

    def _run_key(
        self, structure: Structure, slab: Structure | None, refine: RefineSettings, unkeyed: tuple[str, ...]
    ) -> str:
        """Sixteen hex digits of the structure's content hash, the CP2K settings hash and ``refine`` but
        ``unkeyed``."""
        from gen2d.structures import content_hash

        keyed = {k: v for k, v in refine.as_dict().items() if k not in unkeyed}
        if "relax_slab_reference" in keyed:
            # it adds the slab_site_<k> parts beside the slab and the sites, which it leaves as they are; every run
            # directory on disk was keyed with False, so the key keeps False and a run with it reuses them
            keyed["relax_slab_reference"] = False
        lattices = [s for s in (structure, slab) if s is not None]
        if keyed.get("fold_k") and not any(self._fold_k_changes_supercell(s) for s in lattices):
            # the same supercell, so the same calculation: a 3×3 MoS₂ run is shared with and without fold_k. The
            # refined slab's lattice counts too: an MLIP-relaxed a across a repeat boundary must not share a run
            keyed.pop("fold_k")
        return hashlib.sha256(
            f"{content_hash(structure)}-{self.cp2k.settings_hash()}-{sorted(keyed.items())}".encode()
        ).hexdigest()[:16]

    def _run_key_with_n_sites(self, structure: Structure, slab: Structure | None, n_sites: int) -> str:
        """The key of a run directory that also hashes ``n_sites``. Directories on disk carry these names, so it
        must not change: ``tests/plugins/test_cp2k.py`` checks it against a committed reference run."""
        refine = replace(self.refine, n_sites=n_sites)
        return self._run_key(
            structure, slab, refine, ("h2_box", "spin_starts", "hold_site", "vibrations", "scf_jump_check")
        )

    def _fold_k_changes_supercell(self, structure: Structure) -> bool:
        from gen2d.adsorption import supercell_repeats
        from gen2d.structures import orient_2d

        lattice = orient_2d(structure).lattice
        length = self.refine.min_inplane_length
        return supercell_repeats(lattice, length, fold_k=True) != supercell_repeats(lattice, length)

    def cannot_score(self, structure: Structure) -> tuple[str, str] | None:
        """``unsupported_element`` when the CP2K data files lack a basis set or potential of these settings for
        one of the structure's elements (the lanthanides have no MOLOPT basis); None otherwise, and where CP2K's
        data is not found (``calculator_unavailable`` says that, and is retried)."""
        from gen2d_cp2k import Cp2kUnavailable, missing_data

        try:
            symbols = [el.symbol for el in structure.composition.elements] + ["H"]
            missing = missing_data(symbols, self.cp2k)
        # no CP2K data (calculator_unavailable names it), or not a structure with elements (the ingest check does)
        except (Cp2kUnavailable, OSError, AttributeError, ValueError):
            return None
        if not missing:
            return None
        return "unsupported_element", "CP2K cannot describe " + "; ".join(f"{el}: {why}" for el, why in missing.items())

    def score_one(self, structure: Structure, ctx: dict | None = None) -> ScoreResult:
        ok, why = self.available()
        if not ok:
            return ScoreResult.failed(self.property, self.unit, "calculator_unavailable", why, self.provenance())
        refused = self.cannot_score(structure)
        if refused is not None:  # before the MLIP stage and any CP2K process: nothing is spent on it
            return ScoreResult.failed(self.property, self.unit, *refused, self.provenance())
        notes: list[str] = []
        try:
            from gen2d.structures import validate_ingest

            check = validate_ingest(structure)
            if not check.ok:
                return ScoreResult.failed(
                    self.property,
                    self.unit,
                    check.reasons[0] if check.reasons else "invalid_structure",
                    "; ".join(check.messages) or "structure failed ingest validation",
                    self.provenance(),
                )
            slab, sites, notes = self._mlip_stage(structure, ctx)
            workdir = self.run_dir(structure, slab)
            # the H2 reference depends only on the DFT settings: one per settings hash, shared by all runs
            from gen2d.structures import content_hash

            meta = self._run_metadata()
            h2_dir = str(self.workdir / f"h2-{self.cp2k.settings_hash()}-{self.refine.h2_box:g}")
            h2 = h2_reference_dft(
                h2_dir,
                self._make_calculator,
                box=self.refine.h2_box,
                metadata=meta,
            )
            unrestricted = self._slab_needs_uks(slab)
            if unrestricted:
                notes.append("the bare slab has an odd electron count: its slab+H parts are computed unrestricted too")
            h2_root = Path(h2_dir).resolve()

            def make_calculator(directory: str):
                # the slab and H2 keep their own spin rule; every other part of such a run is unrestricted
                part = Path(directory).resolve()
                if unrestricted and part.name != "slab" and h2_root not in (part, *part.parents):
                    return self._make_calculator(directory, unrestricted=True)
                return self._make_calculator(directory)

            result = refine_adsorption(
                slab,
                sites,
                make_calculator,
                str(workdir),
                self.settings,
                self.refine,
                h2=h2,
                h2_directory=h2_dir,
                prerelax_calculator=self._prerelax_calculator,
                metadata={
                    **meta,
                    "formula": structure.composition.reduced_formula,
                    "content_hash": content_hash(structure),
                    "mlip": self.mlip,
                    # every frame of the run says so: its slab+H parts are unrestricted though spin is "auto"
                    **({"slab_h_parts_unrestricted": True} if unrestricted else {}),
                },
            )
        except (_StageFailure, RefinementFailed) as exc:
            return ScoreResult.failed(self.property, self.unit, exc.reason, str(exc), self.provenance(notes))
        except PluginUnavailable as exc:
            return ScoreResult.failed(
                self.property, self.unit, "calculator_unavailable", str(exc), self.provenance(notes)
            )
        except Exception as exc:  # noqa: BLE001 - one structure never loses the batch
            log.debug("dgh.dft failed", exc_info=True)
            return ScoreResult.failed(
                self.property, self.unit, "adsorption_failed", f"{type(exc).__name__}: {exc}", self.provenance(notes)
            )
        extra = result.as_dict()
        extra["workdir"] = str(workdir)
        extra["wall_seconds"] = round(getattr(result, "wall_seconds", 0.0), 1)
        # this result's parts only: a directory shared with a larger n_sites holds sites this result does not use
        parts = {"slab"} | {Path(x.run_dir).name for x in result.sites if x.run_dir}
        cost = _cost_of(workdir, parts | {f"slab_{p}" for p in parts})
        prov = self.provenance(notes, cost)
        best = result.best
        if best is None:
            reasons = sorted({f for s in result.sites for f in s.flags}) or ["no_sites"]
            named = ("scf_not_converged", "dft_aborted", "geometry_not_converged")
            reason = next((r for r in named if r in reasons), "no_valid_site")
            return ScoreResult.failed(
                self.property,
                self.unit,
                reason,
                f"no DFT site gave a valid ΔG_H (flags: {', '.join(reasons)})",
                prov,
                relaxed_structure=slab,
                **extra,
            )
        return ScoreResult(
            property=self.property,
            value=float(best.delta_g_h),
            unit=self.unit,
            extra=extra,
            relaxed_structure=slab,
            provenance=prov,
        )

    def score(
        self, structures: Sequence[Structure], context: Sequence[dict[str, ScoreResult]] | None = None
    ) -> list[ScoreResult]:
        ctx = list(context) if context is not None else [None] * len(structures)
        return [self.score_one(s, c) for s, c in zip(structures, ctx)]

    def explain(self, structure: Structure) -> dict[str, Any]:
        from gen2d.adsorption import gamma_samples_k, supercell_repeats
        from gen2d.structures import orient_2d

        slab = orient_2d(structure)
        na, nb = supercell_repeats(slab.lattice, self.refine.min_inplane_length, fold_k=self.refine.fold_k)
        return {
            "scorer": self.name,
            "property": self.property,
            "unit": self.unit,
            "recipe": "MLIP slab + sites -> CP2K relaxes H and neighbours at fixed cell on the best "
            f"{self.refine.n_sites} sites; ΔE_H = E(slab+H) − E(slab) − ½E(H2); ΔG_H = ΔE_H + "
            f"{self.settings.dg_correction}",
            "dft_supercell": [na, nb],
            "gamma_samples_k": gamma_samples_k(slab.lattice, (na, nb)),
            "n_atoms": len(slab) * na * nb + 1,
            "cp2k": self.cp2k.model_dump(mode="json"),
            "cp2k_settings_hash": self.cp2k.settings_hash(),
            "refine": self.refine.as_dict(),
            "workdir": str(self.run_dir(structure)),
        }


class _StageFailure(RuntimeError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _progress(run: Path) -> tuple[int, bool, int]:
    """(finished sites, finished bare slab, sites begun) of a run directory: a part is finished when it holds its
    ``result.json``; a site begun but not finished holds its frames and wavefunction to resume from."""
    finished = sum(1 for _ in run.glob("site_*/result.json"))
    return finished, (run / "slab" / "result.json").is_file(), sum(1 for p in run.glob("site_*") if p.is_dir())


def _cost_of(workdir: Path, parts: set[str] | None = None) -> dict[str, Any]:
    """Summed CP2K cost (evaluations, SCF steps, wall seconds) of the parts (sub-directory names; None: all) of
    one run, with their sites' checks: the spin starts (``start_H<m>/``), the relaxation on from a lower start
    (the site's ``spin_starts.cost``), the vibrations and the SCF-jump guard's fresh starts (``scf_jump-*/``)."""
    import json

    total = {"n_evaluations": 0, "scf_steps_total": 0, "wall_seconds": 0.0}
    found = [
        *workdir.glob("*/result.json"),
        *workdir.glob("*/vibrations/result.json"),
        *workdir.glob("*/start_H*/result.json"),
        # the fresh starts of the SCF-jump guard, in a site's relaxation and in a spin takeover's
        *workdir.glob("*/scf_jump-*/result.json"),
        *workdir.glob("*/lowest_start*/scf_jump-*/result.json"),
    ]
    for path in found:
        part = path.relative_to(workdir).parts[0]
        if parts is not None and part not in parts:
            continue
        doc = json.loads(path.read_text())
        costs = [doc.get("cost") or {}, (doc.get("spin_starts") or {}).get("cost") or {}]
        for cost in costs:
            for key in total:
                total[key] += cost.get(key, 0) or 0
    total["wall_seconds"] = round(total["wall_seconds"], 1)
    return total
