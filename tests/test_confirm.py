"""The ``confirm`` stage: DFT ΔG_H (``dgh.dft``, CP2K) on the top m of a flow, under run_locally and FireWorks.

The DFT settings are tiny (minimal basis, coarse grid, 2×2 cells) so that a real CP2K run fits in a
test; the FireWorks run shares the local run's DFT work directory, so it reuses the finished DFT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DGH_DFT_TINY, make_mos2, needs_cp2k, write_cif
from jobflow import run_locally

from gen2d.config import FlowSpec
from gen2d.data.templates import build_template
from gen2d.flows import build_flow, job_store
from gen2d.store import get_score, open_store


def confirm_spec(tmp_path, store_uri: str, dft_workdir: Path) -> FlowSpec:
    d = tmp_path / "cifs"
    d.mkdir(exist_ok=True)
    write_cif(build_template("graphene"), d / "graphene.cif")
    write_cif(make_mos2(), d / "MoS2.cif")
    return FlowSpec.model_validate(
        {
            "flow": "rank-cifs",
            "name": "confirm",
            "set": "c",
            "store": store_uri,
            "input": str(d),
            "scorers": [{"name": "synth.pu", "batch_size": 4}],
            # m = 2 but only graphene passes `where`: the stage takes the top m of those that pass
            "confirm": {"m": 2, "where": ["formula=C"], "options": DGH_DFT_TINY | {"workdir": str(dft_workdir)}},
            "report": {"out": str(tmp_path / "report"), "top_k": 2},
        }
    )


def dft_scores(uri: str) -> dict[str, dict]:
    with open_store(uri) as cs:
        return {d["formula"]: get_score(d, "dgh.dft") for d in cs.query({}) if get_score(d, "dgh.dft")}


@pytest.mark.slow
@needs_cp2k
def test_confirm_stage_runs_dft_on_top_m_locally_and_under_fireworks(tmp_path, dft_workdir):
    uri = f"monty://{tmp_path}/local"
    spec = confirm_spec(tmp_path, uri, dft_workdir)
    cats = {j.config.manager_config.get("_category") for j in build_flow(spec).jobs}
    assert "dft" in cats
    run_locally(build_flow(spec), store=job_store(uri), log=False, ensure_success=True)
    local = dft_scores(uri)
    assert list(local) == ["C"]  # MoS2 did not pass the stage's filter
    ((formula, res),) = local.items()
    assert res["ok"], res
    assert res["unit"] == "eV" and res["value"] > 0.3  # H binds weakly on both basal planes
    assert res["provenance"]["settings"]["cp2k_settings_hash"]
    with open_store(uri) as cs:
        doc = next(cs.query({"formula": formula}))
        assert doc["summary"]["dg_h"]["scorer"] == "dgh.dft"  # the funnel's last word is DFT's
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["n_candidates"] == 2
    (stage,) = report["dg_h_by_stage"]  # the report sets DFT beside the cheaper stages
    assert stage["formula"] == "C" and stage["dg_h_dft_eV"] == pytest.approx(res["value"])
    assert stage["dg_h_mlip_eV"] is None  # this flow ran no dgh.mlip stage
    # graphene in a 2×2 cell: Γ misses the Dirac point, and the report says so beside the DFT value
    assert res["extra"]["supercell"] == [2, 2] and stage["dft_gamma_samples_k"] is False
    page = (tmp_path / "report" / "index.html").read_text()
    assert "ΔG_H by stage" in page and "Γ misses K" in page

    fw_spec = tmp_path / "fw.yaml"
    fw_spec.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    server = tmp_path / "mongomock.json"
    server.write_text("{}")
    env = {**os.environ, "MONGOMOCK_SERVERSTORE_FILE": str(server)}
    fw_uri = f"monty://{tmp_path}/fw"
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fw_runner.py")), str(fw_spec), fw_uri],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    states = json.loads(out.stdout.strip().splitlines()[-1])
    assert "dft" in states["categories"] and set(states["states"].values()) == {"COMPLETED"}
    remote = dft_scores(fw_uri)
    assert remote.keys() == local.keys()
    assert remote[formula]["value"] == pytest.approx(res["value"])  # same DFT, read from its work directory


def test_a_bad_confirm_option_is_refused_when_the_flow_is_built(tmp_path):
    """A typo in the DFT stage fails on the submitting machine, not hours later on a DFT node."""
    from gen2d.scoring import ScorerOptionsError

    base = {"flow": "rank-cifs", "set": "c", "input": str(tmp_path), "scorers": []}
    with pytest.raises(ScorerOptionsError, match="confirm: .*n_site.*did you mean 'n_sites'"):
        build_flow(FlowSpec.model_validate(base | {"confirm": {"m": 1, "options": {"n_site": 2}}}))
    with pytest.raises(ScorerOptionsError, match="cutoff_ryy"):
        build_flow(FlowSpec.model_validate(base | {"confirm": {"m": 1, "options": {"cp2k": {"cutoff_ryy": 400}}}}))
    assert build_flow(FlowSpec.model_validate(base | {"confirm": {"m": 0, "options": {"n_site": 2}}})).jobs
