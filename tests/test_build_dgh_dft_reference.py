"""scripts/build_dgh_dft_reference.py: its materials are buildable monolayers, its literature rows resolve to
sourced published values at their published site, and its table names a desorbed H instead of hiding it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_script
from pymatgen.core import Composition


@pytest.fixture(scope="module")
def build():
    return load_script("build_dgh_dft_reference")


def test_every_literature_label_resolves_to_a_sourced_published_row(build):
    labelled = {name: spec for name, spec in build.MATERIALS.items() if spec.get("literature")}
    assert len(labelled) >= 12  # the four basal planes and eight MXene "site 1" rows
    for name, spec in labelled.items():
        lit = build.literature_value(spec["literature"])
        assert lit is not None, name
        assert lit["precision_eV"] > 0 and -3.0 < lit["dg_h_eV"] < 4.0


def test_every_material_builds_as_one_monolayer_of_its_formula(build):
    from gen2d.structures import validate_ingest

    for name, spec in build.MATERIALS.items():
        structure = build.build_structure(spec)
        assert validate_ingest(structure).ok, name
        if "mxene" in spec:
            m, x, t, _ = spec["mxene"]
            assert structure.composition.reduced_composition == Composition({m: 2, x: 1, t: 2}), name


@pytest.mark.parametrize("name, termination_height", [("Sc2NF2-site1", None), ("Sc2CO2-site1", 0.79)])
def test_an_mxene_site1_row_reaches_the_hollow_over_the_outer_metal(build, name, termination_height):
    """Its published site is H over the outermost metal: a hollow of the termination layer, which the MLIP stage
    (hollow sites only) must offer, above the termination plane. CHGNet relaxes Sc₂CO₂'s O plane to 0.79 Å above
    the outer Sc, within the 0.9 Å in which pymatgen's finder counts Sc as surface too and finds no hollow."""
    from gen2d.adsorption import AdsorptionSettings, _face_sites

    spec = build.MATERIALS[name]
    assert spec["site_kinds"] == ["hollow"]
    structure = build.build_structure(spec)
    metal = name[:2]
    termination = {"Sc2NF2-site1": "F", "Sc2CO2-site1": "O"}[name]
    if termination_height is not None:  # lower each termination plane onto its metal plane
        z = structure.cart_coords[:, 2]
        mid = z.mean()
        for i, site in enumerate(structure):
            if site.specie.symbol == termination:
                side = np.sign(site.coords[2] - mid)
                metal_z = max(
                    (s.coords[2] for s in structure if s.specie.symbol == metal and np.sign(s.coords[2] - mid) == side),
                    key=lambda v: abs(v - mid),
                )
                structure.translate_sites([i], [0, 0, metal_z + side * termination_height - site.coords[2]], False)
    sites, _ = _face_sites(structure, AdsorptionSettings(site_kinds=tuple(spec["site_kinds"])))
    assert sites and {kind for kind, _ in sites} == {"hollow"}
    metals = [s for s in structure if s.specie.symbol == metal]
    outer = max(metals, key=lambda s: s.coords[2])
    lattice = structure.lattice
    over = []
    for _, pos in sites:
        diff = lattice.get_fractional_coords(pos) - outer.frac_coords
        diff[:2] -= np.round(diff[:2])
        if np.linalg.norm(lattice.get_cartesian_coords([diff[0], diff[1], 0.0])) < 0.3:
            over.append(pos[2] - outer.coords[2])
    top_t = max(s.coords[2] for s in structure if s.specie.symbol == termination)
    assert over and all(top_t - outer.coords[2] < dz < 3.5 for dz in over)


def _row(flags, value=2.45, ok=False):
    return {
        "ok": ok,
        "failure": {"reason": "no_valid_site"},
        "sites": [{"delta_g_h": value, "flags": flags}],
    }


def test_the_table_shows_a_desorbed_h_with_its_value_and_no_other_failure(build):
    assert build.desorbed_value(_row(["h_desorbed"])) == pytest.approx(2.45)
    assert build.desorbed_value(_row(["h_desorbed", "h_moved_site_in_refinement"])) == pytest.approx(2.45)
    # a broken layer or an SCF failure is not "barely binds"
    assert build.desorbed_value(_row(["h_desorbed", "layer_broke"])) is None
    assert build.desorbed_value(_row(["scf_not_converged"])) is None
    assert build.desorbed_value({"ok": False, "sites": []}) is None


def _scorers_main_would_run(build, monkeypatch, tmp_path, *flags):
    """The (dgh.dft, dgh.mlip) scorers main() hands to run_material for graphene, nothing computed."""
    seen = []

    def record(name, spec, dft, mlip):
        seen.append((dft, mlip))
        raise RuntimeError("recorded, not run")

    monkeypatch.setattr(build, "run_material", record)
    build.main(["--materials", "graphene", "--out", str(tmp_path / "rows.jsonl"), "--workdir", str(tmp_path), *flags])
    assert len(seen) == 1
    assert not (tmp_path / "rows.jsonl").exists()  # a failed material writes no row
    return seen[0]


def test_a_row_is_built_with_dgh_dft_s_own_protocol_unless_told_otherwise(build, monkeypatch, tmp_path):
    from gen2d_dgh_dft import DFT_PROTOCOL

    dft, _ = _scorers_main_would_run(build, monkeypatch, tmp_path)
    assert dft.refine.fmax == DFT_PROTOCOL["fmax"] == 0.1
    assert dft.refine.prerelax == DFT_PROTOCOL["prerelax"] == "chgnet"
    assert tuple(dft.refine.spin_starts) == tuple(DFT_PROTOCOL["spin_starts"]) == (0.0,)
    # the older protocol stays one flag away: clean-slab start, no spin check, a tighter criterion
    dft, _ = _scorers_main_would_run(
        build, monkeypatch, tmp_path, "--prerelax", "none", "--spin-starts", "--fmax", "0.05"
    )
    assert dft.refine.prerelax is None
    assert tuple(dft.refine.spin_starts) == ()
    assert dft.refine.fmax == 0.05


def test_the_tables_cp2k_time_is_every_process_of_the_row_not_the_last_one(build):
    """A row resumed across processes keeps its last process's wall time in ``wall_seconds``; the table shows the
    CP2K time its cost ledgers summed over all of them (a 6.7 h row once read 0.26 h)."""
    import json
    from pathlib import Path

    path = Path(build.DEFAULT_OUT)
    row = json.loads(path.read_text().splitlines()[0])
    row["wall_seconds"] = 900.0
    row["provenance"]["settings"]["cost"] = {"n_evaluations": 31, "scf_steps_total": 1103, "wall_seconds": 24120.0}

    def cp2k_hours(table: str) -> str:
        head, _, line = table.splitlines()
        columns = [c.strip() for c in head.strip("|").split("|")]
        return [c.strip() for c in line.strip("|").split("|")][columns.index("CP2K wall (h)")]

    assert cp2k_hours(build.markdown_table({"X": row})) == "6.70"
    del row["provenance"]["settings"]["cost"]
    assert cp2k_hours(build.markdown_table({"X": row})) == "—"  # unknown, never the last process's 0.25


def test_each_shipped_rows_slab_is_the_slab_its_dft_energy_was_computed_on(build, monkeypatch, tmp_path):
    """The fidelity benchmark evaluates every MLIP on a row's ``geometry``: its slab must be the bare slab of the
    DFT E(slab), not the MLIP-prepared first frame of the site (which has the atoms around H moved: 0.51 Å on
    h-BN). Checked against the run directories in git, and refreshing the stored rows changes nothing."""
    import shutil
    from pathlib import Path

    from ase.io import read

    root = Path(build.__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the rows name their run directories from the repository's root
    rows = build.read_rows(Path(build.DEFAULT_OUT))
    prepared = 0
    for name, row in rows.items():
        if not row.get("ok"):  # a named failure (the queue stores those too) has no site and no geometry
            assert row["failure"]["reason"] and row["best_site"] is None, name
            continue
        run = Path(row["best_site"]["run_dir"])
        if not (run.parent / "slab").is_dir():
            continue
        slab_frame = run.parent / "slab" / "frame.traj"
        stored = np.array(row["geometry"]["slab_positions"])
        if slab_frame.is_file():
            assert np.allclose(stored, read(str(slab_frame), index=-1).positions, atol=1e-9), name
        else:  # a clean-slab start: the site's first frame is that slab plus H
            assert "-pre-" not in run.name, name
            assert np.allclose(stored, read(str(run / "relax.traj"), index=0).positions[:-1], atol=1e-9), name
        if "-pre-" in run.name:
            # a start the MLIP prepared with the slab atoms moved: there the check above tells the bare slab from
            # the prepared frame (2H-MoSe2's preparation moved H alone: its first frame's slab is the bare slab)
            first = read(str(run / "relax.traj"), index=0).positions[:-1]
            prepared += not np.allclose(stored, first, atol=1e-3)
    assert prepared >= 3
    copy = tmp_path / "rows.jsonl"
    shutil.copy(build.DEFAULT_OUT, copy)
    assert build.refresh_geometry(copy) == []
    # the manifest was written for exactly these rows; the fidelity record for rows still here unchanged (the DFT
    # queue adds rows between its runs: those wait for the next measurement, which the record's row list shows)
    import hashlib
    import json

    sha = hashlib.sha256(Path(build.DEFAULT_OUT).read_bytes()).hexdigest()
    assets = Path(build.DEFAULT_OUT).parent
    assert json.loads((assets / "MANIFEST.json").read_text())["rows_sha256"] == sha
    fidelity = json.loads((assets / "fidelity.json").read_text())
    measured = fidelity["row_sha256"]
    assert sorted(measured) == sorted(fidelity["materials"]) and len(measured) == fidelity["rows"]
    for name, digest in measured.items():
        assert build.row_digest(rows[name]) == digest, f"{name} changed after its fidelity was measured"


def test_a_prepared_site_without_its_slab_frame_is_refused_by_name(build, tmp_path):
    """Without ``slab/frame.traj`` the bare slab of an MLIP-prepared site is unknown: a named error, never the
    prepared frame."""
    from ase import Atoms
    from ase.io import write

    site = tmp_path / "run" / "site_0-abc-pre-chgnet"
    site.mkdir(parents=True)
    first = Atoms("MoS2H", positions=[[0, 0, 0], [1, 0, 1], [1, 0, -1], [1, 0, 2.4]], cell=[3, 3, 15])
    with pytest.raises(FileNotFoundError, match="MLIP-prepared"):
        build._slab_reference_positions(site, first)
    clean = tmp_path / "run" / "site_0-abc"
    assert np.allclose(build._slab_reference_positions(clean, first), first.positions[:-1])
    (tmp_path / "run" / "slab").mkdir()
    write(str(tmp_path / "run" / "slab" / "frame.traj"), first[:-1])
    assert np.allclose(build._slab_reference_positions(site, first), first.positions[:-1])
    write(str(tmp_path / "run" / "slab" / "frame.traj"), first[:2])
    with pytest.raises(ValueError, match="atoms"):
        build._slab_reference_positions(site, first)


def test_the_mlip_column_is_the_value_of_the_site_dft_started_from(build):
    """Two MXene hollows both have O nearest: matching by face, kind and nearest element picks one of them; the
    refined site's own ``start_delta_g_h`` does not."""
    sites = {("top", "hollow", "O"): {"delta_g_h": 1.65}}  # the last of the two hollows, as the lookup keeps it
    best = {"face": "top", "kind": "hollow", "nearest_atom": "O", "start_delta_g_h": 0.42}
    assert build._mlip_same_site(best, sites) == 0.42
    assert build._mlip_same_site(best | {"start_delta_g_h": None}, sites) == 1.65  # rows refined before
    assert build._mlip_same_site(None, sites) is None


def test_a_stored_row_made_under_other_refine_settings_is_kept_and_the_build_says_which(
    build, monkeypatch, tmp_path, capsys
):
    """The builder reuses a stored row without recomputing it; when the row was refined under other settings than
    those asked for (here a tighter force criterion and no pre-relaxation), it says so and names them."""
    from gen2d.fileio import write_jsonl_atomic as write_jsonl

    dft, _ = _scorers_main_would_run(build, monkeypatch, tmp_path)
    wanted = dft.refine.as_dict()
    row = {
        "material": "graphene",
        "ok": True,
        "best_site": {"spin_starts": {"energies_eV": {"+0": -1.0}}},
        "provenance": {
            "settings": {
                "cp2k_settings_hash": dft.cp2k.settings_hash(),
                "cp2k": dft.cp2k.model_dump(mode="json"),
                "refine": {k: v for k, v in wanted.items() if k != "prerelax"} | {"fmax": 0.05},
            }
        },
    }
    out = tmp_path / "rows.jsonl"
    write_jsonl(out, [row])

    def never(*_a, **_k):
        raise AssertionError("a stored row was computed again")

    monkeypatch.setattr(build, "run_material", never)
    build.main(["--materials", "graphene", "--out", str(out), "--workdir", str(tmp_path)])
    said = capsys.readouterr().out
    assert "graphene: stored under other refine settings" in said
    assert "fmax 0.05 there, 0.1 asked" in said and "prerelax None there, 'chgnet' asked" in said
    assert build.refine_differences(row, wanted) == {"fmax": (0.05, 0.1), "prerelax": (None, "chgnet")}
    # a spin start asked for that the row did not make is named; one the row has beyond the request is not
    more = wanted | {"spin_starts": [0.0, -1.0]}
    stored = {"provenance": {"settings": {"refine": wanted}}}
    assert build.refine_differences(stored, more) == {"spin_starts": ([0.0], [0.0, -1.0])}
    assert build.refine_differences({"provenance": {"settings": {"refine": more}}}, wanted) == {}
    # the same settings: plainly stored, and spin starts or vibrations held beyond the request are no difference
    row["provenance"]["settings"]["refine"] = wanted | {"vibrations": True}
    write_jsonl(out, [row])
    build.main(["--materials", "graphene", "--out", str(out), "--workdir", str(tmp_path)])
    assert capsys.readouterr().out.strip().endswith("graphene: stored")


def test_the_1t_prime_row_is_the_distorted_phase_with_its_mo_zigzag(build):
    """1T′-MoS₂ (P2₁/m) from 2DMatPedia: six atoms, and the distortion that defines it, Mo pairs drawn into zigzag
    chains at ≈ 2.8 Å (the undistorted 1T phase has every Mo–Mo at a = 3.19 Å)."""
    structure = build.build_structure(build.MATERIALS["MoS2-1Tprime"])
    assert len(structure) == 6 and structure.composition.reduced_formula == "MoS2"
    mo_mo = sorted(n.nn_distance for n in structure.get_neighbors(structure[0], 3.3) if n.specie.symbol == "Mo")
    assert mo_mo and 2.6 < mo_mo[0] < 2.95
    with pytest.raises(ValueError, match="not in the archive"):
        build.build_structure({"matpedia_poscar": ("POSCAR-NoSuchLayer", "MoS2", "P2_1/m")})
