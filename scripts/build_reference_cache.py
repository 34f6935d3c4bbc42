#!/usr/bin/env python
"""Build the shipped MLIP reference cache for one chemical space (``src/gen2d/assets/references``).

The ``mlip-prototypes`` convex hull relaxes every elemental polymorph and every binary prototype of
each element pair with the candidate's own MLIP, and stacks every database layer of the space
(:mod:`gen2d.hull.stacked`). Cold, that costs ~6 s per element and ~30 s per pair
on 2 cores, which dominates a first run. This script relaxes them once for a chemical space and writes
the same gzip JSON files the provider caches at run time, plus a MANIFEST.json saying how they were
made. The provider reads the shipped files read-only, under the same cache key (MLIP checkpoint hash,
prototype-library version, fmax, steps, prototype list), so a different MLIP, version or setting
never uses them: it recomputes.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/build_reference_cache.py \\
        --elements Mo,W,Nb,Ta,V,Ti,S,Se,Te,C --out src/gen2d/assets/references
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import resource
import sys
import time
from datetime import date
from itertools import combinations
from pathlib import Path


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", required=True, help="comma-separated chemical space, e.g. Mo,W,S,Se")
    ap.add_argument("--calculator", default="chgnet")
    ap.add_argument("--out", type=Path, required=True, help="cache directory to fill (created)")
    args = ap.parse_args(argv)

    from gen2d.hull import PROTOTYPE_LIBRARY_VERSION, MLIPPrototypesProvider
    from gen2d.relax import cached_calculator

    elements = sorted({e.strip() for e in args.elements.split(",") if e.strip()})
    calc = cached_calculator(args.calculator)
    if args.out.is_dir():  # files under another library version or model are never read again
        for old in args.out.glob("*/*.json.gz"):
            old.unlink()
        for d in args.out.iterdir():
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    prov = MLIPPrototypesProvider(calc, cache_dir=args.out, shipped=False)
    t0, c0 = time.time(), cpu_seconds()
    timings: dict[str, float] = {}
    for el in elements:
        t = time.time()
        n = len(prov.element_entries(el))
        timings[el] = round(time.time() - t, 1)
        print(f"{el}: {n} phases, {timings[el]} s", flush=True)
    for a, b in combinations(elements, 2):
        t = time.time()
        n = len(prov.binary_entries(a, b))
        timings[f"{a}-{b}"] = round(time.time() - t, 1)
        print(f"{a}-{b}: {n} phases, {timings[f'{a}-{b}']} s", flush=True)
    if prov.stacked is not None:  # stacked database layers of every chemical system inside the space
        t = time.time()
        n = len(prov.stacked_entries(elements))
        timings["stacked"] = round(time.time() - t, 1)
        print(f"stacked layers: {n} phases, {timings['stacked']} s", flush=True)
    files = sorted(p.relative_to(args.out).as_posix() for p in args.out.rglob("*.json.gz"))
    entries = {}
    for rel in files:
        with gzip.open(args.out / rel, "rt") as fh:
            entries[rel] = len(json.load(fh)["entries"])
    manifest = {
        "what": "mlip-prototypes reference phases (MP2020-corrected ComputedEntries), read-only seed cache",
        "chemical_space": elements,
        "n_elements": len(elements),
        "n_pairs": len(elements) * (len(elements) - 1) // 2,
        "provider": prov.describe(),
        "prototype_library_version": PROTOTYPE_LIBRARY_VERSION,
        "files": entries,
        "wall_seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(cpu_seconds() - c0, 1),
        "seconds_per_subsystem": timings,
        "command": "OMP_NUM_THREADS=1 .venv/bin/python scripts/build_reference_cache.py --elements "
        f"{','.join(elements)} --calculator {args.calculator} --out {args.out}",
        "date": date.today().isoformat(),
        "python": platform.python_version(),
        "note": "Energies are the MLIP's own; only a run with the same MLIP checkpoint and settings reads them.",
    }
    manifest["provider"]["cache_dir"] = "src/gen2d/assets/references"
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(
        f"{len(files)} files, {sum(entries.values())} phases; wall {manifest['wall_seconds']} s, "
        f"CPU {manifest['cpu_seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
