#!/usr/bin/env python
"""Cold cost of the self-consistent MLIP hull references (mlip-prototypes), serial vs lockstep-batched.

For each element pair it relaxes, with no cache (``cache_dir=False``), the elemental polymorphs of
each element, the binary prototypes of the pair, and all of them together (``entries([a, b])``, what
a scorer asks for), once serially (one MLIP call per structure and FIRE step) and once batched (one
MLIP call per FIRE step for all running structures). It prints wall and CPU seconds, the number of
MLIP calls and of structure evaluations, and the largest energy difference between the two paths.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_references.py Mo-S Fe-Te

Measure serial and batched with the same thread count (OMP_NUM_THREADS=1 here) for a fair figure.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _counting(calc):
    """Count the calculator's own (serial) MLIP calls."""
    counter = {"calls": 0}
    original = calc.calculate

    def calculate(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)

    calc.calculate = calculate
    return counter


def _measure(label, fn, calc_counter):
    from gen2d.relax import LOCKSTEP_STATS

    before = dict(LOCKSTEP_STATS)
    serial_before = calc_counter["calls"]
    wall, cpu = time.perf_counter(), time.process_time()
    entries = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    lock = {k: LOCKSTEP_STATS[k] - before[k] for k in before}
    serial_calls = calc_counter["calls"] - serial_before
    return {
        "label": label,
        "wall": wall,
        "cpu": cpu,
        "entries": entries,
        "mlip_calls": serial_calls + lock["batch_calls"],
        "evaluations": serial_calls + lock["structure_evaluations"],
        "fallback": lock["fallback_evaluations"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="*", default=["Mo-S", "Fe-Te"], help="element pairs, e.g. Mo-S")
    ap.add_argument("--model", default="chgnet", help="calculator backend (default chgnet)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--skip-serial", action="store_true", help="batched only (serial takes ~1 min per pair)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from gen2d.hull import MLIPPrototypesProvider
    from gen2d.relax import batch_evaluator, cached_calculator

    calc = cached_calculator(args.model)
    has_batch = batch_evaluator(calc) is not None
    counter = _counting(calc)
    print(
        f"model {getattr(calc, 'gen2d_model', args.model)}; batched evaluator: {has_batch}; "
        f"torch threads {torch.get_num_threads()}; max_batch {args.max_batch}"
    )
    modes = ["batched"] if args.skip_serial else ["serial", "batched"]
    header = f"{'what':22s} {'mode':8s} {'wall s':>8s} {'cpu s':>8s} {'MLIP calls':>10s} {'evals':>7s} {'phases':>6s}"
    rows, totals = [], {}
    for pair in args.pairs:
        a, b = sorted(pair.split("-"))
        energies = {}
        for mode in modes:

            def provider():
                return MLIPPrototypesProvider(
                    calc, cache_dir=False, batched=(mode == "batched"), max_batch=args.max_batch
                )

            for label, fn in (
                (f"element {a}", lambda: provider().element_entries(a)),
                (f"element {b}", lambda: provider().element_entries(b)),
                (f"pair {a}-{b}", lambda: provider().binary_entries(a, b)),
                (f"all of {a}-{b}", lambda: provider().entries([a, b])),
            ):
                m = _measure(label, fn, counter)
                m["mode"] = mode
                rows.append(m)
                print(
                    f"{m['label']:22s} {mode:8s} {m['wall']:8.1f} {m['cpu']:8.1f} {m['mlip_calls']:10d} "
                    f"{m['evaluations']:7d} {len(m['entries']):6d}"
                    + (f"  fallback {m['fallback']}" if m["fallback"] else ""),
                    flush=True,
                )
                totals.setdefault((label.split()[0], mode), []).append(m["wall"])
                if label.startswith("all"):
                    # entry ids repeat (both decorations of a prototype can share a formula): keep order
                    energies[mode] = [(e.entry_id, e.energy_per_atom) for e in m["entries"]]
        if len(energies) == 2:
            ser, bat = energies["serial"], energies["batched"]
            if [k for k, _ in ser] != [k for k, _ in bat]:
                print(f"  {a}-{b}: the two paths kept different phases: {len(ser)} serial, {len(bat)} batched")
            else:
                diffs = sorted(((abs(x - y), k) for (k, x), (_, y) in zip(ser, bat)), reverse=True)
                print(
                    f"  {a}-{b}: {len(ser)} phases, max |dE| serial vs batched {1e3 * diffs[0][0]:.2f} meV/atom "
                    f"({diffs[0][1]}); {sum(d > 1e-4 for d, _ in diffs)} phases differ by > 0.1 meV/atom"
                )
    print()
    print(header)
    for m in rows:
        print(
            f"{m['label']:22s} {m['mode']:8s} {m['wall']:8.1f} {m['cpu']:8.1f} {m['mlip_calls']:10d} "
            f"{m['evaluations']:7d} {len(m['entries']):6d}"
        )
    print()
    for (kind, mode), walls in sorted(totals.items()):
        print(f"mean cold wall per {kind:8s} {mode:8s}: {sum(walls) / len(walls):6.1f} s over {len(walls)}")


if __name__ == "__main__":
    main()
