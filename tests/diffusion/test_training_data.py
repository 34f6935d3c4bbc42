"""Training data from several sources: dispatch by name, deduplication by content hash (the first source
wins), the per-source cache, the formula hold-out, nested training subsets, and the device-derived
settings (precision, batch size, workers) on a CPU."""

from __future__ import annotations

import csv
import io
import tarfile

import numpy as np
import pytest
import torch
from conftest import make_graphene, make_mos2
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

from gen2d.diffusion.train import (
    MonolayerArrays,
    TrainConfig,
    _BatchStream,
    load_training_set,
    resolve_amp,
    resolve_batch_size,
    resolve_num_workers,
    source_kind,
    split_records,
    train,
    training_subset,
)


def _add_member(tf: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def mini_data(tmp_path):
    """A paddle2d folder with MoS2 (E_hull 0.05) and a tarball with a 2x2 MoS2 supercell and graphene."""
    mos2, graphene = make_mos2(), make_graphene()
    root = tmp_path / "data"
    (root / "paddle2d").mkdir(parents=True)
    with open(root / "paddle2d" / "val.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["", "material_id", "energy", "cif", "ehull", "formula"])
        w.writeheader()
        w.writerow({"": 0, "material_id": "MoS2-p", "energy": -7.0, "cif": str(CifWriter(mos2)), "ehull": 0.05})
        w.writerow({"": 1, "material_id": "bad", "energy": -7.0, "cif": str(CifWriter(mos2)), "ehull": -1775.0})
    with tarfile.open(root / "mini.tgz", "w:gz") as tf:
        _add_member(tf, "2D/POSCAR-Mo4S8", Poscar(mos2 * (2, 2, 1)).get_str())
        _add_member(tf, "2D/POSCAR-C8", Poscar(graphene * (2, 2, 1)).get_str())
    return root


def _cfg(data_dir, sources, **over) -> TrainConfig:
    return TrainConfig(data_dir=str(data_dir), sources=sources, **over)


def test_sources_are_dispatched_by_name(mini_data, data_available):
    from gen2d.settings import get_settings

    shared = get_settings().data_dir
    assert source_kind(mini_data / "mini.tgz") == "poscar_tgz"
    assert source_kind(mini_data / "paddle2d") == "paddle2d"
    assert source_kind(mini_data / "paddle2d" / "val.csv") == "paddle2d"
    assert source_kind(shared / "2dmatpedia_filtered.db") == "2dmatpedia"
    assert source_kind(shared / "mc2d_258_exfoliable.json") == "mc2d"


def test_duplicates_across_formats_are_dropped_and_the_first_source_wins(mini_data):
    stats: dict = {}
    recs, dropped = load_training_set(_cfg(mini_data, ["paddle2d", "mini.tgz"]), stats)
    assert dropped == {"impossible_e_hull": 1, "duplicate": 1}
    assert sorted((r.source, r.formula) for r in recs) == [("2dmatpedia_poscar", "C"), ("paddle2d", "MoS2")]
    mos2 = next(r for r in recs if r.formula == "MoS2")
    assert mos2.labels["e_hull"] == pytest.approx(0.05) and len(mos2.species) == 3
    # no discovery process behind these sources: a missing synth label stays masked, not a PU negative
    assert all(r.labels["synth"] is None for r in recs)
    assert stats["mini.tgz"]["dropped"] == {"duplicate": 1} and stats["mini.tgz"]["read"] == 2
    assert len(stats["paddle2d"]["sha256"]) == 64

    recs, dropped = load_training_set(_cfg(mini_data, ["mini.tgz", "paddle2d"]))
    assert dropped == {"impossible_e_hull": 1, "duplicate": 1}
    assert next(r for r in recs if r.formula == "MoS2").source == "2dmatpedia_poscar"  # the tarball came first

    recs, dropped = load_training_set(_cfg(mini_data, ["paddle2d", "mini.tgz"], deduplicate=False))
    assert len(recs) == 3 and "duplicate" not in dropped


def test_a_fully_read_source_is_cached_with_hashes_and_verdicts(mini_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GEN2D_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(mini_data, ["mini.tgz"], strict_valid_only=True)
    first, _ = load_training_set(cfg)
    cached = sorted((tmp_path / "cache" / "training_sources").glob("poscar_tgz-*.json.gz"))
    assert len(cached) == 1
    second, _ = load_training_set(cfg)
    assert [r.source_id for r in first] == [r.source_id for r in second]
    for a, b in zip(first, second):
        assert a.content_hash == b.content_hash and a.content_hash.startswith("g2d-")
        assert a.strict_ok is True and b.strict_ok is True
        assert np.array_equal(a.frac, b.frac) and np.array_equal(a.lattice2d, b.lattice2d)
        assert np.array_equal(a.z, b.z) and a.species == b.species
    # a source stopped early by max_records is not cached as if it were whole
    monkeypatch.setenv("GEN2D_CACHE", str(tmp_path / "cache2"))
    load_training_set(_cfg(mini_data, ["mini.tgz"], max_records=1))
    assert not list((tmp_path / "cache2").glob("**/*.json.gz"))


def test_original_sources_keep_their_records_by_default(data_available):
    """deduplicate=auto is off for the 2DMatPedia db and MC2D, so the earlier models' splits reproduce."""
    cfg = TrainConfig(sources=["2dmatpedia_filtered.db"], max_records=40)
    recs, dropped = load_training_set(cfg)
    assert len(recs) == 40 and "duplicate" not in dropped
    assert {r.labels["synth"] for r in recs} <= {0.0, 1.0}  # the PU rule still applies to 2DMatPedia


def _records(formulas: list[str]) -> list[MonolayerArrays]:
    from pymatgen.core import Composition

    out = []
    for k, f in enumerate(formulas):
        species = [str(el) for el, n in Composition(f).items() for _ in range(int(n))]
        n = len(species)
        out.append(MonolayerArrays("test", f"{f}-{k}", species, np.eye(2) * 3.0, np.zeros((n, 2)), np.zeros(n), {}))
    return out


def test_formula_hold_out_keeps_every_validation_formula_out_of_training():
    formulas = ["MoS2", "WS2", "BN", "C", "MoSe2", "SnS2", "PtSe2", "GaS", "InSe", "HfS2"]
    recs = _records(formulas * 3 + ["Mo2S4"])  # Mo2S4 reduces to MoS2: the same formula
    train_set, val = split_records(recs, seed=0, val_fraction=0.05, holdout_formulas_fraction=0.2)
    held = {r.formula for r in val}
    assert len(held) == 2 and not held & {r.formula for r in train_set}
    assert len(train_set) + len(val) == len(recs)
    assert all(sum(r.formula == f for r in val) == (4 if f == "MoS2" else 3) for f in held)
    again, val_again = split_records(recs, seed=0, val_fraction=0.05, holdout_formulas_fraction=0.2)
    assert [r.source_id for r in val_again] == [r.source_id for r in val]
    assert any(
        {r.formula for r in split_records(recs, seed=s, val_fraction=0.05, holdout_formulas_fraction=0.2)[1]} != held
        for s in range(1, 6)
    )


def test_training_subsets_are_nested():
    recs = _records(["MoS2", "WS2", "BN", "C", "GaS"] * 4)
    small, large = training_subset(recs, 0.25, 0), training_subset(recs, 0.5, 0)
    assert len(small) == 5 and len(large) == 10
    assert [r.source_id for r in large[:5]] == [r.source_id for r in small]
    assert training_subset(recs, 1.0, 0) is recs


def test_device_settings_resolve_on_cpu_and_by_the_documented_rule_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_amp("auto", cpu) is None and resolve_amp(True, cpu) is None  # a no-op on CPU
    assert resolve_batch_size("auto", cpu) == 32 and resolve_batch_size(48, cuda) == 48
    assert resolve_num_workers("auto", cpu) == 0 and resolve_num_workers(3, cpu) == 3
    assert resolve_amp(False, cuda) is None
    # bfloat16 only where it is native (compute capability 8 and up, asked of this device); fp16 + GradScaler before
    asked = []
    for capability, dtype in (((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.cuda, "get_device_capability", lambda d, c=capability: asked.append(d) or c)
            assert resolve_amp("auto", cuda) == dtype
    assert asked == [cuda] * 3
    # half of the free memory over the measured bytes per sample, a multiple of 32 within [32, 1024]
    assert resolve_batch_size("auto", cuda, per_sample_bytes=10e6, free_bytes=int(4e9)) == 192
    assert resolve_batch_size("auto", cuda, per_sample_bytes=10e6, free_bytes=int(80e9)) == 1024
    assert resolve_batch_size("auto", cuda, per_sample_bytes=10e6, free_bytes=int(1e8)) == 32
    assert resolve_batch_size("auto", cuda, per_sample_bytes=1e6, free_bytes=int(80e9), n_train=500) == 500


def test_worker_batches_do_not_depend_on_the_number_of_workers_or_a_resume(mini_data):
    recs, _ = load_training_set(_cfg(mini_data, ["paddle2d", "mini.tgz"], deduplicate=False))
    index = {s: i for i, s in enumerate(sorted({s for r in recs for s in r.species}))}
    one = list(_BatchStream(recs, index, 2, 0.02, 7, 0, 5))
    loader = torch.utils.data.DataLoader(_BatchStream(recs, index, 2, 0.02, 7, 0, 5), batch_size=None, num_workers=2)
    two = list(loader)
    resumed = list(_BatchStream(recs, index, 2, 0.02, 7, 3, 5))
    assert len(one) == len(two) == 5 and len(resumed) == 2
    for a, b in zip(one, two):
        assert torch.equal(a.types, b.types) and torch.equal(a.lattice2d, b.lattice2d)
    for a, b in zip(one[3:], resumed):
        assert torch.equal(a.types, b.types) and torch.equal(a.lattice2d, b.lattice2d)
    assert not all(torch.equal(one[0].lattice2d, b.lattice2d) for b in one[1:])  # strain differs by step


def test_auto_settings_train_on_cpu_and_are_recorded(tmp_path, data_available):
    from tests.diffusion.conftest import tiny_config

    cfg = tiny_config(
        tmp_path,
        max_steps=2,
        hidden=16,
        n_layers=1,
        batch_size="auto",
        amp="auto",
        num_workers="auto",
        max_records=20,
        holdout_formulas_fraction=0.1,
    )
    summary = train(cfg)
    assert summary["steps"] == 2
    assert summary["runtime"] == {
        **summary["runtime"],
        "device": "cpu",
        "amp_dtype": "float32",
        "batch_size": 32,
        "num_workers": 0,
    }
    assert summary["n_val"] > 0 and summary["final_train"]["step"] == 2
    assert summary["sources"]["2dmatpedia_filtered.db"]["kept"] == 20


def test_gen2d_train_device_option_reaches_the_plugin(monkeypatch):
    from typer.testing import CliRunner

    import gen2d.jobs
    from gen2d.cli import app

    seen = {}

    def fake_train(kind, name, **options):
        seen.update(options)
        return {"checkpoint": "x"}

    monkeypatch.setattr(gen2d.jobs, "train_plugin", fake_train)
    res = CliRunner().invoke(
        app, ["train", "--generator", "egnn-diffusion", "-o", "device=cpu", "--device", "cuda", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert seen == {"device": "cuda"}  # --device wins over -o device=...
    seen.clear()
    res = CliRunner().invoke(app, ["train", "--generator", "egnn-diffusion", "-o", "batch_size=auto", "--json"])
    assert res.exit_code == 0 and seen == {"batch_size": "auto"}  # no --device: nothing added
