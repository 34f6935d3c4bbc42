"""Fine-tuning data from DFT frames: the reference shift, the dataset, the split, the manifest, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from gen2d.finetune import (
    FinetuneDataError,
    FinetuneDataSettings,
    ReferenceShift,
    agreement,
    build_dataset,
    calculator_evaluator,
    delta_e_h_rows,
    element_counts,
    fit_host_shift,
    fit_reference_shift,
    frame_fingerprint,
    frame_group,
    frame_weights,
    split_frames,
    write_manifest,
)
from gen2d.frames import save_frame, write_run_metadata
from gen2d.scoring import file_sha256

#: the "DFT" of these tests: EMT plus a constant per atom of each element (eV), as CP2K differs from an MLIP
MU = {"Cu": -1523.25, "H": -12.5}


def test_shift_fit_recovers_known_per_element_constants():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 9, size=(12, 3)).astype(float)
    counts[:, 0] += 1  # no empty frame
    mu = np.array([-478.7, -957.4, -12.53])
    mlip = rng.normal(-5, 2, size=12) * counts.sum(axis=1)
    shift = fit_reference_shift(counts, mlip + counts @ mu, mlip, ["Mo", "S", "H"], weights=rng.uniform(0.5, 2, 12))
    np.testing.assert_allclose(shift.mu, mu, atol=1e-8)
    assert shift.rank == 3 and shift.residual_rms < 1e-9
    assert shift.of(["Mo", "S", "S", "H"]) == pytest.approx(mu[0] + 2 * mu[1] + mu[2])
    with pytest.raises(KeyError, match="without C"):
        shift.of(["C"])


def test_elements_that_always_come_together_get_the_min_norm_split_and_exact_predictions():
    # Mo and S only ever as MoS2 (slab, slab+H), and H2: Mo and S cannot be told apart
    counts = np.array([[9, 18, 0], [9, 18, 1], [9, 18, 1], [0, 0, 2]], float)
    true = np.array([-400.0, -1000.0, -12.0])
    mlip = np.array([-200.0, -205.0, -206.0, -7.0])
    shift = fit_reference_shift(counts, mlip + counts @ true, mlip, ["Mo", "S", "H"])
    assert shift.rank == 2
    np.testing.assert_allclose(counts @ np.array(shift.mu), counts @ true, atol=1e-7)
    mos2 = true[0] + 2 * true[1]
    np.testing.assert_allclose(shift.mu[:2], [mos2 / 5, 2 * mos2 / 5], atol=1e-8)  # least norm on Mo + 2 S


def _frames_with_h_error(error: float):
    """Slab, two slab+H frames and H2, whose 'DFT' energies differ from the MLIP by MU and by ``error`` on slab+H."""
    slab = Atoms("Cu8")
    site = Atoms("Cu8H")
    h2 = Atoms("H2")
    frames = [slab, site, site.copy(), h2]
    kinds = ["slab", "slab+H", "slab+H", "molecule"]
    systems = ["slab", "site_0", "site_0", "."]
    mlip = np.array([-30.0, -33.0, -33.1, -6.7])
    for f, k, s, fr in zip(frames, kinds, systems, [0, 0, 1, 0]):
        f.info.update(config_type=k, run="r" if s != "." else "h2", system=s, frame=fr)
    counts = element_counts(frames, ["Cu", "H"])
    dft = mlip + counts @ np.array([MU["Cu"], MU["H"]]) + np.array([0.0, error, error, 0.0])
    return frames, counts, dft, mlip


def test_the_shift_never_changes_a_balanced_reaction_energy_and_clean_slabs_stay_on_the_mlip_scale():
    frames, counts, dft, mlip = _frames_with_h_error(0.8)
    shift = fit_reference_shift(counts, dft, mlip, ["Cu", "H"], frame_weights(frames, anchor_weight=100.0))
    target = dft - counts @ np.array(shift.mu)
    delta_e_h = lambda e: e[1] - e[0] - 0.5 * e[3]  # noqa: E731
    assert delta_e_h(target) == pytest.approx(delta_e_h(dft), abs=1e-9)
    assert abs(target[0] - mlip[0]) / 8 < 1e-3  # the anchored clean slab: < 1 meV/atom from the MLIP
    # the whole ΔE_H error is left for the fine-tune, on the frames with H
    assert delta_e_h(target) - delta_e_h(mlip) == pytest.approx(0.8, abs=1e-9)
    # one group weighs as much as one frame: the two slab+H frames weigh 1/2 each
    np.testing.assert_allclose(frame_weights(frames, 100.0), [100.0, 0.5, 0.5, 1.0])


def _two_polymorphs(polymorph_error: float, h_error: float):
    """Two hosts of one composition (2H and 1T Mo2S4), each a slab and a slab+H frame, and H2. DFT = MLIP + per-element
    constants, except that DFT puts the 1T host ``polymorph_error`` eV higher than the MLIP does, and binds H
    ``h_error`` eV more weakly on both."""
    frames, dft, mlip = [], [], []
    mu = {"Mo": -400.0, "S": -1000.0, "H": -12.0}
    for host, e_host, extra in (("g2d-2h", -40.0, 0.0), ("g2d-1t", -39.0, polymorph_error)):
        for kind, formula, e_mlip, err in (("slab", "Mo2S4", e_host, 0.0), ("slab+H", "Mo2S4H", e_host - 3.0, h_error)):
            f = Atoms(formula)
            f.info.update(config_type=kind, content_hash=host, run=host, system=kind)
            frames.append(f)
            mlip.append(e_mlip)
            dft.append(e_mlip + sum(mu[s] for s in f.get_chemical_symbols()) + extra + err)
    h2 = Atoms("H2", info={"config_type": "molecule", "run": "h2", "system": "."})
    frames.append(h2)
    mlip.append(-6.7)
    dft.append(-6.7 + 2 * mu["H"])
    return frames, np.array(dft), np.array(mlip)


def test_host_alignment_keeps_both_polymorphs_on_the_mlip_scale_where_one_shift_per_element_cannot():
    frames, dft, mlip = _two_polymorphs(polymorph_error=1.1, h_error=0.5)  # ~187 meV/atom on the 1T slab
    weights = frame_weights(frames, anchor_weight=100.0)
    delta_e_h = lambda e, i: e[i + 1] - e[i] - 0.5 * e[4]  # noqa: E731

    host = fit_host_shift(frames, dft, mlip, weights)
    target = dft - np.array([host.of(f) for f in frames])
    np.testing.assert_allclose(target[[0, 2, 4]], mlip[[0, 2, 4]], atol=1e-9)  # both clean slabs and H2
    for i in (0, 2):
        assert delta_e_h(target, i) == pytest.approx(delta_e_h(dft, i), abs=1e-9)  # ΔE_H untouched
        assert target[i + 1] - mlip[i + 1] == pytest.approx(0.5, abs=1e-9)  # the H error is what is left
    assert set(host.hosts) == {"g2d-2h/Mo2S4", "g2d-1t/Mo2S4"} and host.adsorbates == ["H"]
    assert host.hosts["g2d-1t/Mo2S4"]["offset_eV"] - host.hosts["g2d-2h/Mo2S4"]["offset_eV"] == pytest.approx(1.1)

    # one μ per element: the two clean slabs of one composition cannot both sit on the MLIP's scale
    counts = element_counts(frames, ["H", "Mo", "S"])
    element = fit_reference_shift(counts, dft, mlip, ["H", "Mo", "S"], weights)
    off = dft - counts @ np.array(element.mu) - mlip
    assert abs(off[2] - off[0]) == pytest.approx(1.1, abs=1e-9)
    # and the error left on the frames with H is no longer the H error alone
    assert max(abs(off[1] - 0.5), abs(off[3] - 0.5)) > 0.2

    # the fit survives a manifest round trip, and a frame of an unknown host falls back to μ per element
    back = ReferenceShift.from_dict(json.loads(json.dumps(host.as_dict())))
    assert back.of(frames[3]) == pytest.approx(host.of(frames[3]))
    stranger = Atoms("Mo2S4", info={"content_hash": "g2d-new"})
    assert back.host_of(stranger) is None
    assert back.of(stranger) == pytest.approx(float(counts[0] @ np.array(host.mu)))


def test_two_cell_sizes_of_one_layer_are_two_hosts_and_a_frame_finds_its_own():
    frames, dft, mlip = [], [], []
    for formula, kind, offset in (("Mo2S4", "slab", -3000.0), ("Mo8S16", "slab", -12005.0), ("Mo8S16H", "slab+H", 0)):
        f = Atoms(formula, info={"config_type": kind, "content_hash": "g2d-2h", "run": formula, "system": kind})
        frames.append(f)
        mlip.append(-5.0 * len(f))
        dft.append(mlip[-1] + (offset or -12005.0 - 12.0 + 0.4))  # slab+H: the 4x4 host, μ_H −12, 0.4 eV H error
    h2 = Atoms("H2", info={"config_type": "molecule", "run": "h2", "system": "."})
    frames.append(h2)
    mlip.append(-6.7)
    dft.append(-6.7 - 24.0)
    shift = fit_host_shift(frames, dft, mlip)
    assert set(shift.hosts) == {"g2d-2h/Mo2S4", "g2d-2h/Mo8S16"}
    target = np.array(dft) - np.array([shift.of(f) for f in frames])
    np.testing.assert_allclose(target[[0, 1, 3]], np.array(mlip)[[0, 1, 3]], atol=1e-9)  # both cells and H2
    assert shift.host_of(frames[2])["counts"] == {"Mo": 8, "S": 16}  # the 4x4 host, not the 3-atom one
    assert target[2] - mlip[2] == pytest.approx(0.4, abs=1e-9)
    # a frame that adds a non-adsorbate atom to the host belongs to no host
    assert shift.host_of(Atoms("Mo8S17", info={"content_hash": "g2d-2h"})) is None


def _labelled(atoms: Atoms, extra: float = 0.0) -> Atoms:
    """``atoms`` with the test's 'DFT' energy (EMT + MU per atom + ``extra``) and EMT forces."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    energy = atoms.get_potential_energy() + sum(MU[s] for s in atoms.get_chemical_symbols()) + extra
    forces = atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


@pytest.fixture()
def dft_runs(tmp_path):
    """Two slab+H relaxations of one Cu slab, the slab single point and H2, shaped like dgh.dft's folders."""
    root = tmp_path / "dft"
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    slab.pbc = (True, True, False)
    meta = {"formula": "Cu", "content_hash": "g2d-cu", "settings_hash": "s1", "calculator": "cp2k"}
    for run, dz in (("run_a", 0.0), ("run_b", 0.3)):
        (root / run / "slab").mkdir(parents=True)
        save_frame(_labelled(slab), root / run / "slab" / "frame.traj")
        (root / run / "site_0").mkdir()
        for k in range(3):
            site = slab.copy()
            site.append("H")
            site.positions[-1] = site.positions[4] + [0.4 * dz, 0.0, 1.6 - 0.1 * k]
            save_frame(_labelled(site, extra=0.3), root / run / "site_0" / "relax.traj")
        write_run_metadata(root / run, meta)
    h2 = root / "h2"
    h2.mkdir()
    for bond in (0.74, 0.76):
        save_frame(
            _labelled(Atoms("H2", positions=[[5, 5, 5], [5, 5, 5 + bond]], cell=[10] * 3, pbc=True)), h2 / "relax.traj"
        )
    write_run_metadata(h2, {"formula": "H2", "settings_hash": "s1", "system_kind": "molecule"})
    return root


def _settings(**kw):
    return FinetuneDataSettings(replay_references=False, replay_layers=0, **kw)


def test_dataset_from_dft_runs_on_the_mlip_scale_with_a_group_split_and_replay(dft_runs, tmp_path):
    ds = build_dataset([dft_runs], calculator_evaluator(EMT()), _settings(replay_dehydrogenated_every=1))
    # the slab single point appears in both runs: kept once
    assert ds.summary["n_duplicates_dropped"] == 1
    assert ds.summary["elements"] == ["Cu", "H"]
    # a whole relaxation is held out, never single frames of it; clean slab and H2 stay in training
    assert len(ds.summary["val_groups"]) == 1 and ds.summary["val_groups"][0].endswith("/site_0")
    assert {f.info["config_type"] for f in ds.val} == {"slab+H"}
    assert {"slab", "molecule"} <= {f.info["config_type"] for f in ds.train}
    # the fitted shift takes the 'DFT' back to EMT: MU minus what the +0.3 eV on slab+H leaves on H
    mu = ds.summary["shift"]["mu"]
    assert mu["Cu"] == pytest.approx(MU["Cu"], abs=1e-3)
    for f in ds.train + ds.val:
        assert f.info["target_energy"] == pytest.approx(f.info["dft_energy"] - ds.shift.of(f))
        if f.info["config_type"] == "slab":
            assert f.info["target_energy"] == pytest.approx(f.info["base_energy"], abs=0.01)
    slab_h = [f for f in ds.train if f.info["config_type"] == "slab+H"]
    assert all(f.info["target_energy"] - f.info["base_energy"] > 0.2 for f in slab_h)  # the error to learn
    # replay: the training slabs without H, labelled by the base model, each with a rattled copy
    assert ds.replay_train + ds.replay_val and all(
        f.info["config_type"] == "replay" and "H" not in f.get_chemical_symbols() for f in ds.replay_train
    )
    rattled = [f for f in ds.replay_train + ds.replay_val if f.info["rattle"] > 0]
    assert rattled and all(np.abs(f.arrays["forces"]).max() > 0 for f in rattled)

    files = ds.write(tmp_path / "data")
    assert set(files) == {"train", "val", "replay_train", "replay_val"}
    assert files["train"]["sha256"] == file_sha256(tmp_path / "data" / "train.extxyz")

    doc = write_manifest(tmp_path / "MANIFEST.json", data={"files": files, **ds.summary}, metrics={"x": 1.0})
    back = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert back == json.loads(json.dumps(doc))
    assert back["command"] and not back["command"].startswith("-c") and back["date"].endswith("+00:00")
    assert back["data"]["files"]["val"]["sha256"] == files["val"]["sha256"]
    assert back["data"]["shift"]["unit"] == "eV per atom of the element"
    # the host alignment (default) records the slab's constant; the element one reproduces the same targets here,
    # where DFT − MLIP is linear in the composition
    assert back["data"]["shift"]["hosts"]["g2d-cu/Cu8"]["counts"] == {"Cu": 8}
    assert ds.summary["groups_without_host"] == []
    by_element = build_dataset([dft_runs], calculator_evaluator(EMT()), _settings(alignment="element"))
    assert "hosts" not in by_element.summary["shift"]
    same = {frame_fingerprint(f): f.info["target_energy"] for f in ds.train + ds.val}
    for f in by_element.train + by_element.val:
        assert f.info["target_energy"] == pytest.approx(same[frame_fingerprint(f)], abs=0.02)


def test_delta_e_h_at_the_dft_geometries_sees_the_h_error_and_not_the_per_element_constants(dft_runs):
    from gen2d.frames import collect_frames

    frames, _ = collect_frames([dft_runs])
    rows = delta_e_h_rows(frames, {"emt": calculator_evaluator(EMT())}, {"run_a/site_0": "held out"})
    assert [r["group"] for r in rows] == ["run_a/site_0", "run_b/site_0"] and rows[0]["split"] == "held out"
    # the 'DFT' is EMT + MU per atom + 0.3 eV on every slab+H frame: MU cancels in ΔE_H, the 0.3 eV does not
    for r in rows:
        assert r["frame"] == 2 and r["dft_eV"] - r["emt_eV"] == pytest.approx(0.3, abs=1e-6)
    stats = agreement([r["emt_eV"] for r in rows], [r["dft_eV"] for r in rows])
    assert stats["n"] == 2 and stats["bias_eV"] == pytest.approx(-0.3) and stats["spearman_rho"] is None
    # a hit is |ΔE_H + 0.27| <= 0.2: -0.3 is one, +0.5 is not, so the calls disagree on the first row only
    calls = agreement([-0.3, 0.5, 1.0], [0.5, 0.6, 1.1])
    assert (calls["hits_agree"], calls["hits_ref"], calls["hits_both"]) == (2, 0, 0)
    assert calls["spearman_rho"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in length"):
        agreement([0.1], [0.1, 0.2])


def test_explicit_validation_runs_and_their_named_errors(dft_runs):
    ds = build_dataset([dft_runs], calculator_evaluator(EMT()), _settings(val_systems=["run_b"]))
    assert ds.summary["val_groups"] == ["run_b/site_0"]
    with pytest.raises(FinetuneDataError) as err:
        build_dataset([dft_runs], calculator_evaluator(EMT()), _settings(val_systems=["no_such_run"]))
    assert err.value.reason == "unknown_val_system"
    frames = [Atoms("Cu", info={"run": "r", "system": "site_0", "config_type": "slab+H"})]
    with pytest.raises(FinetuneDataError) as err:
        split_frames(frames, val_systems=["r/site_0"])
    assert err.value.reason == "empty_training_set"


def test_a_material_held_out_by_formula_takes_every_group_of_it_including_ones_planned_after(dft_runs):
    """Leave-one-material-out holds a formula out as the frames are read: its bare slab and every relaxation, even a
    run folder that did not exist when the fold's group list was made; other materials and H2 stay in training."""

    def frame(run, system, kind, formula):
        return Atoms("Cu", info={"run": run, "system": system, "config_type": kind, "formula": formula})

    planned = [frame("a", "slab", "slab", "MoS2"), frame("a", "site_0", "slab+H", "MoS2")]
    others = [
        frame("b", "slab", "slab", "WS2"),
        frame("b", "site_0", "slab+H", "WS2"),
        frame("h2", "H2", "molecule", "H2"),
    ]
    late = [frame("c", "site_1", "slab+H", "MoS2")]  # a run folder of MoS2 written while the fold ran
    train, val, groups = split_frames(planned + others + late, val_formulas=["MoS2"])
    assert groups == ["a/site_0", "a/slab", "c/site_1"]
    assert {f.info["formula"] for f in train} == {"WS2", "H2"} and len(val) == 3
    # the group names planned before the late folder put it into training: what the formula rule prevents
    train_by_name, _, _ = split_frames(planned + others + late, val_systems=["a/slab", "a/site_0"])
    assert any(f.info["run"] == "c" for f in train_by_name)
    with pytest.raises(FinetuneDataError) as err:  # a formula with no relaxation with H is a named error
        split_frames(planned + others, val_formulas=["Ti2CO2"])
    assert err.value.reason == "unknown_val_system" and "MoS2" in str(err.value)
    with pytest.raises(FinetuneDataError) as err:  # every material held out: H2 alone is left, which is no training
        build_dataset([dft_runs], calculator_evaluator(EMT()), _settings(val_formulas=["Cu"]))
    assert err.value.reason == "empty_training_set"


def test_no_frames_is_a_named_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FinetuneDataError) as err:
        build_dataset([tmp_path / "empty"], calculator_evaluator(EMT()), _settings())
    assert err.value.reason == "no_frames" and "no DFT frame" in str(err.value)


def test_frames_of_two_dft_settings_are_refused(dft_runs):
    meta = json.loads((dft_runs / "run_b" / "run.json").read_text())
    write_run_metadata(dft_runs / "run_b", {**meta, "settings_hash": "s2"})
    with pytest.raises(FinetuneDataError) as err:
        build_dataset([dft_runs], calculator_evaluator(EMT()), _settings())
    assert err.value.reason == "mixed_settings"
    with pytest.raises(ValueError, match="alignment must be"):
        build_dataset([dft_runs], calculator_evaluator(EMT()), _settings(settings_hash="s1", alignment="per-atom"))
    ds = build_dataset([dft_runs], calculator_evaluator(EMT()), _settings(settings_hash="s1"))
    assert {f.info["run"] for f in ds.train + ds.val} == {"run_a", "h2"}


def test_the_replay_sampler_keeps_every_dft_item_and_draws_a_fresh_replay_subset_each_epoch():
    from ase import Atoms
    from torch.utils.data import DataLoader

    from gen2d.finetune import replay_sampler, training_items

    dft = [Atoms("H"), Atoms("H")]
    replay = [Atoms("H", info={"config_type": "replay"}) for _ in range(3)]
    assert training_items(dft + replay, repeats=2) == 2 * 2 + 3
    # no cap, or a cap the replay set does not exceed: every item in every epoch, as a shuffled loader does
    assert replay_sampler(4, 30, None) is None and replay_sampler(4, 30, 30) is None

    n_fixed, n_replay, k = 4, 30, 5
    sampler = replay_sampler(n_fixed, n_replay, k, seed=7)
    epochs = [list(sampler) for _ in range(12)]
    for items in epochs:
        assert len(items) == len(sampler) == n_fixed + k
        assert sorted(i for i in items if i < n_fixed) == list(range(n_fixed))  # every DFT item, once
        drawn = [i for i in items if i >= n_fixed]
        assert len(set(drawn)) == k and max(drawn) < n_fixed + n_replay  # k distinct replay items
    assert len({tuple(sorted(e)) for e in epochs}) > 1  # a fresh draw per epoch
    assert len({i for e in epochs for i in e if i >= n_fixed}) > n_replay // 2  # the epochs cover the set
    # reproducible: the same seed gives the same epochs
    again = replay_sampler(n_fixed, n_replay, k, seed=7)
    assert [list(again) for _ in range(12)] == epochs
    # a DataLoader takes it: an epoch is n_fixed + k items
    loader = DataLoader(list(range(n_fixed + n_replay)), batch_size=3, sampler=replay_sampler(n_fixed, n_replay, k))
    assert sum(len(b) for b in loader) == n_fixed + k


@pytest.mark.parametrize("alignment", ["element", "host"])
def test_held_out_frames_do_not_move_the_training_targets(dft_runs, alignment):
    """The energy alignment is fitted on the training frames only: raising the held-out relaxation's DFT energies
    by 1 eV changes no training target and no fitted shift (before, it moved μ_H under element alignment)."""
    from ase.io import read

    settings = _settings(val_systems=["run_b/site_0"], alignment=alignment)
    before = build_dataset([dft_runs], calculator_evaluator(EMT()), settings)
    path = dft_runs / "run_b" / "site_0" / "relax.traj"
    frames = read(str(path), index=":")
    path.unlink()
    for a in frames:
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy() + 1.0, forces=a.get_forces())
        save_frame(a, path)
    after = build_dataset([dft_runs], calculator_evaluator(EMT()), settings)
    assert before.summary["val_groups"] == after.summary["val_groups"] == ["run_b/site_0"]
    targets = [[f.info["target_energy"] for f in ds.train] for ds in (before, after)]
    assert np.allclose(targets[0], targets[1], atol=1e-9)
    assert before.shift.as_dict() == after.shift.as_dict()
    shifted = [a.info["target_energy"] - b.info["target_energy"] for a, b in zip(after.val, before.val, strict=True)]
    assert np.allclose(shifted, 1.0)  # the held-out targets carry their own change, and only they do


def test_a_takeover_s_frames_train_with_their_site_and_the_superseded_solution_is_left_out(dft_runs):
    """A lower spin start took run_a's site over at its last geometry: the takeover's frames join the dataset in
    the site's group, and the site's frame at that geometry (the higher SCF solution) is dropped and counted."""
    from ase.io import read

    last = read(dft_runs / "run_a" / "site_0" / "relax.traj", -1)
    takeover = dft_runs / "run_a" / "site_0" / "lowest_start_H-1"
    takeover.mkdir()
    save_frame(_labelled(last, extra=0.3 - 0.05), takeover / "relax.traj")
    ds = build_dataset([dft_runs], calculator_evaluator(EMT()), _settings(val_systems=["run_b"]))
    assert ds.summary["n_superseded_spin_solution_dropped"] == 1
    site = [f for f in ds.train if f.info["run"].endswith("run_a") and f.info["config_type"] == "slab+H"]
    assert sorted((f.info["system"], f.info["frame"]) for f in site) == [
        ("site_0", 0),
        ("site_0", 1),
        ("site_0/lowest_start_H-1", 0),
    ]
    assert len({frame_group(f) for f in site}) == 1
