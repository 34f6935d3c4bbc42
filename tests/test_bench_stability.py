"""scripts/bench_stability.py --resume: a stopped benchmark goes on from its records instead of starting again."""

from __future__ import annotations

import json

import pytest
from conftest import load_script


@pytest.mark.slow
def test_a_resumed_run_keeps_its_records_and_scores_only_the_missing_layers(tmp_path, capsys):
    bench = load_script("bench_stability")
    out = tmp_path / "records.jsonl"
    common = ["--max-elements", "1", "--cache-dir", str(tmp_path / "refs"), "--out", str(out)]
    assert bench.main(["--n", "1", *common]) == 0
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(first) == 1 and first[0]["failure"] is None and "mlip-prototypes" in first[0]["e_hull"]
    capsys.readouterr()
    assert bench.main(["--n", "2", "--resume", *common]) == 0
    printed = capsys.readouterr().out
    both = [json.loads(line) for line in out.read_text().splitlines()]
    assert "resuming: 1 records" in printed and "[1/2]" not in printed  # the first layer is not scored again
    assert len(both) == 2 and both[0] == first[0] and both[1]["id"] != first[0]["id"]
    # without --resume the file starts again
    assert bench.main(["--n", "1", *common]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [first[0]["id"]]


def test_compare_pairs_two_runs_on_the_layers_both_scored():
    bench = load_script("bench_stability")

    def rec(i, formula, mlip, dft, suspect=False):
        return {
            "id": i,
            "formula": formula,
            "dft_e_hull": dft,
            "dft_label_suspect": suspect,
            "e_hull": {"mlip-prototypes": mlip},
        }

    dft = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    formulas = ["Si", "P", "B", "GaSe", "AlS", "BSe", "CN"]
    # run a is 0.2 eV/atom low everywhere; run b is 0.05 low except one layer
    a = [rec(i, f, d - 0.2, d) for i, (f, d) in enumerate(zip(formulas, dft, strict=True))]
    b = [rec(i, f, d - 0.05, d) for i, (f, d) in enumerate(zip(formulas, dft, strict=True))]
    b[6]["e_hull"]["mlip-prototypes"] = 0.6 - 0.35
    a.append(rec(7, "N", 5.0, 0.0, suspect=True))  # a wrong DFT label: left out of both
    b.append(rec(7, "N", 4.0, 0.0, suspect=True))
    b.append(rec(8, "Se", 0.1, 0.1))  # scored by b alone
    text = bench.compare(a, b, ("chgnet", "sevennet"))
    assert "paired on 7 layers" in text and "0 only by chgnet, 1 only by sevennet" in text
    lines = text.splitlines()
    [elem_a] = [x for x in lines if x.split()[:2] == ["elemental", "chgnet:"]]
    [comp_b] = [x for x in lines if x.split()[:2] == ["compounds", "sevennet:"]]
    assert "n=3 MAE=0.200" in elem_a and "mean signed error -0.200" in elem_a
    assert "n=4 MAE=0.125" in comp_b  # (0.05 * 3 + 0.35) / 4
    assert "closer to DFT than chgnet on 6 of 7 layers" in text
    # the one label of 0 (Si) read as "0 or below": both runs' negative value there is no error
    assert "chgnet, the 1 labels of 0 read as <= 0: MAE=0.171" in text  # 0.2 * 6 / 7


def test_the_scorers_stable_call_counts_a_layer_below_the_hull_as_not_stable():
    """Raw E_hull ≤ 0.1 agrees with DFT ≤ 0.1 on every layer here; the scorer calls the flagged layer (E_hull −0.2,
    below_reference_hull) not stable, so its own call agrees on 3 of 4. Without the flags only the first is given."""
    bench = load_script("bench_stability")
    pts = [(-0.2, 0.05), (0.0, 0.0), (0.3, 0.4), (0.05, 0.08)]
    text = bench._metrics(pts, [True, False, False, False])
    assert "stable (<= 0.1 eV/atom) agreement 1.000" in text
    assert "the scorer's stable call (also not below_reference_hull) agreement 0.750" in text
    assert "scorer's stable call" not in bench._metrics(pts)
    assert "scorer's stable call" not in bench._metrics(pts, [True, None, False, False])  # unknown flags: not given
