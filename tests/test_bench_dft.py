"""scripts/bench_dft.py's ``scf-audit``: which stored SCFs the SCF energy check would reject (no CP2K run)."""

from __future__ import annotations

import json

import pytest
from conftest import load_script
from gen2d_cp2k import scf_runs

# two SCFs of one relaxation as CP2K 2023.1 prints them (abridged): the first "converged" with its energy still
# moving by 9.5e-4 Ha, the second properly; then a third cut off by a kill
_OUTPUT = """
  Step     Update method      Time    Convergence         Total energy    Change
  ------------------------------------------------------------------------------
     1 NoMix/Diag. 0.50E-01   15.0     0.00075012      -799.6616141139 -7.99E+02
     2 Broy./Diag. 0.50E-01   22.0     0.00013841      -799.6626141139 -1.00E-03
     3 Broy./Diag. 0.50E-01   22.0     0.00000841      -799.6616641139  9.50E-04

  *** SCF run converged in     3 steps ***

  Step     Update method      Time    Convergence         Total energy    Change
  ------------------------------------------------------------------------------
     1 Broy./Diag. 0.50E-01   15.0     0.00075012      -799.6616141139 -7.99E+02
     2 Broy./Diag. 0.50E-01   22.0     0.00003841      -799.6617141139 -1.00E-04
     3 Broy./Diag. 0.50E-01   22.0     0.00000241      -799.6617151139 -1.00E-06

  *** SCF run converged in     3 steps ***

  Step     Update method      Time    Convergence         Total energy    Change
  ------------------------------------------------------------------------------
     1 Broy./Diag. 0.50E-01   15.0     0.00075012      -799.6616141139 -7.99E+02
     2 Broy./Diag. 0.50E-01   22.0     0.00003841      -799.6617141139 -1.00E-04
"""


def test_every_scf_of_an_output_is_read_with_its_verdict_and_its_energy_changes():
    runs = scf_runs(_OUTPUT)
    assert [r["steps"] for r in runs] == [3, 3, 2]
    assert [r["converged"] for r in runs] == [True, True, None]  # the last one was cut off
    assert runs[0]["changes"] == pytest.approx([-1.0e-3, 9.5e-4])  # step 1's change is the whole energy: left out
    assert scf_runs("no table here") == []


def test_the_audit_names_a_finished_part_whose_last_scf_was_a_false_convergence(tmp_path):
    good, bad = tmp_path / "run" / "slab", tmp_path / "run" / "site_0"
    for part, text in ((good, _OUTPUT), (bad, _OUTPUT.rsplit("  Step", 2)[0])):
        part.mkdir(parents=True)
        (part / "gen2d.out").write_text(text)
        (part / "gen2d.inp").write_text("&SCF\n   EPS_SCF 1.0e-05\n&END SCF\n")
        (part / "result.json").write_text(json.dumps({"energy": -21759.8}))
    rows = {r["part"]: r for r in load_script("bench_dft").scf_audit([tmp_path])}
    site, slab = rows["run/site_0"], rows["run/slab"]
    assert site["tolerance_Ha"] == pytest.approx(2e-4) and site["finished"]
    # the site's output ends after its first SCF: it handed out the energy of a false convergence
    assert site["cp2k_converged"] == 1 and site["over_tolerance"] == 1 and site["last_over_tolerance"]
    assert site["largest_over_Ha"] == pytest.approx(9.5e-4)
    # the slab's last converged SCF is the proper one; its earlier false convergence is still counted
    assert slab["scfs"] == 3 and slab["over_tolerance"] == 1 and not slab["last_over_tolerance"]
    # a looser EPS_SCF loosens the tolerance with it (20 × eps_scf)
    (bad / "gen2d.inp").write_text("&SCF\n   EPS_SCF 1.0e-04\n&END SCF\n")
    assert not {r["part"]: r for r in load_script("bench_dft").scf_audit([tmp_path])}["run/site_0"][
        "last_over_tolerance"
    ]
