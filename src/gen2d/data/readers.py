"""Readers for 2D databases (ASE db in C2DB or 2DMatPedia layout, MC2D JSON, the 2DMatPedia POSCAR
tarball, PaddleMaterial's 2D CSVs) and folders of files.

Every reader yields :class:`ReadOutcome` objects: a :class:`MonolayerRecord` or a named
:class:`Rejection`, so one bad row or file never stops the rest. The format-level pieces
(:func:`ase_db_rows`, :func:`matpedia_labels`, :func:`load_mc2d_entries`, :func:`mc2d_atoms`) are the
only parsers of these formats in gen2d: the EGNN training loader and the PU datasets build on them.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from pymatgen.core import Structure

from gen2d.settings import get_settings
from gen2d.structures import StructureError, from_ase, load_structure

STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".xyz", ".extxyz", ".json", ".mcif")
STRUCTURE_NAMES = ("POSCAR", "CONTCAR")
LABEL_COLUMNS = ("e_hull", "dg_h", "synth_label")
#: named reasons from reading (validation reasons live in gen2d.structures.REASONS)
READ_REASONS = {
    "unreadable_file": "the file could not be parsed as a structure",
    "unreadable_row": "a database row could not be turned into a structure",
    "bad_labels_csv": "the labels CSV lacks a file/id column or any label column",
    "unknown_element": "a species is not a chemical element",
    "no_primitive_cell": "the primitive cell of a supercell could not be found or oriented",
    "impossible_e_hull": "the row's energy above the hull is below -1 eV/atom (corrupt label)",
}


def data_dir() -> Path:
    """Reference data folder: :attr:`gen2d.settings.Gen2dSettings.data_dir` (``GEN2D_DATA``)."""
    return get_settings().data_dir


@dataclass
class MonolayerRecord:
    """One monolayer from any source, with labels in gen2d's names and units.

    ``labels``: ``e_hull`` (eV/atom, DFT energy above hull when the source has it), ``dg_h`` (eV),
    ``synth_label`` (1 = made or exfoliated from a known bulk, 0 = known not made, None = unknown).
    """

    structure: Structure
    source: str
    source_id: str
    labels: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejection:
    source: str
    source_id: str
    reason: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "source_id": self.source_id, "reason": self.reason, "message": self.message}


@dataclass
class ReadOutcome:
    record: MonolayerRecord | None = None
    rejection: Rejection | None = None


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _label_block(e_hull: Any = None, dg_h: Any = None, synth: Any = None, reference: str = "") -> dict[str, Any]:
    labels: dict[str, Any] = {"e_hull": _finite(e_hull), "dg_h": _finite(dg_h), "synth_label": None}
    if synth is not None and str(synth).strip() not in ("", "nan", "None"):
        try:
            labels["synth_label"] = int(float(synth))
        except ValueError:
            labels["synth_label"] = None
    labels["units"] = {"e_hull": "eV/atom", "dg_h": "eV"}
    if reference:
        labels["reference"] = reference
    return labels


# ----------------------------------------------------------------------------------------------
# ASE db: 2DMatPedia (row.data) and C2DB (key_value_pairs)


def ase_db_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(row id, row)`` for every row of an ASE database, in id order, each decoded on its own.

    A row that cannot be decoded comes as ``(row id, exception)``, so the rows after it still come.
    Opening the database happens here, before the first row: an unreadable file raises at once.
    """
    from ase.db import connect

    path = Path(path)
    db = connect(str(path), type="db")
    ids = _row_ids(path, db)

    def rows() -> Iterator[tuple[int, Any]]:
        for row_id in ids:
            try:
                yield row_id, db.get(id=row_id)
            except Exception as exc:
                yield row_id, exc

    return rows()


def matpedia_labels(data: dict[str, Any]) -> dict[str, Any]:
    """Labels of one 2DMatPedia row (its ``row.data``).

    ``e_hull`` (eV/atom) = ``decomposition_energy``, the energy above the Materials Project hull (PBE);
    None when missing or not finite. ``synth_label`` = 1 for ``top-down`` (exfoliated from a known
    bulk), None otherwise (``bottom-up`` layers are hypothetical, not known to be unmade).
    """
    return {
        "e_hull": _finite(data.get("decomposition_energy")),
        "synth_label": 1 if data.get("discovery_process") == "top-down" else None,
    }


def read_ase_db(path: str | Path, source: str | None = None) -> Iterator[ReadOutcome]:
    """Rows of an ASE database as records.

    2DMatPedia layout (``row.data``: material_id, discovery_process, decomposition_energy, ...):
    ``e_hull`` = decomposition_energy (energy above the Materials Project hull, PBE), and
    ``synth_label`` = 1 for ``top-down`` (exfoliated from a known bulk), None for ``bottom-up``.
    C2DB layout (key-value pairs ``uid``, ``ehull``, ``hform``): ``e_hull`` = ehull.
    """
    path = Path(path)
    source = source or path.stem
    try:
        rows = ase_db_rows(path)
    except Exception as exc:
        yield ReadOutcome(rejection=Rejection(source, path.name, "unreadable_file", f"{type(exc).__name__}: {exc}"))
        return
    for row_id, row in rows:
        # one row at a time: a corrupt row is a named rejection and the rows after it still come
        if isinstance(row, Exception):
            yield ReadOutcome(
                rejection=Rejection(source, f"row-{row_id}", "unreadable_row", f"{type(row).__name__}: {row}"[:300])
            )
            continue
        rid = f"row-{getattr(row, 'id', '?')}"
        try:
            atoms = row.toatoms()
            data = dict(row.data) if getattr(row, "data", None) else {}
            kvp = dict(row.key_value_pairs)
            if "material_id" in data:  # 2DMatPedia
                rid = str(data["material_id"])
                mp_labels = matpedia_labels(data)
                labels = _label_block(
                    mp_labels["e_hull"],
                    None,
                    mp_labels["synth_label"],
                    reference="2DMatPedia (PBE), energy above the Materials Project hull",
                )
                props = {
                    k: data.get(k)
                    for k in (
                        "formula_pretty",
                        "sg_number",
                        "discovery_process",
                        "bandgap",
                        "energy_per_atom",
                        "exfoliation_energy_per_atom",
                        "source_id",
                    )
                    if k in data
                }
            else:  # C2DB or a user's db
                rid = str(kvp.get("uid") or kvp.get("id") or rid)
                labels = _label_block(
                    kvp.get("ehull", kvp.get("e_hull")),
                    kvp.get("dg_h", kvp.get("dgh")),
                    kvp.get("synth_label", kvp.get("experimental")),
                    reference="C2DB (PBE)" if "uid" in kvp else source,
                )
                props = {k: v for k, v in kvp.items() if isinstance(v, (int, float, str, bool))}
            structure = from_ase(atoms)
        except Exception as exc:
            yield ReadOutcome(rejection=Rejection(source, rid, "unreadable_row", f"{type(exc).__name__}: {exc}"[:300]))
            continue
        yield ReadOutcome(record=MonolayerRecord(structure, source, rid, labels, props))


def _row_ids(path: Path, db) -> list[int]:
    """Row ids without decoding rows (SQLite: straight from the table), so one bad row cannot hide the rest."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return [int(r[0]) for r in con.execute("SELECT id FROM systems ORDER BY id")]
        finally:
            con.close()
    except sqlite3.Error:
        return [row.id for row in db.select(include_data=False)]


# ----------------------------------------------------------------------------------------------
# MC2D JSON


def load_mc2d_entries(path: str | Path) -> list[dict[str, Any]]:
    """The entries of an MC2D JSON file (a list, or a mapping id -> entry)."""
    entries = json.loads(Path(path).read_text())
    return list(entries.values()) if isinstance(entries, dict) else entries


def mc2d_element(position: list[Any]) -> str:
    """The element of one MC2D ``atomic_positions`` row ``[kind, x, y, z, element]``.

    The kind name is magnetic (``Co1``, ``Co2`` for two spin sublattices), so the element is the fifth
    field; rows without it give the kind's leading element symbol.
    """
    if len(position) > 4 and isinstance(position[4], str) and position[4]:
        return position[4]
    match = re.match(r"[A-Z][a-z]?", str(position[0]))
    if match is None:
        raise ValueError(f"unknown_element: MC2D kind {position[0]!r} names no element")
    return match.group(0)


def mc2d_atoms(entry: dict[str, Any]) -> Atoms:
    """ASE ``Atoms`` of one MC2D entry as stored, pbc (True, True, False).

    Cell rows are ``[label, x, y, z]`` and positions Cartesian (Å). MC2D centres the layer on z = 0, so
    some atoms sit below the cell; they are not wrapped here (callers that need a cell-bound structure wrap).
    """
    cell = np.array([[float(v) for v in row[-3:]] for row in entry["cell"]])
    symbols = [mc2d_element(p) for p in entry["atomic_positions"]]
    positions = np.array([[float(v) for v in p[1:4]] for p in entry["atomic_positions"]])
    return Atoms(symbols=symbols, positions=positions, cell=cell, pbc=(True, True, False))


def mc2d_entry_to_structure(entry: dict[str, Any]) -> Structure:
    """Structure from one MC2D entry, atoms wrapped into the cell."""
    atoms = mc2d_atoms(entry)
    atoms.wrap(pbc=(True, True, True))
    return from_ase(atoms)


def read_mc2d_json(path: str | Path, source: str | None = None) -> Iterator[ReadOutcome]:
    """MC2D entries (exfoliable from experimentally known 3D parents): every one has ``synth_label`` 1."""
    path = Path(path)
    source = source or path.stem
    try:
        entries = load_mc2d_entries(path)
    except Exception as exc:
        yield ReadOutcome(
            rejection=Rejection(source, path.name, "unreadable_file", f"{type(exc).__name__}: {exc}"[:300])
        )
        return
    for k, entry in enumerate(entries):
        rid = (
            str(entry.get("structure_label") or entry.get("db_id") or f"entry-{k}")
            if isinstance(entry, dict)
            else f"entry-{k}"
        )
        try:
            s = mc2d_entry_to_structure(entry)
        except Exception as exc:
            yield ReadOutcome(rejection=Rejection(source, rid, "unreadable_row", f"{type(exc).__name__}: {exc}"[:300]))
            continue
        labels = _label_block(None, None, 1, reference="MC2D: exfoliable from an experimentally known 3D parent")
        props = {
            k2: entry.get(k2)
            for k2 in (
                "formula",
                "spg",
                "prototype",
                "band_gap",
                "magnetic_state",
                "source_db",
                "db_id",
                "be_df2",
                "be_rvv10",
            )
            if k2 in entry
        }
        yield ReadOutcome(record=MonolayerRecord(s, source, rid, labels, props))


# ----------------------------------------------------------------------------------------------
# folders of files


def is_structure_file(p: Path) -> bool:
    return p.is_file() and (p.suffix.lower() in STRUCTURE_SUFFIXES or p.name.upper().startswith(STRUCTURE_NAMES))


def read_labels_csv(path: str | Path) -> dict[str, dict[str, Any]]:
    """Labels by file name (or stem) from a CSV with a ``file``/``filename``/``id`` column.

    Raises
    ------
    ValueError
        ``bad_labels_csv`` when the key column or every label column is missing.
    """
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        key = next((c for c in ("file", "filename", "id", "name") if c in cols), None)
        if key is None or not any(c in cols for c in LABEL_COLUMNS):
            raise ValueError(f"bad_labels_csv: columns {cols}; need one of file/filename/id and one of {LABEL_COLUMNS}")
        out = {}
        for row in reader:
            row = {k.strip(): v for k, v in row.items() if k}
            out[str(row[key]).strip()] = _label_block(
                row.get("e_hull"), row.get("dg_h"), row.get("synth_label"), reference=f"labels CSV {Path(path).name}"
            )
        return out


def read_folder(
    path: str | Path, labels_csv: str | Path | None = None, source: str | None = None
) -> Iterator[ReadOutcome]:
    """Structure files in a folder (CIF, POSCAR/CONTCAR, .vasp, extxyz/xyz, pymatgen JSON), sorted by name."""
    path = Path(path)
    source = source or path.name
    labels: dict[str, dict[str, Any]] = {}
    if labels_csv is None and (path / "labels.csv").is_file():
        labels_csv = path / "labels.csv"
    if labels_csv is not None:
        try:
            labels = read_labels_csv(labels_csv)
        except Exception as exc:
            yield ReadOutcome(rejection=Rejection(source, Path(labels_csv).name, "bad_labels_csv", str(exc)[:300]))
    for p in sorted(path.iterdir()):
        if not is_structure_file(p):
            continue
        yield read_file(p, source, labels.get(p.name) or labels.get(p.stem))


def read_file(path: str | Path, source: str | None = None, labels: dict[str, Any] | None = None) -> ReadOutcome:
    path = Path(path)
    source = source or path.parent.name
    try:
        s = load_structure(path)
    except StructureError as exc:
        return ReadOutcome(rejection=Rejection(source, path.name, exc.reason, exc.message))
    return ReadOutcome(record=MonolayerRecord(s, source, path.name, labels or _label_block(), {}))


def read_any(
    path: str | Path, source: str | None = None, labels_csv: str | Path | None = None
) -> Iterator[ReadOutcome]:
    """Dispatch on what ``path`` is: a paddle2d CSV or folder, a POSCAR tarball, a folder, an ASE db,
    an MC2D JSON list, or one structure file."""
    path = Path(path)
    if is_paddle2d(path):
        yield from read_paddle2d(path, source)
    elif is_poscar_tarball(path):
        yield from read_poscar_tgz(path, source)
    elif path.is_dir():
        yield from read_folder(path, labels_csv, source)
    elif path.suffix.lower() == ".db":
        yield from read_ase_db(path, source)
    elif path.suffix.lower() == ".json" and _looks_like_mc2d(path):
        yield from read_mc2d_json(path, source)
    elif path.exists():
        yield read_file(path, source)
    else:
        yield ReadOutcome(
            rejection=Rejection(source or "", path.name, "unreadable_file", f"{path}: no such file or folder")
        )


def _looks_like_mc2d(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4096).decode("utf-8", "ignore")
    return head.lstrip().startswith("[") and "atomic_positions" in head


# ----------------------------------------------------------------------------------------------
# 2DMatPedia POSCAR tarball (unlabelled supercells) and PaddleMaterial's 2D CSVs (DFT E_hull)


def read_poscar_tgz(
    path: str | Path,
    source: str | None = None,
    limit: int | None = None,
    primitive_tolerance: float = 0.25,
    members: Collection[str] | None = None,
) -> Iterator[ReadOutcome]:
    """Every POSCAR member of a tarball (``2dmatpedia_all_poscars.tgz``), read straight from the archive.

    Each member is reduced to its primitive cell (pymatgen ``Structure.get_primitive_structure``: the
    2DMatPedia files are supercells of 2 to 261 atoms) and put in the gen2d frame (:func:`orient_2d`).
    The set carries no labels. A member that fails is a named rejection (``unreadable_file``,
    ``no_primitive_cell``) and the others still come; ``limit`` stops after that many members, and ``members``
    (file names such as ``POSCAR-Mo16S32``) reads only those.
    """
    import tarfile
    import warnings

    from pymatgen.io.vasp import Poscar

    from gen2d.structures import orient_2d

    path = Path(path)
    source = source or "2dmatpedia_poscar"
    try:
        archive = tarfile.open(path, "r:*")
    except Exception as exc:
        yield ReadOutcome(rejection=Rejection(source, path.name, "unreadable_file", f"{type(exc).__name__}: {exc}"))
        return
    n = 0
    with archive:
        for member in archive:
            if not member.isfile() or not Path(member.name).name.upper().startswith(STRUCTURE_NAMES):
                continue
            if members is not None and Path(member.name).name not in members:
                continue
            if limit is not None and n >= limit:
                return
            n += 1
            rid = Path(member.name).name
            try:
                fh = archive.extractfile(member)
                text = fh.read().decode("utf-8", "replace") if fh is not None else ""
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cell = Poscar.from_str(text).structure
            except Exception as exc:
                yield ReadOutcome(
                    rejection=Rejection(source, rid, "unreadable_file", f"{type(exc).__name__}: {exc}"[:300])
                )
                continue
            try:
                prim = cell.get_primitive_structure(tolerance=primitive_tolerance)
                structure = orient_2d(prim)
            except Exception as exc:
                yield ReadOutcome(
                    rejection=Rejection(source, rid, "no_primitive_cell", f"{type(exc).__name__}: {exc}"[:300])
                )
                continue
            labels = _label_block(reference="2DMatPedia POSCAR set: no labels")
            props = {"formula": structure.composition.reduced_formula, "supercell_sites": len(cell)}
            yield ReadOutcome(record=MonolayerRecord(structure, source, rid, labels, props))


#: E_hull below this (eV/atom) is not a physical energy above the hull: 9 paddle2d rows reach -1775
PADDLE2D_MIN_E_HULL = -1.0


def paddle2d_csv_files(path: str | Path) -> list[Path]:
    """The CSVs of a paddle2d folder (sorted), or ``[path]`` for one CSV."""
    path = Path(path)
    return sorted(p for p in path.glob("*.csv") if p.is_file()) if path.is_dir() else [path]


def read_paddle2d(path: str | Path, source: str | None = None, limit: int | None = None) -> Iterator[ReadOutcome]:
    """PaddleMaterial's 2D monolayers (``paddle2d/val.csv``, ``test.csv`` or their folder).

    Columns ``material_id, energy, cif, ehull, formula``; the ``cif`` column (a whole CIF, c = 30 Å,
    some cells with alpha/beta != 90) is parsed with pymatgen and put in the gen2d frame. ``ehull``
    (eV/atom, DFT energy above the hull) becomes the ``e_hull`` label; rows with E_hull below
    :data:`PADDLE2D_MIN_E_HULL` are rejected as ``impossible_e_hull``. ``limit`` counts rows per source.
    """
    import warnings

    from pymatgen.io.cif import CifParser

    from gen2d.structures import orient_2d

    path = Path(path)
    source = source or "paddle2d"
    csv.field_size_limit(10**9)  # a whole CIF per cell
    n = 0
    for csv_path in paddle2d_csv_files(path):
        try:
            fh = open(csv_path, newline="")
        except OSError as exc:
            yield ReadOutcome(rejection=Rejection(source, csv_path.name, "unreadable_file", str(exc)[:300]))
            continue
        with fh:
            reader = csv.DictReader(fh)
            if not {"cif", "ehull"} <= set(reader.fieldnames or []):
                yield ReadOutcome(
                    rejection=Rejection(
                        source, csv_path.name, "unreadable_file", f"columns {reader.fieldnames}: need cif and ehull"
                    )
                )
                continue
            for k, row in enumerate(reader):
                if limit is not None and n >= limit:
                    return
                n += 1
                rid = str(row.get("material_id") or f"{csv_path.stem}-{k}")
                e_hull = _finite(row.get("ehull"))
                if e_hull is not None and e_hull < PADDLE2D_MIN_E_HULL:
                    yield ReadOutcome(
                        rejection=Rejection(source, rid, "impossible_e_hull", f"ehull {e_hull:g} eV/atom")
                    )
                    continue
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        parsed = CifParser.from_str(row["cif"]).parse_structures(primitive=False)
                    structure = orient_2d(parsed[0])
                except Exception as exc:
                    yield ReadOutcome(
                        rejection=Rejection(source, rid, "unreadable_row", f"{type(exc).__name__}: {exc}"[:300])
                    )
                    continue
                labels = _label_block(e_hull, reference="PaddleMaterial 2D set (DFT), energy above the hull")
                props = {
                    "formula": row.get("formula"),
                    "energy_per_atom": _finite(row.get("energy")),
                    "split": csv_path.stem,
                }
                yield ReadOutcome(record=MonolayerRecord(structure, source, rid, labels, props))


def is_poscar_tarball(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((".tgz", ".tar.gz", ".tar"))


def is_paddle2d(path: Path) -> bool:
    """A CSV with ``cif`` and ``ehull`` columns, or a folder of them."""
    files = paddle2d_csv_files(path) if path.exists() else []
    if not files or not all(p.suffix.lower() == ".csv" for p in files):
        return False
    with open(files[0], newline="") as fh:
        header = fh.readline()
    cols = {c.strip() for c in header.split(",")}
    return {"cif", "ehull"} <= cols
