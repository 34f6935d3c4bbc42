"""gen2d plugin ``synth.pu``: offline synthesizability from a positive-unlabeled classifier.

Trained on 2DMatPedia (top-down = positive, bottom-up = unlabeled, except the bottom-up layers grown in
the lab, listed with references in ``experimental_monolayers.csv``) and MC2D; the model ships as JSON in
``gen2d/assets/synth_pu``.
"""

from gen2d_synth_pu.scorer import PUSynthScorer
from gen2d_synth_pu.training import train

__all__ = ["PUSynthScorer", "train"]
