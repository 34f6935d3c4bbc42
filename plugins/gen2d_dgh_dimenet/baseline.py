"""A descriptor baseline for the ΔG_H surrogate: extremely randomised trees on per-site descriptors.

It is not a scorer. It answers a benchmark question: is the surrogate's error a property of DimeNet++
or of the labels? Each labelled adsorption site becomes one row:

- the material: the synth.pu feature vector of the relaxed slab (composition statistics of element
  properties, thickness, areal density, coordination, symmetry, SMACT screens);
- the atom the site sits on or next to (the site's ``atom_index`` in the label): its element properties, its
  nearest-neighbour distance, first-shell coordination and the electronegativity of that shell;
- the kind of site (top, bridge, hollow).

The trees learn per-site ΔG_H from the valid sites; a material's prediction is the predicted site value
nearest zero over every site the labelling recipe tried, valid or not (which sites relax cleanly is
known only after the MLIP has run), just as ``dgh.mlip``'s best site is the minimum |ΔG_H|.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pymatgen.core import Structure

SITE_KINDS = ("ontop", "bridge", "hollow")
LOCAL_FEATURES = ("nn_distance", "first_shell_cn", "shell_X_mean", "shell_X_max_diff")
NEIGHBOUR_RADIUS = 3.5  # Å; wide enough for the first shell of every element in the labels


def site_rows(label: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, per-site ΔG_H in eV (NaN where none), valid mask) for every site of one ``dgh.mlip`` label."""
    # first-shell neighbours: no farther than FIRST_SHELL x the nearest one, as synth.pu's coordination
    from gen2d_synth_pu.features import ELEMENT_PROPERTIES, FIRST_SHELL, element_properties, featurize

    ix = ELEMENT_PROPERTIES.index("X")

    slab = Structure.from_dict(label["relaxed_slab"])
    material = featurize(slab)
    neighbours = slab.get_all_neighbors(NEIGHBOUR_RADIUS)
    rows, targets, valid = [], [], []
    for site in label.get("sites") or []:
        atom = site["atom_index"]
        symbol = slab[atom].specie.symbol
        props = np.asarray(element_properties(symbol), dtype=float)
        dists = [nb.nn_distance for nb in neighbours[atom]]
        nearest = min(dists, default=NEIGHBOUR_RADIUS)
        shell = [nb for nb in neighbours[atom] if nb.nn_distance <= FIRST_SHELL * nearest]
        x_self = props[ix]
        shell_x = [element_properties(nb.specie.symbol)[ix] for nb in shell] or [x_self]
        local = [nearest, len(shell), float(np.mean(shell_x)), float(np.max(np.abs(np.subtract(shell_x, x_self))))]
        kind = [float(site["kind"] == k) for k in SITE_KINDS]
        rows.append(np.concatenate([material, props, local, kind]))
        targets.append(np.nan if site.get("dg_h_eV") is None else float(site["dg_h_eV"]))
        valid.append(bool(site.get("valid")) and site.get("dg_h_eV") is not None)
    return np.asarray(rows, dtype=float), np.asarray(targets, dtype=float), np.asarray(valid, dtype=bool)


def best_site_value(site_predictions: np.ndarray) -> float:
    """The predicted site value nearest zero: the material's predicted best-site ΔG_H."""
    return float(site_predictions[np.argmin(np.abs(site_predictions))])


def cv_site_trees(
    labels: Sequence[dict[str, Any]],
    folds: Sequence[Sequence[int]],
    n_estimators: int = 300,
    seed: int = 0,
    train_sets: Sequence[Sequence[int]] | None = None,
    tables: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """Cross-validated best-site predictions (eV), one per label (NaN outside every fold), on the given
    folds of label indices.

    Trees are fitted on the valid sites of the other folds' materials only (or of ``train_sets[k]`` for
    fold k, for a learning curve), so no site of a test material is ever seen in training. ``tables``
    are the labels' :func:`site_rows`, when already computed (repeated draws of a learning curve).
    """
    from sklearn.ensemble import ExtraTreesRegressor

    per_label = list(tables) if tables is not None else [site_rows(lab) for lab in labels]
    if any(len(rows) == 0 for rows, _, _ in per_label):
        raise ValueError("every label needs its per-site results ('sites') to train a per-site baseline")
    pred = np.full(len(labels), np.nan)
    for k, test in enumerate(folds):
        held = set(test)
        train = [i for i in (train_sets[k] if train_sets is not None else range(len(labels))) if i not in held]
        x = np.concatenate([per_label[i][0][per_label[i][2]] for i in train])
        y = np.concatenate([per_label[i][1][per_label[i][2]] for i in train])
        x = np.nan_to_num(x, nan=-1.0)  # a few NaN features (spglib failures); trees split them off
        model = ExtraTreesRegressor(n_estimators=n_estimators, min_samples_leaf=2, random_state=seed, n_jobs=1)
        model.fit(x, y)
        for i in test:
            pred[i] = best_site_value(model.predict(np.nan_to_num(per_label[i][0], nan=-1.0)))
    return pred
