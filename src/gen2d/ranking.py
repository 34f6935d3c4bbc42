"""Ranking: which candidates are hits, their desirability, Pareto fronts and order.

A hit has |ΔG_H| ≤ 0.2 eV, E_hull ≤ 0.1 eV/atom and P_synth ≥ 0.5 (all configurable in
:class:`RankThresholds`), and no property the scorers flagged as untrustworthy (a layer more than
0.05 eV/atom below its bulk references is not called stable); the rank score is the geometric mean of
three desirabilities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from gen2d.schemas import (
    HIT_BLOCKING_FLAGS,
    RANKED_PROPERTIES,
    PropertySummary,
    Rank,
    Validity,
    failed_properties,
    iter_score_docs,
    parse_summary,
)

#: E_hull desirability falls from 1 to 0 over this width (eV/atom) around the stability threshold
E_HULL_SOFTNESS = 0.03


class RankThresholds(BaseModel):
    """What makes a hit (DESIGN "Execution"); every threshold is configurable."""

    dg_h_window: float = Field(0.2, description="|ΔG_H| at most this, eV")
    e_hull_max: float = Field(0.1, description="E_hull at most this, eV/atom (stable)")
    p_synth_min: float = Field(0.5, description="P_synth at least this")
    require_strict: bool = Field(True, description="only strictly valid monolayers can be hits")


def _d_dg_h(dg_h: float, t: RankThresholds) -> float:
    """Gaussian on ΔG_H centred on 0 and 0.5 at the edge of the hit window (Sabatier optimum)."""
    sigma = t.dg_h_window / math.sqrt(2 * math.log(2))
    return math.exp(-0.5 * (dg_h / sigma) ** 2)


def _d_e_hull(e_hull: float, t: RankThresholds) -> float:
    """Logistic on E_hull, 0.5 at the stability threshold; written so no E_hull overflows ``exp``."""
    x = (e_hull - t.e_hull_max) / E_HULL_SOFTNESS
    if x > 0:
        z = math.exp(-x)  # far above the hull: z underflows to 0, never overflows
        return z / (1.0 + z)
    return 1.0 / (1.0 + math.exp(x))


def _d_p_synth(p_synth: float) -> float:
    return min(max(p_synth, 0.0), 1.0)


def desirability(dg_h: float, e_hull: float, p_synth: float, t: RankThresholds | None = None) -> float:
    """Geometric mean of three desirabilities in [0, 1].

    ΔG_H: a Gaussian centred on 0 that is 0.5 at the edge of the hit window (Sabatier optimum);
    E_hull: a logistic that is 0.5 at the stability threshold and falls off over 0.03 eV/atom;
    P_synth: the probability itself.

    >>> round(desirability(0.0, 0.1, 1.0) ** 3, 3)
    0.5
    >>> desirability(0.0, 25.0, 0.9)  # far above the hull: 0, not an overflow
    0.0
    """
    t = t or RankThresholds()
    return (_d_dg_h(dg_h, t) * _d_e_hull(e_hull, t) * _d_p_synth(p_synth)) ** (1.0 / 3.0)


def screen_score(values: Mapping[str, float | None], t: RankThresholds | None = None) -> float | None:
    """Geometric mean of the desirabilities of the properties present (None when none is)."""
    t = t or RankThresholds()
    parts = []
    if values.get("dg_h") is not None:
        parts.append(_d_dg_h(values["dg_h"], t))
    if values.get("e_hull") is not None:
        parts.append(_d_e_hull(values["e_hull"], t))
    if values.get("p_synth") is not None:
        parts.append(_d_p_synth(values["p_synth"]))
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


def _rank_inputs(d: Any) -> tuple[str, dict[str, PropertySummary], Mapping[str, Any], list[str], bool]:
    """(candidate_id, summary, scores, flags, strict ok) of a Candidate or a stored (partial) document."""
    if isinstance(d, Mapping):
        validity = Validity.model_validate(d.get("validity") or {})
        return (
            d["candidate_id"],
            parse_summary(d.get("summary")),
            d.get("scores") or {},
            sorted(d.get("flags") or {}),
            validity.strict_ok,
        )
    return d.candidate_id, parse_summary(d.summary), d.scores or {}, sorted(d.flags or {}), d.validity.strict_ok


def summary_cautions(summary: Mapping[str, PropertySummary], scores: Mapping[str, Any]) -> list[str]:
    """Hit-blocking flags (:data:`gen2d.schemas.HIT_BLOCKING_FLAGS`) of the results a summary holds.

    Read from ``summary.<property>.flags``; for documents stored before the summary carried flags,
    from the ``extra.flags`` of the score the summary names.
    """
    by_scorer = None
    found: set[str] = set()
    for s in summary.values():
        flags = list(s.flags or [])
        if not flags and s.scorer:
            if by_scorer is None:
                by_scorer = dict(iter_score_docs(scores))
            flags = list(((by_scorer.get(s.scorer) or {}).get("extra") or {}).get("flags") or [])
        found.update(f for f in flags if f in HIT_BLOCKING_FLAGS)
    return sorted(found)


def rank_candidates(docs: Sequence[Any], thresholds: RankThresholds | None = None) -> dict[str, Rank]:
    """Rank candidates (:class:`gen2d.store.Candidate` or stored documents, whole or projected to
    ``candidate_id``, ``summary``, ``scores``, ``validity`` and ``flags``) from their ``summary``.

    Returns ``{candidate_id: Rank}``: ``hit`` (True/False; None while a property is missing),
    ``score`` (desirability, None while incomplete), ``pareto_front`` (0 = best; None while
    incomplete), ``position`` (1-based order by score, ties broken by the lower summed uncertainty),
    ``missing`` and ``failed`` (properties whose scorers failed: such a candidate is never a hit),
    ``flags`` (numerical faults of its generation, e.g. diverged guidance: never a hit either),
    ``cautions`` (hit-blocking flags of its scores, e.g. ``below_reference_hull``: not a hit, since its
    E_hull says more about a missing reference phase than about the layer) and the thresholds used. ``screen_score`` (geometric mean of the desirabilities of the properties
    known so far) with ``n_properties`` lets a screening funnel pick which candidates get the
    expensive scorers next; it never makes a hit.
    """
    t = thresholds or RankThresholds()
    ranks: dict[str, Rank] = {}
    complete: list[tuple[str, float, float, float, float]] = []
    for d in docs:
        cid, summ, scores, flags, strict_ok = _rank_inputs(d)
        failed = sorted(failed_properties(scores) - set(summ))
        vals = {p: summ[p].value if p in summ else None for p in RANKED_PROPERTIES}
        missing = sorted(p for p, v in vals.items() if v is None)
        cautions = summary_cautions(summ, scores)
        r = Rank(
            missing=missing,
            failed=failed,
            flags=flags,
            cautions=cautions,
            strict_ok=strict_ok,
            n_properties=len(RANKED_PROPERTIES) - len(missing),
            screen_score=screen_score(vals, t),
            thresholds=t.model_dump(),
        )
        blocked = bool(failed or flags or cautions or (t.require_strict and not strict_ok))
        if blocked:
            r.hit = False
        if not missing:
            g, e, s = vals["dg_h"], vals["e_hull"], vals["p_synth"]
            r.score = round(desirability(g, e, s, t), 6)
            is_hit = abs(g) <= t.dg_h_window and e <= t.e_hull_max and s >= t.p_synth_min
            r.hit = bool(is_hit and not blocked)
            unc = sum(float(summ[p].uncertainty or 0.0) for p in RANKED_PROPERTIES)
            complete.append((cid, abs(g), e, -s, unc))
        ranks[cid] = r
    fronts = pareto_fronts([c[1:4] for c in complete])
    for (cid, *_), f in zip(complete, fronts):
        ranks[cid].pareto_front = f
    order = sorted(complete, key=lambda c: (-ranks[c[0]].score, c[4]))
    for pos, c in enumerate(order, start=1):
        ranks[c[0]].position = pos
    return ranks


def rank_documents(docs: Sequence[Any], thresholds: RankThresholds | None = None) -> dict[str, dict[str, Any]]:
    """:func:`rank_candidates` with each rank as the dict that is stored as ``rank``."""
    return {cid: r.model_dump() for cid, r in rank_candidates(docs, thresholds).items()}


__all__ = [
    "E_HULL_SOFTNESS",
    "RankThresholds",
    "desirability",
    "pareto_fronts",
    "rank_candidates",
    "rank_documents",
    "screen_score",
    "summary_cautions",
]
