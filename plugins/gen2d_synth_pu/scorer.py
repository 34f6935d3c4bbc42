"""``synth.pu``: P_synth of a monolayer from the shipped PU-learning model (offline, CPU, milliseconds)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from pymatgen.core import Structure

from gen2d.scoring import BaseScorer, PluginUnavailable, Provenance, ScoreResult, ScorerOptions, file_sha256
from gen2d_synth_pu.features import FEATURE_NAMES, FeatureError, featurize
from gen2d_synth_pu.model import BaggedPUModel
from gen2d_synth_pu.training import MANIFEST_FILE, MODEL_FILE, default_model_dir

NAME = "synth.pu"
_NEUTRAL = FEATURE_NAMES.index("smact_charge_neutral")
_EN_OK = FEATURE_NAMES.index("smact_electronegativity_ok")


class PUSynthOptions(ScorerOptions):
    """Options of ``synth.pu`` (the parameters of :class:`PUSynthScorer`)."""

    model_dir: str | Path | None = Field(None, description="folder with model.json; default: the shipped model")
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="score at which extra.synthesizable is True")


class PUSynthScorer(BaseScorer):
    """Synthesizability from a bagged positive-unlabeled classifier.

    Parameters
    ----------
    model_dir
        Folder with ``model.json`` (and ``MANIFEST.json``); default: the model shipped in
        ``gen2d/assets/synth_pu``. ``gen2d train --scorer synth.pu`` writes a new one.
    threshold
        Score at which a layer counts as synthesizable (for ``extra["synthesizable"]``).
    """

    Options = PUSynthOptions
    name = NAME
    property = "p_synth"
    unit = "probability"
    requires: tuple[str, ...] = ()

    def __init__(self, model_dir: str | Path | None = None, threshold: float = 0.5):
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.model_path = self.model_dir / MODEL_FILE
        self.threshold = float(threshold)
        self._model: BaggedPUModel | None = None
        self._sha256: str | None = None

    def available(self) -> tuple[bool, str]:
        if not self.model_path.is_file():
            return False, f"PU model not found at {self.model_path}; run `gen2d train --scorer synth.pu`"
        return True, ""

    def _load(self) -> BaggedPUModel:
        if self._model is None:
            ok, why = self.available()
            if not ok:
                raise PluginUnavailable(why)
            self._model = BaggedPUModel.load(self.model_path)
            if self._model.feature_names != list(FEATURE_NAMES):
                raise ValueError(f"{self.model_path} was trained on other features; retrain it")
            self._sha256 = file_sha256(self.model_path)
        return self._model

    def provenance(self) -> Provenance:
        import gen2d

        model = self._model
        meta = model.metadata if model else {}
        return Provenance(
            plugin=NAME,
            version=gen2d.__version__,
            model=f"bagged PU decision trees ({meta.get('n_bags', '?')} bags, sklearn {meta.get('sklearn_version', '?')})",
            checkpoint_sha256=self._sha256,
            reference_set="positives: 2DMatPedia top-down + MC2D-258 + bottom-up rows grown in the lab "
            "(experimental_monolayers.csv); unlabeled: the other 2DMatPedia bottom-up rows",
            settings={
                "threshold": self.threshold,
                "model_path": str(self.model_path),
                **{k: meta[k] for k in ("n_bags", "unlabeled_per_bag", "seed") if k in meta},
            },
            notes=[
                "PU-bagging score (mean over bags); ranks like a probability but is not calibrated",
                "the CV figures in MANIFEST.json use the threshold 0.5",
            ],
        )

    @staticmethod
    def _as_monolayer(structure: Structure) -> Structure:
        """The structure in the gen2d frame, or a FeatureError naming why it is not a monolayer.

        The model only knows monolayers; a bulk crystal or a molecule would be featurized into
        nonsense, so the core's ingest check gates it. ``orient_2d`` puts the vacuum along c, which
        the layer descriptors (thickness, area) assume.
        """
        from gen2d.structures import orient_2d, validate_ingest

        if not isinstance(structure, Structure):
            raise FeatureError("not_a_structure", f"expected a pymatgen Structure, got {type(structure).__name__}")
        verdict = validate_ingest(structure)
        if not verdict.ok:
            raise FeatureError(verdict.reasons[0], "; ".join(verdict.messages) or verdict.reasons[0])
        return orient_2d(structure)

    def score(
        self, structures: Sequence[Structure], context: Sequence[dict[str, ScoreResult]] | None = None
    ) -> list[ScoreResult]:
        """P_synth of each structure; a structure that cannot be featurized gets a named failure."""
        try:
            model = self._load()
        except Exception as exc:  # no model → every item fails with the reason, none raises
            prov = Provenance(plugin=NAME, settings={"model_path": str(self.model_path)})
            return [
                ScoreResult.failed(self.property, self.unit, "model_unavailable", str(exc), prov) for _ in structures
            ]
        prov = self.provenance()
        results: list[ScoreResult | None] = [None] * len(structures)
        rows, where = [], []
        for i, structure in enumerate(structures):
            try:
                rows.append(featurize(self._as_monolayer(structure)))
                where.append(i)
            except FeatureError as exc:
                results[i] = ScoreResult.failed(self.property, self.unit, exc.reason, str(exc), prov)
            except Exception as exc:  # anything pymatgen/spglib/SMACT throws on odd input
                results[i] = ScoreResult.failed(
                    self.property, self.unit, "featurization_failed", f"{type(exc).__name__}: {exc}", prov
                )
        if rows:
            x = np.array(rows)
            p = model.predict_proba(x)
            spread = model.predict_spread(x)
            known = set(model.metadata.get("unlabeled_elements", []))
            for k, i in enumerate(where):
                elements = sorted({el.symbol for el in structures[i].composition.elements})
                unseen = [e for e in elements if known and e not in known]
                extra: dict[str, Any] = {
                    "synthesizable": bool(p[k] >= self.threshold),
                    "bag_std": float(spread[k]),
                    # The SMACT screens are features, not gates; they are reported so a ranking can
                    # gate on them (the model alone lets some non-neutral formulas through).
                    "smact_charge_neutral": bool(x[k, _NEUTRAL]),
                    "smact_electronegativity_ok": bool(x[k, _EN_OK]),
                }
                if unseen:
                    # These elements never appeared among the unlabeled layers: the model has only
                    # seen them as positives, so its score there is an extrapolation that leans high.
                    extra["elements_outside_unlabeled_set"] = unseen
                results[i] = ScoreResult(
                    property=self.property,
                    value=float(p[k]),
                    unit=self.unit,
                    uncertainty=float(spread[k]),
                    extra=extra,
                    provenance=prov,
                )
        return [r for r in results]  # type: ignore[misc]

    def train(self, **options: Any) -> dict[str, Any]:
        """``gen2d train --scorer synth.pu``: :func:`gen2d_synth_pu.training.train` (writes model.json, MANIFEST.json)."""
        from gen2d_synth_pu.training import train

        return train(**options)

    def explain(self, structure: Structure) -> dict[str, Any]:
        """Everything the scorer would do with one structure: features, model, manifest metrics."""
        out: dict[str, Any] = {"scorer": NAME, "model_path": str(self.model_path)}
        try:
            self._load()
        except Exception as exc:
            out["error"] = str(exc)
            return out
        manifest_path = self.model_dir / MANIFEST_FILE
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            out["manifest"] = {k: manifest.get(k) for k in ("date", "command", "metrics", "caveats")}
        try:
            features = featurize(self._as_monolayer(structure))
        except FeatureError as exc:
            out["failure"] = {"reason": exc.reason, "message": str(exc)}
            return out
        out["features"] = dict(zip(FEATURE_NAMES, map(float, features)))
        result = self.score([structure])[0]
        out["result"] = result.model_dump(mode="json")
        return out
