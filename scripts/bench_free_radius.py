#!/usr/bin/env python
"""How much of ΔE_H a constrained relaxation misses: ΔE_H of H on top of the outermost atom when only the atoms
within a radius of the H start relax with it (``RefineSettings.free_radius``), for a range of radii, by an MLIP.

The DFT refinement of ``dgh.dft`` relaxes H and the slab atoms within ``free_radius`` of the H start, on the
MLIP's slab. Its error against relaxing the whole layer is measured here with the cheap model, the same supercell
(2H-MoS₂ 3×3, graphene 4×4) and the same H start (1.3 Å above the top atom); ``E(slab)`` is the unrelaxed layer
for every radius, as in the refinement without ``relax_slab_reference``.

Usage (about a minute of one core with CHGNet):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_free_radius.py
    .venv/bin/python scripts/bench_free_radius.py --calculator sevennet --radii 3 6 99 --json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def layers():
    from ase.build import graphene, mx2

    mos2 = mx2("MoS2", kind="2H", a=3.19, thickness=3.13, vacuum=7.5).repeat((3, 3, 1))
    gra = graphene(a=2.467, vacuum=7.5).repeat((4, 4, 1))
    for atoms in (mos2, gra):
        atoms.pbc = (True, True, False)
    return {"MoS2-2H 3x3": mos2, "graphene 4x4": gra}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calculator", default="chgnet", help="a gen2d.calculators MLIP")
    ap.add_argument("--radii", type=float, nargs="+", default=[3.0, 4.0, 5.0, 6.0, 99.0], help="Å")
    ap.add_argument("--fmax", type=float, default=0.02)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)

    from gen2d.adsorption import _constrained_bfgs, _free_indices, h2_reference
    from gen2d.relax import cached_calculator

    calc = cached_calculator(args.calculator)
    e_h2, _ = h2_reference(calc)
    rows = []
    for name, slab in layers().items():
        probe = slab.copy()
        probe.calc = calc
        e_slab = probe.get_potential_energy()
        top = int(np.argmax(slab.positions[:, 2]))
        for radius in args.radii:
            atoms = slab.copy()
            atoms.append("H")
            atoms.positions[-1] = slab.positions[top] + [0.0, 0.0, 1.3]
            free = _free_indices(atoms, atoms.positions[-1], radius, len(slab)) + [len(atoms) - 1]
            _, energy, converged, steps = _constrained_bfgs(atoms, calc, free, args.fmax, 400, None)
            rows.append(
                {
                    "layer": name,
                    "free_radius_A": radius,
                    "n_free": len(free),
                    "n_atoms": len(atoms),
                    "delta_e_h_eV": energy - e_slab - 0.5 * e_h2,
                    "converged": converged,
                    "steps": steps,
                }
            )
    for name in layers():
        whole = [r for r in rows if r["layer"] == name][-1]["delta_e_h_eV"]
        for r in rows:
            if r["layer"] == name:
                r["vs_largest_radius_eV"] = r["delta_e_h_eV"] - whole
    if args.json:
        print(json.dumps({"calculator": args.calculator, "unit": "eV", "rows": rows}, indent=1))
        return 0
    print(f"{args.calculator}: ΔE_H (eV) against the free radius around the H start")
    print("| layer | free radius (Å) | free atoms | ΔE_H (eV) | vs largest radius (eV) | BFGS steps |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['layer']} | {r['free_radius_A']:g} | {r['n_free']} of {r['n_atoms']} | {r['delta_e_h_eV']:+.3f} | "
            f"{r['vs_largest_radius_eV']:+.3f} | {r['steps']}{'' if r['converged'] else ' (not converged)'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
