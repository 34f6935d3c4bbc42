"""Metrics of a set of generated monolayers; each metric carries its own description and unit.

Results are plain dicts (name, value, unit, description, n, details), so a number is never written
without its meaning. Structure identity uses pymatgen's ``StructureMatcher(ltol=0.2, stol=0.3,
angle_tol=5)``, as everywhere in gen2d.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from pymatgen.core import Structure

MATCHER_SETTINGS = {"ltol": 0.2, "stol": 0.3, "angle_tol": 5}


def structure_matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**MATCHER_SETTINGS)


@dataclass
class MetricResult:
    name: str
    value: float | None
    unit: str
    description: str
    n: int
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Metric:
    """Base: ``name``, ``unit`` and ``description`` travel with every value."""

    name: str = ""
    unit: str = "fraction"
    description: str = ""

    def result(self, value: float | None, n: int, **details: Any) -> MetricResult:
        return MetricResult(self.name, value, self.unit, self.description, n, details)


class StrictValidity(Metric):
    name = "strict_2d_validity"
    description = (
        "Fraction of samples that pass gen2d.structures.validate_strict: one bonded component "
        "(1.25 x covalent radii) periodic in both in-plane directions (Larsen dimensionality 2), "
        "no isolated atoms, no pair closer than 0.6 x the covalent sum, thickness <= 10 Å, "
        "vacuum >= 15 Å. details.reasons counts each failure reason."
    )

    def __call__(self, structures: Sequence[Structure]) -> MetricResult:
        from gen2d.structures import strict_verdict

        reasons: Counter = Counter()
        ok = []
        for s in structures:  # a validator crash is a failed sample, not a failed run
            good, why = strict_verdict(s)
            ok.append(good)
            reasons.update(set(why))
        n = len(structures)
        return self.result(float(np.mean(ok)) if n else None, n, reasons=dict(reasons.most_common()), per_sample=ok)


@lru_cache(maxsize=65536)
def smact_formula_valid(reduced_formula: str, use_pauling_test: bool = True) -> bool:
    """``smact.screening.smact_validity`` of a reduced formula (alloys allowed), cached; an element SMACT
    has no data for makes it invalid. The caller bounds the number of elements: SMACT enumerates every
    oxidation-state combination."""
    from smact.screening import smact_validity

    try:
        return bool(smact_validity(reduced_formula, use_pauling_test=use_pauling_test))
    except Exception:
        return False


class SMACTValidity(Metric):
    name = "smact_validity"
    description = (
        "Fraction of samples whose composition is charge-neutral with allowed oxidation states "
        "and passes the Pauling electronegativity test (smact.screening.smact_validity, "
        "defaults: alloys allowed); elemental layers count as valid. Compositions with more "
        "than max_elements distinct elements count as invalid without enumeration "
        "(details.too_many_elements)."
    )

    def __init__(self, max_elements: int = 6):
        # smact enumerates every oxidation-state combination: 20 elements never finish
        self.max_elements = max_elements

    def __call__(self, structures: Sequence[Structure]) -> MetricResult:
        ok = []
        too_many = 0
        for s in structures:
            if len(s.composition.elements) > self.max_elements:
                too_many += 1
                ok.append(False)
                continue
            ok.append(smact_formula_valid(s.composition.reduced_formula))
        n = len(structures)
        return self.result(
            float(np.mean(ok)) if n else None,
            n,
            per_sample=ok,
            too_many_elements=too_many,
            max_elements=self.max_elements,
        )


def _match_groups(structures: Sequence[Structure]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(structures):
        groups[s.composition.reduced_formula].append(i)
    return groups


class Uniqueness(Metric):
    name = "uniqueness"
    description = (
        "Fraction of samples that match no earlier sample under StructureMatcher(ltol=0.2, "
        "stol=0.3, angle_tol=5); compared only within the same reduced formula."
    )

    def __call__(self, structures: Sequence[Structure]) -> MetricResult:
        matcher = structure_matcher()
        unique = [True] * len(structures)
        for idx in _match_groups(structures).values():
            reps: list[int] = []
            for i in idx:
                if any(_safe_fit(matcher, structures[i], structures[j]) for j in reps):
                    unique[i] = False
                else:
                    reps.append(i)
        n = len(structures)
        return self.result(float(np.mean(unique)) if n else None, n, n_unique=int(sum(unique)), per_sample=unique)


class Novelty(Metric):
    name = "novelty"
    description = (
        "Fraction of samples that match no training structure under StructureMatcher(ltol=0.2, "
        "stol=0.3, angle_tol=5); compared only within the same reduced formula."
    )

    def __init__(self, reference: Sequence[Structure], reference_name: str = "training set"):
        self.reference = list(reference)
        self.reference_name = reference_name
        self._groups = _match_groups(self.reference)

    def __call__(self, structures: Sequence[Structure]) -> MetricResult:
        matcher = structure_matcher()
        novel = []
        for s in structures:
            same = self._groups.get(s.composition.reduced_formula, [])
            novel.append(not any(_safe_fit(matcher, s, self.reference[j]) for j in same))
        n = len(structures)
        return self.result(
            float(np.mean(novel)) if n else None,
            n,
            reference=self.reference_name,
            n_reference=len(self.reference),
            per_sample=novel,
        )


class PredictedPropertyDistribution(Metric):
    """Summary of one head-predicted property over the samples (not a physics result)."""

    def __init__(self, prop: str, unit: str, source: str):
        self.name = f"predicted_{prop}"
        self.prop = prop
        self.unit = unit
        self.description = (
            f"Distribution of {prop} predicted by {source} on the final sampled state: "
            "mean, std and 10/50/90 % quantiles. A model prediction, not a scored value."
        )

    def __call__(self, values: Sequence[float]) -> MetricResult:
        v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
        if not len(v):
            return self.result(None, 0)
        q = np.quantile(v, [0.1, 0.5, 0.9])
        return self.result(
            float(v.mean()), len(v), std=float(v.std()), q10=float(q[0]), q50=float(q[1]), q90=float(q[2])
        )


def _safe_fit(matcher, a: Structure, b: Structure) -> bool:
    try:
        return bool(matcher.fit(a, b))
    except Exception:
        return False


def evaluate_samples(
    structures: Sequence[Structure],
    reference: Sequence[Structure] | None = None,
    predicted: Sequence[dict[str, float]] | None = None,
    predictor: str = "EGNN property heads",
) -> dict[str, dict[str, Any]]:
    """All generator metrics as ``{name: result dict}`` (``per_sample`` lists dropped for brevity)."""
    results = [StrictValidity()(structures), SMACTValidity()(structures), Uniqueness()(structures)]
    if reference is not None:
        results.append(Novelty(reference)(structures))
    if predicted:
        for prop, unit in (("dg_h", "eV"), ("e_hull", "eV/atom"), ("p_synth", "probability")):
            results.append(PredictedPropertyDistribution(prop, unit, predictor)([p.get(prop) for p in predicted]))
    out = {}
    for r in results:
        d = r.as_dict()
        d["details"] = {k: v for k, v in d["details"].items() if k != "per_sample"}
        out[r.name] = d
    return out


# ----------------------------------------------------------------------------------------------
# rates over a set of scored samples, and their spread over seeds (the evaluation suite)


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """Mean with a two-sided Student-t confidence interval over independent runs (e.g. seeds).

    ``None`` and non-finite values are left out (``n`` counts the ones used). The half-width is
    ``t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with ``s`` the sample standard deviation (ddof 1);
    with one value there is no interval (half-width None).

    Examples
    --------
    >>> round(mean_ci([1, 2, 3])["half_width"], 3)
    2.484
    """
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    out: dict[str, Any] = {
        "mean": None,
        "half_width": None,
        "low": None,
        "high": None,
        "std": None,
        "n": int(len(v)),
        "confidence": confidence,
        "method": "Student t over runs",
    }
    if not len(v):
        return out
    mean = float(v.mean())
    out["mean"] = mean
    if len(v) > 1:
        s = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * s / np.sqrt(len(v)))
        out.update(std=s, half_width=half, low=mean - half, high=mean + half)
    return out


def poisson_rate_ci(count: int, exposure: float, confidence: float = 0.95) -> dict[str, Any]:
    """A count per unit of exposure (e.g. hits per CPU-hour) with its exact Poisson (Garwood) interval.

    The interval of the expected count is ``[χ²_{α/2}(2k)/2, χ²_{1−α/2}(2k+2)/2]`` (0 at k = 0), divided by the
    exposure. Unlike a t-interval over a few seeds of small counts, it never goes below 0, and 0 counts still
    bound the rate from above.

    Examples
    --------
    >>> r = poisson_rate_ci(0, 1.0)
    >>> r["rate"], r["low"], round(r["high"], 3)
    (0.0, 0.0, 3.689)
    """
    from scipy import stats

    out: dict[str, Any] = {
        "count": int(count),
        "exposure": exposure,
        "rate": None,
        "low": None,
        "high": None,
        "confidence": confidence,
        "method": "exact Poisson (Garwood) on the pooled count",
    }
    if exposure is None or not exposure > 0:
        return out
    alpha = 1.0 - confidence
    low = 0.0 if count == 0 else float(stats.chi2.ppf(alpha / 2, 2 * count) / 2)
    high = float(stats.chi2.ppf(1 - alpha / 2, 2 * count + 2) / 2)
    out.update(rate=count / exposure, low=low / exposure, high=high / exposure)
    return out


def poisson_rate_ratio(
    count_a: int, exposure_a: float, count_b: int, exposure_b: float, confidence: float = 0.95
) -> dict[str, Any]:
    """Rate ratio (a/b) of two Poisson counts with their exposures, with the exact conditional interval and test.

    Given the total n = k_a + k_b, k_a is binomial with p = E_a / (E_a + E_b) when the rates are equal; the
    Clopper–Pearson interval of that proportion π maps to the ratio as π/(1 − π) · E_b/E_a, and the p-value is the
    two-sided exact binomial test of equal rates.

    Examples
    --------
    >>> r = poisson_rate_ratio(5, 1.0, 2, 1.0)
    >>> round(r["ratio"], 2), round(r["p_value"], 3)
    (2.5, 0.453)
    """
    from scipy import stats

    out: dict[str, Any] = {
        "ratio": None,
        "low": None,
        "high": None,
        "p_value": None,
        "confidence": confidence,
        "method": "exact conditional binomial test and Clopper-Pearson interval on the pooled counts",
    }
    n = int(count_a) + int(count_b)
    if not (exposure_a and exposure_b and exposure_a > 0 and exposure_b > 0) or n == 0:
        return out
    scale = exposure_b / exposure_a
    test = stats.binomtest(int(count_a), n, exposure_a / (exposure_a + exposure_b))
    ci = test.proportion_ci(confidence_level=confidence, method="exact")

    def ratio(pi: float) -> float:
        return float("inf") if pi >= 1.0 else pi / (1.0 - pi) * scale

    out.update(
        ratio=(count_a / exposure_a) / (count_b / exposure_b) if count_b else float("inf"),
        low=ratio(ci.low),
        high=ratio(ci.high),
        p_value=float(test.pvalue),
    )
    return out


def leave_one_out_means(values: Sequence[float]) -> np.ndarray:
    """For each entry, the mean of all the others (NaN for a single entry): what a quantity learnt without that
    entry predicts for it."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return np.full(len(v), np.nan)
    return (v.sum() - v) / (len(v) - 1)


def paired_mae_difference(
    pred_a: Sequence[float],
    pred_b: Sequence[float],
    ref: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """How much closer model A is to a reference than model B on the same rows: MAE(A) − MAE(B), with a paired
    percentile bootstrap interval over rows (``scipy.stats.bootstrap``, rows resampled together), the two-sided
    p-value of a paired sign-flip permutation test (``scipy.stats.permutation_test``, exact up to 16 rows), and on
    how many rows A is closer.

    A negative difference favours A. With few rows the percentile interval is too narrow (BCa needs more points
    than a small benchmark has), so judge significance by ``p_value``: with six rows the smallest possible is
    2/64 = 0.031. It is a statement about these rows, not about every material, and a model chosen as the best
    of several on the same rows is favoured by that choice.

    Examples
    --------
    >>> d = paired_mae_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.1, 2.2, 2.9])
    >>> round(d["mae_difference"], 3), d["a_closer"], d["n"]
    (-1.933, 3, 3)
    """
    from scipy import stats

    a, b, r = (np.asarray(x, float) for x in (pred_a, pred_b, ref))
    if not (a.shape == b.shape == r.shape) or a.ndim != 1:
        raise ValueError(f"paired_mae_difference needs three equal 1-D arrays, got {a.shape}, {b.shape}, {r.shape}")
    keep = np.isfinite(a) & np.isfinite(b) & np.isfinite(r)
    ea, eb = np.abs(a[keep] - r[keep]), np.abs(b[keep] - r[keep])
    out: dict[str, Any] = {
        "n": int(keep.sum()),
        "mae_difference": float(ea.mean() - eb.mean()) if keep.any() else None,
        "a_closer": int((ea < eb).sum()),
        "b_closer": int((eb < ea).sum()),
        "low": None,
        "high": None,
        "p_value": None,
        "confidence": confidence,
        "method": "paired percentile bootstrap over rows; paired sign-flip permutation test",
    }

    def mean_difference(x, y, axis=-1):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    if keep.sum() > 1 and np.ptp(ea - eb) > 0:
        res = stats.bootstrap(
            (ea, eb),
            mean_difference,
            paired=True,
            vectorized=True,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        out.update(low=float(res.confidence_interval.low), high=float(res.confidence_interval.high))
        perm = stats.permutation_test(
            (ea, eb),
            mean_difference,
            permutation_type="samples",
            vectorized=True,
            n_resamples=np.inf if keep.sum() <= 16 else n_resamples,
            alternative="two-sided",
            random_state=np.random.default_rng(seed),
        )
        out["p_value"] = float(perm.pvalue)
    return out


class StableRate(Metric):
    name = "stable_rate"

    def __init__(self, e_hull_max: float = 0.1):
        self.e_hull_max = e_hull_max
        self.description = (
            f"Fraction of all samples with a computed E_hull <= {e_hull_max} eV/atom. E_hull is "
            "computed for strictly valid samples only; a sample that is not strictly valid, or "
            "whose E_hull was not computed or failed (details.not_scored, details.failed), "
            "counts as not stable, and so does a layer more than 0.05 eV/atom below its reference "
            "hull (details.below_reference_hull: a reference phase is missing, the layer is not "
            "shown stable)."
        )

    def __call__(
        self,
        e_hull: Sequence[float | None],
        failed: int = 0,
        not_scored: int = 0,
        below_reference_hull: Sequence[bool] | None = None,
    ) -> MetricResult:
        below = list(below_reference_hull) if below_reference_hull is not None else [False] * len(e_hull)
        stable = [v is not None and v <= self.e_hull_max and not b for v, b in zip(e_hull, below, strict=True)]
        n = len(e_hull)
        return self.result(
            float(np.mean(stable)) if n else None,
            n,
            per_sample=stable,
            n_stable=int(sum(stable)),
            below_reference_hull=int(sum(below)),
            e_hull_max=self.e_hull_max,
            failed=failed,
            not_scored=not_scored,
        )


class SUNRate(Metric):
    name = "sun_rate"
    description = (
        "S.U.N.: fraction of all samples that are stable (E_hull <= threshold, as stable_rate), "
        "unique (the first of their StructureMatcher class within the run) and novel (no "
        "training-set match)."
    )

    def __call__(self, stable: Sequence[bool], unique: Sequence[bool], novel: Sequence[bool]) -> MetricResult:
        sun = [bool(s and u and v) for s, u, v in zip(stable, unique, novel, strict=True)]
        n = len(sun)
        return self.result(float(np.mean(sun)) if n else None, n, per_sample=sun, n_sun=int(sum(sun)))


class HitRate(Metric):
    name = "her_hit_rate"

    def __init__(self, thresholds: Any = None):
        from gen2d.scoring import RankThresholds

        t = thresholds or RankThresholds()
        self.thresholds = t
        self.description = (
            f"Fraction of all samples that are gen2d HER hits (gen2d.scoring.rank_documents): "
            f"|ΔG_H| <= {t.dg_h_window} eV from the configured ΔG_H scorer, E_hull <= "
            f"{t.e_hull_max} eV/atom and P_synth >= {t.p_synth_min}"
            + (", strictly 2D-valid" if t.require_strict else "")
            + "; a sample with a missing or failed property is not a hit."
        )

    def __call__(self, hits: Sequence[bool | None]) -> MetricResult:
        flags = [bool(h) for h in hits]
        n = len(flags)
        return self.result(
            float(np.mean(flags)) if n else None,
            n,
            per_sample=flags,
            n_hits=int(sum(flags)),
            thresholds=self.thresholds.model_dump(),
        )


class ConfirmationRate(Metric):
    name = "mlip_confirmation_rate"

    def __init__(self, dg_h_window: float = 0.2, confirmer: str = "dgh.mlip"):
        self.dg_h_window = dg_h_window
        self.description = (
            f"Fraction of HER hits whose ΔG_H from {confirmer} (explicit H, MLIP) is also within "
            f"±{dg_h_window} eV; a failed MLIP result does not confirm. None when there is no hit."
        )

    def __call__(self, mlip_dg_h: Sequence[float | None]) -> MetricResult:
        ok = [v is not None and abs(v) <= self.dg_h_window for v in mlip_dg_h]
        n = len(ok)
        return self.result(float(np.mean(ok)) if n else None, n, per_sample=ok, n_confirmed=int(sum(ok)))


class ConfirmedHitsPerCPUHour(Metric):
    """MLIP-confirmed hits per CPU-hour of generation plus scoring: what a screening campaign pays for a hit."""

    name = "confirmed_hits_per_cpu_hour"
    unit = "hits / CPU-hour"
    description = (
        "MLIP-confirmed HER hits per CPU-hour of generation plus scoring. A campaign scores everything the arm "
        "outputs, so one output costs (generation CPU-s / samples produced) + (scoring CPU-s / samples scored), "
        "scoring being the CHGNet E_hull relaxation, the surrogates and the explicit-H MLIP check of every hit; "
        "the rate is confirmed hits / samples scored. Generation CPU is time.process_time of the generating "
        "process (a filter arm's surrogate ranking included; its output is what it keeps)."
    )

    def __call__(
        self, n_confirmed: int, n_scored: int, n_produced: int, generation_cpu_s: float, scoring_cpu_s: float | None
    ) -> MetricResult:
        if not n_scored or not n_produced or scoring_cpu_s is None:
            return self.result(None, n_scored)
        per_output_s = generation_cpu_s / n_produced + scoring_cpu_s / n_scored
        if per_output_s <= 0:
            return self.result(None, n_scored)
        rate = n_confirmed / n_scored
        return self.result(
            rate * 3600.0 / per_output_s,
            n_scored,
            n_confirmed=n_confirmed,
            cpu_s_per_output=per_output_s,
            generation_cpu_s_per_output=generation_cpu_s / n_produced,
            scoring_cpu_s_per_output=scoring_cpu_s / n_scored,
        )


class HitsPerCPUHour(Metric):
    name = "hits_per_cpu_hour"
    unit = "hits / CPU-hour"
    description = (
        "HER hits the arm produces per CPU-hour of generation: (hit rate of the evaluated samples) x "
        "(samples the arm produced within its budget) / (generation CPU-seconds / 3600). Generation "
        "CPU is time.process_time of the generating process, including any surrogate filter."
    )

    def __call__(self, hit_rate: float | None, n_produced: int, cpu_seconds: float) -> MetricResult:
        if hit_rate is None or cpu_seconds <= 0:
            return self.result(None, n_produced, cpu_seconds=cpu_seconds)
        return self.result(
            hit_rate * n_produced / (cpu_seconds / 3600.0),
            n_produced,
            cpu_seconds=cpu_seconds,
            expected_hits=hit_rate * n_produced,
        )
