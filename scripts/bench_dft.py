#!/usr/bin/env python
"""Validate gen2d's CP2K settings on H₂: bond length and binding energy against PBE.

``h2``: bond length and binding energy of H₂ (D_e = 2E(H) − E(H₂)) at the given settings. PBE's values are
0.750 Å and 4.54 eV (experiment 0.741 Å, 4.75 eV). The convergence of ΔE_H with cutoff, basis, vacuum,
k-points and supercell is ``scripts/dft_convergence.py``.

Usage (niced, one thread; a few CPU-minutes):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_dft.py h2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_h2 = sub.add_parser("h2")
    p_h2.add_argument("--cp2k", type=json.loads, default={}, help="Cp2kSettings overrides as JSON")
    args = parser.parse_args(argv)
    from gen2d_cp2k import Cp2kSettings

    print(json.dumps(h2_binding(Cp2kSettings(**args.cp2k)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
