#!/usr/bin/env python
"""Where one prototype of the library enters the MLIP hull, and how far it moves the hull at given compositions.

For every element pair of the chemical space in which ``--prototype`` has a decoration: that phase's E_hull
against all the other references (negative: how far it lies below the hull they make without it), the same
from the MLIP's uncorrected energies (what MP2020's corrections add), and the stable phases of the pair with it. For each ``--composition`` (e.g. a layer's formula): the hull energy per
atom with the full reference set, without the prototype and, with ``--also-without``, without further
prototypes as well, and the phases it decomposes into. A layer's own MLIP energy does not depend on the
references, so its E_hull moves by minus the shift of the hull at its composition.

References are the ``mlip-prototypes`` set with the stacked database layers (gen2d's default), read from
the shipped cache where its key matches and relaxed otherwise.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_prototype_effect.py --prototype vs4 \\
        --composition VSeS4 --composition TiSeS4 --also-without moo3,tis3,alpha_s8,stacked --out vs4.json
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from itertools import combinations
from pathlib import Path


def _prototype(entry) -> str:
    return str(entry.data.get("prototype", ""))


def _without(entries: list, names: set[str]) -> list:
    """``entries`` minus those of the named prototypes; ``stacked`` names every stacked database layer."""
    out = []
    for e in entries:
        p = _prototype(e)
        if p in names or ("stacked" in names and p.startswith("stacked:")):
            continue
        out.append(e)
    return out


def _uncorrected(entries: list) -> list:
    from pymatgen.entries.computed_entries import ComputedEntry

    return [ComputedEntry(e.composition, e.uncorrected_energy, data=e.data, entry_id=e.entry_id) for e in entries]


def _hull(entries: list, composition) -> dict:
    """Hull energy per atom at ``composition`` (eV/atom, MP2020-corrected) and its decomposition."""
    from pymatgen.analysis.phase_diagram import PhaseDiagram

    pd = PhaseDiagram(entries)
    decomposition = pd.get_decomposition(composition)
    return {
        "hull_energy_eV_per_atom": round(float(pd.get_hull_energy_per_atom(composition)), 4),
        "decomposition": {
            f"{e.composition.reduced_formula} ({_prototype(e)})": round(float(x), 3)
            for e, x in sorted(decomposition.items(), key=lambda kv: -kv[1])
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prototype", required=True, help="a binary prototype name of the library, e.g. vs4")
    ap.add_argument("--elements", default=None, help="chemical space (default: the shipped cache's)")
    ap.add_argument("--composition", action="append", default=[], help="a formula to report the hull at")
    ap.add_argument("--also-without", default="", help="comma-separated prototypes (or 'stacked') for a third set")
    ap.add_argument("--calculator", default="chgnet")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")

    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Composition

    from gen2d.hull import BINARY_PROTOTYPES, MLIPPrototypesProvider, binary_decorations
    from gen2d.relax import cached_calculator

    if args.prototype not in BINARY_PROTOTYPES:
        ap.error(f"unknown binary prototype {args.prototype!r}; known: {sorted(BINARY_PROTOTYPES)}")
    provider = MLIPPrototypesProvider(cached_calculator(args.calculator))
    if args.elements:
        elements = sorted({e.strip() for e in args.elements.split(",") if e.strip()})
    else:
        elements = json.loads((provider.shipped_dir / "MANIFEST.json").read_text())["chemical_space"]
    also = {x.strip() for x in args.also_without.split(",") if x.strip()}
    result = {
        "what": f"position of the {args.prototype} decorations on the MLIP hull and the hull shift it causes",
        "units": {"e_hull": "eV/atom", "hull_energy": "eV/atom (MP2020-corrected)", "e_hull_change": "eV/atom"},
        "reference_set": provider.describe(),
        "command": "OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_prototype_effect.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "pairs": {},
        "compositions": {},
    }
    print(
        f"{args.prototype}: E_hull of each decoration (eV/atom; negative = below the hull without it), "
        "uncorrected, MP2020 correction per atom"
    )
    for a, b in combinations(elements, 2):
        if not binary_decorations(a, b, [args.prototype]):
            continue
        refs = provider.entries([a, b])
        others = _without(refs, {args.prototype})
        pd_all, pd_others = PhaseDiagram(refs), PhaseDiagram(others)
        pd_others_raw = PhaseDiagram(_uncorrected(others))
        for e in refs:
            if _prototype(e) != args.prototype:
                continue
            [raw] = _uncorrected([e])
            stable = sorted(
                f"{s.composition.reduced_formula} ({_prototype(s)})"
                for s in pd_all.stable_entries
                if len(s.composition.elements) > 1
            )
            row = {
                "formula": e.composition.reduced_formula,
                "e_hull_vs_others": round(float(pd_others.get_e_above_hull(e, allow_negative=True)), 4),
                "e_hull_vs_others_uncorrected": round(
                    float(pd_others_raw.get_e_above_hull(raw, allow_negative=True)), 4
                ),
                "mp2020_correction_eV_per_atom": round(e.correction / e.composition.num_atoms, 4),
                "e_hull": round(float(pd_all.get_e_above_hull(e)), 4),
                "stable_with_it": stable,
            }
            result["pairs"][f"{a}-{b}"] = row
            print(
                f"  {row['formula']:>7s}  {row['e_hull_vs_others']:+.3f}  {row['e_hull_vs_others_uncorrected']:+.3f}  "
                f"{row['mp2020_correction_eV_per_atom']:+.3f}  hull: {', '.join(stable)}"
            )
    for formula in args.composition:
        comp = Composition(formula)
        refs = provider.entries([el.symbol for el in comp.elements])
        sets = {"all": refs, f"without {args.prototype}": _without(refs, {args.prototype})}
        if also:
            sets[f"without {args.prototype}, {', '.join(sorted(also))}"] = _without(refs, {args.prototype} | also)
        rows = {name: _hull(entries, comp) for name, entries in sets.items()}
        base = rows["all"]["hull_energy_eV_per_atom"]
        for row in rows.values():  # a layer here scores this much higher against all the references
            row["layer_e_hull_change_to_all"] = round(row["hull_energy_eV_per_atom"] - base, 4)
        result["compositions"][comp.reduced_formula] = rows
        print(f"{comp.reduced_formula}: hull energy per atom, and the decomposition")
        for name, row in rows.items():
            print(
                f"  {name:>40s}: {row['hull_energy_eV_per_atom']:+.4f} (layer E_hull to all "
                f"{row['layer_e_hull_change_to_all']:+.4f})  "
                + ", ".join(f"{k} {v}" for k, v in row["decomposition"].items())
            )
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
