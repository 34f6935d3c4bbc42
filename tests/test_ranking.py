"""Ranking: hits by thresholds, Pareto fronts, desirability, ties by uncertainty, failures kept out."""

from __future__ import annotations

import pytest

from gen2d.scoring import RankThresholds, desirability, pareto_fronts, rank_documents


def doc(cid, dg_h=None, e_hull=None, p=None, unc=0.0, strict=True, failed=None):
    summary = {}
    if dg_h is not None:
        summary["dg_h"] = {"value": dg_h, "uncertainty": unc}
    if e_hull is not None:
        summary["e_hull"] = {"value": e_hull}
    if p is not None:
        summary["p_synth"] = {"value": p}
    scores = {}
    if failed:
        scores["x"] = {"y": {"property": failed, "ok": False, "provenance": {}}}
    return {"candidate_id": cid, "summary": summary, "scores": scores, "validity": {"strict": {"ok": strict}}}


def test_hit_needs_all_three_thresholds():
    docs = [
        doc("a", 0.05, 0.02, 0.9),
        doc("b", 0.35, 0.02, 0.9),
        doc("c", 0.05, 0.25, 0.9),
        doc("d", 0.05, 0.02, 0.3),
        doc("e", -0.19, 0.099, 0.51),
    ]
    r = rank_documents(docs)
    assert [r[k]["hit"] for k in "abcde"] == [True, False, False, False, True]


def test_missing_property_is_unknown_and_failed_is_never_a_hit():
    r = rank_documents(
        [doc("a", 0.05, 0.02), doc("b", 0.0, 0.0, 0.9, failed="e_hull"), doc("c", 0.0, 0.0, 0.9, strict=False)]
    )
    assert r["a"]["hit"] is None and r["a"]["missing"] == ["p_synth"] and r["a"]["score"] is None
    # b has an ok e_hull from one scorer: its failed other e_hull scorer does not block it
    assert r["b"]["hit"] is True
    r2 = rank_documents([{**doc("f", 0.0, None, 0.9, failed="e_hull")}])
    assert r2["f"]["hit"] is False and r2["f"]["failed"] == ["e_hull"]
    assert r["c"]["hit"] is False  # not strictly 2D
    assert rank_documents([doc("c", 0.0, 0.0, 0.9, strict=False)], RankThresholds(require_strict=False))["c"]["hit"]


def test_desirability_orders_and_is_half_at_window_edges():
    t = RankThresholds()
    best = desirability(0.0, -0.05, 1.0, t)
    assert best == pytest.approx(1.0, abs=0.05)
    # ΔG_H term alone is 0.5 at the window edge, symmetric in sign (Sabatier)
    assert desirability(0.2, -10, 1.0, t) ** 3 == pytest.approx(0.5, rel=1e-3)
    assert desirability(-0.2, -10, 1.0, t) == pytest.approx(desirability(0.2, -10, 1.0, t))
    assert desirability(0.0, 0.1, 1.0, t) ** 3 == pytest.approx(0.5, rel=1e-3)
    assert desirability(0.1, 0.0, 0.9, t) > desirability(0.3, 0.0, 0.9, t) > desirability(0.6, 0.0, 0.9, t)


def test_pareto_fronts():
    pts = [(0.0, 0.0, -1.0), (0.1, 0.1, -0.9), (0.0, 0.2, -1.0), (0.5, 0.0, -0.5), (0.6, 0.3, -0.1)]
    assert pareto_fronts(pts) == [0, 1, 1, 1, 2]


def test_positions_and_tie_break_by_uncertainty():
    r = rank_documents([doc("a", 0.1, 0.0, 0.8, unc=0.3), doc("b", 0.1, 0.0, 0.8, unc=0.05), doc("c", 0.0, 0.0, 0.95)])
    assert r["c"]["position"] == 1
    assert r["b"]["position"] == 2 and r["a"]["position"] == 3  # same score, lower uncertainty first
    assert r["c"]["pareto_front"] == 0


def test_screen_score_orders_incomplete_candidates_but_never_makes_hits():
    r = rank_documents([doc("a", 0.02, None, 0.9), doc("b", 0.6, None, 0.9), doc("c", None, None, None)])
    assert r["a"]["screen_score"] > r["b"]["screen_score"] and r["c"]["screen_score"] is None
    assert r["a"]["n_properties"] == 2 and r["a"]["hit"] is None and r["a"]["score"] is None


def test_desirability_far_above_the_hull_is_zero_not_an_overflow():
    # exp((25 - 0.1) / 0.03) overflows a float: the logistic must be written so that it cannot
    assert desirability(0, 25.0, 0.9) == 0.0
    assert desirability(0.0, 25.0, 0.9, RankThresholds()) == 0.0
    assert desirability(0.0, -25.0, 1.0) == pytest.approx(1.0)  # far below: 1, no overflow either
    assert 0.0 < desirability(0.0, 0.5, 0.9) < desirability(0.0, 0.2, 0.9)


def test_rank_documents_with_a_huge_e_hull_ranks_it_last():
    r = rank_documents([doc("a", 0.0, 25.0, 0.9), doc("b", 0.1, 0.05, 0.8)])
    assert r["a"]["score"] == 0.0 and r["a"]["hit"] is False and r["a"]["position"] == 2
    assert r["b"]["hit"] is True and r["b"]["position"] == 1


def test_ranking_lives_in_gen2d_ranking_and_old_imports_still_work():
    import gen2d.ranking as ranking
    import gen2d.scoring as scoring

    for name in ("RankThresholds", "desirability", "pareto_fronts", "rank_documents", "screen_score"):
        assert getattr(scoring, name) is getattr(ranking, name)
    typed = ranking.rank_candidates([doc("a", 0.05, 0.02, 0.9)])
    assert typed["a"].hit is True and typed["a"].model_dump() == rank_documents([doc("a", 0.05, 0.02, 0.9)])["a"]


def test_a_layer_below_its_reference_hull_is_not_a_hit_and_says_why():
    below = doc("v", 0.02, -0.33, 0.9)
    below["summary"]["e_hull"]["flags"] = ["below_reference_hull"]
    ordinary = doc("w", 0.02, 0.01, 0.9)
    ordinary["summary"]["e_hull"]["flags"] = ["anion_correction_limited"]  # a note, not a reason to distrust
    r = rank_documents([below, ordinary])
    assert r["v"]["hit"] is False and r["v"]["cautions"] == ["below_reference_hull"]
    assert r["w"]["hit"] is True and r["w"]["cautions"] == []

    # a document stored before the summary carried flags: read from the named score's extra
    legacy = doc("x", 0.02, -0.2, 0.9)
    legacy["summary"]["e_hull"]["scorer"] = "ehull.chgnet"
    legacy["scores"] = {
        "ehull": {"chgnet": {"property": "e_hull", "ok": True, "extra": {"flags": ["below_reference_hull"]}}}
    }
    assert rank_documents([legacy])["x"]["hit"] is False


def test_a_sample_whose_generation_diverged_is_never_a_hit():
    """The evaluation passes each sample's generation faults to the ranking, as a campaign does."""
    flagged = doc("g", 0.02, 0.01, 0.9)
    flagged["flags"] = {"guidance_diverged": {"step": 40}}
    clean = doc("h", 0.02, 0.01, 0.9)
    r = rank_documents([flagged, clean])
    assert r["g"]["hit"] is False and r["h"]["hit"] is True
