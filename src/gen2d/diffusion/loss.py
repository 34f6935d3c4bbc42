"""Training loss of the monolayer diffusion model: noise prediction plus masked property heads.

L = mean_k ||eps_k - eps_hat_k||^2 + l1 |dg_h error| + l2 (e_hull error)^2 + l3 BCE(synth), where k runs
over the four diffused parts (in-plane fractional coordinates, z, atom types, lattice parameters),
each normalised so that predicting zero noise scores 1.0. Missing labels are masked, never zero-filled.
With absorbing-state types (``EGNNConfig.type_diffusion == "absorbing"``) the type term is the
cross-entropy of the clean type on the masked atoms, divided by ln K so that a uniform guess over the K
elements scores 1.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gen2d.data.augment import random_rotation_z
from gen2d.data.graphs import lattice_from_params
from gen2d.diffusion.schedule import DiffusionSchedule
from gen2d.models.egnn import HEAD_NAMES, EGNNDenoiser, scatter_mean

PARTS = ("frac", "z", "types", "lattice")


@dataclass
class MonolayerBatch:
    """A batch of clean monolayers in the diffusion representation.

    Attributes
    ----------
    frac : (N, 2) in-plane fractional coordinates in [0, 1).
    z : (N,) out-of-plane coordinate in Å, centred per structure.
    types : (N,) index into the model's element vocabulary.
    lattice2d : (B, 2, 2) in-plane lattice rows a, b (Å).
    batch : (N,) structure index of each atom.
    labels : (B, 3) dg_h (eV), e_hull (eV/atom), synth (0/1), in :data:`HEAD_NAMES` order.
    label_mask : (B, 3) True where the label is known.
    """

    frac: torch.Tensor
    z: torch.Tensor
    types: torch.Tensor
    lattice2d: torch.Tensor
    batch: torch.Tensor
    labels: torch.Tensor
    label_mask: torch.Tensor

    @property
    def n_graphs(self) -> int:
        return self.lattice2d.shape[0]

    def to(self, device: torch.device | str) -> MonolayerBatch:
        return MonolayerBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


@dataclass
class Representation:
    """Maps between physical structures and the normalised variables that are diffused.

    Lattice parameters are (ln a, ln b, cos gamma) standardised with the training-set statistics; z is
    divided by ``z_scale``; types are one-hot vectors.
    """

    vocab: list[str]
    lattice_mean: list[float] = field(default_factory=lambda: [1.4, 1.6, -0.2])
    lattice_std: list[float] = field(default_factory=lambda: [0.3, 0.3, 0.2])
    z_scale: float = 2.0
    min_length: float = 2.0
    max_length: float = 30.0
    max_abs_cos: float = 0.8

    @property
    def n_types(self) -> int:
        return len(self.vocab)

    def encode_lattice(self, lattice2d: torch.Tensor) -> torch.Tensor:
        a, b = lattice2d[:, 0], lattice2d[:, 1]
        la, lb = a.norm(dim=-1), b.norm(dim=-1)
        cos_g = (a * b).sum(-1) / (la * lb)
        raw = torch.stack([la.log(), lb.log(), cos_g], -1)
        return (raw - self._t(self.lattice_mean, raw)) / self._t(self.lattice_std, raw)

    def decode_lattice(self, lat: torch.Tensor, c: float = 20.0) -> torch.Tensor:
        """``(B, 3, 3)`` lattice (a along x) from normalised parameters, clamped to a sane cell."""
        raw = lat * self._t(self.lattice_std, lat) + self._t(self.lattice_mean, lat)
        a = raw[:, 0].exp().clamp(self.min_length, self.max_length)
        b = raw[:, 1].exp().clamp(self.min_length, self.max_length)
        cos_g = raw[:, 2].clamp(-self.max_abs_cos, self.max_abs_cos)
        return lattice_from_params(a, b, cos_g, c)

    @staticmethod
    def _t(values: list[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def vp_eps(
    x_t: torch.Tensor,
    out: torch.Tensor,
    abar: torch.Tensor,
    mean: torch.Tensor | float = 0.0,
    var: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Noise prediction of a VP part: the Wiener filter for clean data of ``mean`` and ``var`` (per
    dimension) plus ``out`` times the RMS error that filter leaves, sqrt(abar var / (abar var + 1 - abar)).

    With mean 0 and var 1 this is the v-parameterisation the network uses, eps = sqrt(1 - abar) x_t +
    sqrt(abar) out. With ``out = 0`` and the data's statistics it is the shrinkage reference of
    :func:`diffusion_loss`. (Giving the network the data's statistics, Karras et al. 2022's
    preconditioning, brought its type loss down to that reference in 12 CPU-minutes, but free-start
    strict validity fell from 16.5 % to 8 %, so the network keeps mean 0, var 1.)
    """
    mean = torch.as_tensor(mean, dtype=x_t.dtype, device=x_t.device)
    var = torch.as_tensor(var, dtype=x_t.dtype, device=x_t.device)
    denom = abar * var + 1 - abar
    return (1 - abar).sqrt() * (x_t - abar.sqrt() * mean) / denom + (abar * var / denom).sqrt() * out


def centre_per_graph(v: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Remove each structure's mean: z lives in the zero-centre-of-mass subspace."""
    return v - scatter_mean(v[:, None], batch, n_graphs)[batch, 0]


def centre_per_graph_2d(v: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Remove each structure's mean from ``(N, k)`` vectors."""
    return v - scatter_mean(v, batch, n_graphs)[batch]


def predict_noise(
    model: EGNNDenoiser,
    rep: Representation,
    frac_t: torch.Tensor,
    z_t: torch.Tensor,
    h_t: torch.Tensor,
    lat_t: torch.Tensor,
    t: torch.Tensor,
    batch: torch.Tensor,
    schedule: DiffusionSchedule,
    cond_list: list[torch.Tensor | None],
    lattice_override: torch.Tensor | None = None,
    rotate: bool = False,
) -> dict:
    """Run the denoiser on a noisy state and return noise predictions in the diffused variables.

    In-plane, the EGNN's coordinate output is read as the displacement towards the clean layer, and
    the noise is eps = -displacement / sigma_t (in fractional units). A displacement is what
    message passing on neighbour vectors computes naturally; asking for eps directly would need an
    output 1/sigma_t (up to 200x) larger at low noise.

    Parameters
    ----------
    lattice_override : torch.Tensor, optional
        ``(B, 3, 3)`` physical lattice to use instead of decoding ``lat_t`` (template starts keep
        their cell).
    rotate : bool
        Rotate each cell by a random angle about z first (augmentation; the output is invariant).

    Returns
    -------
    dict
        ``eps_frac``, ``eps_z``, ``eps_types``, ``eps_lattice`` (lists, one per condition) and ``heads``. For
        a model with absorbing-state types, ``h_t`` is the one-hot over the vocabulary plus MASK and
        ``type_logits`` (the clean type's logits over the vocabulary) replaces ``eps_types``.
    """
    n_graphs = lat_t.shape[0]
    # the geometry the network reads is built in float32 even under autocast: in bfloat16 the rotation and the
    # fractional-to-Cartesian product round positions by up to about 0.04 Å in a 10 Å cell, as large as the
    # in-plane noise at the clean end, while the noise target stays exact
    with torch.autocast(frac_t.device.type, enabled=False):
        lattice = rep.decode_lattice(lat_t) if lattice_override is None else lattice_override
        lattice = lattice.float()
        if rotate:
            lat2 = random_rotation_z(lattice[:, :2, :2])
            lattice = torch.cat([torch.cat([lat2, lattice[:, :2, 2:]], -1), lattice[:, 2:]], 1)
        lat2d = lattice[:, :2, :2]
        xy = torch.einsum("ni,nij->nj", frac_t.float(), lat2d[batch])
        pos = torch.cat([xy, (z_t.float() * rep.z_scale)[:, None]], -1)
    out = model(pos, lattice, h_t, lat_t, t.to(pos.dtype) / schedule.T, batch, cond_list=cond_list)
    inv = torch.linalg.inv(lat2d)[batch]
    sigma = schedule.sigma.to(pos.device)[t[batch]].to(pos.dtype)[:, None]
    # VP parts use the v-parameterisation: eps = sqrt(1 - abar) x_t + sqrt(abar) v_net, which is exact at
    # both ends (eps -> x_t at high noise) and keeps the network output of unit scale at every t.
    ab = schedule.alpha_bar.to(pos.device).to(pos.dtype)
    t_lead = schedule.lead(t)  # types and lattice may run ahead of the positions (ScheduleSpec.lead_power)
    ab_g, ab_a, ab_h = ab[t_lead][:, None], ab[t[batch]][:, None], ab[t_lead[batch]][:, None]

    res = {
        "eps_frac": [],
        "eps_z": [],
        "heads": out["heads"],
        "eps_lattice": [vp_eps(lat_t, v, ab_g) for v in out["eps_lattice"]],
    }
    if model.config.absorbing:
        res["type_logits"] = out["type_logits"]  # already the clean estimate: nothing to convert
    else:
        res["eps_types"] = [vp_eps(h_t, v, ab_h) for v in out["eps_types"]]
    for eps_pos in out["eps_pos"]:
        eps_f = -torch.einsum("ni,nij->nj", eps_pos[:, :2], inv) / sigma
        res["eps_frac"].append(centre_per_graph_2d(eps_f, batch, n_graphs))
        eps_z = vp_eps(z_t[:, None], eps_pos[:, 2:3], ab_a)[:, 0]
        res["eps_z"].append(centre_per_graph(eps_z, batch, n_graphs))
    return res


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the rows where ``mask`` is True; 0 (with a zero gradient) when none is."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def make_condition(labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Condition vector: label values (0 where unknown) then presence flags."""
    return torch.cat([torch.where(mask, labels, torch.zeros_like(labels)), mask.to(labels.dtype)], -1)


def property_head_loss(
    heads: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, lambdas: tuple[float, float, float]
) -> dict[str, torch.Tensor]:
    """Masked head losses: L1 on dg_h, squared error on e_hull, BCE on synth; 0 when no label."""
    out = {}
    fns = {
        "dg_h": lambda p, y: (p - y).abs(),
        "e_hull": lambda p, y: (p - y) ** 2,
        "synth": lambda p, y: F.binary_cross_entropy_with_logits(p, y, reduction="none"),
    }
    for k, name in enumerate(HEAD_NAMES):
        m = mask[:, k]
        if m.any():
            out[name] = lambdas[k] * fns[name](heads[m, k], labels[m, k]).mean()
        else:
            out[name] = heads.sum() * 0.0
    return out


def shrinkage_stats(data: MonolayerBatch, rep: Representation) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-dimension mean and variance of the clean z, types and lattice variables of ``data``: all that
    :func:`diffusion_loss`'s shrinkage baseline knows."""
    z = data.z / rep.z_scale
    h0 = F.one_hot(data.types, rep.n_types).to(data.frac.dtype)
    lat0 = rep.encode_lattice(data.lattice2d)
    return {k: (v.mean(0), v.var(0, unbiased=False)) for k, v in (("z", z), ("types", h0), ("lattice", lat0))}


def _shrinkage_eps(x_t: torch.Tensor, abar: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """E[eps | x_t] when x0 is Gaussian with ``mean`` and ``var`` (the Wiener filter): no network at all."""
    return vp_eps(x_t, torch.zeros_like(x_t), abar.reshape(-1, *([1] * (x_t.dim() - 1))), mean, var)


def diffusion_loss(
    model: EGNNDenoiser,
    rep: Representation,
    schedule: DiffusionSchedule,
    data: MonolayerBatch,
    lambdas: tuple[float, float, float] = (1.0, 1.0, 0.5),
    cond_dropout: float = 0.15,
    rotate: bool = True,
    generator: torch.Generator | None = None,
    t: torch.Tensor | None = None,
    shrinkage: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """One evaluation of the joint loss on a batch.

    Parameters
    ----------
    shrinkage : dict, optional
        :func:`shrinkage_stats` of the population; when given, the loss of the best network-free denoiser
        that knows only those means and variances is returned too, on the same noise draws.

    Returns
    -------
    dict
        ``loss`` (to minimise), ``denoise`` (mean of the four parts), each part's ``eps_<part>`` (absorbing-state
        types: ``ce_types``, the masked atoms' cross-entropy over ln K, with ``trivial_types`` the uniform
        guess and ``shrinkage_types`` the population's element frequencies),
        the trivial (zero-prediction) value ``trivial_denoise`` and per part ``trivial_<part>`` (on the
        same noise draws), and the head terms. With ``shrinkage``: ``shrinkage_denoise`` and per part
        ``shrinkage_<part>``. At high noise a VP part's noise is mostly its own noisy value, so predicting
        zero is a weak reference there; the shrinkage one is what a network must beat to have learned
        anything about the layers. In-plane, its value is the trivial one (a uniform torus prior says
        nothing about the noise).
    """
    device = data.frac.device
    B, batch = data.n_graphs, data.batch
    if t is None:
        t = torch.randint(0, schedule.T, (B,), generator=generator).to(device)
    t_atom = t[batch]

    def noise(shape):
        return torch.randn(shape, generator=generator, dtype=data.frac.dtype).to(device)

    # Positions are diffused in the zero-mean subspace (per structure): a global translation is a
    # symmetry the network cannot see, so its share of the noise (1/N of it) would be unlearnable.
    absorbing = model.config.absorbing
    eps_frac = centre_per_graph_2d(noise(data.frac.shape), batch, B)
    eps_z = centre_per_graph(noise(data.z.shape), batch, B)
    t_lead = schedule.lead(t)
    if absorbing:  # each atom's type is MASK with probability 1 - kappa at its (leading) type step
        u = torch.rand(data.types.shape, generator=generator, dtype=torch.float64).to(device)
        types_t = schedule.mask_types(data.types, t_lead[batch], u, rep.n_types)
        masked = types_t == rep.n_types
        h_t = F.one_hot(types_t, rep.n_types + 1).to(data.frac.dtype)
    else:
        h0 = F.one_hot(data.types, rep.n_types).to(data.frac.dtype)
        eps_h = noise(h0.shape)
    lat0 = rep.encode_lattice(data.lattice2d)
    eps_lat = noise(lat0.shape)

    frac_t = schedule.torus_noise(data.frac, t_atom, eps_frac)
    z_t = schedule.vp_noise(data.z / rep.z_scale, t_atom, eps_z)
    if not absorbing:
        h_t = schedule.vp_noise(h0, t_lead[batch], eps_h)
    lat_t = schedule.vp_noise(lat0, t_lead, eps_lat)

    cond = make_condition(data.labels, data.label_mask)
    drop = (torch.rand(B, generator=generator) < cond_dropout).to(device)
    cond = torch.where(drop[:, None], torch.zeros_like(cond), cond)

    pred = predict_noise(model, rep, frac_t, z_t, h_t, lat_t, t, batch, schedule, [cond], rotate=rotate)
    if absorbing:
        log_k = math.log(rep.n_types) if rep.n_types > 1 else 1.0
        ce = F.cross_entropy(pred["type_logits"][0].float(), data.types, reduction="none")
        type_part = {"ce_types": masked_mean(ce, masked) / log_k}  # only masked atoms carry a loss
        type_trivial = {"trivial_types": masked.any().to(data.frac.dtype)}  # the uniform guess: ln K / ln K
    else:
        type_part = {"eps_types": ((pred["eps_types"][0] - eps_h) ** 2).mean()}
        type_trivial = {"trivial_types": (eps_h**2).mean()}
    parts = {
        "eps_frac": ((pred["eps_frac"][0] - eps_frac) ** 2).mean(),
        "eps_z": ((pred["eps_z"][0] - eps_z) ** 2).mean(),
        **type_part,
        "eps_lattice": ((pred["eps_lattice"][0] - eps_lat) ** 2).mean(),
    }
    trivial_parts = {
        "trivial_frac": (eps_frac**2).mean(),
        "trivial_z": (eps_z**2).mean(),
        **type_trivial,
        "trivial_lattice": (eps_lat**2).mean(),
    }
    trivial = torch.stack(list(trivial_parts.values())).mean()
    denoise = torch.stack(list(parts.values())).mean()
    if shrinkage is not None:
        ab = schedule.alpha_bar.to(device).to(data.frac.dtype)
        shrink = {"shrinkage_frac": trivial_parts["trivial_frac"]}
        vp_parts = [("z", z_t, eps_z, ab[t_atom]), ("lattice", lat_t, eps_lat, ab[t_lead])]
        if absorbing:  # the population's element frequencies as the clean-type guess of every masked atom
            freq = shrinkage["types"][0].to(device).clamp_min(1e-12)
            shrink["shrinkage_types"] = masked_mean(-freq.log()[data.types], masked) / log_k
        else:
            vp_parts.insert(1, ("types", h_t, eps_h, ab[t_lead[batch]]))
        for key, x_t, eps, abar in vp_parts:
            mean, var = (v.to(device) for v in shrinkage[key])
            pred_s = _shrinkage_eps(x_t, abar, mean, var)
            if key == "z":
                pred_s = centre_per_graph(pred_s, batch, B)
            shrink[f"shrinkage_{key}"] = ((pred_s - eps) ** 2).mean()
        trivial_parts.update(shrink)
        trivial_parts["shrinkage_denoise"] = torch.stack(list(shrink.values())).mean()
    heads = property_head_loss(pred["heads"], data.labels, data.label_mask, lambdas)
    loss = denoise + sum(heads.values())
    return {
        "loss": loss,
        "denoise": denoise,
        "trivial_denoise": trivial,
        **parts,
        **trivial_parts,
        **{f"head_{k}": v for k, v in heads.items()},
    }
