"""Bulk references from stacked database monolayers (gen2d.hull.stacked) and their place in the hull."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_mos2

from gen2d.hull import MLIPPrototypesProvider, hull_analysis
from gen2d.hull.stacked import INTERLAYER_GAP, StackedLayerLibrary, stack_layer
from gen2d.settings import get_settings
from gen2d.structures import layer_thickness

DATA = get_settings().data_dir
needs_data = pytest.mark.skipif(
    not (DATA / "mc2d_258_exfoliable.json").is_file(), reason=f"reference data not found in {DATA}"
)


def test_stacking_is_aa_with_the_van_der_waals_gap():
    layer = make_mos2()
    bulk = stack_layer(layer)
    assert len(bulk) == len(layer) and bulk.composition == layer.composition
    np.testing.assert_allclose(bulk.lattice.abc[:2], layer.lattice.abc[:2], atol=1e-6)
    c = bulk.lattice.matrix[2]
    assert abs(c[0]) < 1e-6 and abs(c[1]) < 1e-6  # c along the layer normal: AA stacking
    assert bulk.lattice.c == pytest.approx(layer_thickness(layer) + INTERLAYER_GAP, abs=1e-3)
    # the shortest distance between a layer and the next is the gap between facing S planes
    inter = min(bulk.get_distance(i, j, jimage=(0, 0, 1)) for i in range(len(bulk)) for j in range(len(bulk)))
    assert inter == pytest.approx(INTERLAYER_GAP, abs=1e-3)


@needs_data
def test_library_indexes_exfoliated_layers_by_chemical_system():
    lib = StackedLayerLibrary()
    assert len(lib) > 500  # 2DMatPedia top-down rows and MC2D layers up to 40 atoms
    ges = lib.for_chemsys("Ge-S")
    assert ges and all(layer.chemsys == "Ge-S" for layer in ges)
    assert {layer.source_id.split(":")[0] for layer in lib.layers} == {"2dmatpedia", "mc2d"}
    within = lib.chemical_systems(["Ge", "S", "Se"])
    assert "Ge-S" in within and all(set(cs.split("-")) <= {"Ge", "S", "Se"} for cs in within)
    assert lib.fingerprint() == StackedLayerLibrary().fingerprint()
    assert lib.describe()["unavailable"] == []


def test_library_without_data_is_empty_and_says_why(tmp_path):
    lib = StackedLayerLibrary(data_dir=tmp_path)
    assert len(lib) == 0 and lib.chemical_systems(["Mo", "S"]) == []
    assert len(lib.describe()["unavailable"]) == 2 and str(tmp_path) in lib.describe()["unavailable"][0]
    with pytest.raises(ValueError, match="unknown stacked-layer sources"):
        StackedLayerLibrary(data_dir=tmp_path, sources=["icsd"])


@needs_data
def test_a_layer_is_not_below_its_own_stacked_bulk(tmp_path):
    """GeS2: the prototype library has no layered GeS2 and puts the monolayer below the hull; its stacked
    parent, relaxed with the same MLIP, is a reference it cannot lie far below."""
    import torch

    from gen2d.hull import apply_mp2020, mlip_entry
    from gen2d.relax import cached_calculator, relax_in_plane
    from gen2d.structures import to_ase

    torch.set_num_threads(1)
    calc = cached_calculator("chgnet")
    lib = StackedLayerLibrary()
    layer = lib.for_chemsys("Ge-S")[0]
    prov = MLIPPrototypesProvider(calc, cache_dir=tmp_path, shipped=False, stacked_layers=lib)
    refs = prov.entries(["Ge", "S"])
    stacked = [r for r in refs if r.data["prototype"].startswith("stacked:")]
    expected = {f"stacked:{x.source_id}" for cs in lib.chemical_systems(["Ge", "S"]) for x in lib.for_chemsys(cs)}
    assert {r.data["prototype"] for r in stacked} <= expected  # each relaxed layer, unless dropped as collapsed
    assert {f"stacked:{x.source_id}" for x in lib.for_chemsys("Ge-S")} <= {r.data["prototype"] for r in stacked}
    assert prov.describe()["stacked_layers"]["n_layers"] == len(lib)

    relaxed = relax_in_plane(to_ase(layer.structure), calc, fmax=0.05, steps=300)
    from gen2d.structures import from_ase

    entry = apply_mp2020(mlip_entry(from_ase(relaxed.atoms), relaxed.energy, model="chgnet"))
    with_stacked = hull_analysis(entry, refs, "stacked")
    library_only = hull_analysis(entry, [r for r in refs if r not in stacked], "library")
    assert library_only.flags == ["below_reference_hull"]  # what the library alone gets wrong
    assert with_stacked.e_hull > -0.05 and "below_reference_hull" not in with_stacked.flags
    # its own bulk holds the layer's bonds: per atom it is the layer's energy within the interlayer
    # binding (measured +0.011 eV/atom: CHGNet has no dispersion, so AA layers 3.2 Å apart repel slightly)
    own = next(r for r in stacked if r.data["prototype"] == f"stacked:{layer.source_id}")
    assert abs(own.uncorrected_energy_per_atom - relaxed.energy / len(relaxed.atoms)) < 0.02

    # cached per chemical system under the stacked version and the library fingerprint
    again = MLIPPrototypesProvider(calc, cache_dir=tmp_path, shipped=False, stacked_layers=lib)
    assert again._read_cache(again._key("stacked.Ge-S")) is not None
    assert lib.fingerprint() in again._key("stacked.Ge-S")


def test_without_data_the_provider_keeps_the_empty_library_so_its_e_hull_stays_current(tmp_path):
    """No reference data: the provider keeps the empty stacked-layer library, so the E_hull's provenance carries the
    stacked set's version (with no layer and the reason) and the scorer's ``current`` accepts it; before, the
    library was dropped, the version was missing, and every score job recomputed the same E_hull."""
    from ase.calculators.emt import EMT

    from gen2d.hull.mlip_prototypes import MLIPPrototypesProvider
    from gen2d.hull.stacked import STACKED_VERSION, StackedLayerLibrary
    from gen2d.store import score_is_current

    empty = StackedLayerLibrary(data_dir=tmp_path)
    provider = MLIPPrototypesProvider(EMT(), cache_dir=False, shipped=False, stacked_layers=empty)
    desc = provider.describe()["stacked_layers"]
    assert desc["version"] == STACKED_VERSION and desc["n_layers"] == 0 and desc["unavailable"]
    assert provider.stacked_entries(["Mo", "S"]) == []
    off = MLIPPrototypesProvider(EMT(), cache_dir=False, shipped=False, stacked_layers=False)
    assert off.describe()["stacked_layers"] is None
    stored = {"provenance": {"settings": {"reference_set": {"stacked_layers": desc}}}}
    assert score_is_current(stored, {"provenance.settings.reference_set.stacked_layers.version": STACKED_VERSION})
