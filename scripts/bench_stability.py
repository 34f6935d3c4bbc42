"""Benchmark the stability scorer on 2DMatPedia monolayers: throughput, E_hull vs DFT, lattice drift.

Relaxes and scores monolayers from $GEN2D_DATA/2dmatpedia_filtered.db with ``ehull.<calculator>`` and
the ``mlip-prototypes`` references (with the stacked database layers of :mod:`gen2d.hull.stacked`, and
again without them: ``prototypes-only``), then re-uses each relaxed energy against the ``entries-file``
references (DFT elemental phases). Prints structures per minute, MAE and Spearman rho of E_hull
against the DFT ``decomposition_energy`` for each provider, and the fraction with |Δa|/a > 5 %.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_stability.py --n 100 \\
        --cache-dir /tmp/gen2d_bench_refs --out /tmp/bench_stability.jsonl > /tmp/bench_stability.txt 2>&1
    .venv/bin/python scripts/bench_stability.py --summarize /tmp/bench_stability.jsonl

Two runs (e.g. ``--calculator sevennet`` against the default) on the layers both scored, with a paired test:

    .venv/bin/python scripts/bench_stability.py --summarize chgnet.jsonl --compare sevennet.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np

from gen2d.fileio import end_torn_line, read_jsonl


def data_dir() -> Path:
    from gen2d.settings import get_settings

    return get_settings().data_dir


def select_rows(db_path: Path, n: int, max_atoms: int, max_elements: int) -> list:
    """Whole chemical systems, cheapest reference cost per structure first, until ``n`` structures.

    The mlip-prototypes provider relaxes ~6 polymorphs per new element and ~21 prototypes per new
    pair; picking systems that share elements keeps the benchmark within a CPU budget. The choice is
    deterministic and reported with the figures.
    """
    from ase.db import connect

    # 67 rows carry no decomposition_energy: nothing to compare against.
    rows = [r for r in connect(str(db_path)).select() if r.natoms <= max_atoms and "decomposition_energy" in r.data]
    by_system: dict[tuple, list] = defaultdict(list)
    for r in rows:
        els = tuple(sorted(set(r.symbols)))
        if len(els) <= max_elements:
            by_system[els].append(r)
    chosen: list = []
    elements: set[str] = set()
    pairs: set[tuple] = set()
    while len(chosen) < n and by_system:

        def cost(els):
            new_el = len(set(els) - elements)
            new_pairs = len(set(combinations(els, 2)) - pairs)
            return len(by_system[els]) / (1 + 6 * new_el + 21 * new_pairs)

        best = max(sorted(by_system), key=cost)
        chosen.extend(sorted(by_system.pop(best), key=lambda r: r.id))
        elements |= set(best)
        pairs |= set(combinations(best, 2))
    return chosen[:n]


def dft_label_suspect(row, elemental_dft: dict[str, float]) -> bool:
    """True when 2DMatPedia's decomposition_energy contradicts its own energy for an elemental layer.

    For elemental monolayers E_hull is simply E/atom - E_ref(element). In this subset the gaseous
    elements (N, F, Cl, ...) carry decomposition_energy 0 although their energies lie up to 5 eV/atom
    above N2/F2/Cl2, so those labels are wrong and are reported separately.
    """
    els = set(row.symbols)
    if len(els) != 1:
        return False
    el = els.pop()
    if el not in elemental_dft:
        return False
    return abs(row.data["decomposition_energy"] - (row.data["energy_per_atom"] - elemental_dft[el])) > 0.1


def _metrics(pts: list[tuple[float, float]], below: list | None = None) -> str:
    """MAE, Spearman ρ, mean signed error and stable agreement of (MLIP, DFT) E_hull pairs. ``below``, the layers'
    ``below_reference_hull`` flags in the same order, adds the agreement of the scorer's own stable call (E_hull
    ≤ 0.1 and not flagged) with DFT's E_hull ≤ 0.1."""
    from scipy.stats import spearmanr

    ml, dft = np.array(pts).T
    rho = spearmanr(ml, dft).statistic
    agree = np.mean((dft <= 0.1) == (ml <= 0.1))
    out = (
        f"n={len(pts)} MAE={np.mean(np.abs(ml - dft)):.3f} eV/atom Spearman rho={rho:.3f} "
        f"mean signed error {np.mean(ml - dft):+.3f} eV/atom; stable (<= 0.1 eV/atom) agreement {agree:.3f}"
    )
    if below is not None and len(below) == len(pts) and all(b is not None for b in below):
        called = (ml <= 0.1) & ~np.array(below, dtype=bool)
        out += f"; the scorer's stable call (also not below_reference_hull) agreement {np.mean(called == (dft <= 0.1)):.3f}"
    return out


def summarize(records: list[dict], wall: float | None = None, scoring_time: float | None = None) -> str:

    lines = []
    n = len(records)
    lines.append(f"structures: {n}")
    if wall:
        lines.append(
            f"throughput, cold reference cache (relax + references + hull): {60 * n / wall:.2f} structures/min "
            f"({wall:.0f} s wall)"
        )
    if scoring_time:
        lines.append(f"throughput, monolayer relaxation + hull only: {60 * n / scoring_time:.2f} structures/min")
    per_struct = [r["seconds_relax"] for r in records if r.get("seconds_relax") is not None]
    if per_struct:
        lines.append(
            f"monolayer relax time: median {np.median(per_struct):.2f} s, "
            f"{60 / np.median(per_struct):.1f} structures/min at the median"
        )
    fails = Counter(r["failure"] for r in records if r["failure"])
    lines.append(f"failed: {sum(fails.values())} {dict(fails)}")
    n_suspect = sum(1 for r in records if r.get("dft_label_suspect"))
    for provider in ("mlip-prototypes", "prototypes-only", "entries-file"):
        pts = [
            (r["e_hull"][provider], r["dft_e_hull"]) for r in records if r.get("e_hull", {}).get(provider) is not None
        ]
        clean = [
            (r["e_hull"][provider], r["dft_e_hull"])
            for r in records
            if r.get("e_hull", {}).get(provider) is not None and not r.get("dft_label_suspect")
        ]
        if len(pts) < 3:
            lines.append(f"E_hull[{provider}]: too few results ({len(pts)})")
            continue

        # the flag is the scorer's (mlip-prototypes) verdict; the other providers' hulls have none
        def flags(keep, provider=provider):
            if provider != "mlip-prototypes":
                return None
            return [r.get("below_reference_hull") for r in records if keep(r)]

        def has(r, provider=provider):
            return r.get("e_hull", {}).get(provider) is not None

        lines.append(f"E_hull[{provider}] vs DFT decomposition_energy, all: {_metrics(pts, flags(has))}")
        if n_suspect and len(clean) >= 3:
            below = flags(lambda r: has(r) and not r.get("dft_label_suspect"))
            lines.append(f"E_hull[{provider}] vs DFT, without {n_suspect} wrong DFT labels: {_metrics(clean, below)}")
    flagged = [r for r in records if r.get("below_reference_hull") is not None]
    if flagged:
        below = sum(r["below_reference_hull"] for r in flagged)
        lines.append(
            f"below_reference_hull (E_hull < -0.05 eV/atom, never called stable): {below}/{len(flagged)} "
            f"({below / len(flagged):.3f})"
        )
    drift = [r["lattice_drift"] for r in records if r.get("lattice_drift") is not None]
    if drift:
        drift = np.array(drift)
        lines.append(
            f"|Δa|/a > 5 % after relaxation: {np.mean(drift > 0.05):.3f} ({int(np.sum(drift > 0.05))}/{len(drift)}); "
            f"median |Δa|/a {np.median(drift):.4f}"
        )
    return "\n".join(lines)


def _n_elements(formula: str) -> int:
    from pymatgen.core import Composition

    return len(Composition(formula).elements)


def compare(a: list[dict], b: list[dict], names: tuple[str, str], provider: str = "mlip-prototypes") -> str:
    """Two runs on the layers both scored (same ids, plausible DFT labels): each run's figures on exactly those
    layers, for all of them, the elemental ones and the compounds, and a paired test of their absolute errors."""
    from scipy.stats import wilcoxon

    def scored(records):
        return {
            r["id"]: r
            for r in records
            if r.get("e_hull", {}).get(provider) is not None and not r.get("dft_label_suspect")
        }

    ra, rb = scored(a), scored(b)
    common = sorted(set(ra) & set(rb))
    lines = [
        f"paired on {len(common)} layers with plausible DFT labels scored by both "
        f"({len(ra) - len(common)} only by {names[0]}, {len(rb) - len(common)} only by {names[1]}); E_hull[{provider}]"
    ]
    groups = [
        ("all", common),
        ("elemental", [i for i in common if _n_elements(ra[i]["formula"]) == 1]),
        ("compounds", [i for i in common if _n_elements(ra[i]["formula"]) > 1]),
    ]
    for title, ids in groups:
        if len(ids) < 3:
            continue
        for name, recs in zip(names, (ra, rb), strict=True):
            pts = [(recs[i]["e_hull"][provider], recs[i]["dft_e_hull"]) for i in ids]
            below = [recs[i].get("below_reference_hull") for i in ids] if provider == "mlip-prototypes" else None
            lines.append(f"{title:>10s} {name:>12s}: {_metrics(pts, below)}")
    # 2DMatPedia's decomposition_energy is never negative (0 for 94 of its 1,157 rows): a layer below the bulk hull
    # reads 0, so a label of 0 means "0 or below" and a negative E_hull there need not be an error
    zero = {i for i in common if abs(ra[i]["dft_e_hull"]) < 1e-6}
    if zero:
        for name, recs in zip(names, (ra, rb), strict=True):
            err = np.array(
                [
                    max(recs[i]["e_hull"][provider], 0.0)
                    if i in zero
                    else recs[i]["e_hull"][provider] - recs[i]["dft_e_hull"]
                    for i in common
                ]
            )
            lines.append(
                f"{name}, the {len(zero)} labels of 0 read as <= 0: MAE={np.mean(np.abs(err)):.3f} eV/atom "
                f"mean signed error {np.mean(err):+.3f} eV/atom"
            )
    err_a = np.array([abs(ra[i]["e_hull"][provider] - ra[i]["dft_e_hull"]) for i in common])
    err_b = np.array([abs(rb[i]["e_hull"][provider] - rb[i]["dft_e_hull"]) for i in common])
    if len(common) >= 6 and np.any(err_a != err_b):
        p = wilcoxon(err_a, err_b).pvalue
        closer = int(np.sum(err_b < err_a))
        lines.append(
            f"{names[1]} closer to DFT than {names[0]} on {closer} of {len(common)} layers; "
            f"Wilcoxon signed-rank on |error|: p = {p:.2g}"
        )
    return "\n".join(lines)


def _all_symbols() -> set[str]:
    from pymatgen.core import Element

    return {el.symbol for el in Element}


def main(argv: list[str] | None = None) -> int:
    from gen2d.dispersion import METHODS as DISPERSION_METHODS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--calculator", default="chgnet")
    ap.add_argument(
        "--model",
        default=None,
        help="the calculator's model or checkpoint (a fine-tuned model's folder, e.g. a chgnet-her candidate before "
        "it ships); default the calculator's own",
    )
    ap.add_argument("--max-atoms", type=int, default=24)
    ap.add_argument("--max-elements", type=int, default=3)
    ap.add_argument("--cache-dir", default=None, help="reference cache (default: a new empty one, cold start)")
    ap.add_argument("--out", default=None, help="records (JSON lines); default bench_stability[-DISPERSION].jsonl")
    ap.add_argument("--summarize", default=None, help="only print the summary of an existing JSONL file")
    ap.add_argument(
        "--compare",
        default=None,
        metavar="OTHER",
        help="with --summarize: compare with another run's records on the layers both scored (e.g. another MLIP)",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the records already in --out and score only the selected layers they lack (a stopped run goes "
        "on; with another --n or --max-elements, the new selection's missing layers are added)",
    )
    ap.add_argument(
        "--no-stacked",
        action="store_true",
        help="references from the prototype library only (no stacked database layers, gen2d.hull.stacked)",
    )
    ap.add_argument(
        "--dispersion",
        choices=["none", *DISPERSION_METHODS],
        default="none",
        help="D3 on the layers and the references alike (gen2d.dispersion); the entries-file column is then skipped, "
        "since its DFT references have no D3",
    )
    args = ap.parse_args(argv)
    args.out = args.out or (
        "bench_stability.jsonl" if args.dispersion == "none" else f"bench_stability-{args.dispersion}.jsonl"
    )

    if args.summarize:
        records = read_jsonl(args.summarize)
        print(summarize(records))
        if args.compare:
            other = read_jsonl(args.compare)
            print(compare(records, other, (Path(args.summarize).stem, Path(args.compare).stem)))
        return 0

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from pymatgen.io.ase import AseAtomsAdaptor

    from gen2d.hull import EntriesFileProvider, HullError, apply_mp2020, hull_analysis, mlip_entry
    from gen2d.scoring import discover, get_scorer
    from gen2d.structures import orient_2d

    db_path = data_dir() / "2dmatpedia_filtered.db"
    rows = select_rows(db_path, args.n, args.max_atoms, args.max_elements)
    systems = Counter("-".join(sorted(set(r.symbols))) for r in rows)
    print(
        f"selected {len(rows)} monolayers from {db_path} in {len(systems)} chemical systems: {dict(systems)}",
        flush=True,
    )
    cache_dir = args.cache_dir or f"/tmp/gen2d_bench_refs_{int(time.time())}"
    # a calculator without its own ehull.<name> scorer (chgnet-her, a fine-tuned model) runs in the core
    # E_hull scorer under that calculator's name: ehull.chgnet with calculator=<name>
    named = f"ehull.{args.calculator}"
    own = any(p.name == named for p in discover("scorer"))
    scorer = get_scorer(
        named if own else "ehull.chgnet",
        **({} if own else {"calculator": args.calculator}),
        **({"model": args.model} if args.model else {}),
        provider="mlip-prototypes",
        provider_options={"cache_dir": cache_dir, "stacked_layers": not args.no_stacked},
        progress=False,
        dispersion=args.dispersion,
    )
    dft_refs = EntriesFileProvider(data_dir() / "mp_elemental_reference_entries.json.gz")
    elemental_dft = {e.composition.elements[0].symbol: e.energy_per_atom for e in dft_refs.entries(_all_symbols())}
    records = []
    if args.resume and os.path.isfile(args.out):
        records = read_jsonl(args.out)
        end_torn_line(args.out)
        print(f"resuming: {len(records)} records in {args.out}", flush=True)
    done = {r["id"] for r in records}
    t_start = time.perf_counter()
    scoring_time = 0.0
    with open(args.out, "a" if args.resume else "w") as out:
        for i, row in enumerate(rows):
            if row.id in done:
                continue
            structure = AseAtomsAdaptor.get_structure(row.toatoms())
            # Warm the reference cache first, so the per-structure time is the monolayer alone.
            els = sorted({el.symbol for el in structure.composition.elements})
            t0 = time.perf_counter()
            try:
                scorer._reference_provider(scorer._calculator()).entries(els)
            except Exception as exc:
                print(f"references for {els} failed: {exc}", flush=True)
            t_ref = time.perf_counter() - t0
            t0 = time.perf_counter()
            [res] = scorer.score([structure])
            dt = time.perf_counter() - t0
            scoring_time += dt
            rec = {
                "id": row.id,
                "material_id": row.data.get("material_id"),
                "formula": row.formula,
                "natoms": row.natoms,
                "dft_e_hull": float(row.data["decomposition_energy"]),
                "dispersion": args.dispersion,
                "discovery_process": row.data.get("discovery_process"),
                "seconds_relax": dt,
                "dft_label_suspect": dft_label_suspect(row, elemental_dft),
                "seconds_references": t_ref,
                "failure": res.failure.reason if res.failure else None,
                "e_hull": {},
                "steps": res.extra.get("convergence", {}).get("steps"),
            }
            if res.ok:
                rec["e_hull"]["mlip-prototypes"] = res.value
                rec["e_form"] = res.extra["e_form"]
            relaxed = res.relaxed()
            if relaxed is not None:
                start = orient_2d(structure)
                da = abs(relaxed.lattice.a - start.lattice.a) / start.lattice.a
                db = abs(relaxed.lattice.b - start.lattice.b) / start.lattice.b
                rec["lattice_drift"] = float(max(da, db))
                energy = res.extra.get("convergence", {}).get("energy")
                if res.ok and energy is not None:
                    try:
                        entry = apply_mp2020(mlip_entry(relaxed, energy, model=res.provenance.model))
                        if args.dispersion == "none":  # DFT references without D3: only against a bare MLIP
                            rec["e_hull"]["entries-file"] = hull_analysis(
                                entry, dft_refs.entries(els), "entries-file"
                            ).e_hull
                        if not args.no_stacked:  # the same layer against the prototype library alone
                            refs = scorer._reference_provider(scorer._calculator()).entries(els)
                            library = [r for r in refs if not str(r.data.get("prototype", "")).startswith("stacked:")]
                            rec["e_hull"]["prototypes-only"] = hull_analysis(entry, library, "prototypes-only").e_hull
                        if res.ok:
                            rec["below_reference_hull"] = "below_reference_hull" in (res.extra.get("flags") or [])
                    except HullError as exc:
                        rec["entries_file_failure"] = exc.reason
            records.append(rec)
            out.write(json.dumps(rec) + "\n")
            out.flush()
            print(
                f"[{i + 1}/{len(rows)}] {row.formula:>12s} dft {rec['dft_e_hull']:.3f} "
                f"mlip-prototypes {rec['e_hull'].get('mlip-prototypes', float('nan')):.3f} "
                f"entries-file {rec['e_hull'].get('entries-file', float('nan')):.3f} "
                f"({dt:.1f} s + refs {t_ref:.1f} s) {rec['failure'] or ''}",
                flush=True,
            )
    wall = time.perf_counter() - t_start
    print("\n" + summarize(records, wall=wall, scoring_time=scoring_time), flush=True)
    print(f"model: {scorer._calculator().gen2d_model}; references cached in {cache_dir}; records in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
