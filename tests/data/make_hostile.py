"""Write a corpus of hostile inputs for gen2d's readers and validators (issue: reliability).

usage: python tests/data/make_hostile.py OUT_DIR
Writes >= 40 files into OUT_DIR/files (plus a broken ASE db and a bad labels CSV beside them) and
OUT_DIR/expected.json: file name -> the reason gen2d must give, or "ok" for the valid ones.
"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, graphene, molecule, mx2
from ase.io import write as ase_write
from pymatgen.core import Lattice, Structure


def _mos2(vacuum=20.0):
    a = mx2("MoS2", kind="2H", a=3.18, thickness=3.13, vacuum=vacuum / 2)
    return a


def _cif_text(atoms: Atoms) -> str:
    from pymatgen.io.ase import AseAtomsAdaptor

    a = atoms.copy()
    a.pbc = True
    return str(AseAtomsAdaptor.get_structure(a).to(fmt="cif"))


def make_corpus(out: Path) -> dict[str, str]:
    files = out / "files"
    files.mkdir(parents=True, exist_ok=True)
    exp: dict[str, str] = {}

    def put(name: str, content: str | bytes, reason: str) -> None:
        p = files / name
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        exp[name] = reason

    good = _cif_text(_mos2())
    # valid ones, to prove they are stored beside the hostile ones
    put("MoS2.cif", good, "ok")
    put("graphene.cif", _cif_text(graphene("C2", a=2.46, vacuum=10)), "ok")
    put("MoS2 copy (1).cif", good, "ok")  # duplicate content, odd name
    put("-leading-dash.cif", good, "ok")
    put("ünïcödé_名前.cif", good, "ok")
    put(("x" * 200) + ".cif", good, "ok")
    put("MoS2_1000A_vacuum.cif", _cif_text(_mos2(vacuum=1000.0)), "ok")  # valid; vacuum is normalised
    hbn = Atoms(
        "BN",
        scaled_positions=[[0, 0, 0.5], [1 / 3, 2 / 3, 0.5]],
        cell=[[2.504, 0, 0], [-1.252, 2.1686, 0], [0, 0, 20]],
        pbc=True,
    )
    put("hBN.vasp", "", "ok")
    ase_write(files / "hBN.vasp", hbn, format="vasp")
    put("MoS2.extxyz", "", "ok")
    ase_write(files / "MoS2.extxyz", _mos2(), format="extxyz")

    # unreadable
    put("empty.cif", "", "unreadable_file")
    put("truncated_third.cif", good[: len(good) // 3], "unreadable_file")
    put("truncated_header.cif", good[:40], "unreadable_file")
    put("binary_junk.cif", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "unreadable_file")
    put("nul_bytes.cif", b"\x00" * 1000, "unreadable_file")
    put("text_not_cif.cif", "Hello, this is a shopping list.\nmilk\neggs\n", "unreadable_file")
    put("bad_numbers.cif", good.replace("3.18000000", "three-point-one"), "unreadable_file")
    put("corrupt.vasp", "MoS2\n1.0\n3.18 0 0\nnot numbers here\n", "unreadable_file")
    put("corrupt.extxyz", '3\nLattice="3 0 0 0 3 0 0 0 20" Properties=species:S:1:pos:R:3\nMo 0 0\n', "unreadable_file")
    put("corrupt.json", '{"@module": "pymatgen.core.structure", "lattice": ', "unreadable_file")
    put("json_not_structure.json", json.dumps({"hello": [1, 2, 3]}), "unreadable_file")

    # numerical garbage
    nan = good.replace("0.56766105", "nan", 1) if "0.56766105" in good else None
    s = Structure.from_str(good, fmt="cif")
    fc = s.frac_coords.copy()
    fc[1, 2] = math.nan
    put("nan_coords.json", json.dumps(_structure_dict(s.lattice.matrix, s.species, fc)), "non_finite_coordinates")
    fc2 = s.frac_coords.copy()
    fc2[0, 0] = math.inf
    put("inf_coords.json", json.dumps(_structure_dict(s.lattice.matrix, s.species, fc2)), "non_finite_coordinates")
    put(
        "zero_volume.json",
        json.dumps(_structure_dict([[3, 0, 0], [6, 0, 0], [0, 0, 20]], ["C"], [[0, 0, 0.5]])),
        "degenerate_lattice",
    )
    put(
        "nan_lattice.json",
        json.dumps(_structure_dict([[3, 0, 0], [0, math.nan, 0], [0, 0, 20]], ["C"], [[0, 0, 0.5]])),
        "non_finite_coordinates",
    )
    if nan:
        put("nan_in_cif.cif", nan, "unreadable_file")  # pymatgen's CIF parser refuses it outright

    # chemistry garbage
    put(
        "unknown_element_Qq.cif",
        good.replace("Mo ", "Qq ").replace("Mo0", "Qq0").replace("Mo1", "Qq1"),
        "unknown_element",
    )
    put("unknown_element_Xx.vasp", "", "unknown_element")
    (files / "unknown_element_Xx.vasp").write_text(
        "Xx S\n1.0\n3.18 0 0\n-1.59 2.754 0\n0 0 20\nXx S\n1 2\nDirect\n0 0 0.5\n0.667 0.333 0.578\n0.667 0.333 0.422\n"
    )
    put("partial_occupancy.cif", _partial_cif(), "partial_occupancy")

    # geometry garbage
    ov = _mos2()
    ov.append("S")
    ov.positions[-1] = ov.positions[1] + [0.2, 0.0, 0.0]
    put("overlapping_atoms.extxyz", "", "overlapping_atoms")
    ase_write(files / "overlapping_atoms.extxyz", ov, format="extxyz")
    put("bulk_Si.cif", _cif_text(bulk("Si", "diamond", a=5.43)), "bulk_crystal")
    put("bulk_NaCl.cif", _cif_text(bulk("NaCl", "rocksalt", a=5.64)), "bulk_crystal")
    mos2_bulk = mx2("MoS2", kind="2H", a=3.16, thickness=3.17, vacuum=1.45)  # periodic stack, 6.17 Å repeat
    put("bulk_MoS2_stack.cif", _cif_text(mos2_bulk), "bulk_crystal")
    put("bilayer_MoS2.cif", _cif_text(_bilayer()), "stacked_layers")
    put("bilayer_graphene.cif", _cif_text(_bilayer_graphene()), "stacked_layers")
    h2o = molecule("H2O")
    h2o.center(vacuum=8.0)
    h2o.pbc = True
    put("molecule_in_box.cif", _cif_text(h2o), "molecule_in_box")
    benzene = molecule("C6H6")
    benzene.center(vacuum=7.0)
    put("benzene_in_box.xyz", "", "molecule_in_box")
    ase_write(files / "benzene_in_box.extxyz", benzene, format="extxyz")
    (files / "benzene_in_box.xyz").unlink()
    del exp["benzene_in_box.xyz"]
    exp["benzene_in_box.extxyz"] = "molecule_in_box"
    chain = Atoms("C", positions=[[0, 6, 10]], cell=[1.3, 12, 20], pbc=True)
    put("carbon_chain.cif", _cif_text(chain), "vacuum_gap_in_plane")
    frag = _mos2()
    frag += Atoms(
        "H2", positions=[[0, 0, frag.positions[:, 2].max() + 4.2], [0.74, 0, frag.positions[:, 2].max() + 4.2]]
    )
    put("isolated_fragment.cif", _cif_text(frag), "isolated_fragment")
    single = Atoms("Au", positions=[[5, 5, 5]], cell=[10, 10, 10], pbc=True)
    put("single_atom_in_box.cif", _cif_text(single), "molecule_in_box")
    big = _mos2() * (58, 58, 1)  # 10,092 atoms
    put("huge_10000_atoms.extxyz", "", "too_many_atoms")
    ase_write(files / "huge_10000_atoms.extxyz", big, format="extxyz")

    # an ASE db with a broken row, and a labels CSV with wrong columns
    _broken_db(out / "broken_rows.db")
    (files / "labels.csv").write_text("colour,mood\nMoS2.cif,blue\n")
    exp["labels.csv"] = "bad_labels_csv"
    (out / "expected.json").write_text(json.dumps(exp, indent=1, ensure_ascii=False))
    return exp


def _structure_dict(matrix, species, frac) -> dict:
    return {
        "@module": "pymatgen.core.structure",
        "@class": "Structure",
        "charge": 0,
        "lattice": {"matrix": [[float(x) for x in row] for row in matrix]},
        "sites": [
            {
                "species": [{"element": str(sp), "occu": 1}],
                "abc": [float(x) for x in f],
                "label": str(sp),
                "properties": {},
            }
            for sp, f in zip(species, frac)
        ],
    }


def _partial_cif() -> str:
    s = Structure(
        Lattice.hexagonal(3.18, 23.13),
        [{"Mo": 0.5, "W": 0.5}, "S", "S"],
        [[0, 0, 0.5], [2 / 3, 1 / 3, 0.5677], [2 / 3, 1 / 3, 0.4323]],
    )
    return str(s.to(fmt="cif"))


def _bilayer() -> Atoms:
    one = _mos2(vacuum=20.0)
    two = one.copy()
    two.positions += [one.cell[0][0] / 3 + one.cell[1][0] * 2 / 3, one.cell[1][1] * 2 / 3, 6.15]
    both = one + two
    both.cell[2, 2] += 6.15
    return both


def _bilayer_graphene() -> Atoms:
    g = graphene("C2", a=2.46, vacuum=10.0)
    g2 = g.copy()
    g2.positions += [g.cell[0][0] / 3 + g.cell[1][0] / 3, g.cell[1][1] / 3, 3.35]
    both = g + g2
    both.cell[2, 2] += 3.35
    return both


def _broken_db(path: Path) -> None:
    from ase.db import connect

    if path.exists():
        path.unlink()
    with connect(str(path)) as db:
        for k in range(4):
            db.write(_mos2(), uid=f"good-{k}", ehull=0.0)
    con = sqlite3.connect(path)
    con.execute("UPDATE systems SET positions = ? WHERE id = 2", (b"\x01\x02garbage",))
    con.execute("UPDATE systems SET numbers = ? WHERE id = 3", (b"\xff",))
    con.commit()
    con.close()


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile")
    exp = make_corpus(out)
    print(f"wrote {len(exp)} inputs to {out}")
