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


def bond_components(atoms: Atoms, factor: float = BOND_FACTOR, pbc: Sequence[bool] | None = None) -> int:
    """Number of bonded fragments: atoms closer than ``factor`` x the sum of their covalent radii are
    bonded, periodic images included (``pbc``, default the atoms' own)."""
    from ase.data import covalent_radii
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from gen2d.neighbors import neighbor_list

    if len(atoms) == 0:
        return 0
    probe = atoms.copy()
    if pbc is not None:
        probe.pbc = pbc
    i, j = neighbor_list("ij", probe, (factor * covalent_radii[probe.numbers]).tolist())
    n = len(probe)
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return int(connected_components(graph, directed=False)[0])


def _vacuum_gap(atoms: Atoms) -> float:
    z = atoms.positions[:, 2]
    return float(atoms.cell[2, 2] - (z.max() - z.min()))


def _max_generalised_force(target: Any) -> float:
    forces = target.get_forces()
    return float(np.sqrt((forces**2).sum(axis=1).max())) if len(forces) else 0.0


class _FireRun:
    """One FIRE optimisation in progress: the working atoms, its (cell-filtered) target and its state."""

    def __init__(self, atoms: Atoms, target: Any, opt: FIRE, fmax: float, steps: int):
        self.atoms, self.target, self.opt = atoms, target, opt
        self.fmax, self.steps = fmax, steps
        opt.fmax = fmax
        opt.max_steps = opt.nsteps + steps
        self.converged = False
        self.failure: str | None = None
        self.message = ""

    @property
    def running(self) -> bool:
        return self.failure is None and not self.converged and self.opt.nsteps < self.opt.max_steps

    def fail(self, exc: BaseException) -> None:
        """Record an exception the way the serial path does (optimiser abort or calculator error)."""
        self.converged = False
        if isinstance(exc, _RelaxAbort):
            self.failure, self.message = exc.reason, str(exc)
        else:  # the model itself failed (unsupported element, graph error, ...)
            self.failure, self.message = "calculator_error", f"{type(exc).__name__}: {exc}"


def _start_fire(
    atoms: Atoms,
    calculator: Calculator,
    *,
    fmax: float,
    steps: int,
    mask: Sequence[bool] | None,
    relax_cell: bool,
    trajectory: list | None,
) -> _FireRun:
    """Attach ``calculator`` to ``atoms`` (a working copy) and set up FIRE, its filter and its watchdog."""
    atoms.calc = calculator
    target = FrechetCellFilter(atoms, mask=list(mask) if mask is not None else None) if relax_cell else atoms
    opt = FIRE(target, logfile=None)

    def watch() -> None:
        # Called after every step: stop on the first non-finite number rather than 500 steps later.
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
            raise _RelaxAbort("non_finite_energy", f"energy or forces became non-finite at step {opt.nsteps}")
        fmax_atoms = float(np.sqrt((forces**2).sum(axis=1).max())) if len(forces) else 0.0
        if fmax_atoms > EXPLODING_FORCE:
            raise _RelaxAbort(
                "exploding_forces", f"max force {fmax_atoms:.3g} eV/Å > {EXPLODING_FORCE:g} at step {opt.nsteps}"
            )
        if trajectory is not None:
            frame = atoms.copy()
            frame.calc = None
            frame.info.update(energy=float(energy), fmax=fmax_atoms, step=int(opt.nsteps))
            trajectory.append(frame)

    opt.attach(watch, interval=1)
    return _FireRun(atoms, target, opt, fmax, steps)


def _finish_fire(run: _FireRun) -> tuple[Atoms, float, bool, int, float, str | None, str]:
    atoms, target, opt = run.atoms, run.target, run.opt
    converged, failure, message = run.converged, run.failure, run.message
    try:
        energy = float(atoms.get_potential_energy())
        final_fmax = _max_generalised_force(target)
    except Exception:
        energy, final_fmax = float("nan"), float("nan")
    if failure is None and not np.isfinite(energy):
        failure, message = "non_finite_energy", "final energy is not finite"
    if failure is None and not converged:
        failure, message = "not_converged", f"fmax {final_fmax:.3g} eV/Å > {run.fmax} after {opt.nsteps} steps"
    return atoms, energy, converged, int(opt.nsteps), final_fmax, failure, message


def _run_fire(
    atoms: Atoms,
    calculator: Calculator,
    *,
    fmax: float,
    steps: int,
    mask: Sequence[bool] | None,
    relax_cell: bool,
    trajectory: list | None,
) -> tuple[Atoms, float, bool, int, float, str | None, str]:
    """FIRE on ``atoms`` (a working copy); returns (atoms, energy, converged, steps, fmax, failure, msg)."""
    run = _start_fire(
        atoms, calculator, fmax=fmax, steps=steps, mask=mask, relax_cell=relax_cell, trajectory=trajectory
    )
    try:
        run.converged = bool(run.opt.run(fmax=fmax, steps=steps))
    except Exception as exc:
        run.fail(exc)
    return _finish_fire(run)


# --- lockstep batched FIRE ---------------------------------------------------------------------------
#
# A calculator backend may attach ``gen2d_evaluate_batch`` to its ASE calculator: a callable taking a
# list of ``Atoms`` and returning, per structure, either a dict with ``energy`` (eV), ``free_energy``,
# ``forces`` (eV/Å, n x 3) and ``stress`` (eV/Å^3, ASE sign convention), exactly what the calculator
# itself would put in ``results``, or the exception that structure raised. One call is one batched
# model evaluation. The callable may carry ``verified()``: False disables the batch path.
#
# The lockstep driver keeps one FIRE optimiser (and cell filter) per structure, with the settings of
# the serial path; each step it moves every still-running optimiser, then evaluates all of them in one
# batched call and hands each its own results through a per-structure calculator slot. The sequence of
# ASE calls per optimiser is that of ``Optimizer.irun`` (step, observers, convergence test), so the
# trajectory is the serial one up to float noise of the batched model.

#: Counters of the lockstep driver (for benchmarks): batched model calls, structures evaluated in
#: them, and single evaluations a slot had to make outside the batch (should stay 0).
LOCKSTEP_STATS = {"batch_calls": 0, "structure_evaluations": 0, "fallback_evaluations": 0}


def batch_evaluator(calculator: Calculator) -> Any:
    """The calculator's batched evaluator, or None when its backend has none (serial fallback)."""
    fn = getattr(calculator, "gen2d_evaluate_batch", None)
    if fn is None or not callable(fn):
        return None
    verified = getattr(fn, "verified", None)
    if callable(verified) and not verified():
        return None
    return fn


class _BatchSlot(Calculator):
    """Per-structure calculator fed from a batched evaluation; computes alone only when not fed."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, evaluate: Any):
        super().__init__()
        self._evaluate = evaluate
        self.generation = 0

    def calculate(self, atoms=None, properties=None, system_changes=None):  # noqa: D401 - ASE API
        from ase.calculators.calculator import all_changes

        super().calculate(atoms, properties, system_changes or all_changes)
        LOCKSTEP_STATS["fallback_evaluations"] += 1
        [out] = self._evaluate([self.atoms])
        if isinstance(out, BaseException):
            raise out
        self.results = dict(out)
        self.generation += 1

    def feed(self, atoms: Atoms, results: dict[str, Any]) -> None:
        self.atoms = atoms.copy()
        self.results = dict(results)
        self.generation += 1


def _memoise_gradient(run: _FireRun, slot: _BatchSlot) -> None:
    """Compute the filter's generalised forces once per (state, results) instead of three times.

    ``Optimizer.irun`` asks for the gradient in ``step``, in ``log`` and in the convergence test, each
    time through FrechetCellFilter's matrix logarithm; the value only depends on positions, cell and
    the calculator's results, so it is cached on exactly those.
    """
    optimizable = run.opt.optimizable
    raw = optimizable.get_gradient
    memo: dict[str, Any] = {"key": None, "value": None}

    def key():
        return (slot.generation, run.atoms.positions.tobytes(), run.atoms.cell.array.tobytes())

    def get_gradient():
        if memo["key"] is not None and memo["key"] == key():
            return memo["value"].copy()
        value = raw()
        memo["key"], memo["value"] = key(), value.copy()
        return value

    optimizable.get_gradient = get_gradient


def _evaluate_runs(runs: list[_FireRun], slots: list[_BatchSlot], evaluate: Any) -> None:
    """One batched model call for ``runs``; each slot gets its results, each failure its run."""
    LOCKSTEP_STATS["batch_calls"] += 1
    LOCKSTEP_STATS["structure_evaluations"] += len(runs)
    try:
        outs = evaluate([run.atoms for run in runs])
    except Exception as exc:  # the backend should isolate failures itself; never lose the batch anyway
        outs = [exc] * len(runs)
    for run, slot, out in zip(runs, slots, outs, strict=True):
        if isinstance(out, BaseException):
            run.fail(out)
        else:
            slot.feed(run.atoms, out)


def _after_evaluation(run: _FireRun) -> None:
    """The tail of one ``Optimizer.irun`` iteration: gradient, observers, convergence test."""
    try:
        run.opt.optimizable.get_gradient()  # irun logs it here (memoised: no extra cost)
        run.opt.call_observers()
        run.converged = bool(run.opt.gradient_converged(run.opt.optimizable.get_gradient()))
    except Exception as exc:
        run.fail(exc)


def _run_fire_lockstep(starts: list[Any], evaluate: Any, max_batch: int) -> list[_FireRun]:
    """Run FIRE for every ``starts[i]()`` (a zero-argument factory of a started :class:`_FireRun` whose
    atoms carry a :class:`_BatchSlot`) in lockstep, at most ``max_batch`` at a time; refills the batch
    as structures finish, so one slow structure never holds a whole chunk."""
    from collections import deque

    pending = deque(range(len(starts)))
    runs: list[_FireRun | None] = [None] * len(starts)
    active: list[int] = []
    while pending or active:
        batch: list[int] = []
        for i in active:  # FIRE step of every running optimiser (uses its cached forces)
            run = runs[i]
            try:
                run.opt.step()
                run.opt.nsteps += 1
            except Exception as exc:
                run.fail(exc)
                continue
            batch.append(i)
        while pending and len(batch) < max_batch:  # refill with fresh structures (their step 0)
            i = pending.popleft()
            runs[i] = starts[i]()
            batch.append(i)
        if batch:
            _evaluate_runs([runs[i] for i in batch], [runs[i].atoms.calc for i in batch], evaluate)
            for i in batch:
                if runs[i].failure is None:
                    _after_evaluation(runs[i])
        active = [i for i in batch if runs[i].running]
    return runs


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
    return RelaxResult(
        atoms=work,
        energy=float("nan"),
        converged=False,
        steps=0,
        final_fmax=float("nan"),
        initial_cell=cell,
        final_cell=cell,
        failure=reason,
        message=message,
        settings=settings,
    )


def _in_plane_settings(fmax: float, steps: int, relax_cell: bool, fixed_atoms: Sequence[int]) -> dict[str, Any]:
    return {
        "optimizer": "FIRE",
        "fmax": fmax,
        "steps": steps,
        "relax_cell": relax_cell,
        "cell_filter": "FrechetCellFilter" if relax_cell else None,
        "cell_mask": list(IN_PLANE_MASK) if relax_cell else None,
        "fixed_atoms": list(fixed_atoms),
    }


def _bulk_settings(fmax: float, steps: int, relax_cell: bool = True) -> dict[str, Any]:
    return {
        "optimizer": "FIRE",
        "fmax": fmax,
        "steps": steps,
        "relax_cell": relax_cell,
        "cell_filter": "FrechetCellFilter" if relax_cell else None,
        "cell_mask": None,
    }


def _in_plane_result(fire: tuple, pbc, initial_cell: np.ndarray, components_before: int, settings: dict) -> RelaxResult:
    work, energy, converged, nsteps, final_fmax, failure, message = fire
    if failure in (None, "not_converged") and np.all(np.isfinite(work.positions)):
        # Geometry checks outrank "not converged": a broken layer is the more useful diagnosis.
        if _vacuum_gap(work) < MIN_VACUUM:
            failure, message = (
                "vacuum_closed",
                f"vacuum gap {_vacuum_gap(work):.2f} Å < {MIN_VACUUM} Å after relaxation",
            )
        elif (components := bond_components(work, pbc=(True, True, False))) > components_before:
            failure, message = (
                "layer_broke",
                (
                    f"bonded fragments went from {components_before} to {components} "
                    f"(cutoff {BOND_FACTOR} x covalent radii)"
                ),
            )
    work.calc = None
    work.pbc = pbc
    return RelaxResult(
        atoms=work,
        energy=energy,
        converged=converged,
        steps=nsteps,
        final_fmax=final_fmax,
        initial_cell=initial_cell,
        final_cell=work.cell.array.copy(),
        failure=failure,
        message=message,
        settings=settings,
    )


def _bulk_result(fire: tuple, initial_cell: np.ndarray, settings: dict) -> RelaxResult:
    work, energy, converged, nsteps, final_fmax, failure, message = fire
    work.calc = None
    work.pbc = True
    return RelaxResult(
        atoms=work,
        energy=energy,
        converged=converged,
        steps=nsteps,
        final_fmax=final_fmax,
        initial_cell=initial_cell,
        final_cell=work.cell.array.copy(),
        failure=failure,
        message=message,
        settings=settings,
    )


def relax_in_plane(
    atoms: Atoms,
    calculator: Calculator,
    fmax: float = 0.05,
    steps: int = 500,
    relax_cell: bool = True,
    fixed_atoms: Sequence[int] = (),
    trajectory: list | None = None,
) -> RelaxResult:
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
    settings = _in_plane_settings(fmax, steps, relax_cell, fixed_atoms)
    work, pbc, bad, why = _prepare(atoms)
    if bad:
        return _failed(work, pbc, bad, why, settings)
    if fixed_atoms:
        work.set_constraint(FixAtoms(indices=list(fixed_atoms)))
    initial_cell = work.cell.array.copy()
    components_before = bond_components(work, pbc=(True, True, False))
    fire = _run_fire(
        work, calculator, fmax=fmax, steps=steps, mask=IN_PLANE_MASK, relax_cell=relax_cell, trajectory=trajectory
    )
    return _in_plane_result(fire, pbc, initial_cell, components_before, settings)


def relax_bulk(
    atoms: Atoms, calculator: Calculator, fmax: float = 0.05, steps: int = 500, relax_cell: bool = True
) -> RelaxResult:
    """Relax a bulk crystal (full cell and positions) with FIRE and ``FrechetCellFilter``, or with
    ``relax_cell=False`` the atoms only (a molecule in its box).

    Used for reference phases of the hull. Same failure names as :func:`relax_in_plane` minus the
    layer checks.
    """
    settings = _bulk_settings(fmax, steps, relax_cell)
    work, pbc, bad, why = _prepare(atoms)
    if bad:
        return _failed(work, pbc, bad, why, settings)
    initial_cell = work.cell.array.copy()
    fire = _run_fire(work, calculator, fmax=fmax, steps=steps, mask=None, relax_cell=relax_cell, trajectory=None)
    return _bulk_result(fire, initial_cell, settings)


#: Structures evaluated together in one lockstep batch (the batch is refilled as structures finish).
DEFAULT_MAX_BATCH = 32


def _lockstep(
    prepared: list[dict[str, Any]],
    evaluate: Any,
    *,
    fmax: float,
    steps: int,
    mask: Sequence[bool] | None,
    relax_cell: bool,
    max_batch: int,
) -> list[tuple]:
    """Run :func:`_run_fire`'s optimisation for each prepared working copy in lockstep."""

    def starter(item: dict[str, Any]):
        def start() -> _FireRun:
            slot = _BatchSlot(evaluate)
            run = _start_fire(
                item["work"],
                slot,
                fmax=fmax,
                steps=steps,
                mask=mask,
                relax_cell=relax_cell,
                trajectory=item.get("trajectory"),
            )
            _memoise_gradient(run, slot)
            return run

        return start

    runs = _run_fire_lockstep([starter(item) for item in prepared], evaluate, max(1, int(max_batch)))
    return [_finish_fire(run) for run in runs]


def relax_in_plane_batch(
    atoms_list: Sequence[Atoms],
    calculator: Calculator,
    fmax: float = 0.05,
    steps: int = 500,
    relax_cell: bool = True,
    fixed_atoms: Sequence[int] = (),
    trajectories: Sequence[list] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> list[RelaxResult]:
    """:func:`relax_in_plane` for many monolayers, their MLIP calls batched in lockstep.

    Each structure keeps its own FIRE optimiser and cell filter with the serial settings; every step
    evaluates all still-running structures in one batched model call. One structure failing
    (numerically or in the model) fails alone. Backends without a batched evaluator (see
    :func:`batch_evaluator`) run :func:`relax_in_plane` one structure after the other.

    Returns
    -------
    list of RelaxResult
        One per input, in order; same ``settings`` and failure names as :func:`relax_in_plane`.
    """
    trajectories = list(trajectories) if trajectories is not None else [None] * len(atoms_list)
    evaluate = batch_evaluator(calculator)
    if evaluate is None:
        return [
            relax_in_plane(
                a, calculator, fmax=fmax, steps=steps, relax_cell=relax_cell, fixed_atoms=fixed_atoms, trajectory=t
            )
            for a, t in zip(atoms_list, trajectories)
        ]
    settings = _in_plane_settings(fmax, steps, relax_cell, fixed_atoms)
    results: list[RelaxResult | None] = [None] * len(atoms_list)
    prepared = []
    for i, (atoms, traj) in enumerate(zip(atoms_list, trajectories, strict=True)):
        work, pbc, bad, why = _prepare(atoms)
        if bad:
            results[i] = _failed(work, pbc, bad, why, dict(settings))
            continue
        if fixed_atoms:
            work.set_constraint(FixAtoms(indices=list(fixed_atoms)))
        prepared.append(
            {
                "index": i,
                "work": work,
                "pbc": pbc,
                "initial_cell": work.cell.array.copy(),
                "components": bond_components(work, pbc=(True, True, False)),
                "trajectory": traj,
            }
        )
    fires = _lockstep(
        prepared, evaluate, fmax=fmax, steps=steps, mask=IN_PLANE_MASK, relax_cell=relax_cell, max_batch=max_batch
    )
    for item, fire in zip(prepared, fires, strict=True):
        results[item["index"]] = _in_plane_result(
            fire, item["pbc"], item["initial_cell"], item["components"], dict(settings)
        )
    return results


def relax_bulk_batch(
    atoms_list: Sequence[Atoms],
    calculator: Calculator,
    fmax: float = 0.05,
    steps: int = 500,
    max_batch: int = DEFAULT_MAX_BATCH,
    relax_cell: bool = True,
) -> list[RelaxResult]:
    """:func:`relax_bulk` for many crystals, their MLIP calls batched in lockstep.

    Same semantics as :func:`relax_in_plane_batch`; falls back to serial :func:`relax_bulk` for
    backends without a batched evaluator.
    """
    evaluate = batch_evaluator(calculator)
    if evaluate is None:
        return [relax_bulk(a, calculator, fmax=fmax, steps=steps, relax_cell=relax_cell) for a in atoms_list]
    settings = _bulk_settings(fmax, steps, relax_cell)
    results: list[RelaxResult | None] = [None] * len(atoms_list)
    prepared = []
    for i, atoms in enumerate(atoms_list):
        work, pbc, bad, why = _prepare(atoms)
        if bad:
            results[i] = _failed(work, pbc, bad, why, dict(settings))
            continue
        prepared.append({"index": i, "work": work, "initial_cell": work.cell.array.copy()})
    fires = _lockstep(prepared, evaluate, fmax=fmax, steps=steps, mask=None, relax_cell=relax_cell, max_batch=max_batch)
    for item, fire in zip(prepared, fires, strict=True):
        results[item["index"]] = _bulk_result(fire, item["initial_cell"], dict(settings))
    return results


def calculator_provenance(calculator: Calculator) -> dict[str, Any]:
    """Model name and checkpoint hash a gen2d calculator backend attached to its calculator."""
    return {
        "model": getattr(calculator, "gen2d_model", type(calculator).__name__),
        "checkpoint_sha256": getattr(calculator, "gen2d_checkpoint_sha256", None),
    }
