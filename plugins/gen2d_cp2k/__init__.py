"""CP2K calculator backend (entry point ``gen2d.calculators: cp2k``): DFT through the same core code as an MLIP.

ASE's ``CP2K`` calculator drives ``cp2k_shell``: one CP2K process per calculator keeps the wavefunction
between the steps of a relaxation. gen2d adds what high-throughput DFT needs on top: the input is
built from :class:`~gen2d_cp2k.settings.Cp2kSettings` for each system (kinds, spin, multiplicity),
slabs get a dipole correction, an SCF that does not converge is retried with gentler mixing
(``Cp2kSettings.scf_fallback``) and, when every rung fails, raises :class:`ScfNotConverged` instead of
returning a number, every evaluation is timed and counted, and the wavefunction file is kept so that a
killed job restarts from it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import all_changes
from ase.calculators.cp2k import CP2K

from gen2d.fileio import write_json_atomic
from gen2d_cp2k.paths import Cp2kUnavailable, cp2k_version, data_dir, find_shell_command
from gen2d_cp2k.settings import (
    MAGNETIC_MOMENTS,
    Cp2kSettings,
    ScfFallback,
    build_input,
    missing_data,
    restart_suffix,
    wants_spin,
)

log = logging.getLogger(__name__)

__all__ = [
    "atom_kinds",
    "Cp2kAborted",
    "Cp2kCalculator",
    "Cp2kSettings",
    "Cp2kUnavailable",
    "ScfFallback",
    "ScfNotConverged",
    "FalseConvergence",
    "available",
    "make_calculator",
    "missing_data",
    "abort_message",
    "scf_abort",
    "scf_diverged",
    "scf_last_change",
    "abs_spin_density",
    "scf_runs",
    "vacuum_width",
]


class ScfNotConverged(RuntimeError):
    """CP2K's SCF did not reach ``eps_scf`` within ``max_scf`` steps: the energy is not a result."""


class FalseConvergence(ScfNotConverged):
    """CP2K met ``eps_scf`` while the total energy still moved by more than the tolerance at that step
    (:meth:`Cp2kSettings.energy_tolerance`)."""


class Cp2kAborted(RuntimeError):
    """CP2K stopped with an error (its ``[ABORT]`` message is in the exception text); the shell is gone."""


_SCF_STEPS = re.compile(r"\*\*\* SCF run converged in\s+(\d+) steps")
# OT with an outer loop: the inner loops that hit MAX_SCF print no "converged" line; this one counts them all
_OUTER_STEPS = re.compile(r"outer SCF loop converged in\s+\d+ iterations or\s+(\d+) steps")
_NOT_CONVERGED = ("SCF run NOT converged", "SCF run not converged")


def scf_steps_in(text: str, max_scf: int) -> tuple[int, bool]:
    """(SCF steps, converged?) of the CP2K output ``text`` of one evaluation. An OT run with an outer loop counts
    every inner step (its inner loops that reach MAX_SCF print no "converged" line); an unconverged SCF counts as
    ``max_scf`` steps."""
    if any(flag in text for flag in _NOT_CONVERGED):
        return max_scf, False
    outer = _OUTER_STEPS.findall(text)
    if outer:
        return sum(int(s) for s in outer), True
    found = _SCF_STEPS.findall(text)
    return (sum(int(s) for s in found), True) if found else (0, True)


# one line of CP2K's SCF table: step, method, mixing/step size, time, convergence, total energy, change
_SCF_TABLE_LINE = re.compile(r"^\s+\d+\s+\S.*\s-?\d+\.\d+\s+[-+]?\d+\.\d+E[-+]\d+\s*$", re.MULTILINE)
_SCF_STEP_CHANGE = re.compile(r"^\s+(\d+)\s+\S.*\s-?\d+\.\d+\s+([-+]?\d+\.\d+E[-+]\d+)\s*$")


def scf_last_change(text: str) -> tuple[int, float] | None:
    """(step, total-energy change in Ha) of the last line of the last SCF table in ``text``, or None when there is
    none. At step 1 the change is the whole energy (CP2K counts from 0), so only later steps measure a drift."""
    lines = _SCF_TABLE_LINE.findall(text)
    if not lines:
        return None
    m = _SCF_STEP_CHANGE.match(lines[-1])
    return (int(m.group(1)), float(m.group(2))) if m else None


_ABS_SPIN = re.compile(r"Integrated absolute spin density\s*:\s*([-0-9.Ee+]+)")


def abs_spin_density(text: str) -> float | None:
    """The last ``Integrated absolute spin density`` of a CP2K output ``text`` (an unrestricted run prints it after
    each SCF), or None (a closed-shell run)."""
    found = _ABS_SPIN.findall(text)
    return float(found[-1]) if found else None


def scf_runs(text: str) -> list[dict[str, Any]]:
    """Every SCF of a CP2K output ``text``, in order: ``steps``, ``converged`` (CP2K's own verdict; None for a table
    that ends without one, an SCF still running or killed) and ``changes``, the total-energy change of each step
    after the first (Ha). What the SCF energy check (:meth:`Cp2kSettings.energy_tolerance`) reads is the last one.
    """
    runs: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _SCF_STEP_CHANGE.match(line)
        if m:
            step = int(m.group(1))
            if current is None or step <= current["steps"]:
                current = {"steps": 0, "converged": None, "changes": []}
                runs.append(current)
            current["steps"] = step
            if step > 1:
                current["changes"].append(float(m.group(2)))
        elif current is not None and "SCF run converged" in line:
            current["converged"], current = True, None
        elif current is not None and any(flag in line for flag in _NOT_CONVERGED):
            current["converged"], current = False, None
    return runs


_DIPOLE_VACUUM = "dipole correction needs more vacuum space"


#: Å of vacuum above which the converged density of a layer passes the dipole correction's check (1e-5 a.u.). Outside
#: a surface the density decays as exp(−2κz) with κ = √(2W) for a work function W of 4–6 eV (κ ≈ 0.55–0.65 bohr⁻¹):
#: about a decade per 0.9 Å, so it is near 1e-5 a.u. some 4 Å beyond the outer nuclei, and the middle of the gap
#: holds both faces' tails. 10 Å leaves about 5 Å on either side. Below it an abort is the cell's.
DIVERGENCE_MIN_VACUUM = 10.0


def vacuum_width(atoms) -> float:
    """The widest empty slice (Å) along the slab normal (a × b): the vacuum of a slab, wherever it sits in the cell."""
    cell = np.asarray(atoms.cell)
    normal = np.cross(cell[0], cell[1])
    norm = float(np.linalg.norm(normal))
    height = abs(float(np.dot(cell[2], normal))) / norm if norm else float(np.linalg.norm(cell[2]))
    if len(atoms) == 0 or height == 0.0:
        return height
    frac = np.sort(np.mod(atoms.get_scaled_positions(wrap=False)[:, 2], 1.0))
    gaps = np.diff(np.concatenate([frac, [frac[0] + 1.0]]))
    return float(gaps.max()) * height


def scf_diverged(reason: str, output: str, vacuum: float, retrying: bool = False) -> int:
    """SCF steps made before CP2K stopped an SCF whose density spread into the vacuum, else 0.

    CP2K's surface dipole correction places its dipole layer where the plane-averaged density is lowest and aborts
    ("Dipole correction needs more vacuum space above the surface") when even that is above 1e-5 a.u. In a cell
    with ``vacuum`` (Å, :func:`vacuum_width`) of at least :data:`DIVERGENCE_MIN_VACUUM`, only an SCF that pushes
    charge into the vacuum fails it, after two or more SCF steps (3×3 Ti₂CO₂ with 15 Å did at step 9 of Broyden
    α 0.2, its energy swinging by 8 Ha): an SCF failure for the retry ladder. While ``retrying`` (the cell passed the
    check before) it counts at any step. With less vacuum the abort is the cell's, a named abort. ``output`` is the
    evaluation's part of the CP2K output."""
    if _DIPOLE_VACUUM not in " ".join(reason.split()).lower() or vacuum < DIVERGENCE_MIN_VACUUM:
        return 0
    steps = len(_SCF_TABLE_LINE.findall(output))
    return max(steps, 1) if retrying else (steps if steps > 1 else 0)


def abort_message(output: str) -> str | None:
    """The text of the last ``[ABORT]`` box in CP2K ``output`` (one evaluation's part of the file), or None."""
    if "[ABORT]" not in output:
        return None
    # the box is ASCII art in the first 15 columns and the message to its right
    box = output[output.rindex("[ABORT]") :].splitlines()[1:6]
    words = [line[15:].strip(" *") for line in box if len(line) > 16]
    return " ".join(w for w in words if w) or "unknown error"


def _label_coordinates(text: str, labels: list[str]) -> str:
    """CP2K input ``text`` with each line of its ``&COORD`` section naming the kind in ``labels`` (one per atom,
    in order) instead of the element ASE wrote."""
    lines, inside, k = text.split("\n"), False, 0
    for i, line in enumerate(lines):
        word = line.strip().upper()
        if word.startswith("&END COORD"):
            inside = False
        elif inside and line.strip():
            head, rest = line.lstrip().split(None, 1)
            lines[i] = line[: len(line) - len(line.lstrip())] + f"{labels[k]} {rest}"
            k += 1
        elif word.startswith("&COORD"):
            inside = True
    if k != len(labels):
        raise ValueError(f"the input's &COORD has {k} atoms, the kinds name {len(labels)}")
    return "\n".join(lines)


def scf_abort(reason: str) -> bool:
    """Whether a CP2K abort message is an SCF that did not converge (CP2K 2024.1 and later stop there unless
    ``IGNORE_CONVERGENCE_FAILURE`` is set; 2023.1, Debian's, warns and goes on)."""
    text = " ".join(reason.split()).lower()
    return "scf run not converged" in text or "ignore_convergence_failure" in text


def atom_kinds(atoms) -> tuple[list[str], dict[str, str], dict[str, float]]:
    """The CP2K kinds of ``atoms`` (ASE) from their initial magnetic moments (μB), which CP2K sets per kind
    (``&KIND/MAGNETIZATION``): (a kind label per atom, the kinds beyond one per element as {label: element}, the
    nonzero moment of each kind).

    Atoms of one element share its kind while they share a moment. Where they do not (an adsorbed H started with a
    moment beside the H of an OH termination), the atoms with the moment of the element's first atom keep the
    element's kind and each other moment gets a kind of its own, ``H_1``, ``H_2``…, in order of first appearance.
    A kind whose atoms start at 0 has no moment here; the calculator gives it its element's configured or default
    moment, as for the element's own kind, so that which atom comes first changes nothing."""
    symbols = atoms.get_chemical_symbols()
    if not atoms.has("initial_magmoms"):
        return list(symbols), {}, {}
    values = np.asarray(atoms.get_initial_magnetic_moments(), float)
    if values.ndim != 1:
        raise ValueError("non-collinear initial magnetic moments are not supported by the cp2k calculator")
    labels: list[str] = []
    extra: dict[str, str] = {}
    moments: dict[str, float] = {}
    seen: dict[str, dict[float, str]] = {}  # element -> {moment: label}
    for symbol, moment in zip(symbols, values.tolist()):
        mine = seen.setdefault(symbol, {})
        if moment not in mine:
            label = symbol if not mine else f"{symbol}_{len(mine)}"
            mine[moment] = label
            if label != symbol:
                extra[label] = symbol
            if moment:
                moments[label] = moment
        labels.append(mine[moment])
    return labels, extra, moments


#: Keywords of ASE's ``CP2K`` calculator that would write input sections of their own, all off: the whole input is
#: :func:`~gen2d_cp2k.settings.build_input`'s (``inp``), and ASE adds only the coordinates and the cell.
ASE_INPUT_OFF: dict[str, Any] = {
    "inp": "",
    "basis_set": None,
    "basis_set_file": None,
    "potential_file": None,
    "pseudo_potential": None,
    "xc": None,
    "cutoff": None,
    "max_scf": None,
    "stress_tensor": False,
    "poisson_solver": None,
    "print_level": "LOW",
}


class Cp2kCalculator(CP2K):
    """ASE's CP2K calculator with gen2d's settings, slab handling, convergence checks and accounting.

    Parameters
    ----------
    settings : Cp2kSettings
        The DFT settings; their hash goes into provenance.
    directory : str
        Working directory of the CP2K process (input, output, wavefunction files).
    command : str, optional
        ``cp2k_shell`` command; default from ``GEN2D_CP2K_COMMAND`` or PATH.
    threads : int
        OpenMP threads of the CP2K process.
    label : str
        CP2K project name (file prefix) inside ``directory``.
    restart_wfn : bool
        Start the first SCF from the saved wavefunction in ``directory`` (:attr:`wfn_file`) when it exists.
    magnetization : dict, optional
        Initial moments (μB) per element for the atomic guess (see :func:`~gen2d_cp2k.settings.build_input`);
        recorded in :meth:`provenance`. The atoms' own initial magnetic moments (ASE's
        ``set_initial_magnetic_moments``, the way VASP and GPAW take them) add to these, per element.
    unrestricted : bool
        Under ``spin="auto"``, compute every system unrestricted (as ``spin="on"``), whatever its electron count;
        recorded in :meth:`provenance`. A ΔG_H subtracts E(slab) from E(slab+H): when the bare slab needs UKS (an
        odd electron count), ``dgh.dft`` computes its slab+H parts with this, so that both energies come from the
        same treatment, and an even slab+H with unpaired electrons is not forced closed-shell.

    Attributes
    ----------
    n_evaluations, scf_steps, wall_seconds, n_processes : int, list of int, float, int
        Energy/force evaluations made in ``directory``, SCF steps of each, wall time spent in CP2K and
        the number of calculator processes that worked there. They are cumulative over restarts: each
        evaluation updates ``<label>-cost.json``, which a calculator started on the same directory reads,
        so a resumed relaxation reports what the whole result cost.
    scf_level : int
        The SCF fallback rung in use (0: the settings' own mixing; ``k``: ``settings.scf_fallback[k-1]``). It
        only rises, and it is kept in the ledger, so a resumed run goes on with the rung that worked.
    scf_retries : list of dict
        Every retry of a stalled SCF: the index of the rung's own SCF, the rung and its fields, SCF steps and
        whether it converged (an annealing rung adds its hot SCF's steps, and whether it converged or aborted).
    scf_failed : dict or None
        The route (rung and mixing) on which this directory's last SCF failed for good, kept in the ledger: the
        first evaluation of a resumed run does not repeat it but goes on to a rung above it, if the ladder has one.
    scf_climbing : dict or None
        The rung a climb has entered and the evaluation it is for, written to the ledger before that rung's SCFs
        start and cleared when it ends. A process stopped meanwhile (a killed job) resumes on that rung, with its
        annealing SCF, instead of running the rungs below it again: each can cost hours on a hard system.
    """

    def __init__(
        self,
        settings: Cp2kSettings | None = None,
        directory: str = ".",
        command: str | None = None,
        threads: int = 1,
        label: str = "gen2d",
        restart_wfn: bool = True,
        magnetization: dict[str, float] | None = None,
        unrestricted: bool = False,
        **kwargs: Any,
    ):
        self.gen2d_settings = settings or Cp2kSettings()
        # spin "auto" counts as "on" for this calculator: every system it computes is unrestricted, so that a
        # refinement whose bare slab needs UKS (an odd electron count) computes its slab+H in UKS too
        self.unrestricted = bool(unrestricted)
        # the k-point mesh of the structure being computed (None: Γ); set from its cell by each input
        self._mesh = self.gen2d_settings.kpoints
        self.magnetization = dict(magnetization or {})
        self.start_magnetization = dict(self.magnetization)
        command = find_shell_command(command)
        # Threads are fixed by the environment of the child process.
        env_prefix = f"env OMP_NUM_THREADS={int(threads)} OPENBLAS_NUM_THREADS=1 "
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._workdir = Path(directory).absolute()
        self._restart_wfn = restart_wfn
        self._created = time.time()
        self._data_dir = str(data_dir())
        # the cost of a directory's work survives restarts: a resumed run adds to its ledger
        self._ledger = self._workdir / f"{label}-cost.json"
        prior = self._read_ledger()
        self.n_evaluations = int(prior.get("n_evaluations", 0))
        self.scf_steps: list[int] = [int(n) for n in prior.get("scf_steps", [])]
        self.wall_seconds = float(prior.get("wall_seconds", 0.0))
        self.n_processes = int(prior.get("n_processes", 0)) + 1
        self.scf_level = min(int(prior.get("scf_level", 0)), len(self.gen2d_settings.scf_fallback))
        self.scf_retries: list[dict[str, Any]] = list(prior.get("scf_retries", []))
        # the route (mixing) of the rung on which the last SCF in this directory failed for good: a resumed run on
        # the same route does not repeat that SCF, it goes on up the ladder (a changed ladder is tried as usual)
        self.scf_failed: dict[str, Any] | None = prior.get("scf_failed") or None
        # the rung a climb had entered (written before its SCFs start) when its process stopped: the route below it
        # failed for that evaluation, so a resumed run goes on with that rung, its annealing SCF included, the way
        # it goes on after a failed route, instead of running the rung below it again
        self.scf_climbing: dict[str, Any] | None = None
        climbing = prior.get("scf_climbing")
        if isinstance(climbing, dict) and 1 <= int(climbing.get("level", 0)) <= len(self.gen2d_settings.scf_fallback):
            self.scf_level = int(climbing["level"]) - 1
            self.scf_failed = self._route()
        elif self.scf_failed is None:
            self.scf_failed = self._inferred_failure()
        self._resume_checked = False  # the failed route is skipped once, by the first evaluation of this process
        # cp2k_shell reads and writes files relative to its own working directory: start it there.
        cwd = os.getcwd()
        os.chdir(self._workdir)
        try:
            super().__init__(
                command=env_prefix + command,
                label=label,
                **ASE_INPUT_OFF,
                **kwargs,
            )
        finally:
            os.chdir(cwd)
        # the output file is appended to by every process that works in this directory: read only this one's part
        self._out_offset = self._output_size()
        self._retrying = False  # climbing the SCF fallback ladder (scf_diverged counts an abort at any step)
        self._anneal_k: float | None = None  # electronic temperature of a rung's preparatory SCF, while it runs
        self._evaluation_started = 0.0  # time.time() of the evaluation in progress
        self.gen2d_model = (
            f"CP2K ({self.gen2d_settings.xc}"
            f"{'+' + self.gen2d_settings.dispersion if self.gen2d_settings.dispersion else ''}, "
            f"{self.gen2d_settings.basis_set}, {self.gen2d_settings.cutoff_ry:g} Ry, "
            f"settings {self.gen2d_settings.settings_hash()})"
        )
        self.gen2d_checkpoint_sha256 = None

    # -- input --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop cp2k_shell. A shell (or its launcher) that has already exited, killed or crashed after its last
        answer, is not an error here: everything it computed has been read, and the caller must not lose it."""
        shell = self._shell
        try:
            super().close()
        except (AssertionError, BrokenPipeError, OSError) as exc:
            log.warning("cp2k_shell in %s had already exited when closed (%s)", self._workdir, type(exc).__name__)
            child = getattr(shell, "_child", None)
            if child is not None and child.poll() is None:
                child.kill()
            if shell is not None:  # so that its own __del__ does not try again
                shell._child, shell.isready = None, False
            self._shell = None
            self._force_env_id = None

    @property
    def wfn_file(self) -> Path:
        """The wavefunction CP2K saves after each SCF step and a restart reads: ``<label>-RESTART.wfn`` at Γ,
        ``<label>-RESTART.kp`` with a k-point mesh (CP2K writes the k-point orbitals in a file of their own)."""
        return self._workdir / f"{self.label}-RESTART.{restart_suffix(self._mesh)}"

    @property
    def out_file(self) -> Path:
        return self._workdir / f"{self.label}.out"

    def _generate_input(self) -> str:
        text = super()._generate_input()
        # A slab is periodic in 3D for the plane-wave grid, with vacuum along z and the dipole correction
        # (CP2K's SURFACE_DIPOLE_CORRECTION needs a fully periodic Poisson solver).
        text = re.sub(r"PERIODIC\s+XY\b(?!Z)", "PERIODIC XYZ", text)
        labels = getattr(self, "_kind_labels", None)
        if labels:
            text = _label_coordinates(text, labels)
        return text

    def _prepare(self, atoms, restart_wfn: bool | None = None) -> None:
        """Load the input for ``atoms``; ``restart_wfn`` (default: the constructor's) starts the SCF from the
        directory's last wavefunction when it exists. A retry always does: it goes on from the SCF that failed."""
        symbols = atoms.get_chemical_symbols()
        slab = not bool(atoms.pbc[2])
        self._mesh = self.gen2d_settings.mesh_for(atoms)  # before wfn_file is read: it names the file by the mesh
        use = self._restart_wfn if restart_wfn is None else restart_wfn
        if use and not self._restart_wfn and self.wfn_file.is_file():
            # asked for a fresh start: only a wavefunction this process's own SCFs wrote is the failed SCF's
            use = self.wfn_file.stat().st_mtime >= self._created
        restart = str(self.wfn_file.name) if use and self.wfn_file.is_file() else None
        labels, extra_kinds, moments = atom_kinds(atoms)
        self._kind_labels = labels if extra_kinds else None  # the coordinates name the extra kinds
        element_moment = {**MAGNETIC_MOMENTS, **self.magnetization}
        for label, element in extra_kinds.items():  # an extra kind starting at 0: its element's moment, as ever
            if label not in moments and element_moment.get(element):
                moments[label] = element_moment[element]
        self.start_magnetization = {**self.magnetization, **moments}
        inp = build_input(
            self._spin_rule(self.active_settings).model_copy(update={"kpoints": self._mesh}),
            symbols,
            slab=slab,
            wfn_restart=restart,
            magnetization=self.start_magnetization,
            extra_kinds=extra_kinds or None,
        )
        inp = inp.replace("BASIS_SET_FILE_NAME ", f"BASIS_SET_FILE_NAME {self._data_dir}/", 1)
        inp = inp.replace("POTENTIAL_FILE_NAME ", f"POTENTIAL_FILE_NAME {self._data_dir}/", 1)
        inp = inp.replace("PARAMETER_FILE_NAME dftd3.dat", f"PARAMETER_FILE_NAME {self._data_dir}/dftd3.dat")
        self.parameters.inp = inp

    @property
    def active_settings(self) -> Cp2kSettings:
        """The settings with the SCF fallback rung in use applied (the physics of :attr:`gen2d_settings`, except
        during a rung's preparatory hot SCF, whose energy is never handed out)."""
        active = self.gen2d_settings.at_rung(self.scf_level)
        if self._anneal_k is not None:
            rung = self.gen2d_settings.scf_fallback[self.scf_level - 1]
            active = active.model_copy(
                update={
                    "electronic_temperature_k": self._anneal_k,
                    "max_scf": rung.anneal_max_scf,
                    "dipole_correction": active.dipole_correction and rung.anneal_dipole_correction,
                }
            )
        return active

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        if atoms is not None and ("numbers" in system_changes or self._force_env_id is None):
            if self._force_env_id is not None:
                self._release_force_env()
            self._prepare(atoms)
        if atoms is not None:
            self.atoms = atoms.copy()
        resumed_failure = not self._resume_checked and self.scf_failed is not None and self.scf_failed == self._route()
        self._resume_checked = True
        try:
            if resumed_failure:
                raise ScfNotConverged(f"the last SCF in {self._workdir} failed on rung {self.scf_level}")
            self._evaluate_settled(atoms, properties, system_changes)
        except ScfNotConverged as exc:
            try:
                self._climb_scf_ladder(exc, properties, anneal_again=not resumed_failure)
            except ScfNotConverged:
                self.scf_failed = self._route()
                self._write_ledger()
                raise
        if self.scf_failed is not None:
            self.scf_failed = None
            self._write_ledger()

    def _route(self) -> dict[str, Any]:
        """How the SCF at the current rung is run: its level, mixing and every field of its rung (compared on
        resume)."""
        a = self.gen2d_settings.at_rung(self.scf_level)
        route = {
            "level": self.scf_level,
            "mixing_alpha": a.mixing_alpha,
            "nbroyden": a.nbroyden,
            "max_scf": a.max_scf,
            "mixing_beta": a.mixing_beta,
            # a false convergence is restarted once (_evaluate_settled): a route failed without it is tried again
            "false_convergence_restarts": 1,
        }
        if self.scf_level:
            route["rung"] = self.gen2d_settings.scf_fallback[self.scf_level - 1].dump(mode="json")
        return route

    def _inferred_failure(self) -> dict[str, Any] | None:
        """The failed route of a ledger that names none: its last evaluation was a rung's SCF that did not converge,
        on the rung the ledger holds. Either the ledger is from before ``scf_failed`` existed, or its process stopped
        after that rung failed and before the next rung's SCF ended (a ledger from before ``scf_climbing``)."""
        if not self.scf_retries or not self.scf_level:
            return None
        last = self.scf_retries[-1]
        if last.get("converged") is False and last.get("rung") == self.scf_level:
            if last.get("evaluation") == self.n_evaluations - 1:
                return self._route()
        return None

    def _climb_scf_ladder(self, failure: ScfNotConverged, properties, anneal_again: bool = True) -> None:
        """Retry the evaluation that just failed its SCF, rung by rung of ``scf_fallback``, each from the last
        wavefunction; re-raise the last failure when no rung is left. A failure on a rung that anneals
        (``ScfFallback.anneal_temperature_k``) first anneals again on that rung (``anneal_again``): a new geometry
        can flip its occupations as the first did."""
        ladder = self.gen2d_settings.scf_fallback
        levels = list(range(self.scf_level + 1, len(ladder) + 1))
        if anneal_again and 0 < self.scf_level and self._prepares(ladder[self.scf_level - 1]):
            levels.insert(0, self.scf_level)
        for level in levels:
            self.scf_level = level
            self.scf_climbing = {"level": level, "evaluation": self.n_evaluations}
            self._write_ledger()  # a process stopped from here on resumes on this rung
            rung = ladder[level - 1]
            log.warning(
                "CP2K SCF in %s did not converge; retrying from the last wavefunction with rung %d "
                "(mixing α %g, NBROYDEN %d, MAX_SCF %d%s)",
                self._workdir,
                level,
                rung.mixing_alpha,
                rung.nbroyden,
                rung.max_scf,
                f", after an SCF at {rung.anneal_temperature_k:g} K"
                if rung.anneal_temperature_k
                else (", after an SCF without the dipole correction" if rung.prepare_without_dipole else ""),
            )
            record = {"rung": level, **rung.record()}
            if self._prepares(rung):  # hot, or at the settings' own temperature without the dipole correction
                temperature = rung.anneal_temperature_k or self.gen2d_settings.electronic_temperature_k
                record.update(self._anneal(temperature, properties))
            record = {"evaluation": self.n_evaluations, **record}  # the index of the rung's own SCF
            try:
                self._rerun(record, properties, self._evaluate_settled)
            except ScfNotConverged as again:
                failure = again
            else:
                self.scf_climbing = None
                self._write_ledger()
                return
        self.scf_climbing = None  # the caller records the failed route
        raise failure

    def _rerun(self, record: dict[str, Any], properties, evaluate) -> None:
        """``evaluate`` the current atoms again, from the wavefunction the failed SCF left, and add ``record`` to the
        cost ledger with the SCF steps the retry made and whether it converged (one that aborts is recorded too).
        Raises what the retry raised."""
        self._release_force_env()
        self._prepare(self.atoms, restart_wfn=True)
        retrying, n_before, converged = self._retrying, len(self.scf_steps), False
        self._retrying = True
        try:
            evaluate(self.atoms, properties, all_changes)
            converged = True
        finally:
            self._retrying = retrying
            steps = self.scf_steps[-1] if len(self.scf_steps) > n_before else 0
            self.scf_retries.append({**record, "scf_steps": steps, "converged": converged})
            self._write_ledger()

    def _evaluate_settled(self, atoms, properties, system_changes) -> None:
        """:meth:`_evaluate`, and after a false convergence (:class:`FalseConvergence`) one more SCF at the same
        settings, from the wavefunction it left, before the SCF counts as failed. The restart begins a new Broyden
        history from a density that is nearly there: on H₂ displaced by 0.01 Å, each restart from a false
        convergence ended in 1–2 steps with its energy settled. The restart passes the same energy check."""
        try:
            self._evaluate(atoms, properties, system_changes)
        except FalseConvergence as exc:
            log.warning("%s; restarting that SCF once from its own wavefunction", exc)
            record = {"evaluation": self.n_evaluations, "false_convergence_restart": True, "level": self.scf_level}
            self._rerun(record, properties, self._evaluate)

    def _prepares(self, rung: ScfFallback) -> bool:
        """Whether ``rung`` runs a preparatory SCF here: a hot one always, one without the dipole correction only
        where the correction is in effect (elsewhere it would be the rung's own SCF twice)."""
        return rung.anneal_temperature_k is not None or (
            rung.prepare_without_dipole and self._dipole_correction_in_effect()
        )

    def _dipole_correction_in_effect(self) -> bool:
        """Whether this calculation's SCF carries the surface dipole correction (a slab, settings with it)."""
        return bool(self.gen2d_settings.dipole_correction and self.atoms is not None and not self.atoms.pbc[2])

    def _anneal(self, temperature_k: float, properties) -> dict[str, Any]:
        """The preparatory SCF of an annealing rung, at ``temperature_k``: it leaves its wavefunction for the
        rung's own SCF and hands out nothing. Returns its record (steps, converged)."""
        self._release_force_env()
        self._anneal_k = temperature_k
        n_before, converged, aborted = len(self.scf_steps), False, None
        self._retrying = True
        try:
            self._prepare(self.atoms, restart_wfn=True)
            self._evaluate(self.atoms, properties, all_changes)
            converged = True
        except ScfNotConverged:
            pass  # its wavefunction is still the better start (a diverged one was set aside by _evaluate)
        except Cp2kAborted as exc:  # not the settings' physics: never the part's result; the rung's own SCF runs
            aborted = str(exc)[:300]
        finally:
            self._anneal_k = None
            self._retrying = False
            self.results = {}  # a hot energy is never a result
            self._release_force_env()
        steps = self.scf_steps[-1] if len(self.scf_steps) > n_before else 0
        return {
            "anneal_scf_steps": steps,
            "anneal_converged": converged,
            **({"anneal_aborted": aborted} if aborted else {}),
        }

    def _evaluate(self, atoms, properties, system_changes) -> None:
        """One CP2K energy/force evaluation with the input already loaded; raises on an SCF that did not converge."""
        start = time.perf_counter()
        self._evaluation_started = time.time()
        cwd = os.getcwd()
        os.chdir(self._workdir)
        try:
            super().calculate(atoms, properties, system_changes)
        except Exception as exc:
            output = self._new_output()
            reason = abort_message(output)  # this evaluation's abort, never an earlier process's
            if reason is None:
                raise
            self._out_offset = self._output_size()
            self._shell = None  # the process is dead: a later call starts a new one
            self._force_env_id = None
            slab = atoms if atoms is not None else self.atoms
            diverged = (
                scf_diverged(reason, output, vacuum_width(slab), retrying=self._retrying) if slab is not None else 0
            )
            if diverged and self.wfn_file.is_file() and self.wfn_file.stat().st_mtime >= self._evaluation_started:
                # CP2K saved the diverging density's wavefunction: the next rung starts from the atomic guess
                self.wfn_file.replace(self.wfn_file.with_name(self.wfn_file.name + ".diverged"))
            if scf_abort(reason) or diverged:  # CP2K >= 2024 stops on an unconverged SCF unless told to go on
                self.n_evaluations += 1
                self.scf_steps.append(diverged or self.active_settings.max_scf)
                self._write_ledger()
                self.results = {}
                what = (
                    f"diverged: the density spread into the vacuum after {diverged} steps"
                    if diverged
                    else "not converged"
                )
                raise ScfNotConverged(f"CP2K SCF {what} (CP2K stopped: {reason}); see {self.out_file}") from exc
            raise Cp2kAborted(f"CP2K aborted: {reason} (see {self.out_file})") from exc
        finally:
            os.chdir(cwd)
            self.wall_seconds += time.perf_counter() - start
            self._write_ledger()
        self.n_evaluations += 1
        steps, converged, drift = self._read_scf()
        self.scf_steps.append(steps)
        self._write_ledger()
        active = self.active_settings
        if converged and drift is not None and active.scf == "diag" and abs(drift) > active.energy_tolerance():
            self.results = {}
            raise FalseConvergence(
                f"CP2K SCF met eps_scf {active.eps_scf:g} at step {steps}, but its energy still changed by "
                f"{drift:+.1e} Ha at that step (tolerance {active.energy_tolerance():g} Ha): a false convergence; "
                f"see {self.out_file}"
            )
        if not converged:
            self.results = {}  # an unconverged energy is never handed out, not even on a second ask
            rung = f", SCF fallback rung {self.scf_level} (mixing α {active.mixing_alpha:g})" if self.scf_level else ""
            raise ScfNotConverged(
                f"CP2K SCF not converged in {active.max_scf} steps (eps_scf {active.eps_scf:g}{rung}); "
                f"see {self.out_file}"
            )
        if not np.isfinite(self.results["energy"]):
            self.results = {}
            raise ScfNotConverged("CP2K returned a non-finite energy")

    def _read_ledger(self) -> dict[str, Any]:
        try:
            doc = json.loads(self._ledger.read_text())
        except (FileNotFoundError, ValueError):  # none yet, or damaged: count from here
            return {}
        return doc if isinstance(doc, dict) else {}

    def _write_ledger(self) -> None:
        """Cumulative cost of this directory (every process that worked in it), written atomically."""
        doc = {
            "n_evaluations": self.n_evaluations,
            "scf_steps": self.scf_steps,
            "wall_seconds": round(self.wall_seconds, 1),
            "n_processes": self.n_processes,
            "scf_level": self.scf_level,
            "scf_retries": self.scf_retries,
            "scf_failed": self.scf_failed,
            "scf_climbing": self.scf_climbing,
            "unit": {"wall_seconds": "s"},
        }
        write_json_atomic(self._ledger, doc)

    def _output_size(self) -> int:
        """Bytes in the output file so far (0 before CP2K has written it): where this process's reading starts."""
        return self.out_file.stat().st_size if self.out_file.is_file() else 0

    def _new_output(self) -> str:
        """This evaluation's part of the output file (from where the last one ended), without consuming it."""
        try:
            with open(self.out_file, errors="replace") as fh:
                fh.seek(self._out_offset)
                return fh.read()
        except FileNotFoundError:
            return ""

    def _read_scf(self) -> tuple[int, bool, float | None]:
        """SCF steps, convergence and the energy change (Ha) of the last SCF step (None at step 1) of the evaluation
        just made, from the new part of the output file."""
        text = self._new_output()
        self._out_offset = self._output_size()
        if not (
            _SCF_TABLE_LINE.search(text)
            or _SCF_STEPS.search(text)
            or _OUTER_STEPS.search(text)
            or any(flag in text for flag in _NOT_CONVERGED)
        ):
            # CP2K prints its SCF table at every evaluation: without it the energy cannot be checked (an output
            # file replaced or deleted while CP2K ran, whose writes then go to the old file), so it is not used
            raise RuntimeError(
                f"CP2K wrote no SCF to {self.out_file} for this evaluation: the file is not the one CP2K writes "
                "(replaced or deleted while it ran?), so its convergence cannot be checked; rerun"
            )
        steps, converged = scf_steps_in(text, self.active_settings.max_scf)
        last = scf_last_change(text)
        return steps, converged, (last[1] if last and last[0] > 1 else None)

    def _spin_rule(self, settings: Cp2kSettings) -> Cp2kSettings:
        """``settings`` with spin "auto" made "on" when this calculator is :attr:`unrestricted`."""
        if self.unrestricted and settings.spin == "auto":
            return settings.model_copy(update={"spin": "on"})
        return settings

    def spin_state(self, atoms) -> tuple[bool, int]:
        """(unrestricted?, multiplicity) that the settings give these atoms."""
        return wants_spin(atoms.get_chemical_symbols(), self._spin_rule(self.gen2d_settings))

    def provenance(self) -> dict[str, Any]:
        """Settings, their hash, the CP2K version and the cost so far, for a result's provenance."""
        s = self.gen2d_settings
        return {
            "code": cp2k_version_cached(),
            "settings": s.model_dump(mode="json"),
            "settings_hash": s.settings_hash(),
            "basis_set_file": s.basis_set_file,
            "potential_file": s.potential_file,
            "n_evaluations": self.n_evaluations,
            "scf_steps_total": int(sum(self.scf_steps)),
            "wall_seconds": round(self.wall_seconds, 1),
            "n_processes": self.n_processes,
            "scf_level": self.scf_level,
            **({"scf_retries": self.scf_retries} if self.scf_retries else {}),
            **({"initial_magnetization_muB": self.start_magnetization} if self.start_magnetization else {}),
            **({"unrestricted": True} if self.unrestricted else {}),
        }


_VERSION: dict[str, str] = {}


def cp2k_version_cached() -> str:
    """CP2K's version line, read once per process (a failure is not cached: the next call tries again)."""
    if "v" not in _VERSION:
        try:
            _VERSION["v"] = cp2k_version()
        except Cp2kUnavailable as exc:
            return f"unknown ({exc})"
    return _VERSION["v"]


def available(model: str | None = None) -> tuple[bool, str]:
    """(True, "") when a CP2K shell executable and its data files are found."""
    try:
        find_shell_command()
        data_dir()
    except Cp2kUnavailable as exc:
        return False, str(exc)
    return True, ""


def make_calculator(
    model: str | None = None,
    device: str = "auto",
    settings: Cp2kSettings | dict | None = None,
    directory: str | None = None,
    threads: int | None = None,
    **kw: Any,
) -> Cp2kCalculator:
    """A CP2K calculator (``gen2d.calculators`` entry point).

    Parameters
    ----------
    model : str, optional
        Ignored (DFT has no checkpoint); accepted for the backend interface.
    device : str
        Ignored: CP2K runs on CPU cores.
    settings : Cp2kSettings or dict, optional
        DFT settings; default :class:`Cp2kSettings()`.
    directory : str, optional
        Working directory; default a fresh temporary directory.
    threads : int, optional
        OpenMP threads; default ``GEN2D_CP2K_THREADS`` or 1.
    """
    import tempfile

    from gen2d.scoring import PluginUnavailable

    ok, why = available()
    if not ok:
        raise PluginUnavailable(why)
    if isinstance(settings, dict):
        settings = Cp2kSettings(**settings)
    directory = directory or tempfile.mkdtemp(prefix="gen2d-cp2k-")
    from gen2d.settings import get_settings

    threads = threads or get_settings().cp2k_threads
    return Cp2kCalculator(settings=settings, directory=directory, threads=threads, **kw)


make_calculator.available = available
