"""Hostile inputs: every one rejected with its named reason through the CLI, the Python API and the
rank-cifs flow, no traceback, and every valid file of the same batch stored."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from jobflow import run_locally

from gen2d.config import FlowSpec
from gen2d.data.ingest import ingest_outcomes
from gen2d.data.readers import read_any
from gen2d.flows import build_flow, job_store
from gen2d.store import open_store

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile")
    subprocess.run([sys.executable, str(HERE / "data" / "make_hostile.py"), str(out)], check=True, capture_output=True)
    expected = json.loads((out / "expected.json").read_text())
    assert len(expected) >= 40
    return out, expected


def _check(expected, rejected, stored_ids):
    got = {r["source_id"]: r["reason"] for r in rejected}
    for name, reason in expected.items():
        assert got.get(name, "ok") == reason, (name, got.get(name), reason)
    # MoS2 in five files (one with 1,000 Å vacuum), graphene, h-BN: three materials
    assert len(set(stored_ids)) == 3


def test_cli_ingest_names_every_hostile_input(corpus):
    out, expected = corpus
    uri = f"monty://{out}/cli-store"
    res = subprocess.run(
        [sys.executable, "-m", "gen2d.cli", "ingest", str(out / "files"), "--set", "hostile", "--store", uri, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    doc = json.loads(res.stdout)
    assert doc["read"] == len(expected)
    with open_store(uri) as cs:
        ids = [d["candidate_id"] for d in cs.query({})]
    _check(expected, doc["rejected"], ids)


def test_python_api_names_every_hostile_input_and_refuses_huge_early(corpus):
    out, expected = corpus
    cs = open_store(f"memory://h{uuid.uuid4().hex[:6]}")
    rep = ingest_outcomes(read_any(out / "files"), cs, "hostile")
    _check(expected, rep.rejected, rep.candidate_ids)
    huge = next(r for r in rep.rejected if r["source_id"] == "huge_10000_atoms.extxyz")
    assert huge["message"].startswith("10092 atoms")


def test_broken_db_row_is_named_and_later_rows_still_read(corpus):
    out, _ = corpus
    outcomes = list(read_any(out / "broken_rows.db"))
    assert len(outcomes) == 4
    assert [o.rejection.reason for o in outcomes if o.rejection] == ["unreadable_row", "unreadable_row"]
    assert [o.record.source_id for o in outcomes if o.record] == ["good-0", "good-3"]


def test_rank_cifs_flow_survives_the_corpus(corpus, tmp_path):
    out, expected = corpus
    uri = f"monty://{tmp_path}/store"
    spec = FlowSpec.model_validate(
        {
            "flow": "rank-cifs",
            "set": "hostile",
            "store": uri,
            "input": str(out / "files"),
            "scorers": [{"name": "synth.pu", "batch_size": 8}],
            "report": None,
        }
    )
    responses = run_locally(build_flow(spec), store=job_store(uri), log=False, ensure_success=True)
    ingest_out = next(r[1].output for r in responses.values() if getattr(r[1].output, "generator", "") == "cif-set")
    assert ingest_out.n_generated == len(expected)
    with open_store(uri) as cs:
        docs = list(cs.query({}))
        assert len(docs) == 3
        assert all(d["summary"]["p_synth"]["unit"] == "probability" for d in docs)
