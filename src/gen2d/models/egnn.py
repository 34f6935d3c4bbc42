"""EGNN denoiser for periodic monolayers, with property heads for dg_h, e_hull and synthesizability.

Message passing runs on a periodic in-plane radius graph (:mod:`gen2d.data.graphs`). Edge features
are invariant under rotations about z (distance, the z-component of the edge and, when
``frac_fourier > 0``, harmonics of the fractional in-plane edge difference), node coordinate
updates are sums of edge vectors, so the predicted position noise rotates with the structure about
z and ignores translations, permutations and lattice-vector shifts of atoms. The property heads read
the trunk before the condition enters, so guidance by their gradient never sees the target it is
steering towards.

Owned by the ``egnn-diffusion`` generator plugin (``plugins/gen2d_egnn``); see :mod:`gen2d.models`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from gen2d.data.graphs import PeriodicGraph, periodic_radius_graph

HEAD_NAMES = ("dg_h", "e_hull", "synth")
"""Order of the property heads and of the condition vector."""
TYPE_DIFFUSIONS = ("gaussian", "absorbing")
"""The ways atom types can be diffused (:attr:`EGNNConfig.type_diffusion`)."""


@dataclass
class EGNNConfig:
    """Architecture knobs; saved with every checkpoint."""

    n_types: int = 16
    hidden: int = 128
    n_layers: int = 4
    n_cond_layers: int = 1
    cutoff: float = 4.0
    n_rbf: int = 16
    time_dim: int = 32
    aggregation_norm: float = 16.0
    frac_fourier: int = 0
    """Harmonics of the in-plane fractional edge difference used as edge features (0 = none, the
    original model). They do not change when the (noisy) lattice is distorted, so the in-plane
    denoising signal is not buried under the lattice noise; see :meth:`EGNNDenoiser._edge_attr`."""
    type_diffusion: str = "gaussian"
    """How atom types are diffused: ``gaussian``, a continuous one-hot with a noise (v) output (the original
    model; checkpoints written before this field load as it), or ``absorbing``, a discrete masked process
    (D3PM's absorbing state): the type input is a one-hot over the vocabulary plus a MASK token and the
    type output is logits over the vocabulary, the clean type estimate."""

    def __post_init__(self) -> None:
        if self.type_diffusion not in TYPE_DIFFUSIONS:
            raise ValueError(f"type_diffusion {self.type_diffusion!r} is not one of {TYPE_DIFFUSIONS}")

    @property
    def absorbing(self) -> bool:
        return self.type_diffusion == "absorbing"

    @property
    def n_type_inputs(self) -> int:
        """Width of the type input: the vocabulary, plus the MASK token for absorbing types."""
        return self.n_types + (1 if self.absorbing else 0)

    def to_dict(self) -> dict:
        return asdict(self)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros((n, *src.shape[1:]), dtype=src.dtype, device=src.device)
    return out.index_add_(0, index, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    total = scatter_sum(src, index, n)
    count = torch.bincount(index, minlength=n).clamp_min(1).to(src.dtype)
    return total / count.reshape(-1, *([1] * (src.dim() - 1)))


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of a continuous time in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    ang = t[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.sin(ang), torch.cos(ang)], -1)


class RadialBasis(nn.Module):
    """Gaussian radial basis times a smooth cosine cutoff, so edges enter and leave continuously."""

    def __init__(self, cutoff: float, n_rbf: int):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf))
        self.width = (cutoff / n_rbf) ** -2

    def forward(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        env = 0.5 * (torch.cos(math.pi * (d / self.cutoff).clamp(max=1.0)) + 1.0)
        rbf = torch.exp(-self.width * (d[:, None] - self.centers) ** 2)
        return rbf * env[:, None], env


class EGNNLayer(nn.Module):
    """One E(n)-equivariant layer (Satorras et al. 2021) on periodic edges."""

    def __init__(self, hidden: int, n_edge: int, aggregation_norm: float):
        super().__init__()
        self.norm = aggregation_norm
        self.edge_mlp = nn.Sequential(
            nn.Linear(2 * hidden + n_edge, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.gate = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.01)  # start close to the identity map on coordinates
        self.coord_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), last)
        self.ln = nn.LayerNorm(hidden)

    def forward(
        self, h: torch.Tensor, x: torch.Tensor, edge_index: torch.Tensor, shift: torch.Tensor, edge_attr_fn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        src, dst = edge_index
        r = x[dst] - x[src] - shift
        d = torch.sqrt((r**2).sum(-1) + 1e-8)
        e_attr, env = edge_attr_fn(r, d)
        m = self.edge_mlp(torch.cat([h[dst], h[src], e_attr], -1))
        m = m * self.gate(m) * env[:, None]
        coord_w = self.coord_mlp(m)
        dx = scatter_sum(r / (d[:, None] + 1.0) * coord_w, dst, x.shape[0]) / self.norm
        agg = scatter_sum(m, dst, h.shape[0]) / self.norm
        h = h + self.node_mlp(torch.cat([self.ln(h), agg], -1))
        return h, x + dx


class EGNNDenoiser(nn.Module):
    """Predicts the noise on positions, types and lattice, and the properties of a noisy monolayer.

    Parameters
    ----------
    config : EGNNConfig
        Architecture.

    Notes
    -----
    ``forward`` takes Cartesian positions (Å) and lattices; converting fractional coordinates and
    lattice parameters is the diffusion wrapper's job (:mod:`gen2d.diffusion.loss`).
    """

    def __init__(self, config: EGNNConfig):
        super().__init__()
        self.config = config
        H = config.hidden
        self.rbf = RadialBasis(config.cutoff, config.n_rbf)
        n_edge = config.n_rbf + 2 + 4 * config.frac_fourier
        # node input: type vector, time, centred z, lattice parameters (3) and log atom count
        self.embed = nn.Sequential(
            nn.Linear(config.n_type_inputs + config.time_dim + 1 + 3 + 1, H), nn.SiLU(), nn.Linear(H, H)
        )
        self.trunk = nn.ModuleList([EGNNLayer(H, n_edge, config.aggregation_norm) for _ in range(config.n_layers)])
        self.cond_embed = nn.Sequential(nn.Linear(2 * len(HEAD_NAMES), H), nn.SiLU(), nn.Linear(H, H))
        self.cond_layers = nn.ModuleList(
            [EGNNLayer(H, n_edge, config.aggregation_norm) for _ in range(config.n_cond_layers)]
        )
        self.type_out = nn.Sequential(nn.Linear(H, H), nn.SiLU(), nn.Linear(H, config.n_types))
        self.z_out = nn.Sequential(nn.Linear(H, H), nn.SiLU(), nn.Linear(H, 1))
        self.lattice_out = nn.Sequential(nn.Linear(2 * H + 3, H), nn.SiLU(), nn.Linear(H, 3))
        self.heads = nn.Sequential(
            nn.Linear(2 * H + 3, H), nn.SiLU(), nn.Linear(H, H), nn.SiLU(), nn.Linear(H, len(HEAD_NAMES))
        )

    def _edge_attr(
        self, r: torch.Tensor, d: torch.Tensor, inv_e: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rbf, env = self.rbf(d)
        # r_z / d and |r_z| are invariant under rotation about z: the only symmetry a slab has
        rz = r[:, 2] / (d + 1e-3)
        feats = [rbf, rz[:, None] * env[:, None], rz[:, None].abs() * env[:, None]]
        if self.config.frac_fourier and inv_e is not None:
            # The fractional edge difference r_xy L^-1 is invariant under rotations about z (the cell
            # turns with the layer) and under translations; sin/cos of 2 pi k times it are invariant under
            # lattice-vector shifts of atoms. Unlike Cartesian distances, it does not change when the
            # noisy lattice is distorted, which at every t hides the in-plane noise several times over.
            # in float32 even under autocast: a bfloat16 product rounds df by up to ~4e-3, which 2 pi k turns
            # into phase errors of the size of the clean-end noise
            with torch.autocast(r.device.type, enabled=False):
                df = torch.einsum("ei,eij->ej", r[:, :2].float(), inv_e.float())
                k = torch.arange(1, self.config.frac_fourier + 1, dtype=df.dtype, device=r.device)
                ang = 2 * math.pi * df[:, :, None] * k
                trig = [torch.sin(ang).flatten(1).to(env.dtype), torch.cos(ang).flatten(1).to(env.dtype)]
            feats += [trig[0] * env[:, None], trig[1] * env[:, None]]
        return torch.cat(feats, -1), env

    def _pool(self, h: torch.Tensor, batch: torch.Tensor, n_graphs: int) -> torch.Tensor:
        return torch.cat([scatter_mean(h, batch, n_graphs), scatter_sum(h, batch, n_graphs) / 16.0], -1)

    def forward(
        self,
        pos: torch.Tensor,
        lattice: torch.Tensor,
        types: torch.Tensor,
        lattice_feat: torch.Tensor,
        t_frac: torch.Tensor,
        batch: torch.Tensor,
        cond: torch.Tensor | None = None,
        graph: PeriodicGraph | None = None,
        cond_list: list[torch.Tensor] | None = None,
    ) -> dict:
        """Run the denoiser.

        Parameters
        ----------
        pos, lattice : torch.Tensor
            ``(N, 3)`` Cartesian positions (Å) and ``(B, 3, 3)`` lattice rows.
        types : torch.Tensor
            ``(N, n_types)`` noisy one-hot types; absorbing types: ``(N, n_types + 1)`` one-hot with the MASK
            token last.
        lattice_feat : torch.Tensor
            ``(B, 3)`` noisy normalised lattice parameters (rotation invariant).
        t_frac : torch.Tensor
            ``(B,)`` diffusion time t / T.
        cond : torch.Tensor or None
            ``(B, 6)``: target values then presence flags, in :data:`HEAD_NAMES` order. None = unconditional.
        cond_list : list of torch.Tensor, optional
            Several conditions evaluated on one shared trunk pass (classifier-free guidance); the
            returned ``eps_*`` entries are then lists.

        Returns
        -------
        dict
            ``eps_pos`` ``(N, 3)`` Cartesian, ``eps_types`` (absorbing types: ``type_logits``, the clean type
            estimate's logits over the vocabulary), ``eps_lattice`` ``(B, 3)``, ``heads`` ``(B, 3)`` (dg_h in
            eV, e_hull in eV/atom, synth logit).
        """
        n_graphs = lattice.shape[0]
        if graph is None:
            graph = periodic_radius_graph(pos.detach(), lattice.detach(), batch, self.config.cutoff)
        shift = graph.shift_vectors(lattice, batch)
        edge_attr = self._edge_attr
        if self.config.frac_fourier:
            inv_e = torch.linalg.inv(lattice[:, :2, :2])[batch[graph.edge_index[1]]]

            def edge_attr(r, d):
                return self._edge_attr(r, d, inv_e)

        counts = torch.bincount(batch, minlength=n_graphs).to(pos.dtype)
        z_centred = pos[:, 2] - scatter_mean(pos[:, 2:3], batch, n_graphs)[batch, 0]
        t_emb = sinusoidal_embedding(t_frac.to(pos.dtype), self.config.time_dim)
        node_in = torch.cat(
            [types, t_emb[batch], z_centred[:, None] / 2.0, lattice_feat[batch], torch.log(counts)[batch, None]], -1
        )
        h = self.embed(node_in)
        x = pos
        for layer in self.trunk:
            h, x = layer(h, x, graph.edge_index, shift, edge_attr)
        pooled = self._pool(h, batch, n_graphs)
        heads = self.heads(torch.cat([pooled, lattice_feat], -1))

        type_key = "type_logits" if self.config.absorbing else "eps_types"
        conds = cond_list if cond_list is not None else [cond]
        outs = []
        for c in conds:
            if c is None:
                c = torch.zeros(n_graphs, 2 * len(HEAD_NAMES), dtype=pos.dtype, device=pos.device)
            hc = h + self.cond_embed(c)[batch]
            xc = x
            for layer in self.cond_layers:
                hc, xc = layer(hc, xc, graph.edge_index, shift, edge_attr)
            eps_pos = xc - pos
            eps_pos = torch.cat([eps_pos[:, :2], eps_pos[:, 2:] + self.z_out(hc)], -1)
            pooled_c = self._pool(hc, batch, n_graphs)
            outs.append(
                {
                    "eps_pos": eps_pos,
                    type_key: self.type_out(hc),
                    "eps_lattice": self.lattice_out(torch.cat([pooled_c, lattice_feat], -1)),
                }
            )
        if cond_list is None:
            return {**outs[0], "heads": heads, "graph": graph}
        return {k: [o[k] for o in outs] for k in outs[0]} | {"heads": heads, "graph": graph}
