#!/usr/bin/env python
"""Build gen2d's own DFT ΔG_H reference set: ``dgh.dft`` (CP2K) on well-studied monolayers, one row each.

Each material is built from gen2d's prototype templates (or ASE's builders), relaxed with CHGNet, its H
sites found and relaxed with CHGNet (``dgh.mlip``), and then the best sites are refined with CP2K at one
consistent setting (``gen2d_cp2k.Cp2kSettings`` defaults unless ``--cp2k`` overrides them). Rows are
upserted by material into ``--out`` (JSON lines) as each finishes; the CP2K work directories are a
resumable cache, so a killed build restarts where it stopped and the set can grow over several runs.

Usage (hours of CPU: run it niced in the background, one thread per CP2K process):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/build_dgh_dft_reference.py \\
        --materials MoS2-2H graphene --workdir ~/.cache/gen2d/dft-reference
    .venv/bin/python scripts/build_dgh_dft_reference.py --list
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from gen2d.fileio import read_jsonl, write_jsonl_atomic, write_text_atomic

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "gen2d" / "assets" / "dgh_dft_reference" / "rows.jsonl"


@functools.cache
def literature_rows() -> tuple[dict, ...]:
    """The rows of ``gen2d/assets/dgh_reference.csv`` (published DFT ΔG_H), comment lines left out."""
    import csv
    import io
    from importlib import resources

    text = resources.files("gen2d.assets").joinpath("dgh_reference.csv").read_text()
    lines = (line for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return tuple(csv.DictReader(io.StringIO("\n".join(lines))))


def _site1_mxenes() -> dict[str, dict]:
    """The MXene rows of dgh_reference.csv: one dataset's "site 1", H over the outer metal, i.e. in a hollow of the
    termination layer; the starting cell is the row's own builder (``mxene(M2XT2,a=...)``), as
    bench_her_fidelity.py builds it."""
    out = {}
    for row in literature_rows():
        found = re.match(r"mxene\(([A-Z][a-z]?)2([A-Z][a-z]?)([A-Z][a-z]?)2,a=([\d.]+)\)", row["builder"])
        if found and row["material"].endswith("(site 1)"):
            m, x, t, a = found.groups()
            out[f"{m}2{x}{t}2-site1"] = {
                "mxene": (m, x, t, float(a)),
                "literature": row["material"],
                "site_kinds": ["hollow"],
            }
    return out


#: name -> (how to build it, published DFT ΔG_H in eV if a sourced value exists in dgh_reference.csv)
MATERIALS: dict[str, dict] = {
    "MoS2-2H": {"template": "MoS2-2H", "literature": "2H-MoS2 basal plane"},
    "graphene": {"template": "graphene", "literature": "graphene basal plane"},
    "hBN": {"template": "hBN"},
    "WS2-2H": {"template": "WS2-2H"},
    "MoSe2-2H": {"template": "MoSe2-2H"},
    "WSe2-2H": {"template": "WSe2-2H"},
    "MoTe2-2H": {"template": "MoTe2-2H"},
    "NbSe2-2H": {"template": "NbSe2-2H"},
    "TaS2-2H": {"template": "TaS2-2H"},
    "NbS2-2H": {"ase_mx2": ("NbS2", "2H", 3.33)},
    "MoS2-1T": {"ase_mx2": ("MoS2", "1T", 3.19), "literature": "1T-MoS2 basal plane"},
    # the distorted (1T′, P2₁/m) phase 1T-MoS₂ relaxes to: 2DMatPedia's layer, member POSCAR-Mo16S32 of
    # 2dmatpedia_all_poscars.tgz (a 48-atom supercell of the 6-atom cell)
    "MoS2-1Tprime": {"matpedia_poscar": ("POSCAR-Mo16S32", "MoS2", "P2_1/m")},
    "VS2-1T": {"ase_mx2": ("VS2", "1T", 3.17)},
    "PtSe2-1T": {"template": "PtSe2-1T"},
    "PtS2-1T": {"template": "PtS2-1T"},
    "TiS2-1T": {"template": "TiS2-1T"},
    "phosphorene": {"template": "phosphorene"},
    "blue-phosphorene": {"buckled": ("P", 3.314, 1.24), "literature": "blue phosphorene basal plane"},
    "Ti2CO2": {"template": "Ti2CO2", "literature": "Ti2CO2 MXene"},
    "Ti3C2O2": {"template": "Ti3C2O2"},
    "Mo2CO2": {"mxene": ("Mo", "C", "O", 2.90)},
    **_site1_mxenes(),
    "GaS": {"template": "GaS"},
    "InSe": {"template": "InSe"},
    "SnS2-1T": {"template": "SnS2-1T"},
}


def build_structure(spec: dict):
    """The starting monolayer (a pymatgen Structure, oriented) of one MATERIALS entry."""
    from ase import Atoms
    from ase.build import mx2

    from gen2d.data.templates import build_template
    from gen2d.structures import from_ase, orient_2d

    if "template" in spec:
        return orient_2d(build_template(spec["template"]))
    if "matpedia_poscar" in spec:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        from gen2d.data.readers import data_dir, read_poscar_tgz

        member, formula, space_group = spec["matpedia_poscar"]
        tarball = data_dir() / "2dmatpedia_all_poscars.tgz"
        (outcome,) = list(read_poscar_tgz(tarball, members={member})) or [None]
        if outcome is None or outcome.record is None:
            why = "not in the archive" if outcome is None else outcome.rejection.reason
            raise ValueError(f"{member} of {tarball}: {why}")
        structure = outcome.record.structure
        found = SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_symbol()
        if structure.composition.reduced_formula != formula or found != space_group:
            raise ValueError(f"{member} of {tarball} is {structure.composition.reduced_formula} {found}")
        return structure
    if "ase_mx2" in spec:
        formula, kind, a = spec["ase_mx2"]
        atoms = mx2(formula, kind=kind, a=a, thickness=3.13, vacuum=9.0)
    elif "buckled" in spec:
        element, a, dz = spec["buckled"]
        cell = [[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, 20.0]]
        cart = [
            np.array([f0, f1, 0]) @ np.array(cell) + [0, 0, 10.0 + z] for f0, f1, z in ((0, 0, 0), (1 / 3, 2 / 3, dz))
        ]
        atoms = Atoms(element * 2, positions=cart, cell=cell)
    elif "mxene" in spec:
        m, x, t, a = spec["mxene"]
        cell = [[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, 22.0]]
        frac = [(0, 0, 0), (1 / 3, 2 / 3, 1.15), (2 / 3, 1 / 3, -1.15), (2 / 3, 1 / 3, 2.10), (1 / 3, 2 / 3, -2.10)]
        cart = [np.array([f0, f1, 0]) @ np.array(cell) + [0, 0, 11.0 + z] for f0, f1, z in frac]
        atoms = Atoms([x, m, m, t, t], positions=cart, cell=cell)
    else:
        raise ValueError(f"no builder in {spec}")
    atoms.pbc = (True, True, False)
    return orient_2d(from_ase(atoms))


def literature_value(label: str | None) -> dict | None:
    """The dgh_reference.csv row of this material (published ΔG_H), if the table has one."""
    for row in literature_rows() if label else ():
        if row["material"] == label:
            return {
                "dg_h_eV": float(row["dg_h_eV"]),
                "precision_eV": float(row["dg_h_precision_eV"]),
                "site": row["site"],
                "doi": row["doi"],
            }
    return None


#: refine settings a stored row may hold more of than asked: the skip rule checks them itself (a row without spin
#: starts or vibrations that are asked for is computed again; one that has them serves a request without)
_ADDITIVE_REFINE = frozenset({"spin_starts", "vibrations"})


def refine_differences(row: dict, wanted: dict) -> dict[str, tuple]:
    """The refine settings (``RefineSettings.as_dict``) in which a stored row differs from ``wanted``, as
    {name: (stored, wanted)}: a row is kept and reused under other settings, so the build says which. Settings a
    row may hold more of (:data:`_ADDITIVE_REFINE`) are left out."""
    stored = ((row.get("provenance") or {}).get("settings") or {}).get("refine") or {}
    keys = (set(stored) | set(wanted)) - _ADDITIVE_REFINE
    out = {k: (stored.get(k), wanted.get(k)) for k in sorted(keys) if stored.get(k) != wanted.get(k)}
    missing = sorted(set(wanted.get("spin_starts") or ()) - set(stored.get("spin_starts") or ()))
    if missing:  # a start asked for that the row's refinement did not make
        out["spin_starts"] = (stored.get("spin_starts"), wanted.get("spin_starts"))
    return out


def row_digest(row: dict) -> str:
    """SHA-256 of one row's content (its JSON with sorted keys): what a measurement on that row records, so that
    new rows from the queue leave it standing and a changed row does not."""
    return hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()


def read_rows(path: Path) -> dict[str, dict]:
    # written whole (write_rows): a line that does not parse is damage, never a row to drop on the next write
    return {row["material"]: row for row in read_jsonl(path, strict=True)}


def write_rows(path: Path, rows: dict[str, dict]) -> None:
    """Rewrite the JSON-lines file atomically, rows sorted by material (an idempotent upsert)."""
    write_jsonl_atomic(path, (rows[k] for k in sorted(rows)), sort_keys=True)


def upsert_row(path: Path, row: dict) -> dict[str, dict]:
    """Store one row, re-reading the file under a lock first, so that builders running side by side on other
    materials do not drop each other's rows; returns every row now stored."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = read_rows(path)
        rows[row["material"]] = row
        write_rows(path, rows)
    return rows


def write_manifest(path: Path, rows: dict[str, dict], argv: list[str]) -> None:
    """MANIFEST.json beside the rows: what the set is, how it was made, and with which settings."""
    import datetime
    import hashlib

    from gen2d_cp2k import cp2k_version_cached

    hashes = sorted({r["provenance"]["settings"]["cp2k_settings_hash"] for r in rows.values()})
    any_row = next(iter(rows.values()), None)
    manifest = {
        "name": "gen2d DFT ΔG_H reference set",
        "what": "dgh.dft (CP2K) ΔG_H of H on the basal planes of well-studied monolayers, one consistent setting",
        "rows_file": path.name,
        "rows_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "n_rows": len(rows),
        "n_ok": sum(1 for r in rows.values() if r.get("ok")),
        "materials": sorted(rows),
        "command": "scripts/build_dgh_dft_reference.py " + " ".join(argv),
        "command_is": "the last builder that wrote this file; each row's own is its built_by.command",
        "row_commands": {m: (r.get("built_by") or {}).get("command") for m, r in sorted(rows.items())},
        "cp2k_version": cp2k_version_cached(),
        "cp2k_settings_hashes": hashes,
        "cp2k_settings": any_row["provenance"]["settings"]["cp2k"] if any_row else None,
        # the DFT settings are one for the set; the relaxation protocol is each row's own
        "refine_by_row": {m: (r["provenance"]["settings"].get("refine") or None) for m, r in sorted(rows.items())},
        "mlip_stage": "dgh.mlip with CHGNet 0.3.0 (slab relaxation and H sites)",
        "structures": "gen2d.data.templates prototypes (and ASE builders for NbS2, 1T-MoS2, VS2, blue phosphorene, Mo2CO2; 1T′-MoS2 from the 2DMatPedia POSCAR set)",
        "units": {"dg_h_eV": "eV", "e_slab_eV": "eV", "e_h2_eV": "eV", "geometry.positions": "Å", "wall_seconds": "s"},
        "updated": datetime.date.today().isoformat(),
    }
    # keys sorted, so that the file changes only where the set does, whichever row is read first
    text = json.dumps(manifest, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    write_text_atomic(path.parent / "MANIFEST.json", text)


def run_material(name: str, spec: dict, scorer, mlip_scorer) -> dict:
    """One reference row: MLIP stage, DFT refinement, energies, timing and provenance."""
    structure = build_structure(spec)
    t0 = time.perf_counter()
    mlip = mlip_scorer.score_one(structure)
    t_mlip = time.perf_counter() - t0
    ctx = {"dg_h": mlip} if mlip.ok else None
    dft = scorer.score_one(structure, ctx)
    best = dft.extra.get("best_site")
    mlip_sites = {(s["face"], s["kind"], s["nearest_atom"]): s for s in mlip.extra.get("sites", [])}
    row = {
        "material": name,
        "formula": structure.composition.reduced_formula,
        "structure": (mlip.relaxed() or structure).as_dict(),
        "ok": dft.ok,
        "failure": None if dft.ok else dft.failure.model_dump(),
        "dg_h_eV": dft.value,
        "unit": "eV",
        "best_site": best,
        "sites": dft.extra.get("sites", []),
        "supercell": dft.extra.get("supercell"),
        "n_slab_atoms": dft.extra.get("n_slab_atoms"),
        "e_slab_eV": dft.extra.get("e_slab_eV"),
        "e_h2_eV": dft.extra.get("e_h2_eV"),
        "h2_bond_length_A": dft.extra.get("h2_bond_length_A"),
        "mlip": {
            "model": mlip.provenance.model,
            "dg_h_eV": mlip.value,
            "ok": mlip.ok,
            "wall_seconds": round(t_mlip, 1),
            "dg_h_same_site_eV": _mlip_same_site(best, mlip_sites),
        },
        "provenance": dft.provenance.model_dump(mode="json"),
        "wall_seconds": dft.extra.get("wall_seconds"),
        "literature": literature_value(spec.get("literature")),
        "built_from": {k: v for k, v in spec.items() if k != "literature"},
        "geometry": best_site_geometry(best),
    }
    return row


def _mlip_same_site(best: dict | None, mlip_sites: dict) -> float | None:
    """The MLIP's ΔG_H (eV) of the site the best DFT site started from: carried by the refined site itself
    (``start_delta_g_h``); for sites refined before it was, the MLIP site of the same face, kind and nearest
    element, which is ambiguous where two such sites exist (the two O-nearest hollows of an MXene)."""
    if not best:
        return None
    if best.get("start_delta_g_h") is not None:
        return best["start_delta_g_h"]
    return (mlip_sites.get((best["face"], best["kind"], best["nearest_atom"])) or {}).get("delta_g_h")


def best_site_geometry(best: dict | None) -> dict | None:
    """The DFT-relaxed slab+H of the best site and its slab reference (cell, numbers, positions in Å), so that
    other calculators can be compared on exactly these geometries (scripts/bench_her_fidelity.py)."""
    if not best or not best.get("run_dir"):
        return None
    site_dir = Path(best["run_dir"])
    site = json.loads((site_dir / "result.json").read_text())
    from ase.io import read

    first = read(str(site_dir / "relax.traj"), index=0)
    out = {
        "cell": first.cell.array.tolist(),
        "numbers": first.numbers.tolist(),
        "positions": site["positions"],
        "h_index": len(first) - 1,
        "unit": "Å",
    }
    out["slab_positions"] = _slab_reference_positions(site_dir, first)
    return out


def refresh_geometry(path: Path) -> list[str]:
    """Rebuild every stored row's ``geometry`` from its best site's run directory (relative paths from the current
    folder, as the rows store them); returns the materials whose geometry changed."""
    rows = read_rows(path)
    changed = []
    for name, row in rows.items():
        if not row.get("geometry"):
            continue
        fresh = best_site_geometry(row.get("best_site"))
        if fresh != row["geometry"]:
            row["geometry"] = fresh
            changed.append(name)
    if changed:
        write_rows(path, rows)
    return changed


def _slab_reference_positions(site_dir: Path, first) -> list:
    """Positions (Å) of the bare slab whose DFT energy is the row's E(slab): the relaxed slab of the site where
    there is one (``relax_slab_reference``), else the slab single point at the MLIP geometry (``slab/frame.traj``).
    The site's frame 0 less its H is that slab only for a clean-slab start; an MLIP-prepared start
    (``-pre-<mlip>``) has moved the atoms around H."""
    from ase.io import read

    ref_dir = site_dir.parent / site_dir.name.replace("site_", "slab_site_")
    if (ref_dir / "result.json").is_file() and (ref_dir / "relax.traj").is_file():
        return read(str(ref_dir / "relax.traj"), index=-1).positions.tolist()
    single = site_dir.parent / "slab" / "frame.traj"
    if single.is_file():
        slab = read(str(single), index=-1)
        if len(slab) != len(first) - 1:
            raise ValueError(f"{single} holds {len(slab)} atoms, the site {len(first) - 1} besides its H")
        return slab.positions.tolist()
    if "-pre-" in site_dir.name:
        raise FileNotFoundError(
            f"{single} is missing and {site_dir.name} started from an MLIP-prepared slab+H: the bare slab's "
            "geometry is not in the site's frames"
        )
    return first.positions[:-1].tolist()  # a clean-slab start: frame 0 is the bare slab plus H


def _holds_k(row: dict) -> str:
    """ "yes"/"no" when the row's DFT supercell at Γ holds the hexagonal K point, "—" for other lattices."""
    from pymatgen.core import Structure

    from gen2d.adsorption import gamma_samples_k
    from gen2d.structures import orient_2d

    if not row.get("supercell") or not row.get("structure"):
        return "—"
    holds = gamma_samples_k(orient_2d(Structure.from_dict(row["structure"])).lattice, tuple(row["supercell"]))
    return "—" if holds is None else ("yes" if holds else "no")


def desorbed_value(row: dict) -> float | None:
    """The lowest ΔG_H (eV) of a failed row's sites whose only fault is that H left the layer (``h_desorbed``):
    no catalyst, but the same physics as a published "barely binds" value of about +2.4 eV, so the table shows it
    beside that value. None for any other failure."""
    from gen2d.adsorption import WARNING_FLAGS

    values = [
        s["delta_g_h"]
        for s in row.get("sites") or []
        if s.get("delta_g_h") is not None
        and "h_desorbed" in s.get("flags", ())
        and not set(s["flags"]) - WARNING_FLAGS - {"h_desorbed"}
    ]
    return min(values) if values else None


def _cp2k_hours(row: dict) -> float | None:
    """CP2K wall time of a row in hours, summed over every process that worked on it (slab, sites, checks and
    vibrations, from the runs' cost ledgers); the row's own ``wall_seconds`` is the last process's only."""
    cost = ((row.get("provenance") or {}).get("settings") or {}).get("cost") or {}
    seconds = cost.get("wall_seconds")
    return None if seconds is None else float(seconds) / 3600


def markdown_table(rows: dict[str, dict]) -> str:
    """The reference rows as the Markdown table of the docs (one line per material)."""
    head = (
        "| material | site (H on) | coverage | DFT ΔG_H (eV) | CHGNet, same site (eV) | published (eV) | "
        "DFT cells | Γ holds K | start, fmax (eV/Å) | CP2K wall (h) | settings | own ΔZPE − TΔS (eV) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name in sorted(rows):
        r = rows[name]
        best = r.get("best_site") or {}
        lit = r.get("literature") or {}
        fmt = lambda v, p="+.2f": "—" if v is None else format(v, p)  # noqa: E731
        if r.get("ok"):
            value = fmt(r.get("dg_h_eV"))
        elif (desorbed := desorbed_value(r)) is not None:
            value = f"{desorbed:+.2f} (H desorbed)"
        else:
            value = f"failed: {(r.get('failure') or {}).get('reason')}"
        refine = r["provenance"]["settings"].get("refine") or {}
        protocol = f"{refine.get('prerelax') or 'clean slab'}, {refine.get('fmax', '—'):g}" if refine else "—"
        lines.append(
            f"| {name} | {best.get('kind', '—')} ({best.get('nearest_atom', '—')}) | {fmt(best.get('coverage'), '.3f')} | "
            f"{value} | {fmt((r.get('mlip') or {}).get('dg_h_same_site_eV'))} | "
            f"{fmt(lit.get('dg_h_eV')) + ' ± ' + format(lit['precision_eV'], '.2f') if lit else '—'} | "
            f"{'×'.join(str(x) for x in r.get('supercell') or [])} | {_holds_k(r)} | {protocol} | "
            f"{fmt(_cp2k_hours(r), '.2f')} | "
            f"{r['provenance']['settings']['cp2k_settings_hash']} | "
            f"{fmt((best.get('vibrations') or {}).get('dg_correction_eV'), '.3f')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    # the relaxation protocol's defaults are dgh.dft's own, so that a row is what the scorer computes for a candidate
    from gen2d_dgh_dft import DFT_PROTOCOL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--materials", nargs="*", default=None, help="names from --list (default: all)")
    parser.add_argument("--list", action="store_true", help="print the materials and exit")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "gen2d" / "dft-reference")
    parser.add_argument(
        "--threads", type=int, default=None, help="OpenMP threads of each CP2K process (default GEN2D_CP2K_THREADS, 1)"
    )
    parser.add_argument(
        "--cp2k", type=json.loads, default={}, help="Cp2kSettings overrides as JSON, e.g. '{\"cutoff_ry\": 500}'"
    )
    parser.add_argument("--n-sites", type=int, default=1, help="DFT sites per material (the MLIP's most stable first)")
    parser.add_argument(
        "--site-kinds",
        nargs="*",
        default=None,
        help="H site kinds of the MLIP stage, e.g. ontop (default: dgh.mlip's: ontop bridge hollow); "
        "recorded in each row. A material whose published value names its site (the MXene 'site 1' rows: "
        "hollow) keeps its own kinds",
    )
    parser.add_argument("--min-length", type=float, default=9.0, help="DFT supercell in-plane length (Å)")
    parser.add_argument(
        "--fmax",
        type=float,
        default=DFT_PROTOCOL["fmax"],
        help="eV/Å: force criterion of the DFT relaxations (RefineSettings.fmax; default dgh.dft's, %(default)s)",
    )
    parser.add_argument(
        "--prerelax",
        default=DFT_PROTOCOL["prerelax"],
        type=lambda v: None if v.lower() == "none" else v,
        help="MLIP that relaxes each site's free atoms and gives DFT's BFGS its Hessian before the DFT relaxation "
        "(RefineSettings.prerelax; default dgh.dft's, %(default)s; 'none' starts DFT from the clean slab); "
        "recorded in each row",
    )
    parser.add_argument(
        "--free-radius",
        type=float,
        default=3.0,
        help="Å around the H start within which slab atoms relax with H (RefineSettings.free_radius); a radius "
        "larger than the cell frees the whole layer",
    )
    parser.add_argument(
        "--relax-slab-reference",
        action="store_true",
        help="relax the same free atoms of the bare slab by DFT for E(slab) (needed when the whole layer is free)",
    )
    parser.add_argument(
        "--spin-starts",
        nargs="*",
        type=float,
        default=list(DFT_PROTOCOL["spin_starts"]),
        help="initial moments on H (μB) of fresh SCF starts at each converged site (RefineSettings.spin_starts; "
        "0 is the plain atomic guess; default dgh.dft's, %(default)s; the flag with no value: no check): a lower "
        "solution takes the site over. Stored rows without the check gain it in place (their relaxations are "
        "cached)",
    )
    parser.add_argument(
        "--hold-site",
        action="store_true",
        help="keep H over its site in the plane (RefineSettings.hold_site): the ΔG_H of that site, as published "
        "per-site values are, not where H relaxes to; write these rows to their own --out (the reference set's "
        "rows are free relaxations)",
    )
    parser.add_argument(
        "--vibrations",
        action="store_true",
        help="also compute each site's ΔZPE − TΔS from H*'s and H₂'s harmonic frequencies (RefineSettings."
        "vibrations; 7 single points per site, 13 once for H₂); stored rows gain it in place",
    )
    parser.add_argument(
        "--fold-k",
        action="store_true",
        help="hexagonal supercells in multiples of 3, so that Γ holds K and K′ (RefineSettings.fold_k; graphene and "
        "h-BN 6×6); a material whose supercell it does not change keeps its run. A row already stored is rebuilt "
        "only with --redo",
    )
    parser.add_argument(
        "--scf-jump-check",
        action=argparse.BooleanOptionalAction,
        default=DFT_PROTOCOL["scf_jump_check"],
        help="recompute from a fresh start a relaxation step whose energy rose while its forces say it went downhill "
        "(RefineSettings.scf_jump_check; default dgh.dft's, %(default)s)",
    )
    parser.add_argument("--redo", action="store_true", help="recompute rows already in --out")
    parser.add_argument("--table", action="store_true", help="print the stored rows as a Markdown table and exit")
    parser.add_argument(
        "--refresh-geometry",
        action="store_true",
        help="rewrite the stored rows' geometry (the DFT slab+H and slab the fidelity benchmark evaluates) from their "
        "run directories, computing nothing, and exit",
    )
    args = parser.parse_args(argv)
    if args.refresh_geometry:
        changed = refresh_geometry(args.out)
        print(f"{len(changed)} rows with a changed geometry: {', '.join(changed) or 'none'}")
        manifest = args.out.parent / "MANIFEST.json"
        recorded = json.loads(manifest.read_text()).get("rows_sha256") if manifest.is_file() else None
        if recorded != hashlib.sha256(args.out.read_bytes()).hexdigest():
            write_manifest(args.out, read_rows(args.out), sys.argv[1:] if argv is None else list(argv))
        return 0
    if args.list:
        for name, spec in MATERIALS.items():
            print(name, json.dumps(spec))
        return 0
    if args.table:
        print(markdown_table(read_rows(args.out)))
        return 0
    from gen2d.scoring import get_scorer

    names = args.materials or list(MATERIALS)
    unknown = [n for n in names if n not in MATERIALS]
    if unknown:
        parser.error(f"unknown materials {unknown}; see --list")
    dft_options = dict(
        cp2k=args.cp2k,
        threads=args.threads,
        workdir=str(args.workdir),
        n_sites=args.n_sites,
        min_inplane_length=args.min_length,
        fmax=args.fmax,
        prerelax=args.prerelax,
        free_radius=args.free_radius,
        relax_slab_reference=args.relax_slab_reference,
        spin_starts=args.spin_starts,
        hold_site=args.hold_site,
        vibrations=args.vibrations,
        fold_k=args.fold_k,
        scf_jump_check=args.scf_jump_check,
    )
    if args.hold_site and args.out.resolve() == DEFAULT_OUT.resolve():
        parser.error("--hold-site rows are not free relaxations: give them their own --out")
    scorers: dict[tuple, tuple] = {}

    def scorers_for(spec: dict) -> tuple:
        """(dgh.dft, dgh.mlip) for a material: a literature row's own site kinds (the published site) win over
        --site-kinds, which is every other row's."""
        kinds = spec.get("site_kinds") or args.site_kinds
        key = tuple(kinds or ())
        if key not in scorers:
            site_options = {"site_kinds": list(kinds)} if kinds else {}
            scorers[key] = (
                get_scorer("dgh.dft", **site_options, **dft_options),
                get_scorer("dgh.mlip", calculator="chgnet", **site_options),
            )
        return scorers[key]

    rows = read_rows(args.out)
    for name in names:
        # a stored failure is tried again: every finished part is cached, so a physical failure (SCF, geometry)
        # comes back at once, and one from a crashed or killed process gets its run
        if (
            name in rows
            and not args.redo
            and rows[name].get("ok")
            and rows[name].get("provenance", {}).get("settings", {}).get("cp2k_settings_hash")
            == scorers_for(MATERIALS[name])[0].cp2k.settings_hash()
            and (not args.spin_starts or (rows[name].get("best_site") or {}).get("spin_starts"))
            and (not args.vibrations or (rows[name].get("best_site") or {}).get("vibrations"))
        ):
            differs = refine_differences(rows[name], scorers_for(MATERIALS[name])[0].refine.as_dict())
            if differs:
                print(
                    f"{name}: stored under other refine settings ("
                    + ", ".join(f"{k} {a!r} there, {b!r} asked" for k, (a, b) in differs.items())
                    + "); kept, --redo rebuilds it with these",
                    flush=True,
                )
            else:
                print(f"{name}: stored", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            row = run_material(name, MATERIALS[name], *scorers_for(MATERIALS[name]))
        except Exception as exc:  # noqa: BLE001 - one material never stops the build
            print(f"{name}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        command = "scripts/build_dgh_dft_reference.py " + " ".join(sys.argv[1:] if argv is None else list(argv))
        row["built_by"] = {"command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        rows = upsert_row(args.out, row)
        write_manifest(args.out, rows, sys.argv[1:] if argv is None else list(argv))
        print(
            f"{name}: ok={row['ok']} dG_H={row['dg_h_eV']} eV "
            f"(MLIP {row['mlip']['dg_h_eV']}) wall {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    if rows and args.out.is_file():
        write_manifest(args.out, rows, sys.argv[1:] if argv is None else list(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
