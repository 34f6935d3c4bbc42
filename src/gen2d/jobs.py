"""jobflow Makers for every step (train, generate, ingest, score, rank, report), in atomate2's style.

Each job opens the candidate store from a URI (``None``: ``$GEN2D_STORE`` on the worker, so no
credentials travel inside a workflow document) and upserts as it goes: a job that dies keeps what it
wrote, and its rerun skips finished work. Checkpoints travel as blobs in the JobStore's data store.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Flow, Maker, Response, job
from pydantic import BaseModel, Field

from gen2d.ranking import RankThresholds, rank_candidates
from gen2d.scoring import BaseScorer, ScoreResult, as_scorer, get_generator, get_scorer, score_in_batches, trains
from gen2d.store import Candidate, CandidateStore, SourceInfo, get_score, make_candidate, open_store, score_is_current
from gen2d.structures import validate_ingest
from gen2d.threads import configure_torch_threads

log = logging.getLogger(__name__)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def set_category(j, category: str | None):
    """Route a job to a FireWorks worker category (``gpu`` for training/generation, ``cpu`` for scoring)."""
    if category:
        j.update_config({"manager_config": {"_category": category}})
    return j


# ----------------------------------------------------------------------------------------------
# task documents


class TrainOutput(BaseModel):
    plugin: str
    kind: str
    checkpoint_name: str | None = None
    checkpoint_sha256: str | None = None
    checkpoint_b64: str | None = Field(None, description="checkpoint bytes (base64); lives in the data store")
    metrics: dict[str, Any] = Field(default_factory=dict)
    cpu_seconds: float = 0.0


class GenerateOutput(BaseModel):
    set: str
    generator: str
    run_id: str
    n_generated: int = 0
    n_accepted: int = 0
    n_strict: int = 0
    n_flagged: int = 0  # stored with a generation flag (e.g. guidance_diverged): never a hit
    candidate_ids: list[str] = Field(default_factory=list)
    rejected: list[dict[str, Any]] = Field(default_factory=list)
    cpu_seconds: float = 0.0


class ScoreOutput(BaseModel):
    scorer: str
    property: str = ""
    n_scored: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_skipped: int = Field(0, description="already scored before this job (a rerun redoes nothing)")
    failures: dict[str, int] = Field(default_factory=dict)
    candidate_ids: list[str] = Field(default_factory=list)
    cpu_seconds: float = 0.0


class RankOutput(BaseModel):
    sets: list[str]
    n_ranked: int = 0
    n_complete: int = 0
    n_hits: int = 0
    top: list[dict[str, Any]] = Field(default_factory=list)
    thresholds: dict[str, Any] = Field(default_factory=dict)


class ReportOutput(BaseModel):
    out_dir: str
    files: list[str] = Field(default_factory=list)


def _store(uri: str | None) -> CandidateStore:
    return open_store(uri)


# ----------------------------------------------------------------------------------------------
# generic steps


def train_plugin(kind: str, name: str, **options: Any) -> dict[str, Any]:
    """Train a generator or scorer plugin: its instance's ``train`` method, else the ``train`` function
    of the module behind its entry point. Returns the plugin's dict (``checkpoint``/``model`` path,
    ``metrics``, manifest fields)."""
    import importlib
    import importlib.metadata as md

    from gen2d.scoring import PLUGIN_GROUPS

    eps = {ep.name: ep for ep in md.entry_points(group=PLUGIN_GROUPS[kind])}
    if name not in eps:
        raise KeyError(f"no {kind} plugin named {name!r} (registered: {', '.join(sorted(eps)) or 'none'})")
    factory = eps[name].load()
    if trains(factory):  # its own train, not the base class's that raises
        fn = (factory() if isinstance(factory, type) else factory).train
    else:
        fn = getattr(importlib.import_module(eps[name].module), "train", None)
    if fn is None:
        raise TypeError(f"{kind} plugin {name} has nothing to train")
    return fn(**options) or {}


@dataclass
class TrainMaker(Maker):
    """Train a plugin (``kind`` generator or scorer) through its ``train(**options)`` method.

    The plugin's ``train`` returns a dict with ``checkpoint`` (a path) and ``metrics``; the checkpoint
    bytes go to the data store so a job on another node can load them.
    """

    name: str = "train"
    plugin: str = "egnn-diffusion"
    kind: str = "generator"
    options: dict = field(default_factory=dict)

    @job(data="checkpoint_b64", output_schema=TrainOutput)
    def make(self, store: str | None = None, after: Any = None) -> TrainOutput:
        """``after``: an upstream output this training waits for (the DFT frames it trains on)."""
        from gen2d.scoring import file_sha256

        t0 = _cpu_seconds()
        result = train_plugin(self.kind, self.plugin, **self.options)
        ckpt = result.get("checkpoint") or result.get("model")
        out = TrainOutput(plugin=self.plugin, kind=self.kind, metrics=result.get("metrics", {}))
        if ckpt and Path(ckpt).is_file():
            out.checkpoint_name = Path(ckpt).name
            out.checkpoint_sha256 = file_sha256(ckpt)
            out.checkpoint_b64 = base64.b64encode(Path(ckpt).read_bytes()).decode()
        out.cpu_seconds = _cpu_seconds() - t0
        return out


def materialise_checkpoint(train_output: dict | TrainOutput | None) -> str | None:
    """Write a checkpoint blob from a TrainOutput to a local temp file; its path, or None."""
    if train_output is None:
        return None
    d = train_output.model_dump() if isinstance(train_output, BaseModel) else dict(train_output)
    if not d.get("checkpoint_b64"):
        return None
    folder = Path(tempfile.mkdtemp(prefix="gen2d-ckpt-"))
    path = folder / (d.get("checkpoint_name") or "checkpoint.pt")
    path.write_bytes(base64.b64decode(d["checkpoint_b64"]))
    return str(path)


@dataclass
class GenerateMaker(Maker):
    """Run a generator plugin and upsert what it yields as candidates of ``set_name``.

    Every structure goes through ingest validation (failures are listed by reason in the output) and
    records its strict verdict, its generator and its generation parameters.
    """

    name: str = "generate"
    generator: str = "templates"
    options: dict = field(default_factory=dict)
    n: int | None = None
    seed: int = 0
    params: dict = field(default_factory=dict)
    set_name: str = "generated"

    @job(output_schema=GenerateOutput)
    def make(self, store: str | None = None, checkpoint: Any = None) -> GenerateOutput:
        options = dict(self.options)
        ckpt_path = materialise_checkpoint(checkpoint)
        if ckpt_path:
            options["checkpoint"] = ckpt_path
        return generate_candidates(self.generator, options, self.n, self.seed, self.params, self.set_name, store)


def generate_candidates(
    generator: str,
    options: dict,
    n: int | None,
    seed: int,
    params: dict,
    set_name: str,
    store: str | None = None,
    progress=None,
) -> GenerateOutput:
    """Run a generator and upsert its valid outputs as candidates (the body of GenerateMaker)."""
    configure_torch_threads()
    t0 = _cpu_seconds()
    gen = get_generator(generator, **options)
    ok, why = gen.available()
    if not ok:
        raise RuntimeError(f"generator {generator} unavailable: {why}")
    run_id = uuid.uuid4().hex[:12]
    out = GenerateOutput(set=set_name, generator=generator, run_id=run_id)
    cs = _store(store)
    batch = []
    for g in gen.generate(n=n, seed=seed, **params):
        out.n_generated += 1
        if progress:
            progress(1)
        v = validate_ingest(g.structure)
        if not v.ok:
            out.rejected.append(
                {
                    "source_id": g.source_id,
                    "reason": v.reasons[0],
                    "message": v.messages[0],
                    **({"flags": sorted(g.flags)} if g.flags else {}),
                }
            )
            continue
        # a generator's own predictions are not reference labels: they travel with the source
        predicted = {k: v2 for k, v2 in g.labels.items() if k.startswith(("predicted_", "strict_"))}
        labels = {k: v2 for k, v2 in g.labels.items() if v2 is not None and k not in predicted}
        src = SourceInfo(
            kind="templates" if generator == "templates" else "generator",
            set=set_name,
            source_id=g.source_id or f"{run_id}-{out.n_generated}",
            run_id=run_id,
            parameters={
                "generator": generator,
                "seed": seed,
                **params,
                **g.parameters,
                **({"generator_predictions": predicted} if predicted else {}),
            },
        )
        cand = make_candidate(g.structure, src, labels=labels, ingest=v)
        if g.flags:
            cand.flags = {
                k: {
                    **(val if isinstance(val, dict) else {"details": val}),
                    "source_id": src.source_id,
                    "run_id": run_id,
                }
                for k, val in g.flags.items()
            }
            out.n_flagged += 1
        out.n_accepted += 1
        out.n_strict += cand.validity.strict_ok
        out.candidate_ids.append(cand.candidate_id)
        batch.append(cand)
        if len(batch) >= 32:
            cs.upsert_candidates(batch)
            batch.clear()
    cs.upsert_candidates(batch)
    out.candidate_ids = list(dict.fromkeys(out.candidate_ids))
    out.cpu_seconds = _cpu_seconds() - t0
    return out


@dataclass
class IngestMaker(Maker):
    """Ingest a folder, ASE db or MC2D JSON as candidate set ``set_name`` (the ``rank-cifs`` entry)."""

    name: str = "ingest"
    path: str = ""
    set_name: str = "cifs"

    @job(output_schema=GenerateOutput)
    def make(self, store: str | None = None) -> GenerateOutput:
        from gen2d.data.ingest import ingest_outcomes
        from gen2d.data.readers import read_any

        t0 = _cpu_seconds()
        cs = _store(store)
        report = ingest_outcomes(read_any(self.path), cs, self.set_name, kind="cif-set")
        return GenerateOutput(
            set=self.set_name,
            generator="cif-set",
            run_id=uuid.uuid4().hex[:12],
            n_generated=report.read,
            n_accepted=report.accepted,
            n_strict=report.strict_ok,
            candidate_ids=list(dict.fromkeys(report.candidate_ids)),
            rejected=report.rejected,
            cpu_seconds=_cpu_seconds() - t0,
        )


def _context_for(cand: Candidate, requires: tuple[str, ...]) -> dict[str, ScoreResult]:
    """The ok results of the properties a scorer requires, rebuilt from the stored candidate."""
    ctx: dict[str, ScoreResult] = {}
    for prop in requires:
        entry = cand.summary.get(prop)
        stored = cand.score(entry.scorer) if entry is not None and entry.scorer else None
        if stored is not None:
            ctx[prop] = stored.to_result()
    return ctx


@job(output_schema=ScoreOutput)
def score_batch(scorer: str, options: dict, candidate_ids: list[str], store: str | None = None) -> ScoreOutput:
    """One scoring job: :func:`score_candidates` on a batch."""
    return score_candidates(scorer, options, candidate_ids, store)


def candidates_to_score(
    cs: CandidateStore,
    scorer: str,
    sc: BaseScorer | None = None,
    criteria: dict[str, Any] | None = None,
    candidate_ids: list[str] | None = None,
    top_k: int | None = None,
) -> list[str]:
    """Ids of the candidates that still need ``scorer``: the work left to do, for flows and ``gen2d score``.

    A candidate needs it when it holds no result from ``scorer`` or one that lacks the scorer's
    ``current`` values (made by an older version of it, e.g. an E_hull under an older correction
    scheme). ``criteria`` narrows the candidates (``--where``, the set); ``candidate_ids`` to those
    ids; ``top_k`` to the best ``top_k`` so far (most properties known first, then the screening
    desirability).
    """
    sc = sc if sc is not None else as_scorer(get_scorer(scorer))
    base = dict(criteria or {})
    crit = dict(base)
    if candidate_ids is not None:
        crit["candidate_id"] = {"$in": list(candidate_ids)}
    if top_k:
        best = _top_k_scorable(cs, sc, base, top_k, candidate_ids)
        crit["candidate_id"] = {"$in": best}
    missing = cs.candidates_missing(scorer, crit, sc.current, properties=["candidate_id"], retry=sc.retry_failures)
    return [d["candidate_id"] for d in missing]


#: how far down the ranking a top-k stage looks for scorable candidates: this many times k
TOP_K_LOOKAHEAD = 10


def _top_k_scorable(
    cs: CandidateStore, sc: BaseScorer, base: dict[str, Any], top_k: int, candidate_ids: list[str] | None
) -> list[str]:
    """The ids of the best ``top_k`` candidates by rank (most properties known first, then the screening
    desirability) that ``sc`` can score, plus those above them it can never score (:meth:`BaseScorer.cannot_score`):
    scoring those stores their named failure at once, and their slots go to the next candidates down, within
    :data:`TOP_K_LOOKAHEAD` × ``top_k`` of the top."""
    ranked = cs.query(
        base,
        sort=[("rank.n_properties", -1), ("rank.screen_score", -1)],
        limit=top_k * TOP_K_LOOKAHEAD,
        properties=["candidate_id"],
    )
    given = set(candidate_ids) if candidate_ids is not None else None
    # only a scorer with its own rule needs the structures
    checks = type(sc).cannot_score is not BaseScorer.cannot_score
    chosen: list[str] = []
    n_scorable = 0
    for doc in ranked:
        cid = doc["candidate_id"]
        refused = None
        if checks:
            cand = cs.get(cid)
            refused = sc.cannot_score(cand.get_structure()) if cand is not None else None
        if given is None or cid in given:  # the top k of all, restricted to the given ids
            chosen.append(cid)
        if refused is None:
            n_scorable += 1
            if n_scorable >= top_k:
                break
        else:
            log.info(
                "%s cannot score %s (%s): the next candidate takes its top-%d slot", sc.name, cid, refused[0], top_k
            )
    return chosen


def score_candidates(
    scorer: str, options: dict, candidate_ids: list[str], store: str | None = None, progress=None
) -> ScoreOutput:
    """Score candidates and upsert each result as soon as its mini-batch returns.

    Candidates that already hold a result from this scorer are skipped, so rerunning a batch after a
    crash redoes nothing that was stored. A result that lacks the scorer's ``current`` values (made by
    an older version of it), or a failure whose reason the scorer retries (``retry_failures``: a backend that
    was missing, a DFT SCF), is redone, and the old value is kept in the new result's ``extra.superseded``.
    """
    configure_torch_threads()
    t0 = _cpu_seconds()
    cs = _store(store)
    sc = as_scorer(get_scorer(scorer, **options))
    out = ScoreOutput(scorer=scorer, property=sc.property)
    cands: list[Candidate] = []
    superseded: dict[str, dict] = {}
    for cid in candidate_ids:
        cand = cs.get(cid)
        if cand is None:
            continue
        old = get_score(cand, scorer)
        # a stored result without the current values is redone, and so is a failure the scorer retries
        if score_is_current(old, sc.current, sc.retry_failures):
            out.n_skipped += 1
            continue
        if old is not None:  # made by an older version of the scorer: kept in the new result's extra
            superseded[cid] = {k: old.get(k) for k in ("value", "unit", "ok")} | {
                "provenance_settings": (old.get("provenance") or {}).get("settings")
            }
        cands.append(cand)
    requires = tuple(sc.requires or ())
    structures = [c.get_structure() for c in cands]
    context = [_context_for(c, requires) for c in cands] if requires else None
    mini = max(1, int(sc.batch_size or BaseScorer.batch_size))
    done = 0
    t_prev = _cpu_seconds()
    for results in score_in_batches(sc, structures, batch_size=mini, context=context):
        t_now = _cpu_seconds()
        per_item = (t_now - t_prev) / max(1, len(results))  # this process's CPU time, shared evenly
        t_prev = t_now
        for c, r in zip(cands[done : done + len(results)], results):
            r.extra.setdefault("cpu_seconds", round(per_item, 4))
            if c.candidate_id in superseded:
                r.extra["superseded"] = superseded[c.candidate_id]
            cs.set_score(c.candidate_id, scorer, r)
            out.n_scored += 1
            if r.ok:
                out.n_ok += 1
            else:
                key = r.failure.reason if r.failure else "unknown"
                out.failures[key] = out.failures.get(key, 0) + 1
                out.n_failed += 1
            out.candidate_ids.append(c.candidate_id)
        done += len(results)
        if progress:
            progress(len(results))
    out.cpu_seconds = _cpu_seconds() - t0
    return out


@dataclass
class ScoreMaker(Maker):
    """One job per batch of ``batch_size`` candidates for one scorer (replaced at run time).

    With ``top_k``, only the current top-k by rank score are scored (e.g. the MLIP ΔG_H that confirms
    the surrogate on the best candidates).
    """

    name: str = "score"
    scorer: str = "ehull.chgnet"
    options: dict = field(default_factory=dict)
    batch_size: int = 32
    top_k: int | None = None
    where: list = field(default_factory=list)
    set_name: str | None = None
    category: str | None = "cpu"

    @job
    def make(self, store: str | None = None, candidate_ids: list[str] | None = None, after: Any = None) -> Response:
        from gen2d.store import parse_where

        cs = _store(store)
        base = parse_where(self.where)
        if self.set_name:
            base["sets"] = self.set_name
        # the scorer (not loaded models: constructors are cheap) says which stored results are current
        sc = as_scorer(get_scorer(self.scorer, **self.options))
        todo = candidates_to_score(cs, self.scorer, sc, base, candidate_ids, self.top_k)
        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        jobs = []
        for k, ids in enumerate(batches):
            j = score_batch(self.scorer, self.options, ids, store)
            j.name = f"{self.scorer} batch {k + 1}/{len(batches)}"
            set_category(j, self.category)
            jobs.append(j)
        if not jobs:
            return Response(output=[])
        return Response(replace=Flow(jobs, output=[j.output for j in jobs], name=f"score {self.scorer}"))


def rank_set(cs: CandidateStore, sets: list[str] | None, thresholds: RankThresholds) -> RankOutput:
    """Recompute ranks of the candidates in ``sets`` (all when None) from their stored summaries."""
    crit = {"sets": {"$in": sets}} if sets else {}
    docs = list(cs.query(crit, properties=["candidate_id", "formula", "summary", "scores", "validity", "flags"]))
    ranks = rank_candidates(docs, thresholds)
    for cid, r in ranks.items():
        cs.set_rank(cid, r)
    complete = [(cid, r) for cid, r in ranks.items() if r.score is not None]
    complete.sort(key=lambda x: x[1].position)
    formula = {d["candidate_id"]: d["formula"] for d in docs}
    return RankOutput(
        sets=sets or [],
        n_ranked=len(ranks),
        n_complete=len(complete),
        n_hits=sum(bool(r.hit) for r in ranks.values()),
        top=[
            {
                "candidate_id": cid,
                "formula": formula[cid],
                "score": r.score,
                "hit": r.hit,
                "pareto_front": r.pareto_front,
            }
            for cid, r in complete[:20]
        ],
        thresholds=thresholds.model_dump(),
    )


@dataclass
class RankMaker(Maker):
    """Rank candidates (Pareto front + desirability; hits by thresholds). Rerun whenever scores arrive."""

    name: str = "rank"
    sets: list = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)

    @job(output_schema=RankOutput)
    def make(self, store: str | None = None, after: Any = None) -> RankOutput:
        return rank_set(_store(store), self.sets or None, RankThresholds(**self.thresholds))


@dataclass
class ReportMaker(Maker):
    """HTML report with PNG figures for the given sets."""

    name: str = "report"
    sets: list = field(default_factory=list)
    out_dir: str = "report"
    top_k: int = 10

    @job(output_schema=ReportOutput)
    def make(self, store: str | None = None, after: Any = None) -> ReportOutput:
        from gen2d.report import write_report

        files = write_report(_store(store), self.out_dir, sets=self.sets or None, top_k=self.top_k)
        return ReportOutput(out_dir=str(Path(self.out_dir).resolve()), files=[str(f) for f in files])


# ----------------------------------------------------------------------------------------------
# improve-her: one iteration of the DFT / MLIP / surrogate loop


class SelectOutput(BaseModel):
    candidate_ids: list[str] = Field(default_factory=list)
    rows: list[dict[str, Any]] = Field(default_factory=list, description="the chosen, with the surrogate's value")
    n_near_hits: int = 0
    criterion: str = ""


def select_for_dft(
    cs: CandidateStore,
    set_name: str | None,
    k: int,
    window: float,
    surrogate: str = "dgh.dimenet",
    where: list[str] | None = None,
    dft_scorer: str = "dgh.dft",
) -> SelectOutput:
    """The ``k`` near-hits (|ΔG_H| of ``surrogate`` ≤ ``window`` eV) whose surrogate value is least certain
    (largest calibrated uncertainty; then nearest 0), among those without a successful ``dft_scorer`` result."""
    from gen2d.store import parse_where

    crit = parse_where(where or [])
    if set_name:
        crit["sets"] = set_name
    near = []
    for doc in cs.query(crit):
        res = get_score(doc, surrogate)
        if not res or not res.get("ok") or res.get("value") is None:
            continue
        done = get_score(doc, dft_scorer)
        if done and done.get("ok"):
            continue
        value = float(res["value"])
        if abs(value) <= window:
            unc = res.get("uncertainty")
            near.append((float(unc) if unc is not None else 0.0, value, doc))
    near.sort(key=lambda t: (-t[0], abs(t[1])))
    chosen = near[:k]
    return SelectOutput(
        candidate_ids=[d["candidate_id"] for _, _, d in chosen],
        rows=[
            {"candidate_id": d["candidate_id"], "formula": d.get("formula"), "dg_h_eV": v, "uncertainty_eV": u}
            for u, v, d in chosen
        ],
        n_near_hits=len(near),
        criterion=f"|{surrogate} ΔG_H| <= {window} eV, no {dft_scorer} result; largest uncertainty first",
    )


@job(output_schema=SelectOutput)
def select_for_dft_job(
    store: str | None,
    set_name: str | None,
    k: int,
    window: float,
    surrogate: str = "dgh.dimenet",
    where: list[str] | None = None,
) -> SelectOutput:
    """:func:`select_for_dft` as a job."""
    return select_for_dft(_store(store), set_name, k, window, surrogate, where)


def improve_report(
    cs: CandidateStore,
    selected: dict[str, Any] | SelectOutput,
    tuned_dir: str,
    surrogate_dir: str,
    out: str | None = None,
    base_mlip: str = "chgnet",
    mlip_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What one improve-her iteration moved, for the candidates it sent to DFT: the surrogate before (stored)
    and after (the retrained ensemble), the explicit-H MLIP ΔG_H with the base model and the fine-tuned one,
    and the DFT ΔG_H; plus the new surrogate's own metrics. Every value in eV; written to ``out`` as JSON."""
    import json

    from gen2d.fileio import write_json_atomic

    sel = selected.model_dump() if isinstance(selected, BaseModel) else dict(selected)
    ids = list(sel.get("candidate_ids") or [])
    cands = [c for c in (cs.get(cid) for cid in ids) if c is not None]
    structures = [c.get_structure() for c in cands]
    before = {r["candidate_id"]: r for r in sel.get("rows") or []}
    t0 = _cpu_seconds()
    new_sur = get_scorer("dgh.dimenet", checkpoint_dir=surrogate_dir).score(structures) if structures else []
    opts = dict(mlip_options or {})
    base = get_scorer("dgh.mlip", calculator=base_mlip, **opts).score(structures) if structures else []
    tuned = (
        get_scorer("dgh.mlip", calculator="chgnet-her", model=tuned_dir, **opts).score(structures) if structures else []
    )
    rows = []
    for c, s_new, r_base, r_tuned in zip(cands, new_sur, base, tuned):
        dft = get_score(c, "dgh.dft") or {}
        b = before.get(c.candidate_id, {})
        rows.append(
            {
                "candidate_id": c.candidate_id,
                "formula": c.formula,
                "surrogate_before_eV": b.get("dg_h_eV"),
                "surrogate_before_uncertainty_eV": b.get("uncertainty_eV"),
                "surrogate_after_eV": s_new.value if s_new.ok else None,
                "surrogate_after_uncertainty_eV": s_new.uncertainty if s_new.ok else None,
                f"mlip_{base_mlip}_eV": r_base.value if r_base.ok else None,
                "mlip_chgnet_her_eV": r_tuned.value if r_tuned.ok else None,
                "mlip_failures": {
                    name: r.failure.reason
                    for name, r in ((base_mlip, r_base), ("chgnet-her", r_tuned))
                    if not r.ok and r.failure is not None
                },
                "dft_eV": dft.get("value") if dft.get("ok") else None,
                "dft_failure": None if dft.get("ok") else (dft.get("failure") or {}).get("reason"),
            }
        )
    manifest = Path(surrogate_dir) / "MANIFEST.json"
    metrics = json.loads(manifest.read_text()).get("metrics", {}) if manifest.is_file() else {}
    doc = {
        "what": "one improve-her iteration: the candidates sent to DFT, before and after",
        "unit": "eV",
        "selection": {k: v for k, v in sel.items() if k != "rows"},
        "rows": rows,
        "surrogate_dir": str(surrogate_dir),
        "surrogate_metrics": metrics,
        "tuned_mlip_dir": str(tuned_dir),
        "report_cpu_seconds": round(_cpu_seconds() - t0, 1),
    }
    if out:
        write_json_atomic(out, doc, indent=1, default=str)
    return doc


@job
def improve_report_job(
    store: str | None,
    selected: Any,
    tuned_dir: str,
    surrogate_dir: str,
    out: str | None = None,
    mlip_options: dict[str, Any] | None = None,
    after: Any = None,
) -> dict[str, Any]:
    """:func:`improve_report` as a job (``after``: the surrogate training it waits for)."""
    return improve_report(_store(store), selected, tuned_dir, surrogate_dir, out, mlip_options=mlip_options)
