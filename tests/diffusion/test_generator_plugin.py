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
    usable = [n for n in ("silicene", "germanene", "phosphorene") if {e.symbol for e in build_template(n).composition}
              <= set(gen.bundle.rep.vocab)]
    assert usable, "tiny model's vocabulary should cover Si, Ge or P"
    out = list(gen.generate(n=2, seed=0, start="templates", templates=usable, n_steps=5))
    for g in out:
        name = g.parameters["start"].split(":", 1)[1]
        ref = build_template(name)
        assert len(g.structure) == len(ref)
        assert abs(g.structure.lattice.a - ref.lattice.a) < 1e-4
        assert abs(g.structure.lattice.gamma - ref.lattice.gamma) < 1e-3 or \
            abs(g.structure.lattice.gamma - (180 - ref.lattice.gamma)) < 1e-3
