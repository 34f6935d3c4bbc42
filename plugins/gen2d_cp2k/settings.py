"""The DFT settings of the ``cp2k`` calculator, as one pydantic model, and the CP2K input they make.

Every knob that changes an energy is a field here, so that the settings hash in provenance names the
physics exactly. The input is GPW: GTH pseudopotentials, MOLOPT basis sets, PBE + D3(BJ), a surface
dipole correction along z for slabs, Γ point or a Monkhorst–Pack mesh.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Elements that get an initial magnetic moment (μB) when spin polarisation is on: the 3d metals and
#: the few 4d/5d ones whose monolayers are known to order magnetically.
MAGNETIC_MOMENTS: dict[str, float] = {
    "V": 3.0,
    "Cr": 4.0,
    "Mn": 5.0,
    "Fe": 4.0,
    "Co": 3.0,
    "Ni": 2.0,
    "Cu": 1.0,
    "Ru": 2.0,
    "Rh": 1.0,
    "Os": 2.0,
    "Gd": 7.0,
    "Eu": 7.0,
}


#: the fields of an annealing rung's preparatory SCF besides its temperature (left out of a plain rung's record)
ANNEAL_FIELDS = frozenset({"anneal_max_scf", "anneal_dipole_correction", "prepare_without_dipole"})


class ScfFallback(BaseModel):
    """One rung of the retry ladder of an SCF that did not converge: gentler Broyden mixing and more steps.

    A rung changes how the SCF reaches its solution, not the solution (the same functional, basis, grid,
    smearing and ``eps_scf``), so it is not part of the settings hash. The rung an evaluation needed is recorded
    in the calculator's cost ledger and provenance.

    A rung with ``anneal_temperature_k`` first runs the SCF with hotter Fermi–Dirac smearing (at most
    ``anneal_max_scf`` steps) and, for a slab, without the surface dipole correction; then the SCF at the
    settings' own temperature, with the correction, from the wavefunction that left. Hot smearing damps the
    occupation flipping of states at the Fermi level; converging before the dipole correction is switched on is
    the usual start for a slab whose SCF diverges with it. Only the second SCF gives the energy, so the physics is
    still the settings'. The smearing-level escalation of the AiiDA CP2K surface protocols uses hotter smearing
    for the result itself; here it only prepares the start.

    A rung with ``prepare_without_dipole`` (and no annealing temperature) prepares a slab's SCF at the settings' own
    temperature without the dipole correction. The SCF with the correction then starts from a converged density:
    going from a hot density to the cold one moves the occupations, and on the way the density can spread into
    the vacuum, where CP2K's correction aborts (3×3 Sc₂CO₂: α 0.05 from its 1500 K density, at step 13). Without a
    dipole correction in effect (a bulk cell, or settings without it) the rung is a plain rung.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mixing_alpha: float = Field(gt=0.0, le=1.0)
    nbroyden: int = Field(ge=1)
    max_scf: int = Field(ge=1)
    mixing_beta: float | None = Field(
        None,
        gt=0.0,
        description="Kerker damping (bohr⁻¹, CP2K's &MIXING BETA, default 0.5) of this rung; larger "
        "damps the long-wavelength charge sloshing of a metallic slab more",
    )
    anneal_temperature_k: float | None = Field(
        None,
        gt=0.0,
        description="electronic temperature (K) of a preparatory SCF whose wavefunction starts this rung's SCF "
        "at the settings' own temperature; its energy is never used",
    )
    anneal_max_scf: int = Field(150, ge=1, description="SCF steps of the preparatory hot SCF")
    anneal_dipole_correction: bool = Field(
        False,
        description="whether the preparatory SCF of a slab keeps the surface dipole correction; without it, a "
        "transient dipole cannot tilt the vacuum potential and pull charge into the vacuum (the divergence CP2K "
        "aborts on), and the rung's own SCF restores it",
    )

    prepare_without_dipole: bool = Field(
        False,
        description="a rung without anneal_temperature_k: first an SCF of a slab at the settings' own temperature "
        "without the surface dipole correction (at most anneal_max_scf steps), whose wavefunction starts the "
        "rung's SCF with it",
    )

    @model_validator(mode="after")
    def _prepares_without_the_correction(self) -> ScfFallback:
        if self.prepare_without_dipole and self.anneal_dipole_correction:
            raise ValueError("prepare_without_dipole prepares without the dipole correction: anneal_dipole_correction")
        return self

    @property
    def prepares(self) -> bool:
        """Whether this rung runs a preparatory SCF before its own (hot, or without the dipole correction)."""
        return self.anneal_temperature_k is not None or self.prepare_without_dipole

    def dump(self, **kwargs: Any) -> dict[str, Any]:
        """``model_dump(**kwargs)`` with ``prepare_without_dipole`` only where it is set: ledgers (their records and
        failed routes) written before the field existed name their rungs without it, and must still compare equal."""
        out = self.model_dump(**kwargs)
        if not self.prepare_without_dipole:
            out.pop("prepare_without_dipole", None)
        return out

    def record(self) -> dict[str, Any]:
        """This rung's fields as a cost-ledger record: a plain rung's mixing, a preparing rung's with its
        preparation."""
        return self.dump(exclude_none=True, exclude=set() if self.prepares else ANNEAL_FIELDS)

    def mixing(self) -> dict[str, float | int]:
        """The fields this rung sets on :class:`Cp2kSettings` (its SCF route at the settings' temperature)."""
        return self.model_dump(exclude_none=True, exclude={"anneal_temperature_k", *ANNEAL_FIELDS})


#: fields of :class:`Cp2kSettings` that choose the SCF's route, not the physics: left out of the settings hash
#: (``mixing_alpha`` and ``nbroyden`` are route too, but they were hashed before this list existed and stay so)
NOT_HASHED = frozenset({"scf_fallback", "mixing_beta", "eps_energy_ha"})


class Cp2kSettings(BaseModel):
    """DFT settings of one CP2K run (energies and forces on a slab, a molecule or a bulk cell).

    Attributes
    ----------
    xc : str
        Exchange–correlation functional of ``&XC_FUNCTIONAL`` (PBE).
    dispersion : {"D3(BJ)", "D3", None}
        Grimme's D3 correction with Becke–Johnson or zero damping (``dftd3.dat`` from cp2k-data).
    basis_set : str
        Default MOLOPT basis of every element (DZVP-MOLOPT-SR-GTH exists for H–Rn).
    basis_overrides : dict
        Per-element basis; H defaults to DZVP-MOLOPT-GTH, whose longer-range functions give H₂ and
        S–H bonds closer to the plane-wave limit than the short-range set.
    potential : str
        GTH pseudopotential family; CP2K picks the valence (``-qN``) of each element from its alias.
    cutoff_ry, rel_cutoff_ry : float
        Plane-wave cutoff of the finest grid and the relative cutoff that maps Gaussians onto grids (Ry).
    scf : {"diag", "ot"}
        ``diag``: diagonalisation with Fermi–Dirac smearing and Broyden mixing, right for metals and for
        the open-shell state of H on a semiconductor. ``ot``: orbital transformation with a FULL_ALL
        preconditioner, for closed-shell gapped layers only (no smearing).
    electronic_temperature_k : float
        Fermi–Dirac smearing temperature (K) of ``diag``. The energy reported is CP2K's total
        (free) energy; at 300 K the −TS term is below 1 meV per atom on the layers measured.
    added_mos : int
        Empty orbitals per spin for smearing; ``-1`` lets CP2K add all of them (slow).
    mixing_alpha, nbroyden : float, int
        Broyden density mixing of ``diag``.
    mixing_beta : float or None
        Kerker damping (bohr⁻¹) of that mixing; None keeps CP2K's default (0.5). Not hashed.
    eps_scf : float
        SCF convergence (largest change of the density matrix in ``diag``, gradient in ``ot``). 1e-5 is
        CP2K's default: on 2H-MoS₂ (3×3) the energy is then converged below 1 meV, while Broyden mixing
        stalled near 2e-5 for tens of steps when asked for 1e-6.
    eps_energy_ha : float or None
        The largest total-energy change (Ha) at the last step of a ``diag`` SCF for CP2K's "converged" to be
        believed; None is ``20 × eps_scf``, at least 2e-4 Ha (:meth:`energy_tolerance`). CP2K stops when the
        density matrix changes by less than ``eps_scf`` in one step, and a noisy SCF can land there while its
        energy still moves: measured, the bare Ti₂CO₂ slab "converged" with a last
        change of 0.087 Ha, and SCFs that converge properly end below 1.1e-4 Ha (2H-MoS₂ + H, blue phosphorene
        + H, H₂: 1.7e-4 after 4 steps). A larger change is an SCF failure (it climbs the retry ladder). Not hashed:
        it never changes an energy it accepts; it is in the provenance's settings.
    max_scf : int
        SCF steps before the run is called unconverged (a named failure, never a number).
    scf_fallback : tuple of ScfFallback
        What an SCF that did not converge in ``max_scf`` steps tries next, rung by rung, from its last
        wavefunction: gentler Broyden mixing (smaller ``mixing_alpha``, longer ``nbroyden``) and more steps. A
        rung that converges stays for the rest of that calculator's evaluations; only when every rung fails is
        the SCF a named failure. Not hashed (:data:`NOT_HASHED`): the rungs keep ``eps_scf`` and every physical
        setting. The first default rung (α 0.05, 12 Broyden vectors, 250 steps) is the usual cure for the charge
        sloshing of an open-shell slab+H; the second starts that SCF again from the wavefunction of a 1500 K SCF
        without the dipole correction, for occupations that flip at the Fermi level and for a slab whose density
        runs into the vacuum (:class:`ScfFallback`); ``()`` turns the retry off.
    spin : {"auto", "on", "off"}
        ``auto``: unrestricted Kohn–Sham when the electron count is odd or a magnetic element
        (``MAGNETIC_MOMENTS``) is present; its multiplicity is 2 for odd counts, 1 otherwise. With smearing the
        multiplicity only starts the SCF (CP2K's ``&SMEAR/FIXED_MAGNETIC_MOMENT`` is negative by default, so the
        moment relaxes); with ``scf="ot"`` (integer occupations) it is fixed. ``off``: restricted; an odd count
        then needs ``scf="diag"`` (the smearing half-fills the last level: a metal, or an H on one, whose moment
        would relax to about zero anyway, at half the cost of the unrestricted SCF).
    dipole_correction : bool
        Surface dipole correction along z (``SURFACE_DIPOLE_CORRECTION``) for slabs with pbc (T, T, F).
    kpoints : tuple of int or None
        Monkhorst–Pack mesh; None is Γ only (use a supercell of at least ~9 Å in-plane).
    kpoint_length : float or None
        A mesh from each structure's own cell instead (Å): ``ceil(kpoint_length / |a_i|)`` points along every
        periodic lattice vector (in-plane only for a slab), the length rule of automatic k-meshes. One setting
        then samples every cell alike: a 4×4 graphene cell (9.9 Å) at 25 Å gets 3×3 (its Dirac point
        included), a 3×3 MoS₂ cell (9.5 Å) 3×3, a cell longer than the length Γ only. Not with ``kpoints`` or
        ``ot``. Hashed only when set, so settings without it keep their hash.
    eps_default : float
        Integral screening threshold (``QS/EPS_DEFAULT``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    xc: str = "PBE"
    dispersion: Literal["D3(BJ)", "D3"] | None = "D3(BJ)"
    basis_set: str = "DZVP-MOLOPT-SR-GTH"
    basis_overrides: dict[str, str] = Field(default_factory=lambda: {"H": "DZVP-MOLOPT-GTH"})
    basis_set_file: str = "BASIS_MOLOPT"
    potential: str = "GTH-PBE"
    potential_file: str = "GTH_POTENTIALS"
    cutoff_ry: float = 400.0
    rel_cutoff_ry: float = 50.0
    scf: Literal["diag", "ot"] = "diag"
    electronic_temperature_k: float = 300.0
    added_mos: int = 40
    mixing_alpha: float = 0.2
    mixing_beta: float | None = None
    nbroyden: int = 8
    eps_scf: float = 1e-5
    eps_energy_ha: float | None = None
    max_scf: int = 100
    scf_fallback: tuple[ScfFallback, ...] = (
        ScfFallback(mixing_alpha=0.05, nbroyden=12, max_scf=250),
        ScfFallback(mixing_alpha=0.05, nbroyden=12, max_scf=250, anneal_temperature_k=1500.0),
        ScfFallback(mixing_alpha=0.05, nbroyden=12, max_scf=250, prepare_without_dipole=True, anneal_max_scf=250),
    )
    spin: Literal["auto", "on", "off"] = "auto"
    dipole_correction: bool = True
    kpoints: tuple[int, int, int] | None = None
    kpoint_length: float | None = Field(default=None, gt=0.0)
    eps_default: float = 1e-12

    @model_validator(mode="after")
    def _one_kpoint_rule(self) -> Cp2kSettings:
        if self.kpoint_length is not None and self.kpoints is not None:
            raise ValueError("give kpoints (a fixed mesh) or kpoint_length (a mesh per cell), not both")
        if self.kpoint_length is not None and self.scf == "ot":
            raise ValueError("kpoint_length makes k-point meshes, and OT does not run with k-points: use scf='diag'")
        return self

    def mesh_for(self, atoms) -> tuple[int, int, int] | None:
        """The Monkhorst–Pack mesh of a calculation on ``atoms`` (ASE), or None for Γ only: ``kpoints`` as given, or
        ``kpoint_length`` applied to the periodic lattice vectors of ``atoms`` (a mesh of all ones is Γ)."""
        if self.kpoints is not None:
            return tuple(int(k) for k in self.kpoints)
        if self.kpoint_length is None:
            return None
        lengths = atoms.cell.lengths()
        mesh = tuple(
            max(1, math.ceil(self.kpoint_length / float(length) - 1e-9)) if periodic else 1
            for length, periodic in zip(lengths, atoms.pbc)
        )
        return None if mesh == (1, 1, 1) else mesh

    @model_validator(mode="after")
    def _annealing_is_hotter(self) -> Cp2kSettings:
        for k, rung in enumerate(self.scf_fallback, 1):
            t = rung.anneal_temperature_k
            if self.scf == "diag" and t is not None and t <= self.electronic_temperature_k:
                raise ValueError(
                    f"scf_fallback rung {k}: anneal_temperature_k {t:g} K must exceed electronic_temperature_k "
                    f"{self.electronic_temperature_k:g} K"
                )
        return self

    def settings_hash(self) -> str:
        """Sixteen hex digits of the SHA-256 of the settings: the same physics has the same hash.

        The SCF retry ladder (:data:`NOT_HASHED`) is left out: it changes the route, not the solution."""
        exclude = set(NOT_HASHED) | ({"kpoint_length"} if self.kpoint_length is None else set())
        blob = json.dumps(self.model_dump(mode="json", exclude=exclude), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def energy_tolerance(self) -> float:
        """``eps_energy_ha``, or when it is None ``20 × eps_scf`` and at least 2e-4 Ha: a looser density tolerance
        lets the energy move more (at 1e-5, SCFs that converge properly ended below 1.1e-4 Ha, H₂ at 1.7e-4); a
        tighter one is a precision of its own, and this check only guards against a false convergence."""
        return self.eps_energy_ha if self.eps_energy_ha is not None else max(20.0 * self.eps_scf, 2e-4)

    def basis_for(self, element: str) -> str:
        return self.basis_overrides.get(element, self.basis_set)

    def at_rung(self, level: int) -> Cp2kSettings:
        """These settings with SCF fallback rung ``level`` applied (0: the settings themselves)."""
        if level <= 0:
            return self
        return self.model_copy(update=self.scf_fallback[level - 1].mixing())


def valence_electrons(element: str, potential: str = "GTH-PBE", data_dir: str | None = None) -> int:
    """Valence charge of ``element`` in the GTH potential family (the ``-qN`` of its alias line)."""
    from gen2d_cp2k.paths import data_file

    path = data_file("GTH_POTENTIALS", data_dir)
    for symbol, names in _headers(str(path)):
        if symbol == element and potential in names:
            for name in names:
                if name.startswith(potential + "-q"):
                    return int(name.rsplit("-q", 1)[1])
    raise KeyError(f"no {potential} pseudopotential for {element} in {path}")


@functools.lru_cache(maxsize=8)
def _headers(path: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(element, names) of every basis set or potential header line of a CP2K data file, aliases included, read
    once per file: a header is an element symbol followed by names (a data line starts with a number, a comment
    with #)."""
    found = []
    with open(path, errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2 and parts[0][:1].isalpha() and parts[0][:1].isupper() and len(parts[0]) <= 2:
                found.append((parts[0], tuple(parts[1:])))
    return tuple(found)


@functools.lru_cache(maxsize=8)
def _names_in(path: str) -> frozenset[tuple[str, str]]:
    """(element, name) of every header of a CP2K data file (:func:`_headers`)."""
    return frozenset((symbol, name) for symbol, names in _headers(path) for name in names)


def missing_data(symbols, settings: Cp2kSettings, data_dir: str | None = None) -> dict[str, str]:
    """Elements of ``symbols`` that these settings cannot describe, each with what is missing: the basis set
    (``settings.basis_for``) in ``settings.basis_set_file``, or the potential in ``settings.potential_file``.

    Empty when every element is covered. The lanthanides, for one, have GTH-PBE potentials but no MOLOPT basis
    in CP2K's ``BASIS_MOLOPT``, and CP2K would only say so once the run starts.
    Raises :class:`gen2d_cp2k.paths.Cp2kUnavailable` when the data files are not found.
    """
    from gen2d_cp2k.paths import data_file

    basis_path = data_file(settings.basis_set_file, data_dir)
    potential_path = data_file(settings.potential_file, data_dir)
    bases = _names_in(str(basis_path)) if basis_path.is_file() else frozenset()
    potentials = _names_in(str(potential_path))
    out: dict[str, str] = {}
    for element in sorted(set(symbols)):
        lacks = []
        if (element, settings.basis_for(element)) not in bases:
            lacks.append(f"no {settings.basis_for(element)} basis in {basis_path}")
        if (element, settings.potential) not in potentials:
            lacks.append(f"no {settings.potential} potential in {potential_path}")
        if lacks:
            out[element] = "; ".join(lacks)
    return out


def wants_spin(symbols: list[str], settings: Cp2kSettings, charge: int = 0) -> tuple[bool, int]:
    """(unrestricted?, multiplicity) for a system of these atoms under ``settings.spin``."""
    electrons = sum(valence_electrons(s, settings.potential) for s in symbols) - charge
    odd = electrons % 2 == 1
    magnetic = any(s in MAGNETIC_MOMENTS for s in symbols)
    if settings.spin == "off":
        if odd and settings.scf != "diag":
            raise ValueError(
                "an odd electron count needs spin polarisation (spin='auto' or 'on'), or scf='diag', whose smearing "
                "occupies the last level by half"
            )
        return False, 1
    if settings.spin == "on" or odd or magnetic:
        return True, 2 if odd else 1
    return False, 1


def restart_suffix(mesh: tuple[int, int, int] | None) -> str:
    """The extension of the wavefunction file CP2K saves for a calculation with k-point ``mesh``
    (:meth:`Cp2kSettings.mesh_for`; None is Γ): ``kp`` with a mesh, else ``wfn``.

    The two hold different things (Γ orbitals; the orbitals of every k-point), so a restart reads the one its
    settings write, and a file of the other kind is never handed to it.
    """
    return "kp" if mesh is not None else "wfn"


def build_input(
    settings: Cp2kSettings,
    symbols: list[str],
    slab: bool,
    charge: int = 0,
    wfn_restart: str | None = None,
    magnetization: dict[str, float] | None = None,
    extra_kinds: dict[str, str] | None = None,
) -> str:
    """The CP2K input (without coordinates and cell, which ASE's calculator writes) for these atoms.

    Parameters
    ----------
    settings : Cp2kSettings
    symbols : list of str
        Chemical symbols of the system; they decide the kinds, spin and multiplicity.
    slab : bool
        Apply the surface dipole correction along z (only when ``settings.dipole_correction``).
    charge : int
        Net charge of the cell.
    wfn_restart : str, optional
        A wavefunction file to start from (``SCF_GUESS RESTART`` falls back to the atomic guess when
        it does not exist), so a killed job resumes its last SCF.
    magnetization : dict, optional
        Initial moments (μB) per element for the atomic guess of a spin-polarised run, over
        ``MAGNETIC_MOMENTS`` (0 removes one). They choose where the SCF starts, not the physics: they are
        not part of the settings hash, but an open-shell system can land in a different spin solution. A key
        may also be a kind of ``extra_kinds``.
    extra_kinds : dict, optional
        Kinds beyond one per element, as {label: element} (``{"H_2": "H"}``): atoms of one element that start
        with another moment than the rest (an adsorbed H beside the H of an OH termination) need a kind of their
        own, since CP2K sets the starting moment per kind. The coordinates name them (:class:`Cp2kCalculator`).
    """
    uks, multiplicity = wants_spin(symbols, settings, charge)
    lines = [
        "&FORCE_EVAL",
        "  &DFT",
        f"    BASIS_SET_FILE_NAME {settings.basis_set_file}",
        f"    POTENTIAL_FILE_NAME {settings.potential_file}",
    ]
    if charge:
        lines.append(f"    CHARGE {charge}")
    if uks:
        lines += ["    UKS", f"    MULTIPLICITY {multiplicity}"]
    if slab and settings.dipole_correction:
        lines += ["    SURFACE_DIPOLE_CORRECTION T", "    SURF_DIP_DIR Z"]
    if wfn_restart:
        lines.append(f"    WFN_RESTART_FILE_NAME {wfn_restart}")
    lines += [
        "    &MGRID",
        f"      CUTOFF {settings.cutoff_ry}",
        f"      REL_CUTOFF {settings.rel_cutoff_ry}",
        "      NGRIDS 4",
        "    &END MGRID",
        "    &QS",
        f"      EPS_DEFAULT {settings.eps_default:.1e}",
        "      EXTRAPOLATION ASPC",
        "    &END QS",
    ]
    if settings.kpoints is not None:
        k = settings.kpoints
        lines += [
            "    &KPOINTS",
            f"      SCHEME MONKHORST-PACK {k[0]} {k[1]} {k[2]}",
            "      SYMMETRY F",
            "      FULL_GRID F",
            "    &END KPOINTS",
        ]
    lines += [
        "    &SCF",
        f"      EPS_SCF {settings.eps_scf:.1e}",
        f"      MAX_SCF {settings.max_scf}",
        f"      SCF_GUESS {'RESTART' if wfn_restart else 'ATOMIC'}",
    ]
    if settings.scf == "diag":
        lines += [
            f"      ADDED_MOS {settings.added_mos}",
            "      &DIAGONALIZATION",
            "        ALGORITHM STANDARD",
            "      &END DIAGONALIZATION",
            "      &MIXING",
            "        METHOD BROYDEN_MIXING",
            f"        ALPHA {settings.mixing_alpha}",
            *([f"        BETA {settings.mixing_beta}"] if settings.mixing_beta is not None else []),
            f"        NBROYDEN {settings.nbroyden}",
            "      &END MIXING",
            "      &SMEAR ON",
            "        METHOD FERMI_DIRAC",
            f"        ELECTRONIC_TEMPERATURE [K] {settings.electronic_temperature_k}",
            "      &END SMEAR",
        ]
    else:
        if settings.kpoints is not None:
            raise ValueError("OT does not run with k-points: use scf='diag'")
        lines += [
            "      &OT",
            "        MINIMIZER DIIS",
            "        PRECONDITIONER FULL_ALL",
            "      &END OT",
            "      &OUTER_SCF",
            f"        EPS_SCF {settings.eps_scf:.1e}",
            "        MAX_SCF 10",
            "      &END OUTER_SCF",
        ]
    lines += [
        "      &PRINT",
        "        &RESTART",
        "          BACKUP_COPIES 0",
        "        &END RESTART",
        "      &END PRINT",
        "    &END SCF",
        "    &XC",
        f"      &XC_FUNCTIONAL {settings.xc}",
        "      &END XC_FUNCTIONAL",
    ]
    if settings.dispersion:
        kind = "DFTD3(BJ)" if settings.dispersion == "D3(BJ)" else "DFTD3"
        lines += [
            "      &VDW_POTENTIAL",
            "        POTENTIAL_TYPE PAIR_POTENTIAL",
            "        &PAIR_POTENTIAL",
            f"          TYPE {kind}",
            f"          REFERENCE_FUNCTIONAL {settings.xc}",
            "          PARAMETER_FILE_NAME dftd3.dat",
            "          R_CUTOFF 15.0",
            "        &END PAIR_POTENTIAL",
            "      &END VDW_POTENTIAL",
        ]
    lines += ["    &END XC", "  &END DFT", "  &SUBSYS"]
    kinds = [(element, element) for element in sorted(set(symbols))] + sorted((extra_kinds or {}).items())
    for label, element in kinds:
        lines += [f"    &KIND {label}"]
        if label != element:
            lines.append(f"      ELEMENT {element}")
        lines += [f"      BASIS_SET {settings.basis_for(element)}", f"      POTENTIAL {settings.potential}"]
        moment = {**MAGNETIC_MOMENTS, **(magnetization or {})}.get(label, 0.0)
        if uks and moment:
            lines.append(f"      MAGNETIZATION {moment}")
        lines.append("    &END KIND")
    lines += ["  &END SUBSYS", "&END FORCE_EVAL"]
    return "\n".join(lines) + "\n"
