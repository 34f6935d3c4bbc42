"""Flows end to end: discover and rank-cifs with run_locally, the same flow through FireWorks on
mongomock, reruns that add nothing, and a report whose tables hold the stored values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_graphene, make_mos2, write_cif
from jobflow import run_locally

from gen2d.config import FlowSpec, load_spec
from gen2d.flows import build_flow, job_store
from gen2d.store import get_score, open_store

SCORERS = [{"name": "synth.pu", "batch_size": 2}]


def tiny_discover(tmp_path, store_uri, n=3) -> FlowSpec:
    return FlowSpec.model_validate(
        {
            "flow": "discover",
            "name": "tiny",
            "set": "tiny",
            "store": store_uri,
            "generate": {"generator": "templates", "n": n},
            "scorers": SCORERS,
            "report": {"out": str(tmp_path / "report"), "top_k": 3},
        }
    )


def run(spec: FlowSpec):
    return run_locally(build_flow(spec), store=job_store(spec.store), log=False, ensure_success=True)


def snapshot(uri):
    with open_store(uri) as cs:
        return {
            d["candidate_id"]: (
                d["formula"],
                get_score(d, "synth.pu")["value"],
                get_score(d, "synth.pu")["provenance"]["created_at"],
            )
            for d in cs.query({})
        }


def test_discover_runs_locally_and_rerun_adds_and_redoes_nothing(tmp_path):
    uri = f"monty://{tmp_path}/store"
    spec = tiny_discover(tmp_path, uri)
    responses = run(spec)
    assert len(responses) >= 6  # generate, score (+2 batches, store_inputs), rank, report
    first = snapshot(uri)
    assert len(first) == 3 and all(v[1] is not None for v in first.values())
    with open_store(uri) as cs:
        doc = cs.get(next(iter(first)))
        assert doc["sources"][0]["kind"] == "templates" and doc["rank"]["thresholds"]["dg_h_window"] == 0.2
        assert get_score(doc, "synth.pu")["unit"] == "probability"
    run(spec)
    assert snapshot(uri) == first  # same ids, same values, same timestamps: nothing was redone


def test_report_tables_hold_stored_values(tmp_path):
    uri = f"monty://{tmp_path}/store"
    spec = tiny_discover(tmp_path, uri)
    run(spec)
    out = tmp_path / "report"
    for name in ("index.html", "report.json", "dg_h_distribution.png", "e_hull_vs_p_synth.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_candidates"] == 3
    src = {(r["source"], r["set"]): r for r in rep["sources"]}
    assert src[("templates", "tiny")]["n"] == 3 and src[("templates", "tiny")]["strict_valid"] == 3
    assert "0.2 eV" in (out / "index.html").read_text()


def test_rank_cifs_on_mixed_folder(tmp_path, bulk_si):
    d = tmp_path / "cifs"
    d.mkdir()
    write_cif(make_mos2(), d / "MoS2.cif")
    write_cif(make_graphene(), d / "graphene.cif")
    write_cif(bulk_si, d / "Si.cif")
    (d / "corrupt.cif").write_text("data_x\nloop_\n_atom_site_label\nMo 0 0\n")
    uri = f"monty://{tmp_path}/store"
    spec = FlowSpec.model_validate(
        {"flow": "rank-cifs", "set": "baseline", "store": uri, "input": str(d), "scorers": SCORERS, "report": None}
    )
    responses = run(spec)
    ingest_out = next(r[1].output for r in responses.values() if getattr(r[1].output, "generator", "") == "cif-set")
    assert ingest_out.n_accepted == 2
    assert {r["source_id"]: r["reason"] for r in ingest_out.rejected} == {
        "Si.cif": "bulk_crystal",
        "corrupt.cif": "unreadable_file",
    }
    assert {v[0] for v in snapshot(uri).values()} == {"MoS2", "C"}


def test_same_flow_through_fireworks_on_mongomock_lands_the_same(tmp_path):
    spec = tiny_discover(tmp_path, f"monty://{tmp_path}/local")
    run(spec)
    local = snapshot(spec.store)
    fw_spec = tmp_path / "fw.yaml"
    fw_spec.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    server = tmp_path / "mongomock.json"
    server.write_text("{}")
    env = {**os.environ, "MONGOMOCK_SERVERSTORE_FILE": str(server)}
    fw_uri = f"monty://{tmp_path}/fw"
    res = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fw_runner.py")), str(fw_spec), fw_uri],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    states = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(states["categories"]) == {"gpu", "cpu"}
    assert set(states["states"].values()) == {"COMPLETED"}
    remote = snapshot(fw_uri)
    assert {k: v[:2] for k, v in remote.items()} == {k: v[:2] for k, v in local.items()}


def test_workflow_specs_parse_and_build():
    root = Path(__file__).resolve().parents[1] / "workflows"
    for name in ("discover.yaml", "rank-cifs.yaml", "pretrain-surrogate.yaml"):
        spec = load_spec(root / name, ["input=/tmp/somewhere"] if name == "rank-cifs.yaml" else None)
        flow = build_flow(spec)
        assert flow.jobs
    spec = load_spec(root / "discover.yaml", ["generate.n=7", "thresholds.dg_h_window=0.15"])
    assert spec.generate.n == 7 and spec.thresholds.dg_h_window == 0.15
    cats = {j.config.manager_config.get("_category") for j in build_flow(spec).jobs}
    assert cats == {"gpu", "cpu", "dft"}  # the confirm stage (DFT on the top 3) is its own category
    off = load_spec(root / "discover.yaml", ["confirm.m=0"])
    assert {j.config.manager_config.get("_category") for j in build_flow(off).jobs} == {"gpu", "cpu"}
    assert load_spec(root / "quickstart.yaml").confirm.m == 0  # the quickstart never waits on DFT


def test_evaluate_spec_names_every_arm_of_the_comparison():
    """The committed evaluation holds the arms the generator is judged by, each with a guidance that resolves."""
    from gen2d_egnn import sampling_config

    from gen2d.evaluate import EvaluateSpec

    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflows" / "evaluate.yaml").read_text())
    arms, _ = EvaluateSpec.model_validate(doc).all_arms()
    by_name = {a.name: a for a in arms}
    assert {"unguided", "gradient", "full", "steered", "substitution", "filter"} <= set(by_name)
    configs = {n: sampling_config(a.params["guidance"]) for n, a in by_name.items() if "guidance" in a.params}
    assert configs["steered"].steering is not None and configs["unguided"].steering is None
    assert configs["gradient"].eta > 0 and configs["gradient"].cfg_weight is None


def test_gen2d_submit_adds_workflow_with_categories_and_no_secrets(tmp_path):
    server = tmp_path / "mongomock.json"
    server.write_text("{}")
    lp = tmp_path / "my_launchpad.yaml"
    lp.write_text("host: localhost\nname: fireworks\n")
    spec = Path(__file__).resolve().parents[1] / "workflows" / "discover.yaml"
    env = {
        **os.environ,
        "MONGOMOCK_SERVERSTORE_FILE": str(server),
        "GEN2D_STORE": "mongodb://gen2d:pa55word@db.example/gen2d",
    }
    reset = f"from fireworks import LaunchPad; LaunchPad.from_file({str(lp)!r}).reset('', require_password=False)"
    subprocess.run([sys.executable, "-c", reset], check=True, env=env, cwd=tmp_path, capture_output=True)  # lpad reset
    res = subprocess.run(
        [sys.executable, "-m", "gen2d.cli", "submit", str(spec), "--launchpad", str(lp), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    assert doc["categories"] == ["cpu", "dft", "gpu"] and doc["fireworks"] >= 6
    assert "pa55word" not in server.read_text()  # the workers' GEN2D_STORE is never written into the workflow
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "gen2d.cli",
            "submit",
            str(spec),
            "--launchpad",
            str(lp),
            "--store",
            "mongodb://u:pw@h/db",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode == 2 and "password" in json.loads(bad.stdout)["error"]


def test_gen2d_submit_with_an_embedded_store_gives_every_firework_its_absolute_path_and_the_locked_job_store(
    tmp_path,
):
    server = tmp_path / "mongomock.json"
    server.write_text("{}")
    lp = tmp_path / "my_launchpad.yaml"
    lp.write_text("host: localhost\nname: fireworks\n")
    spec = Path(__file__).resolve().parents[1] / "workflows" / "discover.yaml"
    env = {**os.environ, "MONGOMOCK_SERVERSTORE_FILE": str(server)}
    env.pop("GEN2D_STORE", None)

    def run(*args):
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
        )

    reset = f"from fireworks import LaunchPad; LaunchPad.from_file({str(lp)!r}).reset('', require_password=False)"
    assert run("-c", reset).returncode == 0  # lpad reset
    res = run("-m", "gen2d.cli", "submit", str(spec), "--launchpad", str(lp), "--store", "monty://./db", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    absolute = f"monty://{(tmp_path / 'db').resolve()}"
    assert doc["store"] == absolute and doc["job_store"] == "workflow"
    # what a worker reads back from the LaunchPad (FireWorks' mongomock server is set up at import, in a process)
    read = f"""
import json
from fireworks import LaunchPad
lp = LaunchPad.from_file({str(lp)!r})
out = []
for i in lp.get_fw_ids():
    task = lp.get_fw_by_id(i).tasks[0]
    docs = task["store"].docs_store
    out.append([type(docs).__module__, type(docs).__name__, docs.database_path, json.dumps(task["job"].as_dict(), default=str)])
print(json.dumps(out))
"""
    got = run("-c", read)
    assert got.returncode == 0, got.stderr[-2000:]
    fws = json.loads(got.stdout)
    assert len(fws) == doc["fireworks"]
    for module, cls, path, job in fws:
        # the worker's jobflow outputs: the same montydb, under the candidate store's lock, wherever rlaunch runs
        assert (module, cls) == ("gen2d.monty", "LockedMontyStore")
        assert Path(path) == (tmp_path / "db").resolve()
        assert "monty://./db" not in job  # no relative path reaches a worker's launch folder
    assert any(absolute in job for *_, job in fws)

    memory = run("-m", "gen2d.cli", "submit", str(spec), "--launchpad", str(lp), "--store", "memory://x", "--json")
    assert memory.returncode == 2
    assert "one process" in json.loads(memory.stdout)["error"]
    again = run("-c", read)
    assert len(json.loads(again.stdout)) == doc["fireworks"]  # the refusal added nothing


def test_scorer_where_filter_limits_what_is_scored(tmp_path):
    uri = f"monty://{tmp_path}/store"
    spec = FlowSpec.model_validate(
        {
            "flow": "discover",
            "set": "w",
            "store": uri,
            "generate": {"generator": "templates", "n": 4},
            "scorers": [{"name": "synth.pu", "where": ["formula=MoS2", "nelements<=2"]}],
            "report": None,
        }
    )
    run(spec)
    with open_store(uri) as cs:
        scored = {d["formula"] for d in cs.query({}) if get_score(d, "synth.pu")}
        assert {d["nelements"] for d in cs.query({})} == {2}
    assert scored == {"MoS2"}


class _SchemeScorer:
    """A scorer that only satisfies the protocol, whose results carry a correction scheme."""

    name, property, unit, requires = "ehull.scheme", "e_hull", "eV/atom", ()
    current = {"provenance.settings.correction_scheme": "v1"}

    def __init__(self):
        self.seen = []

    def available(self):
        return True, ""

    def score(self, structures, context=None):
        from gen2d.scoring import Provenance, ScoreResult

        self.seen += [s.composition.reduced_formula for s in structures]
        return [
            ScoreResult(
                property="e_hull",
                value=0.01,
                unit="eV/atom",
                provenance=Provenance(plugin=self.name, settings={"correction_scheme": "v1"}),
            )
            for _ in structures
        ]


def test_a_score_flow_redoes_results_made_under_an_older_scheme(tmp_path, monkeypatch):
    """ScoreMaker finds its work as `gen2d score` does: absent results and results that are not current."""
    from jobflow import Flow

    from gen2d import jobs
    from gen2d.scoring import Provenance, ScoreResult
    from gen2d.store import SourceInfo, make_candidate

    uri = f"monty://{tmp_path}/store"
    cands = [
        make_candidate(make_mos2(), SourceInfo(kind="dataset", set="s", source_id="mos2")),
        make_candidate(make_graphene(), SourceInfo(kind="dataset", set="s", source_id="gr")),
    ]
    old = ScoreResult(
        property="e_hull",
        value=-0.27,
        unit="eV/atom",
        provenance=Provenance(plugin="ehull.scheme", settings={"correction_scheme": "v0"}),
    )
    with open_store(uri) as cs:
        cs.upsert_candidates(cands)
        cs.set_score(cands[0].candidate_id, "ehull.scheme", old)  # made under the older scheme
    sc = _SchemeScorer()
    monkeypatch.setattr(jobs, "get_scorer", lambda name, **options: sc)
    with open_store(uri) as cs:
        cli_todo = jobs.candidates_to_score(cs, "ehull.scheme", None, {"sets": "s"})
    flow = Flow([jobs.ScoreMaker(scorer="ehull.scheme", set_name="s").make(uri)])
    run_locally(flow, store=job_store(uri), log=False, ensure_success=True)
    assert sorted(sc.seen) == ["C", "MoS2"]  # the stale MoS2 result was redone, graphene scored
    assert set(cli_todo) == {c.candidate_id for c in cands}
    with open_store(uri) as cs:
        redone = cs.get(cands[0].candidate_id).score("ehull.scheme")
        assert redone.value == 0.01 and redone.extra["superseded"]["value"] == -0.27
        assert jobs.candidates_to_score(cs, "ehull.scheme", None, {"sets": "s"}) == []
    run_locally(
        Flow([jobs.ScoreMaker(scorer="ehull.scheme", set_name="s").make(uri)]),
        store=job_store(uri),
        log=False,
        ensure_success=True,
    )
    assert len(sc.seen) == 2  # everything current: a rerun redoes nothing


def _spec_with_bad_option(tmp_path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "flow": "discover",
                "name": "bad",
                "set": "bad",
                "generate": {"generator": "templates", "n": 1},
                "scorers": [{"name": "synth.pu"}, {"name": "ehull.chgnet", "options": {"fmaxx": 0.1}}],
                "report": None,
            }
        )
    )
    return path


def test_a_bad_scorer_option_is_refused_when_the_flow_is_built(tmp_path):
    from gen2d.scoring import ScorerOptionsError

    spec = load_spec(_spec_with_bad_option(tmp_path))
    with pytest.raises(
        ScorerOptionsError,
        match=r"scorers\[1\]: scorer ehull.chgnet: unknown option 'fmaxx' "
        r"\(did you mean 'fmax'\?\)",
    ):
        build_flow(spec)
    spec.scorers[1].options = {"fmax": "fast"}
    with pytest.raises(ScorerOptionsError, match="option 'fmax'"):
        build_flow(spec)
    spec.scorers[1].name = "ehull.chgnett"
    with pytest.raises(ScorerOptionsError, match="no scorer plugin named 'ehull.chgnett'"):
        build_flow(spec)
    spec.scorers[1] = spec.scorers[1].model_copy(update={"name": "ehull.chgnet", "options": {"fmax": 0.1}})
    assert build_flow(spec).jobs  # a good option passes


def test_gen2d_run_refuses_a_bad_scorer_option_by_name(tmp_path):
    from typer.testing import CliRunner

    from gen2d.cli import app

    uri = f"monty://{tmp_path}/store"
    res = CliRunner().invoke(app, ["run", str(_spec_with_bad_option(tmp_path)), "--store", uri, "--json"])
    assert res.exit_code == 2, res.output
    error = json.loads(res.stdout)["error"]
    assert "unknown option 'fmaxx'" in error and "ehull.chgnet" in error
    with open_store(uri) as cs:
        assert cs.count() == 0  # refused before any job ran


def test_gen2d_submit_refuses_a_bad_scorer_option_by_name(tmp_path):
    server = tmp_path / "mongomock.json"
    server.write_text("{}")
    lp = tmp_path / "my_launchpad.yaml"
    lp.write_text("host: localhost\nname: fireworks\n")
    env = {**os.environ, "MONGOMOCK_SERVERSTORE_FILE": str(server)}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "gen2d.cli",
            "submit",
            str(_spec_with_bad_option(tmp_path)),
            "--launchpad",
            str(lp),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    error = json.loads(res.stdout)["error"]
    assert "unknown option 'fmaxx'" in error and "scorers[1]" in error
    assert "fireworks" not in server.read_text()  # nothing reached the LaunchPad


def test_improve_her_sends_the_least_certain_near_hits_to_dft_then_finetunes_and_retrains(tmp_path):
    from gen2d.jobs import select_for_dft
    from gen2d.scoring import Provenance, ScoreResult
    from gen2d.store import SourceInfo, make_candidate

    def dg(value, unc):
        return ScoreResult(
            property="dg_h", value=value, unit="eV", uncertainty=unc, provenance=Provenance(plugin="dgh.dimenet")
        )

    layers = {
        "mos2": (make_mos2(), dg(0.1, 0.3)),
        "graphene": (make_graphene(), dg(-0.4, 0.5)),
        "far": (make_mos2(a=3.25), dg(1.2, 0.9)),  # not a near-hit, however uncertain
        "done": (make_mos2(a=3.10), dg(-0.2, 0.8)),  # a near-hit that already has DFT
    }
    uri = f"monty://{tmp_path}/store"
    ids = {}
    with open_store(uri) as cs:
        for name, (structure, res) in layers.items():
            cand = make_candidate(structure, SourceInfo(kind="dataset", set="s", source_id=name))
            cs.upsert_candidates([cand])
            cs.set_score(cand.candidate_id, "dgh.dimenet", res)
            ids[name] = cand.candidate_id
        done = ScoreResult(property="dg_h", value=0.9, unit="eV", provenance=Provenance(plugin="dgh.dft"))
        cs.set_score(ids["done"], "dgh.dft", done)
        sel = select_for_dft(cs, "s", k=2, window=0.5)
    assert sel.candidate_ids == [ids["graphene"], ids["mos2"]]  # largest uncertainty first
    assert sel.n_near_hits == 2 and sel.rows[0]["uncertainty_eV"] == 0.5 and sel.rows[1]["dg_h_eV"] == 0.1

    spec = load_spec(Path(__file__).resolve().parents[1] / "workflows" / "improve-her.yaml", [f"store={uri}"])
    flow = build_flow(spec)
    by_name = {j.name: j for j in flow.jobs}
    order = ["select near-hits by uncertainty", "dgh.dft", "fine-tune chgnet-her", "retrain dgh.dimenet", "what moved"]
    jobs_ = [by_name[f"improve: {n}"] for n in order]
    assert [j.config.manager_config.get("_category") for j in jobs_] == ["cpu", "dft", "gpu", "gpu", "cpu"]
    for upstream, downstream in zip(jobs_, jobs_[1:]):  # each step waits for the one before
        assert upstream.uuid in {ref.uuid for ref in downstream.input_references}
    # the fine-tune trains on the DFT folder the DFT step writes; the surrogate is labelled with the fine-tuned model
    ft_options = jobs_[2].maker.options
    sur_options = jobs_[3].maker.options
    assert ft_options["frames"][0].endswith("improve-her/dft")
    assert sur_options["mlip"] == {
        "calculator": "chgnet-her",
        "model": ft_options["out"],
        "max_sites_per_face": 2,
        "steps": 100,
        "fmax": 0.1,
        "slab_fmax": 0.1,
        "slab_steps": 150,
    }
    assert jobs_[1].maker.options["workdir"] == ft_options["frames"][0]
