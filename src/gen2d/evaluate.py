"""The evaluation suite: generator arms side by side at an equal generation CPU budget, every arm scored
and counted the same way, each figure a mean with a 95 % Student-t interval over seeds.

``gen2d evaluate workflows/evaluate.yaml`` runs it in one process; :func:`gen2d.flows.evaluate_flow`
runs one job per arm and seed, then one aggregation job.

Equal budget, precisely: for every arm and seed, generation runs in chunks of ``chunk`` samples and
its CPU time is ``time.process_time()`` (all threads of the generating process) summed over the
chunks. A new chunk starts only while the CPU used so far plus the cost of the most expensive chunk so
far stays within ``budget_cpu_s``; the first chunk always runs. Loading a model and the first call
(warm-up) are not counted. A generate-then-filter arm spends the same budget on unguided generation
plus the surrogates that rank it. What each arm produced within the budget is then subsampled
uniformly (or, for a filter arm, its top ``keep``) to ``n_eval`` samples, which get the expensive
scorers; rates are measured on those and hits per CPU-hour extrapolate the hit rate to everything the
arm produced within the budget.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jobflow import job
from pydantic import BaseModel, Field
from pymatgen.core import Structure

from gen2d.metrics import (ConfirmationRate, HitRate, HitsPerCPUHour, Novelty, SMACTValidity, StableRate,
                           StrictValidity, SUNRate, Uniqueness, mean_ci)
from gen2d.scoring import (GeneratedStructure, RankThresholds, ScoreResult, get_generator, get_scorer,
                           rank_documents, score_in_batches, screen_score)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# the spec


class ScorerRef(BaseModel):
    name: str
    options: dict[str, Any] = Field(default_factory=dict, description="scorer constructor options")
    batch_size: int = 16


class ArmSpec(BaseModel):
    """One way of producing candidates."""

    name: str
    kind: Literal["generator", "filter"] = Field(
        "generator", description="generator: its samples are the output; filter: its samples are ranked by "
                                 "the filter scorers and the top `keep` are the output")
    generator: str = Field("egnn-diffusion", description="registered generator name, or module:attr of an "
                                                         "unregistered generator class")
    options: dict[str, Any] = Field(default_factory=dict, description="generator constructor options")
    params: dict[str, Any] = Field(default_factory=dict, description="generate() parameters (guidance, start, "
                                                                    "n_steps, ...)")
    cycle_templates: bool = Field(True, description="pass each chunk the next templates of a seeded shuffle "
                                                    "(template-start diffusion and substitution)")
    keep: int | None = Field(None, description="filter: how many of the best to keep (default n_eval)")
    filter_require_strict: bool = Field(True, description="filter: only strictly valid samples are kept")
    filter_max_elements: int | None = Field(3, description="filter: only samples of at most this many elements")
    n_eval: int | None = Field(None, description="override of the spec's n_eval for this arm")
    group: Literal["main", "sweep"] = "main"
    description: str = ""


class SweepSpec(BaseModel):
    """Vary one guidance parameter of ``base`` (the others held at ``fixed``)."""

    parameter: Literal["eta", "cfg_weight"]
    values: list[float]
    base: str = Field("full", description="the arm whose parameters are varied")
    fixed: dict[str, Any] = Field(default_factory=dict, description="guidance fields held fixed")
    n_eval: int | None = Field(None, description="evaluated samples per sweep point and seed")


class EvaluateScorers(BaseModel):
    e_hull: ScorerRef = Field(default_factory=lambda: ScorerRef(name="ehull.chgnet",
                                                                options={"progress": False, "max_elements": 3}))
    dg_h: ScorerRef = Field(default_factory=lambda: ScorerRef(name="dgh.dimenet", batch_size=64))
    p_synth: ScorerRef = Field(default_factory=lambda: ScorerRef(name="synth.pu", batch_size=256))
    confirm: ScorerRef | None = Field(default_factory=lambda: ScorerRef(
        name="dgh.mlip", options={"calculator": "chgnet", "max_sites_per_face": 2}, batch_size=1))
    filter: list[ScorerRef] = Field(default_factory=lambda: [ScorerRef(name="dgh.dimenet", batch_size=64),
                                                             ScorerRef(name="synth.pu", batch_size=256)])


class TrainingSetSpec(BaseModel):
    """The novelty reference: the generator's training set, read with the same filters it was trained with."""

    sources: list[str] = Field(default_factory=lambda: ["2dmatpedia_filtered.db", "mc2d_258_exfoliable.json"])
    max_atoms: int = 40
    max_thickness: float = 8.0


class EvaluateSpec(BaseModel):
    name: str = "evaluate"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    budget_cpu_s: float = Field(20.0, description="generation CPU-seconds per arm and seed")
    chunk: int = Field(9, description="samples per generate() call")
    max_generated: int = Field(5000, description="stop an arm early past this many samples")
    n_eval: int = Field(6, description="samples per arm and seed that get the full scoring")
    templates: list[str] | None = Field(None, description="templates cycled through (default: the library)")
    arms: list[ArmSpec] = Field(default_factory=list)
    sweeps: list[SweepSpec] = Field(default_factory=list)
    scorers: EvaluateScorers = Field(default_factory=EvaluateScorers)
    thresholds: RankThresholds = Field(default_factory=RankThresholds)
    training_set: TrainingSetSpec = Field(default_factory=TrainingSetSpec)
    threads: int = Field(1, description="torch threads")
    out: str = Field("evaluate-out", description="folder for the JSON and the plots")

    def all_arms(self) -> tuple[list[ArmSpec], dict[str, str]]:
        """Main arms plus the sweep points; and, for a sweep point equal to another arm, that arm's name."""
        arms = list(self.arms)
        by_name = {a.name: a for a in arms}
        alias: dict[str, str] = {}
        for sw in self.sweeps:
            base = by_name[sw.base]
            for v in sw.values:
                guidance = dict(base.params.get("guidance") or {})
                if not isinstance(guidance, dict):
                    raise ValueError(f"sweep base {sw.base} needs its guidance as a dict")
                guidance.update(sw.fixed)
                guidance[sw.parameter] = float(v)
                arm = base.model_copy(deep=True, update={
                    "name": f"{sw.parameter}={v:g}" + "".join(f",{k}={w}" for k, w in sorted(sw.fixed.items())),
                    "params": {**base.params, "guidance": guidance}, "group": "sweep",
                    "n_eval": sw.n_eval or base.n_eval,
                    "description": f"sweep of {sw.parameter} on {sw.base}: {sw.parameter}={v:g}, fixed {sw.fixed}"})
                same = next((a.name for a in arms if _arm_key(a) == _arm_key(arm)), None)
                if same is not None:
                    alias[arm.name] = same
                    continue
                arms.append(arm)
        return arms, alias


def _arm_key(arm: ArmSpec) -> str:
    def norm(g: Any) -> Any:
        if isinstance(g, dict):
            return {k: norm(v) for k, v in sorted(g.items())}
        if isinstance(g, (int, float)) and not isinstance(g, bool):
            return float(g)
        return g

    return json.dumps(norm({"kind": arm.kind, "generator": arm.generator, "options": arm.options,
                            "params": arm.params, "keep": arm.keep}), sort_keys=True)


def load_evaluate_spec(path: str | Path, overrides: list[str] | None = None) -> EvaluateSpec:
    """Read an evaluation spec (YAML) and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    from gen2d.config import read_spec_yaml

    return EvaluateSpec.model_validate(read_spec_yaml(path, overrides))


# ----------------------------------------------------------------------------------------------
# metric definitions (every number in the JSON carries one)


def metric_definitions(t: RankThresholds, confirmer: str = "dgh.mlip") -> dict[str, dict[str, str]]:
    defs = {}
    for m in (StrictValidity(), SMACTValidity(), StableRate(t.e_hull_max), SUNRate(), HitRate(t),
              ConfirmationRate(t.dg_h_window, confirmer), HitsPerCPUHour()):
        defs[m.name] = {"unit": m.unit, "description": m.description}
    defs["uniqueness"] = {"unit": "fraction", "description": Uniqueness.description + " Within one arm and seed."}
    defs["novelty"] = {"unit": "fraction", "description": Novelty.description + " The training set is the "
                       "generator's (spec training_set: sources and filters)."}
    defs["confirmed_hit_rate"] = {"unit": "fraction", "description": "Fraction of all samples that are HER hits "
                                  f"AND confirmed by {confirmer} (see mlip_confirmation_rate)."}
    defs["e_hull_median"] = {"unit": "eV/atom", "description": "Median E_hull of the samples whose E_hull was "
                             "computed (strictly valid, within the scorer's element limit); how far from stable "
                             "the arm lands. None when none was computed."}
    defs["e_hull_scored_fraction"] = {"unit": "fraction", "description": "Fraction of all samples with a computed "
                                      "E_hull (the rest: not strictly valid, too many elements, or a failed score)."}
    defs["n_generated"] = {"unit": "samples", "description": "Samples the arm produced within its generation "
                           "budget (a filter arm: before filtering)."}
    defs["n_evaluated"] = {"unit": "samples", "description": "Samples that got the full scoring (a uniform "
                           "subsample of n_generated, or a filter arm's kept top)."}
    defs["generation_cpu_s"] = {"unit": "CPU-s", "description": "CPU seconds spent generating (and, for a "
                                "filter arm, ranking), time.process_time of the generating process; model "
                                "loading and one warm-up call are excluded."}
    defs["samples_per_cpu_s"] = {"unit": "samples / CPU-s", "description": "n_generated / generation_cpu_s."}
    defs["scoring_cpu_s"] = {"unit": "CPU-s", "description": "CPU seconds of the evaluation scorers on the "
                             "evaluated samples; includes any cold MLIP reference relaxations, which are cached "
                             "and therefore charged to whichever arm needed a chemical system first."}
    return defs


RATE_METRICS = ["strict_2d_validity", "smact_validity", "uniqueness", "novelty", "stable_rate", "sun_rate",
                "her_hit_rate", "confirmed_hit_rate", "mlip_confirmation_rate", "hits_per_cpu_hour"]
INFO_METRICS = ["e_hull_median", "e_hull_scored_fraction", "n_generated", "n_evaluated", "generation_cpu_s",
                "samples_per_cpu_s", "scoring_cpu_s"]


# ----------------------------------------------------------------------------------------------
# shared resources (loaded once per process)


def load_generator(ref: str, **options: Any):
    """A registered generator by name, or an unregistered one given as ``module:attr``."""
    if ":" in ref:
        module, attr = ref.split(":", 1)
        return getattr(importlib.import_module(module), attr)(**options)
    return get_generator(ref, **options)


def training_structures(spec: TrainingSetSpec) -> list[Structure]:
    """The novelty reference: the training monolayers, with the generator's training filters."""
    from gen2d.diffusion.train import TrainConfig, load_training_set

    cfg = TrainConfig(sources=spec.sources, max_atoms=spec.max_atoms, max_thickness=spec.max_thickness)
    records, _ = load_training_set(cfg)
    return [r.to_structure() for r in records]


@dataclass
class Resources:
    """Generators, scorers and the novelty reference, built once and shared by every arm in a process."""

    spec: EvaluateSpec
    reference: list[Structure] | None = None
    _generators: dict[str, Any] = field(default_factory=dict)
    _scorers: dict[str, Any] = field(default_factory=dict)
    _warm: set = field(default_factory=set)

    def novelty_reference(self) -> list[Structure]:
        if self.reference is None:
            self.reference = training_structures(self.spec.training_set)
        return self.reference

    def generator(self, arm: ArmSpec):
        key = json.dumps([arm.generator, arm.options], sort_keys=True, default=str)
        if key not in self._generators:
            gen = load_generator(arm.generator, **arm.options)
            ok, why = gen.available()
            if not ok:
                raise RuntimeError(f"generator {arm.generator} unavailable: {why}")
            self._generators[key] = gen
        return self._generators[key]

    def scorer(self, ref: ScorerRef):
        key = json.dumps([ref.name, ref.options], sort_keys=True, default=str)
        if key not in self._scorers:
            self._scorers[key] = get_scorer(ref.name, **ref.options)
        return self._scorers[key]

    def warm_up(self, arm: ArmSpec, templates: list[str]) -> None:
        """One uncounted call per generator configuration and filter scorer: loads models and caches."""
        key = _arm_key(arm)
        if key in self._warm:
            return
        gen = self.generator(arm)
        extra = {"templates": templates[:1]} if arm.cycle_templates else {}
        items = list(gen.generate(n=1, seed=0, **extra, **arm.params))
        if arm.kind == "filter" and items:
            for ref in self.spec.scorers.filter:
                list(score_in_batches(self.scorer(ref), [items[0].structure], ref.batch_size))
        self._warm.add(key)


# ----------------------------------------------------------------------------------------------
# generation within a budget


@dataclass
class BudgetedRun:
    items: list[GeneratedStructure]
    cpu_s: float
    n_chunks: int
    chunk_cpu_s: list[float]
    budget_cpu_s: float
    stopped_by: str
    filter_values: list[dict[str, float | None]] = field(default_factory=list)


def template_cycle(names: Sequence[str], seed: int):
    """An endless seeded shuffle of ``names``: every template once per round, in a new order each round."""
    rng = np.random.default_rng([seed, 7919])
    while True:
        for i in rng.permutation(len(names)):
            yield names[int(i)]


def generate_within_budget(generate_chunk: Callable[[int, int], tuple[list[GeneratedStructure], list]],
                           budget_cpu_s: float, chunk: int, max_generated: int,
                           clock: Callable[[], float] = time.process_time) -> BudgetedRun:
    """Call ``generate_chunk(chunk_index, size)`` until the budget would be exceeded.

    A chunk starts only while ``used + max(chunk costs so far) <= budget``; the first always runs. The
    function returns ``(items, filter values)``; its CPU time, measured with ``clock``, is the cost.
    """
    items: list[GeneratedStructure] = []
    extra: list = []
    costs: list[float] = []
    used = 0.0
    stopped = "budget"
    while True:
        if costs and used + max(costs) > budget_cpu_s:
            break
        if len(items) >= max_generated:
            stopped = "max_generated"
            break
        t0 = clock()
        got, vals = generate_chunk(len(costs), min(chunk, max_generated - len(items)))
        dt = clock() - t0
        costs.append(dt)
        used += dt
        items.extend(got)
        extra.extend(vals)
        if not got:
            stopped = "generator_exhausted"
            break
    return BudgetedRun(items=items, cpu_s=used, n_chunks=len(costs), chunk_cpu_s=costs, budget_cpu_s=budget_cpu_s,
                       stopped_by=stopped, filter_values=extra)


def _filter_values(res: Resources, structures: list[Structure]) -> list[dict[str, float | None]]:
    vals: list[dict[str, float | None]] = [{} for _ in structures]
    for ref in res.spec.scorers.filter:
        sc = res.scorer(ref)
        k = 0
        for batch in score_in_batches(sc, structures, ref.batch_size):
            for r in batch:
                vals[k][sc.property] = r.value if r.ok else None
                k += 1
    return vals


def run_arm_generation(res: Resources, arm: ArmSpec, seed: int) -> BudgetedRun:
    spec = res.spec
    from gen2d.data.templates import list_templates

    names = list(spec.templates or list_templates())
    res.warm_up(arm, names)
    gen = res.generator(arm)
    cycle = template_cycle(names, seed)

    def chunk_fn(index: int, size: int):
        extra = {"templates": [next(cycle) for _ in range(size)]} if arm.cycle_templates else {}
        got = list(gen.generate(n=size, seed=seed * 100_003 + index, **extra, **arm.params))
        vals = _filter_values(res, [g.structure for g in got]) if arm.kind == "filter" else []
        return got, vals

    return generate_within_budget(chunk_fn, spec.budget_cpu_s, spec.chunk, spec.max_generated)


def select_for_evaluation(run: BudgetedRun, arm: ArmSpec, n_eval: int, seed: int,
                          thresholds: RankThresholds) -> tuple[list[int], list[float | None]]:
    """Indices of the samples that get the full scoring, and (filter arms) their filter scores."""
    n = len(run.items)
    if arm.kind == "generator":
        rng = np.random.default_rng([seed, int(hashlib.sha1(arm.name.encode()).hexdigest()[:8], 16)])
        idx = sorted(rng.choice(n, size=min(n_eval, n), replace=False).tolist()) if n else []
        return idx, [None] * len(idx)
    keep = arm.keep or n_eval
    scored = []
    for i, (g, vals) in enumerate(zip(run.items, run.filter_values)):
        if arm.filter_require_strict and not g.labels.get("strict_valid", True):
            continue
        if arm.filter_max_elements and len(g.structure.composition.elements) > arm.filter_max_elements:
            continue
        s = screen_score(vals, thresholds)
        if s is not None:
            scored.append((s, i))
    scored.sort(key=lambda x: (-x[0], x[1]))
    top = scored[:keep]
    return [i for _, i in top], [s for s, _ in top]


# ----------------------------------------------------------------------------------------------
# scoring and counting, the same for every arm


def _score_all(res: Resources, ref: ScorerRef, structures: list[Structure],
               context: list[dict[str, ScoreResult]] | None = None) -> list[ScoreResult]:
    sc = res.scorer(ref)
    out: list[ScoreResult] = []
    for batch in score_in_batches(sc, structures, ref.batch_size, context=context):
        out.extend(batch)
    return out


def score_samples(res: Resources, structures: list[Structure]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score and count a set of samples; returns one record per sample and the provenance of each scorer."""
    spec = res.spec
    t = spec.thresholds
    n = len(structures)
    from gen2d.structures import strict_verdict

    strict, strict_reasons = [], []
    for s in structures:  # the same verdict as StrictValidity, with its reasons kept per sample
        ok, why = strict_verdict(s)
        strict.append(ok)
        strict_reasons.append(why)
    smact = SMACTValidity()(structures).details["per_sample"] if n else []
    unique = Uniqueness()(structures).details["per_sample"] if n else []
    novel = Novelty(res.novelty_reference())(structures).details["per_sample"] if n else []
    provenance: dict[str, Any] = {}

    e_hull: list[ScoreResult | None] = [None] * n
    strict_idx = [i for i in range(n) if strict[i]]
    if strict_idx:
        for i, r in zip(strict_idx, _score_all(res, spec.scorers.e_hull, [structures[i] for i in strict_idx])):
            e_hull[i] = r
            provenance.setdefault("e_hull", r.provenance.model_dump(mode="json"))
    context = [{"e_hull": r} if r is not None and r.ok else {} for r in e_hull]
    dg_h = _score_all(res, spec.scorers.dg_h, structures, context) if n else []
    p_synth = _score_all(res, spec.scorers.p_synth, structures) if n else []
    for prop, results in (("dg_h", dg_h), ("p_synth", p_synth)):
        if results:
            provenance.setdefault(prop, results[0].provenance.model_dump(mode="json"))

    docs = []
    for i in range(n):
        summary, scores = {}, {}
        for prop, r in (("e_hull", e_hull[i]), ("dg_h", dg_h[i]), ("p_synth", p_synth[i])):
            if r is None:
                continue
            scores[prop] = {"property": prop, "ok": r.ok}
            if r.ok:
                summary[prop] = {"value": r.value, "uncertainty": r.uncertainty}
        docs.append({"candidate_id": str(i), "summary": summary, "scores": scores,
                     "validity": {"strict": {"ok": bool(strict[i])}}})
    ranks = rank_documents(docs, t)
    hits = [bool(ranks[str(i)]["hit"]) for i in range(n)]

    mlip: list[ScoreResult | None] = [None] * n
    hit_idx = [i for i in range(n) if hits[i]]
    if hit_idx and spec.scorers.confirm is not None:
        confirmed = _score_all(res, spec.scorers.confirm, [structures[i] for i in hit_idx],
                               [context[i] for i in hit_idx])
        for i, r in zip(hit_idx, confirmed):
            mlip[i] = r
            provenance.setdefault("confirm", r.provenance.model_dump(mode="json"))

    records = []
    for i, s in enumerate(structures):
        def val(r: ScoreResult | None) -> float | None:
            return r.value if r is not None and r.ok else None

        def why(r: ScoreResult | None) -> str | None:
            return r.failure.reason if r is not None and not r.ok and r.failure else None

        m = val(mlip[i])
        confirmed = bool(hits[i] and m is not None and abs(m) <= t.dg_h_window)
        records.append({
            "formula": s.composition.reduced_formula, "nsites": len(s), "nelements": len(s.composition.elements),
            "strict_ok": bool(strict[i]), "strict_reasons": strict_reasons[i], "smact_ok": bool(smact[i]),
            "unique": bool(unique[i]), "novel": bool(novel[i]),
            "e_hull": val(e_hull[i]), "e_hull_failure": why(e_hull[i]),
            "stable": val(e_hull[i]) is not None and val(e_hull[i]) <= t.e_hull_max,
            "dg_h": val(dg_h[i]), "dg_h_uncertainty": dg_h[i].uncertainty if dg_h[i].ok else None,
            "dg_h_failure": why(dg_h[i]), "p_synth": val(p_synth[i]), "p_synth_failure": why(p_synth[i]),
            "hit": hits[i], "mlip_dg_h": m, "mlip_failure": why(mlip[i]),
            "confirmed": confirmed,
            # what a discovery campaign is after: a confirmed hit that is neither a training layer nor a repeat
            "new_confirmed": bool(confirmed and novel[i] and unique[i]),
        })
    return records, provenance


def seed_metrics(records: list[dict[str, Any]], run_summary: dict[str, Any], t: RankThresholds) -> dict[str, Any]:
    """Every figure of one arm and seed, from its per-sample records."""
    n = len(records)
    col = {k: [r[k] for r in records] for k in records[0]} if records else {}

    def frac(key: str) -> float | None:
        return float(np.mean(col[key])) if n else None

    e_vals = [v for v in col.get("e_hull", []) if v is not None]
    stable = StableRate(t.e_hull_max)(col.get("e_hull", []))
    sun = SUNRate()(stable.details["per_sample"], col.get("unique", []), col.get("novel", []))
    hit = HitRate(t)(col.get("hit", []))
    hit_mlip = [r["mlip_dg_h"] for r in records if r["hit"]]
    conf = ConfirmationRate(t.dg_h_window)(hit_mlip)
    cpu = run_summary["generation_cpu_s"]
    per_hour = HitsPerCPUHour()(hit.value, run_summary["n_generated"] if run_summary["kind"] == "generator"
                                else n, cpu)
    return {
        "strict_2d_validity": frac("strict_ok"), "smact_validity": frac("smact_ok"), "uniqueness": frac("unique"),
        "novelty": frac("novel"), "stable_rate": stable.value, "sun_rate": sun.value, "her_hit_rate": hit.value,
        "confirmed_hit_rate": frac("confirmed"), "mlip_confirmation_rate": conf.value,
        "hits_per_cpu_hour": per_hour.value,
        "e_hull_median": float(np.median(e_vals)) if e_vals else None,
        "e_hull_scored_fraction": len(e_vals) / n if n else None,
        "n_generated": run_summary["n_generated"], "n_evaluated": n, "generation_cpu_s": cpu,
        "samples_per_cpu_s": run_summary["n_generated"] / cpu if cpu > 0 else None,
        "scoring_cpu_s": run_summary.get("scoring_cpu_s"),
        "n_hits": hit.details["n_hits"], "n_confirmed": conf.details["n_confirmed"],
        "n_new_confirmed": sum(1 for r in records if r.get("new_confirmed")),
    }


def run_arm_seed(res: Resources, arm: ArmSpec, seed: int) -> dict[str, Any]:
    """Generate within the budget, select, score and count one arm for one seed (a JSON-able dict)."""
    spec = res.spec
    run = run_arm_generation(res, arm, seed)
    n_eval = arm.n_eval or spec.n_eval
    idx, filter_scores = select_for_evaluation(run, arm, n_eval, seed, spec.thresholds)
    structures = [run.items[i].structure for i in idx]
    c0 = time.process_time()
    records, provenance = score_samples(res, structures)
    scoring_cpu = time.process_time() - c0
    for k, (i, rec) in enumerate(zip(idx, records)):
        g = run.items[i]
        rec.update({"index": i, "source_id": g.source_id, "filter_score": filter_scores[k],
                    "start": g.parameters.get("start") or g.parameters.get("template"),
                    "substitutions": g.parameters.get("substitutions")})
    summary = {"arm": arm.name, "seed": seed, "kind": arm.kind, "n_generated": len(run.items),
               "generation_cpu_s": run.cpu_s, "budget_cpu_s": run.budget_cpu_s, "n_chunks": run.n_chunks,
               "chunk_cpu_s": run.chunk_cpu_s, "stopped_by": run.stopped_by, "scoring_cpu_s": scoring_cpu,
               "strict_fraction_generated": float(np.mean([bool(g.labels.get("strict_valid")) for g in run.items]))
               if run.items and "strict_valid" in run.items[0].labels else None}
    summary["metrics"] = seed_metrics(records, summary, spec.thresholds)
    summary["samples"] = records
    summary["provenance"] = provenance
    return summary


# ----------------------------------------------------------------------------------------------
# aggregation, JSON and plots


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
            metrics[name] = {"mean": ci["mean"], "ci95_half_width": ci["half_width"], "ci95_low": ci["low"],
                             "ci95_high": ci["high"], "n_seeds": ci["n"], "per_seed": per_seed,
                             **defs[name]}
        hits = sum(r["metrics"]["n_hits"] for r in rs)
        conf = sum(r["metrics"]["n_confirmed"] for r in rs)
        new = sum(r["metrics"].get("n_new_confirmed", 0) for r in rs)
        metrics["mlip_confirmation_rate"]["pooled"] = conf / hits if hits else None
        metrics["mlip_confirmation_rate"]["pooled_hits"] = hits
        out_arms[arm.name] = {
            "group": arm.group, "kind": arm.kind, "generator": arm.generator, "params": arm.params,
            "description": arm.description, "seeds": [r["seed"] for r in rs],
            "n_evaluated_total": sum(r["metrics"]["n_evaluated"] for r in rs),
            "n_generated_total": sum(r["n_generated"] for r in rs), "hits_total": hits, "confirmed_total": conf,
            "new_confirmed_total": new,
            "budget": [{"seed": r["seed"], "budget_cpu_s": r["budget_cpu_s"], "generation_cpu_s": r["generation_cpu_s"],
                        "n_chunks": r["n_chunks"], "stopped_by": r["stopped_by"]} for r in rs],
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
        "created": datetime.now(timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": spec.threads},
        "budget": {"budget_cpu_s": spec.budget_cpu_s, "chunk": spec.chunk, "max_generated": spec.max_generated,
                   "definition": __doc__.split("Equal budget, precisely: ")[1].split("\n\n")[0].replace("\n", " ")},
        "confidence": {"level": confidence, "method": "Student t over seeds: mean ± t_{0.975, n-1} s/sqrt(n)",
                       "seeds": spec.seeds},
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


def comparisons(arms: dict[str, Any]) -> dict[str, Any]:
    """Ratios of the full method's mean hit figures to the baselines' (None when a baseline has no hit)."""
    out = {}
    if "full" not in arms:
        return out
    for other in ("unguided", "substitution", "filter", "cfg"):
        if other not in arms:
            continue
        for metric in ("her_hit_rate", "hits_per_cpu_hour", "sun_rate"):
            a = arms["full"]["metrics"][metric]["mean"]
            b = arms[other]["metrics"][metric]["mean"]
            out[f"full_over_{other}:{metric}"] = {
                "full": a, other: b, "ratio": (a / b) if (a is not None and b) else None,
                "description": f"mean {metric} of the full method divided by that of {other}; None when the "
                               f"denominator is 0 or missing (no hit to compare with)"}
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
    shown = ["strict_2d_validity", "smact_validity", "uniqueness", "novelty", "stable_rate", "sun_rate",
             "her_hit_rate", "hits_per_cpu_hour"]
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
    fig.suptitle(f"{doc['name']}: mean ± 95 % CI over seeds {doc['confidence']['seeds']} (dots: seeds); "
                 f"budget {doc['budget']['budget_cpu_s']:g} CPU-s per arm and seed", fontsize=10)
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
            ax.errorbar(xs, [m["mean"] if m["mean"] is not None else np.nan for m in ms],
                        yerr=[m["ci95_half_width"] or 0.0 for m in ms], marker="o", capsize=3, label=metric)
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
    metrics = list(metrics or ["strict_2d_validity", "smact_validity", "uniqueness", "novelty", "stable_rate",
                               "sun_rate", "her_hit_rate", "mlip_confirmation_rate", "hits_per_cpu_hour",
                               "e_hull_median"])

    def fmt(m: dict[str, Any]) -> str:
        if m["mean"] is None:
            return "–"
        pct = m["unit"] == "fraction"
        scale, nd = (100.0, 1) if pct else (1.0, 2)
        s = f"{m['mean'] * scale:.{nd}f}"
        if m["ci95_half_width"] is not None:
            s += f" ± {m['ci95_half_width'] * scale:.{nd}f}"
        return s + (" %" if pct else "")

    head = ["arm", "seeds", "n evaluated (per seed)", "n generated (mean per seed)", "generation CPU-s (mean)",
            "hits / MLIP-confirmed / of those novel and unique (all seeds)"] + metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, a in doc["arms"].items():
        m = a["metrics"]
        row = [name + (" (sweep)" if a["group"] == "sweep" else ""), str(len(a["seeds"])),
               ",".join(str(v) for v in m["n_evaluated"]["per_seed"]),
               f"{m['n_generated']['mean']:.0f}" if m["n_generated"]["mean"] is not None else "–",
               f"{m['generation_cpu_s']['mean']:.1f}" if m["generation_cpu_s"]["mean"] is not None else "–",
               f"{a['hits_total']} / {a['confirmed_total']} / {a.get('new_confirmed_total', 0)}"]
        row += [fmt(m[k]) for k in metrics]
        lines.append("| " + " | ".join(row) + " |")
    units = "; ".join(f"{k}: {doc['metric_definitions'][k]['unit']}" for k in metrics)
    return "\n".join(lines) + f"\n\nUnits: {units}. Mean ± 95 % t-interval half-width over seeds."


def _run_key(spec: EvaluateSpec, arm: ArmSpec, seed: int, model: str | None = None) -> str:
    """What makes an arm-seed result reusable: everything in the spec that can change it, the seed, and
    the identity of the generator's model (``model``: its checkpoint sha256), so a retrained checkpoint
    at the same path is never mistaken for the one that made a stored result, and the E_hull correction
    scheme."""
    d = spec.model_dump(mode="json")
    for k in ("name", "seeds", "arms", "sweeps", "out"):
        d.pop(k, None)
    from gen2d.hull import CORRECTION_SCHEME  # E_hull numbers change with it, so stored results must too

    parts = [d, _arm_key(arm), arm.n_eval, seed, CORRECTION_SCHEME] + ([model] if model else [])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _model_identity(res: "Resources", arm: ArmSpec) -> str | None:
    """The checkpoint sha256 of an arm's generator, when its provenance gives one (None otherwise)."""
    try:
        prov = res.generator(arm).provenance()
    except Exception:  # a generator without provenance, or one that cannot load: the run itself will say why
        return None
    return prov.get("checkpoint_sha256") if isinstance(prov, dict) else None


def run_evaluation(spec: EvaluateSpec, progress: Callable[[str], None] | None = None,
                   write: bool = True) -> dict[str, Any]:
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
        if journal.is_file():
            for line in journal.read_text().splitlines():
                try:
                    r = json.loads(line)
                    done[r["run_key"]] = r
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by a crash
    results = []
    for seed in spec.seeds:
        for arm in arms:
            key = _run_key(spec, arm, seed, _model_identity(res, arm))
            if key in done:
                r = dict(done[key], arm=arm.name)
                say(f"{arm.name} seed {seed}: reused from {journal}")
                results.append(r)
                continue
            t0 = time.perf_counter()
            r = run_arm_seed(res, arm, seed)
            r["run_key"] = key
            r["wall_s"] = time.perf_counter() - t0
            m = r["metrics"]
            say(f"{arm.name} seed {seed}: generated {r['n_generated']} in {r['generation_cpu_s']:.1f} CPU-s, "
                f"evaluated {m['n_evaluated']}: strict {m['strict_2d_validity']}, stable {m['stable_rate']}, "
                f"hits {m['n_hits']} ({r['wall_s']:.0f} s wall, scoring {r['scoring_cpu_s']:.0f} CPU-s)")
            if write:
                with journal.open("a") as fh:
                    fh.write(json.dumps(r, default=str) + "\n")
            results.append(r)
    doc = aggregate(spec, results)
    doc["wall_s"] = time.perf_counter() - t_wall
    doc["cpu_s"] = time.process_time() - t_cpu
    if write:
        doc["plots"] = write_plots(doc, out)
        (out / "evaluate.json").write_text(json.dumps(doc, indent=2, default=str))
        (out / "results.md").write_text(results_table(doc) + "\n")
        doc["files"] = {"json": str((out / "evaluate.json").resolve()), "table": str((out / "results.md").resolve()),
                        "journal": str(journal.resolve())}
    return doc


# ----------------------------------------------------------------------------------------------
# jobflow: one job per arm and seed, then one aggregation job


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
    return {"out": str(out.resolve()), "arms": {k: {m: v["metrics"][m]["mean"] for m in RATE_METRICS}
                                                for k, v in doc["arms"].items()}}


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


__all__ = ["EvaluateSpec", "ArmSpec", "SweepSpec", "load_evaluate_spec", "run_evaluation", "aggregate",
           "results_table", "write_plots", "generate_within_budget", "evaluate_jobs"]
