"""ehull.* scorers through the registry: physics with CHGNet, named failures, provenance, explain."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import graphene, mx2
from pymatgen.core import Lattice, Structure

from gen2d.scoring import ScoreResult, discover, get_scorer
from gen2d.settings import get_settings
from gen2d.structures import from_ase

pytestmark = pytest.mark.slow

DATA = get_settings().data_dir


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ref_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("refs")


def _mono(atoms: Atoms) -> Structure:
    atoms.pbc = (True, True, False)
    return from_ase(atoms)


def _hbn(a: float = 2.50) -> Structure:
    cell = [[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, 20]]
    atoms = Atoms("BN", cell=cell, scaled_positions=[[1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5]])
    return _mono(atoms)


def test_registry_lists_ehull_scorers():
    infos = {i.name: i for i in discover("scorer") if i.name.startswith("ehull.")}
    assert {"ehull.chgnet", "ehull.mattersim", "ehull.sevennet"} <= set(infos)
    assert infos["ehull.chgnet"].available and infos["ehull.chgnet"].unit == "eV/atom"
    assert infos["ehull.chgnet"].property == "e_hull"


def test_mos2_scored_with_chgnet(ref_cache):
    scorer = get_scorer(
        "ehull.chgnet", provider_options={"cache_dir": ref_cache, "binary_prototypes": ["mos2_2h", "cdi2"]}
    )
    [res] = scorer.score([_mono(mx2("MoS2", a=3.25, thickness=3.13, vacuum=10.0))])
    assert isinstance(res, ScoreResult) and res.ok, res.failure
    assert res.property == "e_hull" and res.unit == "eV/atom"
    assert res.extra["e_form"] < 0 and res.extra["e_form_unit"] == "eV/atom"
    assert -0.02 < res.value < 0.3
    relaxed = res.relaxed()  # the declared hand-off to the HER scorers, not a key in extra
    assert isinstance(relaxed, Structure) and "relaxed_structure" not in res.extra
    assert relaxed == Structure.from_dict(res.relaxed_structure)
    assert relaxed.lattice.a == pytest.approx(3.18, abs=0.08)
    assert res.extra["convergence"]["converged"] is True
    assert res.extra["provider"] == "mlip-prototypes" and res.extra["chemsys"] == "Mo-S"
    assert res.extra["n_phases"] >= 2 + 3  # elemental polymorphs plus the layered bulk prototypes
    assert res.extra["decomposition"] and res.extra["correction_per_atom"] < 0  # MP2020 sulfide correction
    # Mo balances every S: the metal-cation limit leaves MP2020 as it is
    assert res.extra["anion_correction_scale"] == 1.0 and res.extra["e_hull_mp2020"] is None
    assert res.extra["flags"] == [] and res.extra["correction_scheme"].startswith("mp2020+gen2d")
    prov = res.provenance
    assert prov.plugin == "ehull.chgnet" and prov.model.startswith("CHGNet 0.3.0")
    assert len(prov.checkpoint_sha256) == 64
    assert prov.reference_set.startswith("mlip-prototypes") and not prov.notes


def test_chalcogen_chalcogen_layer_gets_no_sulfide_correction(ref_cache):
    # S and Se have nearly equal electronegativities (2.58, 2.55): by Pauling a Se-S bond gains ~nothing
    # over S-S and Se-Se bonds, and the two form mixed ring-molecule crystals, not bound compounds. A 1T-SeS2
    # layer (six-fold Se) must not form from the elements. Plain MP2020 hands its two S atoms the
    # metal-sulfide correction (-0.503 eV each, -0.335 eV/atom) and would make it form.
    scorer = get_scorer("ehull.chgnet", provider_options={"cache_dir": ref_cache, "binary_prototypes": ["cdi2"]})
    [res] = scorer.score([_mono(mx2("SeS2", kind="1T", a=3.4, thickness=3.0, vacuum=10.0))])
    assert res.ok, res.failure
    assert res.extra["anion_correction_scale"] == 0.0 and res.extra["correction_per_atom"] == pytest.approx(0.0)
    assert res.extra["e_form"] > 0.05
    assert res.extra["e_form"] - 1.006 / 3 < 0  # what plain MP2020 would have said
    assert res.value > 0 and "anion_correction_limited" in res.extra["flags"]
    assert res.extra["e_hull_mp2020"] < res.value


def test_hbn_ehull_against_bulk_hbn(ref_cache):
    # The reference set holds bulk h-BN (graphite-like layered prototype): the monolayer's E_hull is
    # the exfoliation cost, small and positive. (Stacked database layers are left out: this is the
    # prototype's test; tests/test_stacked_references.py has theirs.)
    scorer = get_scorer(
        "ehull.chgnet",
        provider_options={
            "cache_dir": ref_cache,
            "binary_prototypes": ["hbn_layered"],
            "fmax": 0.02,
            "steps": 400,
            "stacked_layers": False,
        },
    )
    [res] = scorer.score([_hbn()])
    assert res.ok, res.failure
    assert 0.0 <= res.value <= 0.15
    assert [d["prototype"] for d in res.extra["decomposition"]] == ["hbn_layered"]
    relaxed = res.relaxed()
    assert relaxed.lattice.a == pytest.approx(2.51, abs=0.05)  # h-BN: 2.50-2.51 Å


def test_d3_without_torch_dftd_is_unavailable_by_name(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch_dftd", None)  # import now raises ImportError
    ok, why = get_scorer("ehull.chgnet", dispersion="d3bj").available()
    assert not ok and "torch-dftd" in why
    assert get_scorer("ehull.chgnet").available()[0]  # without D3 it does not need it


@pytest.mark.slow
def test_d3_makes_the_hbn_layer_pay_its_exfoliation_energy(ref_cache):
    """With D3 on the layer and on every reference alike, bulk h-BN is bound and the monolayer sits above it by
    the exfoliation energy (PBE-D3 and RPA put it at 0.04-0.07 eV/atom), more than the bare MLIP's margin."""
    options = {
        "cache_dir": ref_cache,
        "binary_prototypes": ["hbn_layered"],
        "fmax": 0.02,
        "steps": 400,
        "stacked_layers": False,
    }
    [bare] = get_scorer("ehull.chgnet", provider_options=options).score([_hbn()])
    [d3] = get_scorer("ehull.chgnet", dispersion="d3bj", provider_options=options).score([_hbn()])
    assert bare.ok and d3.ok, (bare.failure, d3.failure)
    assert 0.03 < d3.value - bare.value < 0.12
    assert [d["prototype"] for d in d3.extra["decomposition"]] == ["hbn_layered"]
    assert "D3(BJ)" in d3.provenance.model and d3.provenance.settings["dispersion"] == "d3bj"
    assert bare.provenance.settings["dispersion"] is None
    assert get_scorer("ehull.chgnet", dispersion="d3bj").available() == (True, "")
    # a DFT reference set has no D3 in it: the mix is refused by name
    with pytest.raises(ValueError, match="needs references computed the same way"):
        get_scorer("ehull.chgnet", dispersion="d3bj", provider="entries-file")


def test_bad_inputs_are_named_and_batch_survives(ref_cache):
    good = _mono(graphene(a=2.4687, vacuum=10.0))
    nan = _mono(graphene(a=2.4687, vacuum=10.0))
    nan = Structure(nan.lattice, nan.species, [[0.1, 0.2, np.nan], [0.3, 0.4, 0.5]], coords_are_cartesian=False)
    exotic = Structure(Lattice([[3, 0, 0], [0, 3, 0], [0, 0, 20]]), ["Cf", "S"], [[0, 0, 0.5], [0.5, 0.5, 0.55]])
    stuck = _mono(mx2("MoS2", a=3.7, thickness=3.13, vacuum=10.0))
    stuck.perturb(0.2, min_distance=0.05)
    scorer = get_scorer(
        "ehull.chgnet", steps=4, provider_options={"cache_dir": ref_cache, "binary_prototypes": ["mos2_2h"]}
    )
    results = scorer.score([nan, exotic, stuck, good, "not a structure"])
    assert len(results) == 5
    reasons = [r.failure.reason if r.failure else None for r in results]
    assert reasons == ["non_finite_input", "unsupported_element", "not_converged", None, "invalid_input"]
    assert all(r.value is None and not r.ok for i, r in enumerate(results) if i != 3)
    assert "Cf" in results[1].failure.message
    assert results[2].extra["convergence"]["steps"] == 4  # the record of what happened stays
    assert results[3].ok and results[3].value == pytest.approx(0.0, abs=0.03)  # graphene vs graphite


def test_entries_file_provider_notes_mixed_energies():
    scorer = get_scorer(
        "ehull.chgnet",
        provider="entries-file",
        provider_options={"path": DATA / "mp_elemental_reference_entries.json.gz"},
    )
    [res] = scorer.score([_mono(mx2("MoS2", a=3.19, thickness=3.13, vacuum=10.0))])
    assert res.ok
    assert res.extra["provider"] == "entries-file" and res.extra["n_phases"] == 2
    assert res.value == pytest.approx(res.extra["e_form"])  # elements only: hull = elemental line
    # MoS2 far below a "hull" of the elements alone: flagged, and never called stable
    assert res.value < -0.5 and "below_reference_hull" in res.extra["flags"] and res.extra["stable"] is False
    assert any("mixed energy scales" in n for n in res.provenance.notes)
    assert res.provenance.reference_set.startswith("entries-file")


def test_explain_reports_everything(ref_cache):
    scorer = get_scorer(
        "ehull.chgnet",
        provider_options={"cache_dir": ref_cache, "binary_prototypes": ["hbn_layered"], "fmax": 0.02, "steps": 400},
    )
    info = scorer.explain(_hbn(2.45))
    assert info["scorer"] == "ehull.chgnet" and info["unit"] == "eV/atom"
    assert info["settings"]["relaxation"]["fmax"] == 0.05
    assert {p["formula"] for p in info["reference_phases"]} >= {"B", "N2", "BN"}
    assert info["relaxed_cell"][0][0] != pytest.approx(info["initial_cell"][0][0])
    assert info["relaxed_cell"][2] == pytest.approx(info["initial_cell"][2])
    assert info["convergence"]["converged"] is True
    assert info["result"]["ok"] and info["result"]["value"] is not None


def test_mattersim_scorer_without_weights_fails_clearly(monkeypatch, tmp_path):
    import gen2d_mattersim

    monkeypatch.setattr(gen2d_mattersim, "PRETRAINED_DIR", tmp_path)
    monkeypatch.setenv("GEN2D_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GEN2D_OFFLINE", "1")  # not cached and offline: unavailable, nothing downloaded
    monkeypatch.delenv("GEN2D_MATTERSIM_CHECKPOINT", raising=False)
    scorer = get_scorer("ehull.mattersim")
    ok, why = scorer.available()
    assert not ok and "gen2d models fetch mattersim-v1.0.0-1M" in why
    [res] = scorer.score([_hbn()])
    assert res.failure.reason == "calculator_unavailable"
    assert "gen2d models fetch mattersim-v1.0.0-1M" in res.failure.message


def test_an_r2scan_model_is_refused_because_mp2020_corrections_are_fitted_to_pbe():
    """CHGNet's r2SCAN weights ship in its wheel, but MP2020's U-mixing and anion corrections belong to PBE(+U)
    energies: E_hull from them would be wrong, so the scorer names the failure instead of a number."""
    [res] = get_scorer("ehull.chgnet", model="r2scan").score([_hbn()])
    assert not res.ok and res.failure.reason == "unsupported_functional" and "r2SCAN" in res.failure.message
    elements_only = {"path": DATA / "mp_elemental_reference_entries.json.gz"}
    [pbe] = get_scorer("ehull.chgnet", provider="entries-file", provider_options=elements_only).score([_hbn()])
    assert pbe.ok  # the PBE default is scored


def test_too_many_elements_is_refused_by_name_without_any_relaxation():
    from pymatgen.core import Lattice, Structure

    from gen2d.scoring import get_scorer

    s = Structure(
        Lattice.hexagonal(3.2, 20.0),
        ["Mo", "W", "S", "Se", "Te"],
        [[0, 0, 0.5], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.57], [2 / 3, 1 / 3, 0.43], [0, 0, 0.6]],
    )
    [res] = get_scorer("ehull.chgnet").score([s])
    assert not res.ok and res.failure.reason == "too_many_elements"
    assert get_scorer("ehull.chgnet", max_elements=None).max_elements is None


def test_batch_scoring_equals_one_by_one(ref_cache):
    # A scoring batch relaxes its candidates together (one batched MLIP call per FIRE step) and their
    # references in one go; the E_hull of each must be what scoring it alone gives.
    from gen2d.relax import LOCKSTEP_STATS

    options = {"cache_dir": ref_cache, "binary_prototypes": ["mos2_2h"]}
    batch = [_mono(mx2("MoS2", a=3.25, thickness=3.13, vacuum=10.0)), _mono(graphene(a=2.44, vacuum=10.0))]
    before = dict(LOCKSTEP_STATS)
    together = get_scorer("ehull.chgnet", provider_options=options, progress=False).score(batch)
    assert LOCKSTEP_STATS["batch_calls"] > before["batch_calls"]  # the batch path really ran
    alone = [get_scorer("ehull.chgnet", provider_options=options, progress=False).score([s])[0] for s in batch]
    for t, a in zip(together, alone):
        assert t.ok and a.ok, (t.failure, a.failure)
        assert t.value == pytest.approx(a.value, abs=2e-3)
        assert t.extra["convergence"]["settings"] == a.extra["convergence"]["settings"]
        assert t.extra["decomposition"][0]["prototype"] == a.extra["decomposition"][0]["prototype"]


def test_a_stored_e_hull_is_redone_when_the_molecule_set_changes():
    """An E_hull records the molecule set it was computed against, and a scorer with another set recomputes it;
    the flag is read as the provider reads it, so 0 or None turn the molecules off on both sides."""
    from gen2d.hull.molecules import MOLECULE_VERSION
    from gen2d.store import score_is_current

    key = "provenance.settings.reference_set.molecules.version"
    default = get_scorer("ehull.chgnet")
    assert default.current[key] == MOLECULE_VERSION
    for off in (False, 0, None):
        assert get_scorer("ehull.chgnet", provider_options={"molecules": off}).current[key] is None

    def stored(current: dict) -> dict:
        """A score holding exactly these settings at their dotted paths."""
        doc: dict = {}
        for path, value in current.items():
            *parents, last = path.split(".")
            node = doc
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        return doc

    assert score_is_current(stored(default.current), default.current)
    before = stored({k: v for k, v in default.current.items() if k != key})  # computed before the molecules
    assert not score_is_current(before, default.current)
    assert not score_is_current(stored({**default.current, key: "1"}), default.current)
