"""The shrinkage reference of the denoising loss, and vp_eps, the formula it shares with the network's
v-parameterisation.

Predicting zero noise is a weak reference for a VP part: at high noise its noise is mostly its own noisy
value. The Wiener filter (the best denoiser that knows only the mean and variance of the clean data) is
the reference a network has to beat to have learned anything.
"""

from __future__ import annotations

import torch

from gen2d.diffusion.loss import _shrinkage_eps, vp_eps


def _gaussian_draws(abar: float, mean: float, var: float, n: int = 200_000, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = mean + var**0.5 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    eps = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    a = torch.full((n, 1), abar, dtype=torch.float64)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, eps, a


def test_unit_statistics_give_exactly_the_v_parameterisation():
    gen = torch.Generator().manual_seed(3)
    x_t, out = torch.randn(7, 5, generator=gen), torch.randn(7, 5, generator=gen)
    abar = torch.rand(7, 1, generator=gen)
    torch.testing.assert_close(vp_eps(x_t, out, abar), (1 - abar).sqrt() * x_t + abar.sqrt() * out)


def test_wiener_filter_reaches_its_closed_form_error_and_beats_both_naive_references():
    """For x0 ~ N(m, s^2): E||eps - eps_W||^2 = abar s^2 / (abar s^2 + 1 - abar); zero prediction scores 1."""
    for abar, m, var in [(0.9, 0.014, 0.0138), (0.5, 0.0, 0.3), (0.1, 1.0, 2.0)]:
        x_t, eps, a = _gaussian_draws(abar, m, var)
        err = float(((_shrinkage_eps(x_t, a[:, 0], torch.tensor(m), torch.tensor(var)) - eps) ** 2).mean())
        expected = abar * var / (abar * var + 1 - abar)
        assert abs(err - expected) < 0.01, (abar, err, expected)
        v_skip = float(((vp_eps(x_t, torch.zeros_like(x_t), a) - eps) ** 2).mean())  # assumes N(0, 1) data
        zero = float((eps**2).mean())
        assert err <= v_skip + 1e-3 and err < zero


def test_the_network_output_scale_is_the_error_the_filter_leaves():
    """With the exact residual as network output, eps is recovered: c_out is the filter's RMS error."""
    abar, m, var = 0.7, 0.05, 0.04
    x_t, eps, a = _gaussian_draws(abar, m, var, n=50_000)
    w = _shrinkage_eps(x_t, a[:, 0], torch.tensor(m), torch.tensor(var))
    c_out = (abar * var / (abar * var + 1 - abar)) ** 0.5
    residual = (eps - w) / c_out
    assert abs(float(residual.std()) - 1.0) < 0.02  # a unit-scale target for the network
    torch.testing.assert_close(vp_eps(x_t, residual, a, m, var), eps)


def test_evaluation_reports_the_shrinkage_reference(tiny_bundle, data_available):
    from gen2d.diffusion.train import TrainConfig, evaluate_denoising, load_training_set

    recs, _ = load_training_set(
        TrainConfig(**{k: v for k, v in tiny_bundle.meta["config"].items() if k in TrainConfig.model_fields})
    )
    r = evaluate_denoising(tiny_bundle, recs, device="cpu", repeats=2)
    # in-plane, a uniform torus prior says nothing about the noise: the reference is zero prediction
    assert r["shrinkage_frac"] == r["trivial_frac"]
    for part in ("z", "types", "lattice"):
        assert 0.0 < r[f"shrinkage_{part}"] < r[f"trivial_{part}"], part
    assert r["shrinkage_denoise"] < r["trivial_denoise"]
