#!/usr/bin/env python
"""How often the offline hull calls known-stable monolayers stable, and how often it puts them below the hull.

Scores layers that DFT or experiment says are (near-)stable with ``ehull.<calculator>`` and the
``mlip-prototypes`` references, and reports, for four reference sets built from the same relaxed energies:

- ``all``: the prototype library, the molecules in a box and the stacked database layers (gen2d's default);
- ``self-out``: the same without the stacked bulk of the scored layer itself, from either database (a layer whose
  own parent is not in the set, as for a generated candidate; each record lists what it left out);
- ``prototypes-only``: the prototype library and the molecules, no stacked layers;
- ``without-molecules``: the default without the molecules (:mod:`gen2d.hull.molecules`), boxed or packed;
- ``boxed-molecules``: the default with the molecules in their boxes only, not packed as molecular solids.

Sets: ``mc2d`` (easily exfoliable layers of ICSD/COD parents) and ``2dmatpedia`` (2DMatPedia layers with
DFT E_hull ≤ 0.05 eV/atom). Goals of the hull: ≥ 90 % at E_hull ≤ 0.2 eV/atom, ≤ 5 % below −0.05.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_known_stable.py --set mc2d --n 60 \\
        --cache-dir /tmp/gen2d_refs --out /tmp/known_stable_mc2d.jsonl
    .venv/bin/python scripts/bench_known_stable.py --summarize /tmp/known_stable_mc2d.jsonl

``--resume`` keeps the records already in ``--out`` and scores only the layers they lack, so a stopped run goes
on, and a larger ``--n`` (same ``--seed``) extends a smaller one.

The summary repeats the figures for the layers that pass gen2d's strict 2D validity (the only ones a
campaign calls candidates): a "layer" of separate molecules (BBr₃, NF₃, CF₄) is not one.

What one prototype changes: ``--without-prototype vs4`` adds the variant ``without-vs4`` (the default set
minus that prototype's phases, i.e. the library before it was added), and ``--elements-within`` /
``--require-element`` restrict the layers to a chemical space:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_known_stable.py --set mc2d --n 1000 \
        --elements-within V,Nb,Ta,S,Se,Te --require-element V,Nb,Ta --without-prototype vs4 --out vs4.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections import Counter

import numpy as np

from gen2d.fileio import end_torn_line, read_jsonl
from gen2d.hull.molecules import BOXED_PREFIX, PACKED_PREFIX

#: prototype names of the molecule references, boxed (``molecule:``) or packed (``molecular-solid:``)
MOLECULAR = (BOXED_PREFIX, PACKED_PREFIX)

VARIANTS = ("all", "self-out", "prototypes-only", "without-molecules", "boxed-molecules")


def own_parents(layer, source_id: str, library) -> set[str]:
    """Prototype names (``stacked:<id>``) of the stacked references that are the scored layer itself: its own id,
    and every library layer of its chemical system that the matcher (``gen2d.metrics.structure_matcher``) fits to
    it, i.e. the same layer taken from the other database. ``self-out`` leaves all of them out."""
    from gen2d.metrics import structure_matcher

    names = {f"stacked:{source_id}"}
    if library is None:
        return names
    chemsys = "-".join(sorted({el.symbol for el in layer.composition.elements}))
    matcher = structure_matcher()
    for other in library.for_chemsys(chemsys):
        if other.source_id != source_id and matcher.fit(layer, other.structure):
            names.add(f"stacked:{other.source_id}")
    return names


def candidates(
    which: str,
    n: int,
    max_atoms: int,
    max_elements: int,
    seed: int,
    within: set[str] | None = None,
    require: set[str] | None = None,
) -> list[tuple[str, object]]:
    """(source id as the stacked library names it, oriented layer), a seeded sample of ``n``; only layers whose
    elements lie ``within`` and include one of ``require``, when given."""
    from gen2d.hull.stacked import StackedLayerLibrary

    lib = StackedLayerLibrary()
    if which == "mc2d":
        pool = [(x.source_id, x.structure) for x in lib.layers if x.source_id.startswith("mc2d:")]
    else:
        from ase.db import connect

        from gen2d.settings import get_settings
        from gen2d.structures import from_ase, orient_2d

        pool = []
        for row in connect(str(get_settings().data_dir / "2dmatpedia_filtered.db")).select():
            e = row.data.get("decomposition_energy")
            if e is None or not np.isfinite(e) or e > 0.05:
                continue
            pool.append((f"2dmatpedia:{row.data.get('material_id')}", orient_2d(from_ase(row.toatoms()))))
    pool = [(i, s) for i, s in pool if len(s) <= max_atoms and len(s.composition.elements) <= max_elements]
    if within or require:
        symbols = [{el.symbol for el in s.composition.elements} for _, s in pool]
        pool = [
            x
            for x, els in zip(pool, symbols, strict=True)
            if (not within or els <= within) and (not require or els & require)
        ]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))[:n]
    return [pool[i] for i in sorted(order)]


def summarize(records: list[dict]) -> str:
    lines = [f"layers: {len(records)}"]
    fails = Counter(r["failure"] for r in records if r.get("failure"))
    lines.append(f"failed: {sum(fails.values())} {dict(fails)}")
    subsets = [("", records)]
    if any("strict_2d" in r for r in records):
        # gen2d scores candidates that pass strict 2D validity; a layer of separate molecules does not
        subsets.append(("strict 2D valid only", [r for r in records if r.get("strict_2d", {}).get("ok")]))
    variants = list(dict.fromkeys(v for r in records for v in (*VARIANTS, *r.get("e_hull", {}))))
    for title, rs in subsets:
        if title:
            lines.append(f"{title} ({len(rs)} layers):")
        for v in variants:
            vals = np.array([r["e_hull"][v] for r in rs if r.get("e_hull", {}).get(v) is not None])
            if not len(vals):
                continue
            lines.append(
                f"{v:>16s}: n={len(vals)} E_hull <= 0.2: {np.mean(vals <= 0.2):.3f}  "
                f"below -0.05: {np.mean(vals < -0.05):.3f}  median {np.median(vals):+.3f} eV/atom"
            )
    return "\n".join(lines)


def strict_2d(layer) -> dict:
    """gen2d's strict 2D validity of a layer: ok and the reasons it fails."""
    from gen2d.metrics import StrictValidity

    res = StrictValidity()([layer])
    return {"ok": bool(res.value == 1.0), "reasons": sorted(res.details.get("reasons", {}))}


def annotate(path: str, which: str, max_atoms: int, max_elements: int) -> None:
    """Add ``strict_2d`` to the records of an existing JSONL file (no rescoring)."""
    layers = dict(candidates(which, 10**9, max_atoms, max_elements, 0))
    records = read_jsonl(path, strict=True)
    for r in records:
        if r["source_id"] in layers:
            r["strict_2d"] = strict_2d(layers[r["source_id"]])
    from gen2d.fileio import write_jsonl_atomic

    write_jsonl_atomic(path, records)


def main(argv: list[str] | None = None) -> int:
    from gen2d.dispersion import METHODS as DISPERSION_METHODS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", choices=["mc2d", "2dmatpedia"], default="mc2d")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calculator", default="chgnet")
    ap.add_argument("--max-atoms", type=int, default=12)
    ap.add_argument("--max-elements", type=int, default=3)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--elements-within", default=None, help="only layers made of these elements (comma-separated)")
    ap.add_argument("--require-element", default=None, help="only layers holding one of these (comma-separated)")
    ap.add_argument(
        "--without-prototype",
        action="append",
        default=[],
        help="also score against the default set without this prototype's phases (variant without-NAME)",
    )
    ap.add_argument(
        "--dispersion",
        choices=["none", *DISPERSION_METHODS],
        default="none",
        help="D3 on the layers and the references alike (gen2d.dispersion)",
    )
    ap.add_argument("--out", default="known_stable.jsonl")
    ap.add_argument("--summarize", default=None, help="only print the summary of an existing JSONL file")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep the records already in --out and score only the selected layers they lack (a stopped run goes "
        "on; a larger --n with the same --seed adds layers, since the sample is a prefix of one permutation)",
    )
    ap.add_argument(
        "--annotate", default=None, help="add strict 2D validity to an existing JSONL file of --set, then summarize"
    )
    args = ap.parse_args(argv)
    if args.annotate:
        annotate(args.annotate, args.set, args.max_atoms, args.max_elements)
        args.summarize = args.annotate
    if args.summarize:
        print(summarize(read_jsonl(args.summarize)))
        return 0

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from gen2d.hull import apply_mp2020, hull_analysis, mlip_entry
    from gen2d.scoring import get_scorer

    def symbols(text):
        return {x.strip() for x in text.split(",") if x.strip()} if text else None

    layers = candidates(
        args.set,
        args.n,
        args.max_atoms,
        args.max_elements,
        args.seed,
        symbols(args.elements_within),
        symbols(args.require_element),
    )
    print(f"{len(layers)} layers from {args.set} (seed {args.seed})", flush=True)
    scorer = get_scorer(
        f"ehull.{args.calculator}",
        provider_options={"cache_dir": args.cache_dir or f"/tmp/gen2d_known_stable_{int(time.time())}"},
        progress=False,
        dispersion=args.dispersion,
    )
    provider = scorer._reference_provider(scorer._calculator())
    records = []
    if args.resume and os.path.isfile(args.out):
        records = read_jsonl(args.out)
        end_torn_line(args.out)
        print(f"resuming: {len(records)} records in {args.out}", flush=True)
    done = {r["source_id"] for r in records}
    t_start = time.perf_counter()
    with open(args.out, "a" if args.resume else "w") as out:
        for k, (source_id, layer) in enumerate(layers):
            if source_id in done:
                continue
            t0 = time.perf_counter()
            [res] = scorer.score([layer])
            rec = {
                "source_id": source_id,
                "formula": layer.composition.reduced_formula,
                "natoms": len(layer),
                "failure": res.failure.reason if res.failure else None,
                "strict_2d": strict_2d(layer),
                "dispersion": args.dispersion,
                "e_hull": {},
                "seconds": None,
            }
            if res.ok:
                relaxed = res.relaxed()
                energy = res.extra["convergence"]["energy"]
                entry = apply_mp2020(mlip_entry(relaxed, energy, model=res.provenance.model))
                refs = provider.entries(sorted({el.symbol for el in relaxed.composition.elements}))
                rec["e_hull"]["all"] = res.value
                own = own_parents(layer, source_id, provider.stacked)
                rec["self_out_excluded"] = sorted(own)
                self_out = [r for r in refs if r.data.get("prototype") not in own]
                rec["e_hull"]["self-out"] = hull_analysis(entry, self_out, "self-out").e_hull
                library = [r for r in refs if not str(r.data.get("prototype", "")).startswith("stacked:")]
                rec["e_hull"]["prototypes-only"] = hull_analysis(entry, library, "prototypes-only").e_hull
                # the default set as it was before molecules in a box (gen2d.hull.molecules) joined it
                crystals = [r for r in refs if not str(r.data.get("prototype", "")).startswith(MOLECULAR)]
                rec["e_hull"]["without-molecules"] = hull_analysis(entry, crystals, "without-molecules").e_hull
                # the molecules in their boxes, as before they were also packed (molecules version 3)
                boxed = [r for r in refs if not str(r.data.get("prototype", "")).startswith(PACKED_PREFIX)]
                rec["e_hull"]["boxed-molecules"] = hull_analysis(entry, boxed, "boxed-molecules").e_hull
                for name in args.without_prototype:
                    rest = [r for r in refs if r.data.get("prototype") != name]
                    rec["e_hull"][f"without-{name}"] = hull_analysis(entry, rest, f"without-{name}").e_hull
                rec["decomposition"] = [d["prototype"] for d in res.extra.get("decomposition", [])]
            rec["seconds"] = round(time.perf_counter() - t0, 1)
            records.append(rec)
            out.write(json.dumps(rec) + "\n")
            out.flush()
            e = rec["e_hull"]
            print(
                f"[{k + 1}/{len(layers)}] {rec['formula']:>10s} "
                + " ".join(f"{v} {x:+.3f}" for v, x in e.items())
                + f" ({rec['seconds']} s) {rec['failure'] or ''}",
                flush=True,
            )
    print(f"\n{summarize(records)}\nwall {time.perf_counter() - t_start:.0f} s; records in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
