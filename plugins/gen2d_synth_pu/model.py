"""Bagged PU decision trees: fit with scikit-learn, saved as plain JSON arrays, evaluated in NumPy.

Loading the model reads numbers only, so a model file can never execute code (no pickle, no joblib).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Stand-in for a feature pymatgen has no value for (NaN). Trees split on it like any other value;
#: every physical feature here is non-negative, so -1 never collides with a real one.
MISSING_VALUE = -1.0
FORMAT = "gen2d.synth_pu.bagged_trees/1"


def prepare_features(features: np.ndarray) -> np.ndarray:
    """NaN → ``MISSING_VALUE`` and float32 rounding, as scikit-learn's trees see their input."""
    x = np.nan_to_num(np.asarray(features, dtype=float), nan=MISSING_VALUE, posinf=1e30, neginf=-1e30)
    # sklearn casts X to float32 before comparing with thresholds; doing the same keeps the JSON
    # model's answers bit-identical to the fitted estimator's.
    return x.astype(np.float32).astype(np.float64)


@dataclass
class TreeArrays:
    """One fitted tree as arrays: node ``i`` sends x left when ``x[feature[i]] <= threshold[i]``."""

    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    p_positive: np.ndarray  # fraction of (weighted) positives in each node

    @classmethod
    def from_sklearn(cls, tree) -> TreeArrays:
        t = tree.tree_
        value = t.value[:, 0, :]
        classes = list(tree.classes_)
        pos_col = classes.index(1)
        p = value[:, pos_col] / np.clip(value.sum(axis=1), 1e-300, None)
        return cls(
            t.children_left.astype(np.int64),
            t.children_right.astype(np.int64),
            t.feature.astype(np.int64),
            t.threshold.astype(np.float64),
            p.astype(np.float64),
        )

    def to_dict(self) -> dict[str, list]:
        return {
            "left": self.left.tolist(),
            "right": self.right.tolist(),
            "feature": self.feature.tolist(),
            "threshold": self.threshold.tolist(),
            "p_positive": self.p_positive.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> TreeArrays:
        return cls(
            np.asarray(d["left"], dtype=np.int64),
            np.asarray(d["right"], dtype=np.int64),
            np.asarray(d["feature"], dtype=np.int64),
            np.asarray(d["threshold"], dtype=np.float64),
            np.asarray(d["p_positive"], dtype=np.float64),
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(positive) of each row of ``x`` (already passed through ``prepare_features``)."""
        node = np.zeros(len(x), dtype=np.int64)
        rows = np.arange(len(x))
        # A leaf has left == -1; walk every row down until all sit on leaves (depth-many steps).
        while True:
            internal = self.left[node] != -1
            if not internal.any():
                return self.p_positive[node]
            r, n = rows[internal], node[internal]
            go_left = x[r, self.feature[n]] <= self.threshold[n]
            node[r] = np.where(go_left, self.left[n], self.right[n])


@dataclass
class BaggedPUModel:
    """Mordelet & Vert (2014) PU bagging: each tree sees all positives against a bootstrap of unlabeled.

    The score of a structure is the mean over trees of the tree's positive fraction. It ranks like a
    probability of being synthesizable and is thresholded at 0.5, but it is not calibrated.
    """

    feature_names: list[str]
    trees: list[TreeArrays]
    metadata: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = prepare_features(np.atleast_2d(features))
        return np.mean([t.predict(x) for t in self.trees], axis=0)

    def predict_spread(self, features: np.ndarray) -> np.ndarray:
        """Standard deviation of the per-tree scores: how much the bags disagree."""
        x = prepare_features(np.atleast_2d(features))
        return np.std([t.predict(x) for t in self.trees], axis=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "feature_names": list(self.feature_names),
            "metadata": self.metadata,
            "trees": [t.to_dict() for t in self.trees],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BaggedPUModel:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} model (format={d.get('format')!r})")
        return cls(list(d["feature_names"]), [TreeArrays.from_dict(t) for t in d["trees"]], d.get("metadata", {}))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | Path) -> BaggedPUModel:
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_bagged_pu(
    x_pos: np.ndarray,
    x_unl: np.ndarray,
    feature_names: list[str],
    n_bags: int = 100,
    unlabeled_per_bag: float = 1.0,
    min_samples_leaf: int = 1,
    max_features: str | float = "sqrt",
    seed: int = 0,
) -> tuple[BaggedPUModel, list]:
    """Fit ``n_bags`` trees, each on every positive against a bootstrap sample of the unlabeled set.

    Parameters
    ----------
    x_pos, x_unl
        Raw feature matrices (NaN allowed) of positives and unlabeled layers.
    unlabeled_per_bag
        Bootstrap size as a multiple of the number of positives. Smaller values raise recall and the
        fraction of unlabeled called positive together.

    Returns
    -------
    (model, estimators)
        The JSON-able model and the fitted scikit-learn trees (to check the two agree).
    """
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(seed)
    xp, xu = prepare_features(x_pos), prepare_features(x_unl)
    n_unl = max(1, int(round(unlabeled_per_bag * len(xp))))
    trees, estimators = [], []
    for _ in range(n_bags):
        pick = rng.integers(0, len(xu), size=n_unl)
        x = np.vstack([xp, xu[pick]])
        y = np.concatenate([np.ones(len(xp), dtype=int), np.zeros(n_unl, dtype=int)])
        est = DecisionTreeClassifier(
            min_samples_leaf=min_samples_leaf, max_features=max_features, random_state=int(rng.integers(0, 2**31 - 1))
        )
        est.fit(x, y)
        estimators.append(est)
        trees.append(TreeArrays.from_sklearn(est))
    meta = {
        "n_bags": n_bags,
        "unlabeled_per_bag": unlabeled_per_bag,
        "min_samples_leaf": min_samples_leaf,
        "max_features": max_features,
        "seed": seed,
        "estimator": "sklearn.tree.DecisionTreeClassifier",
    }
    return BaggedPUModel(list(feature_names), trees, meta), estimators
