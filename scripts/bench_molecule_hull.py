#!/usr/bin/env python
"""How far each small hydride molecule lies from its element pair's reference hull (``mlip-prototypes``).

A molecule in a box is an upper bound on the energy of its molecular solid, so a molecule *below* its pair's
hull means the prototype library lacks that solid, and every candidate whose decomposition needs it scores too
low an E_hull. For each pair the script relaxes the pair's references with the provider (cached as usual; a cold
pair costs 45-300 CPU-s), relaxes the molecule (ASE's g2 geometry, centred in a box with 6 Å of vacuum, BFGS at
fixed cell) with the same MLIP, applies the same MP2020 corrections, and prints its distance to the hull and
the hull's stable phases.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_molecule_hull.py
    .venv/bin/python scripts/bench_molecule_hull.py --pairs H-N:NH3 C-H:CH4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

#: element pair -> the molecule of ASE's g2 set that is its simplest compound
DEFAULT_PAIRS = ["H-O:H2O", "F-H:HF", "H-N:NH3", "C-H:CH4", "H-S:SH2", "Cl-H:HCl", "H-P:PH3"]


def molecule_entry(name: str, calc, provider, vacuum: float = 6.0, fmax: float = 0.02):
    """The relaxed molecule (fixed box) as an MP2020-corrected entry of ``calc``."""
    from ase.build import molecule
    from ase.optimize import BFGS

    from gen2d.hull.corrections import apply_mp2020, mlip_entry
    from gen2d.structures import from_ase

    atoms = molecule(name)
    atoms.center(vacuum=vacuum)
    atoms.pbc = True
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=300)
    energy = float(atoms.get_potential_energy())
    entry = mlip_entry(
        from_ase(atoms),
        energy,
        model=provider.model,
        checkpoint_sha256=provider.checkpoint_sha256,
        entry_id=f"molecule:{name}",
    )
    return apply_mp2020(entry)


def main(argv: list[str] | None = None) -> int:
    import torch
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    from gen2d.hull import PROTOTYPE_LIBRARY_VERSION, MLIPPrototypesProvider
    from gen2d.relax import cached_calculator

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS, help="A-B:MOLECULE (a g2 name), e.g. H-N:NH3")
    ap.add_argument("--calculator", default="chgnet")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    calc = cached_calculator(args.calculator, device="cpu")
    provider = MLIPPrototypesProvider(calc)  # the default references, stacked database layers included
    out = {"library_version": PROTOTYPE_LIBRARY_VERSION, "model": provider.model, "unit": "eV/atom", "pairs": []}
    print(f"{'pair':6s} {'molecule':8s} {'above hull':>10s} {'E_form':>8s}  stable phases of the pair (E_form)")
    for spec in args.pairs:
        pair, name = spec.split(":")
        t0 = time.process_time()
        pd = PhaseDiagram(provider.entries(pair.split("-")))
        mol = molecule_entry(name, calc, provider)
        above = float(pd.get_e_above_hull(mol, allow_negative=True))
        form = float(pd.get_form_energy_per_atom(mol))
        stable = sorted(
            (e.composition.reduced_formula, round(float(pd.get_form_energy_per_atom(e)), 3)) for e in pd.stable_entries
        )
        cpu = time.process_time() - t0
        print(f"{pair:6s} {name:8s} {above:+10.3f} {form:+8.3f}  {stable}  ({cpu:.0f} CPU-s)", flush=True)
        out["pairs"].append(
            {"pair": pair, "molecule": name, "e_above_hull": above, "e_form": form, "stable": stable, "cpu_s": cpu}
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
