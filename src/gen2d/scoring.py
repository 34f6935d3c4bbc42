"""Scorer and Generator protocols, the scorer base class, the plugin registry (entry points) and the
result schema.

The core never imports a plugin by name: everything is found through the entry-point groups
``gen2d.scorers``, ``gen2d.generators`` and ``gen2d.calculators``. Ranking lives in
:mod:`gen2d.ranking`; its names are re-exported here for older imports.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.metadata as md
import logging
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
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
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class Failure(BaseModel):
    """A named failure: ``reason`` is a stable snake_case token, ``message`` is for people."""

    reason: str
    message: str = ""


#: where a result made before ``ScoreResult.relaxed_structure`` was declared kept the relaxed structure
#: (``ehull.*`` wrote ``extra.relaxed_structure``, ``dgh.mlip`` wrote ``extra.relaxed_slab``)
LEGACY_RELAXED_KEYS = ("relaxed_structure", "relaxed_slab")


class ScoreResult(BaseModel):
    """One scorer's verdict on one structure.

    ``value`` is None exactly when ``ok`` is False. ``relaxed_structure`` is the structure the scorer
    relaxed (a pymatgen ``Structure.as_dict()``): every stability scorer writes it, and every HER scorer
    reads it from the ``e_hull`` result in its context (:func:`relaxed_from_context`) and writes the
    slab it put H on. ``extra`` holds other small outputs (per-site data, decomposition products);
    large ones go to the job store's data store.
    """

    property: str
    value: float | None = None
    unit: str
    uncertainty: float | None = None
    ok: bool = True
    failure: Failure | None = None
    relaxed_structure: dict[str, Any] | None = Field(
        None, description="the relaxed structure (pymatgen Structure dict); read it with relaxed()"
    )
    extra: dict[str, Any] = Field(default_factory=dict)
    provenance: Provenance

    @model_validator(mode="before")
    @classmethod
    def _lift_legacy_relaxed_structure(cls, data: Any) -> Any:
        """Results stored before the field existed hold the structure in ``extra``: read it from there."""
        if not isinstance(data, dict) or data.get("relaxed_structure") is not None:
            return data
        extra = data.get("extra")
        if not isinstance(extra, dict) or not any(k in extra for k in LEGACY_RELAXED_KEYS):
            return data
        extra = dict(extra)
        found = [extra.pop(k) for k in LEGACY_RELAXED_KEYS if k in extra]
        return {**data, "extra": extra, "relaxed_structure": next((v for v in found if v is not None), None)}

    @field_validator("relaxed_structure", mode="before")
    @classmethod
    def _structure_as_dict(cls, value: Any) -> Any:
        return value.as_dict() if isinstance(value, Structure) else value

    def relaxed(self) -> Structure | None:
        """The relaxed structure as a pymatgen ``Structure`` (None when the result carries none)."""
        return Structure.from_dict(self.relaxed_structure) if self.relaxed_structure else None

    @classmethod
    def failed(
        cls,
        prop: str,
        unit: str,
        reason: str,
        message: str,
        provenance: Provenance,
        relaxed_structure: dict[str, Any] | Structure | None = None,
        **extra: Any,
    ) -> ScoreResult:
        return cls(
            property=prop,
            unit=unit,
            ok=False,
            value=None,
            relaxed_structure=relaxed_structure,
            failure=Failure(reason=reason, message=message),
            provenance=provenance,
            extra=extra,
        )


def relaxed_structure_of(result: ScoreResult | Mapping[str, Any] | None) -> Structure | None:
    """The relaxed structure a result carries: a :class:`ScoreResult` or a stored score, either layout.

    Stored scores made before the field was declared hold it in ``extra.relaxed_structure``
    (``ehull.*``) or ``extra.relaxed_slab`` (``dgh.mlip``); both are read.
    """
    if result is None:
        return None
    if not isinstance(result, ScoreResult):
        result = ScoreResult.model_validate({k: v for k, v in result.items() if k != "scorer"})
    return result.relaxed()


def relaxed_from_context(
    context: Mapping[str, ScoreResult] | None, prop: str = "e_hull"
) -> tuple[Structure, ScoreResult] | None:
    """The relaxed structure of the ok ``prop`` result in a scorer's context, with that result.

    This is how an HER scorer (``requires = ("e_hull",)``) takes the slab a stability scorer relaxed;
    None when the context holds no ok result for ``prop`` or that result has no structure.
    """
    upstream = (context or {}).get(prop)
    if upstream is None or not upstream.ok:
        return None
    structure = upstream.relaxed()
    return (structure, upstream) if structure is not None else None


@runtime_checkable
class Scorer(Protocol):
    """Scores a batch of structures; returns exactly one result per structure, in order.

    This is the least a scorer plugin must provide; subclass :class:`BaseScorer` to get ``current``,
    ``batch_size``, ``explain``, ``train`` and option checking as well.

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

    def score(
        self, structures: Sequence[Structure], context: Sequence[dict[str, ScoreResult]] | None = None
    ) -> list[ScoreResult]:
        """Score a batch. A failure in one structure is a failed result, never an exception."""
        ...


class ScorerOptions(BaseModel):
    """A scorer's constructor options. A key that is not a field is refused by name, so a typo in a
    workflow YAML fails when the flow is built, not on a worker."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class ScorerOptionsError(ValueError):
    """Options a scorer does not accept; the message names the scorer and every bad option."""


class BaseScorer:
    """The scorer base class: what :class:`Scorer` requires, plus the optional parts with their defaults.

    A plugin subclasses it, sets ``name``, ``property``, ``unit`` and ``requires``, declares its
    constructor options as ``Options`` (a :class:`ScorerOptions` subclass, so unknown keys are refused)
    and implements :meth:`score`. Plugins that only satisfy the :class:`Scorer` protocol keep working:
    :func:`as_scorer` gives them these defaults.

    Attributes
    ----------
    name, property, unit, requires
        As in :class:`Scorer`.
    Options : type[pydantic.BaseModel]
        The constructor options, validated when a flow is built and by :func:`get_scorer`.
    current : dict or None
        Dotted paths inside a stored result and the value a result made by today's scorer holds there
        (e.g. ``{"provenance.settings.correction_scheme": "mp2020-v2"}``); a stored result that differs
        is work left to do (:meth:`gen2d.store.CandidateStore.candidates_missing`). None: any stored
        result is current.
    retry_failures : tuple of str
        Failure reasons that a rerun tries again instead of keeping: what the world, not the structure, decided
        (a backend that was missing, an SCF that may converge with another route). Default
        ``("calculator_unavailable",)``, so installing a missing backend and rerunning fills the results in.
    batch_size : int
        Structures per call of :meth:`score` inside a scoring job (results are stored after each call).

    Examples
    --------
    >>> class Area(BaseScorer):
    ...     name, property, unit = "area.demo", "area", "Å^2"
    ...     class Options(ScorerOptions):
    ...         scale: float = 1.0
    ...     def __init__(self, scale: float = 1.0):
    ...         self.scale = scale
    ...     def score(self, structures, context=None):
    ...         return [ScoreResult(property="area", unit="Å^2", provenance=Provenance(plugin=self.name),
    ...                             value=self.scale * s.lattice.volume / s.lattice.c) for s in structures]
    >>> Area.check_options({"scale": "2"})
    {'scale': 2.0}
    """

    name: str = ""
    property: str = ""
    unit: str = ""
    requires: tuple[str, ...] = ()
    Options: ClassVar[type[BaseModel]] = ScorerOptions
    current: dict[str, Any] | None = None
    retry_failures: tuple[str, ...] = ("calculator_unavailable",)
    batch_size: int = 8

    def available(self) -> tuple[bool, str]:
        """(True, "") when the scorer can run here, else (False, reason)."""
        return True, ""

    def score(
        self, structures: Sequence[Structure], context: Sequence[dict[str, ScoreResult]] | None = None
    ) -> list[ScoreResult]:
        """Score a batch; one result per structure, in order. A failure is a failed result, never an exception."""
        raise NotImplementedError(f"{type(self).__name__} does not implement score()")

    def cannot_score(self, structure: Structure) -> tuple[str, str] | None:
        """(failure reason, message) when this scorer can never score ``structure``, known without running
        anything (an element its model or basis set lacks); None when it may. A flow stage that scores only the
        top k (:func:`gen2d.jobs.candidates_to_score`) gives such a candidate's slot to the next one, and its
        scoring stores the named failure at once. The default: None."""
        return None

    def explain(self, structure: Structure) -> dict[str, Any]:
        """What the scorer does with one structure; by default its full result."""
        return {
            "scorer": self.name,
            "property": self.property,
            "unit": self.unit,
            "result": self.score([structure])[0].model_dump(mode="json"),
        }

    def train(self, **options: Any) -> dict[str, Any]:
        """Train the scorer's model; returns ``checkpoint``/``model`` (a path) and ``metrics``."""
        raise NotImplementedError(f"scorer {self.name or type(self).__name__} has nothing to train")

    @classmethod
    def check_options(cls, options: Mapping[str, Any] | None, name: str | None = None) -> dict[str, Any]:
        """``options`` validated by ``Options``: the given keys with their values coerced to the declared types.

        Raises
        ------
        ScorerOptionsError
            Naming the scorer and each unknown or invalid option (with the closest known name).
        """
        return check_options(cls.Options, options, name or cls.name or cls.__name__)


def trains(scorer: Any) -> bool:
    """Whether a scorer (class or instance) has its own ``train``, not only :meth:`BaseScorer.train`."""
    fn = getattr(scorer, "train", None)
    if fn is None:
        return False
    if isinstance(scorer, _ProtocolScorer):
        return trains(scorer.wrapped)
    return getattr(fn, "__func__", fn) is not BaseScorer.train


def check_options(model: type[BaseModel], options: Mapping[str, Any] | None, owner: str) -> dict[str, Any]:
    """Validate plugin ``options`` with the pydantic ``model``; the given keys, values coerced."""
    options = dict(options or {})
    try:
        validated = model.model_validate(options)
    except ValidationError as exc:
        known = sorted(model.model_fields)
        problems, unknown = [], False
        for e in exc.errors():
            key = ".".join(str(x) for x in e["loc"]) or "(options)"
            if e["type"] == "extra_forbidden":
                unknown = True
                close = difflib.get_close_matches(str(e["loc"][0]), known, n=1)
                problems.append(f"unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            else:
                problems.append(f"option {key!r}: {e['msg']}")
        listing = f" (known options: {', '.join(known)})" if unknown else ""
        raise ScorerOptionsError(f"{owner}: " + "; ".join(problems) + listing) from None
    return {k: getattr(validated, k) for k in options if k in model.model_fields} | {
        k: v for k, v in options.items() if k not in model.model_fields
    }


class _ProtocolScorer(BaseScorer):
    """A scorer that satisfies only the :class:`Scorer` protocol, with the base class's defaults."""

    def __init__(self, scorer: Any):
        self.wrapped = scorer
        self.name = getattr(scorer, "name", "")
        self.property = getattr(scorer, "property", "")
        self.unit = getattr(scorer, "unit", "")
        self.requires = tuple(getattr(scorer, "requires", ()) or ())
        self.current = getattr(scorer, "current", None)
        self.retry_failures = tuple(getattr(scorer, "retry_failures", BaseScorer.retry_failures) or ())
        self.batch_size = int(getattr(scorer, "batch_size", 0) or BaseScorer.batch_size)

    def available(self) -> tuple[bool, str]:
        probe = getattr(self.wrapped, "available", None)
        return probe() if callable(probe) else (True, "")

    def score(self, structures, context=None):
        return self.wrapped.score(structures, context)

    def cannot_score(self, structure):
        own = getattr(self.wrapped, "cannot_score", None)
        return own(structure) if callable(own) else None

    def explain(self, structure):
        own = getattr(self.wrapped, "explain", None)
        return own(structure) if callable(own) else super().explain(structure)

    def train(self, **options):
        own = getattr(self.wrapped, "train", None)
        return own(**options) if callable(own) else super().train(**options)

    def __getattr__(self, attr: str) -> Any:  # anything else the plugin defines
        if attr == "wrapped":
            raise AttributeError(attr)
        return getattr(self.wrapped, attr)


def as_scorer(scorer: Any) -> BaseScorer:
    """``scorer`` as a :class:`BaseScorer`: itself when it is one, else wrapped with the defaults."""
    return scorer if isinstance(scorer, BaseScorer) else _ProtocolScorer(scorer)


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
        "flagged candidate is stored, listed by `gen2d top --show-failed` and never a hit",
    )


@runtime_checkable
class Generator(Protocol):
    """Yields candidate monolayers. ``cif-set`` and ``templates`` are the built-in ones."""

    name: str

    def available(self) -> tuple[bool, str]: ...

    def generate(self, n: int | None = None, seed: int = 0, **params: Any) -> Iterator[GeneratedStructure]: ...


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
    return _factory(kind, name)(**options)


def _factory(kind: str, name: str) -> Any:
    for ep in _entry_points(PLUGIN_GROUPS[kind]):
        if ep.name == name:
            return ep.load()
    known = ", ".join(ep.name for ep in _entry_points(PLUGIN_GROUPS[kind])) or "none"
    raise KeyError(f"no {kind} plugin named {name!r} (registered: {known})")


def validate_scorer_options(name: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options of scorer ``name`` validated by its ``Options`` model (coerced to the declared types).

    Raises ``KeyError`` for an unregistered scorer and :class:`ScorerOptionsError` naming each bad
    option. A scorer that declares no ``Options`` (the bare protocol) gets its options unchecked, and
    so does one whose module does not import here (it may on a worker with its extra installed).
    """
    try:
        factory = _factory("scorer", name)
    except KeyError:
        raise
    except Exception as exc:
        log.warning(
            "scorer %s does not import here (%s: %s); its options are not checked", name, type(exc).__name__, exc
        )
        return dict(options or {})
    model = getattr(factory, "Options", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return check_options(model, options, f"scorer {name}")
    return dict(options or {})


def get_scorer(name: str, **options: Any) -> BaseScorer:
    """Instantiate the scorer registered as ``name`` with ``options`` (its config, checked by its ``Options``)."""
    factory = _factory("scorer", name)
    model = getattr(factory, "Options", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        options = check_options(model, options, f"scorer {name}")
    return as_scorer(factory(**options))


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


def device_name(device: str = "auto") -> str:
    """The torch device a plugin runs on: ``auto`` is ``cuda`` where torch sees a GPU, else ``cpu``; any other
    name is returned as given (torch imported only for ``auto``)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a checkpoint file, for provenance."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _settings_of_current(current: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``provenance.settings`` that a scorer's ``current`` requires, as nested dicts: a failure the harness
    writes for a crashed batch carries them, so it counts as made by today's scorer (kept, like any failure whose
    reason is not retried) and a scorer with other settings redoes it."""
    settings: dict[str, Any] = {}
    prefix = "provenance.settings."
    for path, value in (current or {}).items():
        if not path.startswith(prefix):
            continue
        *parents, leaf = path[len(prefix) :].split(".")
        node = settings
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return settings


def score_in_batches(
    scorer: Scorer,
    structures: Sequence[Structure],
    batch_size: int = 32,
    context: Sequence[dict[str, ScoreResult]] | None = None,
) -> Iterable[list[ScoreResult]]:
    """Run ``scorer`` over ``structures`` in batches; a batch that raises becomes per-item failures."""
    for start in range(0, len(structures), batch_size):
        chunk = structures[start : start + batch_size]
        ctx = context[start : start + batch_size] if context is not None else None
        try:
            results = scorer.score(chunk, ctx)
            if len(results) != len(chunk):
                raise RuntimeError(f"{scorer.name} returned {len(results)} results for {len(chunk)} inputs")
        except Exception as exc:
            prov = Provenance(
                plugin=scorer.name,
                settings=_settings_of_current(getattr(scorer, "current", None)),
                notes=["batch raised; every item marked failed"],
            )
            results = [
                ScoreResult.failed(scorer.property, scorer.unit, "scorer_crashed", f"{type(exc).__name__}: {exc}", prov)
                for _ in chunk
            ]
        yield results


# ranking moved to gen2d.ranking and the stored-document helpers to gen2d.schemas; these names stay
# importable from here
from gen2d.ranking import (  # noqa: E402
    RankThresholds,
    desirability,
    pareto_fronts,
    rank_candidates,
    rank_documents,
    screen_score,
)
from gen2d.schemas import iter_score_docs  # noqa: E402

__all__ = [
    "BaseScorer",
    "CALCULATOR_GROUP",
    "Failure",
    "GENERATOR_GROUP",
    "GeneratedStructure",
    "Generator",
    "LEGACY_RELAXED_KEYS",
    "PLUGIN_GROUPS",
    "PluginInfo",
    "PluginUnavailable",
    "Provenance",
    "RankThresholds",
    "SCORER_GROUP",
    "ScoreResult",
    "Scorer",
    "ScorerOptions",
    "ScorerOptionsError",
    "as_scorer",
    "check_options",
    "desirability",
    "discover",
    "file_sha256",
    "get_calculator",
    "get_generator",
    "get_scorer",
    "iter_score_docs",
    "package_version",
    "pareto_fronts",
    "rank_candidates",
    "rank_documents",
    "relaxed_from_context",
    "relaxed_structure_of",
    "score_in_batches",
    "screen_score",
    "trains",
    "validate_scorer_options",
]
