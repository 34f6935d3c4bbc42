"""Steering by the real scorers: Feynman–Kac resampling of a sampling batch on its predicted clean structures.

The batch is a population of particles. Every ``interval`` reverse steps inside the steering window, the
sampler decodes each particle's clean estimate x̂₀ (the same decode as its output), scores it with a
:class:`Reward` and multiplies the particle's weight by the difference potential
G_k = exp(λ (r(x̂₀_k) − r(x̂₀_{k−1}))) (r(x̂₀_0) = 0). The potentials telescope, so the weighted batch targets
p(x) exp(λ r(x)) with r taken on the last x̂₀ (Singhal et al. 2025, "A general framework for inference-time
scaling and steering of diffusion models"; Wu et al. 2023, "Practical and asymptotically exact conditional
sampling in diffusion models"). When the effective sample size falls below ``ess_threshold`` × the batch
size, the batch is resampled (systematic resampling) and every particle's state is copied from its
ancestor; the weights then restart at 1.

A reward is a weighted sum of terms named after what scores them:

- a registered scorer (``dgh.dimenet``, ``synth.pu``, ``ehull.chgnet``, ...), read through its declared
  property: ``dg_h`` gives log P(|ΔG_H| ≤ window) under N(mean, σ²) with σ the scorer's calibrated
  uncertainty (or −|mean| − k σ), ``p_synth`` gives log P_synth, ``e_hull`` log of the ranking's logistic
  stability desirability;
- ``stability.<calculator>``: a single-point MLIP energy (or a few FIRE steps) of x̂₀, MP2020-corrected, and
  its E_hull against the cached reference phases (:class:`StabilityProxyReward`): a relaxation-free proxy
  of ``ehull.<calculator>``;
- anything registered with :func:`register_reward_term`.

Every term value is a log-probability-like number (≤ 0 for the built-in terms, so λ = 1 with unit weights
tilts p(x) by the product of the scorers' probabilities of a hit). A term that fails on a structure (the
scorer raises, returns a failure or a non-finite value, the decode failed) gives ``floor`` instead, never NaN.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SteeringError(ValueError):
    """A steering configuration that cannot run (unknown reward term, bad option)."""


class UnknownRewardTerm(SteeringError):
    """A reward term name that is neither registered nor a scorer nor ``stability.<calculator>``."""


# ------------------------------------------------------------------------------------------------
# SMC arithmetic


def normalised_weights(log_weights: np.ndarray) -> np.ndarray:
    """Weights summing to 1 from log-weights (log-sum-exp; ``-inf`` is weight 0; all ``-inf`` is uniform).

    >>> normalised_weights(np.array([0.0, np.log(3.0)])).round(3).tolist()
    [0.25, 0.75]
    """
    lw = np.asarray(log_weights, dtype=float)
    if lw.size == 0:
        return lw
    if np.isnan(lw).any():
        raise ValueError("log-weights contain NaN")
    top = lw.max()
    if not np.isfinite(top):  # every particle has weight 0 (or +inf): nothing to prefer
        return np.full(lw.shape, 1.0 / lw.size) if top == -np.inf else (lw == np.inf) / (lw == np.inf).sum()
    w = np.exp(lw - top)
    return w / w.sum()


def effective_sample_size(log_weights: np.ndarray) -> float:
    """Kish's ESS = 1 / Σ w̄², w̄ the normalised weights: the batch size for equal weights, 1 for one particle.

    >>> effective_sample_size(np.zeros(8))
    8.0
    >>> round(effective_sample_size(np.array([0.0, -np.inf, -np.inf])), 6)
    1.0
    """
    w = normalised_weights(log_weights)
    return float(1.0 / np.sum(w**2)) if w.size else 0.0


def systematic_resample(weights: np.ndarray, u: float) -> np.ndarray:
    """Ancestor index of each of ``n`` offspring by systematic resampling with the one uniform ``u`` ∈ [0, 1).

    Offspring i takes the particle whose cumulative-weight interval holds (i + u) / n, so particle j gets
    ⌊n w_j⌋ or ⌈n w_j⌉ copies, their expectation n w_j. The ancestors come back sorted.

    >>> systematic_resample(np.array([0.5, 0.25, 0.25, 0.0]), 0.3).tolist()
    [0, 0, 1, 2]
    """
    w = np.asarray(weights, dtype=float)
    n = w.size
    if not 0.0 <= u < 1.0:
        raise ValueError(f"u must lie in [0, 1), got {u}")
    if n == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    cum = np.cumsum(w / w.sum())
    cum[-1] = 1.0  # no offspring falls past the last particle through round-off
    return np.searchsorted(cum, (np.arange(n) + u) / n, side="right").clip(max=n - 1)


def atom_index_of(ancestors: Sequence[int], n_atoms: Sequence[int]) -> np.ndarray:
    """Indices into a batch's concatenated atoms that copy whole particles: the atoms of ``ancestors[0]``,
    then those of ``ancestors[1]``, ... Particles may differ in size (a variable-size graph batch).

    >>> atom_index_of([1, 1, 0], [2, 3]).tolist()
    [2, 3, 4, 2, 3, 4, 0, 1]
    """
    ptr = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
    if len(ancestors) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(ptr[a], ptr[a + 1]) for a in ancestors]).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# reward terms


class RewardTerm(Protocol):
    """One reward term: a value per structure; ``None``, a non-finite value or raising means failure."""

    def __call__(self, structures: Sequence[Any]) -> Sequence[float | None]: ...


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScorerRewardOptions(_Forbid):
    """Options of a scorer-backed term (:class:`ScorerReward`); each applies to one scored property."""

    scorer_options: dict[str, Any] = Field(default_factory=dict, description="the scorer's own options")
    dg_h_mode: Literal["window", "mean_std"] = Field(
        "window",
        description="dg_h: 'window' = log P(|ΔG_H| ≤ dg_h_window) under N(mean, max(σ, sigma_min)²), σ the "
        "scorer's uncertainty; 'mean_std' = −(|mean| + k σ) / dg_h_window",
    )
    dg_h_window: float = Field(0.2, gt=0, description="eV; the hit window of gen2d.ranking")
    sigma_min: float = Field(0.05, gt=0, description="eV; floor on σ, so a scorer without uncertainty still works")
    k: float = Field(1.0, ge=0, description="dg_h 'mean_std': weight of σ")
    e_hull_threshold: float = Field(0.1, description="eV/atom; e_hull: 0.5 desirability here (the hit threshold)")
    e_hull_softness: float = Field(0.03, gt=0, description="eV/atom; width of the e_hull logistic (gen2d.ranking's)")


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _window_log_prob(mean: float, sigma: float, window: float) -> float:
    """log P(|X| ≤ window) for X ~ N(mean, σ²), computed from the nearer tail so it stays finite far out."""
    a, b = (-window - mean) / sigma, (window - mean) / sigma
    r2 = math.sqrt(2.0)
    # P = Φ(b) − Φ(a) = Q(a) − Q(b): the form whose terms are small tails (never 1 − 1) far from the window
    if mean > 0:
        p = 0.5 * (math.erfc(-b / r2) - math.erfc(-a / r2))
    else:
        p = 0.5 * (math.erfc(a / r2) - math.erfc(b / r2))
    return math.log(p) if p > 0 else -math.inf


_SCORERS: dict[str, Any] = {}


def shared_scorer(name: str, options: Mapping[str, Any] | None = None):
    """A registered scorer, built once per process and option set (its models load once)."""
    import json

    from gen2d.scoring import get_scorer

    key = json.dumps([name, dict(options or {})], sort_keys=True, default=str)
    if key not in _SCORERS:
        _SCORERS[key] = get_scorer(name, **dict(options or {}))
    return _SCORERS[key]


class ScorerReward:
    """A reward term read from a registered scorer through the property it declares.

    ``dg_h``: log P(|ΔG_H| ≤ window) under the scorer's mean and calibrated uncertainty (``dg_h_mode``
    'window'), or −(|mean| + k σ) / window ('mean_std'); ``p_synth``: log P_synth; ``e_hull``: log of the
    logistic stability desirability of :mod:`gen2d.ranking`. A result that is not ok is a failure (floor).
    """

    Options = ScorerRewardOptions

    def __init__(self, scorer: str, **options: Any):
        self.options = ScorerRewardOptions(**options)
        self.scorer_name = scorer
        self.scorer = shared_scorer(scorer, self.options.scorer_options)
        self.property = getattr(self.scorer, "property", None)
        if self.property not in ("dg_h", "p_synth", "e_hull"):
            raise UnknownRewardTerm(
                f"scorer {scorer!r} scores {self.property!r}; only dg_h, p_synth and e_hull have a built-in "
                "reward. Register one with gen2d.diffusion.steering.register_reward_term"
            )

    def warm_up(self) -> None:
        """Load the scorer's models (a scorer loads them on its first call, even an empty one)."""
        self.scorer.score([])

    def __call__(self, structures: Sequence[Any]) -> list[float | None]:
        o = self.options
        out: list[float | None] = []
        for res in self.scorer.score(list(structures)):
            if not res.ok or res.value is None or not math.isfinite(res.value):
                out.append(None)
            elif self.property == "p_synth":
                out.append(math.log(res.value) if res.value > 0 else -math.inf)
            elif self.property == "e_hull":
                out.append(_log_sigmoid(-(res.value - o.e_hull_threshold) / o.e_hull_softness))
            else:
                sigma = res.uncertainty if res.uncertainty is not None and math.isfinite(res.uncertainty) else 0.0
                if o.dg_h_mode == "window":
                    out.append(_window_log_prob(res.value, max(sigma, o.sigma_min), o.dg_h_window))
                else:
                    out.append(-(abs(res.value) + o.k * sigma) / o.dg_h_window)
        return out


class StabilityProxyOptions(_Forbid):
    """Options of the ``stability.<calculator>`` term (:class:`StabilityProxyReward`)."""

    model: str | None = Field(None, description="the calculator backend's model; default: its own")
    device: str = "auto"
    relax_steps: int = Field(
        0,
        ge=0,
        description="in-plane FIRE steps before the energy is read; 0 = a single-point energy. Against the "
        "relaxed E_hull of 28 final unguided samples: Spearman 0.58 / 0.74 / 0.78 at 0 / 5 / 15 steps, for "
        "0.017 / 0.067 / 0.165 CPU-s per structure (full relaxation 0.72; --study proxy-fidelity)",
    )
    fmax: float = Field(0.05, gt=0, description="eV/Å; stops the few relaxation steps early")
    threshold: float = Field(0.1, description="eV/atom; E_hull of desirability 0.5 (the hit threshold)")
    softness: float = Field(
        0.1,
        gt=0,
        description="eV/atom; width of the logistic on E_hull. Wider than the ranking's 0.03 because an "
        "unrelaxed layer lies above its relaxed E_hull by a strain energy no threshold knows (final unguided "
        "samples: median single-point E_hull 1.09 eV/atom, relaxed 0.105; --study proxy-fidelity)",
    )
    max_elements: int = Field(3, ge=1, description="more distinct elements: failure (the references hold binaries)")
    cached_references_only: bool = Field(
        True,
        description="a chemical system whose reference phases are not cached (run-time or shipped) fails "
        "instead of relaxing ~20 reference phases per new pair inside the sampling loop",
    )


class StabilityProxyReward:
    """A relaxation-free stability proxy: E_hull of x̂₀ from one MLIP energy against the reference phases.

    The structure's MLIP energy (a single point, or ``relax_steps`` in-plane FIRE steps) becomes an
    MP2020-corrected entry whose E_hull against the ``mlip-prototypes`` reference set of the same MLIP is
    taken with :func:`gen2d.hull.hull_analysis`, as ``ehull.<calculator>`` does after its full
    relaxation. The reward is log σ(−(E_hull − threshold) / softness). An unrelaxed structure lies above
    its relaxed energy, so the proxy ranks particles; it is not an E_hull to report. Each chemical
    system's hull is prepared once per process (:class:`gen2d.hull.ReferenceHull`).
    """

    Options = StabilityProxyOptions

    def __init__(self, calculator: str, **options: Any):
        self.options = StabilityProxyOptions(**options)
        self.calculator_name = calculator
        self._calc = None
        self._provider = None
        self._hulls: dict[str, Any] = {}
        self.last_e_hull: list[float | None] = []

    def _setup(self):
        if self._calc is None:
            from gen2d.hull import get_reference_provider
            from gen2d.relax import cached_calculator

            opts: dict[str, Any] = {"device": self.options.device}
            if self.options.model:
                opts["model"] = self.options.model
            self._calc = cached_calculator(self.calculator_name, **opts)
            self._provider = get_reference_provider("mlip-prototypes", calculator=self._calc, progress=False)
        return self._calc, self._provider

    def _energies(self, structures: Sequence[Any]) -> list[float | None]:
        """The MLIP energy of each structure (eV), after ``relax_steps`` in-plane steps when there are any; the
        relaxed structures are kept in :attr:`last_relaxed` (None where not relaxed), since the entry's
        geometry-dependent corrections (oxide or sulfide type) must see the geometry the energy belongs to."""
        from gen2d.relax import batch_evaluator, relax_in_plane_batch
        from gen2d.structures import from_ase, orient_2d, to_ase

        calc, _ = self._setup()
        atoms = [to_ase(orient_2d(s)) for s in structures]
        self.last_relaxed: list[Any] = [None] * len(structures)
        if self.options.relax_steps > 0:
            results = relax_in_plane_batch(atoms, calc, fmax=self.options.fmax, steps=self.options.relax_steps)
            kept = [r.failure in (None, "not_converged") for r in results]
            self.last_relaxed = [from_ase(r.atoms) if ok else None for r, ok in zip(results, kept, strict=True)]
            return [r.energy if ok else None for r, ok in zip(results, kept, strict=True)]
        for a in atoms:  # MLIPs are trained on 3D-periodic cells; the vacuum keeps the images apart
            a.pbc = True
        evaluate = batch_evaluator(calc)
        if evaluate is not None:
            outs = evaluate(atoms)
            return [None if isinstance(o, BaseException) else float(o["energy"]) for o in outs]
        energies: list[float | None] = []
        for a in atoms:
            a.calc = calc
            energies.append(float(a.get_potential_energy()))
        return energies

    def warm_up(self) -> None:
        """Load the calculator and the reference provider."""
        self._setup()

    def _hull(self, elements: list[str]):
        """The prepared reference hull of a chemical system; None when its references are not cached
        (and ``cached_references_only``). Kept for the process: reference caches only grow."""
        from gen2d.hull import ReferenceHull

        key = "-".join(elements)
        if key not in self._hulls:
            _, provider = self._setup()
            if self.options.cached_references_only and not provider.cached(elements):
                self._hulls[key] = None
            else:
                self._hulls[key] = ReferenceHull(elements, provider.entries(elements), provider.name)
        return self._hulls[key]

    def __call__(self, structures: Sequence[Any]) -> list[float | None]:
        from gen2d.hull import apply_mp2020, mlip_entry
        from gen2d.relax import calculator_provenance

        calc, _ = self._setup()
        o = self.options
        out: list[float | None] = [None] * len(structures)
        self.last_e_hull = [None] * len(structures)
        todo, hulls = [], {}
        for i, s in enumerate(structures):
            elements = sorted({el.symbol for el in s.composition.elements})
            if len(elements) > o.max_elements:
                continue
            hull = self._hull(elements)
            if hull is not None:
                todo.append(i)
                hulls[i] = hull
        if not todo:
            return out
        prov = calculator_provenance(calc)
        energies = self._energies([structures[i] for i in todo])
        for k, (i, energy) in enumerate(zip(todo, energies, strict=True)):
            if energy is None or not math.isfinite(energy):
                continue
            geometry = self.last_relaxed[k] if self.last_relaxed[k] is not None else structures[i]
            entry = apply_mp2020(
                mlip_entry(geometry, energy, model=prov["model"], checkpoint_sha256=prov["checkpoint_sha256"])
            )
            e_hull = hulls[i].e_hull(entry)
            self.last_e_hull[i] = e_hull
            out[i] = _log_sigmoid(-(e_hull - o.threshold) / o.softness)
        return out


@dataclass
class _TermSpec:
    factory: Callable[..., RewardTerm]
    options: type[BaseModel] | None
    shared: bool = False  # a built-in term: one instance per process and option set (models, hulls)


_REGISTERED: dict[str, _TermSpec] = {}
_SHARED_TERMS: dict[str, RewardTerm] = {}


def register_reward_term(name: str, factory: Callable[..., RewardTerm], options: type[BaseModel] | None = None) -> None:
    """Make ``name`` usable in ``SteeringConfig.rewards``.

    Parameters
    ----------
    factory : callable
        Called with the term's options (``SteeringConfig.reward_options[name]``) and returns a
        :class:`RewardTerm`: a callable from a list of pymatgen ``Structure`` to one value per structure
        (larger is better; ``None`` or raising means that structure failed).
    options : pydantic model, optional
        Validates the options (with ``extra="forbid"``, a misspelt option is an error).
    """
    _REGISTERED[name] = _TermSpec(factory, options)


def unregister_reward_term(name: str) -> None:
    _REGISTERED.pop(name, None)


def _entry_point_names(group: str) -> list[str]:
    import importlib.metadata as md

    return sorted(ep.name for ep in md.entry_points(group=group))


def known_reward_terms() -> dict[str, list[str]]:
    """What a reward term may be called: registered terms, registered scorers and stability calculators."""
    from gen2d.scoring import CALCULATOR_GROUP, SCORER_GROUP

    return {
        "registered": sorted(_REGISTERED),
        "scorers": _entry_point_names(SCORER_GROUP),
        "stability": [f"stability.{c}" for c in _entry_point_names(CALCULATOR_GROUP)],
    }


def reward_term_spec(name: str) -> _TermSpec:
    """How the term ``name`` is built; :class:`UnknownRewardTerm` lists the names that exist."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    known = known_reward_terms()
    if name in known["stability"]:
        calculator = name.split(".", 1)[1]
        return _TermSpec(lambda **o: StabilityProxyReward(calculator, **o), StabilityProxyOptions, shared=True)
    if name in known["scorers"]:
        return _TermSpec(lambda **o: ScorerReward(name, **o), ScorerRewardOptions, shared=True)
    raise UnknownRewardTerm(
        f"unknown reward term {name!r}; known: registered {known['registered']}, scorers {known['scorers']}, "
        f"stability proxies {known['stability']}"
    )


# ------------------------------------------------------------------------------------------------
# configuration


class SteeringConfig(BaseModel):
    """Particle steering (Feynman–Kac resampling on x̂₀) of a sampling run; see :mod:`gen2d.diffusion.steering`."""

    model_config = ConfigDict(extra="forbid")

    rewards: dict[str, float] = Field(
        default_factory=lambda: {"dgh.dimenet": 1.0, "synth.pu": 1.0, "stability.chgnet": 1.0},
        description="reward term name -> weight; r = Σ weight × term value",
    )
    reward_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="term name -> that term's options (checked by its Options model)"
    )
    strength: float = Field(
        0.5,
        gt=0,
        description="λ: the weighted batch targets p(x) exp(λ r(x)). With the default terms and the shipped "
        "model, 3 batches of 18 template starts kept 20 of their 54 lineages at λ = 0.5 and 5 at λ = 1 "
        "(scripts/bench_steering.py; docs/generator.md, 'Steering with particles')",
    )
    interval: int = Field(5, ge=1, description="reverse steps between two potentials")
    start: float = Field(
        0.25,
        gt=0,
        le=1,
        description="fraction of T at or below which potentials are taken. The default reward of x̂₀ predicts "
        "that of the final sample only late: Spearman 0.53-0.99 from 0.25 T down, -0.36 to 0.60 above 0.29 T "
        "(shipped model, 2 x 18 template starts, 100 steps; scripts/bench_steering.py --study lookahead)",
    )
    stop: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="fraction of T below which no potential is taken: copies made at the last resampling "
        "keep some steps to part. The final step is never one",
    )
    ess_threshold: float = Field(
        0.5, gt=0, le=1, description="resample when the effective sample size falls below this x the batch size"
    )
    floor: float = Field(
        -10.0,
        description="value of a term on a structure it fails on, and the lowest value a term can give "
        "(a log-probability of e^-10 for the built-in terms)",
    )

    @field_validator("rewards")
    @classmethod
    def _known_terms(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("steering needs at least one reward term")
        for name, w in v.items():
            if not math.isfinite(w):
                raise ValueError(f"reward weight of {name!r} must be finite, got {w}")
            reward_term_spec(name)  # UnknownRewardTerm names what exists
        return v

    @model_validator(mode="after")
    def _check(self) -> SteeringConfig:
        if self.stop >= self.start:
            raise ValueError(f"steering stop ({self.stop}) must lie below start ({self.start})")
        if not math.isfinite(self.floor):
            raise ValueError("the reward floor must be finite")
        extra = sorted(set(self.reward_options) - set(self.rewards))
        if extra:
            raise ValueError(f"reward_options for terms that are not in rewards: {extra}")
        for name, opts in self.reward_options.items():
            spec = reward_term_spec(name)
            if spec.options is not None:
                try:
                    spec.options(**opts)
                except ValidationError as exc:
                    bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                    raise ValueError(f"bad options for reward term {name!r}: {bad}") from None
        return self


# ------------------------------------------------------------------------------------------------
# the composite reward


@dataclass
class RewardEvaluation:
    """Rewards of one set of structures: the weighted total and every term (after flooring)."""

    total: np.ndarray
    terms: dict[str, np.ndarray]
    failed: dict[str, np.ndarray]


@dataclass
class Reward:
    """r(x) = Σ_k weight_k · term_k(x), every term floored; counts what it costs.

    ``evaluations[name]`` counts structures passed to term ``name`` (a batch that raised is retried one
    structure at a time, and those count again); ``cpu_s[name]`` is its CPU time (``time.process_time``).
    """

    terms: dict[str, tuple[RewardTerm, float]]
    floor: float = -10.0
    evaluations: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: SteeringConfig) -> Reward:
        """The reward of a steering config. Built-in terms are shared by every reward of the process with
        the same options, so their models load and their reference hulls are prepared once."""
        import json

        terms = {}
        for name, weight in config.rewards.items():
            spec = reward_term_spec(name)
            opts = dict(config.reward_options.get(name, {}))
            if spec.shared:
                key = json.dumps([name, opts], sort_keys=True, default=str)
                if key not in _SHARED_TERMS:
                    _SHARED_TERMS[key] = spec.factory(**opts)
                term = _SHARED_TERMS[key]
            else:
                term = spec.factory(**opts)
            terms[name] = (term, float(weight))
        return cls(terms=terms, floor=config.floor)

    def _term_values(self, name: str, term: RewardTerm, structures: list[Any]) -> list[float | None]:
        self.evaluations[name] = self.evaluations.get(name, 0) + len(structures)
        try:
            values = list(term(structures))
            if len(values) != len(structures):
                raise ValueError(f"reward term {name!r} returned {len(values)} values for {len(structures)} structures")
            return values
        except Exception:
            if len(structures) == 1:
                return [None]
        return [self._term_values(name, term, [s])[0] for s in structures]  # one bad structure fails alone

    def __call__(self, structures: Sequence[Any]) -> RewardEvaluation:
        n = len(structures)
        ok = [i for i, s in enumerate(structures) if s is not None]
        total = np.zeros(n)
        per_term, failed = {}, {}
        for name, (term, weight) in self.terms.items():
            vals = np.full(n, self.floor)
            bad = np.ones(n, dtype=bool)
            if ok:
                c0 = time.process_time()
                got = self._term_values(name, term, [structures[i] for i in ok])
                self.cpu_s[name] = self.cpu_s.get(name, 0.0) + time.process_time() - c0
                for i, v in zip(ok, got):
                    try:
                        v = float(v)  # None and non-numbers fail here
                    except (TypeError, ValueError):
                        continue
                    if math.isnan(v) or v == math.inf:  # a failure, at the floor
                        continue
                    vals[i], bad[i] = max(v, self.floor), False  # -inf (probability 0) is the floor too
            self.failures[name] = self.failures.get(name, 0) + int(bad.sum())
            per_term[name], failed[name] = vals, bad
            total += weight * vals
        return RewardEvaluation(total=total, terms=per_term, failed=failed)

    def warm_up(self) -> None:
        """Load every term's models now (terms with a ``warm_up`` method), so that a caller timing its
        sampling (the evaluation's budgets) does not charge model loading to its first batch. A term that
        fails to load is left alone: its failures show at its first evaluation, as the floor."""
        for term, _ in self.terms.values():
            warm = getattr(term, "warm_up", None)
            if callable(warm):
                try:
                    warm()
                except Exception:
                    pass

    def snapshot(self) -> tuple[dict[str, int], dict[str, int], dict[str, float]]:
        return dict(self.evaluations), dict(self.failures), dict(self.cpu_s)

    def accounting(self, since: tuple[dict, dict, dict] | None = None) -> dict[str, Any]:
        """Evaluations, failures and CPU seconds per term, in all or since a :meth:`snapshot`."""
        ev0, fa0, cpu0 = since or ({}, {}, {})
        return {
            "reward_evaluations": {k: v - ev0.get(k, 0) for k, v in self.evaluations.items()},
            "reward_failures": {k: v - fa0.get(k, 0) for k, v in self.failures.items()},
            "reward_cpu_s": {k: round(v - cpu0.get(k, 0.0), 4) for k, v in self.cpu_s.items()},
        }


# ------------------------------------------------------------------------------------------------
# the particle filter over one batch


def resampling_rng(generator: torch.Generator) -> np.random.Generator:
    """The resampling uniforms' own stream, derived from the sampler's generator without drawing from it:
    a steered run shares every noise draw with the unsteered run of the same seed up to its first
    resampling, and each batch of a run (a later generator state) gets its own stream."""
    state = generator.get_state().numpy().tobytes()
    return np.random.default_rng([generator.initial_seed() % (2**63), zlib.crc32(state)])


class ParticleFilter:
    """Weights, potentials and resampling of one batch of ``n`` particles along its reverse steps.

    Parameters
    ----------
    steps : list of int
        The sampler's descending timesteps; potentials are taken after step index i when
        :meth:`due` says so.
    T : int
        Training steps (``start`` and ``stop`` are fractions of it).
    """

    def __init__(self, config: SteeringConfig, steps: Sequence[int], T: int, n: int, rng: np.random.Generator):
        self.config = config
        self.n = n
        self.rng = rng
        window = [
            i
            for i, t in enumerate(steps)
            if t <= config.start * T and t >= config.stop * T and i + 1 < len(steps)  # never the last step
        ]
        self.due_steps = {i for k, i in enumerate(window) if k % config.interval == 0} if n > 1 else set()
        self.log_w = np.zeros(n)
        self.r_prev = np.zeros(n)
        self.traces: list[list[float]] = [[] for _ in range(n)]
        self.last_terms: list[dict[str, float]] = [{} for _ in range(n)]
        self.roots = np.arange(n)
        self.ess: list[float] = []
        self.resampled: list[bool] = []
        self.at_t: list[int] = []

    def due(self, i: int) -> bool:
        return i in self.due_steps

    def update(self, evaluation: RewardEvaluation, t: int) -> np.ndarray | None:
        """Take the potential exp(λ (r − r_prev)); the ancestors when the batch is resampled, else None."""
        r = evaluation.total
        self.log_w = self.log_w + self.config.strength * (r - self.r_prev)
        self.r_prev = r.copy()
        for g in range(self.n):
            self.traces[g].append(round(float(r[g]), 6))
            self.last_terms[g] = {k: round(float(v[g]), 6) for k, v in evaluation.terms.items()}
        ess = effective_sample_size(self.log_w)
        self.ess.append(round(ess, 4))
        self.at_t.append(int(t))
        if ess >= self.config.ess_threshold * self.n:
            self.resampled.append(False)
            return None
        ancestors = systematic_resample(normalised_weights(self.log_w), float(self.rng.random()))
        self.resampled.append(True)
        self.log_w = np.zeros(self.n)
        self.r_prev = self.r_prev[ancestors]
        self.traces = [list(self.traces[a]) for a in ancestors]
        self.last_terms = [dict(self.last_terms[a]) for a in ancestors]
        self.roots = self.roots[ancestors]
        return ancestors

    def report(self, g: int, accounting: dict[str, Any] | None = None) -> dict[str, Any]:
        """Diagnostics of particle ``g`` (and of its batch: ESS, resamplings, the reward's accounting)."""
        lw = self.log_w - (np.log(np.exp(self.log_w - self.log_w.max()).sum()) + self.log_w.max())
        return {
            "particles": self.n,
            "potentials": len(self.ess),
            "potential_steps": self.at_t,
            "resamplings": int(sum(self.resampled)),
            "ess": self.ess,
            "resampled": self.resampled,
            "root": int(self.roots[g]),
            "reward_trace": self.traces[g],
            "reward_terms": self.last_terms[g],
            "final_log_weight": round(float(lw[g]), 6),
            **(accounting or {}),
        }


__all__ = [
    "ParticleFilter",
    "Reward",
    "RewardEvaluation",
    "RewardTerm",
    "ScorerReward",
    "ScorerRewardOptions",
    "StabilityProxyOptions",
    "StabilityProxyReward",
    "SteeringConfig",
    "SteeringError",
    "UnknownRewardTerm",
    "atom_index_of",
    "effective_sample_size",
    "known_reward_terms",
    "normalised_weights",
    "register_reward_term",
    "resampling_rng",
    "reward_term_spec",
    "shared_scorer",
    "systematic_resample",
    "unregister_reward_term",
]
