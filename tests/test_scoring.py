"""Plugin registry through real entry points: discovery, a broken plugin listed with its reason."""

from __future__ import annotations

import importlib
import sys

import pytest

from gen2d.scoring import (
    Generator,
    Provenance,
    ScoreResult,
    Scorer,
    discover,
    get_generator,
    get_scorer,
    score_in_batches,
)


def test_builtin_generators_are_discovered_and_usable():
    infos = {(i.kind, i.name): i for i in discover()}
    assert infos[("generator", "templates")].available
    assert infos[("generator", "cif-set")].available
    gen = get_generator("templates")
    assert isinstance(gen, Generator)
    first = next(gen.generate(n=1))
    assert first.structure.composition.num_atoms > 0 and first.parameters["citation"]


def _install_fake_dist(tmp_path, name, entry_points):
    dist = tmp_path / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()


def test_broken_plugin_is_listed_with_reason_and_others_load(tmp_path, monkeypatch):
    _install_fake_dist(tmp_path, "brokenplugin",
                       "[gen2d.scorers]\nbroken.missing = gen2d_does_not_exist:Nope\n"
                       "broken.raises = fake_raising_plugin:Scorer\n")
    (tmp_path / "fake_raising_plugin.py").write_text(
        "class Scorer:\n    def __init__(self):\n        raise RuntimeError('weights file /x/y.pt not found')\n")
    try:
        infos = {i.name: i for i in discover("scorer")}
        assert not infos["broken.missing"].available
        assert "ModuleNotFoundError" in infos["broken.missing"].reason
        assert not infos["broken.raises"].available and "/x/y.pt" in infos["broken.raises"].reason
        # real plugins still listed alongside
        assert "synth.pu" in infos and "ehull.chgnet" in infos
        with pytest.raises(KeyError):
            get_scorer("no.such.scorer")
    finally:
        sys.path.remove(str(tmp_path))
        importlib.invalidate_caches()


class _FlakyScorer:
    name, property, unit, requires = "flaky", "e_hull", "eV/atom", ()

    def available(self):
        return True, ""

    def score(self, structures, context=None):
        if len(structures) == 3:
            raise RuntimeError("GPU fell over")
        return [ScoreResult(property="e_hull", value=0.1, unit="eV/atom", provenance=Provenance(plugin="flaky"))
                for _ in structures]


def test_a_crashing_batch_becomes_named_failures_and_others_go_on(mos2):
    s = _FlakyScorer()
    assert isinstance(s, Scorer)
    batches = list(score_in_batches(s, [mos2] * 5, batch_size=3))
    assert [len(b) for b in batches] == [3, 2]
    assert all(not r.ok and r.failure.reason == "scorer_crashed" for r in batches[0])
    assert all(r.ok and r.value == 0.1 for r in batches[1])


def test_every_provenance_records_the_installed_gen2d_version():
    import importlib.metadata as md

    from gen2d.scoring import Provenance

    assert Provenance(plugin="any").version == md.version("gen2d")
    assert Provenance(plugin="any", version="9.9").version == "9.9"  # an explicit version is kept
