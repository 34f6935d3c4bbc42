"""How many of a DimeNet++ ensemble's held-out monolayers have a copy outside its held-out set.

MC2D and 2DMatPedia hold many of the same layers under different ids. Reads the held-out ids of an ensemble's
MANIFEST, the labelling pool (every monolayer of at most ``--max-atoms`` atoms of the two sources, as labelled)
and prints, per held-out layer, whether another pool layer outside the held-out set shares its reduced formula and
whether one is the same structure (pymatgen ``StructureMatcher``, ltol 0.2, stol 0.3, angle_tol 5°).

    .venv/bin/python scripts/check_surrogate_split.py src/gen2d/assets/dgh_dimenet/MANIFEST.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from gen2d_dgh_dimenet.labels import iter_monolayers
    from pymatgen.analysis.structure_matcher import StructureMatcher

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--max-atoms", type=int, default=8)
    ap.add_argument("--sources", nargs="+", default=["mc2d_258_exfoliable.json", "2dmatpedia_filtered.db"])
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)  # unreadable rows are skipped by the reader, as in labelling
    data = Path(os.environ.get("GEN2D_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    held = set(json.loads(args.manifest.read_text())["metrics"]["heldout_ids"])
    pool = list(iter_monolayers([data / s for s in args.sources], max_atoms=args.max_atoms))
    by_formula: dict[str, list] = defaultdict(list)
    for i, s in pool:
        by_formula[s.composition.reduced_formula].append((i, s))
    matcher = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)
    share, duplicates = 0, []
    for i, s in pool:
        if i not in held:
            continue
        others = [(j, t) for j, t in by_formula[s.composition.reduced_formula] if j not in held and j != i]
        share += bool(others)
        same = [j for j, t in others if matcher.fit(s, t)]
        if same:
            duplicates.append({"heldout": i, "formula": s.composition.reduced_formula, "copies": same})
    out = {
        "pool": len(pool),
        "heldout": len(held),
        "heldout_in_pool": len(held & {i for i, _ in pool}),
        "heldout_sharing_a_formula_outside": share,
        "heldout_with_a_structure_copy_outside": len(duplicates),
        "copies": duplicates,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
