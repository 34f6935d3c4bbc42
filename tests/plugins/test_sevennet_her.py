"""Calculator plugin ``sevennet-her``: SevenNet fine-tuned on DFT frames with sevenn's own Trainer."""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import mx2
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import spy_on_replay_sampler

from gen2d.frames import save_frame, write_run_metadata
from gen2d.scoring import PluginUnavailable, ScorerOptionsError, file_sha256

pytest.importorskip("sevenn")
pytestmark = pytest.mark.slow

#: per-atom offsets of the fixture's "DFT" from SevenNet-0 (eV), and its ΔE_H error on slab+H frames (eV)
MU = {"Mo": -478.7, "S": -957.4, "H": -12.5}
H_ERROR = 0.6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base():
    """SevenNet-0 from the sevenn wheel (sha256-checked) and its evaluator."""
    from gen2d_sevennet_her import load_base_model
    from gen2d_sevennet_her.training import sevennet_evaluator

    net, config, _ = load_base_model("7net-0")
    return net, sevennet_evaluator(net, float(config["cutoff"]))


def _mos2():
    slab = mx2("MoS2", kind="2H", a=3.19, thickness=3.13, vacuum=7.5).repeat((2, 2, 1))
    slab.pbc = (True, True, False)
    return slab


def _labelled(atoms: Atoms, evaluate, extra: float = 0.0) -> Atoms:
    """``atoms`` with 'DFT' labels: SevenNet-0's energy + MU per atom + ``extra``, SevenNet-0's forces."""
    [(energy, forces)] = evaluate([atoms])
    atoms = atoms.copy()
    energy += sum(MU[s] for s in atoms.get_chemical_symbols()) + extra
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def _site(slab: Atoms, height: float) -> Atoms:
    top_s = int(np.argmax(slab.positions[:, 2]))
    site = slab.copy()
    site.append("H")
    site.positions[-1] = site.positions[top_s] + [0.0, 0.0, height]
    return site


@pytest.fixture(scope="module")
def dft_runs(tmp_path_factory, base):
    """A MoS2 slab, two frames of H relaxing on S (ΔE_H off by H_ERROR from SevenNet-0), and H2."""
    _, evaluate = base
    root = tmp_path_factory.mktemp("dft")
    slab = _mos2()
    run = root / "run_a"
    (run / "slab").mkdir(parents=True)
    save_frame(_labelled(slab, evaluate), run / "slab" / "frame.traj")
    (run / "site_0").mkdir()
    for height in (1.55, 1.40):
        save_frame(_labelled(_site(slab, height), evaluate, H_ERROR), run / "site_0" / "relax.traj")
    write_run_metadata(
        run, {"formula": "MoS2", "content_hash": "g2d-mos2", "settings_hash": "s1", "calculator": "cp2k"}
    )
    h2 = root / "h2"
    h2.mkdir()
    save_frame(
        _labelled(Atoms("H2", positions=[[5, 5, 5], [5, 5, 5.75]], cell=[10] * 3, pbc=True), evaluate),
        h2 / "frame.traj",
    )
    write_run_metadata(h2, {"formula": "H2", "settings_hash": "s1", "system_kind": "molecule"})
    return root


#: the quickest fine-tune that still goes through every step: no database replay, one epoch
QUICK = {
    "replay_references": False,
    "replay_layers": 0,
    "replay_dehydrogenated_every": 1,
    "replay_n_rattled": 0,
    "dft_repeats": 1,
    "epochs": 1,
    "batch_size": 2,
    "learning_rate": 2e-3,
    "val_fraction": 0.0,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def tuned_dir(dft_runs, tmp_path_factory):
    from gen2d_sevennet_her import train

    out = tmp_path_factory.mktemp("model")
    result = train(frames=str(dft_runs), out=str(out), **QUICK)
    return out, result


def test_one_epoch_trains_only_the_last_block_and_readout_and_moves_h_binding(tuned_dir, base):
    from gen2d_sevennet_her import BASE_MODELS, CHECKPOINT_NAME, load_checkpoint, load_model
    from gen2d_sevennet_her.training import sevennet_evaluator

    out, result = tuned_dir
    base_net, base_eval = base
    ckpt = out / CHECKPOINT_NAME
    assert result["checkpoint"] == str(ckpt) and ckpt.stat().st_size < 10 * 2**20
    state = load_checkpoint(ckpt)
    assert state["base_model"] == "7net-0" and state["base_checkpoint_sha256"] == BASE_MODELS["7net-0"]
    # the checkpoint is a delta: the last interaction block (4_) and the readout, nothing else
    assert set(state["parameters"]) == set(state["trainable"])
    assert all(k.startswith(("4_", "reduce_input_to_hidden", "reduce_hidden_to_energy")) for k in state["trainable"])

    tuned, _ = load_model(str(out))
    before, after = base_net.state_dict(), tuned.state_dict()
    assert set(before) == set(after)
    changed = {k for k in before if not np.allclose(before[k].numpy(), after[k].numpy())}
    assert changed and changed <= set(state["trainable"])

    m = result["metrics"]["train"]
    assert m["tuned"]["energy_mae_mev_per_atom"] < m["base"]["energy_mae_mev_per_atom"]
    # the "DFT" binds H H_ERROR more weakly than SevenNet-0: the fine-tune moves ΔE_H that way, and not past it
    slab = _mos2()
    site = _site(slab, 1.45)  # a geometry between the two training frames
    tuned_eval = sevennet_evaluator(tuned, 5.0)
    shift_b = base_eval([site])[0][0] - base_eval([slab])[0][0]
    shift_t = tuned_eval([site])[0][0] - tuned_eval([slab])[0][0]
    assert 0.0 < shift_t - shift_b < 1.5 * H_ERROR

    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["sha256"] == file_sha256(ckpt)
    assert manifest["base_model"]["sevenn_model"] == "7net-0"
    assert manifest["base_model"]["checkpoint_sha256"] == BASE_MODELS["7net-0"]
    assert set(manifest["data"]["files"]) == {"train", "val", "replay_train", "replay_val"}
    assert manifest["data"]["shift"]["mu"]["Mo"] and manifest["command"]
    assert manifest["training"]["n_trainable_parameters"] < manifest["training"]["n_parameters"] / 5
    assert manifest["training"]["history"]["epoch"] == [1.0]


def test_the_calculator_gives_the_trained_network(tuned_dir):
    from gen2d_sevennet_her import CHECKPOINT_NAME, make_calculator

    out, result = tuned_dir
    calc = make_calculator(model=str(out), device="cpu")
    atoms = _site(_mos2(), 1.45)
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy()) and np.all(np.isfinite(atoms.get_forces()))
    assert calc.gen2d_checkpoint_sha256 == file_sha256(out / CHECKPOINT_NAME) == result["sha256"]
    assert calc.gen2d_model.startswith("SevenNet-HER") and "7net-0" in calc.gen2d_model


def test_bad_options_are_named(tmp_path):
    from gen2d_sevennet_her import train

    with pytest.raises(ScorerOptionsError, match="epochz"):
        train(frames=str(tmp_path), out=str(tmp_path / "m"), epochz=3)
    with pytest.raises(ScorerOptionsError, match="base_model"):
        train(frames=str(tmp_path), out=str(tmp_path / "m"), base_model="7net-omni")


def test_a_replay_draw_per_epoch_goes_through_sevenns_epoch_loop(dft_runs, tmp_path, monkeypatch):
    """``replay_per_epoch`` with sevenn's loader and epoch loop: it trains, and the MANIFEST records the option."""
    import gen2d_sevennet_her.training as training
    from gen2d_sevennet_her import train

    drawn = spy_on_replay_sampler(monkeypatch, training)
    result = train(frames=str(dft_runs), out=str(tmp_path), **QUICK, replay_per_epoch=1)
    ((n_fixed, n_replay, per_epoch, sampler),) = drawn
    assert per_epoch == 1 and n_replay > 1 and sampler is not None and sampler.epoch == 1  # one epoch drawn
    assert len(sampler) == n_fixed + 1
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest["training"]["options"]["replay_per_epoch"] == 1
    assert manifest["data"]["files"]["replay_train"]["n_frames"] > 1
    assert Path(result["checkpoint"]).is_file()


def test_a_misspelt_trainable_prefix_is_refused(base):
    from gen2d_sevennet_her.training import resolve_trainable

    net, _ = base
    assert resolve_trainable(net, ["block.-1"], 5) == resolve_trainable(net, ["block.4"], 5)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        resolve_trainable(net, ["reduce_hiden_to_energy"], 5)
    with pytest.raises(ValueError, match="5 interaction blocks"):
        resolve_trainable(net, ["block.5"], 5)


def test_shipped_checkpoint_gives_finite_energy_and_forces_on_mos2():
    from gen2d_sevennet_her import default_model_dir, make_calculator

    calc = make_calculator(device="cpu")
    atoms = _mos2()
    atoms.calc = calc
    e = atoms.get_potential_energy() / len(atoms)
    forces = atoms.get_forces()
    assert np.isfinite(e) and np.all(np.isfinite(forces))
    assert -8.5 < e < -6.0  # MoS2 on the MPtrj scale (SevenNet-0: about -7.3 eV/atom)
    manifest = json.loads((default_model_dir() / "MANIFEST.json").read_text())
    assert calc.gen2d_checkpoint_sha256 == manifest["sha256"] and calc.gen2d_model.startswith("SevenNet-HER")
    assert manifest["size_bytes"] < 10 * 2**20


def test_a_missing_or_foreign_checkpoint_is_a_named_error(tmp_path):
    import torch
    from gen2d_sevennet_her import CheckpointUnavailable, available, make_calculator

    ok, why = available(str(tmp_path / "nowhere"))
    assert not ok and "no fine-tuned SevenNet checkpoint" in why and "gen2d train --calculator sevennet-her" in why
    with pytest.raises(CheckpointUnavailable) as err:
        make_calculator(model=str(tmp_path / "nowhere"))
    assert isinstance(err.value, PluginUnavailable)
    torch.save({"parameters": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointUnavailable, match="not a gen2d-sevennet-her"):
        make_calculator(model=str(tmp_path / "other.pt"))
    torch.save({"format": "gen2d-sevennet-her/1", "obj": object()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointUnavailable, match="weights-only"):
        make_calculator(model=str(tmp_path / "pickled.pt"))


def test_a_base_checkpoint_of_other_bytes_is_a_named_error(tmp_path, monkeypatch):
    import gen2d_sevennet_her as plugin
    import torch

    # the fine-tune records another base file than the wheel holds
    torch.save(
        {
            "format": plugin.CHECKPOINT_FORMAT,
            "base_model": "7net-0",
            "base_checkpoint_sha256": "0" * 64,
            "parameters": {},
        },
        tmp_path / "delta.pt",
    )
    with pytest.raises(plugin.BaseCheckpointMismatch, match="recorded in the fine-tune"):
        plugin.make_calculator(model=str(tmp_path / "delta.pt"), device="cpu")
    # the wheel's file is not the one gen2d pinned
    monkeypatch.setitem(plugin.BASE_MODELS, "7net-0", "f" * 64)
    with pytest.raises(plugin.BaseCheckpointMismatch, match="pinned by gen2d_sevennet_her") as err:
        plugin.base_checkpoint("7net-0")
    assert isinstance(err.value, PluginUnavailable)
    with pytest.raises(plugin.CheckpointUnavailable, match="not one of"):
        plugin.base_checkpoint("7net-omni")


def test_parameters_that_do_not_fit_the_base_are_refused(base):
    import torch
    from gen2d_sevennet_her import CheckpointUnavailable, apply_parameters

    net, _ = base
    with pytest.raises(CheckpointUnavailable, match="does not fit"):
        apply_parameters(net, {"9_self_interaction_1.linear.weight": torch.zeros(3)})
    with pytest.raises(CheckpointUnavailable, match="does not fit"):
        apply_parameters(net, {"reduce_hidden_to_energy.linear.weight": torch.zeros(3)})


_INSTALLED = any(ep.name == "sevennet-her" for ep in md.entry_points(group="gen2d.calculators"))


@pytest.mark.skipif(
    not _INSTALLED, reason="entry point sevennet-her is not installed yet (pip install -e . registers it)"
)
def test_the_scorers_can_name_the_result(tuned_dir):
    from gen2d_ehull import _backend_available

    from gen2d.scoring import get_calculator

    out, result = tuned_dir
    calc = get_calculator("sevennet-her", model=str(out), device="cpu")
    assert calc.gen2d_checkpoint_sha256 == result["sha256"]
    assert _backend_available("sevennet-her", str(out)) == (True, "")  # what ehull.* and dgh.mlip check
