"""Lockstep batched relaxation (one batched MLIP call per FIRE step) against the serial path."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atom
from ase.build import bulk, graphene, mx2

from gen2d.hull import MLIPPrototypesProvider
from gen2d.relax import (
    LOCKSTEP_STATS,
    batch_evaluator,
    cached_calculator,
    relax_bulk,
    relax_bulk_batch,
    relax_in_plane,
    relax_in_plane_batch,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chgnet():
    import torch

    torch.set_num_threads(1)
    return cached_calculator("chgnet")


def _stats() -> dict:
    return dict(LOCKSTEP_STATS)


def _delta(before: dict) -> dict:
    return {k: LOCKSTEP_STATS[k] - before[k] for k in before}


def test_chgnet_batch_evaluator_reproduces_the_calculator(chgnet):
    fn = batch_evaluator(chgnet)
    assert fn is not None and fn.verified()
    rattled = bulk("NaCl", "rocksalt", a=5.5)
    rattled.rattle(0.05, seed=1)
    probes = [bulk("Si", "diamond", a=5.3), rattled, mx2("MoS2", a=3.25, vacuum=8.0)]
    probes[2].pbc = True
    batched = fn(probes)
    for atoms, got in zip(probes, batched):
        ref = atoms.copy()
        ref.calc = chgnet
        e, f, s = ref.get_potential_energy(), ref.get_forces(), ref.get_stress(voigt=False)
        assert abs(float(got["energy"]) - e) / len(atoms) < 1e-4  # eV/atom
        assert np.abs(got["forces"] - f).max() < 1e-3  # eV/Å
        assert np.abs(np.asarray(got["stress"]) - s).max() < 1e-5  # eV/Å^3 (~2 MPa), same sign and unit
    assert np.abs(batched[1]["forces"]).max() > 0.05  # the rattled crystal really has forces to compare


def test_a_batch_over_the_memory_budget_is_evaluated_in_chunks_with_the_same_numbers(chgnet):
    """CHGNet's batched evaluation holds ~25 kB per three-body angle: a batch whose graphs would exceed
    ``mlip_batch_memory_gb`` is split, and each structure gets exactly what the one-call batch gave it."""
    from gen2d_chgnet import BatchEvaluator, graph_bytes, memory_chunks
    from pymatgen.io.ase import AseAtomsAdaptor

    assert memory_chunks([3, 3, 3, 9, 1], 6) == [[0, 1], [2], [3], [4]]  # the 9 exceeds the budget and goes alone
    assert memory_chunks([], 6) == []
    probes = [bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Si", "diamond", a=5.4), bulk("NaCl", "rocksalt", a=5.6)]
    probes[0].rattle(0.05, seed=2)
    graphs = [chgnet.model.graph_converter(AseAtomsAdaptor.get_structure(a)) for a in probes]
    sizes = [graph_bytes(g) for g in graphs]
    assert sizes[0] > sizes[2] > 0  # 4 close-packed Cu atoms have more bonds and angles than 2 of rock salt
    whole = BatchEvaluator(chgnet, memory_budget_gb=100.0)
    split = BatchEvaluator(chgnet, memory_budget_gb=min(sizes) / 1e9)  # one structure per forward
    a, b = whole(probes), split(probes)
    assert whole.n_forwards == 1 and split.n_forwards == 3
    for x, y in zip(a, b, strict=True):
        assert abs(x["energy"] - y["energy"]) < 1e-5
        assert np.abs(x["forces"] - y["forces"]).max() < 1e-5 and np.abs(x["stress"] - y["stress"]).max() < 1e-6


def test_the_start_density_floor_shrinks_the_graph_of_a_molecular_pair_to_a_size_a_batch_can_hold(chgnet):
    from gen2d_chgnet import graph_bytes

    from gen2d.hull import BINARY_PROTOTYPES

    pyrite = BINARY_PROTOTYPES["pyrite"]
    raw = graph_bytes(chgnet.model.graph_converter(pyrite.build("F", "H", min_volume_per_atom=0.0)))
    floored = graph_bytes(chgnet.model.graph_converter(pyrite.build("F", "H")))
    assert raw > 5e9  # one evaluation of the raw start needs more than 5 GB
    assert floored < raw / 4 and floored < 2e9  # within the default mlip_batch_memory_gb


def test_batched_references_match_serial(chgnet):
    # Na (5 polymorphs) + Cl (1) + NaCl in two prototypes: 8 full-cell relaxations, few steps.
    opts = dict(cache_dir=False, binary_prototypes=["rocksalt", "cscl"], steps=60, stacked_layers=False)
    serial = MLIPPrototypesProvider(chgnet, batched=False, **opts).entries(["Na", "Cl"])
    before = _stats()
    batched_provider = MLIPPrototypesProvider(chgnet, batched=True, **opts)
    batched = batched_provider.entries(["Cl", "Na"])
    calls = _delta(before)
    assert [e.entry_id for e in batched] == [e.entry_id for e in serial] and len(serial) == 8
    worst = max(abs(a.energy_per_atom - b.energy_per_atom) for a, b in zip(serial, batched))
    assert worst < 2e-3  # eV/atom
    # one batched call per FIRE step for all 8 structures, not one call per structure and step
    assert calls["fallback_evaluations"] == 0
    assert calls["batch_calls"] < calls["structure_evaluations"] / 3
    rocksalt = [e for e in batched if e.composition.reduced_formula == "NaCl"]
    assert min(rocksalt, key=lambda e: e.energy_per_atom).data["prototype"] == "rocksalt"
    # batching is not part of the cache key: a serial provider reads what a batched one wrote
    assert batched_provider._key("Na-Cl") == MLIPPrototypesProvider(chgnet, batched=False, **opts)._key("Na-Cl")


class _PoisonedCalculator:
    """CHGNet's batched evaluator, except that every structure containing ``poison`` gets NaN results."""

    def __init__(self, calc, poison: str):
        self.calc, self.poison = calc, poison
        self.batch_sizes: list[int] = []

        def evaluate(atoms_list):
            self.batch_sizes.append(len(atoms_list))
            out = calc.gen2d_evaluate_batch(atoms_list)
            for i, atoms in enumerate(atoms_list):
                if self.poison in atoms.get_chemical_symbols() and isinstance(out[i], dict):
                    out[i] = {**out[i], "energy": np.float32("nan"), "free_energy": np.float32("nan")}
            return out

        self.gen2d_evaluate_batch = evaluate


def test_a_failing_structure_does_not_take_the_batch_down(chgnet):
    si = bulk("Si", "diamond", a=5.30)
    cu = bulk("Cu", "fcc", a=3.7)
    am = bulk("Am", "fcc", a=4.9)  # Z = 95: outside CHGNet's element embedding, the model raises
    bad = bulk("Al", "fcc", a=4.0)
    bad.positions[0, 0] = np.nan
    structures = [si, am, cu, bad]
    serial = [relax_bulk(a, chgnet, fmax=0.1, steps=60) for a in (si, cu)]
    batched = relax_bulk_batch(structures, chgnet, fmax=0.1, steps=60)
    assert [r.failure for r in batched] == [None, "calculator_error", None, "non_finite_input"]
    # the model's own error, exactly as the serial path reports it
    assert batched[1].message == relax_bulk(am, chgnet, fmax=0.1, steps=60).message
    for ser, bat in zip(serial, (batched[0], batched[2])):
        assert bat.converged and abs(bat.energy_per_atom - ser.energy_per_atom) < 2e-3

    # A structure whose energy turns NaN inside the batch fails alone, with the serial path's name.
    poisoned = _PoisonedCalculator(chgnet, poison="Cu")
    res = relax_bulk_batch([si, cu, bulk("Al", "fcc", a=4.1)], poisoned, fmax=0.1, steps=60)
    assert res[1].failure == "non_finite_energy" and not res[1].converged
    assert res[0].ok and res[2].ok
    assert abs(res[0].energy_per_atom - serial[0].energy_per_atom) < 2e-3
    assert poisoned.batch_sizes[0] == 3 and max(poisoned.batch_sizes[1:]) == 2  # Cu left, the rest went on


def test_backend_without_batch_path_runs_serially():
    from ase.calculators.lj import LennardJones

    calc = LennardJones(sigma=2.3, epsilon=0.1, rc=6.0)
    assert batch_evaluator(calc) is None
    crystals = [bulk("Ar", "fcc", a=3.6), bulk("Ar", "fcc", a=3.3)]
    before = _stats()
    batched = relax_bulk_batch(crystals, calc, fmax=0.05, steps=100)
    serial = [relax_bulk(a, calc, fmax=0.05, steps=100) for a in crystals]
    assert _delta(before)["batch_calls"] == 0
    for a, b in zip(batched, serial):
        assert a.energy == b.energy and a.steps == b.steps and a.failure == b.failure


def test_in_plane_batch_matches_serial_and_keeps_layer_checks(chgnet):
    mos2 = mx2("MoS2", kind="2H", a=3.30, thickness=3.13, vacuum=10.0)
    gr = graphene(a=2.40, vacuum=10.0)
    # an Ar atom 1.6 Å above graphene is pushed off: the layer check must still run per structure
    broken = graphene(a=2.468, vacuum=10.0, size=(2, 2, 1))
    broken.append(Atom("Ar", broken.positions[0] + [0.0, 0.0, 1.6]))
    closed = mx2("MoS2", kind="2H", a=3.19, thickness=3.13, vacuum=0.5)  # no vacuum: a bulk, not a layer
    layers = [mos2, gr, broken, closed]
    for a in layers:
        a.pbc = (True, True, False)
    serial = [relax_in_plane(a, chgnet, fmax=0.05, steps=120) for a in layers]
    batched = relax_in_plane_batch(layers, chgnet, fmax=0.05, steps=120)
    assert [r.failure for r in batched] == [None, None, "layer_broke", "vacuum_closed"]
    for ser, bat in zip(serial, batched):
        assert bat.failure == ser.failure
        assert bat.settings == ser.settings and tuple(bat.atoms.pbc) == (True, True, False)
        assert bat.atoms.cell[2, 2] == pytest.approx(ser.atoms.cell[2, 2])  # vacuum untouched
    for ser, bat in zip(serial[:2], batched[:2]):
        assert bat.ok and abs(bat.energy_per_atom - ser.energy_per_atom) < 2e-3
        assert bat.atoms.cell.lengths()[0] == pytest.approx(ser.atoms.cell.lengths()[0], abs=0.01)
    assert batched[0].atoms.cell.lengths()[0] == pytest.approx(3.18, abs=0.05)  # MoS2, PBE 3.18 Å
