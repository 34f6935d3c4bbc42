"""Bulk reference phases from stacked database monolayers: the layered parents a prototype library lacks.

A monolayer exfoliated from a known bulk crystal (2DMatPedia ``top-down``, every MC2D layer) comes from a
real layered parent. Stacking the layer (AA: each layer directly above the last, a van der Waals gap of
:data:`INTERLAYER_GAP` between them) and relaxing the full cell with the candidate's MLIP gives a bulk
phase of that composition, so ternaries and many binaries get a reference wherever such a parent
exists. The parent's own stacking is not in either database; AA is used throughout, and since a
dispersion-free MLIP binds layers only weakly, the stacking changes the energy by a few meV/atom.

The layers are read from the reference data folder (``GEN2D_DATA``, see :mod:`gen2d.settings`); when it is
absent there are no stacked references and the provider says so in its description.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pymatgen.core import Structure

log = logging.getLogger(__name__)

# Bump when how layers are chosen, stacked or relaxed changes: it is part of every stacked cache key.
STACKED_VERSION = "1"
#: vacuum between stacked layers at the start of the relaxation (Å): 2H-MoS2 has 2.98 Å between S planes
INTERLAYER_GAP = 3.2
#: layer sources known to this module (name -> what it holds)
SOURCES = {
    "2dmatpedia-top-down": "2dmatpedia_filtered.db rows with discovery_process top-down (exfoliated from a "
    "Materials Project bulk)",
    "mc2d": "mc2d_258_exfoliable.json (easily exfoliable layers of ICSD/COD bulk parents)",
}
DEFAULT_SOURCES = ("2dmatpedia-top-down", "mc2d")
MAX_ATOMS = 40  # larger layers make costly references and are rare parents of generated chemistry


@dataclass(frozen=True)
class SourceLayer:
    """One database monolayer that can be stacked into a bulk reference."""

    source_id: str  # "<source>:<id>", e.g. "2dmatpedia:2dm-3150"
    structure: Structure  # oriented monolayer (vacuum along c)

    @property
    def chemsys(self) -> str:
        return "-".join(sorted({el.symbol for el in self.structure.composition.elements}))


def stack_layer(layer: Structure, gap: float = INTERLAYER_GAP) -> Structure:
    """The AA-stacked bulk of a monolayer: the layer with ``gap`` Å of vacuum, periodic along c.

    c is normal to the layer, so each layer sits directly above the one below it.
    """
    from gen2d.structures import orient_2d

    return orient_2d(layer, vacuum=gap)


def _read_2dmatpedia_top_down(path: Path) -> list[SourceLayer]:
    from gen2d.data.readers import ase_db_rows
    from gen2d.structures import from_ase, orient_2d

    out = []
    for row_id, row in ase_db_rows(path):
        if isinstance(row, Exception) or row.data.get("discovery_process") != "top-down":
            continue
        if row.natoms > MAX_ATOMS:
            continue
        mid = row.data.get("material_id") or f"row{row_id}"
        try:
            out.append(SourceLayer(f"2dmatpedia:{mid}", orient_2d(from_ase(row.toatoms()))))
        except Exception as exc:  # one unreadable row never removes the others
            log.info("2DMatPedia row %s skipped as a stacked reference: %s", row_id, exc)
    return out


def _read_mc2d(path: Path) -> list[SourceLayer]:
    from gen2d.data.readers import load_mc2d_entries, mc2d_entry_to_structure
    from gen2d.structures import orient_2d

    out = []
    for entry in load_mc2d_entries(path):
        try:
            s = mc2d_entry_to_structure(entry)
        except Exception as exc:
            log.info("MC2D entry %s skipped as a stacked reference: %s", entry.get("structure_label"), exc)
            continue
        if len(s) > MAX_ATOMS:
            continue
        out.append(SourceLayer(f"mc2d:{entry.get('structure_label') or entry.get('db_id')}", orient_2d(s)))
    return out


_READERS = {
    "2dmatpedia-top-down": ("2dmatpedia_filtered.db", _read_2dmatpedia_top_down),
    "mc2d": ("mc2d_258_exfoliable.json", _read_mc2d),
}


@lru_cache(maxsize=8)
def _load(data_dir: str, sources: tuple[str, ...]) -> tuple[tuple[SourceLayer, ...], tuple[str, ...]]:
    layers: list[SourceLayer] = []
    absent = []
    for name in sources:
        filename, reader = _READERS[name]
        path = Path(data_dir) / filename
        if not path.is_file():
            absent.append(f"{name}: {path} not found")
            continue
        layers.extend(reader(path))
    return tuple(layers), tuple(absent)


class StackedLayerLibrary:
    """The database monolayers that may be stacked into bulk references, indexed by chemical system.

    Parameters
    ----------
    data_dir : path, optional
        Folder of the reference data (default: ``Gen2dSettings.data_dir``).
    sources : sequence of str
        Names from :data:`SOURCES`.
    """

    def __init__(self, data_dir: str | Path | None = None, sources: Sequence[str] = DEFAULT_SOURCES):
        from gen2d.settings import get_settings

        unknown = set(sources) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown stacked-layer sources {sorted(unknown)}; known: {sorted(SOURCES)}")
        self.data_dir = Path(data_dir) if data_dir is not None else get_settings().data_dir
        self.sources = tuple(sources)
        layers, absent = _load(str(self.data_dir), self.sources)
        self.layers = layers
        self.absent = list(absent)
        self._by_chemsys: dict[str, list[SourceLayer]] = defaultdict(list)
        for layer in layers:
            self._by_chemsys[layer.chemsys].append(layer)

    def __len__(self) -> int:
        return len(self.layers)

    def for_chemsys(self, chemsys: str) -> list[SourceLayer]:
        """Layers whose element set is exactly ``chemsys`` (``"Mo-S"``)."""
        return list(self._by_chemsys.get(chemsys, []))

    def chemical_systems(self, elements: Iterable[str]) -> list[str]:
        """Every chemical system made of a subset of ``elements`` that has at least one layer."""
        els = set(elements)
        return sorted(cs for cs in self._by_chemsys if set(cs.split("-")) <= els)

    def fingerprint(self) -> str:
        """A short hash of the sources and their layers: part of every stacked cache key."""
        h = hashlib.sha1(f"v{STACKED_VERSION}|{','.join(self.sources)}".encode())
        for layer in self.layers:
            h.update(layer.source_id.encode())
            h.update(layer.structure.composition.formula.encode())
        return h.hexdigest()[:8]

    def describe(self) -> dict:
        return {
            "version": STACKED_VERSION,
            "stacking": f"AA, {INTERLAYER_GAP} Å starting gap, full-cell MLIP relaxation",
            "sources": {name: SOURCES[name] for name in self.sources},
            "n_layers": len(self.layers),
            "fingerprint": self.fingerprint(),
            "unavailable": self.absent,
        }


__all__ = [
    "DEFAULT_SOURCES",
    "INTERLAYER_GAP",
    "SOURCES",
    "STACKED_VERSION",
    "SourceLayer",
    "StackedLayerLibrary",
    "stack_layer",
]
