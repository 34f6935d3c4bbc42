"""Periodic DimeNet++: triplets against brute force, symmetry invariances, checkpoints."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import mx2

from gen2d.models.dimenet import (
    ELEMENT_PROPERTIES,
    DimeNetHParams,
    PeriodicDimeNetPlusPlus,
    checkpoint_dict,
    element_property_table,
    load_checkpoint,
    periodic_graph,
    periodic_triplets,
    predict_ensemble,
)

SMALL = DimeNetHParams(
    hidden_channels=16, num_blocks=2, int_emb_size=8, basis_emb_size=4, out_emb_channels=16, cutoff=4.0
)


@pytest.fixture(scope="module", params=["mean", "site", "site+elements"])
def model(request) -> PeriodicDimeNetPlusPlus:
    """Both readouts (the per-atom mean and the site-resolved soft minimum over exposed atoms), and the
    element-property embedding."""
    torch.manual_seed(0)
    readout, _, elements = request.param.partition("+")
    net = PeriodicDimeNetPlusPlus(replace(SMALL, readout=readout, element_features=bool(elements))).double()
    # PyG zero-initialises the output layers; random weights make the invariance tests meaningful
    for block in net.output_blocks:
        torch.nn.init.normal_(block.lin.weight, std=0.3)
    net.eval()
    return net


def _predict(net, atoms) -> float:
    g = periodic_graph(atoms, cutoff=net.hparams.cutoff)
    # float64 from the source so that invariances hold to 1e-8, not to float32 rounding
    pos = torch.as_tensor(atoms.positions, dtype=torch.float64)
    cell = torch.as_tensor(np.asarray(atoms.cell), dtype=torch.float64)
    with torch.no_grad():
        return float(net(g.z, pos, None, edge_index=g.edge_index, edge_image=g.edge_image, cell=cell)[0, 0])


def _mos2() -> Atoms:
    atoms = mx2("MoS2", kind="2H", a=3.18, thickness=3.19, vacuum=10.0)
    atoms.pbc = (True, True, False)
    return atoms


def _brute_force_triplets(atoms: Atoms, cutoff: float) -> set:
    """Every (i, j, image_j, k, image_k) with |r_ij|, |r_jk| < cutoff and k-image != i-home, by enumeration."""
    pos, cell = atoms.positions, np.asarray(atoms.cell)
    n_img = 3  # enough images for a 2.5 Å cell with a 4 Å cutoff
    images = [np.array([a, b, 0]) for a, b in itertools.product(range(-n_img, n_img + 1), repeat=2)]
    out = set()
    for i in range(len(atoms)):
        for j, sj in itertools.product(range(len(atoms)), images):
            rj = pos[j] + sj @ cell
            dij = np.linalg.norm(rj - pos[i])
            if dij >= cutoff or dij < 1e-8:
                continue
            for k, sk in itertools.product(range(len(atoms)), images):
                rk = pos[k] + sk @ cell  # absolute image of k, in i's frame
                djk = np.linalg.norm(rk - rj)
                if djk >= cutoff or djk < 1e-8:
                    continue
                if k == i and not sk.any():
                    continue  # back to the very atom the message goes to
                out.add((i, j, tuple(sj), k, tuple(sk)))
    return out


def test_triplets_match_brute_force_with_self_images():
    # one-atom-wide cell: every neighbour is a periodic image, many of them of the atom itself
    atoms = Atoms(
        "CN",
        positions=[[0, 0, 10], [1.25, 0.72, 10.4]],
        cell=[[2.5, 0, 0], [-1.25, 2.165, 0], [0, 0, 20]],
        pbc=(True, True, False),
    )
    cutoff = 4.0
    g = periodic_graph(atoms, cutoff)
    assert (g.edge_index[0] == g.edge_index[1]).any(), "the cell must have self-image edges"
    idx_kj, idx_ji = periodic_triplets(g.edge_index, g.edge_image, len(atoms))
    src, dst = g.edge_index
    got = set()
    for kj, ji in zip(idx_kj.tolist(), idx_ji.tolist()):
        assert int(dst[kj]) == int(src[ji])  # the two edges meet at j
        sj = g.edge_image[ji]
        sk = g.edge_image[kj] + sj
        got.add((int(dst[ji]), int(src[ji]), tuple(sj.tolist()), int(src[kj]), tuple(sk.tolist())))
    assert len(got) == len(idx_kj)  # no duplicates
    expected = _brute_force_triplets(atoms, cutoff)
    assert got == expected
    # k == i through another image is kept: those are the triplets that naive masking loses
    assert any(t[3] == t[0] and any(t[4]) for t in got)


def test_rotation_about_z_translation_and_permutation(model):
    atoms = _mos2()
    ref = _predict(model, atoms)
    assert abs(ref) > 1e-3  # a non-trivial output, else invariance is empty

    rotated = atoms.copy()
    rotated.rotate(37.0, "z", rotate_cell=True)
    assert _predict(model, rotated) == pytest.approx(ref, abs=1e-8)

    shifted = atoms.copy()
    shifted.translate([0.7, -1.3, 0.4])
    shifted.wrap()
    assert _predict(model, shifted) == pytest.approx(ref, abs=1e-8)

    permuted = atoms[[2, 0, 1]]
    assert _predict(model, permuted) == pytest.approx(ref, abs=1e-8)


def test_supercell_choice(model):
    atoms = _mos2()
    ref = _predict(model, atoms)
    assert _predict(model, atoms.repeat((3, 2, 1))) == pytest.approx(ref, abs=1e-8)
    # a non-diagonal supercell: a' = a + b, b' = b
    from ase.build import make_supercell

    sheared = make_supercell(atoms, [[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    sheared.pbc = (True, True, False)
    assert _predict(model, sheared) == pytest.approx(ref, abs=1e-8)


def test_site_readout_is_the_exposed_atom_nearest_zero():
    """The "site" readout is a soft minimum of |ΔG_H| over atoms within exposed_depth of a face: a buried
    atom (Mo in MoS2) never wins, and at a small temperature the winner is the exposed value nearest 0."""
    net = PeriodicDimeNetPlusPlus(replace(SMALL, readout="site", exposed_depth=1.0, softmin_temperature=0.01)).double()
    atoms = _mos2()  # Mo, S, S; Mo 1.6 Å below either S
    pos = torch.as_tensor(atoms.positions, dtype=torch.float64)
    batch = torch.zeros(3, dtype=torch.long)
    per_atom = torch.tensor([[0.0], [0.9], [-0.4]], dtype=torch.float64)  # Mo would be ideal, but it is buried
    assert float(net.readout(per_atom, pos, batch)[0, 0]) == pytest.approx(-0.4, abs=1e-6)
    # two graphs in one batch stay independent
    pos2 = torch.cat([pos, pos])
    batch2 = torch.tensor([0, 0, 0, 1, 1, 1])
    per2 = torch.cat([per_atom, torch.tensor([[5.0], [1.5], [2.5]], dtype=torch.float64)])
    out = net.readout(per2, pos2, batch2)[:, 0]
    assert out.tolist() == pytest.approx([-0.4, 1.5], abs=1e-6)
    # the plain readout is the mean of all atoms
    mean = PeriodicDimeNetPlusPlus(SMALL).double()
    assert float(mean.readout(per_atom, pos, batch)[0, 0]) == pytest.approx(0.5 / 3)


def test_output_changes_with_geometry(model):
    atoms = _mos2()
    strained = atoms.copy()
    strained.set_cell(atoms.cell.array * [[1.05], [1.05], [1.0]], scale_atoms=True)
    assert abs(_predict(model, strained) - _predict(model, atoms)) > 1e-6


def test_ensemble_shares_geometry_without_changing_predictions():
    """predict_ensemble computes triplets, angles and the spherical basis once per batch for every member;
    each member's output must equal its own full forward pass, on a batch of two different layers."""
    members = []
    for seed, readout in [(1, "site"), (2, "site"), (3, "mean")]:
        torch.manual_seed(seed)
        net = PeriodicDimeNetPlusPlus(replace(SMALL, readout=readout)).double()
        for block in net.output_blocks:
            torch.nn.init.normal_(block.lin.weight, std=0.3)
        members.append(net.eval())
    assert members[0].sbf is members[1].sbf  # the parameter-free basis is one shared layer
    layers = [_mos2(), _mos2().repeat((2, 1, 1))]
    layers[1].positions[0] += [0.1, -0.05, 0.02]  # a different geometry in the same batch
    graphs = []
    for atoms in layers:
        g = periodic_graph(atoms, cutoff=SMALL.cutoff)
        g.pos = torch.as_tensor(atoms.positions, dtype=torch.float64)  # float64 from the source, as _predict
        g.cell = torch.as_tensor(np.asarray(atoms.cell), dtype=torch.float64)
        graphs.append(g)
    shared = predict_ensemble(members, graphs, atoms=True)
    for net, (out, per_atom, index, _exposed) in zip(members, shared):
        alone = [_predict(net, atoms) for atoms in layers]
        assert out[:, 0].tolist() == pytest.approx(alone, abs=1e-10)
        assert per_atom.shape == (3 + 6, 1) and index.tolist() == [0] * 3 + [1] * 6
    assert abs(float(shared[0][0][0, 0]) - float(shared[1][0][0, 0])) > 1e-6  # members really differ


def test_checkpoint_round_trip_weights_only(tmp_path, model):
    path = tmp_path / "member_0.pt"
    net = model.float()
    torch.save(checkpoint_dict(net, {"label_source": "test", "heldout_mae_eV": 0.1}), path)
    loaded, meta = load_checkpoint(path)
    assert meta["label_source"] == "test"
    g = periodic_graph(_mos2(), cutoff=SMALL.cutoff)
    assert float(loaded.predict_graphs([g])[0, 0]) == pytest.approx(float(net.predict_graphs([g])[0, 0]), abs=1e-6)
    model.double()


def test_element_property_table_orders_known_chemistry():
    """Standardised pymatgen properties: Pauling electronegativity F > O > S > H > Mo > Na, S and Se share a
    group one row apart, blocks are one-hot, and a missing value (He has no Pauling X) is the mean, 0."""
    table = element_property_table()
    col = {name: i for i, name in enumerate(ELEMENT_PROPERTIES)}
    x = table[:, col["pauling_electronegativity"]]
    assert x[9] > x[8] > x[16] > x[1] > x[42] > x[11]
    assert table[16, col["group"]] == table[34, col["group"]] and table[34, col["row"]] > table[16, col["row"]]
    blocks = table[1:95, [col[f"block_{b}"] for b in "spdf"]]
    assert ((blocks > 0).sum(dim=1) == 1).all()  # each element is in exactly one block
    assert x[2] == 0.0 and (table[0] == 0).all()
    assert abs(float(table[1:95, col["row"]].mean())) < 1e-6  # standardised


def test_element_features_share_strength_between_elements():
    """With equal learned vectors, two elements still embed differently through their properties, and the
    property table travels in the checkpoint (state_dict), not in pymatgen's data at load time."""
    net = PeriodicDimeNetPlusPlus(replace(SMALL, element_features=True))
    emb = net.emb.emb
    with torch.no_grad():
        emb.learned.weight[16] = emb.learned.weight[34]
        torch.nn.init.normal_(emb.lin.weight)
    z = torch.tensor([16, 34])
    out = emb(z)
    assert not torch.allclose(out[0], out[1])
    assert "emb.emb.table" in net.state_dict()
    plain = PeriodicDimeNetPlusPlus(SMALL)
    assert "emb.emb.table" not in plain.state_dict()  # old checkpoints keep loading unchanged
