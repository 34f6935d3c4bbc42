"""Recompute an evaluation's statistics from its stored per-sample records, without generating or scoring again.

Every figure of an arm and seed (``gen2d.evaluate.arms.seed_metrics``) is a function of its scored samples, which
``evaluate.json`` keeps. When the statistics change (a new figure, another interval) the committed run is
re-aggregated in place: its samples, CPU times and provenance stay as they were measured, under the E_hull scheme
and models of that run; only the metrics, the per-arm summaries, the comparisons, ``results.md`` and the plots
are written again.

    .venv/bin/python scripts/reaggregate_evaluation.py evaluation-runs/powered
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from gen2d.evaluate.aggregation import aggregate, results_table, write_plots
    from gen2d.evaluate.arms import seed_metrics
    from gen2d.evaluate.spec import EvaluateSpec

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path, help="an evaluation folder with evaluate.json")
    args = ap.parse_args(argv)
    path = args.out_dir / "evaluate.json"
    if not path.is_file():
        raise SystemExit(f"{path}: no evaluate.json there")
    old = json.loads(path.read_text())
    spec = EvaluateSpec.model_validate(old["spec"])
    runs = []
    for r in old["runs"]:
        if r.get("samples") is None:
            raise SystemExit(f"{r['arm']} seed {r['seed']}: no stored samples; it cannot be re-aggregated")
        runs.append({**r, "metrics": seed_metrics(r["samples"], r, spec.thresholds)})
    doc = aggregate(spec, runs)
    # what was measured stays as measured: when, where and at what cost the run itself was made
    for key in ("created", "machine", "wall_s", "cpu_s", "command", "provenance"):
        if key in old:
            doc[key] = old[key]
    doc["reaggregated"] = {
        "date": datetime.now(UTC).isoformat(),
        "command": "python scripts/reaggregate_evaluation.py " + shlex.quote(str(args.out_dir)),
        "note": "statistics recomputed from the stored samples; nothing generated or scored again",
    }
    doc["plots"] = write_plots(doc, args.out_dir)
    path.write_text(json.dumps(doc, indent=2, default=str))
    (args.out_dir / "results.md").write_text(results_table(doc) + "\n")
    for name, arm in doc["arms"].items():
        pooled = arm["metrics"]["distinct_confirmed_hits_per_cpu_hour"].get("pooled") or {}
        print(
            f"{name}: confirmed {arm['confirmed_total']}, distinct {arm['distinct_confirmed_total']}, "
            f"distinct per CPU-h {pooled.get('rate')} [{pooled.get('ci95_low')}, {pooled.get('ci95_high')}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
