"""DFT frames as training data: every energy and force a ``dgh.dft`` run evaluated, with where it came from.

A DFT run directory (see :func:`gen2d.adsorption.refine_adsorption`) holds ``run.json`` (what was computed:
formula, content hash of the candidate, calculator settings and their hash) and one folder per system
(``slab``, ``site_<k>-<start>``, ``slab_site_<k>-<start>``, or the H₂ reference) with the evaluated frames: ``relax.traj``
for relaxations, ``frame.traj`` for single points. :func:`collect_frames` reads them all;
:func:`export_extxyz` writes them as one extended-XYZ file for MLIP fine-tuning, each frame carrying its
energy (eV), forces (eV/Å) and provenance in ``info``.

Single points made before ``frame.traj`` existed left only ``result.json`` (energy), ``gen2d.inp`` (the CP2K
input, with the geometry) and ``gen2d.out``. They come back as energy-only frames when the evidence ties them
together: one evaluation, and the energy in ``gen2d.out`` equal to the one in ``result.json``.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from gen2d.fileio import atomic_path, write_json_atomic

RUN_METADATA = "run.json"
FRAME_FILES = ("relax.traj", "frame.traj")
#: a system's harmonic-vibration geometries (H displaced by ±0.01 Å, :func:`gen2d.adsorption.vibration_energies`):
#: near-equilibrium energies and forces, read as frames of that part (its run/system group, so a split keeps them
#: with it) with ``info['vibration']`` True; they are training data, never a relaxation's last frame
VIBRATION_FRAMES = "vibrations/frames.traj"
#: what a single point without a frame file left: its energy, the CP2K input (geometry) and output
SINGLE_POINT_FILES = ("result.json", "gen2d.inp", "gen2d.out")
_CP2K_ENERGY = re.compile(r"ENERGY\| Total FORCE_EVAL \( QS \) energy \[a\.u\.\]:\s+(-?\d+\.\d+(?:[eE][-+]?\d+)?)")
#: |E(result.json) - E(gen2d.out)| (eV) above which the two files are not the same calculation
SINGLE_POINT_TOLERANCE = 1e-3
#: a relaxation step whose energy rose by more than this (eV) while the forces at both of its ends say it went
#: downhill is a jump to another SCF solution (:func:`_mark_scf_jumps`)
SCF_JUMP_TOLERANCE = 0.02
#: the flags that leave a frame out of :func:`collect_frames` (a DFT energy, but of a higher SCF solution)
OFF_SOLUTION_FLAGS = ("superseded_spin_solution", "scf_jump")


def write_run_metadata(directory: str | os.PathLike, metadata: dict[str, Any]) -> Path:
    """Write (or update) ``run.json`` of a DFT run directory atomically; returns its path."""
    from datetime import UTC, datetime

    path = Path(directory) / RUN_METADATA
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {}
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
        except ValueError:  # a damaged file is rewritten
            doc = {}
    created = doc.get("created") or datetime.now(UTC).isoformat(timespec="seconds")
    doc.update(metadata)
    doc["created"] = created
    return write_json_atomic(path, doc, indent=1, default=str)


def save_frame(atoms: Atoms, path: str | os.PathLike) -> None:
    """Append one evaluated frame (positions, energy and, where the calculator has them, forces)."""
    from ase.io import Trajectory

    with Trajectory(str(path), "a") as traj:
        traj.write(atoms)


def _run_dirs(root: Path) -> Iterator[Path]:
    """Every directory under ``root`` (itself included) that holds a ``run.json``."""
    if (root / RUN_METADATA).is_file():
        yield root
    for meta in sorted(root.glob(f"*/{RUN_METADATA}")):
        yield meta.parent


def _read_frames(path: Path) -> list[Atoms]:
    from gen2d.adsorption import _whole_frames

    return _whole_frames(str(path))


def single_point_frame(sysdir: str | os.PathLike) -> tuple[Atoms | None, str]:
    """An energy-only frame rebuilt from a single point's ``result.json``, ``gen2d.inp`` and ``gen2d.out``.

    Returns ``(atoms, "")``, or ``(None, reason)`` when the files do not prove that the energy belongs to
    the input's geometry: a file is missing, ``result.json`` counts more than one evaluation (the input
    holds only the first geometry), the input uses scaled or non-Å coordinates, or the last total energy
    in ``gen2d.out`` differs from ``result.json`` by more than :data:`SINGLE_POINT_TOLERANCE`.
    The frame's pbc is (T, T, F) when the input has gen2d's slab dipole correction, else periodic.
    """
    from ase.io.cp2k import read_cp2k_restart
    from ase.units import create_units

    # ASE drives cp2k_shell in eV/Å (UNITS_EV_A): CP2K converts with its own Hartree, CODATA 2006's.
    hartree = create_units("2006")["Hartree"]

    sysdir = Path(sysdir)
    missing = [name for name in SINGLE_POINT_FILES if not (sysdir / name).is_file()]
    if missing:
        return None, f"single point without {', '.join(missing)}"
    try:
        result = json.loads((sysdir / "result.json").read_text())
        energy = float(result["energy"])
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"result.json has no energy ({type(exc).__name__})"
    n_eval = (result.get("cost") or {}).get("n_evaluations")
    if n_eval is not None and int(n_eval) != 1:
        return None, f"{n_eval} evaluations: gen2d.inp holds only the first geometry"
    if not np.isfinite(energy):
        return None, "result.json energy is not finite"
    text = (sysdir / "gen2d.inp").read_text(errors="replace")
    coord = re.search(r"&COORD(.*?)&END COORD", text, re.S)
    if coord is None or re.search(r"^\s*(SCALED|UNIT)\b", coord.group(1), re.M):
        return None, "gen2d.inp has no &COORD section in Å"
    found = _CP2K_ENERGY.findall((sysdir / "gen2d.out").read_text(errors="replace"))
    if not found:
        return None, "gen2d.out has no total energy"
    out_energy = float(found[-1]) * hartree
    if abs(out_energy - energy) > SINGLE_POINT_TOLERANCE:
        return None, f"gen2d.out energy {out_energy:.4f} eV is not result.json's {energy:.4f} eV"
    with open(sysdir / "gen2d.inp") as fh:
        atoms = read_cp2k_restart(fh)
    if "X" in atoms.get_chemical_symbols():
        return None, "gen2d.inp names a kind that is not an element"
    slab = re.search(r"SURFACE_DIPOLE_CORRECTION\s+(T|TRUE|\.TRUE\.)\b", text, re.I) is not None
    atoms.pbc = (True, True, not slab)
    atoms.info["energy"] = energy
    return atoms, ""


def _same(a: Atoms, b: Atoms) -> bool:
    return len(a) == len(b) and bool(np.abs(a.positions - b.positions).max() < 1e-8)


def site_of(system: str) -> str:
    """The site a frame's system belongs to: a spin takeover's relaxation (``site_k-…/lowest_start_H+1``) is its
    site's (``site_k-…``); every other system is its own."""
    return str(system).split("/")[0]


def _mark_superseded(frames: list[Atoms], takeover: str) -> None:
    """Flag the frames at the geometry where a lower spin solution took a site over (``takeover``,
    "site_k-…/lowest_start_H+1", whose first frame is that geometry from the lower start): of the frames of the
    site and of its takeovers at those positions, all but the lowest in energy get
    ``info['superseded_spin_solution']`` naming the takeover. They are DFT energies, but of a higher SCF solution at
    the same positions, which would teach a model two energies for one geometry. ``frames`` are one run's."""
    site = site_of(takeover)
    ours = [f for f in frames if f.info.get("system") == takeover]
    if not ours:
        return
    start = min(ours, key=lambda f: f.info["frame"])
    there = [
        f
        for f in frames
        if site_of(f.info.get("system", "")) == site and not f.info.get("vibration") and _same(f, start)
    ]
    lowest = min(there, key=lambda f: f.info["energy"])
    for f in there:
        if f is not lowest:
            f.info["superseded_spin_solution"] = takeover


def _mark_failed_takeover(frames: list[Atoms], site_dir: Path, system: str) -> None:
    """Flag a site's frames at its converged geometry when a fresh spin start found a lower SCF solution there and
    relaxing on from it failed (``result.json``: ``spin_starts.relaxed_from_start`` "failed: …"). The site's energy
    is then that start's single point, and its own frame there is the higher solution: the same two energies for
    one geometry as a takeover that ran (:func:`_mark_superseded`), with no takeover frame to keep instead.
    ``frames`` are one run's."""
    try:
        doc = json.loads((site_dir / "result.json").read_text())
    except (OSError, ValueError):
        return
    check = doc.get("spin_starts") or {}
    if not str(check.get("relaxed_from_start") or "").startswith("failed") or check.get("energy_from_start") is None:
        return
    final = np.asarray(doc.get("positions") or [], float)
    start = f"{system}/start_H{check['energy_from_start']}"
    for f in frames:
        if (
            f.info.get("system") == system
            and not f.info.get("vibration")
            and final.shape == f.positions.shape
            and np.abs(f.positions - final).max() < 1e-6
        ):
            f.info["superseded_spin_solution"] = start


def step_energy_mismatch(a: Atoms, b: Atoms) -> tuple[float, float]:
    """The energy change of a relaxation step from frame ``a`` to ``b`` (eV) and what the forces say it was
    (:func:`predicted_energy_change`). Forces are the frames' ``arrays['forces']`` (every atom's, fixed ones
    included: they do not move)."""
    predicted = predicted_energy_change(a.positions, a.arrays["forces"], b.positions, b.arrays["forces"])
    return float(b.info["energy"] - a.info["energy"]), predicted


def predicted_energy_change(x_a, f_a, x_b, f_b) -> float:
    """The trapezoid estimate −½ (F_a + F_b)·(x_b − x_a) of the energy change (eV) from positions ``x_a`` (Å) with
    forces ``f_a`` (eV/Å) to ``x_b`` with ``f_b``: exact to third order in the step on one potential energy
    surface."""
    step = np.asarray(x_b, float) - np.asarray(x_a, float)
    return -0.5 * float(np.sum((np.asarray(f_a, float) + np.asarray(f_b, float)) * step))


def is_scf_jump(rose: float, predicted: float) -> bool:
    """Whether a relaxation step that changed the energy by ``rose`` (eV) where its forces predict ``predicted``
    jumped to a higher SCF solution: it rose by more than :data:`SCF_JUMP_TOLERANCE` while the forces at both of
    its ends say it went downhill."""
    return rose > SCF_JUMP_TOLERANCE and predicted < 0


def _mark_scf_jumps(frames: list[Atoms], system: str, sysdir: Path | None = None) -> None:
    """Flag the frames of one system's relaxation from the first step that jumped to a higher SCF solution on.

    A step is a jump when its energy rose by more than :data:`SCF_JUMP_TOLERANCE` while the forces at both of
    its ends say it went downhill (:func:`step_energy_mismatch` below zero): on one potential energy surface a
    relaxation step of a tenth of an ångström cannot do that, but an SCF restarted from the previous step's
    wavefunction can land in another, higher solution and stay there. From that frame on every frame gets
    ``info['scf_jump']``, saying where and by how much; so do the system's vibration frames, which start from its
    last geometry and wavefunction, unless a spin start took the site over (read from ``sysdir/result.json`` once
    a jump is found: they are then computed from the takeover's solution). Measured on 2H-MoSe₂'s Se-top relaxation: step 26 rose 63 meV where the forces gave
    −25 meV, and the fresh-start check at the relaxation's end found a solution 92 meV below the chain's.
    ``frames`` are the system's, in the order read."""
    steps = [
        f for f in frames if f.info.get("system") == system and not f.info.get("vibration") and "forces" in f.arrays
    ]
    for a, b in zip(steps, steps[1:], strict=False):
        if len(a) != len(b):
            continue
        rose, predicted = step_energy_mismatch(a, b)
        if is_scf_jump(rose, predicted):
            jump = (
                f"frame {b.info['frame']}: energy rose {1000 * rose:+.0f} meV where the forces give "
                f"{1000 * predicted:+.0f} meV"
            )
            taken_over = sysdir is not None and _taken_over(sysdir)
            for f in frames:
                vibration = bool(f.info.get("vibration"))
                if f.info.get("system") == system and (
                    (vibration and not taken_over) or (not vibration and f.info["frame"] >= b.info["frame"])
                ):
                    f.info["scf_jump"] = jump
            return


def _taken_over(site_dir: Path) -> bool:
    """Whether a spin start took this site over and its relaxation ran
    (:func:`gen2d.adsorption.spin_start_took_over` of its ``result.json``)."""
    from gen2d.adsorption import spin_start_took_over

    try:
        doc = json.loads((site_dir / "result.json").read_text())
    except (OSError, ValueError):
        return False
    return spin_start_took_over(doc)


def collect_frames(
    roots: Iterable[str | os.PathLike], keep_superseded: bool = False
) -> tuple[list[Atoms], dict[str, Any]]:
    """Every frame with an energy under ``roots`` (DFT run directories or folders of them).

    A frame evaluated twice in a row (a resumed relaxation re-evaluates its last frame; a retried SCF, on a
    ladder rung or after a false convergence, gives the same geometry a new energy) is kept once, as the later
    evaluation: the energy the run accepted.
    A system folder with no frame file but a single point's ``result.json``, ``gen2d.inp`` and
    ``gen2d.out`` gives one energy-only frame (:func:`single_point_frame`; ``info['energy_only']`` True,
    no forces), or an entry in ``skipped`` saying why not.

    A site that a lower spin start took over relaxes on in ``site_k-…/lowest_start*/``: those frames are read as
    the system ``site_k-…/lowest_start_H<m>``, and at the geometry of the takeover only the lowest energy stays
    (:func:`_mark_superseded`; ``keep_superseded`` keeps the others, flagged ``superseded_spin_solution``). When that
    relaxation failed and the site took the lower start's single point, the site's own frame at that geometry is
    left out the same way (:func:`_mark_failed_takeover`). A relaxation step that jumped to a higher SCF solution
    (its energy rose while its forces say it went down) and every later frame of that system are left out too
    (:func:`_mark_scf_jumps`, flag ``scf_jump``). ``keep_superseded`` keeps every flagged frame.

    Returns the frames (``info``: ``energy`` in eV, ``config_type``, ``run``, ``system``, ``frame``,
    ``formula``, ``content_hash``, ``settings_hash``, ``calculator``, ``energy_only``, ``source``;
    ``arrays['forces']`` in eV/Å where recorded) and a summary: counts by settings hash and by system
    kind, and the directories skipped with the reason.
    """
    frames: list[Atoms] = []
    skipped: list[dict[str, str]] = []
    seen_runs: set[Path] = set()
    for root in map(Path, roots):
        if not root.is_dir():
            skipped.append({"path": str(root), "reason": "not a directory"})
            continue
        runs = list(_run_dirs(root))
        for traj in sorted(p for name in (*FRAME_FILES, "result.json") for p in root.rglob(name)):
            if traj.name == "result.json" and any((traj.parent / n).is_file() for n in FRAME_FILES):
                continue  # its frames are listed already
            # a site's spin-start checks (site_k-*/start_H*/) sit one level deeper: they belong to the run, but are
            # not collected (fresh-start single points are not relaxation frames); a takeover's relaxation
            # (site_k-*/lowest_start*/) is, below
            # a takeover's SCF-jump checks (site_k-*/lowest_start*/scf_jump-*/) are one level deeper still
            if not any((a / RUN_METADATA).is_file() for a in (traj.parent, *list(traj.parents)[1:4])):
                skipped.append({"path": str(traj), "reason": f"no {RUN_METADATA}: settings and source unknown"})
        for run in runs:
            run = run.resolve()
            if run in seen_runs:
                continue
            seen_runs.add(run)
            first_of_run = len(frames)
            meta = json.loads((run / RUN_METADATA).read_text())
            # a part's vibrations folder is not a system of its own: its frames are read with the part's
            systems = [run]
            for part in sorted(p for p in run.iterdir() if p.is_dir() and p.name != "vibrations"):
                systems.append(part)
                # a site a lower spin start took over relaxes on in site_k-*/lowest_start*/: its frames are the
                # site's from there on (system "site_k-…/lowest_start_H+1"), read after the site's own
                if part.name.startswith("site_"):
                    systems += sorted(p for p in part.glob("lowest_start*") if p.is_dir())
            for sysdir in systems:
                system = "." if sysdir == run else sysdir.relative_to(run).as_posix()
                first_of_system = len(frames)
                names: tuple[str, ...] = FRAME_FILES
                if not any((sysdir / name).is_file() for name in FRAME_FILES) and (sysdir / "result.json").is_file():
                    names = ()
                    atoms, why = single_point_frame(sysdir)
                    if atoms is None:
                        skipped.append({"path": str(sysdir), "reason": why})
                    else:
                        atoms.info.update(_provenance(meta, run, system, 0))
                        atoms.info.update(energy_only=True, source="result.json+gen2d.inp+gen2d.out", vibration=False)
                        frames.append(atoms)
                for name in (*names, VIBRATION_FRAMES):
                    path = sysdir / name
                    if not path.is_file() or path.stat().st_size == 0:
                        continue
                    previous: Atoms | None = None
                    for k, atoms in enumerate(_read_frames(path)):
                        try:
                            energy = float(atoms.get_potential_energy())
                        except Exception:  # noqa: BLE001 - a frame without an energy is not data
                            continue
                        try:
                            forces = np.asarray(atoms.get_forces(apply_constraint=False), float)
                        except Exception:  # noqa: BLE001
                            forces = None
                        if previous is not None and _same(previous, atoms):
                            # the same geometry again is a retry of its SCF (a ladder rung, the restart of a
                            # false convergence): the later energy is the one the run accepted
                            frames.pop()
                        previous = atoms
                        out = Atoms(
                            atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
                        )
                        out.info.update(energy=energy, **_provenance(meta, run, system, k))
                        if forces is not None and forces.shape == (len(out), 3):
                            out.arrays["forces"] = forces
                        vibration = name == VIBRATION_FRAMES
                        out.info.update(
                            energy_only="forces" not in out.arrays, source=f"{system}/{name}", vibration=vibration
                        )
                        frames.append(out)
                _mark_scf_jumps(frames[first_of_system:], system, sysdir)
                if sysdir.name.startswith("lowest_start"):
                    _mark_superseded(frames[first_of_run:], system)
                elif sysdir.name.startswith("site_"):
                    _mark_failed_takeover(frames[first_of_run:], sysdir, system)
    n_superseded = sum(bool(f.info.get("superseded_spin_solution")) for f in frames)
    jumps = sorted({(f.info["run"], f.info["system"], f.info["scf_jump"]) for f in frames if f.info.get("scf_jump")})
    n_jumped = sum(bool(f.info.get("scf_jump")) for f in frames)
    if not keep_superseded:
        frames = [f for f in frames if not any(f.info.get(flag) for flag in OFF_SOLUTION_FLAGS)]
    summary = {
        "n_frames": len(frames),
        "n_with_forces": sum("forces" in f.arrays for f in frames),
        "n_energy_only": sum("forces" not in f.arrays for f in frames),
        "n_runs": len(seen_runs),
        "by_settings_hash": dict(Counter(f.info["settings_hash"] for f in frames)),
        "by_config_type": dict(Counter(f.info["config_type"] for f in frames)),
        "n_superseded_spin_solution": n_superseded,
        "n_scf_jump": n_jumped,
        "scf_jumps": [{"run": r, "system": sy, "jump": j} for r, sy, j in jumps],
        "superseded_kept": keep_superseded,
        "skipped": skipped,
        "energy_unit": "eV",
        "forces_unit": "eV/Å",
    }
    return frames, summary


def _provenance(meta: dict[str, Any], run: Path, system: str, frame: int) -> dict[str, Any]:
    return {
        "energy_unit": "eV",
        "config_type": meta.get("system_kind") or _kind(system),
        "run": run.name,
        "system": system,
        "frame": frame,
        "formula": meta.get("formula", ""),
        "content_hash": meta.get("content_hash", ""),
        "settings_hash": meta.get("settings_hash", ""),
        "calculator": meta.get("calculator", ""),
    }


def _kind(system: str) -> str:
    if system.startswith("site_"):
        return "slab+H"
    if system.startswith("slab"):
        return "slab"
    return "molecule" if system == "." else system


def export_extxyz(
    roots: Iterable[str | os.PathLike], out: str | os.PathLike, settings_hash: str | None = None
) -> dict[str, Any]:
    """Write the frames under ``roots`` to ``out`` (extended XYZ), each once, and return the summary with the path.

    A frame two runs share (a slab single point copied into another run) is written once
    (:func:`gen2d.finetune.deduplicate_frames`; ``n_duplicates_dropped``). ``settings_hash`` keeps the frames of
    one DFT setting only; without it, frames of several settings are written and ``mixed_settings`` says so (a
    training set should hold one)."""
    from ase.io import write

    from gen2d.finetune import deduplicate_frames

    frames, summary = collect_frames(roots)
    if settings_hash is not None:
        frames = [f for f in frames if f.info.get("settings_hash") == settings_hash]
        summary["settings_hash"] = settings_hash
    frames, dropped = deduplicate_frames(frames)
    summary["n_duplicates_dropped"] = dropped
    summary["n_frames"] = len(frames)
    summary["n_with_forces"] = sum(1 for f in frames if "forces" in f.arrays)
    summary["mixed_settings"] = len({f.info.get("settings_hash") for f in frames}) > 1
    out = Path(out)
    with atomic_path(out) as tmp:
        write(str(tmp), frames, format="extxyz")
    summary["path"] = str(out)
    return summary


__all__ = [
    "FRAME_FILES",
    "RUN_METADATA",
    "VIBRATION_FRAMES",
    "SINGLE_POINT_FILES",
    "collect_frames",
    "export_extxyz",
    "save_frame",
    "single_point_frame",
    "write_run_metadata",
]
