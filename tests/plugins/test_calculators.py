"""Calculator backends (gen2d.calculators): CHGNet, SevenNet and MatterSim on a self-made checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import graphene

from gen2d.scoring import PluginUnavailable, discover, file_sha256, get_calculator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    torch.set_num_threads(1)


def _graphene():
    atoms = graphene(a=2.468, vacuum=10.0)
    atoms.pbc = True
    return atoms


def test_registry_lists_backends():
    infos = {i.name: i for i in discover("calculator")}
    assert {"chgnet", "mattersim", "sevennet"} <= set(infos)
    assert infos["chgnet"].available, infos["chgnet"].reason
    assert infos["sevennet"].available, infos["sevennet"].reason


def test_chgnet_backend_energy_and_provenance():
    import chgnet

    calc = get_calculator("chgnet", device="cpu")
    atoms = _graphene()
    atoms.calc = calc
    e = atoms.get_potential_energy() / len(atoms)
    # CHGNet 0.3.0 (MPtrj, PBE): graphene about -9.18 eV/atom, close to MP's graphite -9.22
    assert e == pytest.approx(-9.18, abs=0.1)
    assert np.abs(atoms.get_forces()).max() < 0.05  # the ideal lattice is a stationary point
    assert calc.gen2d_model == f"CHGNet 0.3.0 (chgnet {chgnet.__version__})"
    from gen2d_chgnet import _checkpoint_path

    assert calc.gen2d_checkpoint_sha256 == file_sha256(_checkpoint_path("0.3.0"))
    with pytest.raises(PluginUnavailable):
        get_calculator("chgnet", model="no-such-model")


def test_sevennet_backend_energy_and_provenance():
    calc = get_calculator("sevennet", device="cpu")
    atoms = _graphene()
    atoms.calc = calc
    e = atoms.get_potential_energy() / len(atoms)
    assert e == pytest.approx(-9.2, abs=0.15)  # SevenNet-0 is MPtrj-trained too
    assert calc.gen2d_model.startswith("SevenNet 7net-0") and len(calc.gen2d_checkpoint_sha256) == 64
    import gen2d_sevennet

    ok, why = gen2d_sevennet.available("7net-omat")  # downloads at run time: not here
    assert not ok and "no local checkpoint" in why


@pytest.fixture()
def random_mattersim_checkpoint(tmp_path):
    """A randomly initialised M3GNet saved in MatterSim's checkpoint layout (weights-only types)."""
    import torch
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet

    torch.manual_seed(0)
    model = M3Gnet(device="cpu", num_blocks=1, units=16, max_l=2, max_n=2)
    path = tmp_path / "m3gnet_random.pth"
    torch.save({"model_name": "m3gnet", "model": model.state_dict(), "model_args": model.get_model_args()}, path)
    return path


def test_mattersim_backend_on_random_checkpoint(random_mattersim_checkpoint):
    import gen2d_mattersim

    ok, why = gen2d_mattersim.available(str(random_mattersim_checkpoint))
    assert ok, why
    calc = get_calculator("mattersim", model=str(random_mattersim_checkpoint), device="cpu")
    atoms = _graphene()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    assert np.isfinite(energy) and forces.shape == (2, 3) and np.all(np.isfinite(forces))
    assert stress.shape == (6,) and np.all(np.isfinite(stress))
    # translation invariance holds for any weights: shifting every atom leaves the energy unchanged
    shifted = atoms.copy()
    shifted.positions += [0.3, 0.1, 0.2]
    shifted.calc = calc
    assert shifted.get_potential_energy() == pytest.approx(energy, abs=1e-4)
    assert calc.gen2d_checkpoint_sha256 == file_sha256(random_mattersim_checkpoint)
    assert "m3gnet_random.pth" in calc.gen2d_model


def test_mattersim_named_model_without_weights(monkeypatch, tmp_path):
    import gen2d_mattersim

    monkeypatch.setattr(gen2d_mattersim, "PRETRAINED_DIR", tmp_path)
    monkeypatch.delenv("GEN2D_MATTERSIM_CHECKPOINT", raising=False)
    ok, why = gen2d_mattersim.available()
    assert not ok and "mattersim-v1.0.0-1M.pth" in why and "cannot be downloaded" in why
    with pytest.raises(PluginUnavailable):
        get_calculator("mattersim")
    ok, why = gen2d_mattersim.available(str(tmp_path / "missing.pth"))
    assert not ok and "does not exist" in why


def test_mattersim_scorer_runs_on_random_checkpoint(random_mattersim_checkpoint):
    # The full ehull.mattersim path on the self-made checkpoint: relaxation and hull run, and the
    # provenance names the exact file. Random weights give meaningless energies, so only the
    # plumbing is asserted (a named failure is an acceptable outcome of a random model).
    from gen2d.scoring import get_scorer
    from gen2d.settings import get_settings
    from gen2d.structures import from_ase

    data = get_settings().data_dir
    scorer = get_scorer("ehull.mattersim", model=str(random_mattersim_checkpoint), device="cpu", steps=20,
                        provider="entries-file",
                        provider_options={"path": data / "mp_elemental_reference_entries.json.gz"})
    assert scorer.available() == (True, "")
    atoms = graphene(a=2.468, vacuum=10.0)
    atoms.pbc = (True, True, False)
    [res] = scorer.score([from_ase(atoms)])
    assert res.provenance.checkpoint_sha256 == file_sha256(random_mattersim_checkpoint)
    assert res.provenance.plugin == "ehull.mattersim"
    assert res.ok or res.failure.reason in {"not_converged", "exploding_forces", "layer_broke", "vacuum_closed"}
    assert res.extra["convergence"]["steps"] <= 20
