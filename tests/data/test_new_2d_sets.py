"""Readers of the 2DMatPedia POSCAR tarball and PaddleMaterial's 2D CSVs, on the first members and rows
of the real files (the whole sets take minutes), plus hand-made broken members and rows."""

from __future__ import annotations

import csv
import io
import tarfile

import numpy as np
import pytest
from conftest import make_mos2
from pymatgen.core import Composition
from pymatgen.io.vasp import Poscar

from gen2d.data.readers import is_paddle2d, is_poscar_tarball, read_any, read_paddle2d, read_poscar_tgz
from gen2d.structures import layer_thickness, validate_ingest

TGZ = "2dmatpedia_all_poscars.tgz"


def _in_gen2d_frame(s) -> bool:
    m = s.lattice.matrix
    return abs(m[0, 2]) < 1e-8 and abs(m[1, 2]) < 1e-8 and np.allclose(m[2, :2], 0.0)


def _add_member(tf: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _paddle_rows(path, n_good: int, n_bad: int) -> list[dict]:
    """The first n_good rows with a sane E_hull and the first n_bad with an impossible one."""
    csv.field_size_limit(10**9)
    good, bad = [], []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            (bad if float(row["ehull"]) < -1 else good).append(row)
    return good[:n_good] + bad[:n_bad]


def _write_paddle_csv(path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["", "material_id", "energy", "cif", "ehull", "formula"])
        w.writeheader()
        w.writerows(rows)


def test_poscar_tarball_members_come_back_as_oriented_primitive_cells(data_dir):
    outcomes = list(read_poscar_tgz(data_dir / TGZ, limit=4))
    assert len(outcomes) == 4 and all(o.record is not None for o in outcomes)
    for o in outcomes:
        rec = o.record
        assert rec.source_id.startswith("POSCAR-")
        # the files are supercells (README: 2-261 atoms); the primitive cell is a proper divisor
        assert len(rec.structure) < rec.properties["supercell_sites"]
        assert rec.properties["supercell_sites"] % len(rec.structure) == 0
        assert _in_gen2d_frame(rec.structure)
        assert validate_ingest(rec.structure).ok
        assert rec.labels["e_hull"] is None and rec.labels["synth_label"] is None  # the set has no labels
    # the first member, Li12V20O56 as 88 sites, is Li3V5O14 x 4 in its 22-site primitive cell
    assert outcomes[0].record.structure.composition.reduced_formula == "Li3V5O14"
    assert len(outcomes[0].record.structure) == 22


def test_a_broken_member_is_named_and_the_rest_go_on(tmp_path):
    mos2 = make_mos2()
    path = tmp_path / "mini.tgz"
    with tarfile.open(path, "w:gz") as tf:
        _add_member(tf, "2D/POSCAR-broken", "not a POSCAR\n1.0\n")
        _add_member(tf, "2D/README", "not a structure member: skipped")
        _add_member(tf, "2D/POSCAR-Mo4S8", Poscar(mos2 * (2, 2, 1)).get_str())
    outcomes = list(read_poscar_tgz(path))
    assert [o.rejection.reason for o in outcomes if o.rejection] == ["unreadable_file"]
    assert outcomes[0].rejection.source_id == "POSCAR-broken"
    recs = [o.record for o in outcomes if o.record]
    assert len(recs) == 1 and len(recs[0].structure) == 3  # the 12-site supercell reduced to MoS2
    assert abs(layer_thickness(recs[0].structure) - layer_thickness(mos2)) < 1e-6


def test_paddle2d_rows_labels_and_corrupt_rows(data_dir, tmp_path):
    rows = _paddle_rows(data_dir / "paddle2d" / "val.csv", 4, 2)
    _write_paddle_csv(tmp_path / "val.csv", rows)
    outcomes = list(read_paddle2d(tmp_path / "val.csv"))
    assert [o.rejection.reason for o in outcomes if o.rejection] == ["impossible_e_hull"] * 2
    recs = [o.record for o in outcomes if o.record]
    assert [r.source_id for r in recs] == [r["material_id"] for r in rows[:4]]
    for rec, row in zip(recs, rows[:4]):
        assert rec.labels["e_hull"] == pytest.approx(float(row["ehull"]))
        assert rec.labels["synth_label"] is None
        assert rec.structure.composition.reduced_formula == Composition(row["formula"]).reduced_formula
        assert _in_gen2d_frame(rec.structure) and validate_ingest(rec.structure).ok


def test_paddle2d_oblique_cif_is_oriented_with_c_along_z(data_dir):
    """README: some paddle2d cells have alpha/beta != 90 (the vacuum vector tilted); the layer must still
    come out thin, with a, b in-plane and c along z."""
    csv.field_size_limit(10**9)
    with open(data_dir / "paddle2d" / "val.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if "_cell_angle_alpha   90.0" not in r["cif"])
    path = data_dir / "paddle2d" / "val.csv"
    rec = next(o.record for o in read_paddle2d(path) if o.record and o.record.source_id == row["material_id"])
    assert _in_gen2d_frame(rec.structure)
    assert layer_thickness(rec.structure) < 8.0
    assert validate_ingest(rec.structure).ok


def test_paddle2d_limit_and_folder(data_dir):
    outcomes = list(read_paddle2d(data_dir / "paddle2d", limit=3))
    assert len(outcomes) == 3 and all(o.record and o.record.properties["split"] == "test" for o in outcomes)


def test_read_any_dispatches_the_new_formats(data_dir, tmp_path):
    assert is_paddle2d(data_dir / "paddle2d") and is_paddle2d(data_dir / "paddle2d" / "val.csv")
    assert is_poscar_tarball(data_dir / TGZ) and not is_paddle2d(data_dir / "mc2d_258_exfoliable.json")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,e_hull\na.cif,0.1\n")
    assert not is_paddle2d(labels)  # a labels CSV is not a structure set
    first = next(read_any(data_dir / TGZ))
    assert first.record.source == "2dmatpedia_poscar"
    first = next(read_any(data_dir / "paddle2d"))
    assert first.record.source == "paddle2d" and first.record.labels["e_hull"] is not None


def test_gen2d_ingest_reads_a_poscar_tarball_and_a_paddle2d_csv(data_dir, tmp_path):
    """The ordinary ingest path takes both sets: validated, upserted, corrupt rows listed by reason."""
    import json

    from typer.testing import CliRunner

    from gen2d.cli import app

    path = tmp_path / "mini.tgz"
    with tarfile.open(path, "w:gz") as tf:
        _add_member(tf, "2D/POSCAR-Mo4S8", Poscar(make_mos2() * (2, 2, 1)).get_str())
        _add_member(tf, "2D/POSCAR-broken", "junk\n")
    store = f"monty://{tmp_path / 'store'}"
    res = CliRunner().invoke(app, ["ingest", str(path), "--set", "poscars", "--store", store, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["accepted"] == 1 and doc["rejection_reasons"] == {"unreadable_file": 1}

    _write_paddle_csv(tmp_path / "rows.csv", _paddle_rows(data_dir / "paddle2d" / "test.csv", 2, 1))
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "rows.csv"), "--set", "paddle", "--store", store, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["accepted"] == 2 and doc["rejection_reasons"] == {"impossible_e_hull": 1}
