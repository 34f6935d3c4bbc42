"""Dataset readers: 2DMatPedia and C2DB-style ASE dbs, MC2D JSON, folders with a labels CSV."""

from __future__ import annotations

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


def test_mc2d_element_comes_from_the_element_field_then_the_kind():
    from gen2d.data.readers import mc2d_element

    assert mc2d_element(["Co1", 0.0, 0.0, 0.0, "Co"]) == "Co"
    assert mc2d_element(["X2", 0.0, 0.0, 0.0, "Fe"]) == "Fe"  # a free kind name: the element field decides
    assert mc2d_element(["Co2", 0.0, 0.0, 0.0]) == "Co"  # no element field: the kind's leading symbol
    with pytest.raises(ValueError, match="unknown_element"):
        mc2d_element(["12", 0.0, 0.0, 0.0])


def test_one_mc2d_and_one_2dmatpedia_parser_serve_training_and_pu(data_dir):
    # The EGNN loader and the PU datasets read through gen2d.data.readers: the same entries, in the
    # same order, with the same elements as the records gen2d ingests.
    from gen2d_synth_pu.datasets import read_2dmatpedia, read_mc2d

    from gen2d.diffusion.train import _read_2dmatpedia, _read_mc2d

    mc2d = data_dir / "mc2d_258_exfoliable.json"
    ingest = [sorted(o.record.structure.species, key=str) for o in read_mc2d_json(mc2d)]
    egnn = [sorted(r.species) for r in _read_mc2d(mc2d)]
    pu = [sorted(layer.structure.species, key=str) for layer in read_mc2d(mc2d)]
    assert len(ingest) == len(egnn) == len(pu) == 258
    assert [[str(s) for s in x] for x in ingest] == egnn == [[str(s) for s in x] for x in pu]

    db = data_dir / "2dmatpedia_filtered.db"
    ingest = {o.record.source_id: o.record for o in read_ase_db(db)}
    egnn = list(_read_2dmatpedia(db))
    pu = read_2dmatpedia(db)
    assert [r.source_id for r in egnn] == list(ingest)
    assert all(sorted(r.species) == sorted(str(s) for s in ingest[r.source_id].structure.species) for r in egnn)
    assert all(r.labels["e_hull"] == ingest[r.source_id].labels["e_hull"] for r in egnn)
    assert len(pu) == 1223  # the one from-literature row is neither positive nor unlabeled
    assert sum(layer.label for layer in pu) == 410 == sum(r.labels["synth"] == 1.0 for r in egnn)


def test_ase_db_rows_name_a_corrupt_row_and_go_on(tmp_path):
    from gen2d.data.readers import ase_db_rows

    path = tmp_path / "three.db"
    with connect(str(path)) as db:
        for _ in range(3):
            db.write(to_ase(make_mos2()))
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("UPDATE systems SET positions = x'00' WHERE id = 2")
    con.commit()
    con.close()
    rows = list(ase_db_rows(path))
    assert [i for i, _ in rows] == [1, 2, 3]
    assert isinstance(rows[1][1], Exception) and not isinstance(rows[2][1], Exception)
    assert [o.rejection.reason for o in read_ase_db(path) if o.rejection] == ["unreadable_row"]
