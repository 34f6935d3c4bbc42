"""Calculator plugin ``chgnet-her``: CHGNet fine-tuned on DFT frames with CHGNet's own Trainer."""

from __future__ import annotations

import importlib.metadata as md
import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import mx2
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import spy_on_replay_sampler

from gen2d.frames import save_frame, write_run_metadata
from gen2d.scoring import PluginUnavailable, ScorerOptionsError, file_sha256

pytestmark = pytest.mark.slow

#: per-atom offsets of the fixture's "DFT" from CHGNet (eV), and its ΔE_H error on slab+H frames (eV)
MU = {"Mo": -478.7, "S": -957.4, "H": -12.5}
H_ERROR = 0.6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def base():
    from chgnet.model import CHGNet

    return CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)


def _mos2():
    slab = mx2("MoS2", kind="2H", a=3.19, thickness=3.13, vacuum=7.5).repeat((2, 2, 1))
    slab.pbc = (True, True, False)
    return slab


def _labelled(atoms: Atoms, model, extra: float = 0.0) -> Atoms:
    """``atoms`` with 'DFT' labels: CHGNet's energy + MU per atom + ``extra``, CHGNet's forces."""
    from gen2d_chgnet_her.training import chgnet_evaluator

    [(energy, forces)] = chgnet_evaluator(model)([atoms])
    atoms = atoms.copy()
    energy += sum(MU[s] for s in atoms.get_chemical_symbols()) + extra
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


@pytest.fixture(scope="module")
def dft_runs(tmp_path_factory, base):
    """A MoS2 slab, two frames of H relaxing on S (ΔE_H off by H_ERROR from CHGNet), and H2."""
    root = tmp_path_factory.mktemp("dft")
    slab = _mos2()
    run = root / "run_a"
    (run / "slab").mkdir(parents=True)
    save_frame(_labelled(slab, base), run / "slab" / "frame.traj")
    (run / "site_0").mkdir()
    top_s = int(np.argmax(slab.positions[:, 2]))
    for height in (1.55, 1.40):
        site = slab.copy()
        site.append("H")
        site.positions[-1] = site.positions[top_s] + [0.0, 0.0, height]
        save_frame(_labelled(site, base, H_ERROR), run / "site_0" / "relax.traj")
    write_run_metadata(
        run, {"formula": "MoS2", "content_hash": "g2d-mos2", "settings_hash": "s1", "calculator": "cp2k"}
    )
    h2 = root / "h2"
    h2.mkdir()
    save_frame(
        _labelled(Atoms("H2", positions=[[5, 5, 5], [5, 5, 5.75]], cell=[10] * 3, pbc=True), base), h2 / "frame.traj"
    )
    write_run_metadata(h2, {"formula": "H2", "settings_hash": "s1", "system_kind": "molecule"})
    return root


#: the quickest fine-tune that still goes through every step: no database replay, one epoch
QUICK = {
    "replay_references": False,
    "replay_layers": 0,
    "replay_dehydrogenated_every": 1,
    "epochs": 1,
    "batch_size": 2,
    "learning_rate": 5e-4,
    "val_fraction": 0.0,
    "device": "cpu",
}


def test_one_epoch_changes_only_the_trainable_weights_and_lowers_the_energy_error(dft_runs, base, tmp_path):
    from gen2d_chgnet_her import CHECKPOINT_NAME, load_checkpoint, load_model, train

    out = train(frames=str(dft_runs), out=str(tmp_path / "model"), **QUICK)
    ckpt = tmp_path / "model" / CHECKPOINT_NAME
    assert out["checkpoint"] == str(ckpt) and ckpt.stat().st_size < 10 * 2**20
    state = load_checkpoint(ckpt)
    assert state["base_model"] == "0.3.0" and state["trainable"]
    before = base.state_dict()
    changed = {k for k, v in state["state_dict"].items() if not np.allclose(v.numpy(), before[k].numpy())}
    assert changed and changed <= set(state["trainable"])
    assert not any(k.startswith(("atom_embedding", "bond_conv_layers", "atom_conv_layers.0")) for k in changed)

    m = out["metrics"]["train"]
    assert m["tuned"]["energy_mae_mev_per_atom"] < m["base"]["energy_mae_mev_per_atom"]
    # the fine-tuned network loads back from the checkpoint alone and is what the metrics measured
    tuned, _ = load_model(str(tmp_path / "model"))
    assert all(np.allclose(v.numpy(), tuned.state_dict()[k].numpy()) for k, v in state["state_dict"].items())

    manifest = json.loads((tmp_path / "model" / "MANIFEST.json").read_text())
    assert manifest["sha256"] == file_sha256(ckpt)
    assert manifest["base_model"]["chgnet_model"] == "0.3.0" and len(manifest["base_model"]["checkpoint_sha256"]) == 64
    assert set(manifest["data"]["files"]) == {"train", "val", "replay_train", "replay_val"}
    assert manifest["data"]["shift"]["mu"]["Mo"] and manifest["command"]
    assert manifest["training"]["n_trainable_parameters"] < manifest["training"]["n_parameters"]


def test_a_replay_draw_per_epoch_trains_on_every_dft_frame_and_a_subset_of_the_replay(dft_runs, tmp_path, monkeypatch):
    """``replay_per_epoch``: an epoch is the DFT items and N replay frames; the option is in the MANIFEST."""
    import gen2d_chgnet_her.training as training
    from gen2d_chgnet_her import train

    drawn = spy_on_replay_sampler(monkeypatch, training)
    out = train(frames=str(dft_runs), out=str(tmp_path / "model"), **QUICK, replay_per_epoch=1)
    ((n_fixed, n_replay, per_epoch, sampler),) = drawn
    assert per_epoch == 1 and n_replay > 1 and sampler is not None and sampler.epoch == 1  # one epoch drawn
    assert len(sampler) == n_fixed + 1
    manifest = json.loads((tmp_path / "model" / "MANIFEST.json").read_text())
    assert manifest["training"]["options"]["replay_per_epoch"] == 1
    data = manifest["data"]
    assert data["files"]["replay_train"]["n_frames"] > 1  # the draw of one is a real subset of the replay set
    m = out["metrics"]["train"]
    assert m["tuned"]["energy_mae_mev_per_atom"] < m["base"]["energy_mae_mev_per_atom"]


def test_bad_options_are_named(tmp_path):
    from gen2d_chgnet_her import train

    with pytest.raises(ScorerOptionsError, match="epochz"):
        train(frames=str(tmp_path), out=str(tmp_path / "m"), epochz=3)


def test_shipped_checkpoint_gives_finite_energy_and_forces_on_mos2():
    from gen2d_chgnet_her import default_model_dir, make_calculator

    calc = make_calculator(device="cpu")
    atoms = _mos2()
    atoms.calc = calc
    e = atoms.get_potential_energy() / len(atoms)
    forces = atoms.get_forces()
    assert np.isfinite(e) and np.all(np.isfinite(forces))
    assert -8.5 < e < -6.0  # MoS2 on the MPtrj scale (CHGNet 0.3.0: about -7.3 eV/atom)
    manifest = json.loads((default_model_dir() / "MANIFEST.json").read_text())
    assert calc.gen2d_checkpoint_sha256 == manifest["sha256"] and calc.gen2d_model.startswith("CHGNet-HER")


def test_a_missing_or_foreign_checkpoint_is_a_named_error(tmp_path):
    import torch
    from gen2d_chgnet_her import CheckpointUnavailable, available, make_calculator

    ok, why = available(str(tmp_path / "nowhere"))
    assert not ok and "no fine-tuned CHGNet checkpoint" in why and "gen2d train --calculator chgnet-her" in why
    with pytest.raises(CheckpointUnavailable) as err:
        make_calculator(model=str(tmp_path / "nowhere"))
    assert isinstance(err.value, PluginUnavailable)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointUnavailable, match="not a gen2d-chgnet-her"):
        make_calculator(model=str(tmp_path / "other.pt"))
    torch.save({"format": "gen2d-chgnet-her/1", "base_model": "0.3.0", "obj": object()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointUnavailable, match="weights-only"):
        make_calculator(model=str(tmp_path / "pickled.pt"))


def test_cli_names_an_unknown_calculator(tmp_path):
    from typer.testing import CliRunner

    from gen2d.cli import app

    res = CliRunner().invoke(app, ["train", "--calculator", "no-such-mlip", "--json"])
    assert res.exit_code != 0 and "no calculator plugin named 'no-such-mlip'" in res.stdout


_INSTALLED = any(ep.name == "chgnet-her" for ep in md.entry_points(group="gen2d.calculators"))


@pytest.mark.skipif(
    not _INSTALLED, reason="entry point chgnet-her is not installed yet (pip install -e . registers it)"
)
def test_cli_fine_tunes_and_the_scorers_can_name_the_result(dft_runs, tmp_path):
    from gen2d_ehull import _backend_available
    from typer.testing import CliRunner

    from gen2d.cli import app
    from gen2d.scoring import get_calculator

    opts = [
        x for k, v in {**QUICK, "frames": str(dft_runs), "out": str(tmp_path / "m")}.items() for x in ("-o", f"{k}={v}")
    ]
    res = CliRunner().invoke(app, ["train", "--calculator", "chgnet-her", *opts, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["kind"] == "calculator" and doc["checkpoint"].endswith("chgnet_her.pt")
    calc = get_calculator("chgnet-her", model=str(tmp_path / "m"), device="cpu")
    assert calc.gen2d_checkpoint_sha256 == file_sha256(doc["checkpoint"])
    assert _backend_available("chgnet-her", str(tmp_path / "m")) == (True, "")  # what ehull.* and dgh.mlip check
