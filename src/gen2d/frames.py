"""DFT frames as training data: every energy and force a ``dgh.dft`` run evaluated, with where it came from.

A DFT run directory (see :func:`gen2d.adsorption.refine_adsorption`) holds ``run.json`` (what was computed:
formula, content hash of the candidate, calculator settings and their hash) and one folder per system
(``slab``, ``site_<k>-<start>``, ``slab_site_<k>-<start>``, or the H₂ reference) with the evaluated frames: ``relax.traj``
for relaxations, ``frame.traj`` for single points. :func:`collect_frames` reads them all;
:func:`export_extxyz` writes them as one extended-XYZ file for MLIP fine-tuning, each frame carrying its
energy (eV), forces (eV/Å) and provenance in ``info``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from gen2d.fileio import atomic_path, write_json_atomic

RUN_METADATA = "run.json"
FRAME_FILES = ("relax.traj", "frame.traj")


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


def _same(a: Atoms, b: Atoms) -> bool:
    return len(a) == len(b) and bool(np.abs(a.positions - b.positions).max() < 1e-8)


def collect_frames(roots: Iterable[str | os.PathLike]) -> tuple[list[Atoms], dict[str, Any]]:
    """Every frame with an energy under ``roots`` (DFT run directories or folders of them).

    A frame evaluated twice in a row (a resumed relaxation re-evaluates its last frame) is kept once.
    Returns the frames (``info``: ``energy`` in eV, ``config_type``, ``run``, ``system``, ``frame``,
    ``formula``, ``content_hash``, ``settings_hash``, ``calculator``; ``arrays['forces']`` in eV/Å
    where recorded) and a summary: counts by settings hash and by system kind, and the directories
    skipped with the reason.
    """
    frames: list[Atoms] = []
    skipped: list[dict[str, str]] = []
    seen_runs: set[Path] = set()
    for root in map(Path, roots):
        if not root.is_dir():
            skipped.append({"path": str(root), "reason": "not a directory"})
            continue
        runs = list(_run_dirs(root))
        for traj in sorted(p for name in FRAME_FILES for p in root.rglob(name)):
            if not any((a / RUN_METADATA).is_file() for a in (traj.parent, traj.parent.parent)):
                skipped.append({"path": str(traj), "reason": f"no {RUN_METADATA}: settings and source unknown"})
        for run in runs:
            run = run.resolve()
            if run in seen_runs:
                continue
            seen_runs.add(run)
            meta = json.loads((run / RUN_METADATA).read_text())
            systems = [run] + sorted(p for p in run.iterdir() if p.is_dir())
            for sysdir in systems:
                for name in FRAME_FILES:
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
                            continue
                        previous = atoms
                        out = Atoms(
                            atoms.get_chemical_symbols(), positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
                        )
                        system = "." if sysdir == run else sysdir.name
                        out.info.update(
                            energy=energy,
                            energy_unit="eV",
                            config_type=meta.get("system_kind") or _kind(system),
                            run=run.name,
                            system=system,
                            frame=k,
                            formula=meta.get("formula", ""),
                            content_hash=meta.get("content_hash", ""),
                            settings_hash=meta.get("settings_hash", ""),
                            calculator=meta.get("calculator", ""),
                        )
                        if forces is not None and forces.shape == (len(out), 3):
                            out.arrays["forces"] = forces
                        frames.append(out)
    summary = {
        "n_frames": len(frames),
        "n_with_forces": sum("forces" in f.arrays for f in frames),
        "n_runs": len(seen_runs),
        "by_settings_hash": dict(Counter(f.info["settings_hash"] for f in frames)),
        "by_config_type": dict(Counter(f.info["config_type"] for f in frames)),
        "skipped": skipped,
        "energy_unit": "eV",
        "forces_unit": "eV/Å",
    }
    return frames, summary


def _kind(system: str) -> str:
    if system.startswith("site_"):
        return "slab+H"
    if system.startswith("slab"):
        return "slab"
    return "molecule" if system == "." else system


def export_extxyz(roots: Iterable[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Write every frame under ``roots`` to ``out`` (extended XYZ); returns the summary with the path."""
    from ase.io import write

    frames, summary = collect_frames(roots)
    out = Path(out)
    with atomic_path(out) as tmp:
        write(str(tmp), frames, format="extxyz")
    summary["path"] = str(out)
    return summary


__all__ = ["FRAME_FILES", "RUN_METADATA", "collect_frames", "export_extxyz", "save_frame", "write_run_metadata"]
