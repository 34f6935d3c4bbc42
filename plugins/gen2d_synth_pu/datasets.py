"""Positive and unlabeled monolayers for PU training, read from 2DMatPedia (ASE db) and MC2D (JSON).

Positives are exfoliated from experimentally known bulk (2DMatPedia ``top-down``, every MC2D entry)
plus the few ``bottom-up`` rows that are monolayers grown in the lab (``experimental_monolayers.csv``,
matched by structure in :mod:`gen2d_synth_pu.relabel`); the unlabeled set is the rest of 2DMatPedia's
hypothetical ``bottom-up`` layers.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor

from gen2d.data.readers import ase_db_rows, load_mc2d_entries, mc2d_atoms
from gen2d.settings import get_settings

MATPEDIA_FILE = "2dmatpedia_filtered.db"
MC2D_FILE = "mc2d_258_exfoliable.json"


def data_dir() -> Path:
    """The settings' data folder (``GEN2D_DATA``); see :mod:`gen2d.settings`."""
    return get_settings().data_dir


@dataclass
class LabelledLayer:
    """One training monolayer: ``label`` 1 is positive, 0 unlabeled."""

    structure: Structure
    label: int
    source: str  # "2dmatpedia:<material_id>" or "mc2d:<structure_label>"
    meta: dict = field(default_factory=dict)


def read_2dmatpedia(path: str | Path) -> list[LabelledLayer]:
    """2DMatPedia rows: ``top-down`` → positive, ``bottom-up`` → unlabeled; other processes skipped.

    The one ``from-literature`` row is left out: the issue defines the two classes by these two
    discovery processes only.
    """
    layers = []
    for _, row in ase_db_rows(path):
        if isinstance(row, Exception):
            raise row
        process = row.data.get("discovery_process")
        if process not in ("top-down", "bottom-up"):
            continue
        atoms = row.toatoms()
        atoms.pbc = (True, True, False)
        structure = AseAtomsAdaptor.get_structure(atoms)
        material_id = row.data.get("material_id", row.id)
        layers.append(
            LabelledLayer(
                structure,
                int(process == "top-down"),
                f"2dmatpedia:{material_id}",
                {"discovery_process": process, "material_id": material_id},
            )
        )
    return layers


def mc2d_structure(entry: dict) -> Structure:
    """One MC2D entry as a structure periodic in-plane only (:func:`gen2d.data.readers.mc2d_atoms`, wrapped)."""
    atoms = mc2d_atoms(entry)
    atoms.wrap(pbc=(True, True, True))  # MC2D centres the layer on z = 0; wrap into the cell
    return AseAtomsAdaptor.get_structure(atoms)


def read_mc2d(path: str | Path) -> list[LabelledLayer]:
    """Every MC2D entry is a positive (exfoliable from an ICSD/COD parent)."""
    entries = load_mc2d_entries(path)
    return [
        LabelledLayer(mc2d_structure(e), 1, f"mc2d:{e.get('structure_label', i)}", {"spg": e.get("spg")})
        for i, e in enumerate(entries)
    ]


def identity_key(structure: Structure) -> tuple[str, int]:
    """(reduced formula, space group at symprec 0.1): one material across the two databases."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # spglib's error-handling notice
            spg = SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number()
    except Exception:
        spg = 0
    return structure.composition.reduced_formula, int(spg)


def relabel_experimental(layers: list[LabelledLayer], exclude: Collection[str] = ()) -> tuple[list[dict], list[dict]]:
    """Turn 2DMatPedia ``bottom-up`` rows that match a grown monolayer into positives, in place.

    ``exclude`` holds names or families of ``experimental_monolayers.csv`` to leave unlabeled (for the
    leave-family-out check). Returns the relabeled rows and the rows of the list that were positive
    already (e.g. germanene, which 2DMatPedia files as ``top-down``), each as a dict for the manifest.
    """
    from gen2d_synth_pu.relabel import load_experimental_monolayers, match_experimental

    entries = [e for e in load_experimental_monolayers() if e.name not in exclude and e.family not in exclude]
    formulas = {e.formula for e in entries}
    relabeled, already = [], []
    for layer in layers:
        if layer.structure.composition.reduced_formula not in formulas:
            continue
        entry = match_experimental(layer.structure, entries)
        if entry is None:
            continue
        record = {
            "source": layer.source,
            "material_id": layer.meta.get("material_id"),
            "formula": layer.structure.composition.reduced_formula,
            "matched": entry.name,
            "family": entry.family,
            "reference": entry.citation(),
        }
        if layer.label == 1:
            already.append({**record, "discovery_process": layer.meta.get("discovery_process", "mc2d")})
        elif layer.meta.get("discovery_process") == "bottom-up":
            layer.label = 1
            layer.meta["relabeled_as"] = entry.name
            relabeled.append(record)
    return relabeled, already


def load_pu_dataset(
    data: str | Path | None = None, use_mc2d: bool = True, relabel: bool = True, exclude_relabel: Collection[str] = ()
) -> tuple[list[LabelledLayer], dict]:
    """Positives and unlabeled layers, deduplicated, with counts for the manifest.

    With ``relabel`` the bottom-up rows matching ``experimental_monolayers.csv`` become positives
    (``exclude_relabel``: names or families of that list to skip). A material appearing twice
    (2DMatPedia and MC2D, or twice in one) is kept once; an unlabeled layer with a positive's key
    is dropped from the unlabeled set only if it is also the same layer structure
    (:func:`gen2d_synth_pu.relabel.same_layer`): high-buckled germanene shares formula and space group
    with the low-buckled positive but is a different, hypothetical layer.
    """
    from gen2d_synth_pu.relabel import same_layer

    root = Path(data) if data else data_dir()
    raw = read_2dmatpedia(root / MATPEDIA_FILE)
    if use_mc2d:
        raw += read_mc2d(root / MC2D_FILE)
    relabeled, already = relabel_experimental(raw, exclude_relabel) if relabel else ([], [])
    positives: dict[tuple, LabelledLayer] = {}
    all_positives: dict[tuple, list[LabelledLayer]] = {}
    unlabeled: dict[tuple, LabelledLayer] = {}
    for layer in raw:
        key = identity_key(layer.structure)
        layer.meta["key"] = key
        if layer.label == 1:
            positives.setdefault(key, layer)
            all_positives.setdefault(key, []).append(layer)
    for layer in raw:
        if layer.label == 1:
            continue
        key = layer.meta["key"]
        if key in all_positives and not any(same_layer(p.structure, layer.structure) for p in all_positives[key]):
            # same formula and space group as a positive, but another structure: keep it, keyed apart
            key = (*key, layer.source)
            layer.meta["key"] = key
        unlabeled.setdefault(key, layer)
    dropped = [k for k in unlabeled if k in positives]
    for k in dropped:
        del unlabeled[k]
    layers = list(positives.values()) + list(unlabeled.values())
    counts = {
        "raw_rows": len(raw),
        "positives": len(positives),
        "positives_2dmatpedia": sum(1 for p in positives.values() if p.source.startswith("2dmatpedia")),
        "positives_2dmatpedia_relabeled_bottom_up": sum(1 for p in positives.values() if "relabeled_as" in p.meta),
        "positives_mc2d": sum(1 for p in positives.values() if p.source.startswith("mc2d")),
        "unlabeled": len(unlabeled),
        "unlabeled_dropped_as_known_positive": len(dropped),
        "unlabeled_kept_despite_positive_key": sorted(k[2] for k in unlabeled if len(k) == 3),
        "relabeled_experimental": relabeled,
        "experimental_list_already_positive": already,
        "relabel_excluded": sorted(exclude_relabel),
    }
    return layers, counts
