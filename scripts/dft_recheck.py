"""Recompute the single point of a finished CP2K part (a ``dgh.dft`` slab or site) under today's SCF acceptance, and compare.

A part's ``result.json`` keeps the energy CP2K called converged. ``Cp2kSettings.eps_energy_ha`` now also asks the
energy to have settled at the SCF's last step; this script audits an energy accepted before that check. It reads the
geometry from the part's ``gen2d.inp`` (a relaxed site's from its ``result.json``) and the settings from the run's ``run.json``, copies the part's wavefunction
into ``--workdir`` (never touching the part itself; ``--from-scratch`` starts from the atomic guess), runs the SCF there at the same settings, and prints the stored
and the new energy, their difference, and the new SCF's last energy change.

``--set KEY=VALUE`` (repeatable; VALUE in JSON) changes one ``Cp2kSettings`` field instead, at the part's own geometry:
a convergence check of a finished row, e.g. its k-point sampling. Run it on a row's slab and on its site, and the
difference of the two differences is what that setting changes in the row's ΔE_H (the H₂ reference is a molecule
in a box, at Γ in every setting). A k-point mesh starts from the atomic guess (a Γ wavefunction does not fit it).

``--moment SYMBOL=VALUE`` (repeatable; μB) starts the SCF from the atomic guess with that initial moment on every atom
of the element (CP2K's ``&KIND/MAGNETIZATION``): a spin-start check, whether another open-shell solution lies lower.
The output's integrated absolute spin density is printed with the energy.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/dft_recheck.py \\
        dft-runs/reference/e22e67c65a973b51/slab --workdir dft-runs/checks/graphene-slab --json
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/dft_recheck.py \\
        dft-runs/reference/e22e67c65a973b51/slab --set kpoints='[3,3,1]' --workdir dft-runs/checks/graphene-slab-k3
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
from ase import Atoms

_COORD = re.compile(r"&COORD\s*\n(.*?)\n\s*&END COORD", re.S)
_CELL = re.compile(r"&CELL\s*\n(.*?)\n\s*&END CELL", re.S)


def atoms_from_input(text: str, slab: bool = True) -> Atoms:
    """The atoms of a CP2K input that ASE's calculator wrote (``&COORD`` in Å, ``&CELL`` A/B/C vectors)."""
    coord, cell = _COORD.search(text), _CELL.search(text)
    if coord is None or cell is None:
        raise ValueError("no &COORD or &CELL section in the input")
    symbols, positions = [], []
    for line in coord.group(1).splitlines():
        parts = line.split()
        if len(parts) >= 4:
            symbols.append(re.sub(r"_\d+$", "", parts[0]))  # an extra kind (gen2d_cp2k.atom_kinds: H_1) is its element
            positions.append([float(x) for x in parts[1:4]])
    vectors = {}
    for line in cell.group(1).splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] in "ABC":
            vectors[parts[0]] = [float(x) for x in parts[1:]]
    if set(vectors) != {"A", "B", "C"} or not symbols:
        raise ValueError("incomplete &COORD or &CELL section")
    return Atoms(
        symbols,
        positions=np.array(positions),
        cell=[vectors["A"], vectors["B"], vectors["C"]],
        pbc=(True, True, not slab),
    )


def part_atoms(part: Path, result: dict) -> Atoms:
    """The geometry ``result``'s energy belongs to. A single point's is its input's; a relaxed part (a site) takes
    each new geometry through cp2k_shell without a new input, so its input holds the process's first geometry and
    its ``result.json`` the last one. A relaxed part without stored positions is refused, never rechecked at the
    wrong geometry."""
    atoms = atoms_from_input((part / "gen2d.inp").read_text(), slab=True)
    if result.get("positions") is None:
        if (part / "relax.traj").is_file():
            raise SystemExit(f"{part}: a relaxed part whose result.json holds no positions; its geometry is unknown")
        return atoms
    positions = np.asarray(result["positions"], dtype=float)
    if positions.shape != atoms.positions.shape:
        raise SystemExit(f"{part}: result.json has {len(positions)} positions, the input {len(atoms)} atoms")
    atoms.positions = positions
    return atoms


def parse_overrides(pairs: list[str]) -> dict:
    """``["kpoints=[3,3,1]", "cutoff_ry=500"]`` → ``{"kpoints": (3, 3, 1), "cutoff_ry": 500}``: each VALUE is
    JSON (a bare word is taken as a string); a list becomes a tuple, as ``Cp2kSettings`` holds its meshes."""
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def parse_moments(pairs: list[str]) -> dict[str, float]:
    """``["H=1", "Mo=0.5"]`` → ``{"H": 1.0, "Mo": 0.5}``: initial moments (μB) by element."""
    from ase.data import atomic_numbers

    out: dict[str, float] = {}
    for pair in pairs:
        symbol, sep, raw = pair.partition("=")
        symbol = symbol.strip()
        if not sep or symbol not in atomic_numbers:
            raise SystemExit(f"--moment wants SYMBOL=VALUE with an element symbol, got {pair!r}")
        try:
            out[symbol] = float(raw)
        except ValueError:
            raise SystemExit(f"--moment {pair!r}: {raw!r} is not a number") from None
    return out


def main(argv: list[str] | None = None) -> int:
    from gen2d_cp2k import Cp2kSettings, abs_spin_density, make_calculator, scf_last_change
    from gen2d_cp2k.settings import restart_suffix, wants_spin

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", type=Path, help="a finished part: gen2d.inp, result.json, gen2d-RESTART.wfn (.kp)")
    parser.add_argument("--workdir", type=Path, required=True, help="where the new SCF runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--from-scratch", action="store_true", help="start from the atomic guess, not the part's wfn")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run at the part's geometry with this Cp2kSettings field changed (VALUE in JSON; repeatable)",
    )
    parser.add_argument(
        "--moment",
        dest="moments",
        action="append",
        default=[],
        metavar="SYMBOL=VALUE",
        help="initial magnetic moment (μB) of every atom of an element; starts from the atomic guess (repeatable)",
    )
    args = parser.parse_args(argv)
    moments = parse_moments(args.moments)

    run = json.loads((args.part.parent / "run.json").read_text())
    run_settings = Cp2kSettings(**run["cp2k_settings"])
    if run_settings.settings_hash() != run["settings_hash"]:
        raise SystemExit(f"run.json's settings hash {run['settings_hash']} is not that of its settings")
    overrides = parse_overrides(args.overrides)
    settings = Cp2kSettings(**(run_settings.model_dump() | overrides)) if overrides else run_settings
    result = json.loads((args.part / "result.json").read_text())
    stored = result["energy"]
    atoms = part_atoms(args.part, result)
    unknown = sorted(set(moments) - set(atoms.get_chemical_symbols()))
    if unknown:
        raise SystemExit(f"--moment names {', '.join(unknown)}, which {args.part} does not hold")
    if moments:  # a zero leaves the element at the calculator's default (gen2d_cp2k.atom_kinds)
        if not wants_spin(atoms.get_chemical_symbols(), settings)[0]:
            raise SystemExit(f"--moment: {args.part} is computed closed-shell under these settings (spin 'auto')")
        atoms.set_initial_magnetic_moments([moments.get(s, 0.0) for s in atoms.get_chemical_symbols()])
    args.workdir.mkdir(parents=True, exist_ok=True)
    wfn = args.part / f"gen2d-RESTART.{restart_suffix(run_settings.mesh_for(atoms))}"
    # a changed mesh starts from the atomic guess: the part's orbitals are of another sampling
    # and so does a spin start: CP2K applies initial moments to the atomic guess only
    from_scratch = args.from_scratch or "kpoints" in overrides or "kpoint_length" in overrides or bool(moments)
    if not from_scratch and wfn.is_file() and not (args.workdir / wfn.name).exists():
        shutil.copy2(wfn, args.workdir / wfn.name)
    # a wavefunction already in the workdir is a stopped recheck's, and the SCF goes on from it
    suffix = restart_suffix(settings.mesh_for(atoms))
    resumed = from_scratch and (args.workdir / f"gen2d-RESTART.{suffix}").is_file()
    if resumed and moments:
        raise SystemExit(f"--moment needs a start from the atomic guess; {args.workdir} holds a wavefunction")
    calc = make_calculator(settings=settings, directory=str(args.workdir), threads=args.threads)
    atoms.calc = calc
    try:
        energy = float(atoms.get_potential_energy())
    finally:
        calc.close()
    out_text = (args.workdir / "gen2d.out").read_text(errors="replace")
    last = scf_last_change(out_text)
    doc = {
        "part": str(args.part),
        "settings_hash": settings.settings_hash(),
        "stored_energy_eV": stored,
        "energy_eV": energy,
        "difference_eV": energy - stored,
        "scf_steps": calc.scf_steps,
        "scf_retries": calc.scf_retries,
        "last_scf_step": last[0] if last else None,
        # a one-step SCF (a restart that was already converged) has no change, only its total energy
        "last_energy_change_Ha": last[1] if last and last[0] > 1 else None,
        "eps_energy_ha": settings.eps_energy_ha,
        "start": (
            "the workdir's wavefunction (a resumed recheck)"
            if resumed
            else "atomic guess"
            if from_scratch
            else "the part's wavefunction"
        ),
        "overrides": overrides,
        "initial_moments_muB": moments,
        "abs_spin_density": abs_spin_density(out_text),
        "stored_settings_hash": run["settings_hash"],
        "n_atoms": len(atoms),
        "unit": "eV",
    }
    if args.json:
        print(json.dumps(doc))
    else:
        print(
            f"{args.part}: stored {stored:.6f} eV, now {energy:.6f} eV ({energy - stored:+.4f} eV); "
            f"SCF steps {calc.scf_steps}, last change {doc['last_energy_change_Ha']} Ha at step {doc['last_scf_step']}; "
            f"integrated absolute spin density {doc['abs_spin_density']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
