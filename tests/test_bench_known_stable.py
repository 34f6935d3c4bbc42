"""scripts/bench_known_stable.py: the four reference sets of one relaxed energy, and --resume."""

from __future__ import annotations

import json

import pytest
from conftest import load_script


@pytest.mark.slow
def test_known_stable_phosphorus_layers_resume_and_sit_on_their_own_parents(tmp_path, capsys):
    bench = load_script("bench_known_stable")
    out = tmp_path / "records.jsonl"
    # the MC2D layers made of P alone: two, with cheap elemental references
    common = ["--set", "mc2d", "--elements-within", "P", "--cache-dir", str(tmp_path / "refs"), "--out", str(out)]
    assert bench.main(["--n", "1", *common]) == 0
    [first] = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["failure"] is None and first["source_id"].startswith("mc2d:P")
    e = first["e_hull"]
    assert set(e) >= {"all", "self-out", "prototypes-only", "without-molecules"}
    # removing references can only raise the hull beneath the layer: against a subset, E_hull never goes up
    assert e["self-out"] <= e["all"] + 1e-9 and e["prototypes-only"] <= e["self-out"] + 1e-9
    # a layer exfoliated from a known parent lies on or just above its own stacked bulk, not far below it
    assert -0.05 < e["all"] < 0.2

    capsys.readouterr()
    assert bench.main(["--n", "2", "--resume", *common]) == 0
    printed = capsys.readouterr().out
    both = [json.loads(line) for line in out.read_text().splitlines()]
    assert "resuming: 1 records" in printed
    assert len(both) == 2 and both[0] == first and both[1]["source_id"] != first["source_id"]
    assert printed.count("] ") == 1  # only the missing layer is scored
    assert "layers: 2" in printed  # the summary covers the kept record too
    # without --resume the file starts again
    assert bench.main(["--n", "1", *common]) == 0
    assert [json.loads(line)["source_id"] for line in out.read_text().splitlines()] == [first["source_id"]]


def test_self_out_leaves_out_the_same_layer_from_the_other_database_too():
    """A layer both databases hold (GaS is in MC2D and in 2DMatPedia) has two stacked parents; ``self-out`` must
    drop both, not only the one under the scored layer's own id. A different layer of the same elements stays."""
    from types import SimpleNamespace

    from gen2d.data.templates import build_template

    bench = load_script("bench_known_stable")
    mos2 = build_template("MoS2-2H")
    copy = mos2.copy()
    copy.perturb(0.01)  # the other database's relaxation of the same layer
    copy.scale_lattice(copy.volume * 1.02)
    other = build_template("MoS2-2H").copy()
    other.replace_species({"Mo": "S", "S": "Mo"})  # same elements, another structure (Mo outside, S inside)
    layers = [
        SimpleNamespace(source_id="mc2d:MoS2-x", structure=mos2),
        SimpleNamespace(source_id="2dmatpedia:2dm-1", structure=copy),
        SimpleNamespace(source_id="2dmatpedia:2dm-2", structure=other),
    ]
    library = SimpleNamespace(for_chemsys=lambda cs: layers if cs == "Mo-S" else [])
    own = bench.own_parents(mos2, "mc2d:MoS2-x", library)
    assert own == {"stacked:mc2d:MoS2-x", "stacked:2dmatpedia:2dm-1"}
    assert bench.own_parents(mos2, "mc2d:MoS2-x", None) == {"stacked:mc2d:MoS2-x"}
