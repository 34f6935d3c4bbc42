"""The evaluation suite: hand-made metric cases, the budget rule, the substitution baseline, and a tiny
end-to-end ``gen2d evaluate`` run whose JSON carries every arm and every metric with its meaning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gen2d.data.templates import build_template
from gen2d.evaluate import (
    RATE_METRICS,
    ArmSpec,
    BudgetedRun,
    EvaluateSpec,
    TrainingSetSpec,
    generate_within_budget,
    of_kind,
    seed_metrics,
    select_for_evaluation,
    training_structures,
)
from gen2d.metrics import Novelty, StrictValidity, Uniqueness
from gen2d.scoring import GeneratedStructure, RankThresholds

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


@pytest.fixture
def substitution(monkeypatch):
    # importable before its entry point is registered and the package reinstalled
    monkeypatch.syspath_prepend(str(PLUGINS))
    from gen2d_substitution import SubstitutionGenerator

    return SubstitutionGenerator


def _record(**kw):
    base = {
        "strict_ok": True,
        "smact_ok": True,
        "unique": True,
        "novel": True,
        "e_hull": 0.05,
        "hit": False,
        "mlip_dg_h": None,
        "confirmed": False,
    }
    return {**base, **kw}


# ----------------------------------------------------------------------------------------------
# metrics on hand-made cases


def test_duplicates_are_counted_once(mos2):
    shifted = mos2.copy()
    shifted.translate_sites(list(range(len(shifted))), [0.3, 0.1, 0.0])
    samples = [mos2, shifted, build_template("graphene"), mos2.copy()]
    unique = Uniqueness()(samples).details["per_sample"]
    assert unique == [True, False, True, False]
    # four stable samples, two of them copies of the first: S.U.N. counts the material once
    records = [_record(unique=u) for u in unique]
    m = seed_metrics(records, {"kind": "generator", "n_generated": 4, "generation_cpu_s": 1.0}, RankThresholds())
    assert m["stable_rate"] == 1.0 and m["uniqueness"] == 0.5 and m["sun_rate"] == 0.5


def test_a_training_structure_is_not_novel():
    reference = training_structures(TrainingSetSpec(sources=["mc2d_258_exfoliable.json"]))
    assert len(reference) > 100
    member = reference[17].copy()
    member.translate_sites(list(range(len(member))), [0.25, 0.5, 0.0])  # the same material, moved
    novel = Novelty(reference)([member, build_template("MoS2-2H").copy()])
    # MoS2 is in MC2D as well: neither is novel; a made-up layer is
    made_up = build_template("graphene").copy()
    made_up.replace_species({"C": "Pb"})
    assert novel.details["per_sample"] == [False, False]
    assert Novelty(reference)([made_up]).details["per_sample"] == [True]


def test_a_bulk_crystal_is_invalid_and_not_stable(bulk_si):
    res = StrictValidity()([bulk_si, build_template("MoS2-2H")])
    assert res.details["per_sample"] == [False, True]
    # an invalid layer never gets an E_hull, so it counts as not stable (and not S.U.N., not a hit)
    records = [_record(strict_ok=False, e_hull=None), _record()]
    m = seed_metrics(records, {"kind": "generator", "n_generated": 2, "generation_cpu_s": 1.0}, RankThresholds())
    assert m["strict_2d_validity"] == 0.5 and m["stable_rate"] == 0.5 and m["sun_rate"] == 0.5
    assert m["e_hull_scored_fraction"] == 0.5


# ----------------------------------------------------------------------------------------------
# the budget rule


def test_generation_stops_at_the_budget_with_a_deterministic_clock():
    now = [0.0]
    costs = iter([3.0, 2.0, 4.0, 1.0, 1.0, 1.0])

    def clock():
        return now[0]

    def chunk(index, size):
        now[0] += next(costs)
        return [GeneratedStructure(structure=build_template("graphene"), source_id=f"{index}")] * size, []

    run = generate_within_budget(chunk, budget_cpu_s=10.0, chunk=2, max_generated=100, clock=clock)
    # 3 -> (3 + 3 <= 10) 5 -> (5 + 3 <= 10) 9 -> (9 + 4 > 10) stop
    assert run.chunk_cpu_s == [3.0, 2.0, 4.0] and run.cpu_s == 9.0 and len(run.items) == 6
    assert run.stopped_by == "budget"
    # the first chunk always runs, even over budget
    now[0], costs = 0.0, iter([50.0])
    assert generate_within_budget(chunk, 10.0, 2, 100, clock=clock).n_chunks == 1
    # the sample cap stops an arm that is too cheap to exhaust its budget
    now[0], costs = 0.0, iter([0.1] * 10)
    capped = generate_within_budget(chunk, 10.0, 2, 5, clock=clock)
    assert len(capped.items) == 5 and capped.stopped_by == "max_generated"


def test_filter_keeps_the_best_valid_samples_by_the_surrogates():
    items = [
        GeneratedStructure(structure=build_template(n), labels={"strict_valid": ok})
        for n, ok in (("graphene", True), ("hBN", False), ("MoS2-2H", True), ("Ti2CO2", True))
    ]
    vals = [
        {"dg_h": 1.0, "p_synth": 0.9},
        {"dg_h": 0.0, "p_synth": 1.0},
        {"dg_h": 0.05, "p_synth": 0.8},
        {"dg_h": 0.0, "p_synth": 0.9},
    ]
    run = BudgetedRun(items, 1.0, 1, [1.0], 1.0, "budget", vals)
    arm = ArmSpec(name="filter", kind="filter", keep=2, filter_max_elements=2)
    idx, scores = select_for_evaluation(run, arm, n_eval=2, seed=0, thresholds=RankThresholds())
    # hBN is not strictly valid (label), Ti2CO2 has 3 elements: MoS2 first, then graphene
    assert idx == [2, 0] and scores[0] > scores[1]
    uniform, _ = select_for_evaluation(run, ArmSpec(name="u"), n_eval=3, seed=0, thresholds=RankThresholds())
    assert len(set(uniform)) == 3 and uniform == sorted(uniform)


# ----------------------------------------------------------------------------------------------
# the substitution baseline


def test_substitution_is_isovalent_and_rescaled(substitution):
    gen = substitution()
    assert gen.available() == (True, "")
    out = list(gen.generate(n=30, seed=3))
    assert len(out) == 30
    again = [g.structure.composition.reduced_formula for g in gen.generate(n=30, seed=3)]
    assert again == [g.structure.composition.reduced_formula for g in out]  # seeded
    for g in out:
        subs = g.parameters["substitutions"]
        assert subs and all(a != b for a, b in subs.items())
        oxi = g.parameters["oxidation_states"]
        template = build_template(g.parameters["template"])
        assert len(g.structure) == len(template)
        assert {el.symbol for el in g.structure.composition.elements} == {
            subs.get(el.symbol, el.symbol) for el in template.composition.elements
        }
        # isovalent: the new element has a substitution-table entry at the old oxidation state, or the
        # same group when the layer is elemental
        for old, new in subs.items():
            if oxi[old] is None:
                from pymatgen.core import Element

                assert Element(new).group == Element(old).group
    # graphene -> a group-14 element: the lattice scales with the covalent radius
    from ase.data import atomic_numbers, covalent_radii

    g = substitution.decorate(build_template("graphene"), {"C": "Si"})
    ratio = covalent_radii[atomic_numbers["Si"]] / covalent_radii[atomic_numbers["C"]]
    assert abs(g.lattice.a / build_template("graphene").lattice.a - ratio) < 1e-6
    assert StrictValidity()([g]).value == 1.0


# ----------------------------------------------------------------------------------------------
# end to end: gen2d evaluate on a tiny spec


TINY = {
    "name": "tiny",
    "seeds": [0, 1],
    "budget_cpu_s": 0.5,
    "chunk": 2,
    "n_eval": 1,
    "templates": ["graphene", "hBN"],
    "arms": [
        {
            "name": "unguided",
            "params": {"guidance": {"cfg_weight": None, "eta": 0.0}, "start": "templates", "n_steps": 5},
        },
        {"name": "cfg", "params": {"guidance": {"cfg_weight": 2.0, "eta": 0.0}, "start": "templates", "n_steps": 5}},
        {"name": "full", "params": {"guidance": {"cfg_weight": 2.0, "eta": 0.08}, "start": "templates", "n_steps": 5}},
        {"name": "substitution", "generator": "substitution"},
        {
            "name": "filter",
            "kind": "filter",
            "params": {"guidance": {"cfg_weight": None, "eta": 0.0}, "start": "templates", "n_steps": 5},
        },
    ],
    "sweeps": [{"parameter": "eta", "values": [0.0, 0.1], "base": "full", "fixed": {"cfg_weight": 2.0}, "n_eval": 1}],
    # cheap scorers on the real code paths: CHGNet E_hull against the MP elemental entries (no reference
    # relaxations), a short explicit-H check
    "scorers": {
        "e_hull": {"name": "ehull.chgnet", "options": {"progress": False, "provider": "entries-file", "steps": 20}},
        "confirm": {
            "name": "dgh.mlip",
            "options": {
                "calculator": "chgnet",
                "max_sites_per_face": 1,
                "site_kinds": ["ontop"],
                "min_inplane_length": 4.0,
                "steps": 10,
            },
        },
    },
    "training_set": {"sources": ["mc2d_258_exfoliable.json"]},
}


def test_gen2d_evaluate_tiny_spec_end_to_end(tmp_path, monkeypatch, data_dir, substitution):
    from gen2d.cli import app

    spec = json.loads(json.dumps(TINY))
    spec["scorers"]["e_hull"]["options"]["provider_options"] = {
        "path": str(data_dir / "mp_elemental_reference_entries.json.gz")
    }
    spec["out"] = str(tmp_path / "out")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = CliRunner().invoke(app, ["evaluate", str(path), "--json", "-s", "seeds=[3,4]"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # one JSON document and nothing else on stdout

    # every arm, the sweep point that is new, and the one that is the full method
    assert set(doc["arms"]) == {"unguided", "cfg", "full", "substitution", "filter", "eta=0.1,cfg_weight=2.0"}
    assert doc["aliases"] == {"eta=0,cfg_weight=2.0": "cfg"}
    assert [p["arm"] for p in doc["sweeps"][0]["points"]] == ["cfg", "eta=0.1,cfg_weight=2.0"]
    for name, arm in doc["arms"].items():
        assert arm["seeds"] == [3, 4]
        for metric in RATE_METRICS + ["n_generated", "generation_cpu_s"]:
            m = arm["metrics"][metric]
            assert m["description"] and m["unit"], (name, metric)
            assert len(m["per_seed"]) == 2 and "ci95_half_width" in m and "mean" in m
        for key in ("strict_2d_validity", "stable_rate", "sun_rate", "her_hit_rate"):
            v = arm["metrics"][key]
            assert 0.0 <= v["mean"] <= 1.0
        runs = [r for r in doc["runs"] if r["arm"] == name]
        # a generator arm scores n_eval of what it made; a filter arm only strictly valid samples, and the
        # number made within the CPU budget (so whether one of them is valid) depends on the machine
        expected = [
            1 if r["kind"] == "generator" else min(1, round(r["strict_fraction_generated"] * r["n_generated"]))
            for r in sorted(runs, key=lambda r: r["seed"])
        ]
        assert arm["metrics"]["n_evaluated"]["per_seed"] == expected
    assert doc["metric_definitions"]["stable_rate"]["description"].count("not strictly valid") == 1

    # equal budget: every arm and seed had the same budget, and no chunk started that the rule forbids
    budgets = {r["budget_cpu_s"] for r in doc["runs"]}
    assert budgets == {0.5}
    for r in doc["runs"]:
        costs = r["chunk_cpu_s"]
        assert r["n_chunks"] == len(costs) >= 1 and abs(sum(costs) - r["generation_cpu_s"]) < 1e-9
        if len(costs) > 1:
            assert sum(costs[:-1]) + max(costs[:-1]) <= 0.5
        assert r["n_generated"] >= len(r["samples"])
        # counted the same way: a sample that is not strictly valid is never stable, S.U.N. or a hit
        for s in r["samples"]:
            if not s["strict_ok"]:
                assert s["e_hull"] is None and not s["stable"] and not s["hit"]
            if s["hit"]:
                assert s["mlip_dg_h"] is not None or s["mlip_failure"]
            # a new confirmed hit is a confirmed hit that is novel and unique, and nothing else
            assert s["new_confirmed"] == (s["confirmed"] and s["novel"] and s["unique"])
        # confirmed hits per CPU-hour pay for generation and scoring, and are zero exactly without a confirmed hit
        m = r["metrics"]
        if m["n_evaluated"]:
            n_conf = sum(bool(s["confirmed"]) for s in r["samples"])
            assert (m["confirmed_hits_per_cpu_hour"] > 0) == (n_conf > 0) and m["confirmed_hits_per_cpu_hour"] >= 0
            assert m["new_confirmed_hits_per_cpu_hour"] <= m["confirmed_hits_per_cpu_hour"]
    assert "full_over_unguided:confirmed_hits_per_cpu_hour" in doc["comparisons"]
    for name, arm in doc["arms"].items():
        runs = [r for r in doc["runs"] if r["arm"] == name]
        assert arm["new_confirmed_total"] == sum(s["new_confirmed"] for r in runs for s in r["samples"])
        assert arm["new_confirmed_total"] <= arm["confirmed_total"] <= arm["hits_total"]
    # the filter arm keeps only strictly valid samples; the substitution arm never proposes the parent
    assert all(s["strict_ok"] for r in doc["runs"] if r["arm"] == "filter" for s in r["samples"])
    assert all(s["substitutions"] for r in doc["runs"] if r["arm"] == "substitution" for s in r["samples"])

    out = Path(spec["out"])
    on_disk = json.loads((out / "evaluate.json").read_text())
    assert on_disk["arms"].keys() == doc["arms"].keys()
    assert on_disk["command"] == f"gen2d evaluate {path} -s 'seeds=[3,4]' --json"
    assert (out / "arms.png").stat().st_size > 1000 and (out / "sweep_eta.png").is_file()
    table = (out / "results.md").read_text()
    assert all(f"| {name}" in table for name in doc["arms"])


def test_evaluate_flow_has_one_cpu_job_per_arm_and_seed():
    from gen2d.flows import evaluate_flow

    spec = EvaluateSpec.model_validate(TINY)
    flow = evaluate_flow(spec)
    names = [j.name for j in flow.jobs]
    # 5 arms + 1 new sweep point (eta=0 is the cfg arm), 2 seeds, then the aggregation
    assert len(names) == 6 * 2 + 1 and names[-1] == "evaluate aggregate"
    assert "evaluate eta=0.1,cfg_weight=2.0 seed 1" in names
    assert {j.config.manager_config.get("_category") for j in flow.jobs} == {"cpu"}


def test_gen2d_evaluate_names_a_bad_spec_in_json(tmp_path):
    from gen2d.cli import app

    missing = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nope.yaml"), "--json"])
    assert missing.exit_code == 2 and "no such spec" in json.loads(missing.stdout)["error"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"arms": [{"name": "x", "kind": "lottery"}]}))
    res = CliRunner().invoke(app, ["evaluate", str(bad), "--json"])
    assert res.exit_code == 2 and "invalid spec" in json.loads(res.stdout)["error"]


def test_a_stored_result_is_reused_only_for_the_same_model():
    """A retrained checkpoint at the same path must not inherit the old checkpoint's stored results."""
    from gen2d.evaluate import Resources, _model_identity, _run_key

    spec = EvaluateSpec(**{**TINY, "out": "unused"})
    arms, _ = spec.all_arms()
    unguided = next(a for a in arms if a.name == "unguided")
    a, b = _run_key(spec, unguided, 0, "sha-a"), _run_key(spec, unguided, 0, "sha-b")
    assert a != b and a == _run_key(spec, unguided, 0, "sha-a")
    # the shipped EGNN gives its checkpoint's sha256, so its key changes with the file's content
    from gen2d_egnn import shipped_checkpoint

    from gen2d.scoring import file_sha256

    assert _model_identity(Resources(spec), unguided) == file_sha256(shipped_checkpoint())
    # an arm field that changes what it outputs changes the key; the default value keys as before
    filt = next(a for a in arms if a.kind == "filter")
    loose = filt.model_copy(update={"filter_require_strict": False})
    assert _run_key(spec, loose, 0, "sha-a") != _run_key(spec, filt, 0, "sha-a")
    same = filt.model_copy(update={"filter_max_elements": filt.filter_max_elements})
    assert _run_key(spec, same, 0, "sha-a") == _run_key(spec, filt, 0, "sha-a")


def test_budget_definition_is_the_package_docstring_paragraph():
    # the evaluation JSON quotes how the budget is counted from gen2d.evaluate's docstring; after the
    # module became a package, the paragraph must still be found there, whole
    import gen2d.evaluate
    from gen2d.evaluate.aggregation import equal_budget_definition

    text = equal_budget_definition()
    assert text.startswith("for every arm and seed, generation runs in chunks of ``chunk`` samples")
    assert text.endswith("hits per CPU-hour extrapolate the hit rate to everything the arm produced within the budget.")
    assert "\n" not in text and "Equal budget" in gen2d.evaluate.__doc__


def test_a_repeated_confirmed_structure_is_one_distinct_hit_and_pooled_counts_get_exact_intervals():
    """A seed whose generator returns NbSe2 three times has one distinct confirmed hit, not three; the pooled
    figures over seeds are count / CPU-hours with an exact Poisson interval, and arms compare by an exact rate
    ratio on those pooled counts."""
    from gen2d.evaluate.aggregation import comparisons
    from gen2d.evaluate.arms import seed_metrics
    from gen2d.scoring import RankThresholds

    def record(formula, confirmed, unique):
        return {
            "formula": formula, "strict_ok": True, "smact_ok": True, "unique": unique, "novel": True,
            "e_hull": 0.0, "below_reference_hull": False, "hit": confirmed, "mlip_dg_h": 0.05 if confirmed else None,
            "confirmed": confirmed, "new_confirmed": confirmed and unique,
        }  # fmt: skip

    records = [record("NbSe2", True, True), record("NbSe2", True, False), record("NbSe2", True, False)]
    records += [record("TaS2", True, True)] + [record("MoS2", False, True) for _ in range(44)]
    summary = {"kind": "generator", "n_generated": 200, "generation_cpu_s": 40.0, "scoring_cpu_s": 144.0}
    m = seed_metrics(records, summary, RankThresholds())
    assert (m["n_confirmed"], m["n_distinct_confirmed"], m["n_new_confirmed"]) == (4, 2, 2)
    assert m["distinct_confirmed_hits_per_cpu_hour"] == pytest.approx(m["confirmed_hits_per_cpu_hour"] / 2)
    assert m["scored_cpu_hours"] * m["confirmed_hits_per_cpu_hour"] == pytest.approx(4)

    def arm(count, hours):
        pooled = {"rate": count / hours, "count": count, "cpu_hours": hours}
        return {"metrics": {"distinct_confirmed_hits_per_cpu_hour": {"mean": count / hours, "pooled": pooled}}}

    out = comparisons({"steered": arm(5, 0.05), "unguided": arm(2, 0.04)})
    rr = out["steered_over_unguided:distinct_confirmed_hits_per_cpu_hour"]["pooled_ratio"]
    assert rr["ratio"] == pytest.approx((5 / 0.05) / (2 / 0.04)) and rr["ci95_low"] < 1 < rr["ci95_high"]
    assert rr["counts"] == [5, 2] and 0.3 < rr["p_value"] <= 1.0


def test_a_required_kind_keeps_off_kind_outputs_out_of_the_scoring():
    items = [
        GeneratedStructure(structure=build_template(n), labels={"strict_valid": True})
        for n in ("graphene", "MoS2-2H", "hBN", "WS2-2H", "TiS2-1T", "graphene")
    ]
    vals = [{"dg_h": 0.0, "p_synth": 1.0}] * len(items)  # graphene would be the filter's first pick
    run = BudgetedRun(items, 1.0, 1, [1.0], 1.0, "budget", vals)
    kind = [["Mo", "W", "Ti"], ["S", "Se"]]
    assert of_kind(items[1].structure, kind) and not of_kind(items[0].structure, kind)
    assert of_kind(items[0].structure, None)
    for arm in (ArmSpec(name="u"), ArmSpec(name="f", kind="filter", keep=5)):
        idx, _ = select_for_evaluation(run, arm, n_eval=5, seed=0, thresholds=RankThresholds(), require_any_of=kind)
        assert sorted(idx) == [1, 3, 4], arm.name  # only the three metal sulfides, however many were asked for
    # without a kind, the uniform draw is the one it always was
    plain, _ = select_for_evaluation(run, ArmSpec(name="u"), n_eval=3, seed=0, thresholds=RankThresholds())
    again, _ = select_for_evaluation(
        run, ArmSpec(name="u"), n_eval=3, seed=0, thresholds=RankThresholds(), require_any_of=None
    )
    assert plain == again and len(plain) == 3


def test_outputs_of_another_kind_cost_cpu_and_deliver_nothing():
    records = [_record(hit=True), _record()]  # a hit rate of 1/2 on the scored samples
    base = {"kind": "generator", "n_generated": 100, "generation_cpu_s": 36.0}
    all_kind = seed_metrics(records, base, RankThresholds())
    half_off = seed_metrics(records, {**base, "n_off_kind": 50}, RankThresholds())
    # the same CPU bought half as many outputs of the kind asked for: half the hits per CPU-hour
    assert all_kind["hits_per_cpu_hour"] == pytest.approx(2 * half_off["hits_per_cpu_hour"])
    assert half_off["her_hit_rate"] == all_kind["her_hit_rate"] == 0.5
