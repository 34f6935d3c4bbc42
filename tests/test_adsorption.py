"""Explicit-H adsorption: sites on both faces, flags, and physics with the offline default MLIP (CHGNet)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import graphene, mx2
from ase.calculators.emt import EMT
from ase.io import read

from gen2d.adsorption import (
    AdsorptionSettings,
    RefineSettings,
    _flag_site,
    adsorb_h,
    find_adsorption_sites,
    gamma_samples_k,
    h2_reference,
    supercell_repeats,
)
from gen2d.structures import from_ase, orient_2d

torch.set_num_threads(1)


def _slab(atoms: Atoms):
    atoms.pbc = (True, True, False)
    return orient_2d(from_ase(atoms))


def mos2():
    return _slab(mx2("MoS2", kind="2H", a=3.18, thickness=3.13, vacuum=10.0))


def janus_mosse():
    atoms = mx2("MoS2", kind="2H", a=3.25, thickness=3.2, vacuum=10.0)
    symbols = atoms.get_chemical_symbols()
    top = int(np.argmax(atoms.positions[:, 2]))
    symbols[top] = "Se"
    atoms.set_chemical_symbols(symbols)
    return _slab(atoms)


def gra():
    return _slab(graphene(a=2.46, vacuum=10.0))


def hbn():
    return _slab(graphene(formula="BN", a=2.50, vacuum=10.0))


@pytest.fixture(scope="module")
def chgnet():
    from gen2d.relax import cached_calculator

    return cached_calculator("chgnet", device="cpu")


# -- sites, no MLIP ----------------------------------------------------------------------------------


def test_mirror_symmetric_layer_keeps_one_face():
    sites = find_adsorption_sites(mos2())
    assert {s.face for s in sites} == {"top"}  # σh maps the bottom S face onto the top one
    assert {s.kind for s in sites} == {"ontop", "bridge", "hollow"}
    ontop = [s for s in sites if s.kind == "ontop"]
    assert len(ontop) == 1  # one S per face in the cell


def _lateral(slab, a, b) -> float:
    diff = slab.lattice.get_fractional_coords(np.asarray(a) - np.asarray(b))
    diff[:2] -= np.round(diff[:2])
    diff[2] = 0.0
    return float(np.linalg.norm(slab.lattice.get_cartesian_coords(diff)))


def test_a_close_packed_face_keeps_its_two_three_fold_hollows_and_one_bridge():
    slab = mos2()
    kinds = [s.kind for s in find_adsorption_sites(slab)]
    assert kinds.count("hollow") == 2 and kinds.count("bridge") == 1  # over Mo and over the empty S3 hollow


@pytest.mark.parametrize("make, n_ontop", [(gra, 1), (hbn, 2)])
def test_a_honeycomb_offers_its_hexagon_centre_as_hollow_and_only_bonds_as_bridges(make, n_ontop):
    """Delaunay cuts each hexagon into triangles; pymatgen's finder calls their diagonals bridges (one at the
    hexagon centre) and offers no hollow. The textbook sites are top, bridge and hollow."""
    slab = make()
    sites = find_adsorption_sites(slab)
    by_kind = {k: [s for s in sites if s.kind == k] for k in ("ontop", "bridge", "hollow")}
    assert len(by_kind["ontop"]) == n_ontop and len(by_kind["bridge"]) == 1 and len(by_kind["hollow"]) == 1
    bond = 2.46 / np.sqrt(3) if make is gra else 2.50 / np.sqrt(3)
    atoms = slab.cart_coords
    hollow = by_kind["hollow"][0].position
    assert sorted(_lateral(slab, hollow, a) for a in atoms) == pytest.approx([bond] * 2, abs=0.01)
    bridge = by_kind["bridge"][0].position
    assert sorted(_lateral(slab, bridge, a) for a in atoms) == pytest.approx([bond / 2, bond / 2], abs=0.01)
    assert hollow[2] == pytest.approx(atoms[:, 2].max() + AdsorptionSettings().initial_height, abs=1e-6)


def test_a_square_net_offers_its_four_fold_hollow():
    """Each triangle of a square is right-angled, which pymatgen's finder takes for obtuse: no hollow."""
    atoms = Atoms("Cu", positions=[[0.0, 0.0, 10.0]], cell=[2.6, 2.6, 20.0])
    slab = _slab(atoms)
    hollows = [s for s in find_adsorption_sites(slab) if s.kind == "hollow"]
    assert len(hollows) == 1
    assert _lateral(slab, hollows[0].position, slab.cart_coords[0]) == pytest.approx(2.6 / np.sqrt(2), abs=0.01)


def test_janus_layer_keeps_both_faces():
    slab = janus_mosse()
    sites = find_adsorption_sites(slab)
    faces = {s.face for s in sites}
    assert faces == {"top", "bottom"}
    z_mid = slab.cart_coords[:, 2].mean()
    for s in sites:
        assert (s.position[2] > z_mid) == (s.face == "top")


def test_supercell_repeats_and_lengths():
    assert supercell_repeats(mos2().lattice, 6.0) == (2, 2)
    assert supercell_repeats(gra().lattice, 6.0) == (3, 3)
    assert supercell_repeats(gra().lattice, 10.0) == (5, 5)


def _h_on(slab_atoms: Atoms, position) -> Atoms:
    atoms = slab_atoms.copy() + Atoms("H", positions=[position])
    atoms.pbc = (True, True, False)
    return atoms


def test_flags_name_what_the_h_did():
    from gen2d.structures import to_ase

    base = to_ase(gra()).repeat((3, 3, 1))
    settings = AdsorptionSettings()
    top_c = base.positions[0] + [0, 0, 1.1]
    start = _h_on(base, top_c)
    h = len(start) - 1
    n_comp = 1

    stayed = start.copy()
    assert _flag_site(start, stayed, h, n_comp, settings)[0] == []

    desorbed = start.copy()
    desorbed.positions[h, 2] += 4.0
    assert "h_desorbed" in _flag_site(start, desorbed, h, n_comp, settings)[0]

    moved = start.copy()
    moved.positions[h, :2] += [1.23, 0.71]  # over the neighbouring C
    assert _flag_site(start, moved, h, n_comp, settings)[0] == ["h_moved_site"]

    broken = start.copy()
    broken.positions[5, 2] += 3.0  # a C atom pulled out of the sheet
    flags = _flag_site(start, broken, h, n_comp, settings)[0]
    assert "layer_broke" in flags and "layer_reconstructed" in flags

    with_h2 = _h_on(start, top_c + [0, 0, 0.74])
    assert "h2_formed" in _flag_site(with_h2, with_h2, h, n_comp, settings)[0]


# -- physics with CHGNet ----------------------------------------------------------------------------


def test_h2_bond_length(chgnet):
    energy, bond = h2_reference(chgnet)
    assert bond == pytest.approx(0.74, abs=0.03)
    assert np.isfinite(energy) and energy < 0


def test_h_on_top_of_s_in_mos2(chgnet):
    result = adsorb_h(mos2(), chgnet, AdsorptionSettings(site_kinds=("ontop",)))
    assert result.supercell == (2, 2)
    (site,) = result.sites
    assert site.nearest_atom == "S"
    assert site.nearest_distance == pytest.approx(1.36, abs=0.08)
    assert site.coverage == pytest.approx(0.25)
    assert site.valid and site.delta_g_h > 0.3
    assert site.delta_g_h == pytest.approx(site.delta_e_h + 0.27)


def test_inert_basal_planes_have_positive_dg_h_and_bad_input_fails_alone():
    from pymatgen.core import Lattice, Structure

    from gen2d.scoring import get_scorer

    # H binds on top of an atom on these basal planes (the literature site); other sites only cost time
    scorer = get_scorer("dgh.mlip", calculator="chgnet", device="cpu", site_kinds=["ontop"])
    bulk = Structure(Lattice.cubic(3.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    results = scorer.score([gra(), bulk, hbn(), mos2()])
    assert len(results) == 4
    assert not results[1].ok and results[1].failure.reason and results[1].value is None
    for name, res in zip(("graphene", "h-BN", "2H-MoS2"), (results[0], results[2], results[3])):
        assert res.ok, (name, res.failure)
        assert res.unit == "eV"
        assert res.value > 0.3, (name, res.value)
        assert res.provenance.model.startswith("CHGNet")
        assert res.provenance.checkpoint_sha256
        assert res.provenance.settings["dg_correction"] == 0.27
        best = res.extra["best_site"]
        assert best["valid"] and best["delta_g_h"] == pytest.approx(res.value)
        assert all(abs(s["delta_g_h"]) >= abs(res.value) - 1e-9 for s in res.extra["sites"] if s["valid"])


def test_a_killed_constrained_relaxation_resumes_on_the_same_path(tmp_path):
    """Stopped after 3 BFGS steps and resumed, the relaxation takes the steps an uninterrupted one takes:
    the Hessian is kept beside the frames, not rebuilt from a unit matrix."""
    from ase.build import fcc111
    from ase.calculators.emt import EMT

    from gen2d.adsorption import _constrained_bfgs

    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    slab.append("H")
    slab.positions[-1] = slab.positions[4] + [0.6, 0.3, 1.2]  # off the site, to take several steps
    free = [len(slab) - 1, 4]

    straight, e_straight, conv_straight, n_straight = _constrained_bfgs(
        slab.copy(), EMT(), free, 0.01, 100, str(tmp_path / "straight.traj")
    )
    traj = str(tmp_path / "killed.traj")
    _, _, conv_first, n_first = _constrained_bfgs(slab.copy(), EMT(), free, 0.01, 3, traj)
    assert not conv_first and n_first == 3
    resumed, e_resumed, conv_resumed, n_resumed = _constrained_bfgs(slab.copy(), EMT(), free, 0.01, 100, traj)
    assert conv_straight and conv_resumed and n_straight > 4
    np.testing.assert_allclose(resumed.positions, straight.positions, atol=1e-6)
    assert e_resumed == pytest.approx(e_straight, abs=1e-8)
    assert n_resumed == n_straight  # the 3 steps behind the 4 stored frames (the start is not a step) and the rest


class _CountingEMT(EMT):
    """EMT that counts its evaluations (a stand-in for an expensive DFT calculator's cost)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.n_calls = 0

    def calculate(self, *args, **kwargs):
        self.n_calls += 1
        super().calculate(*args, **kwargs)


def test_a_resumed_relaxation_does_not_evaluate_its_last_stored_frame_again(tmp_path):
    """The frame a killed run left last carries its energy and forces: the resumed run steps from them, so it
    makes exactly the evaluations the killed run had left (none repeated) and writes no frame twice."""
    from ase.build import fcc111
    from ase.io import read

    from gen2d.adsorption import _constrained_bfgs

    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    slab.append("H")
    slab.positions[-1] = slab.positions[4] + [0.6, 0.3, 1.2]
    free = [len(slab) - 1, 4]

    whole = _CountingEMT()
    straight, e_straight, conv, _ = _constrained_bfgs(slab.copy(), whole, free, 0.01, 100, str(tmp_path / "s.traj"))
    traj = str(tmp_path / "k.traj")
    first, second = _CountingEMT(), _CountingEMT()
    _constrained_bfgs(slab.copy(), first, free, 0.01, 3, traj)
    resumed, e_resumed, conv_resumed, _ = _constrained_bfgs(slab.copy(), second, free, 0.01, 100, traj)
    assert conv and conv_resumed and first.n_calls == 4  # the start and 3 steps
    assert first.n_calls + second.n_calls == whole.n_calls
    np.testing.assert_allclose(resumed.positions, straight.positions, atol=1e-6)
    assert e_resumed == pytest.approx(e_straight, abs=1e-8)
    kept, reference = read(traj, ":"), read(str(tmp_path / "s.traj"), ":")
    assert len(kept) == len(reference)  # no frame written twice
    assert {a.calc.name for a in kept} == {"_countingemt"}  # their calculator, not the resume wrapper
    np.testing.assert_allclose(
        [a.get_potential_energy() for a in kept], [a.get_potential_energy() for a in reference], atol=1e-8
    )


def test_a_stored_frame_without_forces_is_evaluated_again(tmp_path):
    """A last frame that lost its forces (written by an energy-only step, or damaged) is not trusted: the resumed
    run evaluates it."""
    from ase.build import fcc111
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import Trajectory

    from gen2d.adsorption import _constrained_bfgs

    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    slab.append("H")
    slab.positions[-1] = slab.positions[4] + [0.0, 0.0, 1.5]
    frame = slab.copy()
    frame.calc = SinglePointCalculator(frame, energy=1.0)
    with Trajectory(str(tmp_path / "e.traj"), "w") as tr:
        tr.write(frame)
    calc = _CountingEMT()
    _, energy, _, _ = _constrained_bfgs(slab.copy(), calc, [len(slab) - 1], 0.05, 1, str(tmp_path / "e.traj"))
    assert calc.n_calls >= 1 and energy != pytest.approx(1.0)


def test_a_start_on_a_symmetric_bridge_rolls_off_it_only_with_the_jitter():
    """H started exactly on a Cu(111) bridge (a saddle between the hollows) stays there under BFGS, since the
    in-plane forces vanish by symmetry; the refinement's jittered start reaches a hollow, lower in energy."""
    from ase.build import fcc111
    from ase.calculators.emt import EMT

    from gen2d.adsorption import RefineSettings, _constrained_bfgs, jitter_offset

    slab = fcc111("Cu", size=(3, 3, 3), vacuum=6.0)
    top = np.nonzero(slab.positions[:, 2] > slab.positions[:, 2].max() - 0.1)[0]
    bridge = (slab.positions[top[0]] + slab.positions[top[1]]) / 2 + [0.0, 0.0, 1.0]
    out = {}
    for jitter in (0.0, RefineSettings().h_jitter):
        start = slab.copy()
        start.append("H")
        start.positions[-1] = bridge + jitter_offset(0, jitter)
        final, energy, converged, _ = _constrained_bfgs(start, EMT(), [len(start) - 1], 0.01, 200, None)
        assert converged
        out[jitter] = (np.linalg.norm((final.positions[-1] - bridge)[:2]), energy)
    (stay, e_stay), (moved, e_moved) = out[0.0], out[RefineSettings().h_jitter]
    assert stay < 1e-3 and moved > 0.5  # bridge-to-hollow distance on Cu(111) is 0.74 Å
    assert e_moved < e_stay - 0.005
    assert "h_jitter" not in RefineSettings(h_jitter=0.0).as_dict()  # runs keyed before it keep their key


def test_a_refined_site_is_cached_under_its_own_start():
    """The cache directory of a refined site names its start, so a rerun that picks another site first
    (other site kinds, another cheap stage) never reads the first one's relaxation as its own."""
    from gen2d.adsorption import site_tag

    s_top = {"face": "top", "kind": "ontop"}
    bridge = {"face": "top", "kind": "bridge"}
    here = np.array([1.0, 2.0, 12.0])
    assert site_tag(s_top, here) == site_tag(s_top, here + 0.001)  # the same start, to 0.01 Å
    assert site_tag(s_top, here) != site_tag(s_top, here + [0.6, 0.0, 0.0])
    assert site_tag(s_top, here) != site_tag(bridge, here)
    assert site_tag({"face": "bottom", "kind": "ontop"}, here) != site_tag(s_top, here)


def test_the_mlip_hessian_is_the_curvature_and_speeds_up_bfgs():
    """The finite-difference Hessian of H on Cu(111) (EMT) has the H stretch curvature that the energy's second
    derivative gives, is positive definite, and as BFGS's initial Hessian reaches the same minimum in fewer steps."""
    from ase.build import fcc111
    from ase.calculators.emt import EMT

    from gen2d.adsorption import _constrained_bfgs, mlip_hessian

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    top = int(np.argmax(slab.positions[:, 2]))
    slab.append("H")
    slab.positions[-1] = slab.positions[top] + [0.0, 0.0, 1.6]
    free = [top, len(slab) - 1]
    minimum, e_min, conv, _ = _constrained_bfgs(slab, EMT(), free, 0.001, 300, None)
    assert conv
    hess = mlip_hessian(minimum, EMT(), free, min_curvature=0.1)
    np.testing.assert_allclose(hess, hess.T, atol=1e-12)
    assert np.linalg.eigvalsh(hess).min() >= 0.1 - 1e-9
    assert hess[0, 0] == 70.0 and not hess[0, 3 * free[1] :].any()  # a fixed atom: BFGS's default, uncoupled
    # the H stretch along z: the energy's second derivative at the minimum, by the same calculator
    probe, h, dz = minimum.copy(), 0.01, 3 * free[1] + 2
    probe.calc = EMT()
    energies = []
    for step in (h, -h):
        probe.positions = minimum.positions.copy()
        probe.positions[-1, 2] += step
        energies.append(probe.get_potential_energy())
    curvature = (energies[0] + energies[1] - 2 * e_min) / h**2
    assert curvature > 1.0 and hess[dz, dz] == pytest.approx(curvature, rel=0.05)
    # from a displaced start, with the Hessian of that start: the same minimum in fewer steps
    start = minimum.copy()
    start.positions[-1] += [0.15, -0.1, 0.25]
    start.positions[top] += [0.0, 0.0, -0.1]
    _, e_plain, c_plain, n_plain = _constrained_bfgs(start, EMT(), free, 0.01, 300, None)
    _, e_hess, c_hess, n_hess = _constrained_bfgs(
        start, EMT(), free, 0.01, 300, None, hessian=mlip_hessian(start, EMT(), free)
    )
    assert c_plain and c_hess and e_hess == pytest.approx(e_plain, abs=2e-3)
    assert n_hess < n_plain


def test_a_prerelaxed_refinement_reaches_the_same_energy_in_fewer_expensive_steps(tmp_path):
    """refine_adsorption with a preparing calculator (here the same EMT as the 'expensive' one): the expensive BFGS
    starts at the cheap minimum with its Hessian, the site has its own cache directory, the energy is unchanged."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import RefineSettings, refine_adsorption

    slab, _, sites = _cu111_top_site(2.3)
    h2 = (EMT().get_potential_energy(_h2()), 0.74)
    out = {}
    for pre in (None, "emt"):
        refine = RefineSettings(
            n_sites=1,
            min_inplane_length=5.0,
            vacuum=None,
            h_jitter=0.0,
            prerelax=pre,
            fmax=0.02,
            relax_slab_reference=True,
            free_radius=4.0,
            scf_jump_check=pre is not None,  # the guard changes nothing where no SCF jumps
        )
        res = refine_adsorption(
            slab,
            sites,
            lambda d: EMT(),
            str(tmp_path / str(pre)),
            refine=refine,
            h2=h2,
            prerelax_calculator=EMT if pre else None,
        )
        out[pre] = res.sites[0]
    plain, pre = out[None], out["emt"]
    assert plain.converged and pre.converged
    assert pre.energy == pytest.approx(plain.energy, abs=5e-3)
    assert pre.steps < plain.steps and pre.run_dir.endswith("-pre-emt")
    # E(slab) is relaxed here too: no frozen-slab relaxation is counted as binding, and none is reported
    assert plain.slab_free_force is None and pre.slab_free_force is None
    doc = json.loads((Path(pre.run_dir) / "result.json").read_text())
    assert doc["prerelax"]["calculator"] == "emt" and doc["prerelax"]["max_displacement_A"] > 0.1
    # the relaxed slab reference is prepared the same way, in its own directory
    ref = json.loads((Path(pre.run_dir).parent / f"slab_{Path(pre.run_dir).name}" / "result.json").read_text())
    assert ref["prerelax"]["calculator"] == "emt" and ref["converged"]
    assert "prerelax" not in RefineSettings().as_dict()  # runs keyed before the option keep their key


def test_a_run_killed_before_its_first_frame_is_prepared_again_not_started_raw(tmp_path):
    """A kill during the first expensive evaluation leaves an empty relax.traj. The rerun has no frame to resume
    from, so it prepares the start with the cheap calculator as a fresh run does, instead of starting the
    expensive BFGS from the unprepared H (on 1T-MoS₂ that start had S–H 1.15 Å and a DFT force of 10 eV/Å)."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import RefineSettings, refine_adsorption

    slab, _, sites = _cu111_top_site(2.3)
    h2 = (EMT().get_potential_energy(_h2()), 0.74)
    refine = RefineSettings(n_sites=1, min_inplane_length=5.0, vacuum=None, h_jitter=0.0, prerelax="emt", fmax=0.02)

    def run():
        return refine_adsorption(
            slab, sites, lambda d: EMT(), str(tmp_path), refine=refine, h2=h2, prerelax_calculator=EMT
        ).sites[0]

    fresh = run()
    site_dir = Path(fresh.run_dir)
    first = json.loads((site_dir / "result.json").read_text())
    (site_dir / "result.json").unlink()
    (site_dir / "relax.traj.bfgs.json").unlink(missing_ok=True)
    (site_dir / "relax.traj").write_bytes(b"")  # killed in the first evaluation
    again = run()
    doc = json.loads((site_dir / "result.json").read_text())
    assert doc["prerelax"] == first["prerelax"] and doc["steps"] == first["steps"]
    assert again.energy == pytest.approx(fresh.energy, abs=1e-9)
    # a run resumed from its frames still records what prepared its start
    (site_dir / "result.json").unlink()
    run()
    assert json.loads((site_dir / "result.json").read_text())["prerelax"] == first["prerelax"]


def test_a_cached_scf_failure_from_before_the_retry_ladder_is_computed_again(tmp_path):
    """A site whose SCF failed before calculators retried a stalled SCF, or before the ladder's annealing rung, is
    run again; a failure made under the current rules stands as the site's named failure."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import FAILURE_RULES, RefineSettings, refine_adsorption

    slab, _, sites = _cu111_top_site(2.3)
    refine = RefineSettings(n_sites=1, min_inplane_length=5.0, vacuum=None, h_jitter=0.0, fmax=0.05)
    h2 = (EMT().get_potential_energy(_h2()), 0.74)

    def run():
        return refine_adsorption(slab, sites, lambda d: EMT(), str(tmp_path), refine=refine, h2=h2).sites[0]

    first = run()
    assert first.converged and first.energy is not None
    result = Path(first.run_dir) / "result.json"
    old = {"energy": None, "failure": "scf_not_converged", "message": "CP2K SCF not converged", "steps": 0}
    result.write_text(json.dumps(old))
    again = run()
    assert again.energy == pytest.approx(first.energy, abs=1e-6) and "scf_not_converged" not in again.flags
    assert json.loads(result.read_text())["energy"] == pytest.approx(first.energy, abs=1e-6)
    # a failure on the ladder before its annealing rung (rules 2) is run again too
    result.write_text(json.dumps(old | {"cost": {"scf_level": 1, "n_evaluations": 2}, "failure_rules": 2}))
    assert run().energy == pytest.approx(first.energy, abs=1e-6)
    # a false convergence at the top of the ladder, from before such an SCF was restarted once (rules 3), runs again
    false = "CP2K SCF met eps_scf 1e-05 at step 47, but its energy still changed by -2.3e-04 Ha at that step"
    false_doc = old | {"message": f"{false}: a false convergence", "cost": {"scf_level": 2}, "failure_rules": 3}
    result.write_text(json.dumps(false_doc))
    assert run().energy == pytest.approx(first.energy, abs=1e-6)
    # the top of the ladder before its rung that converges a slab without the dipole correction (rules 6) runs again
    result.write_text(json.dumps(old | {"cost": {"scf_level": 2, "n_evaluations": 4}, "failure_rules": 6}))
    assert run().energy == pytest.approx(first.energy, abs=1e-6)
    # the ladder of the current rules was climbed to its top and still failed: the failure is the answer
    result.write_text(json.dumps(false_doc | {"failure_rules": FAILURE_RULES}))
    assert run().energy is None
    current = old | {"cost": {"scf_level": 2, "n_evaluations": 4}, "failure_rules": FAILURE_RULES}
    result.write_text(json.dumps(current))
    final = run()
    assert final.energy is None and "scf_not_converged" in final.flags


def test_a_crash_is_never_cached_as_a_sites_failure_and_one_cached_before_runs_again(tmp_path):
    """A calculator that dies (the pipe to cp2k_shell breaks) gives no result: the refinement raises, nothing is
    cached, and the next run computes the site. A crash cached as the site's failure under older rules runs again."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import FAILURE_RULES, RefineSettings, refine_adsorption

    slab, _, sites = _cu111_top_site(2.3)
    refine = RefineSettings(n_sites=1, min_inplane_length=5.0, vacuum=None, h_jitter=0.0, fmax=0.05)
    h2 = (EMT().get_potential_energy(_h2()), 0.74)

    class DiesOnH(EMT):  # the bare slab's single point works, the site's first evaluation dies
        def calculate(self, atoms=None, properties=("energy",), system_changes=None):
            if atoms is not None and "H" in atoms.get_chemical_symbols():
                raise BrokenPipeError("[Errno 32] Broken pipe: cp2k_shell died")
            super().calculate(atoms, properties, system_changes or [])

    def run(calc):
        return refine_adsorption(slab, sites, lambda d: calc(), str(tmp_path), refine=refine, h2=h2).sites[0]

    with pytest.raises(BrokenPipeError):
        run(DiesOnH)
    assert not list(tmp_path.rglob("site_*/result.json"))  # the slab is cached, the crash is not
    first = run(EMT)
    assert first.converged and first.energy is not None
    assert first.start_delta_g_h == 0.3 and first.as_dict()["start_delta_g_h"] == 0.3  # the MLIP site's own value
    result = Path(first.run_dir) / "result.json"
    crash = {"energy": None, "failure": "calculator_error", "message": "Broken pipe", "steps": 0, "failure_rules": 5}
    result.write_text(json.dumps(crash))
    assert run(EMT).energy == pytest.approx(first.energy, abs=1e-6)
    assert FAILURE_RULES >= 6


def test_a_resumed_relaxation_takes_only_the_steps_its_budget_has_left(tmp_path):
    """n BFGS steps leave n + 1 frames (the start is frame 0): a relaxation stopped after 3 of its 6 steps
    takes 3 more, not 2, and reports 6."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import _constrained_bfgs
    from gen2d.structures import to_ase

    slab, top, _ = _cu111_top_site(2.3)
    atoms = to_ase(slab)
    atoms.append("H")
    atoms.positions[-1] = top + [0.4, 0.2, 2.3]  # off the top site: far from converged in 6 steps
    free = [len(atoms) - 1]
    traj = str(tmp_path / "relax.traj")
    _, _, converged, n = _constrained_bfgs(atoms, EMT(), free, 1e-6, 3, traj)
    assert not converged and n == 3 and len(read(traj, index=":")) == 4
    _, _, converged, n = _constrained_bfgs(atoms, EMT(), free, 1e-6, 6, traj)
    assert not converged and n == 6 and len(read(traj, index=":")) == 7


def test_a_held_site_keeps_h_over_it_in_the_plane_and_relaxes_only_its_height(tmp_path):
    """EMT's Cu(111) top site is not a minimum for H: started 0.3 Å off it, a free H rolls to a hollow. Held, H
    stays exactly over the top atom (no jitter), finds its height, and its energy is the higher one of that site."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import RefineSettings, refine_adsorption

    slab, top, sites = _cu111_top_site(1.6)
    h2 = (EMT().get_potential_energy(_h2()), 0.74)
    out = {}
    for hold in (False, True):
        refine = RefineSettings(
            n_sites=1, min_inplane_length=5.0, vacuum=None, fmax=0.02, steps=200, h_jitter=0.3, hold_site=hold
        )
        res = refine_adsorption(slab, sites, lambda d: EMT(), str(tmp_path / str(hold)), refine=refine, h2=h2)
        out[hold] = res.sites[0]
    free, held = out[False], out[True]
    assert free.converged and held.converged
    assert np.allclose(held.initial_position[:2], top[:2], atol=1e-9)  # no jitter on a held site
    assert np.allclose(held.final_position[:2], held.initial_position[:2], atol=1e-9)
    assert held.final_position[2] - held.initial_position[2] > 0.1  # its height relaxed
    assert np.linalg.norm(np.subtract(free.final_position[:2], top[:2])) > 0.5  # the free H left the top
    assert "h_moved_site_in_refinement" in free.flags and "h_moved_site_in_refinement" not in held.flags
    assert held.energy > free.energy + 0.02  # the top site costs energy against where H goes
    assert held.run_dir.endswith("-held") and held.nearest_atom == "Cu"
    assert "hold_site" not in RefineSettings().as_dict()  # runs keyed before the option keep their key


def test_a_sites_vibrations_are_cached_for_its_geometry_and_a_failed_h2_leaves_the_site_its_value(tmp_path):
    """EMT's H on Cu(111): a free H rolls from the top site to a threefold hollow, where its two in-plane modes are
    degenerate and lie below the perpendicular one. (EMT's numbers are not physical for H: H₂ near 7000 cm⁻¹.)"""
    from ase.calculators.emt import EMT
    from ase.io import read

    from gen2d.adsorption import AdsorptionSettings, RefineSettings, refine_adsorption

    slab, _, sites = _cu111_top_site(1.6)
    refine = RefineSettings(
        n_sites=1, min_inplane_length=5.0, vacuum=None, fmax=0.005, steps=300, h_jitter=0.3, vibrations=True
    )
    calls: list[str] = []

    class Counting(EMT):
        def calculate(self, *args, **kwargs):
            calls.append(self.directory)
            super().calculate(*args, **kwargs)

    def make(d):
        calc = Counting()
        calc.directory = d
        return calc

    res = refine_adsorption(slab, sites, make, str(tmp_path / "run"), refine=refine)
    site = res.sites[0]
    v = site.vibrations
    assert site.converged and site.valid and not v["saddle"]
    in_plane, normal = sorted(v["h_frequencies_cm1"])[:2], max(v["h_frequencies_cm1"])
    assert abs(in_plane[1] - in_plane[0]) < 0.03 * in_plane[1] and normal > in_plane[1]
    assert v["h2_frequency_cm1"] > normal
    assert site.delta_g_h == pytest.approx(site.delta_e_h + AdsorptionSettings().dg_correction)
    assert sum(Path(c).name == "vibrations" for c in calls) == 7 + 13  # the site's (one atom) and H₂'s (two)
    # a rerun computes nothing
    calls.clear()
    again = refine_adsorption(slab, sites, make, str(tmp_path / "run"), refine=refine).sites[0]
    assert calls == [] and again.vibrations == v
    # the site relaxed on (as after a spin start took over): its vibrations belong to another geometry, and run again
    result = Path(site.run_dir) / "result.json"
    doc = json.loads(result.read_text())
    doc["positions"][-1][2] += 0.05
    result.write_text(json.dumps(doc))
    frames = Path(site.run_dir) / "vibrations" / "frames.traj"
    assert len(read(frames, ":")) == 6
    moved = refine_adsorption(slab, sites, make, str(tmp_path / "run"), refine=refine).sites[0]
    assert len(calls) == 7 and moved.vibrations["h_frequencies_cm1"] != v["h_frequencies_cm1"]
    # the old geometry's displaced frames are kept aside (DFT data, maybe of another SCF solution), not mixed in
    assert len(read(frames, ":")) == 6
    (kept,) = frames.parent.glob("frames-*.traj")
    old, new = read(kept, ":"), read(frames, ":")
    assert len(old) == 6 and len({tuple(np.round(f.positions[-1], 6)) for f in old + new}) == 12

    # H₂'s vibrations fail (a named SCF failure): cached as such; the site keeps its ΔG_H and says why it has none
    class ScfNotConverged(RuntimeError):
        pass

    class Failing(Counting):
        def calculate(self, *args, **kwargs):
            raise ScfNotConverged("SCF not converged in 250 steps")

    def make_failing_h2(d):
        return Failing() if Path(d).parent.name == "h2" and Path(d).name == "vibrations" else make(d)

    failed = refine_adsorption(slab, sites, make_failing_h2, str(tmp_path / "other"), refine=refine).sites[0]
    assert failed.valid and failed.delta_g_h == pytest.approx(site.delta_g_h, abs=1e-6)
    assert failed.vibrations["failure"] == "scf_not_converged"
    stored = json.loads((tmp_path / "other" / "h2" / "vibrations" / "result.json").read_text())
    assert stored["failure"] == "scf_not_converged" and stored["energy"] is None


def _h2():
    return Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[10.0] * 3, pbc=True)


def test_a_site_records_the_force_on_the_bare_slabs_free_atoms_where_e_slab_is_computed(tmp_path):
    """E(slab) is a single point of the slab the refinement starts from; relaxing the free atoms with H then counts
    their own relaxation as binding. ASE's Cu(111) at the bulk lattice constant is not at EMT's surface minimum:
    the site records EMT's largest force on the free slab atoms there, as EMT computes it."""
    from ase.calculators.emt import EMT
    from ase.io import read

    from gen2d.adsorption import RefineSettings, refine_adsorption

    slab, _, sites = _cu111_top_site(1.6)
    refine = RefineSettings(n_sites=1, min_inplane_length=5.0, vacuum=None, fmax=0.05, steps=100, h_jitter=0.0)
    site = refine_adsorption(slab, sites, lambda d: EMT(), str(tmp_path), refine=refine, h2=(0.0, 0.74)).sites[0]
    start = read(Path(site.run_dir) / "relax.traj", 0)
    fixed = {i for c in start.constraints for i in c.get_indices()}
    free = [i for i in range(len(start) - 1) if i not in fixed]
    bare = read(tmp_path / "slab" / "frame.traj", -1)
    assert free and np.allclose(bare.positions, start.positions[:-1])
    bare.calc = EMT()
    expected = np.max(np.linalg.norm(bare.get_forces()[free], axis=1))
    assert expected > 0.01 and site.slab_free_force == pytest.approx(expected, rel=1e-9)
    assert site.as_dict()["slab_free_force"] == site.slab_free_force


def _cu111_top_site(height: float):
    """(slab, top atom's position, the cheap recipe's site record): a 1×1×3 Cu(111) slab, periodic in-plane, with
    H ``height`` Å above its top atom, for refine_adsorption on EMT."""
    from ase.build import fcc111

    from gen2d.structures import from_ase

    cell = fcc111("Cu", size=(1, 1, 3), vacuum=7.0)
    cell.pbc = (True, True, False)
    top = cell.positions[np.argmax(cell.positions[:, 2])]
    sites = [{"face": "top", "kind": "ontop", "final_position": list(top + [0, 0, height]), "delta_g_h": 0.3}]
    return from_ase(cell), top, sites


# -- the computed ΔG_H correction ---------------------------------------------------------------------


def _modes(*cm1):
    from ase import units

    return [complex(x * units.invcm) if x >= 0 else complex(0, -x * units.invcm) for x in cm1]


def test_h2_entropy_and_noerskovs_correction_come_out_of_the_vibrations():
    from ase import units

    from gen2d.adsorption import vibrational_dg_correction

    h2 = _modes(0, 0, 0, 10, 10, 4401)  # ASE's six modes of H₂: translations, rotations, the stretch
    # H* modes whose ZPE is ½ZPE(H₂) + 0.04 eV: Nørskov's ΔZPE (three modes of 950 cm⁻¹, little entropy)
    stiff = 2 * (0.5 * 4401 * units.invcm / 2 + 0.04) / units.invcm / 3
    out = vibrational_dg_correction(_modes(stiff, stiff, stiff), h2, 0.741)
    # H₂ at 298.15 K and 1 bar: S° = 130.68 J/(mol K) (NIST-JANAF), so TS = 0.404 eV; ASE's classical rigid rotor
    # (H₂'s rotational temperature, 88 K, is not far below 298 K) is 0.35 J/(mol K) low: 1 meV in TS
    s_h2 = out["ts_h2_eV"] / out["temperature_K"] / units.J * units.mol
    assert abs(s_h2 - 130.68) < 0.5
    assert abs(out["zpe_h2_eV"] - 0.2728) < 1e-3 and abs(out["h2_frequency_cm1"] - 4401) < 1e-6
    # ΔZPE − TΔS = 0.04 + ½·0.404 − T·S(H*) ≈ 0.24 eV (Nørskov et al., J. Electrochem. Soc. 152, J23 (2005), who
    # neglect S(H*))
    assert out["ts_h_eV"] < 0.01 and abs(out["dg_correction_eV"] + out["ts_h_eV"] - 0.24) < 0.005
    # an S–H bond (stretch ~2550 cm⁻¹) holds more zero-point energy than a metal–H one: a larger correction
    metal = vibrational_dg_correction(_modes(1200, 800, 800), h2, 0.741)["dg_correction_eV"]
    sulfur = vibrational_dg_correction(_modes(2550, 700, 700), h2, 0.741)["dg_correction_eV"]
    assert 0.20 < metal < sulfur < 0.35
    # softer modes carry vibrational entropy, which lowers the correction
    soft = vibrational_dg_correction(_modes(1200, 150, 150), h2, 0.741)
    assert soft["ts_h_eV"] > 0.02
    # an imaginary mode: a saddle, listed and left out
    saddle = vibrational_dg_correction(_modes(2550, 700, -300), h2, 0.741)
    assert saddle["saddle"] and saddle["imaginary_modes_cm1"] == pytest.approx([300.0])
    assert saddle["h_frequencies_cm1"] == pytest.approx([2550, 700, -300])
    # a mode softer than the floor counts as the floor in the entropy (a harmonic entropy diverges), not in ZPE
    soft = [vibrational_dg_correction(_modes(1200, 400, x), h2, 0.741) for x in (5, 30, 100)]
    assert soft[0]["ts_h_eV"] == pytest.approx(soft[2]["ts_h_eV"]) == pytest.approx(soft[1]["ts_h_eV"])
    assert soft[0]["zpe_h_eV"] < soft[2]["zpe_h_eV"]
    assert not vibrational_dg_correction(_modes(2550, 700, -20), h2, 0.741)["saddle"]  # numerical noise


def test_vibrations_resume_after_a_kill_and_give_h2_its_stretch(tmp_path):
    """ASE's EMT H₂: the stretch from both atoms, and √2 lower with one atom held (its reduced mass doubles)."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import vibration_energies

    class Counting(EMT):
        calls = 0

        def calculate(self, *args, **kwargs):
            Counting.calls += 1
            super().calculate(*args, **kwargs)

    mol = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.78]], cell=[8.0] * 3, pbc=True)
    mol.center()
    from ase.optimize import BFGS

    mol.calc = EMT()
    BFGS(mol, logfile=None).run(fmax=1e-4)
    both = max(e.real for e in vibration_energies(mol, [0, 1], Counting(), str(tmp_path / "both")))
    assert Counting.calls == 13  # the equilibrium and 12 displacements
    one = max(e.real for e in vibration_energies(mol, [1], Counting(), str(tmp_path / "one")))
    assert abs(both / one - np.sqrt(2)) < 0.02
    # a killed run: one displacement's result lost, its lock file left empty
    cache = sorted((tmp_path / "both" / "vib").glob("cache.*.json"))
    assert len(cache) == 13
    cache[3].write_text("")
    Counting.calls = 0
    again = max(e.real for e in vibration_energies(mol, [0, 1], Counting(), str(tmp_path / "both")))
    assert Counting.calls == 1 and again == pytest.approx(both, rel=1e-9)
    # every evaluated geometry is kept as a training frame with its energy and forces, the recomputed one once
    from ase.io import read

    frames = read(tmp_path / "both" / "frames.traj", ":")
    assert len(frames) == 12  # the displaced geometries only: the undisplaced one is the relaxation's
    assert len({tuple(np.round(f.positions.ravel(), 6)) for f in frames}) == 12
    assert not any(np.allclose(f.positions, mol.positions) for f in frames)
    for frame in frames[:3] + frames[-1:]:
        ref = frame.copy()
        ref.calc = EMT()
        assert frame.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(frame.get_forces(), ref.get_forces(), atol=1e-12)


def _k_folds_to_gamma(lattice, repeats) -> bool:
    """Whether the BZ corner K of a hexagonal ``lattice`` is a reciprocal lattice vector of the supercell: K is the
    circumcentre of Γ and the two shortest reciprocal vectors 60° apart; in the supercell's reciprocal basis its
    coordinates k·A_i/2π must all be integers."""
    b1, b2 = lattice.reciprocal_lattice.matrix[:2, :2]
    g2 = b2 if abs(np.dot(b1, b2)) / (np.linalg.norm(b1) * np.linalg.norm(b2)) > 0.4 and np.dot(b1, b2) > 0 else b1 + b2
    k = (b1 + g2) / 3.0  # the centroid of an equilateral triangle (Γ, b1, g2) is its circumcentre
    a = lattice.matrix[:2, :2] * np.array(repeats)[:, None]
    frac = a @ k / (2 * np.pi)
    return bool(np.allclose(frac, np.round(frac), atol=1e-6))


@pytest.mark.parametrize("gamma_deg", [120.0, 60.0])
def test_a_gamma_only_cell_holds_k_only_in_multiples_of_three(gamma_deg):
    """Graphene (a 2.467 Å): the 9 Å rule gives 4×4, whose Γ misses the Dirac point; fold_k makes it 6×6."""
    from pymatgen.core import Lattice

    lat = Lattice.from_parameters(2.467, 2.467, 20.0, 90, 90, gamma_deg)
    for n in (1, 2, 3, 4, 5, 6, 9):
        assert gamma_samples_k(lat, (n, n)) is _k_folds_to_gamma(lat, (n, n)) is (n % 3 == 0)
    assert supercell_repeats(lat, 9.0) == (4, 4)
    assert supercell_repeats(lat, 9.0, fold_k=True) == (6, 6)
    mos2_lat = Lattice.from_parameters(3.18, 3.18, 20.0, 90, 90, gamma_deg)
    assert supercell_repeats(mos2_lat, 9.0, fold_k=True) == supercell_repeats(mos2_lat, 9.0) == (3, 3)
    assert gamma_samples_k(mos2_lat, (3, 3)) is True


def test_fold_k_leaves_a_rectangular_cell_alone_and_keeps_old_run_keys():
    from pymatgen.core import Lattice

    black_p = Lattice.orthorhombic(3.30, 4.62, 20.0)
    assert supercell_repeats(black_p, 9.0, fold_k=True) == supercell_repeats(black_p, 9.0) == (3, 2)
    assert gamma_samples_k(black_p, (3, 2)) is None  # no hexagonal K
    assert "fold_k" not in RefineSettings().as_dict()  # the default keeps the keys of stored runs
    assert RefineSettings(fold_k=True).as_dict()["fold_k"] is True


def test_a_seeded_run_gets_either_kind_of_wavefunction_and_keeps_its_own(tmp_path):
    """A site starts from the slab's converged orbitals: CP2K's Γ file (.wfn) or its k-point file (.kp)."""
    from gen2d.adsorption import _seed_restart

    src, dst = tmp_path / "slab", tmp_path / "site"
    src.mkdir()
    (src / "gen2d-RESTART.wfn").write_text("slab Γ orbitals")
    (src / "gen2d-RESTART.kp").write_text("slab k-point orbitals")
    _seed_restart(str(src), str(dst))
    assert (dst / "gen2d-RESTART.kp").read_text() == "slab k-point orbitals"
    (dst / "gen2d-RESTART.wfn").write_text("the site's own orbitals")
    (dst / "gen2d-RESTART.kp").unlink()
    _seed_restart(str(src), str(dst))
    assert (dst / "gen2d-RESTART.wfn").read_text() == "the site's own orbitals"  # never overwritten
    assert (dst / "gen2d-RESTART.kp").is_file()


def test_a_cached_bare_slab_of_another_geometry_is_never_the_reference_of_new_sites(tmp_path):
    """The run directory holds the bare slab's energy. A rerun whose slab moved (another MLIP stage relaxed it
    elsewhere) must not subtract that energy from sites built on its own slab: it is a named failure, while a
    rerun on the same slab reuses everything."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import RefinementFailed, RefineSettings, refine_adsorption
    from gen2d.structures import from_ase, to_ase

    slab, _, sites = _cu111_top_site(1.6)
    refine = RefineSettings(n_sites=1, min_inplane_length=5.0, vacuum=None, h_jitter=0.0, fmax=0.05)
    h2 = (EMT().get_potential_energy(_h2()), 0.74)
    first = refine_adsorption(slab, sites, lambda d: EMT(), str(tmp_path), refine=refine, h2=h2)
    again = refine_adsorption(slab, sites, lambda d: EMT(), str(tmp_path), refine=refine, h2=h2)
    assert again.sites[0].delta_e_h == first.sites[0].delta_e_h
    moved = to_ase(slab)
    moved.positions[0, 2] += 0.05  # a bottom atom: no site moves with it
    with pytest.raises(RefinementFailed, match="another geometry") as exc:
        refine_adsorption(from_ase(moved), sites, lambda d: EMT(), str(tmp_path), refine=refine, h2=h2)
    assert exc.value.reason == "slab_geometry_mismatch"
    # within the tolerance (numerical noise of a repeated MLIP relaxation) the cached slab stands
    moved.positions[0, 2] -= 0.05 - 1e-4
    near = refine_adsorption(from_ase(moved), sites, lambda d: EMT(), str(tmp_path), refine=refine, h2=h2)
    assert near.e_slab == first.e_slab


def test_an_unconverged_h2_reference_is_a_named_failure_never_a_reference(tmp_path):
    """Every ΔG_H of a settings hash subtracts its H₂: a relaxation that stopped short is refused by name."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import RefinementFailed, h2_reference_dft

    energy, bond = h2_reference_dft(str(tmp_path), lambda d: EMT(), box=8.0)
    assert 0.6 < bond < 0.9 and np.isfinite(energy)
    assert h2_reference_dft(str(tmp_path), lambda d: pytest.fail("cached H2 computed again"), box=8.0) == (energy, bond)
    doc = json.loads((tmp_path / "result.json").read_text())
    (tmp_path / "result.json").write_text(json.dumps(doc | {"converged": False, "steps": 50}))
    with pytest.raises(RefinementFailed, match="did not reach fmax") as exc:
        h2_reference_dft(str(tmp_path), lambda d: EMT(), box=8.0)
    assert exc.value.reason == "geometry_not_converged"


def test_a_lower_spin_solution_whose_relaxation_fails_gives_the_site_its_single_point_flagged(tmp_path):
    """A fresh start with a moment on H finds a solution 0.1 eV below the relaxation's own at the converged
    geometry. When relaxing on from it fails, the site takes that start's single point (an upper bound of the lower
    solution's relaxed energy, and below the chain's), flagged ``spin_start_not_relaxed``, and stays valid."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import RefineSettings, refine_adsorption

    class ScfNotConverged(RuntimeError):  # matched by class name, as the CP2K plugin's is
        pass

    class TwoSolutions(EMT):
        """EMT, 0.1 eV lower from a start with a moment on any atom: a second SCF solution."""

        def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
            super().calculate(atoms, properties, system_changes)
            if np.any(self.atoms.get_initial_magnetic_moments()):
                self.results["energy"] -= 0.1
                self.results["free_energy"] -= 0.1

    class Diverging(EMT):
        def calculate(self, *args, **kwargs):
            raise ScfNotConverged("SCF not converged in 250 steps")

    def make(d):
        return Diverging() if os.path.basename(d).startswith("lowest_start") else TwoSolutions()

    slab, _, sites = _cu111_top_site(1.6)
    h2 = (EMT().get_potential_energy(_h2()), 0.74)
    plain = RefineSettings(n_sites=1, min_inplane_length=5.0, vacuum=None, fmax=0.05, steps=100, h_jitter=0.0)
    chain = refine_adsorption(slab, sites, make, str(tmp_path), refine=plain, h2=h2).sites[0]
    checked = RefineSettings(**{**plain.__dict__, "spin_starts": (0.0, 1.0)})
    site = refine_adsorption(slab, sites, make, str(tmp_path), refine=checked, h2=h2).sites[0]
    check = site.spin_starts
    assert check["relaxed_from_start"] == "failed: scf_not_converged"
    assert check["energies_eV"]["+1"] == pytest.approx(chain.energy - 0.1, abs=1e-9)
    assert site.energy == pytest.approx(chain.energy - 0.1, abs=1e-9) == check["energy_from_start_eV"]
    assert site.delta_e_h == pytest.approx(chain.delta_e_h - 0.1, abs=1e-9)
    assert "spin_start_not_relaxed" in site.flags and site.valid
    assert "spin_start_not_relaxed" not in chain.flags
    assert check["energy_from_start"] == "+1"
    # cached: a rerun computes nothing and gives the same flagged value
    again = refine_adsorption(slab, sites, lambda d: 1 / 0, str(tmp_path), refine=checked, h2=h2).sites[0]
    assert again.energy == site.energy and again.flags == site.flags
    # a site cached before the fallback kept the chain's energy: it is not flagged as holding the start's
    path = Path(site.run_dir) / "result.json"
    doc = json.loads(path.read_text())
    doc["energy"] = doc["chain_energy"]
    for key in ("energy_from_start_eV", "energy_from_start"):
        doc["spin_starts"].pop(key)
    path.write_text(json.dumps(doc))
    old = refine_adsorption(slab, sites, lambda d: 1 / 0, str(tmp_path), refine=checked, h2=h2).sites[0]
    assert old.energy == pytest.approx(chain.energy) and "spin_start_not_relaxed" not in old.flags


def test_a_start_added_after_a_takeover_is_computed_at_the_chains_geometry_and_relaxes_in_its_own_folder(tmp_path):
    """A first check (0, +1) finds +1 lower and relaxes on from it. A start added later (−2, lower still) is computed
    at the chain's geometry, where the others were, not at the takeover's, and relaxes on in its own folder, never
    on the +1 start's frames."""
    from ase.calculators.emt import EMT

    from gen2d.adsorption import RefineSettings, refine_adsorption

    seen: dict[str, list] = {}

    class Solutions(EMT):
        """EMT, 0.1 eV × |m| lower from a start with a moment m on H, and pushing H away from the surface by
        0.2 × |m| eV/Å: a start with a larger moment finds a lower SCF solution, whose minimum lies elsewhere."""

        def __init__(self, name):
            super().__init__()
            self.name_ = name

        def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
            super().calculate(atoms, properties, system_changes)
            seen.setdefault(self.name_, []).append(self.atoms.positions.copy())
            m = float(np.max(np.abs(self.atoms.get_initial_magnetic_moments()), initial=0.0))
            shift = 0.1 * m + 0.2 * m * self.atoms.positions[-1, 2]
            self.results["energy"] -= shift
            self.results["free_energy"] -= shift
            if "forces" in self.results:
                self.results["forces"][-1, 2] += 0.2 * m

    def make(d):
        return Solutions(os.path.basename(d))

    slab, _, sites = _cu111_top_site(1.6)
    h2 = (EMT().get_potential_energy(_h2()), 0.74)
    base = RefineSettings(n_sites=1, min_inplane_length=5.0, vacuum=None, fmax=0.05, steps=100, h_jitter=0.3)
    first = refine_adsorption(slab, sites, make, str(tmp_path), refine=base, h2=h2).sites[0]
    one = RefineSettings(**{**base.__dict__, "spin_starts": (0.0, 1.0)})
    took = refine_adsorption(slab, sites, make, str(tmp_path), refine=one, h2=h2).sites[0]
    assert took.spin_starts["relaxed_from_start"] == "+1"
    assert (Path(took.run_dir) / "lowest_start_H+1" / "relax.traj").is_file()
    chain = json.loads((Path(took.run_dir) / "result.json").read_text())["chain_positions"]
    assert np.allclose(chain, seen["start_H+1"][0])
    two = RefineSettings(**{**base.__dict__, "spin_starts": (0.0, 1.0, -2.0)})
    site = refine_adsorption(slab, sites, make, str(tmp_path), refine=two, h2=h2).sites[0]
    assert np.allclose(seen["start_H-2"][0], chain)  # at the chain's geometry, not the +1 relaxation's
    assert site.spin_starts["relaxed_from_start"] == "-2"
    assert seen["lowest_start_H-2"] and (Path(site.run_dir) / "lowest_start_H-2" / "relax.traj").is_file()
    assert site.energy < took.energy < first.energy
    # the vibrations of a site that was taken over start from that start's folder (older runs: lowest_start/)
    from gen2d.adsorption import _takeover_dir

    assert _takeover_dir(site.run_dir, "-2", "-2") == os.path.join(site.run_dir, "lowest_start_H-2")
    os.makedirs(os.path.join(site.run_dir, "older", "lowest_start"))
    older = os.path.join(site.run_dir, "older")
    assert _takeover_dir(older, "+1", "+1") == os.path.join(older, "lowest_start")
    assert _takeover_dir(older, "-2", "+1") == os.path.join(older, "lowest_start_H-2")  # another start's folder


def test_a_strongly_binding_site_elsewhere_is_recorded_and_flagged_but_does_not_replace_the_best():
    """The reported site is the one closest to thermoneutral; H fills the most stable one first. A strongly binding
    other site (ΔG_H < −0.2 eV) is a caution on the value, not a disqualification; a weakly binding one is neither."""
    from gen2d.adsorption import AdsorptionResult, SiteResult

    def site(dg, flags=()):
        return SiteResult(
            "top", "ontop", [0, 0, 0], [0, 0, 1], "S", 0, 1.4, 0.0, 0.1, -1.0, dg - 0.27, dg, True, 3, list(flags)
        )

    def result(*sites):
        return AdsorptionResult(list(sites), (3, 3), 27, -10.0, -6.8, 0.75, {}, 1.0)

    near, strong, weak = site(0.05), site(-0.45), site(-0.15)
    r = result(near, strong)
    assert r.best is near and r.most_stable is strong and r.flags == ["stronger_site_fills_first"]
    d = r.as_dict()
    assert d["dg_h_best_site"] == 0.05 and d["dg_h_most_stable_site"] == -0.45
    assert d["flags"] == ["stronger_site_fills_first"]
    assert result(near, weak).flags == []  # H fills −0.15 first, but it does not hold it: no caution
    assert result(strong).flags == [] and result(strong).best is strong  # the strong site is the reported one
    # a site that is not valid (H broke the layer) is no site H fills
    assert result(near, site(-0.9, ["layer_broke"])).flags == []


def test_an_h_that_sank_into_the_layer_is_flagged_and_a_surface_h_is_not():
    """H driven below the outer S plane of 2H-MoS₂, into the Mo plane's hollow, is absorbed, not adsorbed
    (``h_inside_layer``); H on top of S or in the hollow above the S plane is not. On buckled blue phosphorene an H on
    top of a lower P sits beside higher P atoms and stays a surface H."""
    from ase.build import mx2

    from gen2d.adsorption import COVER_RADIUS

    settings = AdsorptionSettings()
    slab = mx2("MoS2", kind="2H", a=3.18, thickness=3.19, vacuum=7.0).repeat((3, 3, 1))
    slab.pbc = (True, True, False)
    z = slab.positions[:, 2]
    s0 = slab.positions[[i for i in range(len(slab)) if slab[i].symbol == "S" and z[i] > z.mean()][0]]
    z_mo = z[[i for i in range(len(slab)) if slab[i].symbol == "Mo"][0]]
    # ASE's 2H cell: Mo at (0, 0), S at (2/3, 1/3); (1/3, 2/3) is under neither, a hollow of both planes
    hollow = np.array([1 / 3, 2 / 3, 0.0]) @ (slab.cell.array / 3) + [0, 0, s0[2]]
    start = _h_on(slab, hollow + [0, 0, 1.2])
    h = len(start) - 1

    def flags(z_h):
        final = start.copy()
        final.positions[h] = [hollow[0], hollow[1], z_h]
        return _flag_site(start, final, h, 1, settings)[0]

    z_s = s0[2]
    assert "h_inside_layer" in flags(z_mo)  # in the Mo plane, 1.6 Å under the S atoms around it
    assert "h_inside_layer" not in flags(z_s + 0.9)  # in the hollow, above the S plane
    assert "h_inside_layer" not in flags(z_s - 0.3)  # level with the S plane, within the depth
    on_top = _h_on(slab, s0 + [0, 0, 1.4])
    assert _flag_site(on_top, on_top, h, 1, settings)[0] == []
    # a valley of a buckled face: H on top of a lower P, with higher P atoms around it
    blue = Atoms("P2", cell=[[3.314, 0, 0], [-1.657, 2.870, 0], [0, 0, 20]], pbc=(True, True, False))
    blue.set_scaled_positions([[0, 0, 0.5], [1 / 3, 2 / 3, 0.5]])
    blue.positions[1, 2] += 1.24
    blue = blue.repeat((3, 3, 1))
    lower = [i for i in range(len(blue)) if blue.positions[i, 2] < 10.5]
    valley = _h_on(blue, blue.positions[lower[4]] + [0, 0, 1.42])
    hv = len(valley) - 1
    near = np.linalg.norm((blue.positions - valley.positions[hv])[:, :2], axis=1)
    assert (near < COVER_RADIUS).sum() >= 1  # there is a P within the radius, and it is higher than the lower P
    assert "h_inside_layer" not in _flag_site(valley, valley, hv, 1, settings)[0]


def test_a_step_that_jumps_to_a_higher_scf_solution_is_recomputed_from_a_fresh_start_and_taken_over(tmp_path):
    """Two SCF solutions 0.3 eV apart with the same forces: EMT, and EMT + 0.3 eV. Each evaluation starts from the
    last one's wavefunction (a file in its folder), and at the site relaxation's third evaluation the chain lands in
    the higher solution and stays there. Unguarded, the site ends 0.3 eV high, and its frames show the step that rose
    where its forces say down. With ``scf_jump_check`` that step is recomputed from a fresh start, which is 0.3 eV
    lower: the relaxation goes on from its wavefunction and ends where a chain that never jumped ends."""
    from gen2d.adsorption import RefineSettings, refine_adsorption, scf_jump_checks
    from gen2d.frames import collect_frames

    evaluations: dict[str, int] = {}

    class Chained(EMT):
        def __init__(self, directory, jumps=True):
            super().__init__()
            self.wfn = os.path.join(directory, "gen2d-RESTART.wfn")
            self.state = Path(self.wfn).read_text() if os.path.isfile(self.wfn) else "low"
            self.folder, self.jumps = directory, jumps

        def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
            super().calculate(atoms, properties, system_changes)
            n = evaluations[self.folder] = evaluations.get(self.folder, 0) + 1
            if self.jumps and os.path.basename(self.folder).startswith("site_") and n == 3:
                self.state = "high"  # this SCF fell into the other solution; the next ones start from it
            if self.state == "high":
                self.results["energy"] += 0.3
                self.results["free_energy"] += 0.3
            os.makedirs(self.folder, exist_ok=True)
            Path(self.wfn).write_text(self.state)

    slab, _, sites = _cu111_top_site(1.6)
    h2 = (EMT().get_potential_energy(_h2()), 0.74)
    meta = {"formula": "Cu", "content_hash": "c0ffee", "settings_hash": "s1", "calculator": "emt"}
    plain = RefineSettings(n_sites=1, min_inplane_length=5.0, vacuum=None, fmax=0.05, steps=100, h_jitter=0.0)

    def run(name, refine, jumps=True):
        return refine_adsorption(
            slab, sites, lambda d: Chained(d, jumps), str(tmp_path / name), refine=refine, h2=h2, metadata=meta
        ).sites[0]

    never = run("never", plain, jumps=False)
    stuck = run("stuck", plain)
    assert stuck.converged and stuck.energy == pytest.approx(never.energy + 0.3, abs=1e-3)
    frames, summary = collect_frames([tmp_path / "stuck"], keep_superseded=True)
    assert summary["scf_jumps"] and summary["scf_jumps"][0]["jump"].startswith("frame 2:")  # frame 2: evaluation 3

    guarded = run("guarded", RefineSettings(**{**plain.__dict__, "scf_jump_check": True}))
    assert guarded.converged and guarded.energy == pytest.approx(never.energy, abs=1e-3)
    assert stuck.scf_jump_checks is None and "scf_jump_unexplained" not in guarded.flags and guarded.valid
    checks = scf_jump_checks(guarded.run_dir)
    assert guarded.scf_jump_checks == checks
    assert len(checks) == 1 and checks[0]["taken"] is True
    assert checks[0]["chain_energy_eV"] - checks[0]["energy"] == pytest.approx(0.3, abs=1e-6)
    assert checks[0]["rose_eV"] > 0.02 and checks[0]["predicted_eV"] < 0
    doc = json.loads((Path(guarded.run_dir) / "result.json").read_text())
    assert doc["scf_jump_checks"] == checks
    frames, summary = collect_frames([tmp_path / "guarded"])  # the trajectory holds the fresh start's energy there
    assert summary["n_scf_jump"] == 0
    site = sorted((f for f in frames if f.info["config_type"] == "slab+H"), key=lambda f: f.info["frame"])
    assert site[-1].info["energy"] == pytest.approx(never.energy, abs=1e-3)
    # a fresh start is fresh: a wavefunction left in its folder by a killed attempt is not read
    from gen2d.adsorption import SCF_JUMP_FOLDER, _fresh_start_at, _geometry_sha256

    atoms = read(Path(guarded.run_dir) / "relax.traj", 2)
    folder = tmp_path / "killed" / (SCF_JUMP_FOLDER + _geometry_sha256(atoms, [])[:12])
    folder.mkdir(parents=True)
    (folder / "gen2d-RESTART.wfn").write_text("high")
    done = _fresh_start_at(str(tmp_path / "killed"), atoms, lambda d: Chained(d, False))
    assert done["energy"] == pytest.approx(EMT().get_potential_energy(atoms), abs=1e-9)
    # a chain that never jumps is never checked
    assert (
        scf_jump_checks(
            run("never-guarded", RefineSettings(**{**plain.__dict__, "scf_jump_check": True}), False).run_dir
        )
        == []
    )


def test_a_jump_the_fresh_start_does_not_explain_is_flagged_and_the_site_stays_valid(tmp_path):
    """The chain's third evaluation lands 0.3 eV high, and a fresh start there lands in the same higher solution:
    nothing lower to take over, so the relaxation goes on as it was and the site carries the warning
    ``scf_jump_unexplained`` (its energy may be high, or the step anharmonic), with the check recorded."""
    from gen2d.adsorption import RefineSettings, refine_adsorption

    evaluations: dict[str, int] = {}

    class HighFromThree(EMT):
        def __init__(self, directory):
            super().__init__()
            self.folder = directory

        def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
            super().calculate(atoms, properties, system_changes)
            n = evaluations[self.folder] = evaluations.get(self.folder, 0) + 1
            fresh = os.path.basename(self.folder).startswith("scf_jump-")
            if fresh or (os.path.basename(self.folder).startswith("site_") and n >= 3):
                self.results["energy"] += 0.3
                self.results["free_energy"] += 0.3

    slab, _, sites = _cu111_top_site(1.6)
    h2 = (EMT().get_potential_energy(_h2()), 0.74)
    refine = RefineSettings(
        n_sites=1, min_inplane_length=5.0, vacuum=None, fmax=0.05, steps=100, h_jitter=0.0, scf_jump_check=True
    )
    site = refine_adsorption(slab, sites, HighFromThree, str(tmp_path), refine=refine, h2=h2).sites[0]
    assert len(site.scf_jump_checks) == 1 and site.scf_jump_checks[0]["taken"] is False
    assert "scf_jump_unexplained" in site.flags and site.valid
