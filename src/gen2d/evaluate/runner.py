"""The whole evaluation in one process (``gen2d evaluate``), with a journal so a rerun reuses finished arm-seeds."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gen2d.evaluate.aggregation import aggregate, results_table, write_plots
from gen2d.evaluate.arms import Resources, run_arm_seed, seed_metrics
from gen2d.evaluate.spec import ArmSpec, EvaluateSpec, _arm_key
from gen2d.fileio import append_jsonl, read_jsonl

log = logging.getLogger(__name__)


def _run_key(spec: EvaluateSpec, arm: ArmSpec, seed: int, model: str | None = None) -> str:
    """What makes an arm-seed result reusable: everything in the spec that can change it, the seed, and
    the identity of the generator's model (``model``: its checkpoint sha256), so a retrained checkpoint
    at the same path is never mistaken for the one that made a stored result, and the E_hull correction
    scheme."""
    d = spec.model_dump(mode="json")
    for k in ("name", "seeds", "arms", "sweeps", "out"):
        d.pop(k, None)
    if d.get("require_any_of") is None:  # keyed only when set, so results stored before the field keep their keys
        d.pop("require_any_of", None)
    from gen2d.hull import CORRECTION_SCHEME  # E_hull numbers change with it, so stored results must too

    parts = [d, _arm_key(arm), arm.n_eval, seed, CORRECTION_SCHEME] + ([model] if model else [])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _model_identity(res: Resources, arm: ArmSpec) -> str | None:
    """The checkpoint sha256 of an arm's generator, when its provenance gives one (None otherwise)."""
    try:
        prov = res.generator(arm).provenance()
    except Exception:  # a generator without provenance, or one that cannot load: the run itself will say why
        return None
    return prov.get("checkpoint_sha256") if isinstance(prov, dict) else None


def run_evaluation(
    spec: EvaluateSpec, progress: Callable[[str], None] | None = None, write: bool = True
) -> dict[str, Any]:
    """Every arm (sweep points included) for every seed in this process, then the document and plots.

    Seeds run in the outer loop, so an interrupted run has whole seeds. With ``write``, each finished
    arm-seed is appended to ``out/runs.jsonl`` and a rerun of the same spec reuses it.
    """
    import torch

    torch.set_num_threads(spec.threads)
    say = progress or (lambda msg: log.info(msg))
    arms, alias = spec.all_arms()
    res = Resources(spec)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    out = Path(spec.out)
    done: dict[str, dict[str, Any]] = {}
    journal = out / "runs.jsonl"
    if write:
        out.mkdir(parents=True, exist_ok=True)
        for r in read_jsonl(journal):  # a line cut by a crash is skipped: that run is made again
            if isinstance(r, dict) and "run_key" in r:
                done[r["run_key"]] = r
    results = []
    for seed in spec.seeds:
        for arm in arms:
            key = _run_key(spec, arm, seed, _model_identity(res, arm))
            if key in done:
                r = dict(done[key], arm=arm.name)
                if r.get("samples") is not None:  # today's metrics from the stored samples (new ones included)
                    r["metrics"] = seed_metrics(r["samples"], r, spec.thresholds)
                say(f"{arm.name} seed {seed}: reused from {journal}")
                results.append(r)
                continue
            t0 = time.perf_counter()
            r = run_arm_seed(res, arm, seed)
            r["run_key"] = key
            r["wall_s"] = time.perf_counter() - t0
            m = r["metrics"]
            say(
                f"{arm.name} seed {seed}: generated {r['n_generated']} in {r['generation_cpu_s']:.1f} CPU-s, "
                f"evaluated {m['n_evaluated']}: strict {m['strict_2d_validity']}, stable {m['stable_rate']}, "
                f"hits {m['n_hits']} ({r['wall_s']:.0f} s wall, scoring {r['scoring_cpu_s']:.0f} CPU-s)"
            )
            if write:
                append_jsonl(journal, r, default=str)
            results.append(r)
    doc = aggregate(spec, results)
    doc["wall_s"] = time.perf_counter() - t_wall
    doc["cpu_s"] = time.process_time() - t_cpu
    if write:
        doc["plots"] = write_plots(doc, out)
        (out / "evaluate.json").write_text(json.dumps(doc, indent=2, default=str))
        (out / "results.md").write_text(results_table(doc) + "\n")
        doc["files"] = {
            "json": str((out / "evaluate.json").resolve()),
            "table": str((out / "results.md").resolve()),
            "journal": str(journal.resolve()),
        }
    return doc
