#!/usr/bin/env python
"""Validate gen2d's CP2K settings on H₂: bond length and binding energy against PBE.

``h2``: bond length and binding energy of H₂ (D_e = 2E(H) − E(H₂)) at the given settings. PBE's values are
0.750 Å and 4.54 eV (experiment 0.741 Å, 4.75 eV). The convergence of ΔE_H with cutoff, basis, vacuum,
k-points and supercell is ``scripts/dft_convergence.py``.

``step-cost``: the cost of one SCF step under setting variants, on the 2×2 2H-MoS₂ bare slab of the convergence
study: the first ``--steps`` SCF steps from the atomic guess, their summed time from CP2K's SCF log, and the
energy reached (the same steps of the same mixer, so the energies differ only by the setting's own effect).

``truncation``: what a looser force criterion would have cost and saved, read from finished DFT relaxations
(no new DFT). For each relaxation under ``--runs`` that converged at its own ``fmax``, and each looser threshold:
the first frame whose largest force on a free atom is below it (where BFGS would have stopped), its energy
against the converged frame (the ΔE_H error, since the slab energy does not change) and the share of BFGS
steps and SCF steps it would have used.

``threads``: SCF seconds per step of the bare 2H-MoS₂ slab (3×3, the reference setting) with 1 and 2 OpenMP
threads of Debian's cp2k.psmp, and the speed-up; the load average before each run is printed beside it, since the
figure means something only on a quiet machine.

``spin-starts``: does a finished DFT relaxation's energy depend on where its SCF started? The converged
geometry's energy is recomputed from fresh starts (CP2K's atomic guess, and with an initial moment of ±1 μB on
H) at the run's own settings, and compared with the relaxation's last energy, which came from a chain of
restarted wavefunctions. An open-shell slab+H can have several SCF solutions; the spread is the row's
uncertainty from that alone, and a lower solution means the stored row is not the ground state found.

``scf-audit``: which stored SCFs the SCF energy check would reject today (no new DFT). For every CP2K output under
``--runs``: its SCFs, how many CP2K called converged, how many of those ended with an energy change above
``Cp2kSettings.energy_tolerance()`` at the part's own ``EPS_SCF`` (CP2K's density criterion can be met while the
energy still moves), and the same for the last converged SCF, whose energy a finished part hands out. A finished
part whose last SCF is over the tolerance is one to recompute with ``scripts/dft_recheck.py``.

Usage (niced, one thread; a few CPU-minutes each, ``truncation`` seconds, ``spin-starts`` one SCF per start):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_dft.py h2
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_dft.py step-cost --steps 7
    .venv/bin/python scripts/bench_dft.py truncation --runs dft-runs/reference
    nice -n 5 .venv/bin/python scripts/bench_dft.py threads --steps 6     # on a quiet machine
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/bench_dft.py spin-starts --runs dft-runs/reference \
        --workdir dft-runs/spin-starts
    .venv/bin/python scripts/bench_dft.py scf-audit --runs dft-runs/reference [--json]
"""

from __future__ import annotations

import argparse
import json
import re
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


#: variants of ``step-cost``: name -> Cp2kSettings overrides
STEP_VARIANTS = {
    "default": {},
    "EPS_DEFAULT 1e-10": {"eps_default": 1e-10},
    "REL_CUTOFF 40 Ry": {"rel_cutoff_ry": 40.0},
    "EPS_DEFAULT 1e-10, REL_CUTOFF 40 Ry": {"eps_default": 1e-10, "rel_cutoff_ry": 40.0},
}


def scf_log(path: Path) -> list[tuple[int, float, float]]:
    """(step, seconds, energy in Ha) of every SCF step line of a CP2K output (diagonalisation or OT)."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        tok = line.split()
        if len(tok) >= 6 and tok[0].isdigit():
            try:
                rows.append((int(tok[0]), float(tok[-4]), float(tok[-2])))
            except ValueError:
                continue
    return rows


def first_scf_steps(slab, settings, prefix: str, threads: int | None = None) -> tuple[list, float]:
    """Run the first ``settings.max_scf`` SCF steps of ``slab`` from the atomic guess in a new temporary folder;
    returns CP2K's SCF log (:func:`scf_log`) and the wall seconds. Not converging in so few steps is the point."""
    from gen2d_cp2k import make_calculator

    work = Path(tempfile.mkdtemp(prefix=prefix))
    calc = make_calculator(settings=settings, directory=str(work), threads=threads)
    atoms = slab.copy()
    atoms.calc = calc
    t0 = time.perf_counter()
    try:
        atoms.get_potential_energy()
    except Exception:  # noqa: BLE001 - an SCF cut at max_scf raises; its log is what is measured
        pass
    finally:
        calc.close()
    return scf_log(work / "gen2d.out"), time.perf_counter() - t0


def step_cost(steps: int, variants: dict[str, dict]) -> list[dict]:
    from dft_convergence import build_geometry
    from gen2d_cp2k import Cp2kSettings

    slab, _ = build_geometry("MoS2-2H", 2, 15.0, 1.41)
    out = []
    for name, overrides in variants.items():
        settings = Cp2kSettings(**{**overrides, "max_scf": steps})
        log, _ = first_scf_steps(slab, settings, "gen2d-bench-step-")
        out.append(
            {
                "variant": name,
                "settings_hash": settings.settings_hash(),
                "n_steps": len(log),
                "scf_seconds": round(sum(t for _, t, _ in log), 1),
                "energy_Ha": log[-1][2] if log else None,
            }
        )
    base = out[0]
    for r in out:
        r["vs_default"] = round(r["scf_seconds"] / base["scf_seconds"] - 1, 3) if base["scf_seconds"] else None
        if r["energy_Ha"] is not None and base["energy_Ha"] is not None:
            r["energy_vs_default_uHa"] = round((r["energy_Ha"] - base["energy_Ha"]) * 1e6, 1)
    return out


def thread_scaling(steps: int, threads: list[int], supercell: int = 3) -> list[dict]:
    """SCF seconds per step of the bare 2H-MoS₂ slab (``supercell`` x ``supercell``, the reference setting) with
    each OpenMP thread count; the machine's load average before each run is recorded beside the figure."""
    import os

    from dft_convergence import build_geometry
    from gen2d_cp2k import Cp2kSettings

    slab, _ = build_geometry("MoS2-2H", supercell, 15.0, 1.41)
    settings = Cp2kSettings(max_scf=steps)
    out = []
    for n in threads:
        load = os.getloadavg()[0]
        log, wall = first_scf_steps(slab, settings, f"gen2d-bench-threads{n}-", threads=n)
        per_step = sum(t for _, t, _ in log) / len(log) if log else None
        out.append(
            {
                "threads": n,
                "n_atoms": len(slab),
                "n_steps": len(log),
                "seconds_per_step": None if per_step is None else round(per_step, 2),
                "wall_s": round(wall, 1),
                "load_average_before": round(load, 2),
                "cores": os.cpu_count(),
            }
        )
    base = out[0]["seconds_per_step"]
    for r in out:
        r["speedup"] = round(base / r["seconds_per_step"], 2) if base and r["seconds_per_step"] else None
    return out


def truncation(roots: list[Path], thresholds: list[float]) -> list[dict]:
    """One row per (finished relaxation, threshold); see the module docstring."""
    import numpy as np
    from ase.io import read

    rows = []
    for result in sorted(p for root in roots for p in Path(root).glob("*/site_*/result.json")):
        folder = result.parent
        if not json.loads(result.read_text()).get("converged"):
            continue
        frames = read(str(folder / "relax.traj"), ":")
        fmax = [float(np.sqrt((a.get_forces(apply_constraint=True) ** 2).sum(1)).max()) for a in frames]
        energy = [float(a.get_potential_energy()) for a in frames]
        run = json.loads((folder.parent / "run.json").read_text())
        # SCF steps per frame: CP2K's own count of each converged SCF, or the cost ledger, whichever has exactly
        # one per frame (a restart re-evaluates a frame, and then neither says which step paid for what)
        scf = None
        out = folder / "gen2d.out"
        counts = [int(m) for m in re.findall(r"SCF run converged in\s+(\d+) steps", out.read_text(errors="replace"))]
        ledger = folder / "gen2d-cost.json"
        booked = json.loads(ledger.read_text()).get("scf_steps", []) if ledger.is_file() else []
        for steps in (counts, booked):
            if len(steps) == len(frames):
                scf = steps
                break
        for t in thresholds:
            stop = next((k for k, f in enumerate(fmax) if f <= t), len(frames) - 1)
            rows.append(
                {
                    "run": f"{folder.parent.name}/{folder.name}",
                    "formula": run.get("formula"),
                    "fmax_eV_per_A": t,
                    "frame": stop,
                    "n_frames": len(frames),
                    "energy_error_meV": round(1000 * (energy[stop] - energy[-1]), 1),
                    "bfgs_share": round((stop + 1) / len(frames), 2),
                    "scf_share": round(sum(scf[: stop + 1]) / sum(scf), 2) if scf else None,
                }
            )
    return rows


#: the fresh SCF starts of ``spin-starts``: initial moments (μB) per element over the defaults
SPIN_STARTS: dict[str, dict[str, float]] = {"atomic guess": {}, "H +1 μB": {"H": 1.0}, "H −1 μB": {"H": -1.0}}


def _abs_spin(out: Path) -> float | None:
    """The last 'Integrated absolute spin density' of a CP2K output file (None for a closed-shell run)."""
    from gen2d_cp2k import abs_spin_density

    return abs_spin_density(out.read_text(errors="replace"))


def spin_starts(roots: list[Path], workdir: Path, starts: dict[str, dict[str, float]]) -> list[dict]:
    """One row per (finished relaxation, start); each start's single point is cached in ``workdir``."""
    from ase.io import read
    from gen2d_cp2k import Cp2kSettings, make_calculator

    rows = []
    for result in sorted(p for root in roots for p in Path(root).glob("*/site_*/result.json")):
        folder = result.parent
        if not json.loads(result.read_text()).get("converged"):
            continue
        run = json.loads((folder.parent / "run.json").read_text())
        settings = Cp2kSettings(**run["cp2k_settings"])
        final = read(str(folder / "relax.traj"), -1)
        e_chain = float(final.get_potential_energy())
        for name, moments in starts.items():
            key = f"{folder.parent.name}-{folder.name}-" + "-".join(f"{k}{v:+g}" for k, v in moments.items())
            work = workdir / (key.rstrip("-") or key)
            cached = work / "energy.json"
            if cached.is_file():
                doc = json.loads(cached.read_text())
            else:
                atoms = final.copy()
                calc = make_calculator(settings=settings, directory=str(work), restart_wfn=False, magnetization=moments)
                atoms.calc = calc
                try:
                    doc = {"energy_eV": float(atoms.get_potential_energy()), "scf_steps": calc.scf_steps[-1]}
                except Exception as exc:  # noqa: BLE001 - a start that does not converge is a row, not a stop
                    doc = {"energy_eV": None, "failure": f"{type(exc).__name__}: {str(exc)[:120]}"}
                finally:
                    calc.close()
                doc["abs_spin"] = _abs_spin(work / "gen2d.out")
                doc["wall_seconds"] = calc.wall_seconds
                cached.write_text(json.dumps(doc))
            e = doc.get("energy_eV")
            rows.append(
                {
                    "run": f"{folder.parent.name}/{folder.name}",
                    "formula": run.get("formula"),
                    "start": name,
                    "vs_relaxation_meV": None if e is None else round(1000 * (e - e_chain), 1),
                    "abs_spin": doc.get("abs_spin"),
                    "scf_steps": doc.get("scf_steps"),
                    "failure": doc.get("failure"),
                    "chain_abs_spin": _abs_spin(folder / "gen2d.out"),
                }
            )
    return rows


def scf_audit(roots: list[Path]) -> list[dict]:
    """One row per CP2K output (``gen2d.out``) under ``roots``: see the module's ``scf-audit``."""
    from gen2d_cp2k import Cp2kSettings, scf_runs

    rows = []
    for root in roots:
        for out in sorted(Path(root).rglob("gen2d.out")):
            part = out.parent
            inp = part / "gen2d.inp"
            found = re.search(r"^\s*EPS_SCF\s+(\S+)", inp.read_text(), re.M) if inp.is_file() else None
            eps = float(found.group(1)) if found else Cp2kSettings().eps_scf
            tolerance = Cp2kSettings(eps_scf=eps).energy_tolerance()
            runs = scf_runs(out.read_text(errors="replace"))
            converged = [r for r in runs if r["converged"] and r["changes"]]
            over = [r for r in converged if abs(r["changes"][-1]) > tolerance]
            last = converged[-1]["changes"][-1] if converged else None
            result = part / "result.json"
            doc = json.loads(result.read_text()) if result.is_file() else {}
            finished = doc.get("energy") is not None or doc.get("real_eV") is not None  # a part, or vibrations
            rows.append(
                {
                    "part": str(part.relative_to(root)),
                    "root": str(root),
                    "eps_scf": eps,
                    "tolerance_Ha": tolerance,
                    "scfs": len(runs),
                    "cp2k_converged": sum(1 for r in runs if r["converged"]),
                    "over_tolerance": len(over),
                    "largest_over_Ha": max((abs(r["changes"][-1]) for r in over), default=None),
                    "last_change_Ha": last,
                    "last_over_tolerance": last is not None and abs(last) > tolerance,
                    "finished": finished,
                }
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_h2 = sub.add_parser("h2")
    p_h2.add_argument("--cp2k", type=json.loads, default={}, help="Cp2kSettings overrides as JSON")
    p_step = sub.add_parser("step-cost")
    p_step.add_argument("--steps", type=int, default=7, help="SCF steps per variant")
    p_trunc = sub.add_parser("truncation")
    p_trunc.add_argument("--runs", nargs="+", type=Path, default=[ROOT / "dft-runs" / "reference"])
    p_trunc.add_argument("--fmax", nargs="+", type=float, default=[0.05, 0.1, 0.15, 0.2], help="eV/Å")
    p_thr = sub.add_parser("threads")
    p_thr.add_argument("--steps", type=int, default=6, help="SCF steps per thread count")
    p_thr.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p_thr.add_argument("--supercell", type=int, default=3, help="MoS2 n x n (3: the reference rows' cell)")
    p_spin = sub.add_parser("spin-starts")
    p_spin.add_argument("--runs", nargs="+", type=Path, default=[ROOT / "dft-runs" / "reference"])
    p_spin.add_argument("--workdir", type=Path, default=ROOT / "dft-runs" / "spin-starts")
    p_audit = sub.add_parser("scf-audit")
    p_audit.add_argument("--runs", nargs="+", type=Path, default=[ROOT / "dft-runs" / "reference"])
    p_audit.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    args = parser.parse_args(argv)
    if args.cmd == "scf-audit":
        rows = scf_audit(args.runs)
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        print("| part | SCFs | CP2K converged | over tolerance (largest, Ha) | last change (Ha) | finished |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            largest = f" ({r['largest_over_Ha']:.1e})" if r["over_tolerance"] else ""
            last = "—" if r["last_change_Ha"] is None else f"{r['last_change_Ha']:+.1e}"
            flag = " **over**" if r["last_over_tolerance"] else ""
            print(
                f"| {r['part']} | {r['scfs']} | {r['cp2k_converged']} | {r['over_tolerance']}{largest} | "
                f"{last}{flag} | {'yes' if r['finished'] else 'no'} |"
            )
        return 0
    if args.cmd == "spin-starts":
        print("| relaxation | formula | start | energy vs relaxation (meV) | ∫\\|spin\\| (relaxation's) | SCF steps |")
        print("|---|---|---|---|---|---|")
        for r in spin_starts(args.runs, args.workdir, SPIN_STARTS):
            e = r["failure"] if r["vs_relaxation_meV"] is None else f"{r['vs_relaxation_meV']:+.1f}"
            print(
                f"| {r['run']} | {r['formula']} | {r['start']} | {e} | {r['abs_spin']} ({r['chain_abs_spin']}) "
                f"| {r['scf_steps']} |",
                flush=True,
            )
        return 0
    if args.cmd == "truncation":
        print("| relaxation | formula | fmax (eV/Å) | stops at frame | energy error (meV) | BFGS steps | SCF steps |")
        print("|---|---|---|---|---|---|---|")
        for r in truncation(args.runs, args.fmax):
            scf = f"{r['scf_share']:.0%}" if r["scf_share"] is not None else "—"
            print(
                f"| {r['run']} | {r['formula']} | {r['fmax_eV_per_A']:g} | {r['frame']} of {r['n_frames'] - 1} | "
                f"{r['energy_error_meV']:+.1f} | {r['bfgs_share']:.0%} | {scf} |"
            )
        return 0
    from gen2d_cp2k import Cp2kSettings

    if args.cmd == "threads":
        print("| OpenMP threads | atoms | SCF steps | s per step | speed-up | load average before | cores |")
        print("|---|---|---|---|---|---|---|")
        for r in thread_scaling(args.steps, args.threads, args.supercell):
            print(
                f"| {r['threads']} | {r['n_atoms']} | {r['n_steps']} | {r['seconds_per_step']} | {r['speedup']} | "
                f"{r['load_average_before']} | {r['cores']} |",
                flush=True,
            )
        return 0
    if args.cmd == "step-cost":
        rows = step_cost(args.steps, STEP_VARIANTS)
        print("| variant | SCF steps | SCF time (s) | vs default | energy vs default (µHa) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['variant']} | {r['n_steps']} | {r['scf_seconds']} | {r['vs_default']:+.0%} | "
                f"{r.get('energy_vs_default_uHa', '—')} |"
            )
        return 0

    print(json.dumps(h2_binding(Cp2kSettings(**args.cp2k)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
