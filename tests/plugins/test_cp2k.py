"""The ``cp2k`` calculator and the ``dgh.dft`` scorer, on real CP2K runs kept tiny (low cutoff, small basis).

The numbers checked are physical facts that hold even at these settings: H₂'s bond and binding energy,
H binding on graphene's basal plane weakly (ΔG_H well above 0, a C–H bond of ~1.1 Å).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.optimize import BFGS
from conftest import CP2K_TINY as TINY
from conftest import DGH_DFT_TINY, HAVE_CP2K, needs_cp2k
from gen2d_cp2k import Cp2kSettings, ScfFallback, ScfNotConverged, available, make_calculator
from gen2d_cp2k.settings import build_input, wants_spin


def _h2(box: float = 7.0, d: float = 0.75) -> Atoms:
    mol = Atoms("H2", positions=[[0, 0, 0], [0, 0, d]], cell=[box] * 3, pbc=True)
    mol.center()
    return mol


def _h2_energy(settings: Cp2kSettings, directory: Path, d: float = 0.78) -> float:
    """E(H₂) (eV) at bond ``d`` by a calculator of its own, closed after the one evaluation."""
    mol = _h2(d=d)
    mol.calc = make_calculator(settings=settings, directory=str(directory))
    try:
        return mol.get_potential_energy()
    finally:
        mol.calc.close()


# -- settings and input (no CP2K run) -------------------------------------------------------------


def test_settings_hash_names_the_physics():
    a, b = Cp2kSettings(), Cp2kSettings(cutoff_ry=500)
    assert a.settings_hash() == Cp2kSettings().settings_hash()
    assert a.settings_hash() != b.settings_hash()
    with pytest.raises(ValueError):
        Cp2kSettings(cutoff_ryy=400)  # a typo is refused by name, not ignored
    # the SCF retry ladder is the route, not the physics
    gentler = (ScfFallback(mixing_alpha=0.02, nbroyden=20, max_scf=500),)
    assert Cp2kSettings(scf_fallback=()).settings_hash() == a.settings_hash()
    assert Cp2kSettings(scf_fallback=gentler).settings_hash() == a.settings_hash()
    with pytest.raises(ValueError):
        ScfFallback(mixing_alpha=0.0, nbroyden=8, max_scf=100)


def test_the_shipped_dft_rows_settings_still_hash_to_their_recorded_hash():
    """The run directories and reference rows are keyed by the settings hash: a new settings field must not move
    the hash of settings stored before it existed."""
    import json

    import gen2d

    shipped = Path(gen2d.__file__).parent / "assets" / "dgh_dft_reference" / "rows.jsonl"
    rows = [json.loads(line) for line in shipped.read_text().splitlines() if line]
    assert rows
    for row in rows:
        stored = row["provenance"]["settings"]
        assert Cp2kSettings(**stored["cp2k"]).settings_hash() == stored["cp2k_settings_hash"]


def test_a_fallback_rung_applies_gentler_mixing_and_more_steps_to_the_input():
    s = Cp2kSettings()
    rung = s.at_rung(1)
    assert rung.mixing_alpha < s.mixing_alpha and rung.max_scf > s.max_scf and rung.nbroyden >= s.nbroyden
    assert s.at_rung(0) is s
    text = build_input(rung, ["Mo", "S", "S", "H"], slab=True)
    assert f"ALPHA {rung.mixing_alpha}" in text and f"MAX_SCF {rung.max_scf}" in text


@pytest.mark.skipif(not HAVE_CP2K, reason="needs CP2K's GTH_POTENTIALS for valence counts")
def test_spin_follows_electron_parity_and_magnetic_elements():
    s = Cp2kSettings()
    assert wants_spin(["H", "H"], s) == (False, 1)
    assert wants_spin(["H"], s) == (True, 2)  # one electron: a doublet
    assert wants_spin(["Mo", "S", "S"], s) == (False, 1)
    assert wants_spin(["Mo", "S", "S", "H"], s) == (True, 2)
    assert wants_spin(["Fe", "Se"], s) == (True, 1)  # magnetic element: unrestricted with moments
    with pytest.raises(ValueError, match="odd electron count"):
        wants_spin(["H"], Cp2kSettings(spin="off", scf="ot"))
    # restricted with smearing: the odd electron half-fills the last level (CP2K runs it)
    assert wants_spin(["Mo", "S", "S", "H"], Cp2kSettings(spin="off")) == (False, 1)


@pytest.mark.skipif(not HAVE_CP2K, reason="needs CP2K's GTH_POTENTIALS for valence counts")
def test_initial_moments_shape_the_atomic_guess_of_spin_polarised_runs_only():
    """An initial moment is a start of the SCF, not physics: it is written for unrestricted runs only, overrides
    the per-element defaults (0 removes one), and leaves the settings hash alone."""
    s = Cp2kSettings()

    def moments(text: str) -> dict[str, str]:
        kinds = text.split("&KIND ")[1:]
        return {k.split()[0]: k.split("MAGNETIZATION ")[1].split()[0] for k in kinds if "MAGNETIZATION" in k}

    assert moments(build_input(s, ["Mo", "S", "S", "H"], slab=True)) == {}
    assert moments(build_input(s, ["Mo", "S", "S", "H"], slab=True, magnetization={"H": -1.0})) == {"H": "-1.0"}
    assert moments(build_input(s, ["V", "S", "S"], slab=True)) == {"V": "3.0"}
    assert moments(build_input(s, ["V", "S", "S"], slab=True, magnetization={"V": 0.0, "S": 0.5})) == {"S": "0.5"}
    # a closed-shell run has no spin density to start: the moment is not written
    assert "MAGNETIZATION" not in build_input(s, ["H", "H"], slab=False, magnetization={"H": 1.0})


def test_atoms_of_one_element_with_other_starting_moments_get_kinds_of_their_own():
    """CP2K sets a starting moment per kind: an adsorbed H started at 1 μB beside the H of an OH termination needs
    a kind of its own. The element's first atom keeps the element's kind; atoms sharing a moment share a kind."""
    from gen2d_cp2k import atom_kinds

    atoms = Atoms("TiOHTiOHH", positions=np.arange(21.0).reshape(7, 3))
    assert atom_kinds(atoms) == (list(atoms.get_chemical_symbols()), {}, {})
    atoms.set_initial_magnetic_moments([0.5, 0, 0, 0.5, 0, 0, 1.0])
    labels, extra, moments = atom_kinds(atoms)
    assert labels == ["Ti", "O", "H", "Ti", "O", "H", "H_1"]
    assert extra == {"H_1": "H"} and moments == {"Ti": 0.5, "H_1": 1.0}
    atoms.set_initial_magnetic_moments([0, 0, -1.0, 0, 0, 0, -1.0])  # the first H's moment names the element's kind
    assert atom_kinds(atoms) == (["Ti", "O", "H", "Ti", "O", "H_1", "H"], {"H_1": "H"}, {"H": -1.0})


@pytest.mark.skipif(not HAVE_CP2K, reason="needs CP2K's GTH_POTENTIALS for valence counts")
def test_an_extra_kind_names_its_element_and_carries_its_own_moment():
    text = build_input(
        Cp2kSettings(), ["H", "H", "H"], slab=False, magnetization={"H_1": 1.0}, extra_kinds={"H_1": "H"}
    )
    kinds = {k.split()[0]: k.split("&END KIND")[0] for k in text.split("&KIND ")[1:]}
    assert set(kinds) == {"H", "H_1"} and "UKS" in text
    assert "ELEMENT H" in kinds["H_1"] and "MAGNETIZATION 1.0" in kinds["H_1"]
    assert "ELEMENT" not in kinds["H"] and "MAGNETIZATION" not in kinds["H"]
    assert kinds["H"].split("BASIS_SET")[1].split()[0] == kinds["H_1"].split("BASIS_SET")[1].split()[0]


@needs_cp2k
def test_atoms_starting_at_zero_take_their_element_s_moment_whichever_atom_comes_first(tmp_path):
    """V atoms started at 0, 0 and 2 μB: the two at 0 take V's default moment (3 μB) and the third its own 2 μB,
    whether the element's own kind is the zero one or the other."""

    def moments_by_atom(order):
        atoms = Atoms("V3S", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [1.2, 1.2, 1.5]], cell=[8.0] * 3)
        atoms.pbc = True
        atoms.set_initial_magnetic_moments(order + [0.0])
        calc = make_calculator(settings=Cp2kSettings(**TINY), directory=str(tmp_path / str(order)))
        try:
            calc._prepare(atoms)
            text = calc.parameters.inp
            kind_moment = {
                k.split()[0]: float(k.split("MAGNETIZATION ")[1].split()[0]) if "MAGNETIZATION" in k else 0.0
                for k in text.split("&KIND ")[1:]
            }
            return [kind_moment[label] for label in calc._kind_labels[:3]]
        finally:
            calc.close()

    assert moments_by_atom([0.0, 0.0, 2.0]) == [3.0, 3.0, 2.0]
    assert moments_by_atom([2.0, 0.0, 0.0]) == [2.0, 3.0, 3.0]


@needs_cp2k
def test_an_h_atom_started_with_a_moment_beside_h2_runs_as_its_own_kind_and_adds_up(tmp_path):
    """H₂ and, 5 Å away, an H atom started at 1 μB (the case of an adsorbed H on an H-terminated slab): CP2K runs it
    with a kind of its own for the lone H, and the energy is E(H₂) + E(H) of separate runs in the same box."""

    def energy(atoms, name):
        atoms.calc = make_calculator(settings=Cp2kSettings(**TINY), directory=str(tmp_path / name))
        try:
            return atoms.get_potential_energy(), atoms.calc.parameters.inp, (tmp_path / name)
        finally:
            atoms.calc.close()

    box = [9.0, 9.0, 12.0]
    both = Atoms("H3", positions=[[4.5, 4.5, 2.0], [4.5, 4.5, 2.75], [4.5, 4.5, 7.75]], cell=box, pbc=True)
    both.set_initial_magnetic_moments([0.0, 0.0, 1.0])
    e_both, inp, folder = energy(both, "both")
    assert "&KIND H_1" in inp and "ELEMENT H" in inp
    written = (folder / "gen2d.inp").read_text() if (folder / "gen2d.inp").is_file() else ""
    coords = [
        line.split()[0] for line in written.split("&COORD")[1].split("&END COORD")[0].splitlines() if line.strip()
    ]
    assert coords == ["H", "H", "H_1"]
    e_h2, _, _ = energy(Atoms("H2", positions=both.positions[:2], cell=box, pbc=True), "h2")
    e_h, _, _ = energy(Atoms("H", positions=both.positions[2:], cell=box, pbc=True), "h")
    assert e_both == pytest.approx(e_h2 + e_h, abs=5e-3)


@pytest.mark.skipif(not HAVE_CP2K, reason="needs CP2K's GTH_POTENTIALS for valence counts")
def test_input_has_dipole_correction_for_slabs_only_and_refuses_ot_with_kpoints():
    s = Cp2kSettings()
    slab = build_input(s, ["Mo", "S", "S"], slab=True)
    mol = build_input(s, ["H", "H"], slab=False)
    assert "SURFACE_DIPOLE_CORRECTION T" in slab and "SURFACE_DIPOLE_CORRECTION" not in mol
    assert "TYPE DFTD3(BJ)" in slab and "BASIS_SET DZVP-MOLOPT-GTH" in build_input(s, ["H"], slab=False)
    assert "SCF_GUESS RESTART" in build_input(s, ["H", "H"], slab=False, wfn_restart="x.wfn")
    with pytest.raises(ValueError, match="OT does not run with k-points"):
        build_input(Cp2kSettings(scf="ot", kpoints=(2, 2, 1)), ["Mo", "S", "S"], slab=True)


def test_missing_executable_is_a_named_unavailability(monkeypatch, tmp_path):
    from gen2d.data.templates import build_template
    from gen2d.scoring import PluginUnavailable, get_calculator, get_scorer

    monkeypatch.setenv("GEN2D_CP2K_COMMAND", "/nonexistent/cp2k_shell")
    ok, why = available()
    assert not ok and "apt-get install cp2k" in why and "conda-forge" in why
    with pytest.raises(PluginUnavailable, match="not an executable"):
        get_calculator("cp2k")
    res = get_scorer("dgh.dft", workdir=str(tmp_path)).score([build_template("graphene")])[0]
    assert not res.ok and res.failure.reason == "calculator_unavailable"


@needs_cp2k
def test_an_element_without_a_basis_set_is_named_before_any_dft_or_mlip_work(tmp_path, monkeypatch):
    """CP2K's BASIS_MOLOPT has no MOLOPT basis for the lanthanides (their GTH-PBE potentials exist): dgh.dft refuses
    such a layer by name before its MLIP stage, and spends nothing on it."""
    from conftest import make_mos2
    from gen2d_cp2k import missing_data

    from gen2d.scoring import get_scorer

    assert missing_data(["Mo", "S", "H"], Cp2kSettings()) == {}
    missing = missing_data(["S", "Pr"], Cp2kSettings())
    assert list(missing) == ["Pr"]
    assert "DZVP-MOLOPT-SR-GTH basis" in missing["Pr"] and "potential" not in missing["Pr"]
    assert "S" in missing_data(["S"], Cp2kSettings(basis_overrides={"S": "NO-SUCH-BASIS"}))
    assert "potential" in missing_data(["S"], Cp2kSettings(potential="GTH-NOPE"))["S"]

    scorer = get_scorer("dgh.dft", workdir=str(tmp_path / "dft"))

    def no_mlip(*args, **kwargs):
        raise AssertionError("the MLIP stage ran for a structure DFT cannot describe")

    monkeypatch.setattr(scorer, "_mlip_stage", no_mlip)
    prs2 = make_mos2()
    prs2.replace_species({"Mo": "Pr"})
    assert scorer.cannot_score(make_mos2()) is None
    (res,) = scorer.score([prs2])
    assert not res.ok and res.failure.reason == "unsupported_element" and "Pr" in res.failure.message
    assert res.failure.reason not in scorer.retry_failures  # the basis will not appear by itself
    assert not (tmp_path / "dft").exists() or not any((tmp_path / "dft").iterdir())


def test_dgh_dft_threads_come_from_the_environment_unless_the_job_says(monkeypatch, tmp_path):
    from gen2d.scoring import get_scorer

    monkeypatch.setenv("GEN2D_CP2K_THREADS", "2")
    scorer = get_scorer("dgh.dft", workdir=str(tmp_path))
    assert scorer.threads == 2 and scorer.provenance().settings["threads"] == 2
    assert get_scorer("dgh.dft", workdir=str(tmp_path), threads=1).threads == 1
    monkeypatch.delenv("GEN2D_CP2K_THREADS")
    assert get_scorer("dgh.dft", workdir=str(tmp_path)).threads == 1


def test_a_held_site_shares_the_run_directory_and_the_default_run_keeps_its_key(tmp_path):
    from gen2d.data.templates import build_template
    from gen2d.scoring import get_scorer

    layer = build_template("MoS2-2H")
    free = get_scorer("dgh.dft", workdir=str(tmp_path))
    held = get_scorer("dgh.dft", workdir=str(tmp_path), hold_site=True)
    assert held.refine.hold_site and not free.refine.hold_site
    assert held.run_dir(layer) == free.run_dir(layer)  # they share the slab; their site directories differ
    assert held.provenance().settings["refine"]["hold_site"] is True
    assert "hold_site" not in free.provenance().settings["refine"]
    assert held.Options(hold_site=True).hold_site is True


def test_fold_k_keys_a_new_run_only_where_it_changes_the_supercell(tmp_path):
    from gen2d.data.templates import build_template
    from gen2d.scoring import get_scorer

    plain = get_scorer("dgh.dft", workdir=str(tmp_path))
    folded = get_scorer("dgh.dft", workdir=str(tmp_path), fold_k=True)
    mos2, graphene = build_template("MoS2-2H"), build_template("graphene")
    assert folded.run_dir(mos2) == plain.run_dir(mos2)  # 3×3 either way: the same calculation
    assert folded.run_dir(graphene) != plain.run_dir(graphene)  # 4×4 → 6×6
    assert folded.explain(graphene)["dft_supercell"] == [6, 6] and folded.explain(graphene)["gamma_samples_k"]
    assert plain.explain(graphene)["dft_supercell"] == [4, 4] and plain.explain(graphene)["gamma_samples_k"] is False
    # a stored Γ result is not current for a fold_k scorer (shared 3×3 runs come back from their cache)
    assert folded.current["provenance.settings.refine.fold_k"] is True
    assert "provenance.settings.refine.fold_k" not in plain.current

    def with_a(layer, a):  # the same layer with its in-plane lattice constant set to a
        from pymatgen.core import Lattice, Structure

        lat = layer.lattice
        new = Lattice.from_parameters(a, a, lat.c, lat.alpha, lat.beta, lat.gamma)
        return Structure(new, layer.species, layer.frac_coords)

    # input a 3.01 Å (3×3 either way) whose MLIP-relaxed slab has a 2.99 Å (4×4, or 6×6 folded): not shared
    given, relaxed = with_a(mos2, 3.01), with_a(mos2, 2.99)
    assert folded.run_dir(given) == plain.run_dir(given)
    assert folded.run_dir(given, relaxed) != plain.run_dir(given, relaxed)


def test_dgh_dft_default_protocol_is_the_prepared_start_and_keys_its_own_runs(tmp_path):
    """The default: CHGNet-prepared start, 0.1 eV/Å, one atomic-guess spin check, the SCF-jump guard; a run of the
    clean-slab protocol at 0.05 eV/Å (the reference set's first rows) keeps its own directory, and neither the spin
    check, added to finished sites in place, nor the guard is in the key."""
    from gen2d_dgh_dft import DFT_PROTOCOL

    from gen2d.data.templates import build_template
    from gen2d.scoring import get_scorer

    layer = build_template("MoS2-2H")
    default = get_scorer("dgh.dft", workdir=str(tmp_path))
    assert (default.refine.fmax, default.refine.prerelax, default.refine.spin_starts) == (0.1, "chgnet", (0.0,))
    options = default.Options()
    assert (options.fmax, options.prerelax, tuple(options.spin_starts), options.scf_jump_check) == tuple(
        DFT_PROTOCOL.values()
    )
    assert default.refine.scf_jump_check is True
    assert default.provenance().settings["refine"]["prerelax"] == "chgnet"
    clean = get_scorer("dgh.dft", workdir=str(tmp_path), fmax=0.05, prerelax=None, spin_starts=[])
    assert clean.run_dir(layer) != default.run_dir(layer)
    unchecked = get_scorer("dgh.dft", workdir=str(tmp_path), spin_starts=[])
    assert unchecked.run_dir(layer) == default.run_dir(layer)
    unguarded = get_scorer("dgh.dft", workdir=str(tmp_path), scf_jump_check=False)
    assert unguarded.run_dir(layer) == default.run_dir(layer)


def test_runs_differing_in_n_sites_share_one_directory_and_other_settings_still_key_it(tmp_path):
    """Site k is the same site whatever n_sites (a prefix of one ordered list, named by k and its start), so raising
    n_sites reuses the slab and the finished sites; the settings that change a calculation still key the run."""
    from gen2d.data.templates import build_template
    from gen2d.scoring import get_scorer

    layer = build_template("MoS2-2H")
    one = get_scorer("dgh.dft", workdir=str(tmp_path), n_sites=1)
    assert get_scorer("dgh.dft", workdir=str(tmp_path), n_sites=3).run_dir(layer) == one.run_dir(layer)
    for changed in ({"free_radius": 2.5}, {"cp2k": {"cutoff_ry": 500}}, {"min_inplane_length": 12.0}):
        assert get_scorer("dgh.dft", workdir=str(tmp_path), n_sites=1, **changed).run_dir(layer) != one.run_dir(layer)


def _keyed_with_n_sites(scorer, layer, n_sites: int, finished_sites: int = 0) -> Path:
    """A run directory named as one keyed with ``n_sites``, its slab and ``finished_sites`` sites done."""
    import json

    run = scorer.workdir / scorer._run_key_with_n_sites(layer, None, n_sites)
    for part in ["slab"] + [f"site_{k}-0000000{k}" for k in range(finished_sites)]:
        (run / part).mkdir(parents=True)
        (run / part / "result.json").write_text(json.dumps({"energy": -1.0, "converged": True}))
    return run


def test_a_score_counts_the_cost_of_its_own_parts_only(tmp_path):
    """A run directory shared by n_sites 1 and 2 holds site 1's cost, which a score of site 0 alone must not count."""
    import json

    from gen2d_dgh_dft import _cost_of

    for part, wall in (("slab", 100.0), ("site_0-aa-pre-chgnet", 10.0), ("slab_site_0-aa-pre-chgnet", 5.0)):
        (tmp_path / part).mkdir()
        (tmp_path / part / "result.json").write_text(json.dumps({"cost": {"wall_seconds": wall, "n_evaluations": 1}}))
    (tmp_path / "site_1-bb-pre-chgnet").mkdir()
    (tmp_path / "site_1-bb-pre-chgnet" / "result.json").write_text(json.dumps({"cost": {"wall_seconds": 1000.0}}))
    own = _cost_of(tmp_path, {"slab", "site_0-aa-pre-chgnet", "slab_site_0-aa-pre-chgnet"})
    assert own["wall_seconds"] == 115.0 and own["n_evaluations"] == 3
    assert _cost_of(tmp_path)["wall_seconds"] == 1115.0
    # the site's checks are its cost too: a spin start's single point and the relaxation on from a lower start
    site = tmp_path / "site_0-aa-pre-chgnet"
    (site / "start_H-1").mkdir()
    (site / "start_H-1" / "result.json").write_text(json.dumps({"cost": {"wall_seconds": 7.0, "n_evaluations": 1}}))
    doc = {"cost": {"wall_seconds": 10.0, "n_evaluations": 1}, "spin_starts": {"cost": {"wall_seconds": 20.0}}}
    (site / "result.json").write_text(json.dumps(doc))
    assert _cost_of(tmp_path, {"site_0-aa-pre-chgnet"})["wall_seconds"] == 37.0
    assert _cost_of(tmp_path, {"slab"})["wall_seconds"] == 100.0
    # and the SCF-jump guard's fresh starts, in the site's relaxation and in the takeover's
    for folder, wall in (("scf_jump-abc", 3.0), ("lowest_start_H-1/scf_jump-def", 4.0)):
        (site / folder).mkdir(parents=True)
        (site / folder / "result.json").write_text(json.dumps({"cost": {"wall_seconds": wall, "n_evaluations": 1}}))
    assert _cost_of(tmp_path, {"site_0-aa-pre-chgnet"})["wall_seconds"] == 44.0


def test_a_run_directory_keyed_with_n_sites_is_used_in_place(tmp_path):
    from gen2d.data.templates import build_template
    from gen2d.scoring import get_scorer

    layer = build_template("MoS2-2H")
    scorer = {n: get_scorer("dgh.dft", workdir=str(tmp_path), n_sites=n) for n in (1, 2, 3)}
    shared = scorer[1].run_dir(layer)
    one = _keyed_with_n_sites(scorer[1], layer, 1, finished_sites=1)
    assert one != shared and not shared.exists()
    assert scorer[1].run_dir(layer) == one
    assert scorer[2].run_dir(layer) == one  # raising n_sites keeps the slab and site 0
    # with two of them: the one of this n_sites, else the one with the most finished sites
    two = _keyed_with_n_sites(scorer[1], layer, 2, finished_sites=2)
    assert scorer[1].run_dir(layer) == one and scorer[2].run_dir(layer) == two
    assert scorer[3].run_dir(layer) == two
    # as many finished sites: the one with more sites begun (an unfinished site's frames to resume from)
    other = tmp_path / "other"
    first, third = (get_scorer("dgh.dft", workdir=str(other), n_sites=n) for n in (1, 3))
    _keyed_with_n_sites(first, layer, 1, finished_sites=1)
    begun = _keyed_with_n_sites(first, layer, 2, finished_sites=1)
    (begun / "site_1-00000001").mkdir()
    assert third.run_dir(layer) == begun
    # a directory under the shared key, once made, is the run's
    shared.mkdir()
    assert all(s.run_dir(layer) == shared for s in scorer.values())


def test_relaxing_the_slab_reference_reuses_the_run_of_its_slab_and_sites(tmp_path):
    """``relax_slab_reference`` only adds the relaxed bare slab beside the slab single point and the sites, so a run
    with it shares their directory, while a setting that changes the sites' calculation (``free_radius``) does not.
    Keys of runs made before are unchanged (test_the_n_sites_key_names_a_committed_reference_run)."""
    from gen2d.data.templates import build_template
    from gen2d.scoring import get_scorer

    layer = build_template("phosphorene")
    plain, relaxed, wider = (
        get_scorer("dgh.dft", workdir=str(tmp_path), site_kinds=["ontop"], **extra)
        for extra in ({}, {"relax_slab_reference": True}, {"free_radius": 4.0})
    )
    assert plain.run_dir(layer) == relaxed.run_dir(layer) != wider.run_dir(layer)


def test_the_n_sites_key_names_a_committed_reference_run(tmp_path):
    """The hBN reference row's runs, ``dft-runs/reference/ffb0eb630b25463a`` (its first site, ``n_sites=1``) and
    ``9c9472da99754e6c`` (both sites, ``n_sites=2``; the shipped row names it), are found under the key that hashes
    n_sites, by a run of their settings with that n_sites."""
    import json

    import gen2d
    from gen2d.data.templates import build_template
    from gen2d.scoring import get_scorer

    shipped = Path(gen2d.__file__).parent / "assets" / "dgh_dft_reference" / "rows.jsonl"
    row = next(r for r in map(json.loads, shipped.read_text().splitlines()) if r["material"] == "hBN")
    assert row["best_site"]["run_dir"].startswith("dft-runs/reference/9c9472da99754e6c/")
    settings = row["provenance"]["settings"]
    assert settings["refine"]["n_sites"] == 2
    layer = build_template(row["built_from"]["template"])
    scorers = {
        n: get_scorer("dgh.dft", workdir=str(tmp_path), cp2k=settings["cp2k"], **(settings["refine"] | {"n_sites": n}))
        for n in (1, 2)
    }
    assert scorers[2]._run_key_with_n_sites(layer, None, 1) == "ffb0eb630b25463a"
    assert scorers[2]._run_key_with_n_sites(layer, None, 2) == "9c9472da99754e6c"
    for name in ("ffb0eb630b25463a", "9c9472da99754e6c"):
        (tmp_path / name).mkdir()
    assert scorers[1].run_dir(layer) == tmp_path / "ffb0eb630b25463a"
    assert scorers[2].run_dir(layer) == tmp_path / "9c9472da99754e6c"


# -- real CP2K runs ---------------------------------------------------------------------------------


@needs_cp2k
def test_h2_bond_and_binding_energy(tmp_path):
    """PBE's H₂: bond 0.75 Å, binding energy 4.5 eV (experiment 4.75)."""
    s = Cp2kSettings(**TINY)
    calc = make_calculator(settings=s, directory=str(tmp_path / "h2"))
    mol = _h2()
    mol.calc = calc
    BFGS(mol, logfile=None).run(fmax=0.02, steps=30)
    e_h2, bond = mol.get_potential_energy(), mol.get_distance(0, 1)
    h = Atoms("H", positions=[[3.5, 3.5, 3.5]], cell=[7.0] * 3, pbc=True)
    h.calc = make_calculator(settings=s, directory=str(tmp_path / "h"))
    e_h = h.get_potential_energy()
    assert 0.72 < bond < 0.78
    assert 4.2 < 2 * e_h - e_h2 < 5.0
    prov = calc.provenance()
    assert prov["code"].startswith("CP2K version") and prov["settings_hash"] == s.settings_hash()
    assert prov["n_evaluations"] >= 2 and prov["scf_steps_total"] > 0 and prov["wall_seconds"] > 0
    calc.close()


@needs_cp2k
def test_h2_vibrations_give_its_stretch_and_the_held_atom_mode_is_lower_by_root_two(tmp_path):
    """PBE's H₂ stretch: about 4300 cm⁻¹ (experiment 4401); one atom held, the other's mode is √2 lower (reduced
    mass m instead of m/2). Computed from the relaxed H₂'s directory and wavefunction, then cached."""
    from gen2d.adsorption import h2_reference_dft, h2_vibrations_dft, vibration_energies

    s = Cp2kSettings(**(TINY | {"eps_scf": 1e-6}))

    def make(d):
        return make_calculator(settings=s, directory=d)

    h2_dir = str(tmp_path / "h2")
    _, bond = h2_reference_dft(h2_dir, make, box=7.0)
    modes = h2_vibrations_dft(h2_dir, make, box=7.0)
    stretch = max(e.real for e in modes) / units.invcm
    assert 3900 < stretch < 4700
    assert (tmp_path / "h2" / "vibrations" / "result.json").is_file()
    assert h2_vibrations_dft(h2_dir, lambda d: pytest.fail("recomputed"), box=7.0) == modes
    mol = _h2(d=bond)
    calc = make(str(tmp_path / "held"))
    try:
        held = max(e.real for e in vibration_energies(mol, [1], calc, str(tmp_path / "held"))) / units.invcm
    finally:
        calc.close()
    assert abs(stretch / held - np.sqrt(2)) < 0.05


@needs_cp2k
def test_unconverged_scf_raises_instead_of_returning_a_number(tmp_path):
    settings = Cp2kSettings(**(TINY | {"max_scf": 2, "eps_scf": 1e-9, "scf_fallback": ()}))
    calc = make_calculator(settings=settings, directory=str(tmp_path))
    mol = _h2(d=0.9)
    mol.calc = calc
    with pytest.raises(ScfNotConverged, match="not converged"):
        mol.get_potential_energy()
    calc.close()


@needs_cp2k
def test_a_stalled_scf_climbs_the_fallback_ladder_to_the_same_energy(tmp_path):
    """Two SCF steps cannot converge H₂; the fallback rung (more steps) does, from the wavefunction the failed SCF
    left, to the energy a plain run gets. The rung stays for the next evaluation and survives in the ledger."""
    rung = ScfFallback(mixing_alpha=0.3, nbroyden=8, max_scf=60)
    stalled = Cp2kSettings(**(TINY | {"max_scf": 2, "eps_scf": 1e-6, "scf_fallback": (rung,)}))
    plain = Cp2kSettings(**(TINY | {"max_scf": 60, "eps_scf": 1e-6, "scf_fallback": ()}))
    e_plain = _h2_energy(plain, tmp_path / "plain")

    calc = make_calculator(settings=stalled, directory=str(tmp_path / "ladder"))
    mol = _h2(d=0.78)
    mol.calc = calc
    assert mol.get_potential_energy() == pytest.approx(e_plain, abs=2e-4)
    assert calc.scf_level == 1 and calc.scf_steps[0] == 2
    assert calc.scf_retries == [
        {
            "evaluation": 1,
            "rung": 1,
            "mixing_alpha": 0.3,
            "nbroyden": 8,
            "max_scf": 60,
            "scf_steps": calc.scf_steps[1],
            "converged": True,
        }
    ]
    assert 2 < calc.scf_steps[1] < 60
    mol.positions[1, 2] += 0.02
    mol.get_potential_energy()  # the next geometry keeps the rung: no new failure, no new retry
    assert calc.scf_level == 1 and len(calc.scf_retries) == 1 and len(calc.scf_steps) == 3
    prov = calc.provenance()
    assert prov["scf_level"] == 1 and prov["settings_hash"] == stalled.settings_hash()
    calc.close()
    again = make_calculator(settings=stalled, directory=str(tmp_path / "ladder"))  # a resumed run
    assert again.scf_level == 1 and again.scf_retries == calc.scf_retries
    # its output file holds the first process's "SCF run NOT converged": the resumed process reads only its own
    mol.calc = again
    mol.positions[1, 2] += 0.02
    assert np.isfinite(mol.get_potential_energy())
    assert len(again.scf_retries) == 1 and 2 < again.scf_steps[-1] < 60 and len(again.scf_steps) == 4
    again.close()
    # a ladder that runs out raises, naming the rung
    short = Cp2kSettings(
        **(
            TINY
            | {"max_scf": 2, "eps_scf": 1e-9, "scf_fallback": (ScfFallback(mixing_alpha=0.3, nbroyden=8, max_scf=3),)}
        )
    )
    calc = make_calculator(settings=short, directory=str(tmp_path / "short"))
    mol = _h2(d=0.9)
    mol.calc = calc
    with pytest.raises(ScfNotConverged, match="rung 1"):
        mol.get_potential_energy()
    assert calc.scf_retries[-1]["converged"] is False and calc.scf_level == 1
    assert calc.results == {}  # the unconverged energy is not handed out on a second ask
    calc.close()


@needs_cp2k
def test_a_rung_with_kerker_damping_reaches_the_same_energy_and_keeps_the_hash(tmp_path):
    """A rung may set Kerker damping (&MIXING BETA): CP2K takes the keyword, the SCF converges to the plain run's
    energy, and neither the rung nor a base mixing_beta moves the settings hash."""
    kerker = ScfFallback(mixing_alpha=0.2, nbroyden=8, max_scf=60, mixing_beta=1.5)
    base = TINY | {"max_scf": 60, "eps_scf": 1e-6}
    stalled = Cp2kSettings(**(base | {"max_scf": 2, "scf_fallback": (kerker,)}))
    assert "BETA 1.5" in build_input(stalled.at_rung(1), ["H", "H"], slab=False)
    assert "BETA" not in build_input(stalled, ["H", "H"], slab=False)
    assert Cp2kSettings(**(base | {"mixing_beta": 1.0})).settings_hash() == Cp2kSettings(**base).settings_hash()
    e_plain = _h2_energy(Cp2kSettings(**(base | {"scf_fallback": ()})), tmp_path / "a")
    calc = make_calculator(settings=stalled, directory=str(tmp_path / "b"))
    mol = _h2(d=0.78)
    mol.calc = calc
    assert mol.get_potential_energy() == pytest.approx(e_plain, abs=2e-4)
    assert calc.scf_retries[0]["mixing_beta"] == 1.5 and calc.scf_retries[0]["converged"]
    calc.close()


def test_a_cp2k_that_stops_on_an_unconverged_scf_is_read_as_an_scf_failure():
    from gen2d_cp2k import scf_abort

    # CP2K 2024.1 and later abort there unless IGNORE_CONVERGENCE_FAILURE is set; the box wraps its message
    assert scf_abort(
        "SCF run NOT converged. To continue the calculation regardless, please set the keyword "
        "IGNORE_CONVERGENCE_FAILURE."
    )
    assert scf_abort("SCF run NOT\n converged")
    assert not scf_abort("Cell too small for the dipole correction")


@needs_cp2k
def test_a_slab_whose_scf_fails_is_a_named_cached_failure(tmp_path):
    """The bare slab's single point is what every site needs: its SCF failure is a named failure of the
    refinement, cached with its cost, so a rerun raises it again without starting CP2K."""
    from gen2d.adsorption import RefinementFailed, RefineSettings, refine_adsorption
    from gen2d.data.templates import build_template
    from gen2d.structures import orient_2d

    slab = orient_2d(build_template("graphene"))
    sites = [
        {
            "face": "top",
            "kind": "ontop",
            "final_position": [0.0, 0.0, float(slab.cart_coords[:, 2].max()) + 1.1],
            "delta_g_h": 1.0,
        }
    ]
    settings = Cp2kSettings(**(DGH_DFT_TINY["cp2k"] | {"max_scf": 1, "eps_scf": 1e-9, "scf_fallback": ()}))
    started = []

    def make(d):
        started.append(d)
        return make_calculator(settings=settings, directory=d)

    refine = RefineSettings(n_sites=1, min_inplane_length=4.9, vacuum=8.0)
    for _ in range(2):
        with pytest.raises(RefinementFailed) as info:
            refine_adsorption(slab, sites, make, str(tmp_path), refine=refine, h2=(-31.7, 0.75))
        assert info.value.reason == "scf_not_converged" and "bare slab" in str(info.value)
    assert len(started) == 1  # the second call read the cached failure
    import json

    doc = json.loads((tmp_path / "slab" / "result.json").read_text())
    assert doc["failure"] == "scf_not_converged" and doc["cost"]["scf_level"] == 0


_KILLABLE = textwrap.dedent("""
    import sys
    sys.path[:0] = {paths!r}
    from ase import Atoms
    from gen2d.adsorption import _constrained_bfgs
    from gen2d_cp2k import Cp2kSettings, make_calculator
    mol = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1.05]], cell=[7.0] * 3, pbc=True)
    mol.center()
    calc = make_calculator(settings=Cp2kSettings(**{tiny!r}), directory={d!r})
    _constrained_bfgs(mol, calc, [0, 1], 0.005, 40, {traj!r})
""")


@needs_cp2k
def test_killed_relaxation_resumes_from_last_frame_and_wavefunction(tmp_path):
    from ase.io import read

    from gen2d.adsorption import _constrained_bfgs

    d = tmp_path / "run"
    traj = d / "relax.traj"
    code = _KILLABLE.format(paths=sys.path, tiny=TINY, d=str(d), traj=str(traj))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    n_before = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        try:
            n_before = len(read(str(traj), index=":")) if traj.is_file() and traj.stat().st_size else 0
        except Exception:  # noqa: BLE001 - a frame being written
            continue
        if n_before >= 2:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the python driver and its cp2k_shell child
    proc.wait(timeout=30)
    assert n_before >= 2, proc.stderr.read().decode()[-2000:]
    old = read(str(traj), index=":")
    assert (d / "gen2d-RESTART.wfn").is_file()

    import json

    killed = json.loads((d / "gen2d-cost.json").read_text())  # the killed process's own ledger
    assert killed["n_processes"] == 1 and killed["n_evaluations"] >= n_before
    calc = make_calculator(settings=Cp2kSettings(**TINY), directory=str(d))
    mol = _h2(d=1.05)
    final, energy, converged, steps = _constrained_bfgs(mol, calc, [0, 1], 0.005, 40, str(traj))
    calc.close()
    # the cost reported for the result includes the killed process's evaluations
    prov = calc.provenance()
    assert prov["n_processes"] == 2
    assert calc.scf_steps[: len(killed["scf_steps"])] == killed["scf_steps"]
    assert len(calc.scf_steps) == prov["n_evaluations"]
    assert prov["n_evaluations"] > killed["n_evaluations"] and prov["wall_seconds"] > killed["wall_seconds"]
    new = read(str(traj), index=":")[len(old) :]
    assert converged and 0.72 < final.get_distance(0, 1) < 0.78
    # the resumed run steps from the last saved geometry (not the 1.05 Å start) with that frame's stored energy
    # and forces: its first new evaluation is one BFGS step (at most 0.15 Å) away, and the saved geometry is
    # neither evaluated nor written again
    step = np.abs(new[0].positions - old[-1].positions).max()
    assert 0 < step <= 0.15 + 1e-9
    assert not any(np.allclose(f.positions, old[-1].positions, atol=1e-8) for f in new)
    assert "SCF_GUESS RESTART" in (d / "gen2d.inp").read_text()
    assert steps >= len(old)


@needs_cp2k
def test_a_kpoint_run_restarts_from_its_own_kpoint_wavefunction(tmp_path):
    """With a k-point mesh CP2K saves ``-RESTART.kp``, not ``.wfn``: a resumed run must read that one, or every
    restart (a killed job, a false convergence, a ladder rung) silently starts again from the atomic guess."""
    settings = Cp2kSettings(**(TINY | {"kpoints": (2, 2, 1), "eps_scf": 1e-6, "scf_fallback": ()}))
    d = tmp_path / "k"
    energies, steps = [], []
    for _ in range(2):  # the second calculator starts in the first one's folder
        atoms = _h2(box=5.0)
        atoms.calc = calc = make_calculator(settings=settings, directory=str(d))
        try:
            energies.append(atoms.get_potential_energy())
            steps.append(calc.scf_steps[-1])
        finally:
            calc.close()
        assert calc.wfn_file.name == "gen2d-RESTART.kp" and calc.wfn_file.is_file()
    text = (d / "gen2d.inp").read_text()
    assert "SCF_GUESS RESTART" in text and "WFN_RESTART_FILE_NAME gen2d-RESTART.kp" in text
    assert not (d / "gen2d-RESTART.wfn").exists()
    assert steps[1] < steps[0]  # it went on from the converged orbitals
    assert abs(energies[1] - energies[0]) < 1e-3


@needs_cp2k
@pytest.mark.slow
def test_dgh_dft_on_graphene_binds_h_weakly_and_resumes_from_cache(dft_workdir):
    """H on graphene's basal plane: a C–H bond of ~1.1 Å and ΔG_H well above 0 (published PBE +1.4 to +1.8 eV)."""
    from gen2d.data.templates import build_template
    from gen2d.scoring import get_scorer

    scorer = get_scorer("dgh.dft", workdir=str(dft_workdir), **DGH_DFT_TINY)
    graphene = build_template("graphene")
    res = scorer.score([graphene])[0]
    assert res.ok, res.failure
    best = res.extra["best_site"]
    assert best["nearest_atom"] == "C" and 1.0 < best["nearest_distance"] < 1.25
    assert 0.5 < res.value < 3.0
    assert res.extra["supercell"] == [2, 2] and res.extra["n_slab_atoms"] == 8
    settings = res.provenance.settings
    assert settings["cp2k_settings_hash"] == Cp2kSettings(**DGH_DFT_TINY["cp2k"]).settings_hash()
    assert settings["cp2k_version"].startswith("CP2K version") and settings["cost"]["n_evaluations"] > 1
    frames = list(Path(res.extra["workdir"]).glob("*/relax.traj"))
    assert frames, "every DFT relaxation keeps its frames"
    # the frames are a dataset: slab single point, the H relaxation and the H2 reference, with provenance
    from gen2d.frames import collect_frames

    data, summary = collect_frames([dft_workdir])
    kinds = summary["by_config_type"]
    assert kinds.get("slab", 0) >= 1 and kinds.get("slab+H", 0) >= 2 and kinds.get("molecule", 0) >= 2
    assert set(summary["by_settings_hash"]) == {settings["cp2k_settings_hash"]}
    site = next(f for f in data if f.info["config_type"] == "slab+H")
    assert site.info["formula"] == "C" and site.arrays["forces"].shape == (len(site), 3)
    # a rerun reads every finished part from the cache: no CP2K process is started
    calls = []
    scorer._make_calculator = lambda d: calls.append(d)  # noqa: E731 - would fail if called
    again = scorer.score([graphene])[0]
    assert calls == [] and again.value == pytest.approx(res.value)

    # the spin-start check, added to the finished site in place (same run directory): fresh SCF starts at the
    # converged geometry. −1 μB on H, against the sheet's unpaired electron, ends in a higher solution.
    import json

    checked = get_scorer("dgh.dft", workdir=str(dft_workdir), **(DGH_DFT_TINY | {"spin_starts": [0.0, -1.0]}))
    assert checked.run_dir(graphene) == scorer.run_dir(graphene)
    site = checked.score([graphene])[0].extra["best_site"]
    starts = site["spin_starts"]["energies_eV"]
    assert set(starts) == {"+0", "-1"} and site["spin_starts"]["relaxed_from_start"] is None
    assert starts["-1"] > site["energy"] + 0.05 and site["energy"] == pytest.approx(best["energy"])
    # a relaxation that had stayed in a higher solution: the lower fresh start takes the site over and
    # relaxes on from its wavefunction, back to the same minimum
    path = Path(best["run_dir"]) / "result.json"
    doc = json.loads(path.read_text())
    for key in ("spin_starts", "chain_energy"):
        doc.pop(key)
    doc["energy"] += 0.3
    path.write_text(json.dumps(doc))
    site = checked.score([graphene])[0].extra["best_site"]
    assert site["spin_starts"]["relaxed_from_start"] in ("+0", "-1")
    assert site["energy"] == pytest.approx(best["energy"], abs=0.01)
    # a start whose failure was cached under older rules (an SCF failure from before the retry ladder) runs again
    site_dir = Path(site["run_dir"])
    stored = json.loads((site_dir / "result.json").read_text())
    e_minus = stored["spin_starts"]["energies_eV"]["-1"]
    stored["spin_starts"]["energies_eV"]["-1"] = None
    stored["spin_starts"]["failures"] = {"-1": "scf_not_converged"}
    (site_dir / "result.json").write_text(json.dumps(stored))
    old_failure = {"energy": None, "failure": "scf_not_converged", "message": "CP2K SCF not converged in 100 steps"}
    (site_dir / "start_H-1" / "result.json").write_text(json.dumps(old_failure))
    site = checked.score([graphene])[0].extra["best_site"]
    assert site["spin_starts"]["energies_eV"]["-1"] == pytest.approx(e_minus, abs=1e-4)
    assert "failures" not in site["spin_starts"]

    # the vibrations, added to the finished site in place: H*'s three modes with the sheet held, and H₂'s
    vib = get_scorer("dgh.dft", workdir=str(dft_workdir), **(DGH_DFT_TINY | {"vibrations": True}))
    assert vib.run_dir(graphene) == scorer.run_dir(graphene)
    res = vib.score([graphene])[0]
    site = res.extra["best_site"]
    v = site["vibrations"]
    # at these tiny settings (single-zeta H, coarse grid) the frequencies are stiff (H₂ ~5300 cm⁻¹ against PBE's
    # 4300, test above), so only what symmetry and bonding fix is checked: the C top site's threefold axis makes
    # the two bends degenerate, the C–H stretch lies far above them and below H₂'s, and a covalent X–H bond holds
    # more zero-point energy than Nørskov's metal-surface 0.24 eV assumes
    bends, stretch = sorted(v["h_frequencies_cm1"])[:2], max(v["h_frequencies_cm1"])
    assert not v["saddle"] and min(bends) > 0 and abs(bends[1] - bends[0]) < 0.05 * bends[0]
    assert 2 * bends[1] < stretch < v["h2_frequency_cm1"]
    assert v["dg_correction_eV"] > 0.24 and v["unit"] == "eV" and v["temperature_K"] == 298.15
    assert res.value == pytest.approx(site["delta_e_h"] + vib.settings.dg_correction)  # the score keeps the constant
    assert (Path(site["run_dir"]) / "vibrations" / "result.json").is_file()


# CP2K 2023.1's output for 3×3 Ti₂CO₂ (45 atoms, Broyden α 0.2, atomic guess): the SCF sloshed and the density
# reached the vacuum at step 9, where the dipole correction's check stopped it (the abort box is abridged)
_SLOSHING_SCF = """
  Step     Update method      Time    Convergence         Total energy    Change
  ------------------------------------------------------------------------------
     1 NoMix/Diag. 0.20E+00    9.4     1.93184562     -1394.4548244001 -1.39E+03
     2 Broy./Diag. 0.20E+00   15.8     0.27393322     -1385.5728160427  8.88E+00
     3 Broy./Diag. 0.20E+00   16.3     0.13429305     -1389.1715406106 -3.60E+00
     4 Broy./Diag. 0.20E+00   16.6     0.08242965     -1388.4292952805  7.42E-01
     5 Broy./Diag. 0.20E+00   16.2     0.04668822     -1390.1138325444 -1.68E+00
     6 Broy./Diag. 0.20E+00   16.3     0.00339245     -1390.2465176951 -1.33E-01
     7 Broy./Diag. 0.20E+00   16.5     0.00674309     -1390.0644602420  1.82E-01
     8 Broy./Diag. 0.20E+00   16.5     0.00094444     -1389.7079301528  3.57E-01

 * [ABORT]                                                                     *
 *  \\___/       Dipole correction needs more vacuum space above the surface    *
"""
_DIPOLE_ABORT = "Dipole correction needs more vacuum space above the surface surface_dipole.F:198"


def test_a_density_that_sloshes_into_the_vacuum_is_an_scf_failure_but_too_little_vacuum_is_not():
    """The dipole correction's vacuum check stopping an SCF after some steps is a diverging SCF (for the retry
    ladder); stopping it at the first step means the cell lacks vacuum (a named abort); other aborts are neither."""
    from gen2d_cp2k import DIVERGENCE_MIN_VACUUM, scf_diverged, vacuum_width

    from gen2d.data.templates import build_template
    from gen2d.structures import to_ase

    assert scf_diverged(_DIPOLE_ABORT, _SLOSHING_SCF, vacuum=15.0) == 8
    first_step_only = "\n".join(
        line for line in _SLOSHING_SCF.splitlines() if not line.lstrip()[:1].isdigit() or line.lstrip().startswith("1 ")
    )
    assert scf_diverged(_DIPOLE_ABORT, first_step_only, vacuum=15.0) == 0
    assert scf_diverged(_DIPOLE_ABORT, _SLOSHING_SCF, vacuum=DIVERGENCE_MIN_VACUUM - 2) == 0  # the cell's
    assert (
        scf_diverged("Cholesky decomposition failed. Matrix ill-conditioned? cp_fm_cholesky.F:87", _SLOSHING_SCF, 15.0)
        == 0
    )
    # the vacuum of a slab, wherever it sits along z: MoS2's S–S thickness is 3.1 Å
    layer = to_ase(build_template("MoS2-2H"))
    c = layer.cell[2, 2]
    thickness = np.ptp(layer.positions[:, 2])
    assert vacuum_width(layer) == pytest.approx(c - thickness)
    layer.positions[:, 2] += c / 2 + 0.3  # straddling the cell boundary
    assert vacuum_width(layer) == pytest.approx(c - thickness)
    assert 3.0 < thickness < 3.3


_ABORT_BOX = """
 *******************************************************************************
 *   ___                                                                       *
 *  /   \\                                                                      *
 * [ABORT]                                                                     *
 *  \\___/       Dipole correction needs more vacuum space above the surface    *
 *    |                                                                        *
 *  O/|                                                                        *
 * /| |                                                                        *
 * / \\                                                    surface_dipole.F:198 *
 *******************************************************************************
"""


@needs_cp2k
def test_a_sloshing_scf_climbs_the_ladder_from_the_atomic_guess_and_the_ledger_keeps_it(tmp_path, monkeypatch):
    """The abort path, end to end, with CP2K's evaluation replaced by what it wrote for Ti₂CO₂: the first SCF sloshes
    into the vacuum (8 steps, then the dipole correction's abort, its wavefunction saved), the fallback rung
    converges. The rung starts from the atomic guess, and the ledger counts both SCFs. An abort box an earlier
    process left in the same output is never read as this evaluation's."""
    from ase.calculators import cp2k as ase_cp2k
    from ase.calculators.calculator import Calculator

    from gen2d.data.templates import build_template
    from gen2d.structures import to_ase

    slab = to_ase(build_template("graphene")).repeat((2, 2, 1))
    slab.cell[2, 2] = 15.0
    slab.positions[:, 2] = 7.5
    slab.pbc = (True, True, False)
    work = tmp_path / "slab"
    work.mkdir()
    (work / "gen2d.out").write_text(_SLOSHING_SCF + _ABORT_BOX)  # an earlier process's abort
    inputs: list[str] = []

    def fake_cp2k(self, atoms=None, properties=None, system_changes=None):
        Calculator.calculate(self, atoms, properties or ["energy"], system_changes or [])
        inputs.append(self.parameters.inp)
        with open(self.out_file, "a") as fh:
            if len(inputs) == 1:
                fh.write(_SLOSHING_SCF + _ABORT_BOX)
                self.wfn_file.write_text("the diverging density's orbitals")
                raise AssertionError("cp2k_shell: unexpected line")  # what ASE raises when CP2K dies
            if len(inputs) == 3:
                raise RuntimeError("killed")  # no abort box of its own
            fh.write(" *** SCF run converged in    12 steps ***\n")
        self.results = {"energy": -1.0, "forces": np.zeros((len(self.atoms), 3))}

    monkeypatch.setattr(ase_cp2k.CP2K, "calculate", fake_cp2k)
    rung = ScfFallback(mixing_alpha=0.05, nbroyden=12, max_scf=250)
    calc = make_calculator(settings=Cp2kSettings(**(TINY | {"scf_fallback": (rung,)})), directory=str(work))
    slab.calc = calc
    assert slab.get_potential_energy() == -1.0
    assert calc.scf_steps == [8, 12] and calc.scf_level == 1 and calc.n_evaluations == 2
    assert calc.scf_retries == [
        {
            "evaluation": 1,
            "rung": 1,
            "mixing_alpha": 0.05,
            "nbroyden": 12,
            "max_scf": 250,
            "scf_steps": 12,
            "converged": True,
        }
    ]
    assert "SCF_GUESS RESTART" in inputs[0] or "SCF_GUESS ATOMIC" in inputs[0]
    assert "SCF_GUESS ATOMIC" in inputs[1] and "ALPHA 0.05" in inputs[1]  # not from the diverged wavefunction
    assert (work / "gen2d-RESTART.wfn.diverged").is_file() and not calc.wfn_file.exists()
    ledger = __import__("json").loads((work / "gen2d-cost.json").read_text())
    assert ledger["scf_steps"] == [8, 12] and ledger["scf_retries"] == calc.scf_retries
    slab.positions[0, 2] += 0.05
    with pytest.raises(RuntimeError, match="killed"):  # the old abort boxes in the file are not this one's
        slab.get_potential_energy()


def test_a_cached_dipole_abort_from_older_rules_is_computed_again_and_a_current_one_stands():
    from gen2d.adsorption import FAILURE_RULES, _stale_failure

    old = {
        "energy": None,
        "failure": "dft_aborted",
        "message": f"the bare slab: CP2K aborted: {_DIPOLE_ABORT}",
        "cost": {"n_evaluations": 0, "scf_level": 0},
    }
    assert "dipole" in _stale_failure(old)
    assert _stale_failure(old | {"failure_rules": FAILURE_RULES}) is None  # at the first step: the cell's
    assert _stale_failure(old | {"message": "CP2K aborted: Cholesky decomposition failed"}) is None
    scf = {"energy": None, "failure": "scf_not_converged", "message": "", "cost": {"n_evaluations": 2}}
    assert "ladder" in _stale_failure(scf)
    laddered = scf | {"cost": {"n_evaluations": 2, "scf_level": 1}, "failure_rules": 2}
    assert "annealing" in _stale_failure(laddered)  # before the ladder's annealing rung
    assert _stale_failure(laddered | {"failure_rules": FAILURE_RULES}) is None
    assert _stale_failure({"energy": -1.0, "cost": {}}) is None


def test_a_false_convergence_is_named_an_scf_failure_and_one_stored_as_calculator_error_is_retried():
    """FalseConvergence is an ScfNotConverged: its failure is ``scf_not_converged`` (a named, cached, retried
    failure), not ``calculator_error`` (a crash). A cached false convergence stored under the old name is
    computed again; a crash and a current scf failure stand."""
    from gen2d_cp2k import Cp2kAborted, FalseConvergence, ScfNotConverged

    from gen2d.adsorption import FAILURE_RULES, _failure_name, _stale_failure

    assert _failure_name(FalseConvergence("CP2K SCF met eps_scf ... a false convergence")) == "scf_not_converged"
    assert _failure_name(ScfNotConverged("no")) == "scf_not_converged"
    assert _failure_name(Cp2kAborted("abort")) == "dft_aborted"
    assert _failure_name(ValueError("bad")) == "calculator_error"
    misnamed = {
        "energy": None,
        "failure": "calculator_error",
        "message": "CP2K SCF met eps_scf 1e-05 at step 21, but its energy still changed by -2.3e-04 Ha at that "
        "step (tolerance 0.0002 Ha): a false convergence; see gen2d.out",
        "cost": {"n_evaluations": 1, "scf_level": 2},
        "failure_rules": 4,
    }
    assert "calculator_error" in _stale_failure(misnamed)
    # a crash cached as a failure under older rules runs again; under the current ones a crash is never cached
    crash = misnamed | {"message": "CP2K-shell not ready"}
    assert "crash" in _stale_failure(crash)
    assert _stale_failure(crash | {"failure_rules": FAILURE_RULES}) is None
    assert _stale_failure(misnamed | {"failure": "scf_not_converged", "failure_rules": FAILURE_RULES}) is None


@needs_cp2k
def test_cp2k_abort_is_a_named_error_and_the_next_call_starts_a_new_process(tmp_path):
    """CP2K refuses a dipole correction without room in the vacuum: its own message, not a hang or an assert."""
    from gen2d_cp2k import Cp2kAborted

    from gen2d.data.templates import build_template
    from gen2d.structures import to_ase

    slab = to_ase(build_template("graphene")).repeat((2, 2, 1))
    slab.cell[2, 2] = 6.0  # 6 Å of cell for a flat sheet: too little vacuum for the dipole layer
    slab.positions[:, 2] = 3.0
    slab.pbc = (True, True, False)
    calc = make_calculator(settings=Cp2kSettings(**TINY), directory=str(tmp_path))
    slab.calc = calc
    with pytest.raises(Cp2kAborted, match="vacuum"):
        slab.get_potential_energy()
    mol = _h2()
    mol.calc = calc
    assert np.isfinite(mol.get_potential_energy())  # the calculator recovered with a fresh CP2K
    calc.close()


def test_a_trajectory_cut_mid_frame_resumes_from_its_last_whole_frame(tmp_path):
    """A kill while a frame is written leaves a damaged tail: the whole frames before it still count."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import Trajectory

    from gen2d.adsorption import _whole_frames

    path = tmp_path / "relax.traj"
    with Trajectory(str(path), "w") as traj:
        for k in range(3):
            mol = _h2(d=0.70 + 0.01 * k)
            mol.calc = SinglePointCalculator(mol, energy=-float(k), forces=np.zeros((2, 3)))
            traj.write(mol)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 40)
    frames = _whole_frames(str(path))
    assert len(frames) == 2
    assert frames[-1].get_distance(0, 1) == pytest.approx(0.71)


@needs_cp2k
def test_a_shell_that_already_exited_closes_quietly_and_its_energy_is_kept(tmp_path):
    """The cp2k_shell launcher dying after its last answer (killed by a job manager, a crash on exit) must not
    turn a finished single point into an exception in close(): refine_adsorption closes in ``finally``."""
    mol = _h2()
    calc = make_calculator(settings=Cp2kSettings(**TINY), directory=str(tmp_path))
    mol.calc = calc
    energy = mol.get_potential_energy()
    launcher = calc._shell._child
    launcher.kill()
    launcher.wait()
    calc.close()  # no AssertionError from ASE's "child process still alive?"
    assert calc._shell is None and np.isfinite(energy) and mol.get_potential_energy() == energy


def test_scf_steps_of_an_ot_run_count_every_outer_iteration():
    """CP2K's OT inner loop that reaches MAX_SCF prints no 'converged' line: the outer loop's total is the count."""
    from gen2d_cp2k import scf_steps_in

    ot = (
        "  outer SCF iter =    1 RMS gradient =   0.29E-04 energy =       -355.0363235212\n"
        "  *** SCF run converged in     7 steps ***\n"
        "  outer SCF iter =    2 RMS gradient =   0.37E-05 energy =       -355.0363575849\n"
        "  outer SCF loop converged in   2 iterations or  107 steps\n"
    )
    assert scf_steps_in(ot, 100) == (107, True)
    assert scf_steps_in("  *** SCF run converged in    42 steps ***\n", 100) == (42, True)
    assert scf_steps_in("  *** SCF run NOT converged ***\n", 100) == (100, False)


class _Killed(BaseException):
    """A job killed in the middle of an SCF (what a batch system's SIGTERM or a stopped machine does)."""


def _scripted_cp2k(monkeypatch, outcomes: list):
    """Replace CP2K's evaluation by a script: each call takes the next outcome, ``None`` for an SCF that does not
    converge, ``"kill"`` for a process stopped during the SCF, or ``(energy, steps)``. Returns the list of inputs
    CP2K was given."""
    from ase.calculators import cp2k as ase_cp2k
    from ase.calculators.calculator import Calculator

    inputs: list[str] = []

    def fake_cp2k(self, atoms=None, properties=None, system_changes=None):
        Calculator.calculate(self, atoms, properties or ["energy"], system_changes or [])
        inputs.append(self.parameters.inp)
        outcome = outcomes.pop(0)
        if outcome == "kill":
            raise _Killed
        self.wfn_file.write_text(f"orbitals of SCF {len(inputs)}")
        with open(self.out_file, "a") as fh:
            if outcome is None:
                fh.write(" *** SCF run NOT converged ***\n")
                self.results = {"energy": 99.0, "forces": np.zeros((len(self.atoms), 3))}
                return
            energy, steps = outcome
            fh.write(f" *** SCF run converged in {steps:6d} steps ***\n")
        self.results = {"energy": energy, "forces": np.zeros((len(self.atoms), 3))}

    monkeypatch.setattr(ase_cp2k.CP2K, "calculate", fake_cp2k)
    return inputs


@needs_cp2k
def test_the_annealing_rung_starts_from_a_hot_scf_and_hands_out_only_the_cold_energy(tmp_path, monkeypatch):
    """The default ladder's second rung: an SCF at 1500 K whose wavefunction starts the SCF at the settings' own
    temperature. The hot energy is never the result; a later geometry that fails on that rung anneals again."""
    settings = Cp2kSettings(**(TINY | {"electronic_temperature_k": 300.0, "mixing_alpha": 0.2}))
    plain, hot, _ = settings.scf_fallback
    assert plain.anneal_temperature_k is None and hot.anneal_temperature_k == 1500.0
    assert settings.at_rung(2).electronic_temperature_k == 300.0  # the rung's result is at the settings' physics
    assert (
        settings.settings_hash()
        == Cp2kSettings(
            **(TINY | {"electronic_temperature_k": 300.0, "mixing_alpha": 0.2, "scf_fallback": ()})
        ).settings_hash()
    )
    # base fails, rung 1 fails, rung 2: hot SCF (converges, -5 eV), then the cold SCF (-1 eV)
    inputs = _scripted_cp2k(monkeypatch, [None, None, (-5.0, 30), (-1.0, 12)])
    mol = _h2()
    mol.pbc = (True, True, False)  # a "slab": its SCFs carry the surface dipole correction, except the hot one
    mol.calc = calc = make_calculator(settings=settings, directory=str(tmp_path / "a"))
    assert mol.get_potential_energy() == -1.0
    assert calc.scf_steps == [100, 250, 30, 12] and calc.scf_level == 2
    assert "ELECTRONIC_TEMPERATURE [K] 1500.0" in inputs[2] and "MAX_SCF 150" in inputs[2]
    assert "SURFACE_DIPOLE_CORRECTION" not in inputs[2]
    assert all("SURFACE_DIPOLE_CORRECTION T" in inputs[k] for k in (0, 1, 3))
    assert "ELECTRONIC_TEMPERATURE [K] 300.0" in inputs[3] and "MAX_SCF 250" in inputs[3]
    assert "ALPHA 0.05" in inputs[3] and "SCF_GUESS RESTART" in inputs[3]
    assert [r["rung"] for r in calc.scf_retries] == [1, 2]
    assert calc.scf_retries[1] == {
        "evaluation": 3,  # the rung's own SCF; the hot one was evaluation 2
        "rung": 2,
        "mixing_alpha": 0.05,
        "nbroyden": 12,
        "max_scf": 250,
        "anneal_temperature_k": 1500.0,
        "anneal_max_scf": 150,
        "anneal_dipole_correction": False,
        "anneal_scf_steps": 30,
        "anneal_converged": True,
        "scf_steps": 12,
        "converged": True,
    }
    # the next geometry fails on rung 2: it anneals again (the hot SCF need not converge), then converges
    inputs += _scripted_cp2k(monkeypatch, [None, None, (-1.1, 20)])
    mol.positions[1, 2] += 0.02
    assert mol.get_potential_energy() == -1.1
    assert calc.scf_retries[-1]["rung"] == 2 and calc.scf_retries[-1]["anneal_converged"] is False
    calc.close()


@needs_cp2k
def test_the_last_rung_converges_a_slab_without_the_dipole_correction_then_with_it(tmp_path, monkeypatch):
    """The default ladder's third rung, for a slab whose SCF with the dipole correction spreads density into the
    vacuum even from its annealed start (3×3 Sc₂CO₂): an SCF at the settings' own temperature without the
    correction, then the SCF with it from that wavefunction, whose energy alone is handed out. A cell without the
    correction in effect runs the rung as a plain rung."""
    settings = Cp2kSettings(**(TINY | {"electronic_temperature_k": 300.0, "mixing_alpha": 0.2}))
    rung = settings.scf_fallback[2]
    assert rung.prepare_without_dipole and rung.anneal_temperature_k is None and rung.prepares
    assert settings.at_rung(3).electronic_temperature_k == 300.0 and settings.at_rung(3).dipole_correction
    with pytest.raises(ValueError, match="prepare_without_dipole"):
        ScfFallback(
            mixing_alpha=0.05, nbroyden=12, max_scf=9, prepare_without_dipole=True, anneal_dipole_correction=True
        )
    # base, rung 1 and rung 2 (its hot SCF converges, its cold one not) fail; rung 3: -2 eV without, -1 eV with
    inputs = _scripted_cp2k(monkeypatch, [None, None, (-5.0, 30), None, (-2.0, 40), (-1.0, 6)])
    mol = _h2()
    mol.pbc = (True, True, False)
    mol.calc = calc = make_calculator(settings=settings, directory=str(tmp_path / "slab"))
    assert mol.get_potential_energy() == -1.0
    assert calc.scf_level == 3 and calc.scf_steps == [100, 250, 30, 250, 40, 6]
    prepare, final = inputs[4], inputs[5]
    assert "SURFACE_DIPOLE_CORRECTION" not in prepare and "ELECTRONIC_TEMPERATURE [K] 300.0" in prepare
    assert "MAX_SCF 250" in prepare and "SCF_GUESS RESTART" in prepare
    assert "SURFACE_DIPOLE_CORRECTION T" in final and "SCF_GUESS RESTART" in final
    assert calc.scf_retries[-1] == {
        "evaluation": 5,
        "rung": 3,
        "mixing_alpha": 0.05,
        "nbroyden": 12,
        "max_scf": 250,
        "anneal_max_scf": 250,
        "anneal_dipole_correction": False,
        "prepare_without_dipole": True,
        "anneal_scf_steps": 40,
        "anneal_converged": True,
        "scf_steps": 6,
        "converged": True,
    }
    calc.close()
    # a molecule in a 3D cell carries no dipole correction: the rung is its mixing alone, one SCF
    inputs = _scripted_cp2k(monkeypatch, [None, None, (-5.0, 30), None, (-3.0, 9)])
    gas = _h2()
    gas.calc = calc = make_calculator(settings=settings, directory=str(tmp_path / "gas"))
    assert gas.get_potential_energy() == -3.0
    assert len(inputs) == 5 and calc.scf_retries[-1]["rung"] == 3 and "anneal_scf_steps" not in calc.scf_retries[-1]
    calc.close()


@needs_cp2k
def test_a_climb_stopped_on_the_annealing_rung_resumes_there(tmp_path, monkeypatch):
    """A job killed during a rung's SCFs resumes on that rung, its hot SCF first, not on the rungs below it: on a
    hard system each costs hours. A ledger from before the marker, whose last retry failed on its own rung, goes on
    above that rung too (a generated layer's site had run rung 1 three times across stops)."""
    import json

    settings = Cp2kSettings(**(TINY | {"electronic_temperature_k": 300.0, "mixing_alpha": 0.2}))
    work = tmp_path / "site"
    inputs = _scripted_cp2k(monkeypatch, [None, None, "kill"])
    mol = _h2()
    mol.calc = calc = make_calculator(settings=settings, directory=str(work))
    with pytest.raises(_Killed):
        mol.get_potential_energy()
    calc.close()
    assert "ELECTRONIC_TEMPERATURE [K] 1500.0" in inputs[2]  # stopped in rung 2's hot SCF
    ledger = json.loads((work / "gen2d-cost.json").read_text())
    assert ledger["scf_climbing"] == {"level": 2, "evaluation": 2} and ledger["scf_level"] == 2
    assert ledger["scf_failed"] is None and [r["rung"] for r in ledger["scf_retries"]] == [1]

    inputs = _scripted_cp2k(monkeypatch, [(-5.0, 30), (-1.0, 12)])
    mol.calc = again = make_calculator(settings=settings, directory=str(work))
    assert mol.get_potential_energy() == -1.0
    assert len(inputs) == 2  # neither the base SCF nor rung 1 again
    assert "ELECTRONIC_TEMPERATURE [K] 1500.0" in inputs[0] and "ELECTRONIC_TEMPERATURE [K] 300.0" in inputs[1]
    assert again.scf_level == 2 and again.scf_retries[-1]["rung"] == 2 and again.scf_retries[-1]["converged"]
    assert json.loads((work / "gen2d-cost.json").read_text())["scf_climbing"] is None
    # a later geometry is an ordinary evaluation on rung 2
    inputs += _scripted_cp2k(monkeypatch, [(-1.2, 8)])
    mol.positions[1, 2] += 0.02
    assert mol.get_potential_energy() == -1.2 and "ELECTRONIC_TEMPERATURE [K] 300.0" in inputs[-1]
    again.close()

    old = tmp_path / "old"
    old.mkdir()
    (old / "gen2d-cost.json").write_text(
        json.dumps(
            {
                "n_evaluations": 3,
                "scf_steps": [100, 100, 250],
                "wall_seconds": 8416.7,
                "n_processes": 2,
                "scf_level": 1,
                "scf_retries": [
                    {
                        "evaluation": 2,
                        "rung": 1,
                        "mixing_alpha": 0.05,
                        "nbroyden": 12,
                        "max_scf": 250,
                        "scf_steps": 250,
                        "converged": False,
                    }
                ],
                "scf_failed": None,
            }
        )
    )
    inputs = _scripted_cp2k(monkeypatch, [(-5.0, 30), (-1.0, 12)])
    mol.calc = third = make_calculator(settings=settings, directory=str(old))
    assert mol.get_potential_energy() == -1.0
    assert len(inputs) == 2 and "ELECTRONIC_TEMPERATURE [K] 1500.0" in inputs[0] and third.scf_level == 2
    third.close()


@needs_cp2k
def test_a_resumed_scf_failure_does_not_repeat_the_rung_that_failed(tmp_path, monkeypatch):
    """A part whose SCF failed on every rung is stored as a failure; computing it again (a stale failure, a killed
    job) does not spend another SCF on the same route, but a ladder with a new rung tries that rung at once."""
    one = ScfFallback(mixing_alpha=0.05, nbroyden=12, max_scf=250)
    settings = Cp2kSettings(**(TINY | {"scf_fallback": (one,)}))
    work = tmp_path / "site"
    _scripted_cp2k(monkeypatch, [None, None])
    mol = _h2()
    mol.calc = calc = make_calculator(settings=settings, directory=str(work))
    with pytest.raises(ScfNotConverged):
        mol.get_potential_energy()
    assert calc.scf_failed == {**calc._route(), "level": 1}
    calc.close()
    inputs = _scripted_cp2k(monkeypatch, [])
    mol.calc = again = make_calculator(settings=settings, directory=str(work))
    with pytest.raises(ScfNotConverged, match="failed on rung 1"):
        mol.get_potential_energy()
    assert inputs == [] and again.n_evaluations == 2  # no CP2K run: the same route would fail the same way
    again.close()
    longer = Cp2kSettings(**(TINY | {"scf_fallback": (one, ScfFallback(mixing_alpha=0.02, nbroyden=20, max_scf=400))}))
    inputs = _scripted_cp2k(monkeypatch, [(-2.0, 40)])
    mol.calc = third = make_calculator(settings=longer, directory=str(work))
    assert mol.get_potential_energy() == -2.0
    assert len(inputs) == 1 and "ALPHA 0.02" in inputs[0] and third.scf_level == 2
    assert third.scf_failed is None
    assert __import__("json").loads((work / "gen2d-cost.json").read_text())["scf_failed"] is None
    third.close()


@needs_cp2k
def test_the_failed_route_is_skipped_once_and_old_ledgers_name_it_too(tmp_path, monkeypatch):
    """Only the first evaluation of a resumed calculator skips the route that failed: a new geometry on it runs
    CP2K. A ledger from before ``scf_failed`` existed names the failed route from its last retry record."""
    import json

    one = ScfFallback(mixing_alpha=0.05, nbroyden=12, max_scf=250)
    settings = Cp2kSettings(**(TINY | {"scf_fallback": (one,)}))
    work = tmp_path / "site"
    work.mkdir()
    old_ledger = {  # Ti₂CO₂'s slab: the base SCF and rung 1 failed; no scf_failed key yet
        "n_evaluations": 2,
        "scf_steps": [8, 12],
        "wall_seconds": 705.4,
        "n_processes": 2,
        "scf_level": 1,
        "scf_retries": [
            {
                "evaluation": 1,
                "rung": 1,
                "mixing_alpha": 0.05,
                "nbroyden": 12,
                "max_scf": 250,
                "scf_steps": 12,
                "converged": False,
            }
        ],
    }
    (work / "gen2d-cost.json").write_text(json.dumps(old_ledger))
    inputs = _scripted_cp2k(monkeypatch, [(-3.0, 20)])
    mol = _h2()
    mol.calc = calc = make_calculator(settings=settings, directory=str(work))
    assert calc.scf_failed is not None and calc.scf_failed["level"] == 1
    with pytest.raises(ScfNotConverged, match="failed on rung 1"):
        mol.get_potential_energy()
    assert inputs == []
    mol.positions[1, 2] += 0.03  # the relaxation goes on elsewhere: that geometry gets its SCF
    assert mol.get_potential_energy() == -3.0 and len(inputs) == 1 and "ALPHA 0.05" in inputs[0]
    assert calc.scf_failed is None
    calc.close()
    # a ledger whose last retry converged names nothing
    assert make_calculator(settings=settings, directory=str(work)).scf_failed is None


@needs_cp2k
def test_a_rung_restarts_from_the_failed_scf_even_when_the_first_scf_started_fresh(tmp_path, monkeypatch):
    """A spin start asks for the atomic guess (``restart_wfn=False``); its retries still go on from the wavefunction
    its own failed SCF wrote, never from one another run left in the directory. A hot SCF that aborts is recorded
    and the rung's own SCF runs."""
    from ase.calculators import cp2k as ase_cp2k
    from ase.calculators.calculator import Calculator
    from gen2d_cp2k import Cp2kAborted

    work = tmp_path / "start"
    work.mkdir()
    (work / "gen2d-RESTART.wfn").write_text("another run's orbitals")
    old = time.time() - 3600
    os.utime(work / "gen2d-RESTART.wfn", (old, old))
    settings = Cp2kSettings(**(TINY | {"electronic_temperature_k": 300.0}))
    inputs: list[str] = []
    script = ["fail-no-wfn", "fail", "abort", "ok"]

    def fake_cp2k(self, atoms=None, properties=None, system_changes=None):
        Calculator.calculate(self, atoms, properties or ["energy"], system_changes or [])
        inputs.append(self.parameters.inp)
        what = script.pop(0)
        if what == "abort":
            raise Cp2kAborted("CP2K aborted: Cholesky decomposition failed")
        if what == "fail":
            self.wfn_file.write_text("orbitals of the failed SCF")
        with open(self.out_file, "a") as fh:
            fh.write(
                " *** SCF run NOT converged ***\n"
                if what.startswith("fail")
                else " *** SCF run converged in     9 steps ***\n"
            )
        self.results = {"energy": -4.0, "forces": np.zeros((len(self.atoms), 3))}

    monkeypatch.setattr(ase_cp2k.CP2K, "calculate", fake_cp2k)
    mol = _h2()
    mol.calc = calc = make_calculator(settings=settings, directory=str(work), restart_wfn=False)
    assert mol.get_potential_energy() == -4.0
    assert "SCF_GUESS ATOMIC" in inputs[0]  # the fresh start
    assert "SCF_GUESS ATOMIC" in inputs[1]  # rung 1: its SCF wrote no wavefunction, the old one is not its own
    assert "SCF_GUESS RESTART" in inputs[2] and "SCF_GUESS RESTART" in inputs[3]  # rung 2: from rung 1's SCF
    hot = calc.scf_retries[-1]
    assert hot["rung"] == 2 and hot["converged"] and "Cholesky" in hot["anneal_aborted"]
    calc.close()


def test_an_annealing_rung_must_be_hotter_than_the_settings():
    with pytest.raises(ValueError, match="must exceed"):
        Cp2kSettings(electronic_temperature_k=2000.0)  # the default ladder anneals at 1500 K
    Cp2kSettings(electronic_temperature_k=2000.0, scf_fallback=())


@needs_cp2k
def test_an_annealing_rung_on_real_cp2k_reaches_the_plain_energy(tmp_path):
    """On CP2K itself: two SCF steps cannot converge H₂; the annealing rung's 3000 K SCF and then its SCF at the
    settings' temperature reach the energy of a plain run, and only that SCF's energy is handed out."""
    base = TINY | {"max_scf": 60, "eps_scf": 1e-6}
    rung = ScfFallback(mixing_alpha=0.3, nbroyden=8, max_scf=60, anneal_temperature_k=3000.0, anneal_max_scf=60)
    e_plain = _h2_energy(Cp2kSettings(**(base | {"scf_fallback": ()})), tmp_path / "plain")
    stalled = Cp2kSettings(**(base | {"max_scf": 2, "scf_fallback": (rung,)}))
    e = _h2_energy(stalled, tmp_path / "anneal")
    assert e == pytest.approx(e_plain, abs=2e-4)
    ledger = __import__("json").loads((tmp_path / "anneal" / "gen2d-cost.json").read_text())
    (retry,) = ledger["scf_retries"]
    assert retry["converged"] and retry["anneal_converged"] and retry["anneal_scf_steps"] > 2
    assert ledger["scf_steps"][0] == 2 and len(ledger["scf_steps"]) == 3  # base, hot, cold


# the cold SCF of the annealing rung on the bare Ti₂CO₂ slab (dft-runs/reference/4071440aa637d67d): CP2K called it
# converged at step 8, when its energy had just moved by 0.14 and 0.087 Ha
_FALSE_CONVERGENCE = """
  Step     Update method      Time    Convergence         Total energy    Change
  ------------------------------------------------------------------------------
     1 NoMix/Diag. 0.50E-01   15.0     0.06031984     -1389.7846286120 -1.39E+03
     2 Broy./Diag. 0.50E-01   27.6     0.01003841     -1386.8881589191  2.90E+00
     6 Broy./Diag. 0.50E-01   27.9     0.00022695     -1389.9903914976 -7.11E-04
     7 Broy./Diag. 0.50E-01   27.7     0.00236689     -1389.8528032917  1.38E-01
     8 Broy./Diag. 0.50E-01   27.3     0.00000801     -1389.7656602702  8.71E-02

  *** SCF run converged in     8 steps ***
"""


def test_the_last_scf_step_s_energy_change_is_read_from_the_table():
    from gen2d_cp2k import scf_last_change

    assert scf_last_change(_FALSE_CONVERGENCE) == (8, pytest.approx(8.71e-2))
    assert scf_last_change(_SLOSHING_SCF) == (8, pytest.approx(0.357))
    assert scf_last_change("no table here") is None
    restart = "     1 NoMix/Diag. 0.50E-01   15.0     0.00000060     -1389.7846286120 -1.39E+03\n"
    assert scf_last_change(restart)[0] == 1  # a change against zero: the caller ignores step 1


@needs_cp2k
def test_a_false_convergence_is_restarted_once_then_climbs_the_ladder(tmp_path, monkeypatch):
    """CP2K's "converged" with the energy still moving by 0.087 Ha at the last step is not handed out. The SCF is
    first run again from its own wavefunction at the same settings; only when that one is false too does it climb
    the ladder, whose SCF, with its energy settled, gives the result. The threshold is not hashed."""
    from ase.calculators import cp2k as ase_cp2k
    from ase.calculators.calculator import Calculator

    settled = _FALSE_CONVERGENCE.replace("1.38E-01", "-3.10E-05").replace("8.71E-02", "4.00E-06")
    outputs: list[str] = []
    inputs: list[str] = []

    def fake_cp2k(self, atoms=None, properties=None, system_changes=None):
        Calculator.calculate(self, atoms, properties or ["energy"], system_changes or [])
        inputs.append(self.parameters.inp)
        self.wfn_file.write_text(f"orbitals of SCF {len(inputs)}")
        with open(self.out_file, "a") as fh:
            fh.write(outputs.pop(0))
        self.results = {"energy": -37.8 - len(inputs), "forces": np.zeros((len(self.atoms), 3))}

    monkeypatch.setattr(ase_cp2k.CP2K, "calculate", fake_cp2k)
    rung = ScfFallback(mixing_alpha=0.05, nbroyden=12, max_scf=250)
    settings = Cp2kSettings(**(TINY | {"scf_fallback": (rung,)}))
    assert settings.settings_hash() == Cp2kSettings(**(TINY | {"eps_energy_ha": 1.0})).settings_hash()

    # the restart settles: same settings (no rung), from the wavefunction the false convergence left
    outputs[:] = [_FALSE_CONVERGENCE, settled]
    mol = _h2()
    mol.calc = calc = make_calculator(settings=settings, directory=str(tmp_path / "a"))
    assert mol.get_potential_energy() == -37.8 - 2  # the restart's energy, not the falsely converged one
    assert calc.scf_level == 0 and calc.scf_steps == [8, 8]
    assert calc.scf_retries == [
        {"evaluation": 1, "false_convergence_restart": True, "level": 0, "scf_steps": 8, "converged": True}
    ]
    assert "SCF_GUESS RESTART" in inputs[1] and "ALPHA 0.4" in inputs[1]
    calc.close()

    # the restart is false too: the ladder's rung (its SCF settled) gives the result
    inputs.clear()
    outputs[:] = [_FALSE_CONVERGENCE, _FALSE_CONVERGENCE, settled]
    mol = _h2()
    mol.calc = calc = make_calculator(settings=settings, directory=str(tmp_path / "b"))
    assert mol.get_potential_energy() == -37.8 - 3
    assert calc.scf_level == 1 and "ALPHA 0.05" in inputs[2]
    assert [r.get("false_convergence_restart", False) for r in calc.scf_retries] == [True, False]
    assert [r["converged"] for r in calc.scf_retries] == [False, True]
    assert calc.provenance()["settings"]["eps_energy_ha"] is None and settings.energy_tolerance() == 20 * 1e-4
    assert Cp2kSettings().energy_tolerance() == pytest.approx(2e-4)
    assert Cp2kSettings(eps_scf=1e-6).energy_tolerance() == pytest.approx(2e-4)  # a guard, not a precision
    calc.close()


def test_kpoint_length_gives_each_cell_its_mesh_and_keeps_old_hashes():
    """A length rule samples every cell alike: graphene 4×4 gets the 3×3 mesh that holds its Dirac point."""
    from ase.build import graphene, mx2

    assert "kpoint_length" not in Cp2kSettings().model_dump(exclude_none=True)
    assert Cp2kSettings(kpoint_length=None).settings_hash() == Cp2kSettings().settings_hash()
    s = Cp2kSettings(kpoint_length=25.0)
    assert s.settings_hash() != Cp2kSettings().settings_hash()
    sheet = graphene(a=2.467, vacuum=7.5).repeat((4, 4, 1))
    sheet.pbc = (True, True, False)
    layer = mx2("MoS2", "2H", a=3.18, vacuum=7.5).repeat((3, 3, 1))
    layer.pbc = (True, True, False)
    assert s.mesh_for(sheet) == (3, 3, 1) and s.mesh_for(layer) == (3, 3, 1)  # z of a slab is never sampled
    assert Cp2kSettings(kpoint_length=9.0).mesh_for(sheet) is None  # one point: Γ, the Γ-only code path
    assert Cp2kSettings(kpoints=(2, 2, 1)).mesh_for(sheet) == (2, 2, 1)
    with pytest.raises(ValueError, match="not both"):
        Cp2kSettings(kpoints=(2, 2, 1), kpoint_length=20.0)
    with pytest.raises(ValueError, match="OT does not run with k-points"):
        Cp2kSettings(kpoint_length=20.0, scf="ot")


@needs_cp2k
def test_a_kpoint_length_run_writes_the_mesh_of_its_cell_and_restarts_from_it(tmp_path):
    settings = Cp2kSettings(**(TINY | {"kpoint_length": 8.0, "eps_scf": 1e-6, "scf_fallback": ()}))
    mol = _h2(box=5.0)  # periodic box of 5 Å: ceil(8 / 5) = 2 points along each vector
    mol.calc = calc = make_calculator(settings=settings, directory=str(tmp_path / "k"))
    try:
        mol.get_potential_energy()
    finally:
        calc.close()
    text = (tmp_path / "k" / "gen2d.inp").read_text()
    assert "SCHEME MONKHORST-PACK 2 2 2" in text
    assert calc.wfn_file.name == "gen2d-RESTART.kp" and calc.wfn_file.is_file()


def test_an_evaluation_whose_output_went_elsewhere_is_refused_not_taken_as_converged(tmp_path, monkeypatch):
    """When the output file is replaced while CP2K runs (a checkout or stash of the run directory), CP2K's
    writes go to the old, deleted file and the path shows no SCF for the evaluation. Its energy cannot be checked,
    so it is an error (a crash: nothing cached), never a converged SCF of 0 steps."""
    from ase.calculators import cp2k as ase_cp2k
    from ase.calculators.calculator import Calculator

    written = [" *** SCF run converged in     8 steps ***\n", ""]  # the second evaluation's lines went elsewhere

    def fake_cp2k(self, atoms=None, properties=None, system_changes=None):
        Calculator.calculate(self, atoms, properties or ["energy"], system_changes or [])
        with open(self.out_file, "a") as fh:
            fh.write(written.pop(0))
        self.results = {"energy": -31.7, "forces": np.zeros((len(self.atoms), 3))}

    monkeypatch.setattr(ase_cp2k.CP2K, "calculate", fake_cp2k)
    mol = _h2()
    mol.calc = calc = make_calculator(settings=Cp2kSettings(**TINY), directory=str(tmp_path))
    assert mol.get_potential_energy() == -31.7 and calc.scf_steps == [8]
    mol.positions[1, 2] += 0.01
    with pytest.raises(RuntimeError, match="wrote no SCF") as exc:
        mol.get_potential_energy()
    from gen2d.adsorption import _failure_name

    assert _failure_name(exc.value) == "calculator_error"
    calc.close()


@needs_cp2k
def test_a_restricted_h_atom_runs_with_smearing_and_lies_above_the_spin_polarised_one(tmp_path):
    """``spin="off"`` with an odd electron count runs under diagonalisation and smearing (the electron half-fills
    its level). For the H atom that costs PBE's spin-polarisation energy, about 1 eV (1.1 eV at the basis limit):
    restricted above unrestricted, never below."""
    energies = {}
    for spin in ("auto", "off"):
        h = Atoms("H", positions=[[3.5, 3.5, 3.5]], cell=[7.0] * 3, pbc=True)
        h.calc = make_calculator(settings=Cp2kSettings(**{**TINY, "spin": spin}), directory=str(tmp_path / spin))
        energies[spin] = h.get_potential_energy()
        h.calc.close()
    keywords = {spin: (tmp_path / spin / "gen2d.inp").read_text().split() for spin in energies}
    assert "UKS" in keywords["auto"] and "UKS" not in keywords["off"]
    assert 0.7 < energies["off"] - energies["auto"] < 1.4


@needs_cp2k
def test_an_unrestricted_calculator_writes_uks_for_a_closed_shell_system(tmp_path):
    """``unrestricted=True`` makes spin "auto" unrestricted for every system, with the multiplicity of its
    electron count; the default leaves a closed-shell H₂ restricted, and spin "off" stays off."""
    mol = _h2()
    inputs = {}
    for name, kw in {"plain": {}, "uks": {"unrestricted": True}}.items():
        calc = make_calculator(settings=Cp2kSettings(**TINY), directory=str(tmp_path / name), **kw)
        calc._prepare(mol)
        inputs[name] = calc.parameters.inp
        assert calc.spin_state(mol) == ((True, 1) if kw else (False, 1))
        assert calc.provenance().get("unrestricted", False) is bool(kw)
    assert "UKS" not in inputs["plain"]
    assert "UKS" in inputs["uks"] and "MULTIPLICITY 1" in inputs["uks"]
    off = make_calculator(settings=Cp2kSettings(**TINY | {"spin": "off"}), directory=str(tmp_path / "off"))
    off.unrestricted = True
    off._prepare(mol)
    assert "UKS" not in off.parameters.inp


def test_a_slab_with_an_odd_electron_count_in_its_dft_cell_makes_the_run_unrestricted():
    """The parity is the DFT supercell's: a hexagonal Li layer (3 electrons per atom with GTH-PBE) at a = 3 Å is
    3×3 (27 electrons, odd) for 9 Å and 2×2 (12, even) for 6 Å; a layer of even count never is, and spin "on"
    or "off" decide for themselves."""
    from pymatgen.core import Lattice, Structure

    from gen2d.scoring import get_scorer

    li = Structure(Lattice.hexagonal(3.0, 20.0), ["Li"], [[0, 0, 0.5]])
    be = Structure(Lattice.hexagonal(3.0, 20.0), ["Be"], [[0, 0, 0.5]])
    assert get_scorer("dgh.dft", min_inplane_length=9.0)._slab_needs_uks(li)
    assert not get_scorer("dgh.dft", min_inplane_length=6.0)._slab_needs_uks(li)
    assert not get_scorer("dgh.dft", min_inplane_length=9.0)._slab_needs_uks(be)
    assert not get_scorer("dgh.dft", min_inplane_length=9.0, cp2k={"spin": "on"})._slab_needs_uks(li)


@pytest.mark.slow
def test_a_run_on_an_odd_electron_slab_computes_its_slab_h_parts_unrestricted(tmp_path):
    """dgh.dft on a layer whose DFT cell has an odd electron count (Al, 3 electrons per atom, 3×3): the bare slab
    and H₂ keep their own rule, and the site and its spin-start check get an unrestricted calculator. EMT stands
    in for CP2K, so only which calculator each part asks for is tested here."""
    from ase.calculators.emt import EMT
    from pymatgen.core import Lattice, Structure

    from gen2d.scoring import get_scorer

    layer = Structure(Lattice.hexagonal(2.86, 20.0), ["Al"], [[0, 0, 0.5]])
    options = {
        "workdir": str(tmp_path),
        "n_sites": 1,
        "min_inplane_length": 8.0,
        "prerelax": None,
        "spin_starts": [0.0],
        "relax_slab_reference": False,
        "site_kinds": ["ontop"],
        "max_sites_per_face": 1,
    }
    scorer = get_scorer("dgh.dft", **options)
    scorer.available = lambda: (True, "")
    asked = []

    def fake(directory, unrestricted=False):
        asked.append((Path(directory).name, unrestricted))
        return EMT()

    scorer._make_calculator = fake
    res = scorer.score([layer])[0]
    assert res.extra["supercell"] == [3, 3], res.failure
    kinds = {name: flag for name, flag in asked}
    assert kinds["slab"] is False and not any(flag for name, flag in asked if name.startswith("h2"))
    sites = [flag for name, flag in asked if name.startswith("site_")]
    assert sites and all(sites)
    assert kinds.get("start_H+0") is True
    assert any("odd electron count" in n for n in res.provenance.notes)
    import json

    run = json.loads((Path(res.extra["workdir"]) / "run.json").read_text())
    assert run["slab_h_parts_unrestricted"] is True  # the frames carry it (gen2d.frames reads run.json)
