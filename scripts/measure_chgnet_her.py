#!/usr/bin/env python
"""Measure the fine-tuned CHGNet (calculator ``chgnet-her``) against its base model and against DFT.

Prints, and writes as JSON with units and descriptions:

1. energy MAE (meV/atom) and force MAE (eV/Å) of the base and the fine-tuned model on the DFT frames used for
   training, held out for validation, and added to the DFT folder after training;
2. ΔE_H of every DFT slab+H relaxation (its last frame, the clean slab, H₂; all at the DFT geometries):
   DFT, base, fine-tuned; each row says whether its frames were in training (in-sample) or not;
3. replay drift: the fine-tuned model against the base model's own labels on the replay set (shipped hull
   reference phases, database layers, the DFT slabs without H), training and held-out structures;
4. E_hull of a handful of monolayers at their stored geometry (MC2D, DFT-relaxed) against the shipped
   reference phases at theirs, base and fine-tuned model on the same geometries: the shift is the model alone;
5. (unless --skip-relaxed) the ``dgh.mlip`` recipe end to end: relax the layer in-plane, put H on top sites of a
   3x3 cell, relax it; best-site ΔG_H of MoS₂ and graphene with each model.

Usage (a few minutes of one CPU core):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/measure_chgnet_her.py \\
        --frames dft-runs/reference --out src/gen2d/assets/chgnet_her/measured.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

#: monolayers of the E_hull check: MC2D entries by db_id (formula, prototype) within the shipped reference space
HULL_LAYERS = {
    "644259": "MoS2 (2H)",
    "26622": "MoS2 (1T)",
    "644346": "MoSe2 (2H)",
    "9012192": "WS2 (2H)",
    "9012193": "WSe2 (2H)",
    "9009147": "MoTe2 (2H)",
    "9000046": "graphene",
    "1010275": "TiS2 (1T)",
    "76576": "NbSe2 (1T)",
    "9011539": "TaS2 (1T)",
}
#: the dgh.mlip recipe's layers (MC2D db_id) for the relaxed ΔG_H
RELAXED_LAYERS = {"644259": "MoS2 (2H)", "9000046": "graphene"}


def _stats(errors: list[float]) -> float | None:
    return float(np.mean(errors)) if errors else None


def frame_errors(frames, evaluate, shift) -> dict:
    """Energy MAE (meV/atom) against DFT on the MLIP scale and force MAE (eV/Å)."""
    if not frames:
        return {"n": 0}
    labels = evaluate(frames)
    e = [abs(en - (f.info["energy"] - shift.of(f))) / len(f) * 1000 for f, (en, _) in zip(frames, labels)]
    fe = [np.abs(fc - f.arrays["forces"]).ravel() for f, (_, fc) in zip(frames, labels) if "forces" in f.arrays]
    out = {"n": len(frames), "energy_mae_mev_per_atom": _stats(e)}
    if fe:
        out["force_mae_ev_per_a"] = float(np.mean(np.concatenate(fe)))
    return out


def hull_rows(evaluators, data_dir: Path) -> list[dict]:
    """E_hull at stored geometry, each model on the layer and on the shipped reference phases (MP2020)."""
    from gen2d.data.readers import load_mc2d_entries, mc2d_entry_to_structure
    from gen2d.finetune import reference_replay_structures
    from gen2d.hull import apply_mp2020, hull_analysis, mlip_entry
    from gen2d.structures import orient_2d, to_ase

    entries = {str(e["db_id"]): e for e in load_mc2d_entries(data_dir / "mc2d_258_exfoliable.json")}
    rows = []
    for db_id, label in HULL_LAYERS.items():
        if db_id not in entries:
            continue
        layer = orient_2d(mc2d_entry_to_structure(entries[db_id]))  # one whole layer in the middle of the cell
        elements = sorted({el.symbol for el in layer.composition.elements})
        refs = reference_replay_structures(elements)
        row = {"layer": label, "mc2d_db_id": db_id, "n_reference_phases": len(refs)}
        for name, ev in evaluators.items():
            atoms = [to_ase(layer)] + [_bulk_atoms(s) for _, s in refs]
            energies = [e for e, _ in ev(atoms)]
            cand = apply_mp2020(mlip_entry(layer, energies[0], model=name))
            ref_entries = [
                apply_mp2020(mlip_entry(s, e, model=name, entry_id=i)) for (i, s), e in zip(refs, energies[1:])
            ]
            res = hull_analysis(cand, ref_entries, provider="shipped mlip-prototypes phases at stored geometry")
            row[f"{name}_e_hull_eV_per_atom"] = res.e_hull
        row["shift_meV_per_atom"] = 1000 * (row["tuned_e_hull_eV_per_atom"] - row["base_e_hull_eV_per_atom"])
        rows.append(row)
    return rows


def _bulk_atoms(structure):
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def relaxed_dg_h(calculators, data_dir: Path) -> list[dict]:
    """The dgh.mlip recipe (in-plane relaxation, then H on top sites of a ≥ 9 Å cell, relaxed) per model."""
    from gen2d.adsorption import AdsorptionSettings, adsorb_h
    from gen2d.data.readers import load_mc2d_entries, mc2d_entry_to_structure
    from gen2d.relax import relax_in_plane
    from gen2d.structures import from_ase, orient_2d, to_ase

    entries = {str(e["db_id"]): e for e in load_mc2d_entries(data_dir / "mc2d_258_exfoliable.json")}
    settings = AdsorptionSettings(min_inplane_length=9.0, site_kinds=("ontop",))
    rows = []
    for db_id, label in RELAXED_LAYERS.items():
        row = {"layer": label, "settings": "H on top sites, 3x3 cell (in-plane >= 9 Å), FIRE fmax 0.05 eV/Å"}
        for name, calc in calculators.items():
            t0 = time.process_time()
            atoms = to_ase(orient_2d(mc2d_entry_to_structure(entries[db_id])))
            relaxed = relax_in_plane(atoms, calc, fmax=0.05, steps=500)
            res = adsorb_h(orient_2d(from_ase(relaxed.atoms)), calc, settings)
            best = res.best
            row[f"{name}_dg_h_eV"] = None if best is None else best.delta_g_h
            row[f"{name}_site"] = None if best is None else f"{best.face} {best.kind} on {best.nearest_atom}"
            row[f"{name}_cpu_s"] = time.process_time() - t0
        rows.append(row)
    return rows


def load_run(model_dir: Path, frames_root: str):
    """Manifest, reference shift and the DFT frames split as the model saw them (by frame fingerprint)."""
    from gen2d.finetune import ReferenceShift, deduplicate_frames, frame_fingerprint, frame_group
    from gen2d.frames import collect_frames

    manifest = json.loads((model_dir / "MANIFEST.json").read_text())
    shift = ReferenceShift.from_dict(manifest["data"]["shift"])
    frames, _ = collect_frames([frames_root])
    frames, _ = deduplicate_frames(frames)
    frames = [f for f in frames if f.info.get("settings_hash") == manifest["data"]["settings_hash"]]
    train_fp, val_fp = set(manifest["data"]["frames"]["train"]), set(manifest["data"]["frames"]["val"])
    split = {"train": [], "val": [], "added after training": []}
    for f in frames:
        fp = frame_fingerprint(f)
        split["train" if fp in train_fp else "val" if fp in val_fp else "added after training"].append(f)
    groups = {}
    for name in ("train", "val"):
        for f in split[name]:
            groups.setdefault(frame_group(f), "in-sample (training)" if name == "train" else "held out (validation)")
    return manifest, shift, frames, split, groups


def dft_report(frames, split, groups, evaluators, shift, title: str) -> dict:
    from gen2d.finetune import delta_e_h_rows

    """Sections 1 and 2: errors on the DFT frames of each split and ΔE_H at the DFT geometries."""
    out: dict = {"dft_frames": {}}
    print(f"1. DFT frames{title}: energy MAE (meV/atom), force MAE (eV/Å), base -> tuned")
    for name, fs in split.items():
        row = {m: frame_errors(fs, ev, shift) for m, ev in evaluators.items()}
        out["dft_frames"][name] = row
        if fs:
            b, t = row["base"], row["tuned"]
            print(
                f"  {name:22s} n={len(fs):3d}  energy {b['energy_mae_mev_per_atom']:6.1f} -> "
                f"{t['energy_mae_mev_per_atom']:6.1f}   forces {b.get('force_mae_ev_per_a', float('nan')):.3f} -> "
                f"{t.get('force_mae_ev_per_a', float('nan')):.3f}"
            )
    print(f"2. ΔE_H at the DFT geometries{title} (eV)")
    out["delta_e_h"] = delta_e_h_rows(frames, evaluators, groups)
    for r in out["delta_e_h"]:
        print(
            f"  {r['formula']:5s} {r['group']:34s} DFT {r['dft_eV']:+.3f}  base {r['base_eV']:+.3f}  "
            f"tuned {r['tuned_eV']:+.3f}   [{r['split']}]"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="fine-tuned model folder (default: the shipped one)")
    ap.add_argument("--frames", default="dft-runs/reference", help="DFT run folder(s) the model was trained on")
    ap.add_argument(
        "--validation-model",
        action="append",
        default=[],
        help="a model made with the same recipe but with relaxations held out (val_systems=...): sections 1 and "
        "2 for it too, under validation_runs (repeatable)",
    )
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--skip-relaxed", action="store_true", help="skip the relaxed dgh.mlip recipe (section 5)")
    args = ap.parse_args(argv)

    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator
    from gen2d_chgnet_her import checkpoint_path, default_model_dir, load_model
    from gen2d_chgnet_her.training import chgnet_evaluator

    from gen2d.finetune import (
        FinetuneDataSettings,
        dehydrogenated_slabs,
        label_replay,
        layer_replay_structures,
        reference_replay_structures,
    )
    from gen2d.settings import get_settings

    t_start = time.process_time()
    model_dir = Path(args.model) if args.model else default_model_dir()
    manifest, shift, frames, split, groups = load_run(model_dir, args.frames)
    base = CHGNet.load(model_name=manifest["base_model"]["chgnet_model"], use_device="cpu", verbose=False)
    tuned, _ = load_model(str(model_dir), "cpu")
    evaluators = {"base": chgnet_evaluator(base), "tuned": chgnet_evaluator(tuned)}
    data_dir = Path(get_settings().data_dir)

    report: dict = {
        "what": "chgnet-her (fine-tuned CHGNet) against its base model and against DFT",
        "command": "scripts/measure_chgnet_her.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": {
            "checkpoint": "gen2d/assets/chgnet_her/chgnet_her.pt (shipped)"
            if args.model is None
            else str(checkpoint_path(args.model)),
            "sha256": manifest["sha256"],
        },
        "base_model": manifest["base_model"]["name"],
        "frames": args.frames,
        "units": {
            "energy_mae_mev_per_atom": "meV/atom against DFT on the base model's scale (manifest reference shift)",
            "force_mae_ev_per_a": "eV/Å per force component",
            "drift": "fine-tuned against the base model's labels (meV/atom, eV/Å)",
            "delta_e_h": "eV, at the DFT geometries of slab+H, slab and H₂",
            "e_hull": "eV/atom (shift in meV/atom), MP2020 with gen2d's chalcogen rule",
            "dg_h": "eV, ΔE_H + 0.27",
        },
    }
    report.update(dft_report(frames, split, groups, evaluators, shift, ""))
    print("3. replay drift, fine-tuned vs base (meV/atom, eV/Å)")
    held = ("val_systems", "val_formulas")
    s = FinetuneDataSettings(**{k: v for k, v in manifest["data"]["settings"].items() if k not in held})
    elements = manifest["data"]["elements"]
    items = reference_replay_structures(elements) if s.replay_references else []
    items += layer_replay_structures(elements, s.replay_layers, s.seed, s.data_dir, s.replay_layer_max_atoms)[0]
    if s.replay_dehydrogenated_every > 0:
        items += dehydrogenated_slabs(split["train"], s.replay_dehydrogenated_every)
    replay = label_replay(items, evaluators["base"], s.replay_rattle, s.replay_n_rattled, s.seed)
    val_ids = set(manifest["data"]["replay_val_ids"])
    report["replay_drift"] = {}
    for name, fs in (
        ("train", [f for f in replay if f.info["replay_id"] not in val_ids]),
        ("held out", [f for f in replay if f.info["replay_id"] in val_ids]),
    ):
        if not fs:
            continue
        labels = evaluators["tuned"](fs)
        signed = [(e - f.info["target_energy"]) / len(f) * 1000 for f, (e, _) in zip(fs, labels)]
        de = [abs(x) for x in signed]
        df = np.concatenate([np.abs(fc - f.arrays["forces"]).ravel() for f, (_, fc) in zip(fs, labels)])
        report["replay_drift"][name] = {
            "n": len(fs),
            "energy_drift_mae_mev_per_atom": _stats(de),
            "energy_drift_max_mev_per_atom": float(np.max(de)),
            "energy_drift_mean_signed_mev_per_atom": _stats(signed),
            "force_drift_mae_ev_per_a": float(np.mean(df)),
            # where forgetting is worst: the replay structures whose energy moved most
            "largest": [
                {
                    "replay_id": fs[i].info["replay_id"],
                    "formula": fs[i].get_chemical_formula(),
                    "n_atoms": len(fs[i]),
                    "energy_drift_mev_per_atom": float(signed[i]),
                }
                for i in np.argsort(de)[::-1][:3]
            ],
        }
        r = report["replay_drift"][name]
        print(
            f"  {name:10s} n={len(fs):3d}  energy MAE {r['energy_drift_mae_mev_per_atom']:.1f} "
            f"(max {r['energy_drift_max_mev_per_atom']:.1f}, mean signed {r['energy_drift_mean_signed_mev_per_atom']:+.1f})"
            f"  forces {r['force_drift_mae_ev_per_a']:.3f}"
        )
        for w in r["largest"]:
            print(f"    {w['energy_drift_mev_per_atom']:+7.1f} meV/atom  {w['formula']:12s} {w['replay_id']}")

    print("4. E_hull at stored geometry (eV/atom), base -> tuned")
    report["e_hull"] = hull_rows(evaluators, data_dir)
    for r in report["e_hull"]:
        print(
            f"  {r['layer']:12s} {r['base_e_hull_eV_per_atom']:+.4f} -> {r['tuned_e_hull_eV_per_atom']:+.4f}  "
            f"({r['shift_meV_per_atom']:+.1f} meV/atom, {r['n_reference_phases']} phases)"
        )
    shifts = [abs(r["shift_meV_per_atom"]) for r in report["e_hull"]]
    if shifts:
        report["e_hull_shift_summary"] = {"mean_abs_meV_per_atom": _stats(shifts), "max_abs_meV_per_atom": max(shifts)}
        print(f"  |shift| mean {np.mean(shifts):.1f}, max {max(shifts):.1f} meV/atom")

    if not args.skip_relaxed:
        print("5. dgh.mlip recipe, relaxed by each model: best-site ΔG_H (eV)")
        calcs = {
            "base": CHGNetCalculator(model=base, use_device="cpu"),
            "tuned": CHGNetCalculator(model=tuned, use_device="cpu"),
        }
        report["relaxed_dg_h"] = relaxed_dg_h(calcs, data_dir)
        for r in report["relaxed_dg_h"]:
            print(
                f"  {r['layer']:10s} base {r['base_dg_h_eV']:+.3f} ({r['base_site']})  tuned {r['tuned_dg_h_eV']:+.3f} ({r['tuned_site']})"
            )
    report["validation_runs"] = []
    for vpath in args.validation_model:
        vdir = Path(vpath)
        vman, vshift, vframes, vsplit, vgroups = load_run(vdir, args.frames)
        vtuned, _ = load_model(str(vdir), "cpu")
        vevals = {"base": evaluators["base"], "tuned": chgnet_evaluator(vtuned)}
        held_out = ", ".join(vman["data"]["val_groups"])
        report["validation_runs"].append(
            {
                "what": "the same recipe with val_groups held out: figures on frames the model never saw",
                "model_sha256": vman["sha256"],
                "train_command": vman["command"],
                "date": vman["date"],
                "val_groups": vman["data"]["val_groups"],
                **dft_report(vframes, vsplit, vgroups, vevals, vshift, f" (validation run, held out: {held_out})"),
            }
        )
    report["cpu_seconds"] = time.process_time() - t_start
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
