"""Sampling: wrapped, in-plane outputs in the 2D convention; deterministic per seed; guidance works."""

from __future__ import annotations

import numpy as np
import torch

from gen2d.diffusion.sampler import SamplingConfig, sample


def test_outputs_follow_the_2d_convention(tiny_bundle):
    out = sample(tiny_bundle, 4, seed=0, config=SamplingConfig(n_steps=20), device="cpu", n_atoms=[2, 3, 4, 6])
    assert [len(s.species) for s in out] == [2, 3, 4, 6]
    for smp in out:
        assert np.all((smp.frac >= 0) & (smp.frac < 1))
        assert set(smp.species) <= set(tiny_bundle.rep.vocab)
        assert abs(smp.z.mean()) < 1e-4
        st = smp.to_structure(vacuum=20.0)
        m = st.lattice.matrix
        assert np.allclose(m[:2, 2], 0) and np.allclose(m[2, :2], 0)  # a, b in-plane, c along z
        zs = st.cart_coords[:, 2]
        assert m[2, 2] - (zs.max() - zs.min()) >= 20.0 - 1e-6  # vacuum kept
        assert set(smp.predicted) == {"dg_h", "e_hull", "p_synth"}


def test_same_seed_same_samples(tiny_bundle):
    cfg = SamplingConfig(n_steps=10)
    a = sample(tiny_bundle, 3, seed=5, config=cfg, device="cpu")
    b = sample(tiny_bundle, 3, seed=5, config=cfg, device="cpu")
    c = sample(tiny_bundle, 3, seed=6, config=cfg, device="cpu")
    assert all(np.array_equal(x.frac, y.frac) and x.species == y.species for x, y in zip(a, b))
    assert not all(np.array_equal(x.frac, y.frac) for x, y in zip(a, c) if len(x.frac) == len(y.frac))


def test_classifier_free_mixing_changes_the_trajectory(tiny_bundle):
    base = sample(tiny_bundle, 3, seed=2, config=SamplingConfig(n_steps=20), device="cpu", n_atoms=[3, 3, 3])
    cfg = sample(
        tiny_bundle, 3, seed=2, config=SamplingConfig(n_steps=20, cfg_weight=3.0), device="cpu", n_atoms=[3, 3, 3]
    )
    assert any(not np.allclose(x.frac, y.frac) for x, y in zip(base, cfg))


def test_gradient_guidance_moves_predicted_dg_h_towards_target(tiny_bundle):
    """Same seed, same atom counts: with the gradient step the head-predicted dG_H ends closer to the
    target than without it (the tiny model's dg_h head learned 0.5 x thickness)."""
    n_atoms = [3, 4, 3, 5, 2, 4, 3, 6]
    off = sample(tiny_bundle, 8, seed=11, config=SamplingConfig(n_steps=50), device="cpu", n_atoms=n_atoms)
    target = float(np.mean([s.predicted["dg_h"] for s in off])) + 1.0  # a target the unguided runs miss
    only_dgh = {"dg_h": 1.0, "e_hull": 0.0, "synth": 0.0}
    on = sample(
        tiny_bundle,
        8,
        seed=11,
        device="cpu",
        n_atoms=n_atoms,
        config=SamplingConfig(n_steps=50, eta=0.1, targets={"dg_h": target}, target_weights=only_dgh),
    )
    err_off = np.abs([s.predicted["dg_h"] - target for s in off])
    err_on = np.abs([s.predicted["dg_h"] - target for s in on])
    assert err_on.mean() < err_off.mean(), (err_on, err_off)
    assert (err_on < err_off).sum() >= 7


def test_clean_guided_run_flags_nothing(tiny_bundle):
    out = sample(
        tiny_bundle,
        4,
        seed=3,
        device="cpu",
        n_atoms=[3, 4, 3, 5],
        config=SamplingConfig(n_steps=20, cfg_weight=2.0, eta=0.1),
    )
    for smp in out:
        assert not smp.diverged and smp.diagnostics["diverged_reasons"] == []
        assert 0.0 < smp.diagnostics["max_guidance_grad_rms"] < 50.0
        assert smp.diagnostics["guided_steps"] == 20


def test_gradient_above_the_divergence_limit_is_flagged(tiny_bundle):
    """The raw gradient is compared with the limit before clipping: a tiny limit flags every sample."""
    out = sample(
        tiny_bundle,
        3,
        seed=3,
        device="cpu",
        n_atoms=[3, 3, 4],
        config=SamplingConfig(n_steps=10, eta=0.1, divergence_grad_rms=1e-9),
    )
    assert all(s.diagnostics["diverged_reasons"] == ["exploding_guidance"] for s in out)
    assert all(s.diagnostics["first_flagged_step"]["exploding_guidance"] == 0 for s in out)


def test_nan_heads_flag_only_their_structure_and_the_batch_goes_on(tiny_bundle, monkeypatch):
    """NaN heads on structure 0 (as from a model that blew up) make its guidance gradient NaN. It is
    flagged, its output stays finite, and the other structures are exactly what a clean run gives."""
    import gen2d.diffusion.sampler as sampler_mod

    n_atoms = [3, 4, 3]
    cfg = SamplingConfig(n_steps=15, eta=0.1)
    clean = sample(tiny_bundle, 3, seed=9, config=cfg, device="cpu", n_atoms=n_atoms)
    real = sampler_mod.predict_noise

    def poisoned(model, rep, frac, z, h, lat, t, batch, *args, **kwargs):
        pred = real(model, rep, frac, z, h, lat, t, batch, *args, **kwargs)
        factor = torch.ones_like(pred["heads"])
        factor[0] = float("nan")
        pred["heads"] = pred["heads"] * factor  # NaN value and NaN gradient for graph 0 only
        return pred

    monkeypatch.setattr(sampler_mod, "predict_noise", poisoned)
    hurt = sample(tiny_bundle, 3, seed=9, config=cfg, device="cpu", n_atoms=n_atoms)
    assert hurt[0].diverged
    assert set(hurt[0].diagnostics["diverged_reasons"]) == {"nonfinite_guidance", "nonfinite_heads"}
    assert np.isfinite(hurt[0].frac).all() and np.isfinite(hurt[0].z).all()
    for a, b in zip(clean[1:], hurt[1:]):
        assert not b.diverged
        assert np.array_equal(a.frac, b.frac) and np.array_equal(a.z, b.z) and a.species == b.species


def test_chemical_space_restricts_the_sampled_elements(tiny_bundle):
    vocab = tiny_bundle.rep.vocab
    space = vocab[:2]
    free = sample(tiny_bundle, 6, seed=1, config=SamplingConfig(n_steps=15), device="cpu", n_atoms=[3] * 6)
    assert {el for s in free for el in s.species} - set(space), "unrestricted run should use other elements"
    out = sample(
        tiny_bundle,
        6,
        seed=1,
        config=SamplingConfig(n_steps=15, elements=space, eta=0.05),
        device="cpu",
        n_atoms=[3] * 6,
    )
    assert all(set(s.species) <= set(space) for s in out)
    assert all(not s.diverged for s in out)


def test_elements_outside_the_vocabulary_are_refused_by_name(tiny_bundle):
    import pytest

    from gen2d.diffusion.sampler import ElementsOutsideVocabulary

    bad = next(e for e in ("Og", "Ts", "Fr", "Ra") if e not in tiny_bundle.rep.vocab)
    with pytest.raises(ElementsOutsideVocabulary, match=bad):
        sample(tiny_bundle, 1, seed=0, config=SamplingConfig(n_steps=2, elements=[bad]), device="cpu", n_atoms=[2])


def test_cfg_leaves_out_targets_the_denoiser_never_saw(tiny_bundle):
    import copy

    from gen2d.diffusion.sampler import conditioned_properties, target_condition

    assert conditioned_properties(tiny_bundle) == {"dg_h", "e_hull", "synth"}  # trained with dg_h labels
    cfg = SamplingConfig(n_steps=10, cfg_weight=2.0)
    cond = target_condition(2, cfg, allowed={"e_hull", "synth"})
    assert cond[0].tolist() == [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]  # dg_h value and flag stay 0, as in training
    unlabelled = copy.copy(tiny_bundle)
    unlabelled.meta = {**tiny_bundle.meta, "condition_labels": {"dg_h": 0, "e_hull": 12, "synth": 12}}
    out = sample(unlabelled, 2, seed=0, config=cfg, device="cpu", n_atoms=[3, 3])
    assert out[0].parameters["cfg_ignored_targets"] == ["dg_h"]
    assert "cfg_ignored_targets" not in sample(tiny_bundle, 1, seed=0, config=cfg, device="cpu")[0].parameters
    # a checkpoint from before the record: read from its training config
    old = copy.copy(tiny_bundle)
    old.meta = {"config": {"dg_h_labels": None}}
    assert conditioned_properties(old) == {"e_hull", "synth"}


def test_a_lead_clock_model_trains_samples_and_keeps_template_types(tmp_path, data_available):
    """lead_power travels with the checkpoint. On the leading clock a template's types are noised to
    an earlier step than its positions, so with no denoising left to do they are still the template's."""
    from gen2d.diffusion.sampler import template_starts
    from gen2d.diffusion.train import load_checkpoint, train

    from .conftest import tiny_config

    summary = train(tiny_config(tmp_path, lead_power=2.0, max_steps=30))
    bundle, _ = load_checkpoint(summary["checkpoint"], "cpu")
    assert bundle.schedule.spec.lead_power == 2.0
    out = sample(bundle, 3, seed=0, config=SamplingConfig(n_steps=10), device="cpu", n_atoms=[2, 3, 4])
    assert all(np.isfinite(s.frac).all() and np.isfinite(s.z).all() for s in out)
    from gen2d.data.templates import TEMPLATES, build_template

    usable = [n for n in TEMPLATES if {e.symbol for e in build_template(n).composition} <= set(bundle.rep.vocab)]
    assert usable, "no template inside the tiny model's vocabulary"
    starts, skipped = template_starts(bundle, usable[:3], repeats=4)
    assert not skipped
    # a template start at 0.3 T: positions at step 300, types at step (300/999)^2 x 999 = 90 (abar 0.98)
    kept = sample(
        bundle,
        0,
        seed=0,
        config=SamplingConfig(n_steps=2, template_t_start=0.3, overlap_scale=0, fragment_scale=0),
        device="cpu",
        starts=starts,
    )
    for smp, name in zip(kept, [s for st in starts for s in st.template_name]):
        assert sorted(smp.species) == sorted(sp.symbol for sp in build_template(name).species), name


def test_charge_balanced_types_are_fixed_and_reported(tiny_bundle):
    from gen2d.diffusion.composition import composition_is_valid

    n_atoms = [3, 4, 5, 6] * 2
    off = sample(
        tiny_bundle, 8, seed=2, config=SamplingConfig(n_steps=20, charge_balance=False), device="cpu", n_atoms=n_atoms
    )
    on = sample(tiny_bundle, 8, seed=2, config=SamplingConfig(n_steps=20), device="cpu", n_atoms=n_atoms)
    assert all("charge_balanced" not in s.diagnostics for s in off)  # the bare argmax, nothing to report
    for smp in on:
        formula = smp.to_structure().composition.reduced_formula
        d = smp.diagnostics
        assert d["charge_balanced"] == composition_is_valid(formula), formula
        assert 0 <= d["types_changed"] <= len(smp.species)
        assert smp.parameters["charge_balance"] is True and smp.parameters["composition_from"] == 0.5
    assert sum(s.diagnostics["charge_balanced"] for s in on) >= sum(
        composition_is_valid(s.to_structure().composition.reduced_formula) for s in off
    )


def test_charge_balance_keeps_a_restricted_chemical_space(tiny_bundle):
    space = tiny_bundle.rep.vocab[:3]
    out = sample(
        tiny_bundle, 6, seed=4, config=SamplingConfig(n_steps=15, elements=space), device="cpu", n_atoms=[4] * 6
    )
    assert all(set(s.species) <= set(space) for s in out)
    assert all("charge_balanced" in s.diagnostics for s in out)


def test_template_starts_are_left_to_their_template_by_the_charge_prior(tiny_bundle):
    from gen2d.data.templates import TEMPLATES, build_template
    from gen2d.diffusion.sampler import template_starts

    vocab = set(tiny_bundle.rep.vocab)
    usable = [n for n in TEMPLATES if {e.symbol for e in build_template(n).composition} <= vocab]
    starts, _ = template_starts(tiny_bundle, usable[:2], repeats=2)
    out = sample(
        tiny_bundle, 0, seed=0, config=SamplingConfig(n_steps=5, template_t_start=0.6), device="cpu", starts=starts
    )
    assert out and all("charge_balanced" not in s.diagnostics for s in out)  # the prior never ran
    free = sample(tiny_bundle, 2, seed=0, config=SamplingConfig(n_steps=5), device="cpu", n_atoms=[3, 4])
    assert all("charge_balanced" in s.diagnostics for s in free)


def test_a_required_kind_of_compound_holds_for_free_and_template_starts(tiny_bundle):
    from gen2d.data.templates import TEMPLATES, build_template
    from gen2d.diffusion.sampler import template_starts

    vocab = tiny_bundle.rep.vocab
    usable = [n for n in TEMPLATES if {e.symbol for e in build_template(n).composition} <= set(vocab)]
    comps = [{e.symbol for e in build_template(n).composition} for n in usable[:2]]
    # two groups that the templates' own elements split: each sample needs an atom of both
    a, b = sorted(comps[0])[0], next(el for el in vocab if el not in comps[0])
    cfg = SamplingConfig(n_steps=8, template_t_start=0.6, require_any_of=[[a], [b]])
    free = sample(tiny_bundle, 6, seed=2, config=cfg, device="cpu", n_atoms=[2, 3, 3, 4, 5, 6])
    starts, _ = template_starts(tiny_bundle, usable[:2], repeats=2)
    templ = sample(tiny_bundle, 0, seed=2, config=cfg, device="cpu", starts=starts)
    assert free and templ
    for s in free + templ:
        assert {a, b} <= set(s.species), s.species
        assert s.diagnostics["requirement_met"] is True


def test_an_unmeetable_requirement_is_refused_by_name(tiny_bundle):
    import pytest

    from gen2d.diffusion.sampler import ElementsOutsideVocabulary, required_groups

    vocab = tiny_bundle.rep.vocab
    bad = next(e for e in ("Og", "Ts", "Fr", "Ra") if e not in vocab)
    with pytest.raises(ElementsOutsideVocabulary, match=bad):
        required_groups(vocab, [[bad]], None)
    with pytest.raises(ValueError, match="no element in the chemical space"):
        required_groups(vocab, [[vocab[0]]], [vocab[1]])
    assert required_groups(vocab, [[vocab[0], vocab[2]]], [vocab[0], vocab[1]]) == [[0]]
