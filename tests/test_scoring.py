"""Plugin registry through real entry points: discovery, a broken plugin listed with its reason."""

from __future__ import annotations

import importlib
import sys

import pytest

from gen2d.scoring import (
    Generator,
    Provenance,
    Scorer,
    ScoreResult,
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
    _install_fake_dist(
        tmp_path,
        "brokenplugin",
        "[gen2d.scorers]\nbroken.missing = gen2d_does_not_exist:Nope\nbroken.raises = fake_raising_plugin:Scorer\n",
    )
    (tmp_path / "fake_raising_plugin.py").write_text(
        "class Scorer:\n    def __init__(self):\n        raise RuntimeError('weights file /x/y.pt not found')\n"
    )
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
        return [
            ScoreResult(property="e_hull", value=0.1, unit="eV/atom", provenance=Provenance(plugin="flaky"))
            for _ in structures
        ]


def test_a_crashing_batch_becomes_named_failures_and_others_go_on(mos2):
    s = _FlakyScorer()
    assert isinstance(s, Scorer)
    batches = list(score_in_batches(s, [mos2] * 5, batch_size=3))
    assert [len(b) for b in batches] == [3, 2]
    assert all(not r.ok and r.failure.reason == "scorer_crashed" for r in batches[0])
    assert all(r.ok and r.value == 0.1 for r in batches[1])


def test_a_crashed_batch_is_kept_as_todays_failure_and_redone_by_other_settings(mos2):
    """The harness's failure carries the settings the scorer's ``current`` requires: the same scorer keeps it
    (scorer_crashed is not retried), one with another model redoes it."""
    from gen2d.store import score_is_current

    s = _FlakyScorer()
    s.current = {"provenance.settings.model_option": "7net-l3i5", "provenance.settings.ref.version": "7"}
    failed = next(iter(score_in_batches(s, [mos2] * 3, batch_size=3)))[0]
    assert failed.provenance.settings == {"model_option": "7net-l3i5", "ref": {"version": "7"}}
    stored = failed.model_dump(mode="json")
    assert score_is_current(stored, s.current)
    assert not score_is_current(stored, {**s.current, "provenance.settings.model_option": "7net-0"})
    assert not score_is_current(stored, s.current, retry=("scorer_crashed",))


def test_every_provenance_records_the_installed_gen2d_version():
    import importlib.metadata as md

    from gen2d.scoring import Provenance

    assert Provenance(plugin="any").version == md.version("gen2d")
    assert Provenance(plugin="any", version="9.9").version == "9.9"  # an explicit version is kept


BUILTIN_SCORERS = [
    "ehull.chgnet",
    "ehull.mattersim",
    "ehull.sevennet",
    "dgh.mlip",
    "dgh.dimenet",
    "synth.pu",
    "synth.csllm",
]


@pytest.mark.parametrize("name", BUILTIN_SCORERS)
def test_builtin_scorers_inherit_the_base_class_and_declare_their_options(name):
    """Each Options model names exactly the scorer's constructor parameters, so neither can drift."""
    import inspect
    from dataclasses import fields

    from gen2d.scoring import BaseScorer, ScorerOptionsError, _factory

    cls = _factory("scorer", name)
    assert issubclass(cls, BaseScorer) and cls.Options is not BaseScorer.Options
    params = {
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind is not p.VAR_KEYWORD
    }
    var_kw = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    declared = set(cls.Options.model_fields)
    if name == "dgh.mlip":  # **settings are the fields of AdsorptionSettings
        from gen2d.adsorption import AdsorptionSettings

        params |= {f.name for f in fields(AdsorptionSettings)}
    if name == "synth.csllm":  # **options are CSLLMSettings, which is its Options model
        assert var_kw
    else:
        assert declared == params
    with pytest.raises(ScorerOptionsError, match=rf"scorer {name}: unknown option 'no_such_option'"):
        get_scorer(name, no_such_option=1)
    sc = get_scorer(name)
    assert isinstance(sc, BaseScorer) and sc.batch_size >= 1 and sc.name == name


def test_get_scorer_coerces_options_to_their_declared_types():
    from gen2d.scoring import ScorerOptionsError

    sc = get_scorer("ehull.chgnet", fmax="0.02", steps="40")
    assert sc.fmax == 0.02 and sc.steps == 40
    with pytest.raises(ScorerOptionsError, match="option 'fmax'"):
        get_scorer("ehull.chgnet", fmax=-1.0)  # a relaxation cannot converge below zero force


class _ProtocolOnly:
    """A third-party scorer written against the protocol only: no base class, no current, no explain."""

    name, property, unit = "third.party", "p_synth", "probability"

    def score(self, structures, context=None):
        return [
            ScoreResult(property="p_synth", value=0.5, unit="probability", provenance=Provenance(plugin=self.name))
            for _ in structures
        ]


def test_a_protocol_only_scorer_gets_the_base_class_defaults(mos2):
    from gen2d.scoring import BaseScorer, as_scorer, trains

    sc = as_scorer(_ProtocolOnly())
    assert isinstance(sc, BaseScorer) and sc.name == "third.party" and sc.requires == ()
    assert sc.current is None and sc.batch_size == BaseScorer.batch_size and sc.available() == (True, "")
    doc = sc.explain(mos2)
    assert doc["scorer"] == "third.party" and doc["result"]["value"] == 0.5
    assert not trains(sc) and not trains(_ProtocolOnly)
    with pytest.raises(NotImplementedError, match="third.party has nothing to train"):
        sc.train()
    assert as_scorer(sc) is sc


def test_plugins_with_their_own_train_are_found_and_the_others_say_so():
    import importlib.metadata as md

    from gen2d.jobs import train_plugin
    from gen2d.scoring import _factory, trains

    assert trains(_factory("scorer", "synth.pu")) and trains(_factory("scorer", "dgh.dimenet"))
    assert not trains(_factory("scorer", "ehull.chgnet"))
    assert any(ep.name == "ehull.chgnet" for ep in md.entry_points(group="gen2d.scorers"))
    with pytest.raises(TypeError, match="has nothing to train"):
        train_plugin("scorer", "ehull.chgnet")


def test_device_name_resolves_auto_to_what_torch_sees_and_passes_other_names_through():
    import torch

    from gen2d.diffusion.train import resolve_device
    from gen2d.scoring import device_name

    assert device_name("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert device_name("cuda:1") == "cuda:1" and device_name("cpu") == "cpu"
    assert resolve_device("auto") == torch.device(device_name("auto"))
