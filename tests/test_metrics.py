"""Generator metrics on known structures: each value is right and carries its description."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gen2d.data.templates import build_template
from gen2d.metrics import (
    Novelty,
    PredictedPropertyDistribution,
    SMACTValidity,
    StrictValidity,
    Uniqueness,
    evaluate_samples,
)


def _squashed_mos2() -> Structure:
    """MoS2 with both S 0.4 Å from the Mo plane: the '0.5 Å apart' failure the metric must catch."""
    s = build_template("MoS2-2H").copy()
    c = s.lattice.c
    mo_z = s[0].frac_coords[2]
    for i in (1, 2):
        f = s[i].frac_coords.copy()
        f[0], f[1] = s[0].frac_coords[0] + 0.02, s[0].frac_coords[1]
        f[2] = mo_z + np.sign(f[2] - mo_z) * 0.4 / c
        s.replace(i, s[i].species, f)
    return s


def _thick_slab() -> Structure:
    """Two MoS2 layers 12 Å apart in one cell: a '12 Å thick monolayer'."""
    s = build_template("MoS2-2H")
    lat = Lattice.from_parameters(s.lattice.a, s.lattice.b, 40.0, 90, 90, 120)
    cart = s.cart_coords - [0, 0, s.cart_coords[:, 2].mean()]
    coords = np.concatenate([cart + [0, 0, 14.0], cart + [0, 0, 26.0]])
    return Structure(lat, [*s.species, *s.species], coords, coords_are_cartesian=True)


def test_strict_validity_accepts_real_layers_and_names_failures():
    good = [build_template(n) for n in ("MoS2-2H", "graphene", "hBN")]
    res = StrictValidity()(good + [_squashed_mos2(), _thick_slab()])
    assert res.details["per_sample"] == [True, True, True, False, False]
    assert res.value == 0.6 and res.unit == "fraction" and "validate_strict" in res.description
    assert "atoms_too_close" in res.details["reasons"] or "overlapping_atoms" in res.details["reasons"]


def test_smact_validity():
    structures = [
        build_template("MoS2-2H"),
        build_template("graphene"),
        Structure(
            Lattice.hexagonal(4.0, 25.0), ["Na", "Na", "Cl"], [[0, 0, 0.5], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.55]]
        ),
    ]
    res = SMACTValidity()(structures)
    assert res.details["per_sample"] == [True, True, False]  # Na2Cl cannot be charge-neutral
    assert abs(res.value - 2 / 3) < 1e-9


def test_uniqueness_and_novelty_use_structure_matcher():
    mos2 = build_template("MoS2-2H")
    shifted = mos2.copy()
    shifted.translate_sites(list(range(len(shifted))), [0.21, 0.37, 0.0])  # same material, moved
    rotated = mos2.copy()
    rotated.perturb(0.01, min_distance=0.0)
    graphene = build_template("graphene")
    ws2 = build_template("WS2-2H")
    samples = [mos2, shifted, rotated, graphene, ws2]
    uniq = Uniqueness()(samples)
    assert uniq.details["per_sample"] == [True, False, False, True, True]
    nov = Novelty([mos2, graphene], reference_name="two templates")(samples)
    assert nov.details["per_sample"] == [False, False, False, False, True]
    assert nov.details["reference"] == "two templates"


def test_property_distribution_and_json_with_descriptions():
    res = PredictedPropertyDistribution("dg_h", "eV", "a test")([0.1, -0.2, 0.4, None, float("nan")])
    assert res.n == 3 and abs(res.value - 0.1) < 1e-12 and res.unit == "eV"
    out = evaluate_samples(
        [build_template("MoS2-2H"), build_template("graphene")],
        reference=[build_template("graphene")],
        predicted=[{"dg_h": 0.1, "e_hull": 0.0, "p_synth": 0.9}, {"dg_h": 0.5, "e_hull": 0.2, "p_synth": 0.4}],
    )
    text = json.dumps(out)
    for name in (
        "strict_2d_validity",
        "smact_validity",
        "uniqueness",
        "novelty",
        "predicted_dg_h",
        "predicted_e_hull",
        "predicted_p_synth",
    ):
        assert out[name]["description"] and out[name]["unit"]
    assert out["novelty"]["value"] == 0.5 and "per_sample" not in text


def test_smact_validity_caps_many_element_compositions():
    """A 12-element 'composition' (what an undertrained model emits) is invalid at once, not enumerated."""
    els = ["K", "Pr", "Er", "Zr", "Be", "Al", "V", "Zn", "Ga", "Cu", "Ni", "Sn"]
    s = Structure(Lattice.hexagonal(12.0, 25.0), els, [[i / 12, (i * 5 % 12) / 12, 0.5] for i in range(12)])
    res = SMACTValidity()([s, build_template("MoS2-2H")])
    assert res.details["per_sample"] == [False, True] and res.details["too_many_elements"] == 1


# ----------------------------------------------------------------------------------------------
# evaluation-suite metrics: confidence intervals and rates over hand-made cases


def test_mean_ci_on_a_known_sample():
    from scipy import stats

    from gen2d.metrics import mean_ci

    ci = mean_ci([1, 2, 3])
    assert ci["mean"] == 2.0 and ci["n"] == 3 and ci["std"] == 1.0
    # t_{0.975, 2} = 4.3027; s = 1; half-width = 4.3027 / sqrt(3) = 2.4842
    assert abs(ci["half_width"] - stats.t.ppf(0.975, 2) / np.sqrt(3)) < 1e-12
    assert round(ci["half_width"], 3) == 2.484
    assert abs(ci["low"] - (2 - 2.48414)) < 1e-4 and abs(ci["high"] - (2 + 2.48414)) < 1e-4
    same = mean_ci([0.5, 0.5, 0.5, 0.5])
    assert same["mean"] == 0.5 and same["half_width"] == 0.0
    # missing runs are left out; one value has no interval; none has no mean
    assert mean_ci([1.0, None, float("nan"), 3.0])["n"] == 2
    assert mean_ci([4.0])["half_width"] is None and mean_ci([4.0])["mean"] == 4.0
    assert mean_ci([])["mean"] is None


def test_paired_mae_difference_is_antisymmetric_and_its_interval_holds_the_estimate():
    from gen2d.metrics import paired_mae_difference

    rng = np.random.default_rng(3)
    ref = rng.normal(1.0, 1.0, 12)
    a = ref + rng.normal(0, 0.1, 12)  # a close model
    b = ref - 0.8 + rng.normal(0, 0.3, 12)  # a biased one
    ab, ba = paired_mae_difference(a, b, ref), paired_mae_difference(b, a, ref)
    mae = lambda p: float(np.mean(np.abs(p - ref)))  # noqa: E731
    assert ab["mae_difference"] == pytest.approx(mae(a) - mae(b)) and ab["mae_difference"] < 0
    assert ba["mae_difference"] == pytest.approx(-ab["mae_difference"])
    assert ab["low"] <= ab["mae_difference"] <= ab["high"] < 0  # b is worse on every row: zero is outside
    assert ab["a_closer"] == ba["b_closer"] == 12 and ab["n"] == 12
    assert ba["low"] == pytest.approx(-ab["high"]) and ba["high"] == pytest.approx(-ab["low"])
    # exact sign-flip test: A closer on all 12 rows, so only the observed signs and their mirror reach |diff|
    assert ab["p_value"] == pytest.approx(2 / 2**12) and ba["p_value"] == pytest.approx(ab["p_value"])
    tied = paired_mae_difference([0.3, 0.1, 0.2, 0.1], [0.1, 0.3, 0.1, 0.2], [0.0, 0.0, 0.0, 0.0])
    assert tied["mae_difference"] == pytest.approx(0.0) and tied["p_value"] == pytest.approx(1.0)  # no evidence
    # rows with a missing value are left out of both; identical models differ by zero, with no interval
    b_nan = b.copy()
    b_nan[0] = np.nan
    assert paired_mae_difference(a, b_nan, ref)["n"] == 11
    same = paired_mae_difference(a, a, ref)
    assert same["mae_difference"] == 0.0 and same["low"] is None and same["p_value"] is None
    assert same["a_closer"] == same["b_closer"] == 0
    with pytest.raises(ValueError, match="equal 1-D"):
        paired_mae_difference(a, b[:5], ref)


def test_stable_sun_and_hit_rates_count_invalid_and_duplicates_correctly():
    from gen2d.metrics import ConfirmationRate, HitRate, HitsPerCPUHour, StableRate, SUNRate
    from gen2d.scoring import RankThresholds

    # sample 2 was not scored (not strictly valid): it is not stable
    stable = StableRate(0.1)([0.05, 0.1, None, 0.3])
    assert stable.details["per_sample"] == [True, True, False, False] and stable.value == 0.5
    assert "not strictly valid" in stable.description and stable.unit == "fraction"
    # a layer far below its reference hull is not shown stable: a reference phase is missing
    below = StableRate(0.1)([-0.33, 0.05], below_reference_hull=[True, False])
    assert below.details["per_sample"] == [False, True] and below.details["below_reference_hull"] == 1
    # sample 1 duplicates sample 0: counted once; sample 3 is a training structure
    sun = SUNRate()([True, True, True, True], unique=[True, False, True, True], novel=[True, True, True, False])
    assert sun.details["per_sample"] == [True, False, True, False] and sun.value == 0.5
    hit = HitRate(RankThresholds(dg_h_window=0.15))([True, None, False, True])
    assert hit.value == 0.5 and "0.15 eV" in hit.description
    conf = ConfirmationRate(0.2)([0.1, -0.3, None])
    assert conf.details["per_sample"] == [True, False, False] and abs(conf.value - 1 / 3) < 1e-12
    assert ConfirmationRate()([]).value is None
    per_hour = HitsPerCPUHour()(0.25, n_produced=40, cpu_seconds=36.0)
    assert abs(per_hour.value - 1000.0) < 1e-9 and per_hour.unit == "hits / CPU-hour"
    assert HitsPerCPUHour()(None, 10, 5.0).value is None


def test_confirmed_hits_per_cpu_hour_pays_for_generating_and_scoring_every_output():
    from gen2d.metrics import ConfirmedHitsPerCPUHour

    m = ConfirmedHitsPerCPUHour()
    # 200 produced in 40 CPU-s (0.2 s each); 48 scored in 144 CPU-s (3 s each); 3 confirmed
    r = m(3, n_scored=48, n_produced=200, generation_cpu_s=40.0, scoring_cpu_s=144.0)
    assert r.details["cpu_s_per_output"] == pytest.approx(3.2)
    assert r.value == pytest.approx(3 / 48 * 3600 / 3.2) and r.unit == "hits / CPU-hour"
    # scoring dominates: a generator twice as fast barely helps, one with twice the confirmed rate doubles it
    faster = m(3, n_scored=48, n_produced=400, generation_cpu_s=40.0, scoring_cpu_s=144.0)
    better = m(6, n_scored=48, n_produced=200, generation_cpu_s=40.0, scoring_cpu_s=144.0)
    assert r.value < faster.value < 1.1 * r.value and better.value == pytest.approx(2 * r.value)
    assert m(0, 48, 200, 40.0, 144.0).value == 0.0
    assert m(3, 0, 200, 40.0, 144.0).value is None and m(3, 48, 200, 40.0, None).value is None


def test_exact_poisson_intervals_never_go_below_zero_and_bound_a_zero_count():
    """Pooled counts of hits per CPU-hour: the Garwood interval of k = 0 is [0, 3.689] (the 95 % upper bound of
    a Poisson mean with no event), k = 5 gives [1.623, 11.668], and dividing the exposure scales the rate."""
    from gen2d.metrics import poisson_rate_ci, poisson_rate_ratio

    zero = poisson_rate_ci(0, 2.0)
    assert zero["rate"] == 0.0 and zero["low"] == 0.0 and zero["high"] == pytest.approx(3.689 / 2, abs=1e-3)
    five = poisson_rate_ci(5, 1.0)
    assert (five["low"], five["high"]) == (pytest.approx(1.623, abs=1e-3), pytest.approx(11.668, abs=1e-3))
    assert poisson_rate_ci(5, 0.5)["high"] == pytest.approx(2 * five["high"])
    assert poisson_rate_ci(3, 0.0)["rate"] is None
    # 5 against 2 at equal exposure: a ratio of 2.5 that a conditional binomial test cannot tell from 1
    rr = poisson_rate_ratio(5, 1.0, 2, 1.0)
    assert rr["ratio"] == pytest.approx(2.5) and rr["low"] < 1.0 < rr["high"] and rr["p_value"] > 0.4
    # swapping the arms inverts the ratio and its interval, with the same p-value
    back = poisson_rate_ratio(2, 1.0, 5, 1.0)
    assert back["ratio"] == pytest.approx(1 / rr["ratio"]) and back["low"] == pytest.approx(1 / rr["high"])
    assert back["p_value"] == pytest.approx(rr["p_value"])
    # a large difference is significant, and unequal exposures are accounted for
    assert poisson_rate_ratio(30, 1.0, 5, 1.0)["p_value"] < 0.001
    assert poisson_rate_ratio(10, 2.0, 5, 1.0)["p_value"] == pytest.approx(1.0)
