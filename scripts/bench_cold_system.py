#!/usr/bin/env python
"""What a cold chemical system costs the ``mlip-prototypes`` hull: the reference set before the hull work and now.

For each chemical system (``V-S-Se``: its elements, element pairs and, now, its stacked database layers and
molecules) the references are relaxed with no cache at all (no disk, no shipped files), once with the library as
it was at version 2 and once with today's default, each in its own process so that its peak memory is its own.
It prints, per system and configuration, the phases relaxed, CPU and wall seconds, peak resident memory, and the
hull energy per atom at each ``--composition`` inside the system (how far the added references move it), with the
S/Se/Te corrections limited as E_hull limits them (:func:`gen2d.hull.limit_anion_corrections`).

- ``before``: the 13 binary prototypes of library version 2 (rocksalt … L1₂), no stacked layers, no molecules.
  The elemental polymorphs are today's (α-S₈ for S, added in version 3, cannot be switched off), so for a system
  with S the "before" figure includes it.
- ``now``: the default provider (every binary prototype, the stacked database layers of the system, the molecules
  in a box).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_cold_system.py V-S-Se Si-O \\
        --composition VSeS4 --composition SiO2 --out /tmp/cold.json

CPU seconds are the process's own (user + system), so other work on the machine inflates them less than the wall
time; both are upper bounds on a shared machine, and the load average at start is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

#: the binary prototypes of library version 2, before the hull work added MoO₃, MX₃, VS₄, ice XI, NH₃, CH₄, quartz
V2_PROTOTYPES = (
    "rocksalt",
    "zincblende",
    "wurtzite",
    "cscl",
    "nias",
    "hbn_layered",
    "fluorite",
    "cdi2",
    "mos2_2h",
    "rutile",
    "pyrite",
    "corundum",
    "l1_2",
)
CONFIGS = ("before", "now")


def measure_one(system: str, config: str, model: str, compositions: list[str]) -> dict:
    """Relax one system's references cold in this process; the figures of one (system, configuration)."""
    warnings.filterwarnings("ignore")
    import torch
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Composition

    from gen2d.hull import MLIPPrototypesProvider, limit_anion_corrections
    from gen2d.relax import cached_calculator

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    calc = cached_calculator(model)
    options: dict = {"cache_dir": False, "shipped": False}
    if config == "before":
        options.update(binary_prototypes=list(V2_PROTOTYPES), stacked_layers=False, molecules=False)
    prov = MLIPPrototypesProvider(calc, **options)
    elements = system.split("-")
    wall, cpu = time.perf_counter(), time.process_time()
    entries = prov.entries(elements)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pd = PhaseDiagram([limit_anion_corrections(e) for e in entries])  # as E_hull builds its hull
    hull = {}
    for formula in compositions:
        comp = Composition(formula)
        if {e.symbol for e in comp.elements} <= set(elements):
            hull[formula] = {
                "e_hull_energy_eV_per_atom": round(float(pd.get_hull_energy_per_atom(comp)), 4),
                "decomposition": sorted(e.composition.reduced_formula for e in pd.get_decomposition(comp)),
            }
    return {
        "system": system,
        "config": config,
        "phases": len(entries),
        "subsystems": len(prov._subsystems(elements)),
        "cpu_seconds": round(cpu, 1),
        "wall_seconds": round(wall, 1),
        "peak_rss_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "hull_at": hull,
        "provider": {k: v for k, v in prov.describe().items() if k not in ("cache_dir", "shipped_cache")},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("systems", nargs="*", default=["V-S-Se"], help="chemical systems, e.g. V-S-Se Si-O")
    ap.add_argument("--model", default="chgnet")
    ap.add_argument("--composition", action="append", default=[], help="hull energy at this formula (repeatable)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"which of {CONFIGS} to run")
    ap.add_argument("--out", default=None, help="write the records as JSON here")
    ap.add_argument("--one", nargs=2, metavar=("SYSTEM", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.one[1], args.model, args.composition)))
        return 0
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown configurations {bad}; choose from {CONFIGS}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    records = []
    for system in args.systems:
        for config in configs:
            cmd = [sys.executable, __file__, "--one", system, config, "--model", args.model]
            for c in args.composition:
                cmd += ["--composition", c]
            run = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                print(f"{system} {config}: failed\n{run.stderr[-2000:]}", file=sys.stderr)
                return 1
            rec = json.loads(run.stdout.strip().splitlines()[-1])
            records.append(rec)
            hull = "; ".join(
                f"{f} {h['e_hull_energy_eV_per_atom']:+.3f} eV/atom ({' + '.join(h['decomposition'])})"
                for f, h in rec["hull_at"].items()
            )
            print(
                f"{system:10s} {config:7s} {rec['phases']:4d} phases in {rec['subsystems']:3d} subsystems  "
                f"CPU {rec['cpu_seconds']:7.1f} s  wall {rec['wall_seconds']:7.1f} s  peak {rec['peak_rss_GB']:.2f} GB"
                + (f"  hull: {hull}" if hull else ""),
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(records, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
