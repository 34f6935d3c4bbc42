"""The egnn-diffusion plugin: registry entry, Generator protocol, provenance on every output."""

from __future__ import annotations

import pytest

from gen2d.scoring import GeneratedStructure, Generator, PluginUnavailable, get_generator


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_bundle, tmp_path_factory):
    from gen2d.diffusion.train import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, tiny_bundle, step=120)
    return path


def test_registered_and_protocol(tiny_checkpoint):
    gen = get_generator("egnn-diffusion", checkpoint=tiny_checkpoint, device="cpu")
    assert isinstance(gen, Generator)
    assert gen.available() == (True, "")


def test_missing_checkpoint_is_unavailable_with_a_reason(tmp_path):
    gen = get_generator("egnn-diffusion", checkpoint=tmp_path / "nope.pt")
    ok, why = gen.available()
    assert not ok and "nope.pt" in why
    with pytest.raises(PluginUnavailable):
        list(gen.generate(n=1))


def test_generate_carries_provenance_and_validity(tiny_checkpoint):
    gen = get_generator("egnn-diffusion", checkpoint=tiny_checkpoint, device="cpu")
    out = list(gen.generate(n=3, seed=4, guidance="both", n_steps=5))
    assert len(out) == 3 and all(isinstance(g, GeneratedStructure) for g in out)
    for i, g in enumerate(out):
        p = g.parameters
        assert p["seed"] == 4 and p["index"] == i and p["guidance"] == "both"
        assert p["sampling"]["cfg_weight"] == 2.0 and p["sampling"]["eta"] == 0.05
        assert len(p["checkpoint_sha256"]) == 64 and p["schedule"]["T"] == 1000
        assert isinstance(g.labels["strict_valid"], bool)
        assert g.labels["predicted_units"]["predicted_dg_h"] == "eV"
        assert g.structure.lattice.c >= 20.0


def test_template_starts_keep_the_template_cell(tiny_checkpoint):
    from gen2d.data.templates import build_template

    gen = get_generator("egnn-diffusion", checkpoint=tiny_checkpoint, device="cpu")
    usable = [
        n
        for n in ("silicene", "germanene", "phosphorene")
        if {e.symbol for e in build_template(n).composition} <= set(gen.bundle.rep.vocab)
    ]
    assert usable, "tiny model's vocabulary should cover Si, Ge or P"
    out = list(gen.generate(n=2, seed=0, start="templates", templates=usable, n_steps=5))
    for g in out:
        name = g.parameters["start"].split(":", 1)[1]
        ref = build_template(name)
        assert len(g.structure) == len(ref)
        assert abs(g.structure.lattice.a - ref.lattice.a) < 1e-4
        assert (
            abs(g.structure.lattice.gamma - ref.lattice.gamma) < 1e-3
            or abs(g.structure.lattice.gamma - (180 - ref.lattice.gamma)) < 1e-3
        )


def test_diverged_guidance_is_stored_flagged_and_never_a_hit(tiny_checkpoint, tmp_path):
    """Through the CLI: samples whose guidance diverged are stored with a flag, listed by
    `top --show-failed` with the reason, and ranked as non-hits even with hit-like scores."""
    import json

    from typer.testing import CliRunner

    from gen2d.cli import app
    from gen2d.jobs import rank_set
    from gen2d.scoring import Provenance, RankThresholds, ScoreResult
    from gen2d.store import open_store

    uri = f"monty://{tmp_path / 'store'}"
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "generate",
            "--n",
            "3",
            "--seed",
            "1",
            "--steps",
            "5",
            "--set",
            "div",
            "--guidance",
            "eta=0.1",
            "--guidance",
            "divergence_grad_rms=1e-9",
            "--option",
            f"checkpoint={tiny_checkpoint}",
            "--option",
            "device=cpu",
            "--store",
            uri,
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    gen_out = json.loads(res.stdout)
    assert gen_out["n_flagged"] == gen_out["n_accepted"] >= 1
    cs = open_store(uri)
    docs = list(cs.query({"sets": "div"}))
    assert docs and all(d["flags"]["guidance_diverged"]["diverged_reasons"] == ["exploding_guidance"] for d in docs)
    prov = Provenance(plugin="test", model="hand-set")
    for d in docs:  # scores that would make a hit
        for prop, val, unit in (("dg_h", 0.0, "eV"), ("e_hull", 0.0, "eV/atom"), ("p_synth", 0.9, "probability")):
            cs.set_score(
                d["candidate_id"],
                f"hand.{prop}",
                ScoreResult(property=prop, value=val, unit=unit, ok=True, provenance=prov),
            )
    ranked = rank_set(cs, ["div"], RankThresholds(require_strict=False))
    assert ranked.n_hits == 0 and ranked.n_complete == len(docs)
    assert all(cs.get(d["candidate_id"])["rank"]["flags"] == ["guidance_diverged"] for d in docs)
    res = runner.invoke(app, ["top", "--show-failed", "--set", "div", "--store", uri, "--json"])
    listed = json.loads(res.stdout)
    assert listed["failed"] == len(docs)
    assert all("flag:guidance_diverged(exploding_guidance)" in r["reasons"] for r in listed["rows"])


def test_cli_elements_restricts_the_stored_candidates(tiny_checkpoint, tmp_path):
    import json

    from typer.testing import CliRunner

    from gen2d.cli import app
    from gen2d.store import open_store

    gen = get_generator("egnn-diffusion", checkpoint=tiny_checkpoint, device="cpu")
    space = gen.bundle.rep.vocab[:3]
    uri = f"monty://{tmp_path / 'store'}"
    common = ["--option", f"checkpoint={tiny_checkpoint}", "--option", "device=cpu", "--store", uri, "--json"]
    res = CliRunner().invoke(
        app, ["generate", "--n", "4", "--steps", "5", "--set", "space", "--elements", ",".join(space), *common]
    )
    assert res.exit_code == 0, res.output
    docs = list(open_store(uri).query({"sets": "space"}))
    assert docs and all(set(d["elements"]) <= set(space) for d in docs)
    bad = CliRunner().invoke(app, ["generate", "--n", "1", "--steps", "2", "--elements", "Og", *common])
    assert bad.exit_code != 0
    assert "Og" in json.loads(bad.stdout)["error"] and "vocabulary" in json.loads(bad.stdout)["error"]


def test_cli_require_stores_only_the_kind_of_compound_asked_for(tiny_checkpoint, tmp_path):
    import json

    from typer.testing import CliRunner

    from gen2d.cli import app
    from gen2d.store import open_store

    gen = get_generator("egnn-diffusion", checkpoint=tiny_checkpoint, device="cpu")
    v = gen.bundle.rep.vocab
    uri = f"monty://{tmp_path / 'store'}"
    common = ["--option", f"checkpoint={tiny_checkpoint}", "--option", "device=cpu", "--store", uri, "--json"]
    args = ["generate", "--n", "4", "--steps", "6", "--set", "kind", "--elements", ",".join(v[:4])]
    res = CliRunner().invoke(app, [*args, "--require", f"{v[0]},{v[1]}/{v[2]}", *common])
    assert res.exit_code == 0, res.output
    docs = list(open_store(uri).query({"sets": "kind"}))
    assert docs
    for d in docs:
        assert set(d["elements"]) & {v[0], v[1]} and v[2] in d["elements"], d["elements"]
    empty = CliRunner().invoke(app, [*args, "--require", f"{v[0]}//{v[2]}", *common])
    assert empty.exit_code != 0 and "empty group" in json.loads(empty.stdout)["error"]
