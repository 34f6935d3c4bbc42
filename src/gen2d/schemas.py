"""Typed parts of a stored candidate document: validity, the per-property summary and the rank.

They read every document gen2d has stored (``extra="allow"`` keeps keys a newer or older gen2d
wrote), and they dump to the same BSON shape, so readers get attributes instead of nested ``.get()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer

#: the properties a rank combines, in the order of the Pareto objectives
RANKED_PROPERTIES = ("dg_h", "e_hull", "p_synth")


class DocumentModel(BaseModel):
    """A part of a stored document. Keys it does not declare are kept (``extra="allow"``).

    ``doc["key"]`` and ``doc.get("key")`` still work, for readers written against the plain dicts
    gen2d returned before; new code reads attributes.
    """

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, key: str) -> Any:
        if key in type(self).model_fields or key in (self.model_extra or {}):
            return getattr(self, key)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


class ValidationDoc(DocumentModel):
    """One level of validity (``ingest`` or ``strict``) as stored: ok, the named reasons and metrics."""

    level: str = ""
    ok: bool = False
    reasons: list[str] = Field(default_factory=list)
    messages: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)


class Validity(DocumentModel):
    """Both validity verdicts of a candidate; a level that was never taken reads as not ok."""

    ingest: ValidationDoc = Field(default_factory=ValidationDoc)
    strict: ValidationDoc = Field(default_factory=ValidationDoc)

    @property
    def strict_ok(self) -> bool:
        return bool(self.strict.ok)


class PropertySummary(DocumentModel):
    """``summary.<property>``: the ok value a candidate holds for one property, and who made it."""

    value: float | None = None
    abs_value: float | None = None
    unit: str | None = None
    uncertainty: float | None = None
    scorer: str | None = Field(None, description="registry name of the scorer whose result this is")
    flags: list[str] = Field(
        default_factory=list, description="named cautions the scorer raised, e.g. below_reference_hull"
    )

    @model_serializer(mode="wrap")
    def _omit_empty_flags(self, handler: Any) -> dict[str, Any]:
        """An unflagged summary dumps to the shape stored before summaries carried flags."""
        data = handler(self)
        if isinstance(data, dict) and not data.get("flags"):
            data.pop("flags", None)
        return data


class Rank(DocumentModel):
    """``rank``: the verdict of :func:`gen2d.ranking.rank_candidates` on one candidate.

    ``hit`` is None while a property is missing; ``score`` (desirability) and ``pareto_front``
    (0 = best) are None until all three properties are known; ``screen_score`` orders incomplete
    candidates for a screening funnel and never makes a hit.
    """

    hit: bool | None = None
    score: float | None = None
    pareto_front: int | None = None
    position: int | None = Field(None, description="1-based order by score, ties by lower summed uncertainty")
    missing: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list, description="properties whose scorers failed")
    flags: list[str] = Field(default_factory=list, description="numerical faults of the generation")
    cautions: list[str] = Field(
        default_factory=list,
        description="named cautions of the scored properties that keep a candidate from being a hit, "
        "e.g. below_reference_hull (a layer below its bulk references: a reference is missing)",
    )
    strict_ok: bool = False
    n_properties: int = 0
    screen_score: float | None = None
    thresholds: dict[str, Any] = Field(default_factory=dict)


#: score flags that say a property's value cannot be trusted for a hit (see :func:`gen2d.ranking.rank_candidates`)
HIT_BLOCKING_FLAGS = frozenset({"below_reference_hull"})


def parse_summary(summary: Mapping[str, Any] | None) -> dict[str, PropertySummary]:
    """``summary`` of a stored document as typed entries (already typed entries pass through)."""
    return {
        prop: s if isinstance(s, PropertySummary) else PropertySummary.model_validate(s or {})
        for prop, s in (summary or {}).items()
    }


def iter_score_docs(scores: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
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


def failed_properties(scores: Mapping[str, Any]) -> set[str]:
    """Properties of which some stored score failed."""
    return {sc["property"] for _, sc in iter_score_docs(scores) if not sc["ok"]}
