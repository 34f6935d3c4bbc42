"""``dgh.dimenet``: ΔG_H (eV) from an ensemble of periodic DimeNet++ surrogates trained on ``dgh.mlip`` labels."""

from gen2d_dgh_dimenet.labels import DictLabelCache, JsonlLabelCache, label_monolayers
from gen2d_dgh_dimenet.scorer import DimeNetDGHScorer, default_checkpoint_dir
from gen2d_dgh_dimenet.train import label_and_train, train_surrogate

__all__ = [
    "DictLabelCache",
    "DimeNetDGHScorer",
    "JsonlLabelCache",
    "default_checkpoint_dir",
    "label_and_train",
    "label_monolayers",
    "train_surrogate",
]
