#!/usr/bin/env python
"""One SCF of a stored DFT frame under several CP2K setting variants: which converge, in how many steps, at what
energy and cost. For choosing SCF settings on the systems that fail (a metallic slab + H), with numbers.

Each variant is a single point from the atomic guess, with the settings of the frame's run (``run.json`` beside
its folder, or ``--settings``) changed by the variant's ``key=value`` pairs and no retry ladder, so that the
variant alone decides. Energies of variants that change the physics (``spin``, ``dipole_correction``) differ by
that physics, not by noise; compare steps and convergence first.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_scf_variants.py \\
        --traj dft-runs/reference/fc7fc3a36aa0da0f/site_0-799b5c2c-pre-chgnet/relax.traj --frame 0 \\
        --variant base: --variant rks:spin=off --variant no-dipole:dipole_correction=false \\
        --variant rks-no-dipole:spin=off,dipole_correction=false --max-scf 150 --workdir /tmp/scf-variants

The frame is used as stored (a 3×3 metallic slab + H costs about a minute per SCF step on one core).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value,key=value`` → (name, overrides). A value is read as JSON where it is JSON (``false``,
    ``0.05``, ``null``; no commas inside a value), else kept as text (``off``, which YAML would read as false)."""
    name, _, rest = text.partition(":")
    if not name:
        raise ValueError(f"variant {text!r}: give it a name, e.g. rks:spin=off")
    overrides: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"variant {text!r}: {pair!r} is not key=value")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return name, overrides


def run_variant(atoms, settings: dict[str, Any], overrides: dict[str, Any], max_scf: int, directory: Path) -> dict:
    """One single point; the record says how it went, a failure included."""
    from gen2d_cp2k import abs_spin_density, make_calculator
    from gen2d_cp2k.settings import Cp2kSettings

    chosen = Cp2kSettings(**{**settings, **overrides, "scf_fallback": [], "max_scf": max_scf})
    work = atoms.copy()
    work.calc = calc = make_calculator(settings=chosen, directory=str(directory))
    t0 = time.perf_counter()
    out: dict[str, Any] = {"overrides": overrides, "settings_hash": chosen.settings_hash()}
    try:
        out["energy_eV"] = float(work.get_potential_energy())
        out["converged"] = True
    except Exception as exc:  # noqa: BLE001 - a failed SCF is this variant's result
        out["converged"] = False
        out["failure"] = f"{type(exc).__name__}: {str(exc)[:240]}"
    finally:
        calc.close()
    out["scf_steps"] = list(calc.scf_steps)
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    out_file = directory / "gen2d.out"
    out["abs_spin_density"] = abs_spin_density(out_file.read_text(errors="replace")) if out_file.is_file() else None
    out["units"] = {"energy_eV": "eV", "wall_seconds": "s"}
    return out


def main(argv: list[str] | None = None) -> int:
    from ase.io import read

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traj", required=True, type=Path, help="a relax.traj or frame.traj of a DFT run")
    ap.add_argument("--frame", type=int, default=-1, help="frame index (default: the last)")
    ap.add_argument("--settings", type=Path, help="a run.json (its cp2k_settings) or a JSON of Cp2kSettings")
    ap.add_argument("--variant", action="append", required=True, help="name:key=value,... (repeatable)")
    ap.add_argument("--max-scf", type=int, default=150)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    args = ap.parse_args(argv)

    source = args.settings or args.traj.resolve().parent.parent / "run.json"
    if not source.is_file():
        ap.error(f"no settings: {source} does not exist (give --settings)")
    doc = json.loads(source.read_text())
    settings = doc.get("cp2k_settings", doc)
    try:
        variants = [parse_variant(v) for v in args.variant]
    except ValueError as exc:
        ap.error(str(exc))
    atoms = read(str(args.traj), index=args.frame)
    atoms.calc = None
    records = {}
    for name, overrides in variants:
        records[name] = run_variant(atoms, settings, overrides, args.max_scf, args.workdir / name)
        r = records[name]
        what = f"{r['energy_eV']:.4f} eV" if r["converged"] else r["failure"][:80]
        print(f"{name:>16s}: {sum(r['scf_steps'])} SCF steps, {r['wall_seconds']:.0f} s, {what}", flush=True)
    if args.json:
        print(json.dumps({"frame": {"traj": str(args.traj), "index": args.frame}, "variants": records}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
