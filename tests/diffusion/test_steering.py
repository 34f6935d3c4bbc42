"""Particle steering: SMC arithmetic, resampling of variable-size batches, rewards, floors and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from gen2d.diffusion.sampler import SamplingConfig, sample
from gen2d.diffusion.steering import (
    ParticleFilter,
    Reward,
    RewardEvaluation,
    SteeringConfig,
    atom_index_of,
    effective_sample_size,
    normalised_weights,
    register_reward_term,
    systematic_resample,
    unregister_reward_term,
)


@pytest.fixture
def term():
    """Register reward terms for one test; unregistered afterwards."""
    names = []

    def add(name, fn):
        register_reward_term(name, lambda **_: fn)
        names.append(name)

    yield add
    for name in names:
        unregister_reward_term(name)


def _layer(species: list[str]) -> Structure:
    n = len(species)
    coords = [[i / n, i / n, 0.5] for i in range(n)]
    return Structure(Lattice.from_parameters(3.0 * n, 3.0 * n, 20.0, 90, 90, 120), species, coords)


# --- arithmetic ---------------------------------------------------------------------------------


def test_systematic_resampling_gives_floor_or_ceil_copies_and_their_expectation():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(7))
    n = w.size
    mean = np.zeros(n)
    grid = (np.arange(400) + 0.5) / 400
    for u in grid:
        counts = np.bincount(systematic_resample(w, u), minlength=n)
        assert counts.sum() == n
        assert np.all(counts >= np.floor(n * w)) and np.all(counts <= np.ceil(n * w))
        mean += counts / len(grid)
    np.testing.assert_allclose(mean, n * w, atol=0.01)  # unbiased: E[copies] = n w
    # exact multiples of 1/n give exact counts for every u; a weight of 0 gets none
    for u in (0.0, 0.37, 0.999):
        assert np.bincount(systematic_resample(np.array([0.5, 0.25, 0.25, 0.0]), u), minlength=4).tolist() == [
            2,
            1,
            1,
            0,
        ]
    with pytest.raises(ValueError, match="u must lie"):
        systematic_resample(w, 1.0)
    with pytest.raises(ValueError, match="not all zero"):
        systematic_resample(np.zeros(3), 0.5)


def test_resampling_is_seeded():
    cfg = SteeringConfig(rewards={"synth.pu": 1.0}, start=1.0, stop=0.0, interval=1, strength=1.0, ess_threshold=1.0)
    ev = RewardEvaluation(total=np.array([0.0, -1.0, -3.0, 0.5, -0.2]), terms={}, failed={})

    def run(seed):
        pf = ParticleFilter(cfg, list(range(9, -1, -1)), 10, 5, np.random.default_rng(seed))
        return [pf.update(ev, 5).tolist() for _ in range(4)]

    assert run(3) == run(3)
    assert any(a != b for a, b in zip(run(3), run(4)))


def test_effective_sample_size():
    assert effective_sample_size(np.zeros(6)) == pytest.approx(6.0)
    assert effective_sample_size(np.array([0.0, -np.inf, -np.inf])) == pytest.approx(1.0)
    assert effective_sample_size(np.array([1000.0, 1000.0])) == pytest.approx(2.0)  # no overflow
    assert effective_sample_size(np.array([0.0, np.log(3.0)])) == pytest.approx(1 / (1 / 16 + 9 / 16))
    np.testing.assert_allclose(normalised_weights(np.full(4, -np.inf)), 0.25)
    with pytest.raises(ValueError, match="NaN"):
        normalised_weights(np.array([0.0, np.nan]))


def test_difference_potentials_telescope_to_the_last_reward():
    """Without resampling the accumulated log-weight is λ r(last) (the FK target p(x) exp(λ r))."""
    cfg = SteeringConfig(rewards={"synth.pu": 1.0}, start=1.0, stop=0.0, interval=1, strength=0.7, ess_threshold=1e-9)
    pf = ParticleFilter(cfg, list(range(9, -1, -1)), 10, 3, np.random.default_rng(0))
    for r in ([0.0, -1.0, -2.0], [-5.0, 0.0, -1.0], [-0.5, -0.25, -3.0]):
        assert pf.update(RewardEvaluation(total=np.array(r), terms={}, failed={}), 1) is None
    np.testing.assert_allclose(pf.log_w, 0.7 * np.array([-0.5, -0.25, -3.0]))


def test_atom_index_copies_whole_particles_of_different_sizes():
    assert atom_index_of([2, 0, 2], [1, 3, 2]).tolist() == [4, 5, 0, 4, 5]


# --- rewards ------------------------------------------------------------------------------------


def test_a_term_that_raises_or_returns_nan_gives_the_floor(term):
    def picky(structures):
        if any(len(s) == 2 for s in structures):
            raise RuntimeError("two atoms")
        return [1.0 if len(s) == 1 else float("nan") for s in structures]

    term("test.picky", picky)
    reward = Reward.from_config(SteeringConfig(rewards={"test.picky": 2.0}, floor=-4.0))
    structures = [_layer(["C"]), _layer(["C", "C"]), _layer(["C", "C", "C"]), None]
    ev = reward(structures)
    assert np.all(np.isfinite(ev.total))
    assert ev.terms["test.picky"].tolist() == [1.0, -4.0, -4.0, -4.0]
    assert ev.failed["test.picky"].tolist() == [False, True, True, True]
    assert ev.total.tolist() == [2.0, -8.0, -8.0, -8.0]
    # the batch raised, so each of the three decoded structures was retried alone
    assert reward.evaluations["test.picky"] == 3 + 3 and reward.failures["test.picky"] == 3


def test_synth_pu_term_is_the_log_of_the_scorer(mos2):
    from gen2d.scoring import get_scorer

    reward = Reward.from_config(SteeringConfig(rewards={"synth.pu": 1.0}))
    ev = reward([mos2])
    [res] = get_scorer("synth.pu").score([mos2])
    assert ev.terms["synth.pu"][0] == pytest.approx(math.log(res.value))
    assert not ev.failed["synth.pu"][0]


def test_stability_proxy_is_the_single_point_hull_of_the_core(mos2):
    """The proxy's E_hull is hull_analysis on the MLIP single-point energy, against the shipped references."""
    from gen2d.diffusion.steering import StabilityProxyReward
    from gen2d.hull import apply_mp2020, hull_analysis, mlip_entry
    from gen2d.relax import cached_calculator, calculator_provenance
    from gen2d.structures import to_ase

    term = StabilityProxyReward("chgnet", device="cpu")
    too_many = _layer(["Mo", "W", "S", "Se"])
    uncached = _layer(["Cu", "O"])  # nothing shipped or cached for Cu-O: no reference relaxations are run
    values = term([mos2, too_many, uncached])
    assert values[1] is None and values[2] is None
    calc = cached_calculator("chgnet", device="cpu")
    atoms = to_ase(mos2)
    atoms.pbc = True
    atoms.calc = calc
    prov = calculator_provenance(calc)
    entry = apply_mp2020(
        mlip_entry(mos2, atoms.get_potential_energy(), model=prov["model"], checkpoint_sha256=prov["checkpoint_sha256"])
    )
    provider = term._setup()[1]  # the term's own mlip-prototypes provider (reading the references is the slow part)
    assert provider.name == "mlip-prototypes" and provider.calculator is calc
    expected = hull_analysis(entry, provider.entries(["Mo", "S"]), provider.name).e_hull
    assert term.last_e_hull[0] == pytest.approx(expected, abs=1e-4)
    assert -0.2 < term.last_e_hull[0] < 0.2  # bulk-derived 2H-MoS2 sits near its hull
    assert values[0] == pytest.approx(-math.log1p(math.exp((expected - 0.1) / 0.1)), abs=1e-4)


def test_a_relaxed_proxy_builds_its_entry_on_the_relaxed_geometry(mos2, monkeypatch):
    """With ``relax_steps``, the energy is the relaxed structure's, so the entry (whose MP2020 oxide and sulfide
    corrections read the geometry) is built on that structure, not on the sample the relaxation started from."""
    import gen2d.hull
    from gen2d.diffusion.steering import StabilityProxyReward

    seen = []
    real = gen2d.hull.mlip_entry

    def spy(structure, energy, **kw):
        seen.append(structure)
        return real(structure, energy, **kw)

    monkeypatch.setattr(gen2d.hull, "mlip_entry", spy)
    stretched = mos2.copy()
    stretched.scale_lattice(mos2.volume * 1.06)  # in-plane strain that the relaxation takes back
    term = StabilityProxyReward("chgnet", device="cpu", relax_steps=5)
    [value] = term([stretched])
    assert value is not None and len(seen) == 1
    assert seen[0] is term.last_relaxed[0]
    assert abs(seen[0].lattice.a - stretched.lattice.a) > 1e-3  # the geometry moved, and the entry saw where to


# --- configuration errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "steering, message",
    [
        ({"rewards": {"nope": 1.0}}, "unknown reward term 'nope'"),
        ({"rewards": {}}, "at least one reward term"),
        ({"rewards": {"synth.pu": float("nan")}}, "must be finite"),
        ({"strength": 0.0}, "strength"),
        ({"ess_threshold": 1.5}, "ess_threshold"),
        ({"interval": 0}, "interval"),
        ({"start": 0.1, "stop": 0.2}, "must lie below start"),
        ({"rewards": {"synth.pu": 1.0}, "reward_options": {"dgh.dimenet": {}}}, "not in rewards"),
        ({"rewards": {"synth.pu": 1.0}, "reward_options": {"synth.pu": {"windo": 0.3}}}, "windo"),
        (
            {"rewards": {"stability.chgnet": 1.0}, "reward_options": {"stability.chgnet": {"relax_steps": -1}}},
            "relax_steps",
        ),
        ({"rewards": {"synth.pu": 1.0}, "lambda": 2.0}, "lambda"),
    ],
)
def test_bad_steering_configs_are_named_errors(steering, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(steering=steering)


def test_the_steered_preset_builds_and_is_not_mutated():
    from gen2d_egnn import GUIDANCE_PRESETS, sampling_config

    cfg = sampling_config("steered")
    assert cfg.steering is not None and set(cfg.steering.rewards) == {"dgh.dimenet", "synth.pu", "stability.chgnet"}
    cfg2 = sampling_config({"steering": {"rewards": {"synth.pu": 1.0}, "strength": 2.0}})
    assert cfg2.steering.strength == 2.0
    assert GUIDANCE_PRESETS["steered"]["steering"] == {}


# --- steering a sampler -------------------------------------------------------------------------

N_ATOMS = [2, 4, 5, 6, 2, 4, 6, 3, 5, 2]


def _steered(rewards, **over):
    fields = dict(rewards=rewards, start=0.9, stop=0.05, interval=2, strength=1.0, ess_threshold=0.9)
    fields.update(over)
    return SamplingConfig(n_steps=20, steering=fields)


def test_steering_towards_three_atoms_shifts_the_batch_and_copies_whole_particles(tiny_bundle, term):
    """A lineage keeps its atom count, so only the first potential selects (the later differences are 0):
    the target p(x) exp(-3 |n - 3|) puts 1 / (1 + 5 e^-3 + ...) ~ 0.8 of the batch on the one 3-atom particle."""
    term("test.three_atoms", lambda structures: [-abs(len(s) - 3) for s in structures])
    steered = _steered({"test.three_atoms": 1.0}, strength=3.0)
    off = sample(tiny_bundle, 10, seed=7, config=SamplingConfig(n_steps=20), device="cpu", n_atoms=N_ATOMS)
    on = sample(tiny_bundle, 10, seed=7, config=steered, device="cpu", n_atoms=N_ATOMS)
    dist_off = np.mean([abs(len(s.species) - 3) for s in off])
    dist_on = np.mean([abs(len(s.species) - 3) for s in on])
    assert dist_off == pytest.approx(1.5)
    assert dist_on <= 0.5, [len(s.species) for s in on]
    for s in on:
        d = s.diagnostics["steering"]
        assert d["resamplings"] == 1 and d["particles"] == 10
        assert len(s.species) == len(s.frac) == len(s.z) == N_ATOMS[d["root"]]  # a lineage keeps its atoms
        assert d["reward_trace"][-1] == -abs(len(s.species) - 3)
        assert abs(s.z.mean()) < 1e-4 and np.all((s.frac >= 0) & (s.frac < 1))
        assert d["reward_evaluations"] == {"test.three_atoms": 10 * d["potentials"]}
        assert all(np.isfinite(list(s.predicted.values())))
    again = sample(tiny_bundle, 10, seed=7, config=steered, device="cpu", n_atoms=N_ATOMS)
    assert all(np.array_equal(a.frac, b.frac) and a.species == b.species for a, b in zip(on, again))

    def untimed(d):
        return {k: v for k, v in d.items() if k != "reward_cpu_s"}

    assert [untimed(a.diagnostics["steering"]) for a in on] == [untimed(b.diagnostics["steering"]) for b in again]


def test_steering_on_the_clean_estimate_shifts_composition(tiny_bundle, term):
    """A reward on the decoded x̂₀ types (share of one element) raises that element's share. The tiny model
    rarely puts that element twice in a layer, so the tilt mostly lifts particles from none to one."""
    n_atoms = [4] * 10
    off = sample(tiny_bundle, 10, seed=3, config=SamplingConfig(n_steps=20), device="cpu", n_atoms=n_atoms)
    counts: dict[str, int] = {}
    for s in off:
        for el in s.species:
            counts[el] = counts.get(el, 0) + 1
    target = max(sorted(counts), key=counts.get)  # the element the unsteered batch uses most

    def share(structures):
        return [4.0 * sum(str(sp) == target for sp in s.species) / len(s) for s in structures]

    term("test.share", share)
    on = sample(
        tiny_bundle, 10, seed=3, config=_steered({"test.share": 1.0}, strength=3.0), device="cpu", n_atoms=n_atoms
    )
    frac_off = np.mean([s.species.count(target) / len(s.species) for s in off])
    frac_on = np.mean([s.species.count(target) / len(s.species) for s in on])
    assert frac_on >= frac_off + 0.1, (target, frac_off, frac_on)
    assert sum(target in s.species for s in on) == 10 > sum(target in s.species for s in off) + 2
    for s in on:  # the types fixed by the composition prior are what the last potential was taken on
        assert s.diagnostics["steering"]["reward_trace"][-1] == pytest.approx(4.0 * s.species.count(target) / 4)


def test_equal_rewards_never_resample_and_leave_the_unsteered_samples(tiny_bundle, term):
    """Constant reward: ESS stays at the batch size, nothing is copied, and since resampling draws from its
    own stream the samples equal the unsteered ones of the same seed."""
    term("test.flat", lambda structures: [0.0] * len(structures))
    off = sample(tiny_bundle, 5, seed=2, config=SamplingConfig(n_steps=20), device="cpu", n_atoms=N_ATOMS[:5])
    on = sample(tiny_bundle, 5, seed=2, config=_steered({"test.flat": 1.0}), device="cpu", n_atoms=N_ATOMS[:5])
    for a, b in zip(off, on):
        assert np.array_equal(a.frac, b.frac) and a.species == b.species
        d = b.diagnostics["steering"]
        assert d["resamplings"] == 0 and d["potentials"] > 0 and d["ess"] == [5.0] * d["potentials"]


def test_a_reward_failing_everywhere_is_the_floor_not_nan(tiny_bundle, term):
    def broken(structures):
        raise RuntimeError("scorer down")

    term("test.broken", broken)
    out = sample(
        tiny_bundle, 4, seed=1, config=_steered({"test.broken": 1.0}, floor=-3.0), device="cpu", n_atoms=[2, 3, 4, 5]
    )
    for s in out:
        d = s.diagnostics["steering"]
        assert d["reward_trace"] == [-3.0] * d["potentials"] and d["resamplings"] == 0
        assert d["reward_failures"]["test.broken"] == 4 * d["potentials"]


def test_template_particles_carry_their_template_cell(tiny_bundle, term):
    """Copies of template particles keep their own fixed lattice and atom count."""
    from gen2d.data.templates import build_template
    from gen2d.diffusion.sampler import template_starts

    vocab = set(tiny_bundle.rep.vocab)
    names = [
        n
        for n in ("silicene", "germanene", "phosphorene")
        if {e.symbol for e in build_template(n).composition} <= vocab
    ]
    assert len(names) >= 2, "the tiny model's vocabulary should cover two of Si, Ge, P"
    picked = [names[i % len(names)] for i in range(6)]
    starts, _ = template_starts(tiny_bundle, picked)
    favourite = picked[1]
    a_fav = build_template(favourite).lattice.a  # the lattice of a template particle is fixed: an exact label
    term("test.template", lambda structures: [-10.0 * abs(s.lattice.a - a_fav) for s in structures])
    cfg = _steered({"test.template": 1.0}, start=0.59)
    out = sample(
        tiny_bundle, 6, seed=0, config=cfg.model_copy(update={"charge_balance": False}), device="cpu", starts=starts
    )
    assert sum(s.start == f"template:{favourite}" for s in out) > picked.count(favourite)
    for s in out:
        ref = build_template(s.start.split(":", 1)[1])
        assert s.start == f"template:{picked[s.diagnostics['steering']['root']]}"
        assert len(s.species) == len(ref)
        np.testing.assert_allclose(np.linalg.norm(s.lattice2d, axis=-1), ref.lattice.abc[:2], atol=1e-4)


def test_the_plugin_steers_its_template_starts_as_one_population(tiny_bundle, term, tmp_path):
    from gen2d.data.templates import build_template
    from gen2d.diffusion.train import save_checkpoint
    from gen2d.scoring import get_generator

    save_checkpoint(tmp_path / "tiny.pt", tiny_bundle, step=120)
    gen = get_generator("egnn-diffusion", checkpoint=tmp_path / "tiny.pt", device="cpu")
    vocab = set(tiny_bundle.rep.vocab)
    usable = [
        n
        for n in ("silicene", "germanene", "phosphorene")
        if {e.symbol for e in build_template(n).composition} <= vocab
    ]
    term("test.small", lambda structures: [-float(len(s)) for s in structures])
    steering = {"rewards": {"test.small": 1.0}, "start": 0.59, "interval": 1, "strength": 2.0}
    out = list(
        gen.generate(n=5, seed=0, guidance={"steering": steering}, start="templates", templates=usable, n_steps=10)
    )
    assert len(out) == 5
    for g in out:
        d = g.parameters["diagnostics"]["steering"]
        assert d["particles"] == 5 and d["potentials"] > 0  # one batch: the five starts are the particles
        assert g.parameters["sampling"]["steering"]["rewards"] == {"test.small": 1.0}
        assert g.parameters["guidance"] == "custom"
