"""``dgh.mlip``: ΔG_H (eV) of a monolayer from explicit H relaxed by an MLIP on every site of both faces."""

from gen2d_dgh_mlip.scorer import MLIPAdsorptionScorer, load_calibration

__all__ = ["MLIPAdsorptionScorer", "load_calibration"]
