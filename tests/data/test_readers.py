"""Dataset readers: 2DMatPedia and C2DB-style ASE dbs, MC2D JSON, folders with a labels CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.db import connect

from conftest import make_graphene, make_mos2, write_cif
from gen2d.data.readers import read_any, read_ase_db, read_folder, read_mc2d_json
from gen2d.structures import to_ase, validate_ingest


def test_2dmatpedia_rows_and_labels(data_dir):
    outcomes = list(read_ase_db(data_dir / "2dmatpedia_filtered.db"))
    records = [o.record for o in outcomes if o.record]
    assert len(outcomes) == 1224 and len(records) == 1224
    top_down = [r for r in records if r.labels["synth_label"] == 1]
    assert len(top_down) == 410  # the data README's count of exfoliated (top-down) entries
    assert all(r.labels["synth_label"] is None for r in records if r.properties["discovery_process"] == "bottom-up")
    stable = sum(r.labels["e_hull"] is not None and r.labels["e_hull"] <= 0.1 for r in records)
    assert stable == 424  # README: 424 with E_hull <= 0.1 eV/atom
    assert records[0].source_id.startswith("2dm-")
    assert records[0].labels["units"]["e_hull"] == "eV/atom"


def test_mc2d_reads_all_258_including_magnetic_kinds(data_dir):
    outcomes = list(read_mc2d_json(data_dir / "mc2d_258_exfoliable.json"))
    recs = [o.record for o in outcomes if o.record]
    assert len(recs) == 258
    assert all(r.labels["synth_label"] == 1 for r in recs)
    # magnetic entries label kinds "Co1": the element must still be Co
    coi2 = [r for r in recs if r.source_id.startswith("CoI2")]
    assert coi2 and {el.symbol for el in coi2[0].structure.composition.elements} == {"Co", "I"}
    mos2 = [r for r in recs if r.structure.composition.reduced_formula == "MoS2"]
    assert mos2 and validate_ingest(mos2[0].structure).ok


def test_c2db_style_db(tmp_path):
    path = tmp_path / "c2db.db"
    with connect(str(path)) as db:
        db.write(to_ase(make_mos2()), uid="MoS2-b3b4685fb6e1", ehull=0.0, hform=-0.91)
        db.write(to_ase(make_graphene()), uid="C2-a6735a4a3797", ehull=0.05)
    recs = [o.record for o in read_ase_db(path)]
    assert [r.source_id for r in recs] == ["MoS2-b3b4685fb6e1", "C2-a6735a4a3797"]
    assert recs[1].labels["e_hull"] == pytest.approx(0.05)
    assert recs[0].labels["reference"] == "C2DB (PBE)"


def test_folder_with_labels_and_bad_files(tmp_path):
    write_cif(make_mos2(), tmp_path / "mos2.cif")
    write_cif(make_graphene(), tmp_path / "graphene.cif")
    (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a 3.1\nloop_\n")
    (tmp_path / "notes.txt").write_text("not a structure")
    (tmp_path / "labels.csv").write_text("file,e_hull,synth_label\nmos2.cif,0.0,1\ngraphene.cif,0.02,1\n")
    outcomes = list(read_folder(tmp_path))
    recs = {o.record.source_id: o.record for o in outcomes if o.record}
    rej = [o.rejection for o in outcomes if o.rejection]
    assert set(recs) == {"mos2.cif", "graphene.cif"}
    assert recs["mos2.cif"].labels["synth_label"] == 1 and recs["graphene.cif"].labels["e_hull"] == 0.02
    assert [(r.source_id, r.reason) for r in rej] == [("broken.cif", "unreadable_file")]


def test_labels_csv_with_wrong_columns_is_named(tmp_path):
    write_cif(make_mos2(), tmp_path / "mos2.cif")
    (tmp_path / "labels.csv").write_text("name_of_thing,colour\nmos2.cif,blue\n")
    outcomes = list(read_folder(tmp_path))
    assert [o.rejection.reason for o in outcomes if o.rejection] == ["bad_labels_csv"]
    assert [o.record.source_id for o in outcomes if o.record] == ["mos2.cif"]  # the structure still comes


def test_read_any_dispatch(tmp_path, data_dir):
    p = write_cif(make_mos2(), tmp_path / "one.cif")
    assert next(read_any(p)).record.source_id == "one.cif"
    assert next(read_any(tmp_path / "missing.cif")).rejection.reason == "unreadable_file"
    first = next(read_any(data_dir / "mc2d_258_exfoliable.json"))
    assert first.record is not None and first.record.labels["synth_label"] == 1
