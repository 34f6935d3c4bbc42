#!/usr/bin/env python
"""How long the store takes to find the candidates whose result from a scorer is missing or stale.

``CandidateStore.candidates_missing(current=...)`` lets a database server select them (montydb, which
measured slower at it, is read in full); the old way read every candidate and checked it in Python.
Both are timed on a fresh store of ``--n`` copies of one MoS2 candidate (distinct ids), every
``--stale-every``-th one left unscored, the rest scored under the current scheme.

    .venv/bin/python scripts/bench_store.py --uri memory://bench --n 2000
    .venv/bin/python scripts/bench_store.py --uri monty:///tmp/bench-store --n 2000
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    from ase.build import mx2

    from gen2d.scoring import Provenance, ScoreResult
    from gen2d.store import SourceInfo, get_score, make_candidate, open_store, score_is_current
    from gen2d.structures import from_ase, orient_2d

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uri", required=True, help="an empty store: memory://name, monty:///path or mongodb://...")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--stale-every", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    atoms = mx2("MoS2", kind="2H", a=3.18, thickness=3.13, vacuum=10.0)
    atoms.pbc = (True, True, False)
    base = make_candidate(orient_2d(from_ase(atoms)), SourceInfo(kind="dataset", set="bench", source_id="mos2"))
    cands = [base.model_copy(update={"candidate_id": f"g2d-bench{k:011x}"}) for k in range(args.n)]
    current = {"provenance.settings.correction_scheme": "v1"}
    with open_store(args.uri) as cs:
        if next(cs.query({}, limit=1), None) is not None:
            raise SystemExit(f"{args.uri} is not empty; give a fresh store")
        cs.upsert_candidates(cands)
        for k, c in enumerate(cands):
            if k % args.stale_every:
                cs.set_score(
                    c.candidate_id,
                    "ehull.bench",
                    ScoreResult(
                        property="e_hull",
                        value=0.0,
                        unit="eV/atom",
                        provenance=Provenance(plugin="ehull.bench", settings={"correction_scheme": "v1"}),
                    ),
                )
        ways = {
            "candidates_missing"
            + (" (the database selects)" if cs.selects_stale else " (reads every candidate on this backend)"): lambda: (
                cs.candidates_missing("ehull.bench", current=current)
            ),
            "reading every candidate, checking in Python": lambda: [
                d for d in cs.query({}) if not score_is_current(get_score(d, "ehull.bench"), current)
            ],
        }
        best = {name: float("inf") for name in ways}
        for _ in range(args.repeat):  # alternated, best of each: no warm-up advantage for either
            for name, find in ways.items():
                t0 = time.perf_counter()
                stale = find()
                best[name] = min(best[name], time.perf_counter() - t0)
                found = len(stale)
        for name, seconds in best.items():
            print(
                f"{args.uri.split(':')[0]}, {args.n} candidates ({found} stale): {name}: "
                f"{seconds * 1e3:.0f} ms (best of {args.repeat})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
