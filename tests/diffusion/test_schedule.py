"""One schedule: its steps invert its noising, and sampling refuses any schedule but the trained one."""

from __future__ import annotations

import pytest
import torch

from gen2d.diffusion.schedule import DiffusionSchedule, ScheduleSpec


def test_cosine_vp_endpoints_and_monotone():
    s = DiffusionSchedule()
    assert s.T == 1000
    assert float(s.alpha_bar[0]) > 0.999 and float(s.alpha_bar[-1]) < 1e-3
    assert torch.all(s.alpha_bar[1:] < s.alpha_bar[:-1])
    assert torch.all(s.sigma[1:] > s.sigma[:-1])


def test_torus_prior_is_uniform_at_T():
    s = DiffusionSchedule()
    gen = torch.Generator().manual_seed(0)
    f0 = torch.full((20000, 2), 0.3)
    f = s.torus_noise(f0, torch.full((20000,), s.T - 1), torch.randn(20000, 2, generator=gen))
    hist = torch.histc(f[:, 0], bins=10, min=0, max=1) / 20000
    assert torch.all((hist - 0.1).abs() < 0.02), hist  # wrapped N(0.3, 0.5^2) is flat to ~1 %


def test_reverse_step_with_true_noise_recovers_clean_data():
    s = DiffusionSchedule()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 4, generator=gen, dtype=torch.float64)  # float64: at t=999 sqrt(abar) ~ 1e-4
    eps = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 10, 200, 500, 900, 999])
    last = torch.full((6,), -1)
    mean, std = s.vp_step(s.vp_noise(x0, t, eps), eps, t, last)
    torch.testing.assert_close(mean, x0, atol=1e-8, rtol=1e-8)
    assert torch.all(std == 0)
    f0 = torch.rand(6, 2, generator=gen)
    e2 = torch.randn(6, 2, generator=gen)
    f_t = s.torus_noise(f0, t, e2)
    mean_f, std_f = s.torus_step(f_t, e2, t, last)
    d = torch.remainder(mean_f - f0 + 0.5, 1.0) - 0.5  # equal modulo a lattice vector
    assert d.abs().max() < 1e-5 and torch.all(std_f == 0)


def test_respaced_steps_come_from_the_same_tables():
    s = DiffusionSchedule()
    full = s.timesteps()
    assert full[0] == 999 and full[-1] == 0 and len(full) == 1000
    short = s.timesteps(50)
    assert short[0] == 999 and short[-1] == 0 and len(short) == 50 and set(short) <= set(full)


def test_fingerprint_roundtrip_and_mismatch():
    s = DiffusionSchedule()
    assert DiffusionSchedule.from_dict(s.to_dict()).fingerprint == s.fingerprint
    other = DiffusionSchedule(ScheduleSpec(sigma_max=0.8))
    assert other.fingerprint != s.fingerprint
    bad = s.to_dict() | {"sigma_max": 0.8}
    with pytest.raises(ValueError, match="fingerprint"):
        DiffusionSchedule.from_dict(bad)


def test_training_and_sampling_share_one_schedule(tiny_bundle, tmp_path):
    """The checkpoint carries the training schedule; the sampler uses it and refuses another."""
    from gen2d.diffusion.sampler import SamplingConfig, Start, sample_batch

    trained = DiffusionSchedule(
        ScheduleSpec(
            T=tiny_bundle.meta["config"]["T"],
            sigma_min=tiny_bundle.meta["config"]["sigma_min"],
            sigma_max=tiny_bundle.meta["config"]["sigma_max"],
        )
    )
    assert tiny_bundle.schedule.fingerprint == trained.fingerprint
    gen = torch.Generator().manual_seed(0)
    cfg = SamplingConfig(n_steps=5)
    out = sample_batch(tiny_bundle, Start([3]), cfg, gen, "cpu", schedule=trained)
    assert len(out) == 1
    with pytest.raises(ValueError, match="differs from the training schedule"):
        sample_batch(tiny_bundle, Start([3]), cfg, gen, "cpu", schedule=DiffusionSchedule(ScheduleSpec(T=500)))


def test_lead_clock_keeps_both_ends_and_runs_ahead():
    """Types and lattice on a leading clock: pure noise at the start, clean at the end, ahead between."""
    s = DiffusionSchedule(ScheduleSpec(lead_power=2.0))
    t = torch.arange(s.T)
    lead = s.lead(t)
    assert int(lead[-1]) == s.T - 1 and int(lead[0]) == 0
    assert torch.all(lead <= t) and torch.all(lead[1:] >= lead[:-1])
    assert int(s.lead(torch.tensor([500]))) < 300  # half-way in position noise, types are much cleaner
    assert int(s.lead(torch.tensor([-1]))) == -1  # "the clean end" stays the clean end
    torch.testing.assert_close(DiffusionSchedule().lead(t), t)  # power 1: one clock


def test_a_lead_schedule_is_its_own_schedule_and_older_fingerprints_still_hold():
    plain, lead = DiffusionSchedule(), DiffusionSchedule(ScheduleSpec(lead_power=2.0))
    assert lead.fingerprint != plain.fingerprint
    assert DiffusionSchedule.from_dict(lead.to_dict()).spec.lead_power == 2.0
    # a schedule written before lead_power existed verifies against its stored fingerprint
    old = {k: v for k, v in plain.to_dict().items() if k != "lead_power"}
    assert DiffusionSchedule.from_dict(old).fingerprint == old["fingerprint"]


def test_reverse_steps_on_the_lead_clock_recover_clean_data():
    """The sampler's VP steps for types and lattice use the leading clock at t and at the next step."""
    s = DiffusionSchedule(ScheduleSpec(lead_power=2.0))
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([3, 100, 500, 800, 999])
    tl = s.lead(t)
    mean, std = s.vp_step(s.vp_noise(x0, tl, eps), eps, tl, s.lead(torch.full((5,), -1)))
    torch.testing.assert_close(mean, x0, atol=1e-7, rtol=1e-7)
    # respaced steps that land on the same lead step leave the state alone, without noise
    same = torch.tensor([0, 0])
    x = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    m2, s2 = s.vp_step(x, torch.randn(2, 3, generator=gen, dtype=torch.float64), same, same)
    torch.testing.assert_close(m2, x)
    assert torch.all(s2 == 0)
