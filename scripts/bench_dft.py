#!/usr/bin/env python
"""Validate gen2d's CP2K settings: H₂ against PBE, and a convergence study of ΔE_H on one reference row.

``h2``: bond length and binding energy of H₂ (D_e = 2E(H) − E(H₂)) at the given settings. PBE's values are
0.750 Å and 4.54 eV (experiment 0.741 Å, 4.75 eV).

``convergence``: single points of ΔE_H = E(slab+H) − E(slab) − ½E(H₂) on the DFT-relaxed geometry of one row
of the reference set (scripts/build_dgh_dft_reference.py), each with one setting changed: the plane-wave
cutoff, the relative cutoff, the H basis, the vacuum, k-points, and a larger supercell (the relaxed
neighbourhood of the H embedded in a 4×4 cell of the MLIP slab). Results are cached per variant in
``--out`` (JSON), so the study can be spread over several runs.

Usage (each variant costs two SCFs; run it niced in the background):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_dft.py h2
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_dft.py convergence --material MoS2-2H \\
        --variants base cutoff_500 h_tzv2p kpoints_221 vacuum_20 supercell_4x4 --out dft_convergence.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

#: name -> (Cp2kSettings overrides, geometry change)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "base": ({}, {}),
    "cutoff_300": ({"cutoff_ry": 300.0}, {}),
    "cutoff_500": ({"cutoff_ry": 500.0}, {}),
    "rel_cutoff_60": ({"rel_cutoff_ry": 60.0}, {}),
    "h_tzv2p": ({"basis_overrides": {"H": "TZV2P-MOLOPT-GTH"}}, {}),
    "no_d3": ({"dispersion": None}, {}),
    "kpoints_221": ({"kpoints": (2, 2, 1)}, {}),
    "vacuum_20": ({}, {"vacuum": 20.0}),
    "supercell_4x4": ({}, {"repeat": 4}),
}


def h2_binding(settings) -> dict:
    """H₂ relaxed in a 12 Å box, and the H atom (a doublet) in the same box."""
    from ase import Atoms
    from gen2d_cp2k import make_calculator

    from gen2d.adsorption import h2_reference_dft

    work = Path(tempfile.mkdtemp(prefix="gen2d-bench-h2-"))
    t0 = time.perf_counter()
    e_h2, bond = h2_reference_dft(str(work / "h2"), lambda d: make_calculator(settings=settings, directory=d))
    h = Atoms("H", positions=[[6.0, 6.0, 6.0]], cell=[12.0] * 3, pbc=True)
    calc = make_calculator(settings=settings, directory=str(work / "h"))
    h.calc = calc
    e_h = float(h.get_potential_energy())
    calc.close()
    return {
        "bond_A": round(bond, 4),
        "binding_energy_eV": round(2 * e_h - e_h2, 4),
        "e_h2_eV": e_h2,
        "settings_hash": settings.settings_hash(),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "pbe_reference": {"bond_A": 0.750, "binding_energy_eV": 4.54},
    }


def _row_geometry(row: dict):
    from ase import Atoms

    g = row["geometry"]
    withh = Atoms(numbers=g["numbers"], positions=g["positions"], cell=g["cell"], pbc=(True, True, False))
    slab = Atoms(numbers=g["numbers"][:-1], positions=g["slab_positions"], cell=g["cell"], pbc=(True, True, False))
    return slab, withh


def _revacuum(atoms, vacuum: float):
    out = atoms.copy()
    z = out.positions[:, 2]
    cell = out.cell.array.copy()
    cell[2] = [0.0, 0.0, float(z.max() - z.min()) + vacuum]
    out.set_cell(cell, scale_atoms=False)
    out.positions += [0.0, 0.0, cell[2, 2] / 2 - (z.max() + z.min()) / 2]
    return out


def _embed(row: dict, slab_small, withh_small, repeat: int, radius: float = 4.5):
    """The row's relaxed neighbourhood of H (every atom within ``radius`` Å) embedded in an n×n cell of the
    MLIP slab, for the bare slab and for slab+H: the same local geometry at a lower coverage."""
    from ase import Atoms
    from ase.geometry import find_mic
    from pymatgen.core import Structure

    from gen2d.structures import to_ase

    unit = to_ase(Structure.from_dict(row["structure"]))
    big = unit.repeat((repeat, repeat, 1))
    big.pbc = (True, True, False)
    vacuum = slab_small.cell[2, 2] - np.ptp(slab_small.positions[:, 2])
    big = _revacuum(big, vacuum)  # the same thickness and vacuum: the same z as the small cell
    h = withh_small.positions[-1]
    out = []
    for small in (slab_small, withh_small[:-1]):
        target = big.copy()
        rel, dist = find_mic(small.positions - h, small.cell, pbc=(True, True, False))
        for i in np.nonzero(dist < radius)[0]:
            dest = h + rel[i]
            j = int(np.argmin(find_mic(target.positions - dest, target.cell, pbc=(True, True, False))[1]))
            target.positions[j] = dest
        out.append(target)
    big_slab, big_h = out
    big_h += Atoms("H", positions=[h])
    return big_slab, big_h


def delta_e(row: dict, name: str, workdir: Path, threads: int) -> dict:
    from gen2d_cp2k import Cp2kSettings, make_calculator

    from gen2d.adsorption import h2_reference_dft

    base = Cp2kSettings(**row["provenance"]["settings"]["cp2k"])
    overrides, geometry = VARIANTS[name]
    settings = base.model_copy(update=overrides)
    slab, withh = _row_geometry(row)
    if "vacuum" in geometry:
        slab, withh = _revacuum(slab, geometry["vacuum"]), _revacuum(withh, geometry["vacuum"])
    if "repeat" in geometry:
        slab, withh = _embed(row, slab, withh, geometry["repeat"])
    t0 = time.perf_counter()
    energies = {}
    for label, atoms in (("slab", slab), ("slab+H", withh)):
        calc = make_calculator(
            settings=settings, directory=str(workdir / name / label.replace("+", "_")), threads=threads
        )
        atoms = atoms.copy()
        atoms.calc = calc
        energies[label] = float(atoms.get_potential_energy())
        calc.close()
    e_h2, bond = h2_reference_dft(
        str(workdir / f"h2-{settings.settings_hash()}"),
        lambda d: make_calculator(settings=settings, directory=d, threads=threads),
    )
    de = energies["slab+H"] - energies["slab"] - 0.5 * e_h2
    return {
        "variant": name,
        "delta_e_h_eV": round(de, 4),
        "n_atoms": len(withh),
        "settings_hash": settings.settings_hash(),
        "overrides": overrides,
        "geometry": geometry,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "h2_bond_A": round(bond, 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_h2 = sub.add_parser("h2")
    p_h2.add_argument("--cp2k", type=json.loads, default={})
    p_cv = sub.add_parser("convergence")
    p_cv.add_argument("--material", default="MoS2-2H")
    p_cv.add_argument("--rows", type=Path, default=None, help="reference rows (default: the shipped set)")
    p_cv.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p_cv.add_argument("--out", type=Path, default=Path("dft_convergence.json"))
    p_cv.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "gen2d" / "dft-convergence")
    p_cv.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    from gen2d_cp2k import Cp2kSettings

    if args.cmd == "h2":
        print(json.dumps(h2_binding(Cp2kSettings(**args.cp2k)), indent=1))
        return 0
    from build_dgh_dft_reference import DEFAULT_OUT, read_rows

    rows = read_rows(args.rows or DEFAULT_OUT)
    row = rows[args.material]
    done = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.variants:
        if name in done:
            print(json.dumps(done[name]), flush=True)
            continue
        done[name] = delta_e(row, name, args.workdir, args.threads)
        args.out.write_text(json.dumps(done, indent=1))
        print(json.dumps(done[name]), flush=True)
    base = done.get("base", {}).get("delta_e_h_eV")
    if base is not None:
        print(f"\n{'variant':16s} {'ΔE_H (eV)':>10s} {'vs base':>8s} {'atoms':>6s} {'wall s':>7s}")
        for name, r in done.items():
            print(
                f"{name:16s} {r['delta_e_h_eV']:10.3f} {r['delta_e_h_eV'] - base:+8.3f} {r['n_atoms']:6d} "
                f"{r['wall_seconds']:7.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
