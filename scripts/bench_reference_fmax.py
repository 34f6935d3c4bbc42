#!/usr/bin/env python
"""How much the hull references' looser relaxation (fmax 0.1 eV/Å) lowers E_hull against candidates relaxed to 0.05.

``mlip-prototypes`` relaxes its reference phases to fmax 0.1 eV/Å (200 FIRE steps); candidates relax to 0.05. A
reference left higher than its own minimum raises the hull and so lowers every E_hull measured against it. This
script takes the phases that make the hull of each chemical system (the vertices of the MLIP's own
``PhaseDiagram`` over the provider's entries, MP2020-corrected as the scorer uses them), relaxes each on to
``--fmax`` (default 0.05, the candidates' setting) from its cached structure, and prints how far each falls
(meV/atom). A vertex's fall is the largest amount by which E_hull at that composition can rise; between vertices
the rise is the interpolation of theirs.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_reference_fmax.py Mo-S W-Se Nb-Te Ti-S \
        --out /tmp/ref_fmax.json

Systems default to 12 pairs of the shipped cache's chemical space (read from it: no relaxation to build them).
Molecules (in a box, atoms only) are relaxed without their cell. Energies eV, forces eV/Å.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("systems", nargs="*", help="chemical systems A-B (default: 12 pairs of the shipped space)")
    ap.add_argument("--fmax", type=float, default=0.05, help="eV/Å, the candidates' setting")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--n", type=int, default=12, help="pairs drawn when no system is given")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the per-phase figures here (JSON)")
    args = ap.parse_args(argv)

    import numpy as np
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.io.ase import AseAtomsAdaptor

    from gen2d.hull.mlip_prototypes import MLIPPrototypesProvider, relaxes_cell
    from gen2d.relax import cached_calculator, relax_bulk

    calc = cached_calculator("chgnet", device="cpu")
    provider = MLIPPrototypesProvider(calc, cache_dir=False)
    systems = [s.split("-") for s in args.systems]
    if not systems:
        manifest = json.loads((provider.shipped_dir / "MANIFEST.json").read_text())
        pairs = list(itertools.combinations(manifest["chemical_space"], 2))
        systems = [list(p) for p in random.Random(args.seed).sample(pairs, min(args.n, len(pairs)))]
    rows = []
    t0 = time.process_time()
    for elements in systems:
        entries = provider.entries(elements)
        pd = PhaseDiagram(entries)
        for entry in sorted(pd.stable_entries, key=lambda e: e.composition.reduced_formula):
            structure = getattr(entry, "structure", None)
            if structure is None:
                continue
            relax_cell = relaxes_cell(str(entry.data.get("prototype", "")))  # the provider's own rule
            atoms = AseAtomsAdaptor.get_atoms(structure)
            n = len(atoms)
            res = relax_bulk(atoms, calc, fmax=args.fmax, steps=args.steps, relax_cell=relax_cell)
            if res.energy is None or not np.isfinite(res.energy):
                print(f"{'-'.join(elements):8s} {entry.composition.reduced_formula:10s} failed: {res.failure}")
                continue
            start = AseAtomsAdaptor.get_atoms(structure)
            start.calc = calc
            e_start = float(start.get_potential_energy())
            row = {
                "system": "-".join(elements),
                "formula": entry.composition.reduced_formula,
                "prototype": entry.data.get("prototype"),
                "n_atoms": n,
                "stored_final_fmax_eV_per_A": entry.data.get("final_fmax"),
                "stored_minus_single_point_meV_per_atom": 1000 * (entry.uncorrected_energy - e_start) / n,
                "fall_meV_per_atom": 1000 * (res.energy - e_start) / n,
                "converged": res.converged,
                "steps": res.steps,
            }
            rows.append(row)
            print(
                f"{row['system']:8s} {row['formula']:10s} {str(row['prototype']):14s} fmax "
                f"{row['stored_final_fmax_eV_per_A'] or 0:.3f} → fall {row['fall_meV_per_atom']:+7.2f} meV/atom "
                f"({row['steps']} steps{'' if res.converged else ', not converged'})",
                flush=True,
            )
    falls = np.array([r["fall_meV_per_atom"] for r in rows])
    summary = {
        "what": f"hull vertices of mlip-prototypes (fmax {provider.fmax}) relaxed on to fmax {args.fmax}",
        "command": "scripts/bench_reference_fmax.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": getattr(calc, "gen2d_model", "chgnet"),
        "systems": ["-".join(s) for s in systems],
        "n_vertices": len(rows),
        "fall_meV_per_atom": {
            "median": float(np.median(falls)) if len(falls) else None,
            "mean": float(np.mean(falls)) if len(falls) else None,
            "min": float(np.min(falls)) if len(falls) else None,
            "share_below_minus_1": float(np.mean(falls < -1.0)) if len(falls) else None,
        },
        "cpu_seconds": round(time.process_time() - t0, 1),
        "units": {"fall_meV_per_atom": "meV/atom, E(fmax) − E(stored structure), same MLIP"},
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(summary, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
