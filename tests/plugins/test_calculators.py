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


@pytest.fixture
def mattersim_cache(monkeypatch, tmp_path):
    """gen2d's model cache and MatterSim's own cache folder, both private and empty; downloads allowed."""
    import gen2d_mattersim

    monkeypatch.setenv("GEN2D_CACHE", str(tmp_path / "gen2d-cache"))
    monkeypatch.setattr(gen2d_mattersim, "PRETRAINED_DIR", tmp_path / "mattersim-cache")
    for var in ("GEN2D_MATTERSIM_CHECKPOINT", "GEN2D_OFFLINE", "GEN2D_MODELS_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path / "gen2d-cache" / "models"


def test_mattersim_named_model_offline_without_weights(mattersim_cache, monkeypatch, tmp_path):
    import gen2d_mattersim

    ok, why = gen2d_mattersim.available()
    assert ok and why == ""  # not cached, but downloaded at first use; nothing was fetched to say so
    assert not mattersim_cache.exists()
    monkeypatch.setenv("GEN2D_OFFLINE", "1")
    ok, why = gen2d_mattersim.available()
    assert not ok and "gen2d models fetch mattersim-v1.0.0-1M" in why
    assert str(mattersim_cache / "mattersim-v1.0.0-1M.pth") in why
    with pytest.raises(PluginUnavailable, match="gen2d models fetch mattersim-v1.0.0-1M"):
        get_calculator("mattersim")
    ok, why = gen2d_mattersim.available(str(tmp_path / "missing.pth"))
    assert not ok and "does not exist" in why


def test_mattersim_named_model_is_downloaded_verified_and_in_provenance(
    mattersim_cache, monkeypatch, random_mattersim_checkpoint
):
    # The first use of the default model downloads it (here from a server on 127.0.0.1 standing in for
    # MatterSim's host), records its sha256, and the calculator and the E_hull result carry that hash.
    import hashlib
    import os
    from pathlib import Path

    from test_weights import serve_files

    from gen2d.scoring import get_scorer
    from gen2d.structures import from_ase

    blob = random_mattersim_checkpoint.read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    with serve_files({"mattersim-v1.0.0-1M.pth": blob}) as (base, hits):
        monkeypatch.setenv("GEN2D_MODELS_BASE_URL", base)
        calc = get_calculator("mattersim", device="cpu")
        assert hits == ["/mattersim-v1.0.0-1M.pth"]
        assert calc.gen2d_checkpoint_sha256 == sha and "mattersim-v1.0.0-1M.pth" in calc.gen2d_model
        atoms = _graphene()
        atoms.calc = calc
        assert np.isfinite(atoms.get_potential_energy())
        data = Path(os.environ.get("GEN2D_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
        scorer = get_scorer(
            "ehull.mattersim",
            device="cpu",
            steps=5,
            provider="entries-file",
            provider_options={"path": data / "mp_elemental_reference_entries.json.gz"},
        )
        assert scorer.available() == (True, "")
        layer = graphene(a=2.468, vacuum=10.0)
        layer.pbc = (True, True, False)
        [res] = scorer.score([from_ase(layer)])
        assert res.provenance.checkpoint_sha256 == sha
        assert hits == ["/mattersim-v1.0.0-1M.pth"]  # the scorer used the cached, verified copy
    # offline from now on, the cached file serves; a changed file is refused by name
    monkeypatch.setenv("GEN2D_OFFLINE", "1")
    assert get_calculator("mattersim", device="cpu").gen2d_checkpoint_sha256 == sha
    cached = mattersim_cache / "mattersim-v1.0.0-1M.pth"
    cached.write_bytes(blob + b"\0")
    with pytest.raises(PluginUnavailable, match="recorded at its first download"):
        get_calculator("mattersim", device="cpu")


def test_mattersim_file_in_mattersims_own_cache_is_adopted(mattersim_cache, monkeypatch, random_mattersim_checkpoint):
    # A user who already has MatterSim's file (in ~/.local/mattersim/pretrained_models) needs no download.
    import shutil

    import gen2d_mattersim

    monkeypatch.setenv("GEN2D_OFFLINE", "1")
    gen2d_mattersim.PRETRAINED_DIR.mkdir(parents=True)
    shutil.copy(random_mattersim_checkpoint, gen2d_mattersim.PRETRAINED_DIR / "mattersim-v1.0.0-5M.pth")
    assert gen2d_mattersim.available("mattersim-v1.0.0-5M") == (True, "")
    calc = get_calculator("mattersim", model="mattersim-v1.0.0-5M.pth", device="cpu")
    assert calc.gen2d_checkpoint_sha256 == file_sha256(random_mattersim_checkpoint)
    assert (mattersim_cache / "mattersim-v1.0.0-5M.pth").read_bytes() == random_mattersim_checkpoint.read_bytes()


def test_mattersim_weights_only_loader_matches_mattersims_own(random_mattersim_checkpoint, monkeypatch, tmp_path):
    # gen2d reads the checkpoint itself (weights only) and must build the same model mattersim's
    # Potential.from_checkpoint builds: same energy, forces and stress.
    from mattersim.forcefield.potential import MatterSimCalculator, Potential

    monkeypatch.setenv("HOME", str(tmp_path))  # from_checkpoint creates ~/.local/mattersim/pretrained_models
    ours = get_calculator("mattersim", model=str(random_mattersim_checkpoint), device="cpu")
    theirs = MatterSimCalculator(
        potential=Potential.from_checkpoint(
            load_path=str(random_mattersim_checkpoint), device="cpu", load_training_state=False
        ),
        device="cpu",
    )
    results = []
    for calc in (ours, theirs):
        atoms = _graphene()
        atoms.rattle(0.05, seed=1)
        atoms.calc = calc
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)
    assert np.allclose(results[0][1], results[1][1], atol=1e-6)
    assert np.allclose(results[0][2], results[1][2], atol=1e-6)


def test_mattersim_calculator_pickles_without_mattersims_download(random_mattersim_checkpoint, monkeypatch):
    # mattersim's own unpickling reloads (downloading if missing) the 1M model; gen2d's copy rebuilds
    # the model from the pickled weights and keeps its provenance.
    import pickle

    import mattersim.forcefield.potential as msp

    def no_download(*args, **kwargs):
        raise AssertionError("mattersim tried to download a checkpoint")

    monkeypatch.setattr(msp, "download_checkpoint", no_download)
    monkeypatch.setattr(msp.Potential, "from_checkpoint", no_download)
    calc = get_calculator("mattersim", model=str(random_mattersim_checkpoint), device="cpu")
    copy = pickle.loads(pickle.dumps(calc))
    assert copy.gen2d_checkpoint_sha256 == calc.gen2d_checkpoint_sha256 and copy.gen2d_model == calc.gen2d_model
    energies = []
    for c in (calc, copy):
        atoms = _graphene()
        atoms.rattle(0.05, seed=2)
        atoms.calc = c
        energies.append(atoms.get_potential_energy())
    assert energies[1] == pytest.approx(energies[0], abs=1e-6)


class _NotWeights:
    """Any class outside torch's weights-only allow-list."""


def test_mattersim_checkpoint_is_read_weights_only(tmp_path):
    # A checkpoint holding a pickled object is refused (torch.load(weights_only=True)), not unpickled.
    import gen2d_mattersim
    import torch

    bad = tmp_path / "pickled.pth"
    torch.save({"model_name": "m3gnet", "model": {}, "model_args": {}, "description": _NotWeights()}, bad)
    with pytest.raises(PluginUnavailable, match="cannot be read as weights only"):
        get_calculator("mattersim", model=str(bad), device="cpu")
    other = tmp_path / "other.pth"
    torch.save({"model": {}}, other)
    with pytest.raises(PluginUnavailable, match="not a MatterSim M3GNet checkpoint"):
        gen2d_mattersim.load_potential(other)


def test_mattersim_scorer_runs_on_random_checkpoint(random_mattersim_checkpoint):
    # The full ehull.mattersim path on the self-made checkpoint: relaxation and hull run, and the
    # provenance names the exact file. Random weights give meaningless energies, so only the
    # plumbing is asserted (a named failure is an acceptable outcome of a random model).
    from gen2d.scoring import get_scorer
    from gen2d.settings import get_settings
    from gen2d.structures import from_ase

    data = get_settings().data_dir
    scorer = get_scorer(
        "ehull.mattersim",
        model=str(random_mattersim_checkpoint),
        device="cpu",
        steps=20,
        provider="entries-file",
        provider_options={"path": data / "mp_elemental_reference_entries.json.gz"},
    )
    assert scorer.available() == (True, "")
    atoms = graphene(a=2.468, vacuum=10.0)
    atoms.pbc = (True, True, False)
    [res] = scorer.score([from_ase(atoms)])
    assert res.provenance.checkpoint_sha256 == file_sha256(random_mattersim_checkpoint)
    assert res.provenance.plugin == "ehull.mattersim"
    assert res.ok or res.failure.reason in {"not_converged", "exploding_forces", "layer_broke", "vacuum_closed"}
    assert res.extra["convergence"]["steps"] <= 20
