"""The gen2d command: ingest (folders, dbs, templates), plugins, top, show, export; --json purity."""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import make_graphene, make_mos2, write_cif
from typer.testing import CliRunner

from gen2d.cli import app

runner = CliRunner()


def run_json(*args):
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # --json: stdout holds exactly one JSON document


@pytest.fixture
def store_uri(tmp_path):
    return f"monty://{tmp_path}/store"


@pytest.fixture
def mixed_folder(tmp_path, bulk_si, mos2_bilayer):
    d = tmp_path / "cifs"
    d.mkdir()
    write_cif(make_mos2(), d / "MoS2.cif")
    write_cif(make_graphene(), d / "graphene.cif")
    write_cif(bulk_si, d / "Si_bulk.cif")
    write_cif(mos2_bilayer, d / "MoS2_bilayer.cif")
    (d / "corrupt.cif").write_text("data_broken\n_cell_length_a 3.2\n_atom_site_fract_x\n")
    (d / "weird name (copy) ü.cif").write_text((d / "MoS2.cif").read_text())
    return d


def test_ingest_folder_rejects_by_name_and_stores_the_valid(mixed_folder, store_uri):
    doc = run_json("ingest", str(mixed_folder), "--set", "mixed", "--store", store_uri)
    assert doc["read"] == 6 and doc["accepted"] == 3
    assert doc["inserted"] == 2 and doc["updated"] == 1  # the renamed MoS2 copy is the same material
    reasons = {r["source_id"]: r["reason"] for r in doc["rejected"]}
    assert reasons == {
        "Si_bulk.cif": "bulk_crystal",
        "MoS2_bilayer.cif": "stacked_layers",
        "corrupt.cif": "unreadable_file",
    }
    again = run_json("ingest", str(mixed_folder), "--set", "mixed", "--store", store_uri)
    assert again["inserted"] == 0
    top = run_json("top", "--store", store_uri)
    assert top["total"] == 2 and {r["formula"] for r in top["rows"]} == {"MoS2", "C"}
    assert all(r["e_hull_unit"] == "eV/atom" and r["dg_h_unit"] == "eV" for r in top["rows"])


def test_ingest_text_output_lists_rejections(mixed_folder, store_uri):
    res = runner.invoke(app, ["ingest", str(mixed_folder), "--set", "mixed", "--store", store_uri])
    assert res.exit_code == 0
    assert "bulk_crystal" in res.stdout and "stacked_layers" in res.stdout and "accepted 3" in res.stdout


def test_show_and_export(mixed_folder, store_uri, tmp_path):
    run_json("ingest", str(mixed_folder), "--set", "mixed", "--store", store_uri)
    cid = run_json("top", "--store", store_uri, "--where", "formula=MoS2")["rows"][0]["candidate_id"]
    doc = run_json("show", cid, "--store", store_uri)
    assert doc["formula"] == "MoS2" and doc["validity"]["strict"]["ok"]
    text = runner.invoke(app, ["show", cid[:12], "--store", store_uri])
    assert text.exit_code == 0 and "MoS2" in text.stdout
    missing = runner.invoke(app, ["show", "g2d-nothere", "--store", store_uri, "--json"])
    assert missing.exit_code == 1 and "error" in json.loads(missing.stdout)
    for fmt in ("cif", "extxyz"):
        res = run_json("export", "--set", "mixed", "--format", fmt, "--out", str(tmp_path / fmt), "--store", store_uri)
        assert res["written"] == 2
        from gen2d.structures import load_structure

        back = load_structure(next(p for p in res["files"] if "MoS2" in p))
        assert back.composition.reduced_formula == "MoS2"


def test_plugins_json_lists_kinds():
    doc = run_json("plugins")
    kinds = {(p["kind"], p["name"]) for p in doc["plugins"]}
    assert ("generator", "templates") in kinds and ("scorer", "synth.pu") in kinds
    assert ("calculator", "chgnet") in kinds
    assert all("reason" in p for p in doc["plugins"])


def test_templates_ingest_and_table(store_uri):
    doc = run_json("ingest", "builtin:templates", "--set", "templates", "--store", store_uri)
    assert doc["read"] >= 30 and doc["accepted"] == doc["read"] and doc["strict_ok"] == doc["accepted"]
    res = runner.invoke(app, ["top", "--k", "50", "--store", store_uri])
    assert res.exit_code == 0 and "MoS2" in res.stdout and "E_hull (eV/atom)" in res.stdout


def test_bad_where_and_bad_store_are_errors_not_tracebacks(store_uri):
    res = runner.invoke(app, ["top", "--where", "nonsense", "--store", store_uri, "--json"])
    assert res.exit_code == 2 and "cannot parse filter" in json.loads(res.stdout)["error"]
    res = runner.invoke(app, ["top", "--store", "mongodb://u:hunter2@127.0.0.1:9/x", "--json"])
    assert res.exit_code == 2 and "hunter2" not in res.output


def test_ingest_2dmatpedia_and_mc2d(data_dir):
    uri = f"memory://m{uuid.uuid4().hex[:6]}"
    doc = run_json("ingest", str(data_dir / "2dmatpedia_filtered.db"), "--set", "2dmatpedia", "--store", uri)
    assert doc["read"] == 1224
    assert doc["accepted_fraction"] >= 0.90
    assert sum(doc["rejection_reasons"].values()) == doc["read"] - doc["accepted"]
    # molecular and weakly bonded layers pass ingest and fail strict: the strict rate is lower
    assert 0.5 < doc["strict_fraction"] < 0.95
    mc = run_json("ingest", str(data_dir / "mc2d_258_exfoliable.json"), "--set", "mc2d", "--store", uri)
    assert mc["read"] == 258 and mc["accepted"] == 258


def test_top_show_failed_lists_reasons(store_uri):
    from gen2d.scoring import Provenance, ScoreResult
    from gen2d.store import open_store

    run_json("ingest", "builtin:templates", "--set", "t", "--store", store_uri)
    with open_store(store_uri) as cs:
        cid = next(cs.query({"formula": "MoS2"}))["candidate_id"]
        cs.set_score(
            cid,
            "ehull.test",
            ScoreResult.failed("e_hull", "eV/atom", "not_converged", "500 FIRE steps", Provenance(plugin="t")),
        )
    doc = run_json("top", "--show-failed", "--store", store_uri)
    assert doc["failed"] == 1
    assert doc["rows"][0]["candidate_id"] == cid and doc["rows"][0]["reasons"] == ["ehull.test:not_converged"]


def test_train_config_reads_the_train_section(tmp_path, monkeypatch):
    """configs/egnn.yaml keeps its training options under `train:`; those, not the section names,
    must reach the plugin (they were silently dropped once, so training ran on defaults)."""
    import json

    from typer.testing import CliRunner

    import gen2d.jobs
    from gen2d.cli import app

    seen = {}

    def fake_train(kind, name, **options):
        seen.update(kind=kind, name=name, options=options)
        return {"checkpoint": "x"}

    monkeypatch.setattr(gen2d.jobs, "train_plugin", fake_train)
    cfg = tmp_path / "egnn.yaml"
    cfg.write_text("train:\n  max_steps: 123\n  lr: 0.0005\nsample:\n  cfg_weight: 2.0\n")
    res = CliRunner().invoke(
        app, ["train", "--generator", "egnn-diffusion", "--config", str(cfg), "-o", "lr=0.001", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert seen["options"] == {"max_steps": 123, "lr": 0.001}
    flat = tmp_path / "pu.yaml"
    flat.write_text("n_estimators: 10\n")
    res = CliRunner().invoke(app, ["train", "--scorer", "synth.pu", "--config", str(flat), "--json"])
    assert res.exit_code == 0 and seen["options"] == {"n_estimators": 10}
    assert json.loads(res.stdout)["plugin"] == "synth.pu"
