"""D3 dispersion on top of an MLIP (gen2d.dispersion): the sum, its batch path, its provenance, and the layered
crystals it exists for."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import mx2

from gen2d.dispersion import DispersionUnavailable, d3_calculator, with_dispersion
from gen2d.relax import batch_evaluator, cached_calculator, relax_bulk


def _stacked(symbols: str, a: float, c: float, frac: list) -> Atoms:
    cell = [[a, 0, 0], [-a / 2, a * 3**0.5 / 2, 0], [0, 0, c]]
    return Atoms(symbols, scaled_positions=frac, cell=cell, pbc=True)


def graphite(c: float) -> Atoms:  # AB (Bernal)
    return _stacked("C4", 2.467, c, [[0, 0, 0.25], [1 / 3, 2 / 3, 0.25], [0, 0, 0.75], [2 / 3, 1 / 3, 0.75]])


def hbn(c: float) -> Atoms:  # AA' (B over N)
    return _stacked(
        "BNBN", 2.50, c, [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.25], [2 / 3, 1 / 3, 0.75], [1 / 3, 2 / 3, 0.75]]
    )


@pytest.fixture(scope="module")
def chgnet():
    return cached_calculator("chgnet")


def test_the_sum_is_the_mlip_plus_d3_in_energy_forces_and_stress_and_the_batch_path_agrees(chgnet):
    calc = with_dispersion(chgnet)
    layer = mx2("MoS2", a=3.18, vacuum=8.0)
    layer.pbc = True
    layer.rattle(0.02, seed=1)
    parts = {}
    for name, c in (("sum", calc), ("mlip", chgnet), ("d3", d3_calculator())):
        a = layer.copy()
        a.calc = c
        parts[name] = (a.get_potential_energy(), a.get_forces(), a.get_stress())
    for k in range(3):
        np.testing.assert_allclose(parts["sum"][k], parts["mlip"][k] + parts["d3"][k], atol=1e-6)
    assert parts["d3"][0] < 0  # dispersion only attracts
    [batched] = batch_evaluator(calc)([layer.copy()])
    assert batched["energy"] == pytest.approx(parts["sum"][0], abs=1e-4)
    np.testing.assert_allclose(batched["forces"], parts["sum"][1], atol=1e-3)
    # CHGNet's batch path gives a 3x3 stress, the serial one ASE's Voigt 6-vector: the D3 part lands in both
    from ase.stress import full_3x3_to_voigt_6_stress

    np.testing.assert_allclose(full_3x3_to_voigt_6_stress(batched["stress"]), parts["sum"][2], atol=1e-5)


def test_a_molecule_after_a_crystal_gets_no_stale_stress():
    d3 = d3_calculator()
    from gen2d.dispersion import _d3_results

    crystal = _d3_results(d3, graphite(6.7))
    assert np.abs(crystal["stress"]).max() > 1e-3
    molecule = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    assert np.array_equal(_d3_results(d3, molecule)["stress"], np.zeros(6))


def test_every_dispersion_choice_the_ehull_options_offer_is_a_method_and_back():
    """The ehull option and the benchmark scripts take their choices from gen2d.dispersion.METHODS: a method added
    there and not to the option (or the reverse) is caught here."""
    import typing

    from gen2d.dispersion import METHODS
    from gen2d.scoring import get_scorer

    options = get_scorer("ehull.chgnet").Options
    offered = set(typing.get_args(options.model_fields["dispersion"].annotation))
    assert offered == {"none", *METHODS}
    for method in METHODS:
        assert options(dispersion=method).dispersion == method
    with pytest.raises(ValueError):
        options(dispersion="d4")


def test_provenance_names_the_correction_and_keys_caches_apart(chgnet):
    calc = with_dispersion(chgnet, "d3bj")
    assert calc.gen2d_model.startswith(chgnet.gen2d_model) and "D3(BJ) PBE" in calc.gen2d_model
    assert calc.gen2d_checkpoint_sha256 != chgnet.gen2d_checkpoint_sha256
    assert calc.gen2d_base_checkpoint_sha256 == chgnet.gen2d_checkpoint_sha256
    assert with_dispersion(chgnet, "d3zero").gen2d_checkpoint_sha256 != calc.gen2d_checkpoint_sha256
    assert with_dispersion(chgnet, None) is chgnet and with_dispersion(chgnet, "none") is chgnet
    with pytest.raises(DispersionUnavailable, match="unknown dispersion method"):
        with_dispersion(chgnet, "d4")
    with pytest.raises(DispersionUnavailable, match="no D3 parameters"):
        d3_calculator(xc="not-a-functional")


@pytest.mark.slow
def test_d3_brings_graphite_and_hbn_to_their_measured_interlayer_spacing(chgnet):
    """Experiment: graphite c = 6.71 Å, h-BN c = 6.66 Å. CHGNet alone (PBE-trained, no dispersion) swells both;
    with D3(BJ) both land within 5 %."""
    calc = with_dispersion(chgnet)
    for build, c_exp in ((graphite, 6.71), (hbn, 6.66)):
        bare = relax_bulk(build(7.0), chgnet, fmax=0.02, steps=300)
        d3 = relax_bulk(build(7.0), calc, fmax=0.02, steps=300)
        assert bare.ok and d3.ok
        c_bare, c_d3 = bare.atoms.cell.cellpar()[2], d3.atoms.cell.cellpar()[2]
        assert abs(c_d3 - c_exp) / c_exp < 0.05, (build.__name__, c_d3)
        assert (c_bare - c_exp) / c_exp > 0.06, (build.__name__, c_bare)
        # and the layers are bound: pulling them apart to 20 Å costs energy with D3
        far = build(20.0)
        far.set_cell(np.diag([1, 1, 0]) @ d3.atoms.cell.array + np.diag([0, 0, 20.0]), scale_atoms=False)
        far.set_scaled_positions(build(20.0).get_scaled_positions())
        far.calc = calc
        e_bound = d3.atoms.copy()
        e_bound.calc = calc
        exfoliation = (far.get_potential_energy() - e_bound.get_potential_energy()) / len(far)
        assert 0.02 < exfoliation < 0.12, (build.__name__, exfoliation)  # eV/atom; PBE-D3 about 0.05-0.07
