#!/usr/bin/env python
"""Memory of one batched CHGNet evaluation (energy, forces, stress) against the size of its graphs.

Each point runs in a fresh process and reads its peak RSS (``ru_maxrss``) before and after one call of the
batched evaluator on ``n`` copies of a 32-atom fcc Cu cell, at the equilibrium and at a compressed lattice
constant (more bonds and angles per atom). A least-squares fit of the peak increase to the batch's three-body
angles and bonds gives the bytes per angle and per bond that ``gen2d_chgnet.BYTES_PER_ANGLE`` and
``BYTES_PER_BOND`` hold, and that ``mlip_batch_memory_gb`` (``GEN2D_MLIP_BATCH_MEMORY_GB``) budgets against.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_mlip_batch_memory.py [--json]

About a minute on one core. Figures are per process: other jobs do not change them, but they slow the run.

``--space`` instead evaluates the starting structures of every ``mlip-prototypes`` reference phase of a chemical
space (elements and pairs, no stacked layers) once, in batches of 32 as a lockstep relaxation's first step does,
with and without the start-density floor (``MIN_VOLUME_PER_ATOM``) and the memory budget, and prints each
configuration's peak RSS and CPU time:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_mlip_batch_memory.py --space Ba,Ca,O,F,Ho,Se,H

Without either (``--all`` adds it) the Ba-Ca-O-F-Ho-Se-H space needs more than 15 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

POINTS = [("cu", 3.6, 1), ("cu", 3.6, 4), ("cu", 3.6, 16), ("cu", 3.0, 4), ("cu", 3.0, 8)]


def one(a: float, n: int) -> dict:
    """One point, in this process: peak RSS increase of one batched call on ``n`` Cu cells of lattice ``a``."""
    import resource

    from ase.build import bulk
    from gen2d_chgnet import BatchEvaluator
    from pymatgen.io.ase import AseAtomsAdaptor

    from gen2d.relax import cached_calculator

    calc = cached_calculator("chgnet", device="cpu")
    cells = [bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 2, 2)) for _ in range(n)]
    graph = calc.model.graph_converter(AseAtomsAdaptor.get_structure(cells[0]))
    evaluate = BatchEvaluator(calc, memory_budget_gb=1e6)  # one forward: no chunking
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    evaluate(cells)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "a_A": a,
        "n_structures": n,
        "atoms": 32 * n,
        "bonds": int(graph.atom_graph.shape[0]) * n,
        "angles": int(graph.bond_graph.shape[0]) * n,
        "peak_increase_bytes": after - before,
        "forwards": evaluate.n_forwards,
    }


def space(elements: list[str], floor: bool, budget_gb: float | None) -> dict:
    """One ``--space`` configuration, in this process."""
    import resource
    import time

    from gen2d_chgnet import BatchEvaluator, graph_bytes
    from pymatgen.io.ase import AseAtomsAdaptor

    from gen2d.hull.mlip_prototypes import STACKED_PREFIX, MLIPPrototypesProvider
    from gen2d.relax import cached_calculator

    calc = cached_calculator("chgnet", device="cpu")
    prov = MLIPPrototypesProvider(calc, cache_dir=False, stacked_layers=False, shipped=False)
    if not floor:
        import gen2d.hull.mlip_prototypes as protos

        protos.MIN_VOLUME_PER_ATOM = 0.0
    jobs = [
        job
        for sub in prov._subsystems(elements)
        if not sub.startswith(STACKED_PREFIX)
        for job in prov._subsystem_jobs(sub)
    ]
    sizes = [graph_bytes(calc.model.graph_converter(s)) for _, s in jobs]
    atoms = [AseAtomsAdaptor.get_atoms(s) for _, s in jobs]
    evaluate = BatchEvaluator(calc, memory_budget_gb=budget_gb if budget_gb is not None else 1e6)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.process_time()
    for i in range(0, len(atoms), 32):
        evaluate(atoms[i : i + 32])
    return {
        "floor": floor,
        "budget_gb": budget_gb,
        "phases": len(atoms),
        "largest_phase_estimate_bytes": max(sizes),
        "largest_batch_estimate_bytes": max(sum(sizes[i : i + 32]) for i in range(0, len(sizes), 32)),
        "forwards": evaluate.n_forwards,
        "cpu_seconds": round(time.process_time() - t0, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_before_bytes": before,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the points and the fit as JSON")
    parser.add_argument("--one", nargs=2, type=float, metavar=("A", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--space", help="comma-separated elements: reference-phase starts instead of Cu cells")
    parser.add_argument("--all", action="store_true", help="with --space, also run without floor and budget")
    parser.add_argument("--config", nargs=2, metavar=("FLOOR", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return 0
    if args.space and args.config:
        budget = None if args.config[1] == "none" else float(args.config[1])
        print(json.dumps(space(args.space.split(","), args.config[0] == "1", budget)))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if args.space:
        from gen2d.settings import get_settings

        default = str(get_settings().mlip_batch_memory_gb)
        configs = [("0", default), ("1", "none"), ("1", default)]
        rows = []
        for floor, budget in ([("0", "none")] if args.all else []) + configs:
            out = subprocess.run(
                [sys.executable, __file__, "--space", args.space, "--config", floor, budget],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode != 0:  # an out-of-memory kill, most likely
                rows.append({"floor": floor == "1", "budget_gb": budget, "failed": f"exit {out.returncode}"})
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print(
            f"{'floor':>5} {'budget GB':>9} {'phases':>6} {'largest phase GB':>16} {'forwards':>8} {'CPU s':>6} {'peak GB':>7}"
        )
        for r in rows:
            if "failed" in r:
                print(f"{str(r['floor']):>5} {r['budget_gb']:>9} failed ({r['failed']})")
                continue
            print(
                f"{str(r['floor']):>5} {str(r['budget_gb']):>9} {r['phases']:6d} "
                f"{r['largest_phase_estimate_bytes'] / 1e9:16.2f} {r['forwards']:8d} {r['cpu_seconds']:6.1f} "
                f"{r['peak_rss_bytes'] / 1e9:7.2f}"
            )
        return 0
    import numpy as np

    points = []
    for _, a, n in POINTS:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(a), str(n)], capture_output=True, text=True, env=env, check=True
        )
        points.append(json.loads(out.stdout.strip().splitlines()[-1]))
    design = np.array([[p["angles"], p["bonds"]] for p in points], dtype=float)
    target = np.array([p["peak_increase_bytes"] for p in points], dtype=float)
    (per_angle, per_bond), *_ = np.linalg.lstsq(design, target, rcond=None)
    predicted = design @ np.array([per_angle, per_bond])
    fit = {
        "bytes_per_angle": round(float(per_angle)),
        "bytes_per_bond": round(float(per_bond)),
        "max_relative_error": float(np.max(np.abs(predicted - target) / target)),
    }
    if args.json:
        print(json.dumps({"points": points, "fit": fit}, indent=1))
        return 0
    print(f"{'a (Å)':>6} {'cells':>5} {'atoms':>6} {'bonds':>7} {'angles':>7} {'peak +GB':>9} {'fit GB':>7}")
    for p, pred in zip(points, predicted, strict=True):
        print(
            f"{p['a_A']:6.2f} {p['n_structures']:5d} {p['atoms']:6d} {p['bonds']:7d} {p['angles']:7d} "
            f"{p['peak_increase_bytes'] / 1e9:9.2f} {pred / 1e9:7.2f}"
        )
    print(
        f"fit: {fit['bytes_per_angle']} bytes per angle + {fit['bytes_per_bond']} per bond "
        f"(largest relative error {fit['max_relative_error']:.0%})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
