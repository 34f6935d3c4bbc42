"""One arm for one seed: generate within the CPU budget, subsample, score and count the same way for every arm."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pymatgen.core import Structure

from gen2d.evaluate.spec import ArmSpec, EvaluateSpec, ScorerRef, TrainingSetSpec, _arm_key
from gen2d.metrics import (
    ConfirmationRate,
    ConfirmedHitsPerCPUHour,
    HitRate,
    HitsPerCPUHour,
    Novelty,
    SMACTValidity,
    StableRate,
    SUNRate,
    Uniqueness,
)
from gen2d.scoring import (
    GeneratedStructure,
    RankThresholds,
    ScoreResult,
    get_generator,
    get_scorer,
    rank_documents,
    score_in_batches,
    screen_score,
)

log = logging.getLogger(__name__)


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


def generate_within_budget(
    generate_chunk: Callable[[int, int], tuple[list[GeneratedStructure], list]],
    budget_cpu_s: float,
    chunk: int,
    max_generated: int,
    clock: Callable[[], float] = time.process_time,
) -> BudgetedRun:
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
    return BudgetedRun(
        items=items,
        cpu_s=used,
        n_chunks=len(costs),
        chunk_cpu_s=costs,
        budget_cpu_s=budget_cpu_s,
        stopped_by=stopped,
        filter_values=extra,
    )


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

    params = dict(arm.params)
    if spec.require_any_of and "require_any_of" not in params:
        params["require_any_of"] = spec.require_any_of

    def chunk_fn(index: int, size: int):
        extra = {"templates": [next(cycle) for _ in range(size)]} if arm.cycle_templates else {}
        got = list(gen.generate(n=size, seed=seed * 100_003 + index, **extra, **params))
        vals = _filter_values(res, [g.structure for g in got]) if arm.kind == "filter" else []
        return got, vals

    return generate_within_budget(chunk_fn, spec.budget_cpu_s, spec.chunk, spec.max_generated)


def of_kind(structure: Structure, require_any_of: list[list[str]] | None) -> bool:
    """Whether ``structure`` holds an atom of every group of ``require_any_of`` (True when None)."""
    from gen2d.diffusion.composition import meets

    return meets((e.symbol for e in structure.composition.elements), require_any_of or [])


def select_for_evaluation(
    run: BudgetedRun,
    arm: ArmSpec,
    n_eval: int,
    seed: int,
    thresholds: RankThresholds,
    require_any_of: list[list[str]] | None = None,
) -> tuple[list[int], list[float | None]]:
    """Indices of the samples that get the full scoring, and (filter arms) their filter scores.

    With ``require_any_of``, only outputs of that kind are eligible (:func:`of_kind`).
    """
    eligible = [i for i, g in enumerate(run.items) if of_kind(g.structure, require_any_of)]
    if arm.kind == "generator":
        rng = np.random.default_rng([seed, int(hashlib.sha1(arm.name.encode()).hexdigest()[:8], 16)])
        # without a kind every output is eligible, and the draw is the one it always was
        pick = rng.choice(len(eligible), size=min(n_eval, len(eligible)), replace=False) if eligible else []
        idx = sorted(eligible[int(k)] for k in pick)
        return idx, [None] * len(idx)
    ok = set(eligible)
    keep = arm.keep or n_eval
    scored = []
    for i, (g, vals) in enumerate(zip(run.items, run.filter_values)):
        if i not in ok:
            continue
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


def _score_all(
    res: Resources, ref: ScorerRef, structures: list[Structure], context: list[dict[str, ScoreResult]] | None = None
) -> list[ScoreResult]:
    sc = res.scorer(ref)
    out: list[ScoreResult] = []
    for batch in score_in_batches(sc, structures, ref.batch_size, context=context):
        out.extend(batch)
    return out


def score_samples(
    res: Resources, structures: list[Structure], flags: list[dict[str, Any]] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score and count a set of samples; returns one record per sample and the provenance of each scorer. ``flags``
    (one dict per sample) are the generation's faults, which block a hit as in a campaign's ranking."""
    spec = res.spec
    t = spec.thresholds
    n = len(structures)
    gen_flags = [dict(f or {}) for f in flags] if flags else [{} for _ in structures]
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
                summary[prop] = {"value": r.value, "uncertainty": r.uncertainty, "flags": r.extra.get("flags", [])}
        docs.append(
            {
                "candidate_id": str(i),
                "summary": summary,
                "scores": scores,
                "validity": {"strict": {"ok": bool(strict[i])}},
                # a generation fault (guidance_diverged) blocks a hit here as in a campaign's ranking
                "flags": gen_flags[i],
            }
        )
    ranks = rank_documents(docs, t)
    hits = [bool(ranks[str(i)]["hit"]) for i in range(n)]

    mlip: list[ScoreResult | None] = [None] * n
    hit_idx = [i for i in range(n) if hits[i]]
    if hit_idx and spec.scorers.confirm is not None:
        confirmed = _score_all(
            res, spec.scorers.confirm, [structures[i] for i in hit_idx], [context[i] for i in hit_idx]
        )
        for i, r in zip(hit_idx, confirmed):
            mlip[i] = r
            provenance.setdefault("confirm", r.provenance.model_dump(mode="json"))

    records = []
    for i, s in enumerate(structures):

        def val(r: ScoreResult | None) -> float | None:
            return r.value if r is not None and r.ok else None

        def below_hull(r: ScoreResult | None) -> bool:
            return bool(r is not None and r.ok and "below_reference_hull" in (r.extra.get("flags") or []))

        def why(r: ScoreResult | None) -> str | None:
            return r.failure.reason if r is not None and not r.ok and r.failure else None

        m = val(mlip[i])
        confirmed = bool(hits[i] and m is not None and abs(m) <= t.dg_h_window)
        records.append(
            {
                "formula": s.composition.reduced_formula,
                "nsites": len(s),
                "nelements": len(s.composition.elements),
                "strict_ok": bool(strict[i]),
                "strict_reasons": strict_reasons[i],
                "smact_ok": bool(smact[i]),
                "unique": bool(unique[i]),
                "novel": bool(novel[i]),
                "e_hull": val(e_hull[i]),
                "e_hull_failure": why(e_hull[i]),
                "stable": val(e_hull[i]) is not None and val(e_hull[i]) <= t.e_hull_max and not below_hull(e_hull[i]),
                "below_reference_hull": below_hull(e_hull[i]),
                "missing_reference": e_hull[i].extra.get("missing_reference") if below_hull(e_hull[i]) else None,
                "dg_h": val(dg_h[i]),
                "dg_h_uncertainty": dg_h[i].uncertainty if dg_h[i].ok else None,
                "dg_h_failure": why(dg_h[i]),
                "p_synth": val(p_synth[i]),
                "p_synth_failure": why(p_synth[i]),
                "hit": hits[i],
                "generation_flags": sorted(gen_flags[i]),
                "mlip_dg_h": m,
                "mlip_failure": why(mlip[i]),
                "confirmed": confirmed,
                # what a discovery campaign is after: a confirmed hit that is neither a training layer nor a repeat
                "new_confirmed": bool(confirmed and novel[i] and unique[i]),
            }
        )
    return records, provenance


def seed_metrics(records: list[dict[str, Any]], run_summary: dict[str, Any], t: RankThresholds) -> dict[str, Any]:
    """Every figure of one arm and seed, from its per-sample records."""
    n = len(records)
    col = {k: [r[k] for r in records] for k in records[0]} if records else {}

    def frac(key: str) -> float | None:
        return float(np.mean(col[key])) if n else None

    e_vals = [v for v in col.get("e_hull", []) if v is not None]
    stable = StableRate(t.e_hull_max)(col.get("e_hull", []), below_reference_hull=col.get("below_reference_hull"))
    sun = SUNRate()(stable.details["per_sample"], col.get("unique", []), col.get("novel", []))
    hit = HitRate(t)(col.get("hit", []))
    hit_mlip = [r["mlip_dg_h"] for r in records if r["hit"]]
    conf = ConfirmationRate(t.dg_h_window)(hit_mlip)
    cpu = run_summary["generation_cpu_s"]
    # outputs a generator arm delivers: what it generated, less what was of another kind than the spec asked for
    # (never scored, its CPU still spent), so an arm that spends its budget off the kind pays for it
    n_produced = (
        run_summary["n_generated"] - (run_summary.get("n_off_kind") or 0) if run_summary["kind"] == "generator" else n
    )
    per_hour = HitsPerCPUHour()(hit.value, n_produced, cpu)
    n_confirmed = sum(1 for r in records if r.get("confirmed"))
    n_new = sum(1 for r in records if r.get("new_confirmed"))
    # a structure that comes out twice is one hit: the repeats are not unique (the first occurrence is)
    n_distinct = sum(1 for r in records if r.get("confirmed") and r.get("unique"))
    confirmed_per_hour = ConfirmedHitsPerCPUHour()(n_confirmed, n, n_produced, cpu, run_summary.get("scoring_cpu_s"))
    distinct_per_hour = ConfirmedHitsPerCPUHour()(n_distinct, n, n_produced, cpu, run_summary.get("scoring_cpu_s"))
    new_per_hour = ConfirmedHitsPerCPUHour()(n_new, n, n_produced, cpu, run_summary.get("scoring_cpu_s"))
    per_output_s = confirmed_per_hour.details.get("cpu_s_per_output")
    return {
        "strict_2d_validity": frac("strict_ok"),
        "smact_validity": frac("smact_ok"),
        "uniqueness": frac("unique"),
        "novelty": frac("novel"),
        "stable_rate": stable.value,
        "sun_rate": sun.value,
        "her_hit_rate": hit.value,
        "confirmed_hit_rate": frac("confirmed"),
        "mlip_confirmation_rate": conf.value,
        "hits_per_cpu_hour": per_hour.value,
        "confirmed_hits_per_cpu_hour": confirmed_per_hour.value,
        "new_confirmed_hits_per_cpu_hour": new_per_hour.value,
        "distinct_confirmed_hits_per_cpu_hour": distinct_per_hour.value,
        "new_fraction_of_confirmed": n_new / n_confirmed if n_confirmed else None,
        "e_hull_median": float(np.median(e_vals)) if e_vals else None,
        "e_hull_scored_fraction": len(e_vals) / n if n else None,
        "n_generated": run_summary["n_generated"],
        "n_evaluated": n,
        "generation_cpu_s": cpu,
        "samples_per_cpu_s": run_summary["n_generated"] / cpu if cpu > 0 else None,
        "scoring_cpu_s": run_summary.get("scoring_cpu_s"),
        "n_hits": hit.details["n_hits"],
        "n_confirmed": conf.details["n_confirmed"],
        "n_new_confirmed": n_new,
        "n_distinct_confirmed": n_distinct,
        # the CPU-hours the scored outputs cost (their generation share plus scoring): the exposure of the
        # per-CPU-hour counts, which pooled Poisson intervals over seeds are computed on
        "scored_cpu_hours": n * per_output_s / 3600.0 if per_output_s else None,
    }


def run_arm_seed(res: Resources, arm: ArmSpec, seed: int) -> dict[str, Any]:
    """Generate within the budget, select, score and count one arm for one seed (a JSON-able dict)."""
    spec = res.spec
    run = run_arm_generation(res, arm, seed)
    n_eval = arm.n_eval or spec.n_eval
    idx, filter_scores = select_for_evaluation(run, arm, n_eval, seed, spec.thresholds, spec.require_any_of)
    structures = [run.items[i].structure for i in idx]
    c0 = time.process_time()
    records, provenance = score_samples(res, structures, [dict(run.items[i].flags) for i in idx])
    scoring_cpu = time.process_time() - c0
    for k, (i, rec) in enumerate(zip(idx, records)):
        g = run.items[i]
        rec.update(
            {
                "index": i,
                "source_id": g.source_id,
                "filter_score": filter_scores[k],
                "start": g.parameters.get("start") or g.parameters.get("template"),
                "substitutions": g.parameters.get("substitutions"),
            }
        )
    summary = {
        "arm": arm.name,
        "seed": seed,
        "kind": arm.kind,
        "n_generated": len(run.items),
        "generation_cpu_s": run.cpu_s,
        "budget_cpu_s": run.budget_cpu_s,
        "n_chunks": run.n_chunks,
        "chunk_cpu_s": run.chunk_cpu_s,
        "stopped_by": run.stopped_by,
        "n_off_kind": sum(not of_kind(g.structure, spec.require_any_of) for g in run.items)
        if spec.require_any_of
        else None,
        "scoring_cpu_s": scoring_cpu,
        "strict_fraction_generated": float(np.mean([bool(g.labels.get("strict_valid")) for g in run.items]))
        if run.items and "strict_valid" in run.items[0].labels
        else None,
    }
    summary["metrics"] = seed_metrics(records, summary, spec.thresholds)
    summary["samples"] = records
    summary["provenance"] = provenance
    return summary
