"""Train the DimeNet++ ΔG_H ensemble on ``dgh.mlip`` labels and write checkpoints plus a manifest."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure

from gen2d.scoring import file_sha256

log = logging.getLogger(__name__)


def site_targets(label: dict[str, Any], n_atoms: int, structure: Structure | None = None) -> torch.Tensor:
    """Per-atom ΔG_H targets (eV; NaN where no site was tied to the atom): the valid site of minimum |ΔG_H|
    among those whose relaxed H ended nearest that atom or a symmetry-equivalent one (``structure`` given),
    so equivalent atoms, which the invariant network cannot tell apart, never get conflicting targets.
    Labels made before sites were recorded give all NaN."""
    classes = list(range(n_atoms))
    if structure is not None and len(structure) == n_atoms:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        try:
            classes = [
                int(c) for c in SpacegroupAnalyzer(structure, symprec=0.1).get_symmetry_dataset().equivalent_atoms
            ]
        except Exception:  # spglib can fail on distorted cells; per-atom targets are then still right
            log.debug("no symmetry classes for %s", label.get("id"), exc_info=True)
    best: dict[int, float] = {}
    for site in label.get("sites") or []:
        k, value = site.get("atom_index"), site.get("dg_h_eV")
        if not site.get("valid") or k is None or value is None or not 0 <= k < n_atoms:
            continue
        c = classes[k]
        if c not in best or abs(value) < abs(best[c]):
            best[c] = float(value)
    return torch.tensor([best.get(c, float("nan")) for c in classes], dtype=torch.get_default_dtype())


def _graphs_and_targets(labels: Sequence[dict[str, Any]], cutoff: float):
    from gen2d.models.dimenet import periodic_graph

    graphs, targets, kept = [], [], []
    for lab in labels:
        if not lab.get("ok") or lab.get("dg_h_eV") is None or not lab.get("relaxed_slab"):
            continue
        structure = Structure.from_dict(lab["relaxed_slab"])
        graph = periodic_graph(structure, cutoff=cutoff)
        if graph.edge_index.shape[1] == 0:
            continue
        graph.site_y = site_targets(lab, graph.z.numel(), structure)
        graphs.append(graph)
        targets.append(float(lab["dg_h_eV"]))
        kept.append(lab)
    return graphs, torch.tensor(targets, dtype=torch.get_default_dtype()), kept


def split_indices(
    n: int, test_fraction: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[list[int], list[int]]:
    """(train, held-out test) indices, a fixed shuffle of ``seed``.

    With ``groups`` (one label per index, e.g. the reduced formula), whole groups are held out, in a shuffled
    order, until the test set reaches its share: the same layer read from two databases (MC2D and 2DMatPedia
    share many) always lands on one side. Without it, indices are held out one by one."""
    n_test = max(1, int(round(test_fraction * n))) if n > 4 and test_fraction > 0 else 0
    if groups is None:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return order[n_test:], order[:n_test]
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} indices")
    members: dict[str, list[int]] = {}
    for k, g in enumerate(groups):
        members.setdefault(g, []).append(k)
    names = sorted(members)
    random.Random(seed).shuffle(names)
    test: list[int] = []
    for g in names:
        if len(test) >= n_test:
            break
        test.extend(members[g])
    held = set(test)
    return [k for k in range(n) if k not in held], test


def fit_member(
    graphs,
    targets: torch.Tensor,
    train_idx: Sequence[int],
    hparams,
    seed: int,
    epochs: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    device: str = "cpu",
):
    """One ensemble member trained with L1 loss (AdamW, cosine schedule) on ``train_idx``.

    With ``hparams.readout == "site"`` the loss adds, to the material's best-site error, the error of every
    atom that carries a per-site label (``graph.site_y``), so the network learns ΔG_H site by site."""
    from gen2d.models.dimenet import PeriodicDimeNetPlusPlus, collate
    from gen2d.scoring import device_name

    device = device_name(device)  # "auto" is CUDA where there is one
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = PeriodicDimeNetPlusPlus(hparams).to(device)
    y_train = targets[list(train_idx)]
    model.target_mean.fill_(float(y_train.mean()))
    model.target_std.fill_(float(y_train.std()) if len(train_idx) > 1 else 1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    batches = [graphs[i] for i in train_idx]
    model.train()
    for _ in range(epochs):
        order = list(range(len(train_idx)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            pick = order[start : start + batch_size]
            b = collate([batches[k] for k in pick])
            y = y_train[pick].to(device)
            pos = b["pos"].to(device)
            per_atom, batch = model.atom_outputs(
                b["z"].to(device),
                pos,
                b["batch"].to(device),
                edge_index=b["edge_index"].to(device),
                edge_image=b["edge_image"].to(device),
                cell=b["cell"].to(device),
            )
            pred = model.readout(per_atom, pos, batch)[:, 0]
            # loss in normalised units so the learning rate does not depend on the label scale
            loss = torch.nn.functional.l1_loss(pred / model.target_std, y / model.target_std)
            if model.hparams.readout == "site":
                site_y = torch.cat(
                    [
                        g.site_y if g.site_y is not None else torch.full((g.z.numel(),), float("nan"))
                        for g in (batches[k] for k in pick)
                    ]
                ).to(device)
                have = ~torch.isnan(site_y)
                if have.any():
                    loss = loss + torch.nn.functional.l1_loss(
                        per_atom[have, 0] / model.target_std, site_y[have] / model.target_std
                    )
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    return model


def label_recipe(mlip) -> dict[str, Any]:
    """The settings of a ``dgh.mlip`` scorer that make its labels what they are (model, slab relaxation and
    every adsorption knob), for the provenance of a surrogate trained on them."""
    return {
        "calculator": mlip.calculator_name,
        "model": mlip.model,
        "relax_slab": mlip.relax_slab,
        "slab_fmax": mlip.slab_fmax,
        "slab_steps": mlip.slab_steps,
        **mlip.settings.as_dict(),
    }


# below this many held-out layers the calibration of the spread is not estimated (the scorer then reports
# the raw ensemble spread and says so)
MIN_CALIBRATION_LAYERS = 10
_ONE_SIGMA = 0.6827  # fraction of a normal distribution within ±1 σ


def uncertainty_calibration(mean, std, labels, seed: int = 0) -> dict[str, Any] | None:
    """How far the ensemble spread is from the error, and the factor that fixes its 1σ coverage.

    ``scale`` is the 68.3 % quantile of |mean − label| / std over held-out layers, so that ``scale × std``
    covers 68.3 % of them, as a normal 1σ interval does. Coverage at 1σ and 2σ is given raw and scaled;
    the scaled figures are in-sample, so ``split_half_within_1sigma`` fits the scale on one random half
    and counts on the other (mean of both ways). ``spearman_abs_error_vs_std`` says whether the spread
    ranks the errors at all. None with fewer than :data:`MIN_CALIBRATION_LAYERS` layers or no spread.
    """
    from scipy.stats import spearmanr

    mean, std, labels = (np.asarray(a, dtype=float) for a in (mean, std, labels))
    err = np.abs(mean - labels)
    ok = np.isfinite(err) & np.isfinite(std) & (std > 0)
    if ok.sum() < MIN_CALIBRATION_LAYERS:
        return None
    z = err[ok] / std[ok]
    scale = float(np.quantile(z, _ONE_SIGMA))
    order = np.random.default_rng(seed).permutation(len(z))
    halves = order[: len(z) // 2], order[len(z) // 2 :]
    split = [float(np.mean(z[b] <= np.quantile(z[a], _ONE_SIGMA))) for a, b in (halves, halves[::-1])]
    return {
        "method": "ensemble std x the 68.3 % quantile of held-out |error|/std",
        "n": int(ok.sum()),
        "scale": scale,
        "within_1sigma_raw": float(np.mean(z <= 1)),
        "within_2sigma_raw": float(np.mean(z <= 2)),
        "within_1sigma_scaled": float(np.mean(z <= scale)),
        "within_2sigma_scaled": float(np.mean(z <= 2 * scale)),
        "split_half_within_1sigma": float(np.mean(split)),
        "spearman_abs_error_vs_std": float(spearmanr(err[ok], std[ok])[0]),
    }


def train_surrogate(
    labels: Sequence[dict[str, Any]],
    out_dir: str | Path,
    n_models: int = 4,
    epochs: int = 150,
    test_fraction: float = 0.2,
    seed: int = 0,
    hparams=None,
    device: str = "cpu",
    training_set: str = "",
    command: str = "",
    label_recipe: dict[str, Any] | None = None,
    heldout_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train an ensemble on ``labels`` (from :func:`label_monolayers`), write ``member_*.pt`` and MANIFEST.json.

    Each member sees the same training split with its own seed (initialisation and batch order);
    the held-out split is never trained on and gives the reported MAE (eV) of the ensemble mean. It holds out
    whole reduced formulas (:func:`split_indices` with ``groups``), so that a layer both databases hold is never
    on both sides.
    ``label_recipe`` (the labelling ``dgh.mlip`` settings, see :func:`label_recipe`) is stored in the
    checkpoints and the manifest when given. ``heldout_ids`` fixes the held-out split instead of
    ``test_fraction``: the labels with these ids (e.g. another ensemble's held-out set, so that two
    ensembles are compared on the same monolayers, neither having trained on them).

    Returns
    -------
    dict
        The manifest: data, command, date, metrics (held-out MAE, RMSE, within-0.2 eV counts) and
        checkpoint hashes.
    """
    from gen2d.models.dimenet import DimeNetHParams, checkpoint_dict, predict_ensemble

    hparams = hparams or DimeNetHParams()
    graphs, targets, kept = _graphs_and_targets(labels, hparams.cutoff)
    if len(graphs) < 5:
        raise ValueError(f"only {len(graphs)} usable labels; the surrogate needs at least 5")
    if heldout_ids is not None:
        wanted = set(heldout_ids)
        test_idx = [k for k, lab in enumerate(kept) if lab.get("id") in wanted]
        train_idx = [k for k, lab in enumerate(kept) if lab.get("id") not in wanted]
    else:
        formulas = [Structure.from_dict(lab["relaxed_slab"]).composition.reduced_formula for lab in kept]
        train_idx, test_idx = split_indices(len(graphs), test_fraction, seed, groups=formulas)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("member_*.pt"):
        old.unlink()
    models_label = sorted({lab.get("model", "") for lab in kept})
    elements = sorted(
        {el.symbol for lab in kept for el in Structure.from_dict(lab["relaxed_slab"]).composition.elements}
    )
    t0 = time.process_time()
    members = []
    for m in range(n_models):
        members.append(
            fit_member(graphs, targets, train_idx, hparams, seed=seed * 100 + m, epochs=epochs, device=device)
        )
    train_cpu = time.process_time() - t0

    metrics: dict[str, Any] = {
        "n_labels": len(kept),
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "train_cpu_seconds": train_cpu,
    }
    if test_idx:
        test_graphs = [graphs[i] for i in test_idx]
        preds = torch.stack([out[:, 0].cpu() for out in predict_ensemble(members, test_graphs)])
        mean, spread = preds.mean(0), preds.std(0)
        y = targets[test_idx]
        err = (mean - y).abs()
        metrics.update(
            {
                "heldout_mae_eV": float(err.mean()),
                "heldout_rmse_eV": float(((mean - y) ** 2).mean().sqrt()),
                "heldout_baseline_mae_eV": float((y - targets[train_idx].mean()).abs().mean()),
                "heldout_mean_std_eV": float(spread.mean()) if n_models > 1 else 0.0,
                "heldout_within_0.2eV_of_label": int((err <= 0.2).sum()),
                "heldout_ids": [kept[i].get("id") for i in test_idx],
            }
        )
        if n_models > 1:
            calibration = uncertainty_calibration(mean.numpy(), spread.numpy(), y.numpy(), seed=seed)
            if calibration is not None:
                metrics["uncertainty_calibration"] = calibration
    metrics["labels_with_abs_dgh_le_0.2"] = int((targets.abs() <= 0.2).sum())
    metadata = {
        "label_source": f"dgh.mlip ({', '.join(models_label)}), best-site ΔG_H in eV",
        "training_set": training_set,
        "n_train": len(train_idx),
        "heldout_mae_eV": metrics.get("heldout_mae_eV"),
        "hparams": hparams.as_dict(),
        "elements": elements,
        "seed": seed,
        "epochs": epochs,
        "unit": "eV",
    }
    if label_recipe is not None:
        metadata["label_recipe"] = dict(label_recipe)
    shas = []
    for m, model in enumerate(members):
        path = out / f"member_{m}.pt"
        torch.save(checkpoint_dict(model, metadata), path)
        shas.append({"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size})
    manifest = {
        "what": "periodic DimeNet++ ensemble predicting best-site ΔG_H (eV) of a monolayer",
        "data": {
            "training_set": training_set,
            "label_source": metadata["label_source"],
            "n_labels": len(kept),
            "elements": elements,
            **({"label_recipe": metadata["label_recipe"]} if label_recipe is not None else {}),
        },
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": metrics,
        "hparams": hparams.as_dict(),
        "epochs": epochs,
        "seed": seed,
        "checkpoints": shas,
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def label_and_train(
    structures: Sequence[Structure],
    label_cache,
    out_dir: str | Path,
    ids: Sequence[str] | None = None,
    mlip_options: dict[str, Any] | None = None,
    n_models: int = 4,
    epochs: int = 150,
    test_fraction: float = 0.2,
    seed: int = 0,
    device: str = "cpu",
    training_set: str = "",
    command: str = "",
    hparams=None,
) -> dict[str, Any]:
    """``gen2d train --surrogate dgh.dimenet``: label ``structures`` with ``dgh.mlip`` (only what
    ``label_cache`` lacks), then train and write the ensemble to ``out_dir``."""
    from gen2d.scoring import get_scorer
    from gen2d_dgh_dimenet.labels import label_monolayers

    mlip = get_scorer("dgh.mlip", **(mlip_options or {}))
    labels = label_monolayers(structures, mlip, label_cache, ids=ids)
    return train_surrogate(
        labels,
        out_dir,
        n_models=n_models,
        epochs=epochs,
        test_fraction=test_fraction,
        seed=seed,
        device=device,
        training_set=training_set,
        command=command,
        hparams=hparams,
        label_recipe=label_recipe(mlip),
    )
