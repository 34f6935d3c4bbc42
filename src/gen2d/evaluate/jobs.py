"""The evaluation as jobflow jobs: one job per arm and seed, then one aggregation job.

:func:`gen2d.flows.evaluate_flow` wraps them in a flow."""

from __future__ import annotations

import json
from pathlib import Path

from jobflow import job

from gen2d.evaluate.aggregation import RATE_METRICS, aggregate, results_table, write_plots
from gen2d.evaluate.arms import Resources, run_arm_seed
from gen2d.evaluate.spec import EvaluateSpec


@job(data=["samples"])
def evaluate_arm(spec: dict, arm: str, seed: int) -> dict:
    """jobflow job: one arm for one seed (:func:`run_arm_seed`); the per-sample records go to the data store."""
    s = EvaluateSpec.model_validate(spec)
    arms, _ = s.all_arms()
    chosen = next(a for a in arms if a.name == arm)
    import torch

    torch.set_num_threads(s.threads)
    return run_arm_seed(Resources(s), chosen, seed)


@job
def evaluate_aggregate(spec: dict, results: list[dict]) -> dict:
    """jobflow job: the evaluation document, its plots and table, written to the spec's ``out`` folder."""
    s = EvaluateSpec.model_validate(spec)
    doc = aggregate(s, list(results))
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    doc["plots"] = write_plots(doc, out)
    (out / "evaluate.json").write_text(json.dumps(doc, indent=2, default=str))
    (out / "results.md").write_text(results_table(doc) + "\n")
    return {
        "out": str(out.resolve()),
        "arms": {k: {m: v["metrics"][m]["mean"] for m in RATE_METRICS} for k, v in doc["arms"].items()},
    }


def evaluate_jobs(spec: EvaluateSpec):
    """The jobflow jobs of an evaluation: (arm-seed jobs, aggregation job)."""
    arms, _ = spec.all_arms()
    d = spec.model_dump(mode="json")
    jobs = []
    for arm in arms:
        for seed in spec.seeds:
            j = evaluate_arm(d, arm.name, seed)
            j.name = f"evaluate {arm.name} seed {seed}"
            jobs.append(j)
    agg = evaluate_aggregate(d, [j.output for j in jobs])
    agg.name = "evaluate aggregate"
    return jobs, agg
