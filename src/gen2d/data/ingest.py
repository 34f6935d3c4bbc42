"""Ingest: read records, validate them (ingest and strict), canonicalise and upsert them as candidates.

One bad input is a named rejection in the report; the valid inputs of the same batch are stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gen2d.data.readers import MonolayerRecord, ReadOutcome, Rejection
from gen2d.store import Candidate, CandidateStore, SourceInfo, make_candidate
from gen2d.structures import MAX_ATOMS_INGEST, validate_ingest


@dataclass
class IngestReport:
    """What an ingest run did; ``as_dict`` is the ``gen2d ingest --json`` document."""

    set: str
    store: str
    read: int = 0
    accepted: int = 0
    inserted: int = 0
    updated: int = 0
    strict_ok: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)
    candidate_ids: list[str] = field(default_factory=list)

    @property
    def reasons(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.rejected).most_common())

    def as_dict(self) -> dict[str, Any]:
        return {
            "set": self.set,
            "store": self.store,
            "read": self.read,
            "accepted": self.accepted,
            "accepted_fraction": round(self.accepted / self.read, 4) if self.read else 0.0,
            "inserted": self.inserted,
            "updated": self.updated,
            "strict_ok": self.strict_ok,
            "strict_fraction": round(self.strict_ok / self.accepted, 4) if self.accepted else 0.0,
            "rejected_count": len(self.rejected),
            "rejection_reasons": self.reasons,
            "rejected": self.rejected,
        }


def record_to_candidate(
    record: MonolayerRecord,
    set_name: str,
    kind: str = "dataset",
    max_atoms: int = MAX_ATOMS_INGEST,
    run_id: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> Candidate | Rejection:
    """A candidate for a record that passes ingest, else a named rejection (never raises)."""
    try:
        v = validate_ingest(record.structure, max_atoms=max_atoms)
        if not v.ok:
            return Rejection(record.source, record.source_id, v.reasons[0], "; ".join(v.messages))
        source = SourceInfo(
            kind=kind, set=set_name, source_id=record.source_id, run_id=run_id, parameters=parameters or {}
        )
        labels = {k: v2 for k, v2 in record.labels.items() if v2 is not None}
        if record.properties:
            labels["source_properties"] = record.properties
        return make_candidate(record.structure, source, labels=labels, ingest=v)
    except Exception as exc:  # geometry code can still meet something new; name it, keep going
        return Rejection(record.source, record.source_id, "invalid_structure", f"{type(exc).__name__}: {exc}"[:300])


def ingest_outcomes(
    outcomes: Iterable[ReadOutcome],
    store: CandidateStore,
    set_name: str,
    kind: str = "dataset",
    max_atoms: int = MAX_ATOMS_INGEST,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    run_id: str | None = None,
) -> IngestReport:
    """Validate and upsert every record; batches are written as they fill, so a crash keeps what was done."""
    report = IngestReport(set=set_name, store=store.uri)
    batch: list[Candidate] = []

    def flush() -> None:
        if batch:
            counts = store.upsert_candidates(batch)
            report.inserted += counts["inserted"]
            report.updated += counts["updated"]
            batch.clear()

    for outcome in outcomes:
        report.read += 1
        if outcome.rejection is not None:
            report.rejected.append(outcome.rejection.as_dict())
        else:
            res = record_to_candidate(outcome.record, set_name, kind, max_atoms, run_id)
            if isinstance(res, Rejection):
                report.rejected.append(res.as_dict())
            else:
                report.accepted += 1
                report.strict_ok += bool(res.validity["strict"]["ok"])
                report.candidate_ids.append(res.candidate_id)
                batch.append(res)
                if len(batch) >= batch_size:
                    flush()
        if progress:
            progress(1)
    flush()
    return report
