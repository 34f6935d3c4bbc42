#!/usr/bin/env python
"""The ΔG_H surrogate (``dgh.dimenet``) against gen2d's own DFT reference rows.

The surrogate learns MLIP labels; no DFT value enters its training. For every valid row of the DFT reference set
(``scripts/build_dgh_dft_reference.py``), the row's monolayer is rebuilt from its recipe and scored by the
surrogate: its ensemble mean and spread beside the DFT ΔG_H, then MAE, bias, Spearman ρ (three rows or more) and
hit agreement (|ΔG_H| ≤ 0.2 eV) from :func:`gen2d.finetune.agreement`.

Usage (seconds):
    .venv/bin/python scripts/bench_surrogate_dft.py
    .venv/bin/python scripts/bench_surrogate_dft.py --rows dft-runs/fast/rows.jsonl -o checkpoint=PATH --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv: list[str] | None = None) -> int:
    from build_dgh_dft_reference import DEFAULT_OUT, build_structure, read_rows

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=Path, default=DEFAULT_OUT, help="DFT reference rows (JSON lines)")
    ap.add_argument("-o", "--option", action="append", default=[], help="dgh.dimenet option key=value (JSON value)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    from gen2d.finetune import agreement
    from gen2d.scoring import get_scorer

    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    scorer = get_scorer("dgh.dimenet", **options)
    out, provenance = [], None
    for name, row in sorted(read_rows(args.rows).items()):
        if not row.get("ok") or row.get("dg_h_eV") is None:
            continue
        result = scorer.score([build_structure(row["built_from"])])[0]
        provenance = provenance or result.provenance.model_dump(mode="json")
        out.append(
            {
                "material": name,
                "dft_dg_h_eV": row["dg_h_eV"],
                "surrogate_dg_h_eV": result.value,
                "surrogate_std_eV": (result.extra or {}).get("ensemble_std_eV"),
                "failure": None if result.ok else result.failure,
            }
        )
    scored = [r for r in out if r["surrogate_dg_h_eV"] is not None]
    stats = agreement(
        [r["surrogate_dg_h_eV"] for r in scored], [r["dft_dg_h_eV"] for r in scored], dg_correction=0.0, window=0.2
    )
    report = {
        "rows": out,
        "stats": stats,
        "unit": "eV",
        "surrogate": provenance,
        "reference": str(args.rows),
    }
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    print("| material | DFT ΔG_H (eV) | surrogate (eV) | ensemble spread (eV) |")
    print("|---|---|---|---|")
    for r in out:
        pred = "failed: " + str(r["failure"]) if r["surrogate_dg_h_eV"] is None else f"{r['surrogate_dg_h_eV']:+.2f}"
        spread = r["surrogate_std_eV"]
        print(f"| {r['material']} | {r['dft_dg_h_eV']:+.2f} | {pred} | {'—' if spread is None else f'{spread:.2f}'} |")
    if scored:
        rho = stats["spearman_rho"]
        print(
            f"\nn={stats['n']}  MAE {stats['mae_eV']:.2f} eV  bias {stats['bias_eV']:+.2f} eV  "
            f"Spearman {'—' if rho is None else f'{rho:.2f}'}  hits: DFT {stats['hits_ref']}, both {stats['hits_both']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
