"""The one noise schedule shared by training and sampling.

Atom types, z and the lattice parameters use a variance-preserving (DDPM) process with a cosine
alpha-bar; the in-plane fractional coordinates live on a torus and use a variance-exploding process
(wrapped Gaussian, sigma geometric from ``sigma_min`` to ``sigma_max``), whose prior at t = T is
uniform over the cell. Absorbing-state atom types (``type_diffusion: absorbing``) mask each atom with the
probability ``1 - type_keep(t)``, read from the same alpha-bar. A checkpoint stores the schedule, and the sampler refuses a schedule whose
fingerprint differs from the one the model was trained with.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import torch


@dataclass(frozen=True)
class ScheduleSpec:
    """Every number that defines the schedule; its fingerprint identifies it."""

    T: int = 1000
    cosine_s: float = 0.008
    max_beta: float = 0.999
    sigma_min: float = 0.005
    sigma_max: float = 0.5
    lead_power: float = 1.0
    """Atom types and the lattice run ahead of the positions: at step t they are noised to step
    (T-1) (t/(T-1))^p, so for p > 1 they are already readable while the positions are being set. 1 = one
    clock for every part (the original schedule)."""

    def fingerprint(self) -> str:
        d = asdict(self)
        if d["lead_power"] == 1.0:  # absent from the schedules written before it existed: same fingerprint
            del d["lead_power"]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class DiffusionSchedule:
    """Tables indexed by the integer step ``t`` in ``0 .. T-1`` (``t = 0`` is the least noisy).

    Examples
    --------
    >>> s = DiffusionSchedule()
    >>> round(float(s.alpha_bar[0]), 4), round(float(s.alpha_bar[-1]), 4) < 1e-3
    (0.9999, True)
    """

    spec: ScheduleSpec = field(default_factory=ScheduleSpec)

    def __post_init__(self) -> None:
        T, s = self.spec.T, self.spec.cosine_s
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar_full = f / f[0]
        betas = (1 - alpha_bar_full[1:] / alpha_bar_full[:-1]).clamp(max=self.spec.max_beta)
        self.betas = betas
        self.alpha_bar = torch.cumprod(1 - betas, 0)
        ratio = self.spec.sigma_max / self.spec.sigma_min
        self.sigma = self.spec.sigma_min * ratio ** (torch.arange(T, dtype=torch.float64) / max(T - 1, 1))

    @property
    def T(self) -> int:
        return self.spec.T

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint()

    def to_dict(self) -> dict:
        return {**asdict(self.spec), "fingerprint": self.fingerprint}

    def lead(self, t: torch.Tensor) -> torch.Tensor:
        """The step at which types and the lattice are when the positions are at ``t`` (``t < 0``, the
        clean end, stays as it is)."""
        p = self.spec.lead_power
        if p == 1.0:
            return t
        last = self.T - 1
        mapped = torch.round(last * (t.clamp(min=0).to(torch.float64) / last) ** p).to(t.dtype)
        return torch.where(t < 0, t, mapped)

    @classmethod
    def from_dict(cls, d: dict) -> DiffusionSchedule:
        spec = ScheduleSpec(**{k: v for k, v in d.items() if k != "fingerprint"})
        sched = cls(spec)
        if "fingerprint" in d and d["fingerprint"] != sched.fingerprint:
            raise ValueError("schedule fingerprint does not match its parameters")
        return sched

    # --- forward (noising) process -----------------------------------------------------------------
    def _at(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return table.to(like.device)[t].to(like.dtype)

    def vp_noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, ``t`` broadcast per row of ``x0``."""
        ab = self._at(self.alpha_bar, t, x0).reshape(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def torus_noise(self, f0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """f_t = (f0 + sigma_t eps) mod 1: a wrapped Gaussian on the in-plane torus."""
        sig = self._at(self.sigma, t, f0).reshape(-1, *([1] * (f0.dim() - 1)))
        return torch.remainder(f0 + sig * eps, 1.0)

    def type_keep(self, t: torch.Tensor) -> torch.Tensor:
        """Absorbing-state types: the probability that an atom's type is still unmasked at type-clock step
        ``t`` (pass ``lead(t)``), as float64.

        It is the schedule's own alpha-bar stretched affinely so that the ends are exact, kappa_t =
        (abar_t - abar_{T-1}) / (abar_0 - abar_{T-1}): every atom is MASK at t = T - 1 (the sampler's start)
        and none at t <= 0 (``t < 0``, the clean end, keeps everything). Between the ends it differs from
        abar_t by less than 1e-4 for the cosine schedule.
        """
        ab = self.alpha_bar.to(t.device)
        first, last = ab[0], ab[-1]
        kappa = ((ab[t.clamp(0, self.T - 1)] - last) / (first - last)).clamp(0.0, 1.0)
        return torch.where(t <= 0, torch.ones_like(kappa), kappa)

    def mask_types(self, types: torch.Tensor, t: torch.Tensor, u: torch.Tensor, mask_index: int) -> torch.Tensor:
        """Forward absorbing process: ``types`` (N,) with each atom replaced by ``mask_index`` where the uniform
        draw ``u`` (N,) falls at or above its keep probability at step ``t`` (N,)."""
        return torch.where(u.to(torch.float64) >= self.type_keep(t), torch.full_like(types, mask_index), types)

    def unmask_probability(self, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Reverse absorbing process: the probability that an atom still MASK at step ``t`` is unmasked on the
        way to ``s < t`` (``s < 0``: the clean end, probability 1), (kappa_s - kappa_t) / (1 - kappa_t)."""
        k_t, k_s = self.type_keep(t), self.type_keep(s)
        p = ((k_s - k_t) / (1 - k_t).clamp_min(1e-12)).clamp(0.0, 1.0)
        return torch.where(s < 0, torch.ones_like(p), p)  # (1 - kappa_t) / (1 - kappa_t), also where kappa_t = 1

    # --- reverse (ancestral) steps, from t to an earlier s (s = t - 1 unless respaced) ---------------
    def vp_step(
        self,
        x_t: torch.Tensor,
        eps_hat: torch.Tensor,
        t: torch.Tensor,
        s: torch.Tensor,
        x0_bounds: tuple[float, float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std of x_s given x_t and predicted noise; ``s < 0`` means x_0 (std 0).

        The mean is written through the implied clean sample x0_hat, clipped to ``x0_bounds`` when
        given: at the noisiest steps sqrt(abar_t) is ~1e-4 and an imperfect eps_hat would otherwise be
        amplified into an unbounded x0_hat (this is what keeps z, and so the thickness, bounded).
        """
        shape = (-1, *([1] * (x_t.dim() - 1)))
        ab_t = self._at(self.alpha_bar, t, x_t).reshape(shape)
        ab_s = torch.where(
            s.reshape(shape) >= 0, self._at(self.alpha_bar, s.clamp_min(0), x_t).reshape(shape), torch.ones_like(ab_t)
        )
        alpha = ab_t / ab_s
        beta = 1 - alpha
        x0_hat = (x_t - (1 - ab_t).sqrt() * eps_hat) / ab_t.sqrt()
        if x0_bounds is not None:
            x0_hat = x0_hat.clamp(*x0_bounds)
        mean = ab_s.sqrt() * beta / (1 - ab_t) * x0_hat + alpha.sqrt() * (1 - ab_s) / (1 - ab_t) * x_t
        var = beta * (1 - ab_s) / (1 - ab_t)
        return mean, var.clamp_min(0).sqrt()

    def torus_step(
        self, f_t: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral variance-exploding step on the torus (mean not yet wrapped) and its std."""
        shape = (-1, *([1] * (f_t.dim() - 1)))
        sig_t = self._at(self.sigma, t, f_t).reshape(shape)
        sig_s = torch.where(
            s.reshape(shape) >= 0, self._at(self.sigma, s.clamp_min(0), f_t).reshape(shape), torch.zeros_like(sig_t)
        )
        dvar = sig_t**2 - sig_s**2
        mean = f_t - dvar / sig_t * eps_hat
        std = (dvar * sig_s**2 / sig_t**2).clamp_min(0).sqrt()
        return mean, std

    def timesteps(self, n_steps: int | None = None) -> list[int]:
        """Descending steps for sampling: all T, or ``n_steps`` evenly respaced over the same tables."""
        if n_steps is None or n_steps >= self.T:
            return list(range(self.T - 1, -1, -1))
        idx = torch.linspace(self.T - 1, 0, n_steps).round().long().unique(sorted=True).flip(0)
        return idx.tolist()
