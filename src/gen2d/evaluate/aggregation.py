"""Arm-seed results to the evaluation document: metric definitions, means with t-intervals, comparisons,
plots and the results table."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gen2d.evaluate.spec import EvaluateSpec
from gen2d.metrics import (
    ConfirmationRate,
    ConfirmedHitsPerCPUHour,
    HitRate,
    HitsPerCPUHour,
    Novelty,
    SMACTValidity,
    StableRate,
    StrictValidity,
    SUNRate,
    Uniqueness,
    mean_ci,
    poisson_rate_ci,
    poisson_rate_ratio,
)
from gen2d.scoring import RankThresholds


def metric_definitions(t: RankThresholds, confirmer: str = "dgh.mlip") -> dict[str, dict[str, str]]:
    defs = {}
    for m in (
        StrictValidity(),
        SMACTValidity(),
        StableRate(t.e_hull_max),
        SUNRate(),
        HitRate(t),
        ConfirmationRate(t.dg_h_window, confirmer),
        HitsPerCPUHour(),
        ConfirmedHitsPerCPUHour(),
    ):
        defs[m.name] = {"unit": m.unit, "description": m.description}
    defs["new_confirmed_hits_per_cpu_hour"] = {
        "unit": "hits / CPU-hour",
        "description": "As confirmed_hits_per_cpu_hour, counting only the confirmed hits that are novel (not a "
        "training layer) and unique within the arm and seed: new materials per CPU-hour.",
    }
    defs["distinct_confirmed_hits_per_cpu_hour"] = {
        "unit": "hits / CPU-hour",
        "description": "As confirmed_hits_per_cpu_hour, counting a structure that comes out more than once "
        "in the arm and seed as one hit (confirmed and unique); training layers still count.",
    }
    defs["new_fraction_of_confirmed"] = {
        "unit": "fraction",
        "description": "Of the MLIP-confirmed hits, the fraction that are novel and unique (None without a "
        "confirmed hit).",
    }
    defs["uniqueness"] = {"unit": "fraction", "description": Uniqueness.description + " Within one arm and seed."}
    defs["novelty"] = {
        "unit": "fraction",
        "description": Novelty.description + " The training set is the "
        "generator's (spec training_set: sources and filters).",
    }
    defs["confirmed_hit_rate"] = {
        "unit": "fraction",
        "description": "Fraction of all samples that are HER hits "
        f"AND confirmed by {confirmer} (see mlip_confirmation_rate).",
    }
    defs["e_hull_median"] = {
        "unit": "eV/atom",
        "description": "Median E_hull of the samples whose E_hull was "
        "computed (strictly valid, within the scorer's element limit); how far from stable "
        "the arm lands. None when none was computed.",
    }
    defs["e_hull_scored_fraction"] = {
        "unit": "fraction",
        "description": "Fraction of all samples with a computed "
        "E_hull (the rest: not strictly valid, too many elements, or a failed score).",
    }
    defs["n_generated"] = {
        "unit": "samples",
        "description": "Samples the arm produced within its generation budget (a filter arm: before filtering).",
    }
    defs["n_off_kind"] = {
        "unit": "samples",
        "description": "Samples not of the kind the spec's require_any_of asks for: never scored, their generation "
        "CPU still counted (a generator arm's per-CPU-hour rates count only the outputs of that kind).",
    }
    defs["n_evaluated"] = {
        "unit": "samples",
        "description": "Samples that got the full scoring (a uniform "
        "subsample of n_generated, or a filter arm's kept top).",
    }
    defs["generation_cpu_s"] = {
        "unit": "CPU-s",
        "description": "CPU seconds spent generating (and, for a "
        "filter arm, ranking), time.process_time of the generating process; model "
        "loading and one warm-up call are excluded.",
    }
    defs["samples_per_cpu_s"] = {"unit": "samples / CPU-s", "description": "n_generated / generation_cpu_s."}
    defs["scoring_cpu_s"] = {
        "unit": "CPU-s",
        "description": "CPU seconds of the evaluation scorers on the "
        "evaluated samples; includes any cold MLIP reference relaxations, which are cached "
        "and therefore charged to whichever arm needed a chemical system first.",
    }
    return defs


RATE_METRICS = [
    "strict_2d_validity",
    "smact_validity",
    "uniqueness",
    "novelty",
    "stable_rate",
    "sun_rate",
    "her_hit_rate",
    "confirmed_hit_rate",
    "mlip_confirmation_rate",
    "hits_per_cpu_hour",
    "confirmed_hits_per_cpu_hour",
    "new_confirmed_hits_per_cpu_hour",
    "distinct_confirmed_hits_per_cpu_hour",
    "new_fraction_of_confirmed",
]

#: per-CPU-hour counts (metric -> the seed's count): each also gets an exact Poisson interval on its pooled count
#: over the seeds' pooled CPU-hours, which a t-interval over three seeds of 0-6 hits cannot give
POOLED_COUNTS = {
    "confirmed_hits_per_cpu_hour": "n_confirmed",
    "distinct_confirmed_hits_per_cpu_hour": "n_distinct_confirmed",
    "new_confirmed_hits_per_cpu_hour": "n_new_confirmed",
}
INFO_METRICS = [
    "e_hull_median",
    "e_hull_scored_fraction",
    "n_generated",
    "n_evaluated",
    "generation_cpu_s",
    "samples_per_cpu_s",
    "scoring_cpu_s",
]


def equal_budget_definition() -> str:
    """The package docstring's "Equal budget, precisely" paragraph on one line: the JSON carries the same words."""
    import gen2d.evaluate as package

    return package.__doc__.split("Equal budget, precisely: ")[1].split("\n\n")[0].replace("\n", " ")


def aggregate(spec: EvaluateSpec, results: list[dict[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """The evaluation document: per arm, every metric with mean, CI, per-seed values, unit and description."""
    arms, alias = spec.all_arms()
    defs = metric_definitions(spec.thresholds, spec.scorers.confirm.name if spec.scorers.confirm else "none")
    by_arm: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    out_arms: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    for arm in arms:
        rs = sorted(by_arm.get(arm.name, []), key=lambda r: r["seed"])
        metrics = {}
        for name in RATE_METRICS + INFO_METRICS:
            per_seed = [r["metrics"].get(name) for r in rs]
            ci = mean_ci(per_seed, confidence)
            metrics[name] = {
                "mean": ci["mean"],
                "ci95_half_width": ci["half_width"],
                "ci95_low": ci["low"],
                "ci95_high": ci["high"],
                "n_seeds": ci["n"],
                "per_seed": per_seed,
                **defs[name],
            }
        hits = sum(r["metrics"]["n_hits"] for r in rs)
        conf = sum(r["metrics"]["n_confirmed"] for r in rs)
        new = sum(r["metrics"].get("n_new_confirmed", 0) for r in rs)
        metrics["mlip_confirmation_rate"]["pooled"] = conf / hits if hits else None
        metrics["mlip_confirmation_rate"]["pooled_hits"] = hits
        metrics["new_fraction_of_confirmed"]["pooled"] = new / conf if conf else None
        metrics["new_fraction_of_confirmed"]["pooled_confirmed"] = conf
        exposures = [r["metrics"].get("scored_cpu_hours") for r in rs]
        if rs and all(e is not None for e in exposures):
            for name, count_key in POOLED_COUNTS.items():
                pooled = poisson_rate_ci(sum(r["metrics"].get(count_key, 0) for r in rs), sum(exposures), confidence)
                metrics[name]["pooled"] = {
                    "rate": pooled["rate"],
                    "ci95_low": pooled["low"],
                    "ci95_high": pooled["high"],
                    "count": pooled["count"],
                    "cpu_hours": pooled["exposure"],
                    "method": pooled["method"] + " over the pooled CPU-hours of the scored outputs",
                }
        out_arms[arm.name] = {
            "group": arm.group,
            "kind": arm.kind,
            "generator": arm.generator,
            "params": arm.params,
            "description": arm.description,
            "seeds": [r["seed"] for r in rs],
            "n_evaluated_total": sum(r["metrics"]["n_evaluated"] for r in rs),
            "n_generated_total": sum(r["n_generated"] for r in rs),
            "n_off_kind_total": sum(r.get("n_off_kind") or 0 for r in rs) if spec.require_any_of else None,
            "hits_total": hits,
            "confirmed_total": conf,
            "new_confirmed_total": new,
            "distinct_confirmed_total": sum(r["metrics"].get("n_distinct_confirmed", 0) for r in rs),
            "budget": [
                {
                    "seed": r["seed"],
                    "budget_cpu_s": r["budget_cpu_s"],
                    "generation_cpu_s": r["generation_cpu_s"],
                    "n_chunks": r["n_chunks"],
                    "stopped_by": r["stopped_by"],
                }
                for r in rs
            ],
            "metrics": metrics,
        }
        for r in rs:
            for k, v in (r.get("provenance") or {}).items():
                provenance.setdefault(k, v)
    sweeps = []
    for sw in spec.sweeps:
        base = next(a for a in arms if a.name == sw.base)
        points = []
        for v in sw.values:
            name = f"{sw.parameter}={v:g}" + "".join(f",{k}={w}" for k, w in sorted(sw.fixed.items()))
            points.append({"value": v, "arm": alias.get(name, name)})
        sweeps.append({"parameter": sw.parameter, "base": base.name, "fixed": sw.fixed, "points": points})
    return {
        "name": spec.name,
        "created": datetime.now(UTC).isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "torch_threads": spec.threads,
        },
        "budget": {
            "budget_cpu_s": spec.budget_cpu_s,
            "chunk": spec.chunk,
            "max_generated": spec.max_generated,
            "definition": equal_budget_definition(),
        },
        "confidence": {
            "level": confidence,
            "method": "Student t over seeds: mean ± t_{0.975, n-1} s/sqrt(n)",
            "seeds": spec.seeds,
        },
        "thresholds": spec.thresholds.model_dump(),
        "metric_definitions": defs,
        "arms": out_arms,
        "aliases": alias,
        "sweeps": sweeps,
        "comparisons": comparisons(out_arms),
        "provenance": provenance,
        "spec": spec.model_dump(mode="json"),
        "runs": results,
    }


#: the guided arms compared with each baseline, and the figures compared
COMPARED_METHODS = ("full", "gradient", "steered")
COMPARED_BASELINES = ("unguided", "substitution", "filter", "cfg")
COMPARED_METRICS = (
    "her_hit_rate",
    "hits_per_cpu_hour",
    "sun_rate",
    "confirmed_hits_per_cpu_hour",
    "new_confirmed_hits_per_cpu_hour",
    "distinct_confirmed_hits_per_cpu_hour",
)


def comparisons(arms: dict[str, Any]) -> dict[str, Any]:
    """Ratios of each guided arm's mean hit figures to the baselines' (None when a baseline has no hit)."""
    out = {}
    for method in COMPARED_METHODS:
        if method not in arms:
            continue
        for other in COMPARED_BASELINES:
            if other not in arms:
                continue
            for metric in COMPARED_METRICS:
                if metric not in arms[method]["metrics"] or metric not in arms[other]["metrics"]:
                    continue  # a stored run from before the metric existed
                a = arms[method]["metrics"][metric]["mean"]
                b = arms[other]["metrics"][metric]["mean"]
                entry = {
                    method: a,
                    other: b,
                    "ratio": (a / b) if (a is not None and b) else None,
                    "description": f"mean {metric} of the {method} arm divided by that of {other}; None when "
                    f"the denominator is 0 or missing (no hit to compare with)",
                }
                pa, pb = arms[method]["metrics"][metric].get("pooled"), arms[other]["metrics"][metric].get("pooled")
                if isinstance(pa, dict) and isinstance(pb, dict):
                    rr = poisson_rate_ratio(pa["count"], pa["cpu_hours"], pb["count"], pb["cpu_hours"])
                    entry["pooled_ratio"] = {
                        "ratio": rr["ratio"],
                        "ci95_low": rr["low"],
                        "ci95_high": rr["high"],
                        "p_value": rr["p_value"],
                        "counts": [pa["count"], pb["count"]],
                        "method": rr["method"],
                    }
                out[f"{method}_over_{other}:{metric}"] = entry
    return out


def write_plots(doc: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Bar charts of the main arms and line plots of the sweeps (PNG), each with 95 % CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    main = [n for n, a in doc["arms"].items() if a["group"] == "main"]
    shown = [
        "strict_2d_validity",
        "smact_validity",
        "uniqueness",
        "novelty",
        "stable_rate",
        "sun_rate",
        "her_hit_rate",
        "hits_per_cpu_hour",
    ]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, metric in zip(axes.flat, shown):
        means, errs = [], []
        for i, arm in enumerate(main):
            m = doc["arms"][arm]["metrics"][metric]
            means.append(m["mean"] or 0.0)
            errs.append(m["ci95_half_width"] or 0.0)
            pts = [v for v in m["per_seed"] if v is not None]
            ax.plot([i] * len(pts), pts, "k.", ms=4, zorder=3)
        ax.bar(range(len(main)), means, yerr=errs, capsize=3, color="tab:blue", alpha=0.7)
        ax.set_xticks(range(len(main)))
        ax.set_xticklabels(main, rotation=30, ha="right", fontsize=8)
        unit = doc["metric_definitions"][metric]["unit"]
        ax.set_title(f"{metric} ({unit})", fontsize=9)
    fig.suptitle(
        f"{doc['name']}: mean ± 95 % CI over seeds {doc['confidence']['seeds']} (dots: seeds); "
        f"budget {doc['budget']['budget_cpu_s']:g} CPU-s per arm and seed",
        fontsize=10,
    )
    fig.tight_layout()
    path = out_dir / "arms.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(str(path))
    for sw in doc["sweeps"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [p["value"] for p in sw["points"]]
        for metric in ("strict_2d_validity", "smact_validity", "stable_rate", "sun_rate", "her_hit_rate"):
            ms = [doc["arms"][p["arm"]]["metrics"][metric] for p in sw["points"]]
            ax.errorbar(
                xs,
                [m["mean"] if m["mean"] is not None else np.nan for m in ms],
                yerr=[m["ci95_half_width"] or 0.0 for m in ms],
                marker="o",
                capsize=3,
                label=metric,
            )
        ax.set_xlabel(sw["parameter"] + (f" (fixed {sw['fixed']})" if sw["fixed"] else ""))
        ax.set_ylabel("fraction of samples")
        ax.set_title(f"sweep of {sw['parameter']} on {sw['base']} (mean ± 95 % CI)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"sweep_{sw['parameter']}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files.append(str(path))
    return files


def results_table(doc: dict[str, Any], metrics: Sequence[str] | None = None) -> str:
    """A markdown table: one row per arm, each metric as mean ± CI half-width."""
    metrics = list(
        metrics
        or [
            "strict_2d_validity",
            "smact_validity",
            "uniqueness",
            "novelty",
            "stable_rate",
            "sun_rate",
            "her_hit_rate",
            "mlip_confirmation_rate",
            "hits_per_cpu_hour",
            "confirmed_hits_per_cpu_hour",
            "e_hull_median",
        ]
    )

    def fmt(m: dict[str, Any]) -> str:
        if m["mean"] is None:
            return "–"
        pct = m["unit"] == "fraction"
        scale, nd = (100.0, 1) if pct else (1.0, 2)
        s = f"{m['mean'] * scale:.{nd}f}"
        if m["ci95_half_width"] is not None:
            s += f" ± {m['ci95_half_width'] * scale:.{nd}f}"
        return s + (" %" if pct else "")

    head = (
        [
            "arm",
            "seeds",
            "n evaluated (per seed)",
            "n generated (mean per seed)",
            "generation CPU-s (mean)",
            "hits / MLIP-confirmed / distinct / novel and distinct (all seeds)",
        ]
        + metrics
        + ["distinct confirmed hits / CPU-hour, pooled [95 % exact Poisson]"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, a in doc["arms"].items():
        m = a["metrics"]
        row = [
            name + (" (sweep)" if a["group"] == "sweep" else ""),
            str(len(a["seeds"])),
            ",".join(str(v) for v in m["n_evaluated"]["per_seed"]),
            (f"{m['n_generated']['mean']:.0f}" if m["n_generated"]["mean"] is not None else "–")
            + (
                f" ({a['n_off_kind_total'] / len(a['seeds']):.0f} off kind)"
                if a.get("n_off_kind_total") is not None and a["seeds"]
                else ""
            ),
            f"{m['generation_cpu_s']['mean']:.1f}" if m["generation_cpu_s"]["mean"] is not None else "–",
            f"{a['hits_total']} / {a['confirmed_total']} / {a.get('distinct_confirmed_total', '–')} / "
            f"{a.get('new_confirmed_total', 0)}",
        ]
        row += [fmt(m[k]) for k in metrics]
        pooled = m.get("distinct_confirmed_hits_per_cpu_hour", {}).get("pooled")
        row.append(
            f"{pooled['rate']:.0f} [{pooled['ci95_low']:.0f}, {pooled['ci95_high']:.0f}]"
            if isinstance(pooled, dict) and pooled["rate"] is not None
            else "–"
        )
        lines.append("| " + " | ".join(row) + " |")
    units = "; ".join(f"{k}: {doc['metric_definitions'][k]['unit']}" for k in metrics)
    return "\n".join(lines) + (
        f"\n\nUnits: {units}. Mean ± 95 % t-interval half-width over seeds; the pooled column is the count over "
        "all seeds divided by the CPU-hours its scored outputs cost, with an exact Poisson interval."
    )
