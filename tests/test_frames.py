"""DFT frames as a dataset: collected with provenance, de-duplicated, exported as extended XYZ."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from gen2d.frames import collect_frames, export_extxyz, save_frame, write_run_metadata


def _evaluated(atoms: Atoms) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = EMT()
    atoms.get_forces()
    return atoms


def _run(root, name="abc123", with_meta=True):
    """A run folder shaped like dgh.dft's: slab single point, a site relaxation that was resumed, H2."""
    run = root / name
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    (run / "slab").mkdir(parents=True)
    save_frame(_evaluated(slab), run / "slab" / "frame.traj")
    site = slab.copy()
    site.append("H")
    site.positions[-1] = site.positions[4] + [0.0, 0.0, 1.5]
    (run / "site_0").mkdir()
    first = _evaluated(site)
    save_frame(first, run / "site_0" / "relax.traj")
    # the same geometry again: a retried SCF (a ladder rung, the restart of a false convergence) whose energy the
    # run accepted, 32 meV below the first
    retried = first.copy()
    retried.calc = SinglePointCalculator(
        retried, energy=first.get_potential_energy() - 0.032, forces=first.get_forces(apply_constraint=False)
    )
    save_frame(retried, run / "site_0" / "relax.traj")
    moved = site.copy()
    moved.positions[-1, 2] -= 0.1
    save_frame(_evaluated(moved), run / "site_0" / "relax.traj")
    if with_meta:
        write_run_metadata(run, {"formula": "Cu", "content_hash": "c0ffee", "settings_hash": "s1", "calculator": "emt"})
    return run


def test_frames_carry_energy_forces_and_provenance_and_a_resumed_frame_counts_once(tmp_path):
    _run(tmp_path)
    frames, summary = collect_frames([tmp_path])
    assert summary["by_config_type"] == {"slab": 1, "slab+H": 2}
    assert summary["n_frames"] == summary["n_with_forces"] == 3 and summary["by_settings_hash"] == {"s1": 3}
    site = [f for f in frames if f.info["config_type"] == "slab+H"]
    assert site[0].info["frame"] == 1 and site[1].info["frame"] == 2  # frame 1 repeated frame 0: the later stays
    assert site[0].info["energy"] == pytest.approx(_evaluated(site[0]).get_potential_energy() - 0.032)
    ref = _evaluated(site[1])
    assert site[1].info["energy"] == ref.get_potential_energy()
    np.testing.assert_allclose(site[1].arrays["forces"], ref.get_forces(apply_constraint=False))
    assert site[1].info["formula"] == "Cu" and site[1].info["content_hash"] == "c0ffee"


def test_a_sites_vibration_frames_are_read_with_the_site_and_marked(tmp_path):
    from gen2d.adsorption import vibration_energies

    run = _run(tmp_path)
    site = read(run / "site_0" / "relax.traj", -1)
    vibration_energies(site, [len(site) - 1], EMT(), str(run / "site_0" / "vibrations"))
    frames, summary = collect_frames([tmp_path])
    vib = [f for f in frames if f.info["vibration"]]
    assert len(vib) == 6  # H moved by ±0.01 Å along x, y and z; the undisplaced site is relax.traj's
    assert summary["by_config_type"] == {"slab": 1, "slab+H": 2 + 6}
    assert {f.info["source"] for f in vib} == {"site_0/vibrations/frames.traj"}
    assert all(f.info["config_type"] == "slab+H" and f.info["system"] == "site_0" for f in vib)
    assert all("forces" in f.arrays and np.allclose(f.positions[:-1], site.positions[:-1]) for f in vib)
    assert not any(f.info["vibration"] for f in frames if f.info["source"].endswith("relax.traj"))
    # the relaxation's ΔE_H row still ends at the relaxed site, and no displaced frame becomes a replay slab
    from gen2d.finetune import dehydrogenated_slabs, delta_e_h_rows

    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[8.0] * 3, pbc=True)
    h2.info.update(energy=-6.7, config_type="molecule", frame=0, run="h2", system=".", content_hash="h2")
    rows = delta_e_h_rows([*frames, h2], {})
    assert len(rows) == 1 and rows[0]["frame"] == 2
    without_h = [i for i, _ in dehydrogenated_slabs(frames, every=1) if i.startswith("dft-slab-without-H")]
    assert sorted(without_h) == [f"dft-slab-without-H:{frames[1].info['run']}/site_0#{k}" for k in (1, 2)]


def test_export_writes_extxyz_that_reads_back_and_names_folders_without_metadata(tmp_path):
    _run(tmp_path / "dft")
    _run(tmp_path / "dft", name="legacy", with_meta=False)
    summary = export_extxyz([tmp_path / "dft"], tmp_path / "frames.extxyz")
    assert summary["n_frames"] == 3 and summary["n_runs"] == 1
    assert {s["reason"].split(":")[0] for s in summary["skipped"]} == {"no run.json"}
    back = read(tmp_path / "frames.extxyz", index=":")
    assert len(back) == 3
    energies = sorted(a.get_potential_energy() for a in back)
    assert np.all(np.isfinite(energies)) and back[0].get_forces().shape == (len(back[0]), 3)
    assert {a.info["settings_hash"] for a in back} == {"s1"}


def test_export_writes_a_shared_frame_once_and_keeps_one_setting_when_asked(tmp_path):
    """Two runs holding the same frames (a part copied into another run) export each frame once; frames of two DFT
    settings are flagged as mixed, and ``settings_hash`` keeps one."""
    _run(tmp_path / "dft")
    copy = _run(tmp_path / "dft", name="copy")
    summary = export_extxyz([tmp_path / "dft"], tmp_path / "frames.extxyz")
    assert summary["n_frames"] == 3 and summary["n_duplicates_dropped"] == 3 and not summary["mixed_settings"]
    assert len(read(tmp_path / "frames.extxyz", index=":")) == 3
    other = _run(tmp_path / "dft", name="other")
    for f in other.rglob("*.traj"):  # another setting: other energies, so not duplicates
        frames = read(str(f), index=":")
        f.unlink()
        for a in frames:
            a.calc = SinglePointCalculator(a, energy=a.get_potential_energy() + 1.0, forces=a.get_forces())
            save_frame(a, f)
    write_run_metadata(other, {"settings_hash": "s2"})
    mixed = export_extxyz([tmp_path / "dft"], tmp_path / "mixed.extxyz")
    assert mixed["mixed_settings"] and mixed["n_frames"] == 6
    one = export_extxyz([tmp_path / "dft"], tmp_path / "one.extxyz", settings_hash="s2")
    assert one["n_frames"] == 3 and not one["mixed_settings"]
    assert {a.info["settings_hash"] for a in read(tmp_path / "one.extxyz", index=":")} == {"s2"}
    assert copy.is_dir()


def test_metadata_update_keeps_creation_time(tmp_path):
    path = write_run_metadata(tmp_path, {"a": 1})
    created = json.loads(path.read_text())["created"]
    write_run_metadata(tmp_path, {"b": 2})
    doc = json.loads(path.read_text())
    assert doc["created"] == created and doc["a"] == 1 and doc["b"] == 2


def test_cli_frames_export_json(tmp_path):
    from typer.testing import CliRunner

    from gen2d.cli import app

    _run(tmp_path / "dft")
    res = CliRunner().invoke(
        app, ["frames", "export", "--dir", str(tmp_path / "dft"), "--out", str(tmp_path / "f.xyz"), "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["n_frames"] == 3 and doc["path"].endswith("f.xyz")
    bad = CliRunner().invoke(
        app, ["frames", "export", "--dir", str(tmp_path / "nope"), "--out", str(tmp_path / "g.xyz"), "--json"]
    )
    assert bad.exit_code != 0 and "no such DFT folder" in bad.stdout


# A single point written before frame.traj existed: result.json (eV), the CP2K input with the geometry, and
# CP2K's output. The input is what ASE's CP2K calculator writes (Å, cell vectors A/B/C), cut to the parts read.
_INPUT = """&FORCE_EVAL
   METHOD Quickstep
   &DFT
      SURFACE_DIPOLE_CORRECTION T
   &END DFT
   &SUBSYS
      &COORD
         Cu 0.0 0.0 7.5
         Cu 1.28 1.28 7.5
      &END COORD
      &CELL
         PERIODIC XYZ
         A 2.56 0.0 0.0
         B 0.0 2.56 0.0
         C 0.0 0.0 15.0
      &END CELL
   &END SUBSYS
&END FORCE_EVAL
"""


def _legacy_single_point(run, energy_au=-100.0, result_energy=None, n_evaluations=1):
    from ase.units import create_units

    slab = run / "slab"
    slab.mkdir(parents=True)
    (slab / "gen2d.inp").write_text(_INPUT)
    (slab / "gen2d.out").write_text(f" ENERGY| Total FORCE_EVAL ( QS ) energy [a.u.]:   {energy_au:.12f}\n")
    if result_energy is None:
        result_energy = energy_au * create_units("2006")["Hartree"]  # CP2K's own eV
    cost = {"n_evaluations": n_evaluations}
    (slab / "result.json").write_text(json.dumps({"energy": result_energy, "cost": cost}))
    return slab


def test_a_legacy_single_point_comes_back_as_an_energy_only_frame(tmp_path):
    run = tmp_path / "old"
    _legacy_single_point(run)
    write_run_metadata(run, {"formula": "Cu", "content_hash": "c0ffee", "settings_hash": "s1", "calculator": "cp2k"})
    frames, summary = collect_frames([tmp_path])
    assert summary["n_frames"] == 1 and summary["n_energy_only"] == 1 and summary["n_with_forces"] == 0
    [f] = frames
    assert f.get_chemical_symbols() == ["Cu", "Cu"] and tuple(f.pbc) == (True, True, False)
    np.testing.assert_allclose(f.positions[1], [1.28, 1.28, 7.5])
    assert f.info["energy"] == pytest.approx(-2721.138, abs=1e-3) and f.info["energy_only"]
    assert f.info["config_type"] == "slab" and f.info["settings_hash"] == "s1" and "forces" not in f.arrays


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"result_energy": -2720.0}, "is not result.json's"),  # another calculation's output
        ({"n_evaluations": 3}, "holds only the first geometry"),
    ],
)
def test_a_single_point_the_files_do_not_prove_is_skipped_with_its_reason(tmp_path, kwargs, reason):
    run = tmp_path / "old"
    _legacy_single_point(run, **kwargs)
    write_run_metadata(run, {"formula": "Cu", "settings_hash": "s1"})
    frames, summary = collect_frames([tmp_path])
    assert frames == [] and len(summary["skipped"]) == 1 and reason in summary["skipped"][0]["reason"]


def test_a_site_is_paired_with_its_own_slab_and_the_h2_of_its_settings():
    """A 3×3 and a 4×4 cell of one layer share a content hash, and a run with ``relax_slab_reference`` holds
    relaxed-slab frames too: a site's ΔE_H uses the single point of its own run with one atom fewer, and the H₂ of
    its own DFT settings."""
    from gen2d.finetune import delta_e_h_rows

    def frame(symbols, energy, run, system, kind, n=0, settings="s1"):
        a = Atoms(symbols, positions=np.zeros((len(Atoms(symbols)), 3)), cell=[9.0] * 3, pbc=True)
        a.info.update(
            energy=energy,
            config_type=kind,
            run=run,
            system=system,
            frame=n,
            content_hash="g2d-x",
            settings_hash=settings,
        )
        return a

    frames = [
        frame("Cu9", -90.0, "r3", "slab", "slab"),
        frame("Cu9", -95.0, "r3", "slab_site_0-aa", "slab", n=4),  # a relaxed bare slab, not the row's E(slab)
        frame("Cu9H", -93.0, "r3", "site_0-aa", "slab+H", n=3),
        frame("Cu16", -160.0, "r4", "slab", "slab"),
        frame("Cu16H", -163.5, "r4", "site_0-bb", "slab+H", n=2),
        frame("H2", -6.0, "h2-s1-12", ".", "molecule", n=1),
        frame("H2", -7.0, "h2-s2-12", ".", "molecule", n=5, settings="s2"),  # another setting's H2, a later frame
    ]
    rows = {r["group"]: r["dft_eV"] for r in delta_e_h_rows(frames, {})}
    assert rows["r3/site_0-aa"] == pytest.approx(-93.0 + 90.0 + 3.0)
    assert rows["r4/site_0-bb"] == pytest.approx(-163.5 + 160.0 + 3.0)


def test_a_spin_takeover_s_relaxation_is_collected_and_the_higher_solution_at_its_start_is_left_out(tmp_path):
    """A site that a lower spin start took over relaxes on in ``lowest_start_H<m>/``: those frames are the site's
    from there on (one group with it, and the end of its ΔE_H row), and the site's own frame at the takeover
    geometry, the higher SCF solution, is flagged and left out unless asked for."""
    from gen2d.finetune import delta_e_h_rows, frame_group

    run = _run(tmp_path)
    last = read(run / "site_0" / "relax.traj", -1)
    takeover = run / "site_0" / "lowest_start_H+1"
    takeover.mkdir()
    lower = last.copy()
    lower.calc = SinglePointCalculator(
        lower, energy=last.get_potential_energy() - 0.050, forces=last.get_forces(apply_constraint=False)
    )
    save_frame(lower, takeover / "relax.traj")
    on = last.copy()
    on.positions[-1, 2] -= 0.05
    save_frame(_evaluated(on), takeover / "relax.traj")
    _run(tmp_path, name="other")  # another run at the same geometries: its frames are its own
    frames, summary = collect_frames([tmp_path], keep_superseded=True)
    ours = [f for f in frames if f.info["system"] == "site_0/lowest_start_H+1"]
    assert [f.info["frame"] for f in ours] == [0, 1] and all(f.info["config_type"] == "slab+H" for f in ours)
    assert ours[0].info["energy"] == pytest.approx(last.get_potential_energy() - 0.050)
    flagged = [f for f in frames if f.info.get("superseded_spin_solution")]
    assert len(flagged) == 1 and summary["n_superseded_spin_solution"] == 1
    assert flagged[0].info["system"] == "site_0" and flagged[0].info["frame"] == 2
    assert flagged[0].info["run"].endswith("abc123")
    assert flagged[0].info["superseded_spin_solution"] == "site_0/lowest_start_H+1"
    assert frame_group(ours[0]) == frame_group(flagged[0])
    # by default the higher solution is not there at all, and the site's ΔE_H ends at the takeover's last frame
    kept, summary = collect_frames([tmp_path])
    assert len(kept) == len(frames) - 1 and summary["n_superseded_spin_solution"] == 1
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[8.0] * 3, pbc=True)
    h2.info.update(energy=-6.7, config_type="molecule", frame=0, run="h2", system=".", content_hash="h2")
    rows = {r["group"].split("/")[-2]: r for r in delta_e_h_rows([*kept, h2], {})}
    slab = next(f for f in kept if f.info["config_type"] == "slab" and f.info["run"].endswith("abc123"))
    expected = ours[1].info["energy"] - slab.info["energy"] + 3.35
    assert rows["abc123"]["frame"] == 1 and rows["abc123"]["dft_eV"] == pytest.approx(expected)
    assert rows["other"]["frame"] == 2  # the run without a takeover ends at its own last frame


def test_a_failed_takeover_leaves_the_higher_solution_out_too(tmp_path):
    """A fresh spin start found a lower SCF solution at the site's converged geometry, and relaxing on from it
    failed before a frame: the site's energy is that start's single point, so its own last frame (the higher
    solution at the same positions) is flagged and left out, like a takeover that ran."""
    run = _run(tmp_path)
    last = read(run / "site_0" / "relax.traj", -1)
    check = {"relaxed_from_start": "failed: scf_not_converged", "energy_from_start": "+1", "unit": "eV"}
    check["energy_from_start_eV"] = last.get_potential_energy() - 0.2
    doc = {"energy": check["energy_from_start_eV"], "converged": True, "positions": last.positions.tolist()}
    (run / "site_0" / "result.json").write_text(json.dumps({**doc, "spin_starts": check}))
    (run / "site_0" / "lowest_start_H+1").mkdir()  # made before the relaxation failed, with no frame in it
    frames, summary = collect_frames([tmp_path], keep_superseded=True)
    flagged = [f for f in frames if f.info.get("superseded_spin_solution")]
    assert [f.info["frame"] for f in flagged] == [2] and summary["n_superseded_spin_solution"] == 1
    assert flagged[0].info["superseded_spin_solution"] == "site_0/start_H+1"
    kept, _ = collect_frames([tmp_path])
    assert [f.info["frame"] for f in kept if f.info["system"] == "site_0"] == [1]
    # a takeover that ran, or a check that found nothing lower, flags nothing here
    check.update(relaxed_from_start=None)
    (run / "site_0" / "result.json").write_text(json.dumps({**doc, "spin_starts": check}))
    assert collect_frames([tmp_path])[1]["n_superseded_spin_solution"] == 0


def _relaxation(run, shifts):
    """A site relaxation on EMT's surface, H moved from 3 Å above a top Cu 0.05 Å down per step, each frame's energy raised by ``shifts[k]``
    (eV): the same forces on a constant offset, as an SCF that lands in a higher solution and stays there gives."""
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    site = slab.copy()
    site.append("H")
    site.positions[-1] = site.positions[4] + [0.0, 0.0, 3.0]
    for k, shift in enumerate(shifts):
        at = site.copy()
        at.positions[-1, 2] -= 0.05 * k
        ev = _evaluated(at)
        at.calc = SinglePointCalculator(
            at, energy=ev.get_potential_energy() + shift, forces=ev.get_forces(apply_constraint=False)
        )
        save_frame(at, run / "site_0" / "relax.traj")


def test_a_step_that_jumps_to_a_higher_scf_solution_and_the_frames_after_it_are_left_out(tmp_path):
    """H falling onto Cu(111) under EMT goes downhill at every step, and the trapezoid rule on the forces says so.
    From frame 3 on the energies are raised by 0.3 eV with the forces kept: the energy rises while the forces say
    downhill, which one surface cannot do. Frames 3–5 are flagged and left out; frames 0–2 stay."""
    from gen2d.frames import step_energy_mismatch

    run = tmp_path / "jump"
    (run / "site_0").mkdir(parents=True)
    _relaxation(run, [0.0, 0.0, 0.0, 0.3, 0.3, 0.3])
    write_run_metadata(run, {"formula": "Cu", "content_hash": "c0ffee", "settings_hash": "s1", "calculator": "emt"})
    frames, summary = collect_frames([tmp_path], keep_superseded=True)
    steps = sorted(frames, key=lambda f: f.info["frame"])
    for a, b in zip(steps[:2], steps[1:3], strict=True):  # one surface: the forces predict the energy change
        rose, predicted = step_energy_mismatch(a, b)
        assert rose < 0 and predicted < 0 and rose == pytest.approx(predicted, abs=0.01)
    assert [f.info["frame"] for f in steps if f.info.get("scf_jump")] == [3, 4, 5]
    assert summary["n_scf_jump"] == 3 and summary["scf_jumps"][0]["jump"].startswith("frame 3: energy rose")
    kept, summary = collect_frames([tmp_path])
    assert sorted(f.info["frame"] for f in kept) == [0, 1, 2] and summary["n_frames"] == 3


def test_vibrations_after_a_jump_are_left_out_unless_a_spin_start_took_the_site_over(tmp_path):
    """Vibration frames start from the relaxation's last geometry and wavefunction: after an SCF jump they are of
    the higher solution and are left out with the chain. Where a spin start took the site over, they are computed
    from the takeover's solution, and they stay."""
    from gen2d.adsorption import vibration_energies

    run = tmp_path / "jump"
    (run / "site_0").mkdir(parents=True)
    _relaxation(run, [0.0, 0.0, 0.3, 0.3])
    write_run_metadata(run, {"formula": "Cu", "content_hash": "c0ffee", "settings_hash": "s1", "calculator": "emt"})
    last = read(run / "site_0" / "relax.traj", -1)
    vibration_energies(last, [len(last) - 1], EMT(), str(run / "site_0" / "vibrations"))
    frames, _ = collect_frames([tmp_path], keep_superseded=True)
    vib = [f for f in frames if f.info["vibration"]]
    assert len(vib) == 6 and all(f.info.get("scf_jump") for f in vib)
    (run / "site_0" / "result.json").write_text(json.dumps({"spin_starts": {"relaxed_from_start": "+0"}}))
    frames, _ = collect_frames([tmp_path], keep_superseded=True)
    vib = [f for f in frames if f.info["vibration"]]
    assert len(vib) == 6 and not any(f.info.get("scf_jump") for f in vib)
    assert [f.info["frame"] for f in frames if f.info.get("scf_jump")] == [2, 3]


def test_an_uphill_step_the_forces_predict_is_not_a_jump(tmp_path):
    """A step that overshoots goes uphill on the same surface, and the forces at its end say so: H pushed from
    2.0 Å into the repulsive wall of Cu(111) and back out. Nothing is flagged."""
    run = tmp_path / "overshoot"
    (run / "site_0").mkdir(parents=True)
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    for height in (1.6, 0.7, 1.5):  # down the well, far into the wall (up by over 1 eV), back out
        at = slab.copy()
        at.append("H")
        at.positions[-1] = at.positions[4] + [0.0, 0.0, height]
        save_frame(_evaluated(at), run / "site_0" / "relax.traj")
    write_run_metadata(run, {"formula": "Cu", "content_hash": "c0ffee", "settings_hash": "s1", "calculator": "emt"})
    frames, summary = collect_frames([tmp_path], keep_superseded=True)
    energies = [f.info["energy"] for f in sorted(frames, key=lambda f: f.info["frame"])]
    assert energies[1] > energies[0] + 0.02  # the overshoot went uphill
    assert summary["n_scf_jump"] == 0 and not any(f.info.get("scf_jump") for f in frames)
