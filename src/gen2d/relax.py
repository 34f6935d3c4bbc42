"""MLIP relaxation of monolayers (in-plane cell only, vacuum untouched) and of bulk reference phases.

Shared by every MLIP scorer: the stability hull, H adsorption and the reference phases all relax here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

log = logging.getLogger(__name__)

# Strain components of the cell filter, Voigt order (xx, yy, zz, yz, xz, xy): the in-plane cell moves,
# c and the vacuum never do.
IN_PLANE_MASK = (True, True, False, False, False, True)
# A force this large means the model left its domain (atoms on top of each other, an unseen element
# embedding): continuing only produces garbage.
EXPLODING_FORCE = 1.0e3  # eV/Å
# Loose bonding cutoff (factor on covalent radii) for "did the layer fall apart" checks.
BOND_FACTOR = 1.3
# Vacuum below this, after relaxation, means the layer grew through the periodic boundary along z.
MIN_VACUUM = 5.0  # Å


class _RelaxAbort(Exception):
    """Raised from the optimiser observer to stop a run that went numerically wrong."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class RelaxResult:
    """Outcome of one relaxation.

    Attributes
    ----------
    atoms : ase.Atoms
        Relaxed copy, calculator detached, with the input's pbc.
    energy : float
        Total potential energy of the relaxed cell, eV (NaN when it could not be evaluated).
    converged : bool
        True when the optimiser reached ``fmax`` within ``steps``.
    steps : int
        Optimiser steps taken.
    final_fmax : float
        Largest residual generalised force (atoms and, with a cell filter, scaled stress), eV/Å.
    initial_cell, final_cell : numpy.ndarray
        3x3 cells in Å.
    failure : str or None
        Named reason (``not_converged``, ``non_finite_energy``, ``exploding_forces``, ``layer_broke``,
        ``vacuum_closed``, ``calculator_error``) or None.
    message : str
        Human-readable detail for ``failure``.
    """

    atoms: Atoms
    energy: float
    converged: bool
    steps: int
    final_fmax: float
    initial_cell: np.ndarray
    final_cell: np.ndarray
    failure: str | None = None
    message: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def energy_per_atom(self) -> float:
        return self.energy / len(self.atoms)

    def summary(self) -> dict[str, Any]:
        """Small JSON-able record (no structure, no trajectory) for a candidate document."""
        return {
            "converged": self.converged,
            "steps": self.steps,
            "final_fmax": float(self.final_fmax),
            "final_fmax_unit": "eV/Å",
            "energy": float(self.energy),
            "energy_unit": "eV",
            "initial_cell": np.asarray(self.initial_cell).tolist(),
            "final_cell": np.asarray(self.final_cell).tolist(),
            "cell_unit": "Å",
            "failure": self.failure,
            "message": self.message,
            "settings": dict(self.settings),
        }


_CALCULATORS: dict[tuple, Calculator] = {}


def cached_calculator(name: str = "chgnet", **options: Any) -> Calculator:
    """The ASE calculator of MLIP backend ``name``, loaded once per process per option set.

    Parameters
    ----------
    name : str
        A ``gen2d.calculators`` entry point (``chgnet``, ``mattersim``, ``sevennet``).
    **options
        Passed to the backend's ``make_calculator`` (``model``, ``device``, ...).

    Raises
    ------
    gen2d.scoring.PluginUnavailable
        When the backend cannot run here (no weights, missing extra); the message says why.
    """
    from gen2d.scoring import get_calculator

    key = (name, tuple(sorted((k, repr(v)) for k, v in options.items())))
    if key not in _CALCULATORS:
        _CALCULATORS[key] = get_calculator(name, **options)
    return _CALCULATORS[key]


def _bond_components(atoms: Atoms, pbc: Sequence[bool]) -> int:
    """Number of bonded fragments under a loose covalent cutoff with the given periodicity."""
    from ase.neighborlist import natural_cutoffs, neighbor_list
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    probe = atoms.copy()
    probe.pbc = pbc
    cutoffs = natural_cutoffs(probe, mult=BOND_FACTOR)
    i, j = neighbor_list("ij", probe, cutoffs)
    n = len(probe)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def _vacuum_gap(atoms: Atoms) -> float:
    z = atoms.positions[:, 2]
    return float(atoms.cell[2, 2] - (z.max() - z.min()))


def _max_generalised_force(target: Any) -> float:
    forces = target.get_forces()
    return float(np.sqrt((forces ** 2).sum(axis=1).max())) if len(forces) else 0.0


def _run_fire(atoms: Atoms, calculator: Calculator, *, fmax: float, steps: int, mask: Sequence[bool] | None,
              relax_cell: bool, trajectory: list | None) -> tuple[Atoms, float, bool, int, float, str | None, str]:
    """FIRE on ``atoms`` (a working copy); returns (atoms, energy, converged, steps, fmax, failure, msg)."""
    atoms.calc = calculator
    target = FrechetCellFilter(atoms, mask=list(mask) if mask is not None else None) if relax_cell else atoms
    opt = FIRE(target, logfile=None)

    def watch() -> None:
        # Called after every step: stop on the first non-finite number rather than 500 steps later.
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise _RelaxAbort("non_finite_energy", f"energy or forces became non-finite at step {opt.nsteps}")
        fmax_atoms = float(np.sqrt((forces ** 2).sum(axis=1).max())) if len(forces) else 0.0
        if fmax_atoms > EXPLODING_FORCE:
            raise _RelaxAbort("exploding_forces",
                              f"max force {fmax_atoms:.3g} eV/Å > {EXPLODING_FORCE:g} at step {opt.nsteps}")
        if trajectory is not None:
            frame = atoms.copy()
            frame.calc = None
            frame.info.update(energy=float(energy), fmax=fmax_atoms, step=int(opt.nsteps))
            trajectory.append(frame)

    opt.attach(watch, interval=1)
    failure, message = None, ""
    try:
        converged = bool(opt.run(fmax=fmax, steps=steps))
    except _RelaxAbort as exc:
        converged, failure, message = False, exc.reason, str(exc)
    except Exception as exc:  # the model itself failed (unsupported element, graph error, ...)
        converged, failure, message = False, "calculator_error", f"{type(exc).__name__}: {exc}"
    try:
        energy = float(atoms.get_potential_energy())
        final_fmax = _max_generalised_force(target)
    except Exception:
        energy, final_fmax = float("nan"), float("nan")
    if failure is None and not np.isfinite(energy):
        failure, message = "non_finite_energy", "final energy is not finite"
    if failure is None and not converged:
        failure, message = "not_converged", f"fmax {final_fmax:.3g} eV/Å > {fmax} after {opt.nsteps} steps"
    return atoms, energy, converged, int(opt.nsteps), final_fmax, failure, message


def _prepare(atoms: Atoms) -> tuple[Atoms, tuple[bool, bool, bool], str | None, str]:
    work = atoms.copy()
    pbc = tuple(bool(p) for p in work.pbc)
    work.calc = None
    if not np.all(np.isfinite(work.positions)) or not np.all(np.isfinite(work.cell.array)):
        return work, pbc, "non_finite_input", "positions or cell contain NaN or inf"
    if len(work) == 0:
        return work, pbc, "empty_structure", "no atoms"
    # MLIPs are trained on 3D-periodic cells; with >= 15 Å of vacuum (more than any model cutoff,
    # <= 6 Å) the periodic image along z does not interact, so the calculation runs fully periodic.
    work.pbc = True
    return work, pbc, None, ""


def _failed(work: Atoms, pbc, reason: str, message: str, settings: dict) -> RelaxResult:
    work.pbc = pbc
    cell = work.cell.array.copy()
    return RelaxResult(atoms=work, energy=float("nan"), converged=False, steps=0, final_fmax=float("nan"),
                       initial_cell=cell, final_cell=cell, failure=reason, message=message, settings=settings)


def relax_in_plane(atoms: Atoms, calculator: Calculator, fmax: float = 0.05, steps: int = 500,
                   relax_cell: bool = True, fixed_atoms: Sequence[int] = (),
                   trajectory: list | None = None) -> RelaxResult:
    """Relax a monolayer with FIRE, moving the in-plane cell (xx, yy, xy) and positions only.

    Parameters
    ----------
    atoms : ase.Atoms
        Monolayer with a, b in the xy-plane and c along z (vacuum along c).
    calculator : ase.calculators.calculator.Calculator
        An MLIP calculator, e.g. from :func:`cached_calculator`.
    fmax : float
        Convergence threshold on the largest generalised force, eV/Å.
    steps : int
        Maximum FIRE steps.
    relax_cell : bool
        True: ``FrechetCellFilter`` with mask ``[1, 1, 0, 0, 0, 1]`` so c and the vacuum never change.
        False: positions only at fixed cell (H adsorption).
    fixed_atoms : sequence of int
        Indices held fixed (``FixAtoms``).
    trajectory : list, optional
        When given, one calculator-free ``Atoms`` per step is appended (``info``: energy, fmax, step).
        It is for the caller's data store, never for a candidate document.

    Returns
    -------
    RelaxResult
        Never raises on numerical faults; ``failure`` names them. A relaxed layer that split into more
        fragments than it started with is ``layer_broke``; one whose thickness ate the vacuum is
        ``vacuum_closed``.

    Examples
    --------
    >>> from ase.build import mx2
    >>> res = relax_in_plane(mx2("MoS2", vacuum=10), cached_calculator("chgnet"))  # doctest: +SKIP
    >>> res.converged, res.atoms.cell.lengths()[0]  # doctest: +SKIP
    (True, 3.18...)
    """
    settings = {"optimizer": "FIRE", "fmax": fmax, "steps": steps, "relax_cell": relax_cell,
                "cell_filter": "FrechetCellFilter" if relax_cell else None,
                "cell_mask": list(IN_PLANE_MASK) if relax_cell else None, "fixed_atoms": list(fixed_atoms)}
    work, pbc, bad, why = _prepare(atoms)
    if bad:
        return _failed(work, pbc, bad, why, settings)
    if fixed_atoms:
        work.set_constraint(FixAtoms(indices=list(fixed_atoms)))
    initial_cell = work.cell.array.copy()
    components_before = _bond_components(work, (True, True, False))
    work, energy, converged, nsteps, final_fmax, failure, message = _run_fire(
        work, calculator, fmax=fmax, steps=steps, mask=IN_PLANE_MASK, relax_cell=relax_cell,
        trajectory=trajectory)
    if failure in (None, "not_converged") and np.all(np.isfinite(work.positions)):
        # Geometry checks outrank "not converged": a broken layer is the more useful diagnosis.
        if _vacuum_gap(work) < MIN_VACUUM:
            failure, message = "vacuum_closed", f"vacuum gap {_vacuum_gap(work):.2f} Å < {MIN_VACUUM} Å after relaxation"
        elif _bond_components(work, (True, True, False)) > components_before:
            failure, message = "layer_broke", (
                f"bonded fragments went from {components_before} to "
                f"{_bond_components(work, (True, True, False))} (cutoff {BOND_FACTOR} x covalent radii)")
    work.calc = None
    work.pbc = pbc
    return RelaxResult(atoms=work, energy=energy, converged=converged, steps=nsteps, final_fmax=final_fmax,
                       initial_cell=initial_cell, final_cell=work.cell.array.copy(), failure=failure,
                       message=message, settings=settings)


def relax_bulk(atoms: Atoms, calculator: Calculator, fmax: float = 0.05, steps: int = 500) -> RelaxResult:
    """Relax a bulk crystal (full cell and positions) with FIRE and ``FrechetCellFilter``.

    Used for reference phases of the hull. Same failure names as :func:`relax_in_plane` minus the
    layer checks.
    """
    settings = {"optimizer": "FIRE", "fmax": fmax, "steps": steps, "relax_cell": True,
                "cell_filter": "FrechetCellFilter", "cell_mask": None}
    work, pbc, bad, why = _prepare(atoms)
    if bad:
        return _failed(work, pbc, bad, why, settings)
    initial_cell = work.cell.array.copy()
    work, energy, converged, nsteps, final_fmax, failure, message = _run_fire(
        work, calculator, fmax=fmax, steps=steps, mask=None, relax_cell=True, trajectory=None)
    work.calc = None
    work.pbc = True
    return RelaxResult(atoms=work, energy=energy, converged=converged, steps=nsteps, final_fmax=final_fmax,
                       initial_cell=initial_cell, final_cell=work.cell.array.copy(), failure=failure,
                       message=message, settings=settings)


def calculator_provenance(calculator: Calculator) -> dict[str, Any]:
    """Model name and checkpoint hash a gen2d calculator backend attached to its calculator."""
    return {"model": getattr(calculator, "gen2d_model", type(calculator).__name__),
            "checkpoint_sha256": getattr(calculator, "gen2d_checkpoint_sha256", None)}
