"""The ``dgh.dimenet`` scorer: an ensemble of periodic DimeNet++ models; mean is ΔG_H, spread the uncertainty."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from pymatgen.core import Structure

from gen2d.scoring import (
    BaseScorer,
    Provenance,
    ScoreResult,
    ScorerOptions,
    device_name,
    file_sha256,
    relaxed_from_context,
)

log = logging.getLogger(__name__)


def default_checkpoint_dir() -> Path:
    """The small ensemble shipped in ``gen2d/assets/dgh_dimenet``."""
    return Path(str(resources.files("gen2d.assets").joinpath("dgh_dimenet")))


class DimeNetOptions(ScorerOptions):
    """Options of ``dgh.dimenet`` (the parameters of :class:`DimeNetDGHScorer`)."""

    checkpoint_dir: str | Path | None = Field(None, description="folder of member_*.pt; default: the shipped ensemble")
    device: str = "auto"
    batch_size: int = Field(64, ge=1, description="graphs per forward pass")


class DimeNetDGHScorer(BaseScorer):
    """ΔG_H (eV) of the best H site, predicted from the relaxed slab by a DimeNet++ ensemble.

    Parameters
    ----------
    checkpoint_dir : str or Path, optional
        Folder of ``member_*.pt`` checkpoints (default: the shipped ensemble).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    batch_size : int
        Graphs per forward pass.
    """

    Options = DimeNetOptions
    name = "dgh.dimenet"
    property = "dg_h"
    unit = "eV"
    requires = ("e_hull",)

    def __init__(self, checkpoint_dir: str | Path | None = None, device: str = "auto", batch_size: int = 64):
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir()
        self.device = device
        self.batch_size = batch_size
        self._members: list | None = None
        self._metadata: dict[str, Any] = {}
        self._calibration: dict[str, Any] | None = None
        self._sha = None

    def checkpoints(self) -> list[Path]:
        return sorted(self.checkpoint_dir.glob("member_*.pt")) if self.checkpoint_dir.is_dir() else []

    def available(self) -> tuple[bool, str]:
        if not self.checkpoints():
            return False, (
                f"no DimeNet++ checkpoints (member_*.pt) in {self.checkpoint_dir}; "
                "train them with `gen2d train --surrogate dgh.dimenet`"
            )
        return True, ""

    def _load(self) -> list:
        if self._members is None:
            from gen2d.models.dimenet import load_checkpoint

            paths = self.checkpoints()
            if not paths:
                raise FileNotFoundError(self.available()[1])
            members, shas = [], []
            for path in paths:
                model, meta = load_checkpoint(path, device=device_name(self.device))
                members.append(model)
                shas.append(file_sha256(path))
                self._metadata = meta
            self._members = members
            # one hash for the ensemble: the member hashes in file order
            self._sha = hashlib.sha256("".join(shas).encode()).hexdigest()
            self._calibration = self._read_calibration()
        return self._members

    def _read_calibration(self) -> dict[str, Any] | None:
        """The ensemble's held-out calibration of its spread (MANIFEST.json ``metrics``), if it has one."""
        manifest = self.checkpoint_dir / "MANIFEST.json"
        if not manifest.is_file():
            return None
        try:
            cal = json.loads(manifest.read_text()).get("metrics", {}).get("uncertainty_calibration")
            if not cal:
                return None
            scale = float(cal["scale"])
            if not np.isfinite(scale) or scale <= 0:
                raise ValueError(f"scale {scale} is not a positive number")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring the uncertainty calibration in %s: %s", manifest, exc)
            return None
        return {**cal, "scale": scale}

    def _uncertainty_settings(self) -> dict[str, Any]:
        cal = self._calibration
        if cal is None:
            return {"uncertainty": "ensemble standard deviation, uncalibrated (no held-out calibration found)"}
        return {
            "uncertainty": "ensemble standard deviation x held-out calibration scale",
            "uncertainty_scale": cal["scale"],
            "uncertainty_calibration_n": cal.get("n"),
            "uncertainty_within_1sigma_split_half": cal.get("split_half_within_1sigma"),
        }

    def provenance(self, notes: Sequence[str] = ()) -> Provenance:
        meta = self._metadata
        return Provenance(
            plugin=self.name,
            model=f"periodic DimeNet++ ensemble x{len(self._members or [])}",
            checkpoint_sha256=self._sha,
            reference_set=meta.get("label_source"),
            settings={
                "checkpoint_dir": str(self.checkpoint_dir),
                "label_source": meta.get("label_source"),
                "training_set": meta.get("training_set"),
                "heldout_mae_eV": meta.get("heldout_mae_eV"),
                "n_train": meta.get("n_train"),
                "hparams": meta.get("hparams"),
                **self._uncertainty_settings(),
            },
            notes=list(notes),
        )

    def _input_slab(self, structure: Structure, ctx: dict | None, notes: list[str]) -> Structure:
        from gen2d.structures import orient_2d

        upstream = relaxed_from_context(ctx, "e_hull")
        if upstream is not None:
            notes.append("input: slab relaxed by e_hull")
            return orient_2d(upstream[0])
        notes.append("input: structure as given (the surrogate was trained on MLIP-relaxed slabs)")
        return orient_2d(structure)

    def score(
        self, structures: Sequence[Structure], context: Sequence[dict[str, ScoreResult]] | None = None
    ) -> list[ScoreResult]:
        from gen2d.models.dimenet import periodic_graph, predict_ensemble
        from gen2d.structures import validate_ingest

        try:
            members = self._load()
        except Exception as exc:
            return [
                ScoreResult.failed(
                    self.property,
                    self.unit,
                    "checkpoint_unavailable",
                    f"{type(exc).__name__}: {exc}",
                    self.provenance(),
                )
                for _ in structures
            ]
        cutoff = members[0].hparams.cutoff
        trained_elements = set(self._metadata.get("elements", []))
        ctx = list(context) if context is not None else [None] * len(structures)
        results: list[ScoreResult | None] = [None] * len(structures)
        graphs, where, notes_of = [], [], {}
        for n, (structure, c) in enumerate(zip(structures, ctx)):
            notes: list[str] = []
            try:
                check = validate_ingest(structure)
                if not check.ok:
                    results[n] = ScoreResult.failed(
                        self.property,
                        self.unit,
                        check.reasons[0] if check.reasons else "invalid_structure",
                        "; ".join(check.messages) or "failed ingest validation",
                        self.provenance(),
                    )
                    continue
                slab = self._input_slab(structure, c, notes)
                unseen = sorted({el.symbol for el in slab.composition.elements} - trained_elements)
                if trained_elements and unseen:
                    notes.append(f"elements absent from the training labels: {', '.join(unseen)}")
                graph = periodic_graph(slab, cutoff=cutoff)
                if graph.edge_index.shape[1] == 0:
                    results[n] = ScoreResult.failed(
                        self.property,
                        self.unit,
                        "no_neighbours",
                        f"no atom pairs within {cutoff} Å",
                        self.provenance(notes),
                    )
                    continue
            except Exception as exc:  # bad input never escapes score()
                results[n] = ScoreResult.failed(
                    self.property,
                    self.unit,
                    "invalid_structure",
                    f"{type(exc).__name__}: {exc}",
                    self.provenance(notes),
                )
                continue
            graphs.append(graph)
            where.append(n)
            notes_of[n] = notes
        scale = self._calibration["scale"] if self._calibration else 1.0  # of the spread
        for start in range(0, len(graphs), self.batch_size):
            chunk = graphs[start : start + self.batch_size]
            site_resolved = members[0].hparams.readout == "site"
            outs = predict_ensemble(members, chunk, atoms=site_resolved)
            preds = np.stack([(o[0] if site_resolved else o).cpu().numpy()[:, 0] for o in outs])  # (M, B)
            sites = self._best_atoms(chunk, outs) if site_resolved else {}
            for b, n in enumerate(where[start : start + self.batch_size]):
                mean, std = float(preds[:, b].mean()), float(preds[:, b].std(ddof=1) if len(members) > 1 else 0.0)
                if not np.isfinite(mean):
                    results[n] = ScoreResult.failed(
                        self.property,
                        self.unit,
                        "non_finite_prediction",
                        "the surrogate returned a non-finite value",
                        self.provenance(notes_of[n]),
                    )
                    continue
                extra: dict[str, Any] = {"members_eV": preds[:, b].round(4).tolist(), "ensemble_std_eV": std}
                if b in sites:
                    extra["best_site_atom"] = sites[b]
                results[n] = ScoreResult(
                    property=self.property,
                    value=mean,
                    unit=self.unit,
                    uncertainty=std * scale,
                    extra=extra,
                    provenance=self.provenance(notes_of[n]),
                )
        return results  # type: ignore[return-value]

    @staticmethod
    def _best_atoms(chunk, outs) -> dict[int, dict[str, Any]]:
        """For a site-resolved ensemble: per graph, the exposed atom whose ensemble-mean ΔG_H is nearest 0
        (index in the input slab, element, that value in eV): where the surrogate expects H to bind best."""
        import torch
        from pymatgen.core.periodic_table import Element

        per_atom = torch.stack([o[1][:, 0] for o in outs]).mean(0)
        exposed = outs[0][3]
        z = torch.cat([g.z for g in chunk])
        best: dict[int, dict[str, Any]] = {}
        offset = 0
        for b, graph in enumerate(chunk):
            n = graph.z.numel()
            values, mask = per_atom[offset : offset + n], exposed[offset : offset + n]
            if bool(mask.any()):
                k = int(torch.where(mask, values.abs(), torch.full_like(values, float("inf"))).argmin())
                best[b] = {
                    "atom_index": k,
                    "element": Element.from_Z(int(z[offset + k])).symbol,
                    "dg_h_eV": round(float(values[k]), 4),
                }
            offset += n
        return best

    def explain(self, structure: Structure) -> dict[str, Any]:
        """Checkpoints, their metadata and the graph the surrogate would see."""
        from gen2d.models.dimenet import periodic_graph
        from gen2d.structures import orient_2d

        members = self._load()
        graph = periodic_graph(orient_2d(structure), cutoff=members[0].hparams.cutoff)
        return {
            "scorer": self.name,
            "property": self.property,
            "unit": self.unit,
            "checkpoints": [str(p) for p in self.checkpoints()],
            "ensemble_sha256": self._sha,
            "metadata": self._metadata,
            "n_edges": int(graph.edge_index.shape[1]),
            "n_atoms": int(graph.z.numel()),
        }

    def train(
        self,
        data: str | None = None,
        n: int = 200,
        max_atoms: int | None = None,
        seed: int = 0,
        out: str | None = None,
        label_cache: Any = None,
        mlip: dict[str, Any] | None = None,
        n_models: int = 4,
        epochs: int = 150,
        device: str = "cpu",
        readout: str = "site",
        **_: Any,
    ) -> dict[str, Any]:
        """``gen2d train --surrogate dgh.dimenet``: label monolayers with ``dgh.mlip`` and train the ensemble.

        Parameters
        ----------
        data : str or list of str, optional
            Where the monolayers come from: ASE databases (2DMatPedia, C2DB), MC2D JSON lists, folders of
            structure files, or several of them (a list, or one string with commas); names that do not
            exist as given are looked up in ``$GEN2D_DATA``. Default ``2dmatpedia_filtered.db``.
        n, max_atoms, seed
            Label ``n`` monolayers (at most ``max_atoms`` atoms) drawn in a fixed shuffle of ``seed``.
        out : str, optional
            Folder for ``member_*.pt`` and MANIFEST.json (default: ``./dgh_dimenet``); point
            ``checkpoint_dir`` of this scorer at it.
        label_cache : object with get/put, or str, optional
            Where labels persist between runs (the store, in the CLI); a string is a JSON-lines file.
            Default: ``<out>/labels.jsonl``. Reruns and larger ``n`` only label what is missing.
        mlip : dict, optional
            Options of the ``dgh.mlip`` scorer that makes the labels (calculator, model, settings).
        readout : {"site", "mean"}
            "site": learn every site's ΔG_H on the atom next to it and read out the soft minimum of |ΔG_H|
            over exposed atoms; "mean": one material value from the mean of per-atom outputs.

        Returns
        -------
        dict
            ``checkpoint_dir``, ``checkpoint`` (first member), ``metrics`` and the manifest.
        """
        import random

        from gen2d.data.readers import data_dir
        from gen2d.models.dimenet import DimeNetHParams
        from gen2d_dgh_dimenet.labels import JsonlLabelCache, iter_monolayers
        from gen2d_dgh_dimenet.train import label_and_train

        out_dir = Path(out or "dgh_dimenet")
        if label_cache is None or isinstance(label_cache, (str, Path)):
            label_cache = JsonlLabelCache(label_cache or out_dir / "labels.jsonl")
        root = data_dir()
        names = data.split(",") if isinstance(data, str) else list(data or ["2dmatpedia_filtered.db"])
        paths = [Path(p) if Path(p).exists() else root / p for p in (str(x).strip() for x in names)]
        data = ",".join(str(p) for p in paths)
        items = list(iter_monolayers(paths, max_atoms=max_atoms))
        random.Random(seed).shuffle(items)
        items = items[:n]
        command = (
            f"gen2d train --surrogate dgh.dimenet -o data={data} -o n={n} -o max_atoms={max_atoms} "
            f"-o seed={seed} -o out={out_dir} -o readout={readout}"
        )
        manifest = label_and_train(
            [s for _, s in items],
            label_cache,
            out_dir,
            ids=[i for i, _ in items],
            mlip_options=mlip,
            n_models=n_models,
            epochs=epochs,
            seed=seed,
            device=device,
            hparams=DimeNetHParams(readout=readout),
            training_set=f"{'+'.join(p.name for p in paths)}: {len(items)} monolayers "
            f"(seed {seed}, max_atoms {max_atoms})",
            command=command,
        )
        return {
            "checkpoint_dir": str(out_dir),
            "checkpoint": str(out_dir / "member_0.pt"),
            "metrics": manifest["metrics"],
            "manifest": manifest,
        }
