"""Candidate stores from a URI (monty, mongodb, memory), the candidate schema, and upserts by content hash.

``open_store("monty:///abs/path")`` (embedded, file-backed; the default ``./gen2d-data``),
``open_store("mongodb://user:pw@host/db")`` (maggma ``MongoStore``) and ``open_store("memory://")``
(mongomock, tests). Every write is a field-level upsert keyed by ``candidate_id``, so a rerun never
duplicates a document and never erases the scores already stored on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field
from pymatgen.core import Structure

from gen2d.schemas import DocumentModel, PropertySummary, Rank, Validity, iter_score_docs
from gen2d.scoring import ScoreResult
from gen2d.settings import get_settings
from gen2d.structures import (
    Validation,
    canonicalize,
    content_hash,
    structure_summary,
    validate_ingest,
    validate_strict,
)

DEFAULT_STORE_URI = "monty://./gen2d-data"
CANDIDATES = "candidates"
#: short names accepted by ``top --sort/--where`` for the summary of each property
FIELD_ALIASES = {
    "e_hull": "summary.e_hull.value",
    "dg_h": "summary.dg_h.value",
    "abs_dg_h": "summary.dg_h.abs_value",
    "p_synth": "summary.p_synth.value",
    "rank_score": "rank.score",
    "score": "rank.score",
}


class StoreUnavailable(RuntimeError):
    """The store cannot be opened or reached; the message never contains credentials."""


def redact_uri(uri: str) -> str:
    """The URI with any password replaced by ``***`` (safe to print, log or store)."""
    return re.sub(r"(?<=://)([^:/@]+):([^@/]*)@", r"\1:***@", uri)


def readable_secret_warning(path: str | Path) -> str | None:
    """A warning when a file that holds a password can be read by group or others (else None)."""
    import stat

    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text(errors="ignore")
    except OSError:
        return None
    has_secret = bool(
        re.search(r"(password|passwd|secret|api_key|token)\s*[:=]\s*\S+", text, re.I)
        or re.search(r"://[^:/@\s]+:[^@/\s]+@", text)
    )
    if has_secret and mode & (stat.S_IRGRP | stat.S_IROTH):
        return f"{p} holds credentials and can be read by other users (mode {stat.filemode(mode)}); run: chmod 600 {p}"
    return None


def resolve_store_uri(uri: str | None = None) -> str:
    """``uri`` if given, else ``$GEN2D_STORE``, else the embedded default."""
    return uri or get_settings().store or DEFAULT_STORE_URI


# ----------------------------------------------------------------------------------------------
# schema


class SourceInfo(DocumentModel):
    """Where a candidate came from: a dataset, a CIF set, the templates or a generator run."""

    kind: str  # dataset | cif-set | templates | generator
    set: str
    source_id: str = ""
    run_id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class ScoreDoc(DocumentModel):
    """A score as stored (``scores.<scorer>``): the scorer's result with its name.

    ``relaxed_structure`` is stored only when the result has one; scores stored before it was declared
    hold it in ``extra`` and are read the same (:meth:`to_result`).
    """

    scorer: str
    property: str
    value: float | None
    unit: str
    uncertainty: float | None = None
    ok: bool
    failure: dict[str, Any] | None = None
    relaxed_structure: dict[str, Any] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any]

    @classmethod
    def from_result(cls, scorer: str, result: ScoreResult) -> ScoreDoc:
        d = result.model_dump(mode="json")
        return cls(scorer=scorer, **d)

    def to_result(self) -> ScoreResult:
        """The stored score as a :class:`ScoreResult` (old layouts of the relaxed structure included)."""
        return ScoreResult.model_validate(self.model_dump(exclude={"scorer"}))

    def stored(self) -> dict[str, Any]:
        """The BSON body: as before ``relaxed_structure`` was declared, plus that key when it is set."""
        body = self.model_dump(mode="json")
        if body.get("relaxed_structure") is None:
            body.pop("relaxed_structure", None)
        return body


class Candidate(DocumentModel):
    """One material (one document), keyed by its content hash.

    ``validity``, ``summary`` and ``rank`` are typed; ``scores`` is the tree of stored scores (scorer
    names with dots nest), read one with :meth:`score` or all with :meth:`iter_scores`.
    """

    candidate_id: str
    formula: str
    chemsys: str
    elements: list[str]
    nelements: int = 0
    nsites: int
    structure: dict[str, Any]
    cell: dict[str, Any] = Field(default_factory=dict)
    sets: list[str] = Field(default_factory=list)
    sources: list[SourceInfo] = Field(default_factory=list)
    labels: dict[str, Any] = Field(default_factory=dict)
    flags: dict[str, Any] = Field(default_factory=dict)  # numerical faults at generation: never a hit
    validity: Validity = Field(default_factory=Validity)
    scores: dict[str, Any] = Field(default_factory=dict)
    summary: dict[str, PropertySummary] = Field(default_factory=dict)
    rank: Rank | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def get_structure(self) -> Structure:
        return Structure.from_dict(self.structure)

    def score(self, scorer: str) -> ScoreDoc | None:
        """The stored score of ``scorer`` (``ehull.chgnet`` is ``scores.ehull.chgnet``), or None."""
        raw = _get_path(self.scores, scorer)
        return ScoreDoc.model_validate({"scorer": scorer, **raw}) if isinstance(raw, dict) and "ok" in raw else None

    def iter_scores(self) -> list[ScoreDoc]:
        """Every stored score, typed, in the order of the tree."""
        return [ScoreDoc.model_validate({"scorer": name, **sc}) for name, sc in iter_score_docs(self.scores)]

    def value(self, prop: str) -> float | None:
        """The summarised value of ``prop`` (``e_hull``, ``dg_h``, ``p_synth``), None when unknown."""
        entry = self.summary.get(prop)
        return entry.value if entry is not None else None


def make_candidate(
    structure: Structure, source: SourceInfo, labels: dict[str, Any] | None = None, ingest: Validation | None = None
) -> Candidate:
    """Canonicalise a structure that passed ingest and record both validity verdicts.

    The stored structure is the canonical form; the strict verdict is taken on it.
    """
    ingest = ingest or validate_ingest(structure)
    if not ingest.ok:
        raise ValueError(f"structure failed ingest: {ingest.reasons}")
    can = canonicalize(structure)
    strict = validate_strict(can)
    summary = structure_summary(can)
    return Candidate(
        candidate_id=content_hash(can),
        formula=summary["formula"],
        chemsys=summary["chemsys"],
        elements=sorted(el.symbol for el in can.composition.elements),
        nelements=len(can.composition.elements),
        nsites=len(can),
        structure=can.as_dict(),
        cell={k: summary[k] for k in ("a", "b", "gamma", "area", "thickness")},
        sets=[source.set],
        sources=[source],
        labels=labels or {},
        validity={"ingest": ingest.as_dict(), "strict": strict.as_dict()},
    )


def _get_path(doc: dict[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def get_score(doc: dict[str, Any] | Candidate, scorer: str) -> dict[str, Any] | None:
    """The stored score of ``scorer`` as a dict (names like ``ehull.chgnet`` nest as scores.ehull.chgnet)."""
    scores = doc.scores if isinstance(doc, Candidate) else doc.get("scores", {})
    return _get_path(scores or {}, scorer)


def score_is_current(score: dict[str, Any] | None, current: dict[str, Any] | None, retry: Sequence[str] = ()) -> bool:
    """A stored score exists, holds every ``current`` value (dotted paths inside the score) and is not a failure
    whose reason is in ``retry`` (a scorer's ``retry_failures``)."""
    if score is None:
        return False
    if retry and not score.get("ok", True) and (score.get("failure") or {}).get("reason") in set(retry):
        return False
    return all(_get_path(score, path) == value for path, value in (current or {}).items())


# ----------------------------------------------------------------------------------------------
# store


MONTY_LOCK = ".gen2d.lock"


@contextlib.contextmanager
def monty_lock(database_path: str | Path) -> Iterator[None]:
    """The exclusive file lock (``<database_path>/.gen2d.lock``) that every process takes to open or write one
    embedded (montydb) database."""
    with open(Path(database_path) / MONTY_LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class CandidateStore:
    """Candidates in a maggma store. Use :func:`open_store` to get one.

    montydb (the embedded store) updates a document by reading and rewriting it, and several
    processes opening one database race on its config file: measured here, four concurrent writers
    lost 2 of 90 score updates and two of them failed to open. So for ``monty://`` every open and
    every write holds an exclusive file lock (``<path>/.gen2d.lock``); MongoDB needs none.
    """

    def __init__(self, store: Any, uri: str, lock_path: str | Path | None = None):
        self.store = store
        self.uri = redact_uri(uri)
        # montydb evaluates every query in Python over every document: letting it select stale results
        # measured slower than reading them all (scripts/bench_store.py), so only servers select them
        self.selects_stale = not uri.startswith("monty://")
        self._lock = threading.RLock()
        self._lock_path = Path(lock_path) if lock_path else None

    @contextlib.contextmanager
    def _write_lock(self):
        """Exclusive across threads and (for the embedded store) across processes."""
        with self._lock:
            if self._lock_path is None:
                yield
                return
            with monty_lock(self._lock_path.parent):
                yield

    # connection -------------------------------------------------------------------------------
    def connect(self) -> CandidateStore:
        try:
            with self._lock:  # an embedded store takes its file lock itself (LockedMontyStore)
                self.store.connect()
        except Exception as exc:
            raise StoreUnavailable(
                f"cannot open store {self.uri}: {type(exc).__name__}: {redact_uri(str(exc))[:300]}"
            ) from None
        return self

    def close(self) -> None:
        try:
            self.store.close()
        except Exception:
            pass

    def __enter__(self) -> CandidateStore:
        return self.connect()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def collection(self):
        return self.store._collection

    # writes -----------------------------------------------------------------------------------
    def upsert_candidates(self, candidates: Sequence[Candidate]) -> dict[str, int]:
        """Insert new candidates, merge sets/sources/labels/flags into existing ones; never touch scores.

        Returns counts of ``inserted`` and ``updated`` documents.
        """
        now = datetime.now(UTC)
        inserted = updated = 0
        for cand in candidates:
            d = cand.model_dump(
                mode="json",
                exclude={"scores", "summary", "rank", "created_at", "updated_at", "sets", "sources", "labels", "flags"},
            )
            update: dict[str, Any] = {
                "$set": {**d, "updated_at": now},
                "$setOnInsert": {"created_at": now, "scores": {}, "summary": {}, "rank": None},
                "$addToSet": {
                    "sets": {"$each": cand.sets},
                    "sources": {"$each": [s.model_dump(mode="json") for s in cand.sources]},
                },
            }
            for k, v in cand.labels.items():
                update["$set"][f"labels.{k}"] = v
            for k, v in cand.flags.items():  # merged, never cleared by a later clean run of the same structure
                update["$set"][f"flags.{k}"] = v
            with self._write_lock():
                res = self.collection.update_one({"candidate_id": cand.candidate_id}, update, upsert=True)
            if getattr(res, "upserted_id", None) is not None:
                inserted += 1
            else:
                updated += 1
        return {"inserted": inserted, "updated": updated}

    def set_score(self, candidate_id: str, scorer: str, result: ScoreResult | ScoreDoc) -> None:
        """Store one score on an existing candidate (field-level, so concurrent scorers never clash)."""
        doc = result if isinstance(result, ScoreDoc) else ScoreDoc.from_result(scorer, result)
        body = doc.stored()
        now = datetime.now(UTC)
        sets: dict[str, Any] = {f"scores.{scorer}": body, "updated_at": now}
        if doc.ok and doc.value is not None:
            sets[f"summary.{doc.property}"] = PropertySummary(
                value=doc.value,
                abs_value=abs(doc.value),
                unit=doc.unit,
                uncertainty=doc.uncertainty,
                scorer=scorer,
                flags=[str(f) for f in (doc.extra.get("flags") or [])],
            ).model_dump(mode="json")
        with self._write_lock():
            res = self.collection.update_one({"candidate_id": candidate_id}, {"$set": sets})
        if res.matched_count == 0:
            raise KeyError(f"no candidate {candidate_id} in {self.uri}")

    def set_rank(self, candidate_id: str, rank: Rank | dict[str, Any]) -> None:
        body = rank.model_dump(mode="json") if isinstance(rank, Rank) else rank
        with self._write_lock():
            self.collection.update_one(
                {"candidate_id": candidate_id}, {"$set": {"rank": body, "updated_at": datetime.now(UTC)}}
            )

    def set_fields(self, candidate_id: str, fields: dict[str, Any]) -> None:
        with self._write_lock():
            self.collection.update_one({"candidate_id": candidate_id}, {"$set": fields})

    # reads ------------------------------------------------------------------------------------
    def count(self, criteria: dict[str, Any] | None = None) -> int:
        return self.store.count(criteria or {})

    def get(self, candidate_id: str) -> Candidate | None:
        """The candidate ``candidate_id`` (a unique prefix is enough), typed; None when there is none."""
        doc = self.get_document(candidate_id)
        return Candidate.model_validate(doc) if doc is not None else None

    def get_document(self, candidate_id: str) -> dict[str, Any] | None:
        """The stored document of ``candidate_id`` (a unique prefix is enough) as it is in the database."""
        doc = self.collection.find_one({"candidate_id": candidate_id})
        if doc is None:
            # accept a unique prefix, as people type short ids
            matches = list(self.collection.find({"candidate_id": {"$regex": f"^{re.escape(candidate_id)}"}}).limit(2))
            doc = matches[0] if len(matches) == 1 else None
        if doc is not None:
            doc.pop("_id", None)
        return doc

    def query(
        self,
        criteria: dict[str, Any] | None = None,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
        properties: Sequence[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Documents matching ``criteria``; ``sort`` is [(field, 1 | -1)], missing values last."""
        criteria = dict(criteria or {})
        if sort:
            # missing or null sort keys go last, whatever the backend's ordering of None
            for f, _ in sort:
                criteria.setdefault(f, {})
                if isinstance(criteria[f], dict):
                    criteria[f] = {**criteria[f], "$ne": None}
        projection = {p: 1 for p in properties} if properties else None
        cursor = self.collection.find(criteria, projection)
        if sort:
            cursor = cursor.sort(list(sort))
        if limit:
            cursor = cursor.limit(limit)
        for doc in cursor:
            doc.pop("_id", None)
            yield doc

    def candidates_missing(
        self,
        scorer: str,
        criteria: dict[str, Any] | None = None,
        current: dict[str, Any] | None = None,
        properties: Sequence[str] | None = None,
        retry: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Candidates with no stored result (ok or failed) from ``scorer``: the work left to do.

        ``current`` (a scorer's ``current`` attribute: dotted paths inside a stored result and the value a
        result made by today's scorer holds there) also counts a stored result that differs as missing,
        e.g. an E_hull made under an older correction scheme. ``retry`` (a scorer's ``retry_failures``) counts
        a stored failure with one of those reasons as missing. ``properties`` limits the fields read
        (``candidate_id`` and the scorer's result are always read).
        """
        crit = dict(criteria or {})
        field = f"scores.{scorer}"
        retry = list(retry or ())
        if properties is not None:
            properties = list(dict.fromkeys(["candidate_id", field, *properties]))
        retried = [{f"{field}.ok": False, f"{field}.failure.reason": {"$in": retry}}] if retry else []
        if not current:  # the database does the whole selection
            missing = [{field: {"$exists": False}}] + retried
            crit = {"$and": [crit, {"$or": missing}]} if crit else {"$or": missing}
            return list(self.query(crit, properties=properties))
        if self.selects_stale and all(v is None or isinstance(v, (str, int, float, bool)) for v in current.values()):
            # the database narrows to results that are absent or differ at a current path (a missing path
            # differs too), so a store of up-to-date candidates is not read in full; Python then confirms
            # with exactly the rule the scoring job uses. Dict or list values are not compared by the
            # database (its embedded-document equality depends on key order).
            stale = [{field: {"$exists": False}}] + [{f"{field}.{p}": {"$ne": v}} for p, v in current.items()]
            stale += retried
            crit = {"$and": [crit, {"$or": stale}]} if crit else {"$or": stale}
        return [
            d
            for d in self.query(crit, properties=properties)
            if not score_is_current(get_score(d, scorer), current, retry)
        ]


def _monty_path(uri: str) -> str:
    rest = uri[len("monty://") :]
    if not rest:
        raise StoreUnavailable("monty:// needs a path, e.g. monty:///abs/path or monty://./gen2d-data")
    return str(Path(rest).expanduser())


def open_store(
    uri: str | None = None, collection: str = CANDIDATES, connect: bool = True, timeout_ms: int = 3000
) -> CandidateStore:
    """A connected :class:`CandidateStore` for ``uri`` (``$GEN2D_STORE`` or ``./gen2d-data`` by default).

    Parameters
    ----------
    uri
        ``monty:///abs/path`` or ``monty://rel/path`` (embedded montydb, sqlite), ``mongodb://`` or
        ``mongodb+srv://`` (maggma ``MongoStore.from_uri``; the database comes from the URI path, default
        ``gen2d``), ``memory://[name]`` (mongomock, for tests).
    """
    from maggma.stores import MemoryStore, MongoStore

    from gen2d.monty import LockedMontyStore

    uri = resolve_store_uri(uri)
    if uri.startswith("monty://"):
        path = _monty_path(uri)
        Path(path).mkdir(parents=True, exist_ok=True)
        store = LockedMontyStore(
            collection, database_path=path, database_name="gen2d", key="candidate_id", storage="sqlite"
        )
    elif uri.startswith("memory://"):
        name = uri[len("memory://") :] or collection
        store = MemoryStore(collection_name=name, key="candidate_id")
    elif uri.startswith(("mongodb://", "mongodb+srv://")):
        parts = urlsplit(uri)
        database = parts.path.lstrip("/") or "gen2d"
        store = MongoStore.from_uri(
            uri,
            collection,
            database=database,
            key="candidate_id",
            mongoclient_kwargs={"serverSelectionTimeoutMS": timeout_ms},
        )
    else:
        raise StoreUnavailable(f"unsupported store URI {redact_uri(uri)!r}: use monty://, mongodb:// or memory://")
    lock = Path(_monty_path(uri)) / MONTY_LOCK if uri.startswith("monty://") else None
    cs = CandidateStore(store, uri, lock_path=lock)
    if connect:
        cs.connect()
        if uri.startswith(("mongodb://", "mongodb+srv://")):
            try:
                cs.store._coll.database.client.admin.command("ping")  # fail now, not at first write
            except Exception as exc:
                raise StoreUnavailable(f"cannot reach MongoDB at {redact_uri(uri)}: {type(exc).__name__}") from None
    return cs


def parse_where(expressions: Iterable[str]) -> dict[str, Any]:
    """Mongo criteria from ``FIELD<VALUE``-style filters (<, <=, >, >=, =, !=); aliases allowed.

    >>> parse_where(["e_hull<=0.1", "formula=MoS2"])
    {'summary.e_hull.value': {'$lte': 0.1}, 'formula': 'MoS2'}
    """
    ops = [("<=", "$lte"), (">=", "$gte"), ("!=", "$ne"), ("<", "$lt"), (">", "$gt"), ("=", "$eq")]
    crit: dict[str, Any] = {}
    for expr in expressions:
        for sym, op in ops:  # noqa: B007 - op is read after the loop breaks
            if sym in expr:
                field, raw = (x.strip() for x in expr.split(sym, 1))
                break
        else:
            raise ValueError(f"cannot parse filter {expr!r}; use FIELD<VALUE, FIELD>=VALUE, FIELD=VALUE ...")
        if not field:
            raise ValueError(f"filter {expr!r} has no field")
        field = FIELD_ALIASES.get(field, field)
        value: Any
        try:
            value = float(raw)
        except ValueError:
            value = {"true": True, "false": False}.get(raw.lower(), raw)
        if op == "$eq":
            crit[field] = value
        else:
            crit.setdefault(field, {})
            if isinstance(crit[field], dict):
                crit[field][op] = value
    return crit
