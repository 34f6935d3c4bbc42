"""Scorer and Generator protocols, the plugin registry (entry points) and the result schema.

The core never imports a plugin by name: everything is found through the entry-point groups
``gen2d.scorers``, ``gen2d.generators`` and ``gen2d.calculators``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import logging
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field
from pymatgen.core import Structure

log = logging.getLogger(__name__)

SCORER_GROUP = "gen2d.scorers"
GENERATOR_GROUP = "gen2d.generators"
CALCULATOR_GROUP = "gen2d.calculators"
PLUGIN_GROUPS = {"scorer": SCORER_GROUP, "generator": GENERATOR_GROUP, "calculator": CALCULATOR_GROUP}


class PluginUnavailable(RuntimeError):
    """A plugin cannot run here (missing weights, extra or path); the message says what is missing."""


@functools.lru_cache(maxsize=1)
def package_version() -> str:
    """The installed gen2d version (read once: importlib.metadata costs ~3 ms a call)."""
    try:
        return md.version("gen2d")
    except md.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


class Provenance(BaseModel):
    """Where a number came from: enough to reproduce it or to distrust it."""

    plugin: str
    version: str = Field(default_factory=package_version, description="gen2d version that made the number")
    model: str = ""
    checkpoint_sha256: str | None = None
    reference_set: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class Failure(BaseModel):
    """A named failure: ``reason`` is a stable snake_case token, ``message`` is for people."""

    reason: str
    message: str = ""


class ScoreResult(BaseModel):
    """One scorer's verdict on one structure.

    ``value`` is None exactly when ``ok`` is False. ``extra`` holds small outputs (relaxed structure as
    a dict, per-site data, decomposition products); large ones go to the job store's data store.
    """

    property: str
    value: float | None = None
    unit: str
    uncertainty: float | None = None
    ok: bool = True
    failure: Failure | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    provenance: Provenance

    @classmethod
    def failed(cls, prop: str, unit: str, reason: str, message: str, provenance: Provenance,
               **extra: Any) -> "ScoreResult":
        return cls(property=prop, unit=unit, ok=False, value=None,
                   failure=Failure(reason=reason, message=message), provenance=provenance, extra=extra)


@runtime_checkable
class Scorer(Protocol):
    """Scores a batch of structures; returns exactly one result per structure, in order.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``ehull.chgnet``.
    property : str
        ``e_hull``, ``dg_h`` or ``p_synth`` (or a new property a plugin defines).
    unit : str
        Unit of ``ScoreResult.value`` (``eV/atom``, ``eV``, ``probability``).
    requires : tuple[str, ...]
        Properties whose results this scorer reads from ``context`` (e.g. ``("e_hull",)`` for the
        relaxed slab from a stability scorer).
    """

    name: str
    property: str
    unit: str
    requires: tuple[str, ...]

    def available(self) -> tuple[bool, str]:
        """(True, "") when the scorer can run here, else (False, reason)."""
        ...

    def score(self, structures: Sequence[Structure],
              context: Sequence[dict[str, ScoreResult]] | None = None) -> list[ScoreResult]:
        """Score a batch. A failure in one structure is a failed result, never an exception."""
        ...


class GeneratedStructure(BaseModel):
    """A structure from a generator, with what made it."""

    model_config = {"arbitrary_types_allowed": True}

    structure: Structure
    source_id: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, Any] = Field(default_factory=dict)
    flags: dict[str, Any] = Field(
        default_factory=dict,
        description="numerical faults of the generation (name -> details, e.g. guidance_diverged); a "
                    "flagged candidate is stored, listed by `gen2d top --show-failed` and never a hit")


@runtime_checkable
class Generator(Protocol):
    """Yields candidate monolayers. ``cif-set`` and ``templates`` are the built-in ones."""

    name: str

    def available(self) -> tuple[bool, str]:
        ...

    def generate(self, n: int | None = None, seed: int = 0, **params: Any) -> Iterator[GeneratedStructure]:
        ...


@dataclass
class PluginInfo:
    """What the registry knows about one entry point, loaded or not."""

    name: str
    kind: str
    target: str
    distribution: str = ""
    version: str = ""
    available: bool = False
    reason: str = ""
    property: str | None = None
    unit: str | None = None
    obj: Any = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "obj"}


def _entry_points(group: str) -> list[md.EntryPoint]:
    return sorted(md.entry_points(group=group), key=lambda ep: ep.name)


def discover(kind: str | None = None) -> list[PluginInfo]:
    """Every registered plugin of ``kind`` (all kinds when None), each with its availability.

    A plugin whose import or construction fails is listed with the reason; the others still load.
    """
    kinds = [kind] if kind else list(PLUGIN_GROUPS)
    infos: list[PluginInfo] = []
    for k in kinds:
        for ep in _entry_points(PLUGIN_GROUPS[k]):
            dist = ep.dist.name if ep.dist else ""
            ver = ep.dist.version if ep.dist else ""
            info = PluginInfo(name=ep.name, kind=k, target=ep.value, distribution=dist, version=ver)
            try:
                factory = ep.load()
                info.obj = factory
                probe = factory() if k != "calculator" else None
                if probe is not None:
                    ok, why = probe.available()
                    info.available, info.reason = bool(ok), why
                    info.property = getattr(probe, "property", None)
                    info.unit = getattr(probe, "unit", None)
                else:
                    avail = getattr(factory, "available", None)
                    ok, why = avail() if callable(avail) else (True, "")
                    info.available, info.reason = bool(ok), why
            except Exception as exc:  # a broken plugin must not take the registry down
                info.available = False
                info.reason = f"{type(exc).__name__}: {exc}"
                log.debug("plugin %s failed to load:\n%s", ep.name, traceback.format_exc())
            infos.append(info)
    return infos


def _load(kind: str, name: str, **options: Any) -> Any:
    for ep in _entry_points(PLUGIN_GROUPS[kind]):
        if ep.name == name:
            factory = ep.load()
            return factory(**options)
    known = ", ".join(ep.name for ep in _entry_points(PLUGIN_GROUPS[kind])) or "none"
    raise KeyError(f"no {kind} plugin named {name!r} (registered: {known})")


def get_scorer(name: str, **options: Any) -> Scorer:
    """Instantiate the scorer registered as ``name`` with ``options`` (its config)."""
    return _load("scorer", name, **options)


def get_generator(name: str, **options: Any) -> Generator:
    """Instantiate the generator registered as ``name`` with ``options``."""
    return _load("generator", name, **options)


def get_calculator(name: str, **options: Any):
    """An ASE calculator from the MLIP backend registered as ``name`` (chgnet, mattersim, ...)."""
    for ep in _entry_points(CALCULATOR_GROUP):
        if ep.name == name:
            backend = ep.load()
            return backend(**options)
    known = ", ".join(ep.name for ep in _entry_points(CALCULATOR_GROUP)) or "none"
    raise KeyError(f"no calculator plugin named {name!r} (registered: {known})")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a checkpoint file, for provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def score_in_batches(scorer: Scorer, structures: Sequence[Structure], batch_size: int = 32,
                     context: Sequence[dict[str, ScoreResult]] | None = None) -> Iterable[list[ScoreResult]]:
    """Run ``scorer`` over ``structures`` in batches; a batch that raises becomes per-item failures."""
    for start in range(0, len(structures), batch_size):
        chunk = structures[start:start + batch_size]
        ctx = context[start:start + batch_size] if context is not None else None
        try:
            results = scorer.score(chunk, ctx)
            if len(results) != len(chunk):
                raise RuntimeError(f"{scorer.name} returned {len(results)} results for {len(chunk)} inputs")
        except Exception as exc:
            prov = Provenance(plugin=scorer.name, notes=["batch raised; every item marked failed"])
            results = [ScoreResult.failed(scorer.property, scorer.unit, "scorer_crashed",
                                          f"{type(exc).__name__}: {exc}", prov) for _ in chunk]
        yield results


# ----------------------------------------------------------------------------------------------
# ranking


class RankThresholds(BaseModel):
    """What makes a hit (DESIGN "Execution"); every threshold is configurable."""

    dg_h_window: float = Field(0.2, description="|ΔG_H| at most this, eV")
    e_hull_max: float = Field(0.1, description="E_hull at most this, eV/atom (stable)")
    p_synth_min: float = Field(0.5, description="P_synth at least this")
    require_strict: bool = Field(True, description="only strictly valid monolayers can be hits")


def desirability(dg_h: float, e_hull: float, p_synth: float, t: RankThresholds) -> float:
    """Geometric mean of three desirabilities in [0, 1].

    ΔG_H: a Gaussian centred on 0 that is 0.5 at the edge of the hit window (Sabatier optimum);
    E_hull: a logistic that is 0.5 at the stability threshold and falls off over 0.03 eV/atom;
    P_synth: the probability itself.
    """
    import math

    sigma = t.dg_h_window / math.sqrt(2 * math.log(2))
    d_g = math.exp(-0.5 * (dg_h / sigma) ** 2)
    d_e = 1.0 / (1.0 + math.exp((e_hull - t.e_hull_max) / 0.03))
    d_s = min(max(p_synth, 0.0), 1.0)
    return (d_g * d_e * d_s) ** (1.0 / 3.0)


def screen_score(values: dict[str, float | None], t: RankThresholds) -> float | None:
    """Geometric mean of the desirabilities of the properties present (None when none is)."""
    import math

    parts = []
    if values.get("dg_h") is not None:
        sigma = t.dg_h_window / math.sqrt(2 * math.log(2))
        parts.append(math.exp(-0.5 * (values["dg_h"] / sigma) ** 2))
    if values.get("e_hull") is not None:
        parts.append(1.0 / (1.0 + math.exp(min(50.0, (values["e_hull"] - t.e_hull_max) / 0.03))))
    if values.get("p_synth") is not None:
        parts.append(min(max(values["p_synth"], 0.0), 1.0))
    if not parts:
        return None
    return round(math.prod(parts) ** (1.0 / len(parts)), 6)


def pareto_fronts(points: Sequence[Sequence[float]]) -> list[int]:
    """Non-dominated sorting (all objectives minimised): front index per point, 0 is the best front."""
    n = len(points)
    front = [-1] * n
    remaining = set(range(n))
    level = 0
    while remaining:
        current = []
        for i in remaining:
            pi = points[i]
            dominated = False
            for j in remaining:
                if i == j:
                    continue
                pj = points[j]
                if all(a <= b for a, b in zip(pj, pi)) and any(a < b for a, b in zip(pj, pi)):
                    dominated = True
                    break
            if not dominated:
                current.append(i)
        for i in current:
            front[i] = level
            remaining.discard(i)
        level += 1
    return front


def rank_documents(docs: Sequence[dict[str, Any]], thresholds: RankThresholds | None = None) -> dict[str, dict[str, Any]]:
    """Rank candidate documents from their ``summary`` (one ok score per property).

    Returns ``{candidate_id: rank}`` where rank holds ``hit`` (True/False; None while a property is
    missing), ``score`` (desirability, None while incomplete), ``pareto_front`` (0 = best; None while
    incomplete), ``position`` (1-based order by score, ties broken by the lower summed uncertainty),
    ``missing`` and ``failed`` (properties whose scorers failed: such a candidate is never a hit),
    ``flags`` (numerical faults of its generation, e.g. diverged guidance: never a hit either) and
    the thresholds used. ``screen_score`` (geometric mean of the desirabilities of the properties
    known so far) with ``n_properties`` lets a screening funnel pick which candidates get the
    expensive scorers next; it never makes a hit.
    """
    t = thresholds or RankThresholds()
    ranks: dict[str, dict[str, Any]] = {}
    complete: list[tuple[str, float, float, float, float]] = []
    for d in docs:
        summ = d.get("summary") or {}
        failed = sorted(_failed_properties(d.get("scores") or {}) - set(summ))
        flags = sorted(d.get("flags") or {})
        vals = {p: (summ.get(p) or {}).get("value") for p in ("dg_h", "e_hull", "p_synth")}
        missing = sorted(p for p, v in vals.items() if v is None)
        strict_ok = bool(((d.get("validity") or {}).get("strict") or {}).get("ok"))
        r: dict[str, Any] = {"hit": None, "score": None, "pareto_front": None, "position": None,
                             "missing": missing, "failed": failed, "flags": flags, "strict_ok": strict_ok,
                             "n_properties": 3 - len(missing),
                             "screen_score": screen_score(vals, t), "thresholds": t.model_dump()}
        if failed or flags or (t.require_strict and not strict_ok):
            r["hit"] = False
        if not missing:
            g, e, s = vals["dg_h"], vals["e_hull"], vals["p_synth"]
            r["score"] = round(desirability(g, e, s, t), 6)
            is_hit = abs(g) <= t.dg_h_window and e <= t.e_hull_max and s >= t.p_synth_min
            r["hit"] = bool(is_hit and not failed and not flags and (strict_ok or not t.require_strict))
            unc = sum(float((summ.get(p) or {}).get("uncertainty") or 0.0) for p in ("dg_h", "e_hull", "p_synth"))
            complete.append((d["candidate_id"], abs(g), e, -s, unc))
        ranks[d["candidate_id"]] = r
    fronts = pareto_fronts([c[1:4] for c in complete])
    for (cid, *_), f in zip(complete, fronts):
        ranks[cid]["pareto_front"] = f
    order = sorted(complete, key=lambda c: (-ranks[c[0]]["score"], c[4]))
    for pos, c in enumerate(order, start=1):
        ranks[c[0]]["position"] = pos
    return ranks


def iter_score_docs(scores: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(scorer name, stored score) for every score in a candidate's nested ``scores`` tree.

    Scorer names with dots nest (``ehull.chgnet`` is ``scores["ehull"]["chgnet"]``); a stored score
    is the dict that carries ``property`` and ``ok``.
    """
    for key, value in scores.items():
        if not isinstance(value, dict):
            continue
        name = f"{prefix}.{key}" if prefix else key
        if "property" in value and "ok" in value:
            yield name, value
        else:
            yield from iter_score_docs(value, name)


def _failed_properties(scores: dict[str, Any]) -> set[str]:
    return {sc["property"] for _, sc in iter_score_docs(scores) if not sc["ok"]}
