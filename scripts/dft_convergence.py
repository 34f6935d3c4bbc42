#!/usr/bin/env python
"""Convergence of the DFT H adsorption energy with CP2K settings: cutoff, basis, vacuum, k-points, supercell.

At one fixed geometry (a prototype monolayer from ``scripts/build_dgh_dft_reference.py``, H placed on top of
a top-face atom at ``--h-height``), each point computes

    ΔE_H = E(slab+H) − E(slab) − ½ E(H₂)

with H₂ relaxed by the same settings (``gen2d.adsorption.h2_reference_dft``), changing one setting at a time
from ``gen2d_cp2k.Cp2kSettings`` defaults (400/50 Ry, DZVP-MOLOPT-SR, 15 Å vacuum, Γ) on an ``--base-cell``
supercell. Differences in ΔE_H at fixed geometry are what a setting changes in ΔG_H (the ZPE/entropy term
is a constant). Every single point is cached under ``--workdir`` (a killed study resumes); rows go to
``--out`` (JSON lines) as they finish, with wall and CPU seconds.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/dft_convergence.py --material MoS2-2H \\
        --workdir dft-runs/convergence --out dft-runs/convergence/MoS2-2H.jsonl
    .venv/bin/python scripts/dft_convergence.py --table dft-runs/convergence/MoS2-2H.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from gen2d.fileio import append_jsonl, read_jsonl, write_json_atomic

#: (scan, label, Cp2kSettings overrides, geometry overrides); the first row is the base
POINTS: list[tuple[str, str, dict, dict]] = [
    ("base", "400/50 Ry, DZVP-MOLOPT-SR, 15 Å, Γ", {}, {}),
    # first what decides the cheaper protocol (cost drivers) and the largest physics terms ...
    ("cutoff", "300 Ry", {"cutoff_ry": 300.0}, {}),
    (
        "basis",
        "TZV2P-MOLOPT on the non-metals and H, DZVP-MOLOPT-SR on the metal",
        {"basis_overrides": {"H": "TZV2P-MOLOPT-GTH", "S": "TZV2P-MOLOPT-GTH", "Se": "TZV2P-MOLOPT-GTH"}},
        {},
    ),
    ("precision", "EPS_DEFAULT 1e-10", {"eps_default": 1e-10}, {}),
    # OT with integer occupations and a fixed multiplicity (a doublet for slab+H) instead of smearing and
    # Broyden mixing: the SCF of the open-shell H state is the cost driver of a ΔG_H on a gapped layer
    ("scf", "OT (DIIS, FULL_ALL), integer occupations", {"scf": "ot"}, {}),
    ("scf", "Broyden mixing α 0.4 (cost only)", {"mixing_alpha": 0.4}, {}),
    ("kpoints", "3×3×1 k-points", {"kpoints": (3, 3, 1)}, {}),
    ("supercell", "3×3 supercell (Γ)", {}, {"cell": 3}),
    # the reference rows' cell with a mesh: the sampling error of a 3×3 cell at Γ, at that cell's coverage
    ("kpoints", "3×3 supercell, 2×2×1 k-points", {"kpoints": (2, 2, 1)}, {"cell": 3}),
    # a Γ-centred mesh of that cell (9×9 in the primitive zone, K held), where the shifted 2×2 holds neither Γ nor K
    ("kpoints", "3×3 supercell, 3×3×1 k-points", {"kpoints": (3, 3, 1)}, {"cell": 3}),
    ("vacuum", "20 Å vacuum", {}, {"vacuum": 20.0}),
    # ... then the rest of each scan
    ("cutoff", "500 Ry", {"cutoff_ry": 500.0}, {}),
    ("rel_cutoff", "REL_CUTOFF 40 Ry", {"rel_cutoff_ry": 40.0}, {}),
    ("rel_cutoff", "REL_CUTOFF 60 Ry", {"rel_cutoff_ry": 60.0}, {}),
    ("basis", "SZV-MOLOPT-SR (all)", {"basis_set": "SZV-MOLOPT-SR-GTH", "basis_overrides": {}}, {}),
    ("kpoints", "2×2×1 k-points", {"kpoints": (2, 2, 1)}, {}),
    ("vacuum", "10 Å vacuum", {}, {"vacuum": 10.0}),
    ("cutoff", "600 Ry", {"cutoff_ry": 600.0}, {}),
    ("dispersion", "no D3 (PBE alone)", {"dispersion": None}, {}),
]


def build_geometry(material: str, cell: int, vacuum: float, h_height: float):
    """(slab, slab+H) ASE Atoms: the prototype layer repeated ``cell``×``cell``, centred in ``vacuum`` Å of
    vacuum, H ``h_height`` Å above the highest atom."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from build_dgh_dft_reference import MATERIALS, build_structure

    from gen2d.structures import to_ase

    atoms = to_ase(build_structure(MATERIALS[material])).repeat((cell, cell, 1))
    z = atoms.positions[:, 2]
    c = float(z.max() - z.min()) + vacuum
    cellm = atoms.cell.array.copy()
    cellm[2] = [0.0, 0.0, c]
    atoms.set_cell(cellm, scale_atoms=False)
    atoms.positions += [0.0, 0.0, c / 2 - (z.max() + z.min()) / 2]
    atoms.pbc = (True, True, False)
    top = int(np.argmax(atoms.positions[:, 2]))
    with_h = atoms.copy()
    with_h.append("H")
    with_h.positions[-1] = atoms.positions[top] + [0.0, 0.0, h_height]
    return atoms, with_h


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class PointFailed(RuntimeError):
    """A single point whose SCF did not converge (or CP2K aborted); cached, so a rerun does not repeat it."""

    def __init__(self, doc: dict):
        super().__init__(f"{doc['failure']} after {doc['scf_steps']} SCF steps ({doc['cpu_s']:.0f} CPU-s)")
        self.doc = doc


def single_point(atoms, settings, directory: Path, threads: int) -> dict:
    """Energy (eV) of ``atoms``, cached in ``directory/result.json``, with its wall and CPU seconds.

    An SCF that does not converge (every rung of the calculator's retry ladder) is cached as a failure, with the
    rules that named it (``gen2d.adsorption.FAILURE_RULES``), and raises :class:`PointFailed`; a failure cached
    under older rules is computed again.
    """
    from gen2d_cp2k import Cp2kAborted, ScfNotConverged, make_calculator

    from gen2d.adsorption import FAILURE_RULES

    path = directory / "result.json"
    if path.is_file():
        doc = json.loads(path.read_text())
        if not doc.get("failure"):
            return doc
        if stands(doc):
            raise PointFailed(doc)
        # a failure under older SCF rules (before the retry ladder, its annealing rung or the restart of a false
        # convergence): the current calculator may converge it, so it is computed again
        print(f"{path}: a failure under older SCF rules; computing it again", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), _children_cpu()
    calc = make_calculator(settings=settings, directory=str(directory), threads=threads)
    # the calculator's ledger (gen2d-cost.json) holds the SCF runs of an earlier failure in this directory too;
    # the point counts its own, as its wall and CPU seconds do
    n_before = len(calc.scf_steps)
    energy, failure = None, None
    try:
        probe = atoms.copy()
        probe.calc = calc
        energy = float(probe.get_potential_energy())
    except ScfNotConverged:
        failure = "scf_not_converged"
    except Cp2kAborted:
        failure = "dft_aborted"
    finally:
        scf = int(sum(calc.scf_steps[n_before:]))
        calc.close()  # the CP2K process ends here, so its CPU time is counted below
    doc = {
        "energy_eV": energy,
        "failure": failure,
        "scf_steps": scf,
        "wall_s": round(time.perf_counter() - t0, 1),
        "cpu_s": round(_children_cpu() - c0, 1),
        "n_atoms": len(atoms),
        "failure_rules": FAILURE_RULES,
    }
    write_json_atomic(path, doc)
    if failure:
        raise PointFailed(doc)
    return doc


def run_point(args, scan: str, label: str, overrides: dict, geometry: dict) -> dict:
    from gen2d_cp2k import Cp2kSettings

    from gen2d.adsorption import h2_reference_dft

    settings = Cp2kSettings(**overrides)
    cell = int(geometry.get("cell", args.base_cell))
    vacuum = float(geometry.get("vacuum", args.vacuum))
    slab, with_h = build_geometry(args.material, cell, vacuum, args.h_height)
    key = hashlib.sha256(
        f"{args.material}|{cell}|{vacuum}|{args.h_height}|{settings.settings_hash()}".encode()
    ).hexdigest()[:12]
    root = args.workdir / f"{args.material}-{key}"
    e_slab = single_point(slab, settings, root / "slab", args.threads)
    e_ads = single_point(with_h, settings, root / "slab_h", args.threads)
    h2_dir = args.workdir / f"h2-{settings.settings_hash()}"

    def make(d):
        from gen2d_cp2k import make_calculator

        return make_calculator(settings=settings, directory=d, threads=args.threads)

    e_h2, bond = h2_reference_dft(str(h2_dir), make)
    return {
        "material": args.material,
        "scan": scan,
        "label": label,
        "cp2k": overrides,
        "settings_hash": settings.settings_hash(),
        "supercell": [cell, cell],
        "vacuum_A": vacuum,
        "h_height_A": args.h_height,
        "n_slab_atoms": len(slab),
        "delta_e_h_eV": e_ads["energy_eV"] - e_slab["energy_eV"] - 0.5 * e_h2,
        "e_slab_eV": e_slab["energy_eV"],
        "e_slab_h_eV": e_ads["energy_eV"],
        "e_h2_eV": e_h2,
        "h2_bond_A": bond,
        "scf_steps": e_slab["scf_steps"] + e_ads["scf_steps"],
        "wall_s": round(e_slab["wall_s"] + e_ads["wall_s"], 1),
        "cpu_s": round(e_slab["cpu_s"] + e_ads["cpu_s"], 1),
        "unit": "eV",
    }


def table(rows: list[dict]) -> str:
    """The rows as Markdown, each ΔE_H also relative to the base point."""
    base = next((r for r in rows if r["scan"] == "base"), None)
    lines = [
        "| scan | setting | cell | ΔE_H (eV) | vs base (eV) | SCF steps | CPU (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("failure"):
            lines.append(
                f"| {r['scan']} | {r['label']} | {r['supercell'][0]}×{r['supercell'][1]} | {r['failure']} | — | "
                f"{r['scf_steps']} | {r['cpu_s']:.0f} |"
            )
            continue
        diff = "—" if base is None else f"{r['delta_e_h_eV'] - base['delta_e_h_eV']:+.3f}"
        lines.append(
            f"| {r['scan']} | {r['label']} | {r['supercell'][0]}×{r['supercell'][1]} | {r['delta_e_h_eV']:+.3f} | "
            f"{diff} | {r['scf_steps']} | {r['cpu_s']:.0f} |"
        )
    return "\n".join(lines)


def read_points(path: Path) -> dict[tuple[str, str], dict]:
    """The study's rows in ``path`` by (scan, label); a later row of the same point supersedes an earlier one."""
    rows: dict[tuple[str, str], dict] = {}
    for row in read_jsonl(path):  # a line cut by a kill is skipped: that point is computed again
        rows[(row["scan"], row["label"])] = row
    return rows


def stands(doc: dict) -> bool:
    """A cached single point or study row stands: a result, or a failure named under the current SCF rules
    (``gen2d.adsorption.FAILURE_RULES``); a failure under older rules is computed again."""
    from gen2d.adsorption import FAILURE_RULES

    return not doc.get("failure") or doc.get("failure_rules", 0) >= FAILURE_RULES


def points_done(path: Path) -> dict[tuple[str, str], dict]:
    """The points of ``path`` that stand (:func:`stands`). A point that failed under older rules runs again; its
    new row is appended and supersedes the old one."""
    return {key: row for key, row in read_points(path).items() if stands(row)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--material", default="MoS2-2H")
    ap.add_argument("--scans", nargs="*", default=None, help="scans to run (default: all); base always runs")
    ap.add_argument(
        "--labels", nargs="*", default=None, help="points to run by their label, e.g. '500 Ry' (default: every point)"
    )
    ap.add_argument("--base-cell", type=int, default=2, help="in-plane repeats of the base supercell")
    ap.add_argument("--vacuum", type=float, default=15.0)
    ap.add_argument("--h-height", type=float, default=1.41, help="H above the top atom (Å); S–H in H₂S is 1.34")
    ap.add_argument("--workdir", type=Path, default=Path("dft-runs/convergence"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--table", type=Path, default=None, help="print the rows of a JSONL file as Markdown and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table(list(read_points(args.table).values())))
        return 0
    out = args.out or args.workdir / f"{args.material}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = points_done(out)
    for scan, label, overrides, geometry in POINTS:
        if args.scans and scan != "base" and scan not in args.scans:
            continue
        if args.labels and scan != "base" and label not in args.labels:
            continue
        if (scan, label) in done:
            continue
        try:
            row = run_point(args, scan, label, overrides, geometry)
        except PointFailed as exc:  # a measured result: this setting's SCF does not converge
            cell = int(geometry.get("cell", args.base_cell))
            row = {"material": args.material, "scan": scan, "label": label, "cp2k": overrides}
            row.update(supercell=[cell, cell], failure=exc.doc["failure"], scf_steps=exc.doc["scf_steps"])
            row.update(failure_rules=exc.doc.get("failure_rules", 0))
            row.update(cpu_s=exc.doc["cpu_s"], wall_s=exc.doc["wall_s"])
        except Exception as exc:  # noqa: BLE001 - one point never stops the study
            print(f"{scan} {label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        done[(scan, label)] = row
        append_jsonl(out, row)
        what = row["failure"] if row.get("failure") else f"ΔE_H {row['delta_e_h_eV']:+.3f} eV"
        print(f"{scan:>10s} {label}: {what} ({row['cpu_s']:.0f} CPU-s)", flush=True)
    print(table(list(done.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
