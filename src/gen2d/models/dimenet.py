"""Periodic DimeNet++ for monolayers: PyG's DimeNetPlusPlus fed with image-shifted edges and plain-torch triplets.

pyg-lib and torch-sparse are not installable here, so the radius graph comes from an ASE neighbour list
(pbc = True, True, False) and triplets are built with sorting and ``repeat_interleave``.

Owned by the ``dgh.dimenet`` scorer plugin (``plugins/gen2d_dgh_dimenet``); see :mod:`gen2d.models`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.nn.models import dimenet as _pyg_dimenet
from torch_geometric.nn.models.dimenet import DimeNetPlusPlus
from torch_geometric.utils import scatter

# The spherical basis is lambdified from sympy expressions (~20 s); it holds no parameters, so one
# instance per (num_spherical, num_radial, cutoff, envelope) is shared by every model in the process.
_SBF_CACHE: dict[tuple, torch.nn.Module] = {}
_SBF_LOCK = threading.Lock()
_PygSphericalBasisLayer = _pyg_dimenet.SphericalBasisLayer


def _cached_spherical_basis(
    num_spherical: int, num_radial: int, cutoff: float = 5.0, envelope_exponent: int = 5
) -> torch.nn.Module:
    key = (num_spherical, num_radial, float(cutoff), envelope_exponent)
    if key not in _SBF_CACHE:
        _SBF_CACHE[key] = _PygSphericalBasisLayer(num_spherical, num_radial, cutoff, envelope_exponent)
    return _SBF_CACHE[key]


@dataclass
class DimeNetHParams:
    """Architecture of the surrogate; stored in every checkpoint."""

    hidden_channels: int = 64
    out_channels: int = 1
    num_blocks: int = 3
    int_emb_size: int = 32
    basis_emb_size: int = 8
    out_emb_channels: int = 96
    num_spherical: int = 7
    num_radial: int = 6
    cutoff: float = 5.0
    envelope_exponent: int = 5
    # "mean": one value per material from the mean of per-atom outputs. "site": each atom's output is the
    # ΔG_H of an H bound next to it, and the material's value is a soft minimum of |ΔG_H| over the atoms
    # within ``exposed_depth`` (Å) of either face, as dgh.mlip's best site is the minimum |ΔG_H| over sites.
    readout: str = "mean"
    exposed_depth: float = 1.7
    softmin_temperature: float = 0.2  # eV; 0.2 fitted better than 0.05 in a first comparison (README)
    # add to each element's learned embedding a linear map of its tabulated properties
    # (:data:`ELEMENT_PROPERTIES`), so an element seen in few training layers borrows from similar ones
    element_features: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------
# Element properties
# ----------------------------------------------------------------------------------------------------

ELEMENT_PROPERTIES = (
    "pauling_electronegativity",
    "group",
    "row",
    "atomic_radius_A",
    "first_ionization_eV",
    "electron_affinity_eV",
    "block_s",
    "block_p",
    "block_d",
    "block_f",
)


def element_property_table(max_z: int = 94) -> Tensor:
    """(95, len(ELEMENT_PROPERTIES)) properties from pymatgen's element data, each column standardised over
    Z = 1..``max_z``; row 0 (no element) and rows past ``max_z`` are zero. A missing value (the
    electronegativity of He, Ne, Ar; an unknown affinity) is the column mean, i.e. 0 after standardising.
    The table is stored in the model's state, so a checkpoint does not depend on pymatgen's data version."""
    import warnings

    from pymatgen.core.periodic_table import Element

    rows = np.full((95, len(ELEMENT_PROPERTIES)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for each missing property
        for z in range(1, max_z + 1):
            el = Element.from_Z(z)
            ies = el.ionization_energies
            values = [
                el.X,
                el.group,
                el.row,
                el.atomic_radius,
                ies[0] if ies else None,
                el.electron_affinity,
                *(float(el.block == b) for b in "spdf"),
            ]
            rows[z] = [np.nan if v is None else float(v) for v in values]
    body = rows[1 : max_z + 1]
    mean, std = np.nanmean(body, axis=0), np.nanstd(body, axis=0)
    table = np.zeros_like(rows)
    table[1 : max_z + 1] = np.nan_to_num((body - mean) / np.where(std > 0, std, 1.0), nan=0.0)
    return torch.as_tensor(table, dtype=torch.get_default_dtype())


class ElementEmbedding(torch.nn.Module):
    """A learned vector per element plus a linear map of the element's standardised properties. Drop-in
    for the ``Embedding(95, hidden)`` inside PyG's ``EmbeddingBlock`` (it keeps ``weight``)."""

    def __init__(self, hidden_channels: int):
        super().__init__()
        self.learned = torch.nn.Embedding(95, hidden_channels)
        self.register_buffer("table", element_property_table())
        self.lin = torch.nn.Linear(self.table.shape[1], hidden_channels, bias=False)

    @property
    def weight(self) -> Tensor:  # PyG's EmbeddingBlock.reset_parameters re-draws it in place
        return self.learned.weight

    def forward(self, z: Tensor) -> Tensor:
        return self.learned(z) + self.lin(self.table[z])


# ----------------------------------------------------------------------------------------------------
# Periodic graph and triplets
# ----------------------------------------------------------------------------------------------------


@dataclass
class PeriodicGraph:
    """One monolayer as a radius graph. Edge e points src → dst; its source sits at
    ``pos[src] + image[e] @ cell`` (``image`` integer lattice shifts, zero along c)."""

    z: Tensor  # (N,) long
    pos: Tensor  # (N, 3) Å
    cell: Tensor  # (3, 3) Å, rows are lattice vectors
    edge_index: Tensor  # (2, E) long: [src j, dst i]
    edge_image: Tensor  # (E, 3) long
    site_y: Tensor | None = None  # (N,) per-atom ΔG_H training targets (eV, NaN where none); training only


def periodic_graph(atoms, cutoff: float = 5.0) -> PeriodicGraph:
    """Radius graph of a monolayer with in-plane periodic images (self-images included).

    Parameters
    ----------
    atoms : ase.Atoms or pymatgen.core.Structure
        The monolayer, c along z with vacuum.
    cutoff : float
        Radius (Å).
    """
    from gen2d.neighbors import neighbor_list

    if not hasattr(atoms, "get_positions"):  # a pymatgen Structure
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = AseAtomsAdaptor.get_atoms(atoms)
    atoms = atoms.copy()
    atoms.pbc = (True, True, False)
    i, j, shift = neighbor_list("ijS", atoms, cutoff, self_interaction=False)
    # ASE: the neighbour j of i sits at pos[j] + S @ cell; message flows j → i
    return PeriodicGraph(
        z=torch.as_tensor(atoms.numbers, dtype=torch.long),
        pos=torch.as_tensor(atoms.positions, dtype=torch.get_default_dtype()),
        cell=torch.as_tensor(np.asarray(atoms.cell), dtype=torch.get_default_dtype()),
        edge_index=torch.as_tensor(np.stack([j, i]), dtype=torch.long),
        edge_image=torch.as_tensor(shift, dtype=torch.long),
    )


def periodic_triplets(edge_index: Tensor, edge_image: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Pairs of edges (k→j, j→i) sharing atom j, without back-tracking.

    The only pair dropped is the one whose k is the very atom image i came from: same index and
    image shifts that cancel. k == i through another periodic image is a real three-body term and
    kept (it is what makes small cells right).

    Returns
    -------
    idx_kj, idx_ji : Tensor
        Edge indices of each triplet.
    """
    src, dst = edge_index
    num_edges = src.numel()
    order = torch.argsort(dst, stable=True)  # incoming edges grouped by their target
    deg = torch.bincount(dst, minlength=num_nodes)
    start = torch.cumsum(deg, 0) - deg
    n_per_edge = deg[src]  # edge j→i pairs with every edge that ends on j
    idx_ji = torch.repeat_interleave(torch.arange(num_edges, device=src.device), n_per_edge)
    first = torch.cumsum(n_per_edge, 0) - n_per_edge
    offset = torch.arange(idx_ji.numel(), device=src.device) - torch.repeat_interleave(first, n_per_edge)
    idx_kj = order[start[src[idx_ji]] + offset]
    back = (src[idx_kj] == dst[idx_ji]) & ((edge_image[idx_kj] + edge_image[idx_ji]) == 0).all(dim=1)
    return idx_kj[~back], idx_ji[~back]


def collate(graphs: Sequence[PeriodicGraph]) -> dict[str, Tensor]:
    """Batch graphs into one disconnected graph (indices offset, a ``batch`` vector and per-edge cells)."""
    z, pos, batch, edges, images, cells = [], [], [], [], [], []
    offset = 0
    for g_idx, g in enumerate(graphs):
        n = g.z.numel()
        z.append(g.z)
        pos.append(g.pos)
        batch.append(torch.full((n,), g_idx, dtype=torch.long))
        edges.append(g.edge_index + offset)
        images.append(g.edge_image)
        cells.append(g.cell)
        offset += n
    return {
        "z": torch.cat(z),
        "pos": torch.cat(pos),
        "batch": torch.cat(batch),
        "edge_index": torch.cat(edges, dim=1),
        "edge_image": torch.cat(images),
        "cell": torch.stack(cells),
    }


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------


class PeriodicDimeNetPlusPlus(DimeNetPlusPlus):
    """DimeNet++ on periodic edges, with a per-atom mean readout so the output is intensive
    (independent of the supercell) and a stored label scale (``target_mean``, ``target_std``).

    Parameters
    ----------
    hparams : DimeNetHParams
        Architecture; the defaults make a ~0.5 M parameter model (about 2 MB in float32).
    """

    def __init__(self, hparams: DimeNetHParams | None = None):
        hp = hparams or DimeNetHParams()
        self.hparams = hp
        with _SBF_LOCK:
            _pyg_dimenet.SphericalBasisLayer = _cached_spherical_basis
            try:
                super().__init__(
                    hidden_channels=hp.hidden_channels,
                    out_channels=hp.out_channels,
                    num_blocks=hp.num_blocks,
                    int_emb_size=hp.int_emb_size,
                    basis_emb_size=hp.basis_emb_size,
                    out_emb_channels=hp.out_emb_channels,
                    num_spherical=hp.num_spherical,
                    num_radial=hp.num_radial,
                    cutoff=hp.cutoff,
                    envelope_exponent=hp.envelope_exponent,
                )
            finally:
                _pyg_dimenet.SphericalBasisLayer = _PygSphericalBasisLayer
        if hp.element_features:
            learned = self.emb.emb
            self.emb.emb = ElementEmbedding(hp.hidden_channels)
            self.emb.emb.learned.weight.data.copy_(learned.weight.data)
        self.register_buffer("target_mean", torch.zeros(hp.out_channels))
        self.register_buffer("target_std", torch.ones(hp.out_channels))

    def forward(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor | None = None,
        *,
        edge_index: Tensor,
        edge_image: Tensor,
        cell: Tensor,
    ) -> Tensor:  # type: ignore[override]
        """Predict one value per graph (in label units)."""
        per_atom, batch = self.atom_outputs(z, pos, batch, edge_index=edge_index, edge_image=edge_image, cell=cell)
        return self.readout(per_atom, pos, batch)

    def readout(self, per_atom: Tensor, pos: Tensor, batch: Tensor, exposed: Tensor | None = None) -> Tensor:
        """Per-atom outputs (label units) → one value per graph: their mean, or for ``readout="site"`` the
        soft minimum of |value| over the exposed atoms (``exposed``, computed when not given). Both are
        unchanged by repeating the cell."""
        if self.hparams.readout == "mean":
            return scatter(per_atom, batch, dim=0, reduce="mean")
        if self.hparams.readout != "site":
            raise ValueError(f"unknown readout {self.hparams.readout!r}")
        from torch_geometric.utils import softmax

        mask = exposed if exposed is not None else exposed_atoms(pos, batch, self.hparams.exposed_depth)
        logits = -per_atom.abs() / self.hparams.softmin_temperature
        logits = torch.where(mask[:, None], logits, torch.full_like(logits, -1e9))
        weights = softmax(logits, batch, dim=0)
        return scatter(weights * per_atom, batch, dim=0, reduce="sum")

    def atom_outputs(
        self,
        z: Tensor,
        pos: Tensor,
        batch: Tensor | None = None,
        *,
        edge_index: Tensor,
        edge_image: Tensor,
        cell: Tensor,
        geometry: dict[str, Any] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-atom outputs (N, out_channels) in label units, and the batch vector.

        Parameters
        ----------
        z, pos, batch
            Atomic numbers (N,), positions (N, 3) Å, graph of each atom (N,) or None for one graph.
        edge_index, edge_image
            Edges src → dst (2, E) and the source's integer lattice shift (E, 3).
        cell
            Lattice (B, 3, 3) or (3, 3) Å.
        geometry
            The parameter-free part of the forward pass (distances, triplets, angles and the spherical
            basis) from :func:`edge_geometry` for these inputs, shared by ensemble members; computed here
            when None.
        """
        if batch is None:
            batch = torch.zeros_like(z)
        if geometry is None:
            geometry = edge_geometry(pos, batch, edge_index, edge_image, cell)
        dist, idx_kj, idx_ji = geometry["dist"], geometry["idx_kj"], geometry["idx_ji"]
        rbf = self.rbf(dist)  # learnable frequencies: per member
        sbf = _shared_sbf(self.sbf, geometry)
        i, j = edge_index[1], edge_index[0]
        x = self.emb(z, rbf, i, j)
        per_atom = self.output_blocks[0](x, rbf, i, num_nodes=pos.size(0))
        for interaction_block, output_block in zip(self.interaction_blocks, self.output_blocks[1:]):
            x = interaction_block(x, rbf, sbf, idx_kj, idx_ji)
            per_atom = per_atom + output_block(x, rbf, i, num_nodes=pos.size(0))
        return per_atom * self.target_std + self.target_mean, batch

    def predict_graphs(self, graphs: Sequence[PeriodicGraph], atoms: bool = False):
        """One prediction per graph (no gradients); with ``atoms`` also the per-atom outputs (N, C),
        the batch vector and the mask of exposed atoms (all True for the mean readout)."""
        return predict_ensemble([self], graphs, atoms=atoms)[0]


def edge_geometry(pos: Tensor, batch: Tensor, edge_index: Tensor, edge_image: Tensor, cell: Tensor) -> dict[str, Any]:
    """What the forward pass computes from positions alone: edge lengths, triplets and their angles.

    It holds no parameters, so an ensemble computes it once per batch (:func:`predict_ensemble`); the
    spherical basis evaluated on it is added under ``"sbf"`` by the first member that needs it.
    """
    if cell.dim() == 2:
        cell = cell.unsqueeze(0)
    src, dst = edge_index
    shift = torch.einsum("ek,ekl->el", edge_image.to(pos.dtype), cell[batch[dst]])
    # vector from target atom i to the (shifted) source atom j
    vec_ij = pos[src] + shift - pos[dst]
    dist = vec_ij.norm(dim=-1)
    idx_kj, idx_ji = periodic_triplets(edge_index, edge_image, pos.size(0))
    # DimeNet++ angle at j between j→i and j→k, the same convention as PyG's
    pos_ij = -vec_ij[idx_ji]
    pos_jk = -vec_ij[idx_kj]
    a = (pos_ij * pos_jk).sum(dim=-1)
    b = torch.cross(pos_ij, pos_jk, dim=1).norm(dim=-1)
    return {"dist": dist, "idx_kj": idx_kj, "idx_ji": idx_ji, "angle": torch.atan2(b, a)}


def _shared_sbf(sbf_layer: torch.nn.Module, geometry: dict[str, Any]) -> Tensor:
    """The spherical basis of ``geometry`` from this (parameter-free, process-shared) layer, evaluated
    once per geometry however many members share the layer. Positions that carry gradients (forces)
    are never cached."""
    cached = geometry.get("sbf")
    if cached is not None and cached[0] is sbf_layer:
        return cached[1]
    value = sbf_layer(geometry["dist"], geometry["angle"], geometry["idx_kj"])
    if not geometry["dist"].requires_grad:
        geometry["sbf"] = (sbf_layer, value)
    return value


def predict_ensemble(
    models: Sequence[PeriodicDimeNetPlusPlus], graphs: Sequence[PeriodicGraph], atoms: bool = False
) -> list:
    """Each model's :meth:`PeriodicDimeNetPlusPlus.predict_graphs` output on ``graphs``, with the batch
    collated and its geometry (triplets, angles, spherical basis) computed once for all of them. The batch goes
    to the models' device (CUDA when they were loaded there); the outputs come back on the CPU."""
    dev = next(models[0].parameters()).device if models else torch.device("cpu")
    batch = {k: v.to(dev) if isinstance(v, Tensor) else v for k, v in collate(graphs).items()}
    outs = []
    with torch.no_grad():
        geometry = edge_geometry(batch["pos"], batch["batch"], batch["edge_index"], batch["edge_image"], batch["cell"])
        exposed_by_depth: dict[float, Tensor] = {}
        for model in models:
            per_atom, index = model.atom_outputs(
                batch["z"],
                batch["pos"],
                batch["batch"],
                edge_index=batch["edge_index"],
                edge_image=batch["edge_image"],
                cell=batch["cell"],
                geometry=geometry,
            )
            hp = model.hparams
            if hp.readout == "site":
                if hp.exposed_depth not in exposed_by_depth:
                    exposed_by_depth[hp.exposed_depth] = exposed_atoms(batch["pos"], index, hp.exposed_depth)
                exposed = exposed_by_depth[hp.exposed_depth]
            else:
                exposed = torch.ones_like(index, dtype=torch.bool)
            out = model.readout(per_atom, batch["pos"], index, exposed)
            outs.append(tuple(v.cpu() for v in (out, per_atom, index, exposed)) if atoms else out.cpu())
    return outs


def exposed_atoms(pos: Tensor, batch: Tensor, depth: float) -> Tensor:
    """Atoms within ``depth`` (Å) of the top or bottom face of their layer (c along z)."""
    z = pos[:, 2]
    top = scatter(z, batch, dim=0, reduce="max")[batch]
    bottom = scatter(z, batch, dim=0, reduce="min")[batch]
    return (top - z <= depth) | (z - bottom <= depth)


def checkpoint_dict(model: PeriodicDimeNetPlusPlus, metadata: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint that loads with ``torch.load(weights_only=True)``: tensors, numbers and strings only."""
    return {
        "format": "gen2d.dimenet/1",
        "hparams": model.hparams.as_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": metadata,
    }


def load_checkpoint(path, device: str = "cpu") -> tuple[PeriodicDimeNetPlusPlus, dict[str, Any]]:
    """(model in eval mode, metadata) from a file written with :func:`checkpoint_dict`."""
    blob = torch.load(path, map_location=device, weights_only=True)
    if blob.get("format") != "gen2d.dimenet/1":
        raise ValueError(f"{path} is not a gen2d DimeNet++ checkpoint (format {blob.get('format')!r})")
    model = PeriodicDimeNetPlusPlus(DimeNetHParams(**blob["hparams"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model.to(device), dict(blob["metadata"])
