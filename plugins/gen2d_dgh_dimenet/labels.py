"""ΔG_H pseudo-labels from ``dgh.mlip`` for surrogate training, cached so reruns and extensions are incremental."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pymatgen.core import Structure

from gen2d.fileio import append_jsonl, read_jsonl

log = logging.getLogger(__name__)

#: The ``dgh.mlip`` settings that labelled the shipped DimeNet++ ensemble (``gen2d/assets/dgh_dimenet``, whose
#: MANIFEST cites this name; ``scripts/bench_her.py label`` uses it): cheaper than dgh.mlip's defaults (two
#: sites per face, looser relaxations) because CPU was shared. Every label records the settings it used.
LABEL_RECIPE = {
    "calculator": "chgnet",
    "device": "cpu",
    "max_sites_per_face": 2,
    "steps": 100,
    "fmax": 0.1,
    "slab_fmax": 0.1,
    "slab_steps": 150,
}
#: dgh.mlip's default settings (every symmetry-distinct site, FIRE to 0.05 eV/Å) with the same model as
#: :data:`LABEL_RECIPE`: what the cheap recipe approximates, so the difference between the two is label noise.
FULL_RECIPE = {"calculator": "chgnet", "device": "cpu"}


class LabelCache(Protocol):
    """Where labels live between runs: the lead backs it with the store; tests use a dict or a file."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, label: dict[str, Any]) -> None: ...


class DictLabelCache:
    """In-memory label cache."""

    def __init__(self):
        self.data: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def put(self, key: str, label: dict[str, Any]) -> None:
        self.data[key] = label


class JsonlLabelCache:
    """Append-only JSON-lines label cache: a crash loses at most the label being computed."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.data: dict[str, dict[str, Any]] = {}
        for row in read_jsonl(self.path):  # a line cut by a kill is skipped: that label is computed again
            self.data[row["key"]] = row["label"]

    def get(self, key: str) -> dict[str, Any] | None:
        return self.data.get(key)

    def put(self, key: str, label: dict[str, Any]) -> None:
        self.data[key] = label
        append_jsonl(self.path, {"key": key, "label": label})


def label_key(structure: Structure, scorer) -> str:
    """Cache key: the material's content hash and a hash of everything that changes the label."""
    from gen2d.structures import content_hash

    recipe = json.dumps(
        {
            "calculator": scorer.calculator_name,
            "model": scorer.model,
            "relax_slab": scorer.relax_slab,
            "slab_fmax": scorer.slab_fmax,
            "slab_steps": scorer.slab_steps,
            **scorer.settings.as_dict(),
        },
        sort_keys=True,
    )
    return f"{content_hash(structure)}:{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def site_labels(sites: Sequence[dict[str, Any]], slab: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every site's ΔG_H, tied to the atom of the relaxed unit-cell slab nearest to the relaxed H.

    ``dgh.mlip`` relaxes H on an ASE ``repeat`` of the unit cell, which tiles the whole cell, so the
    supercell atom ``k`` is the unit-cell atom ``k % n``. These per-site labels let the surrogate learn
    ΔG_H as a property of a site rather than of a whole material.
    """
    n = len(slab["sites"]) if slab else 0
    out = []
    for s in sites:
        index = s.get("nearest_atom_index")
        out.append(
            {
                "face": s.get("face"),
                "kind": s.get("kind"),
                "nearest_atom": s.get("nearest_atom"),
                "atom_index": None if index is None or not n else int(index) % n,
                "dg_h_eV": s.get("delta_g_h"),
                "valid": bool(s.get("valid")),
                "flags": list(s.get("flags", [])),
            }
        )
    return out


def label_monolayers(
    structures: Sequence[Structure],
    scorer,
    label_cache: LabelCache,
    ids: Sequence[str] | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> list[dict[str, Any]]:
    """ΔG_H labels from ``scorer`` (a ``dgh.mlip`` instance) for every structure, computed only once.

    Returns
    -------
    list of dict
        One per structure: ``id``, ``key``, ``ok``, ``dg_h_eV`` (None when failed), ``reason``,
        ``cpu_seconds`` (process CPU time of this label), ``relaxed_slab`` (pymatgen dict, the
        surrogate's input), ``model`` (MLIP name and version) and ``formula``.
    """
    ids = list(ids) if ids is not None else [str(k) for k in range(len(structures))]
    labels: list[dict[str, Any]] = []
    for n, (sid, structure) in enumerate(zip(ids, structures)):
        key = label_key(structure, scorer)
        cached = label_cache.get(key)
        if cached is None:
            t0 = time.process_time()
            result = scorer.score([structure])[0]
            cpu = time.process_time() - t0
            slab = result.relaxed_structure  # the slab the MLIP put H on
            best = result.extra.get("best_site") or {}
            cached = {
                "id": sid,
                "key": key,
                "formula": structure.composition.reduced_formula,
                "ok": result.ok,
                "dg_h_eV": result.value,
                "reason": None if result.ok else result.failure.reason,
                "message": None if result.ok else result.failure.message,
                "cpu_seconds": cpu,
                "n_sites": len(result.extra.get("sites", [])),
                "best_site": {k: best.get(k) for k in ("face", "kind", "nearest_atom", "coverage")},
                "model": result.provenance.model,
                "relaxed_slab": slab,
                "sites": site_labels(result.extra.get("sites", []), slab),
            }
            label_cache.put(key, cached)
        labels.append(cached)
        if progress is not None:
            progress(n, len(structures), cached)
    return labels


def iter_monolayers(
    paths: str | Path | Sequence[str | Path], max_atoms: int | None = None
) -> Iterable[tuple[str, Structure]]:
    """(source id, Structure) from every readable source in ``paths``: an ASE database (2DMatPedia, C2DB),
    an MC2D JSON list, a folder of structure files or one file (:func:`gen2d.data.readers.read_any`).

    Unreadable entries are logged and skipped, so one corrupt row never stops a training set.
    """
    from gen2d.data.readers import read_any

    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        for outcome in read_any(path):
            if outcome.record is None:
                rej = outcome.rejection
                log.warning("skipping %s/%s: %s %s", rej.source, rej.source_id, rej.reason, rej.message)
                continue
            if max_atoms is not None and len(outcome.record.structure) > max_atoms:
                continue
            yield outcome.record.source_id, outcome.record.structure
