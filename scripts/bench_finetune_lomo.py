#!/usr/bin/env python
"""Leave-one-material-out validation of a fine-tuned MLIP (``chgnet-her`` or ``sevennet-her``) against gen2d's DFT.

For every material (formula) with a DFT slab+H relaxation under ``--frames``, fine-tune the MLIP (``--calculator``:
CHGNet 0.3.0 or SevenNet-0) on the frames of all the other materials (with the usual replay set) and hold out every
frame of that material: its slab+H relaxations and its clean slab. Then compare ΔE_H = E(slab+H) − E(slab) − ½E(H₂)
at the held-out DFT geometries (the last frame of each relaxation), by DFT, the base model and the fold's
fine-tuned model. Pooled over the folds: MAE, bias, Spearman ρ and hit agreement (|ΔE_H + 0.27| ≤ 0.2 eV), each
model on the same geometries.

A relaxation that is still running contributes its latest frame: ΔE_H there is a DFT energy difference at a
DFT geometry, but not yet the relaxed ΔG_H of the reference set; the row says which frame it is.

Each fold's model is cached under ``--workdir`` by the fingerprints of its training frames and the options, so a
rerun only trains the folds whose data changed.

Usage (about 5 CPU-minutes of fine-tuning per material on one core for chgnet-her, about 20 for sevennet-her):
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_finetune_lomo.py --frames dft-runs/reference \\
        --workdir /tmp/lomo --out lomo.json
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/bench_finetune_lomo.py --calculator sevennet-her \\
        --frames dft-runs/reference --workdir /tmp/lomo --out lomo-sevennet.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def material_groups(frames) -> dict[str, list[str]]:
    """formula -> every (run/system) group of that material; only materials with a slab+H relaxation."""
    from gen2d.finetune import frame_group

    groups: dict[str, set[str]] = defaultdict(set)
    with_h: set[str] = set()
    for f in frames:
        formula = f.info.get("formula")
        if f.info.get("config_type") in ("slab", "slab+H") and formula:
            groups[formula].add(frame_group(f))
            if f.info["config_type"] == "slab+H":
                with_h.add(formula)
    return {m: sorted(g) for m, g in sorted(groups.items()) if m in with_h}


def fold_key(frames, held_out: list[str], options: dict) -> str:
    """sha256 (16 hex) of the training frames' fingerprints, the held-out groups and the options."""
    from gen2d.finetune import frame_fingerprint, frame_group

    train = sorted(frame_fingerprint(f) for f in frames if frame_group(f) not in set(held_out))
    blob = json.dumps({"train": train, "held_out": sorted(held_out), "options": options}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Backend:
    """What the benchmark needs of a fine-tunable MLIP: its base evaluator, its fine-tune, its fold evaluator."""

    def __init__(self, calculator: str):
        self.calculator = calculator
        if calculator == "chgnet-her":
            self.base_name, self.default_epochs = "CHGNet 0.3.0", 15
        elif calculator == "sevennet-her":
            self.base_name, self.default_epochs = "SevenNet-0 (11Jul2024)", None  # the plugin's default
        else:  # argparse's choices keep this unreachable from the command line
            raise ValueError(f"unknown calculator {calculator!r}")

    def options(self, epochs: int | None, threads: int, alignment: str = "host") -> dict:
        """The fine-tune options; they key the fold cache. ``alignment`` is named only when it is not the
        ``element`` fit the first folds were trained with (the plugins' default then), so their keys stay as they
        were; :meth:`finetune` passes ``alignment`` itself."""
        if self.calculator == "chgnet-her":
            out = {"epochs": epochs or self.default_epochs, "threads": threads, "base_model": "0.3.0"}
        else:
            from gen2d_sevennet_her.training import FinetuneOptions

            out = {
                "epochs": epochs or FinetuneOptions.model_fields["epochs"].default,
                "threads": threads,
                "base_model": "7net-0",
            }
        return out if alignment == "element" else {**out, "alignment": alignment}

    def base_evaluator(self):
        if self.calculator == "chgnet-her":
            from chgnet.model import CHGNet
            from gen2d_chgnet_her.training import chgnet_evaluator

            return chgnet_evaluator(CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False))
        from gen2d_sevennet_her import load_base_model
        from gen2d_sevennet_her.training import sevennet_evaluator

        net, config, _ = load_base_model("7net-0")
        return sevennet_evaluator(net, float(config["cutoff"]))

    def finetune(self, **options) -> None:
        if self.calculator == "chgnet-her":
            from gen2d_chgnet_her.training import finetune
        else:
            from gen2d_sevennet_her.training import finetune
        finetune(**options)

    def tuned_evaluator(self, model_dir: str):
        if self.calculator == "chgnet-her":
            from gen2d_chgnet_her import load_model
            from gen2d_chgnet_her.training import chgnet_evaluator

            return chgnet_evaluator(load_model(model_dir, "cpu")[0])
        from gen2d_sevennet_her import load_model
        from gen2d_sevennet_her.training import sevennet_evaluator

        net, _ = load_model(model_dir, "cpu")
        return sevennet_evaluator(net, float(net.cutoff))


def shifted_base(rows: list[dict]) -> list[float] | None:
    """The base model's ΔE_H of each row plus one constant: the mean DFT − base error of the *other* folds (each
    material once, the mean over its relaxations). A leave-one-material-out recalibration with a single parameter,
    the baseline a fine-tune has to beat. None with fewer than two folds."""
    from gen2d.metrics import leave_one_out_means

    names = list(dict.fromkeys(row["fold"] for row in rows))
    if len(names) < 2:
        return None
    error = [np.mean([r["dft_eV"] - r["base_eV"] for r in rows if r["fold"] == n]) for n in names]
    shift = dict(zip(names, leave_one_out_means(error)))
    return [r["base_eV"] + float(shift[r["fold"]]) for r in rows]


def summarise(rows: list[dict]) -> dict:
    """``pooled`` (MAE, bias, ρ, hit agreement over every row) and ``per_material`` (:func:`per_material_mae`) of a
    report's rows, for the base model, the fine-tuned one and, with two folds or more, ``shift``: the base model
    recalibrated by the other materials' mean error (:func:`shifted_base`)."""
    from gen2d.finetune import agreement

    dft = [r["dft_eV"] for r in rows]
    arms = {m: [r[f"{m}_eV"] for r in rows] for m in ("base", "tuned")}
    shifted = shifted_base(rows)
    if shifted is not None:
        arms["shift"] = shifted
    return {
        "pooled": {m: agreement(values, dft) for m, values in arms.items()},
        "per_material": per_material_mae(rows, arms),
    }


def print_summary(report: dict) -> None:
    print(f"pooled over {len(report['folds'])} fold(s), {len(report['rows'])} relaxations (eV):")
    for m, s in report["pooled"].items():  # shift: the base model plus the other materials' mean error
        rho = "n/a" if s.get("spearman_rho") is None else f"{s['spearman_rho']:.2f}"
        print(
            f"  {m:6s} MAE {s['mae_eV']:.3f}  bias {s['bias_eV']:+.3f}  ρ {rho}  per material "
            f"{report['per_material'][m]['mae_eV']:.3f}  hits agree {s['hits_agree']}/{s['n']} "
            f"(DFT hits {s['hits_ref']}, found {s['hits_both']})"
        )


def per_material_mae(rows: list[dict], arms: dict[str, list[float]]) -> dict:
    """{arm: {mae_eV, n_folds}}: the mean over folds of each fold's MAE (eV), so that a material with several
    relaxations counts once. ``arms`` maps a name to one value per row."""
    from gen2d.finetune import agreement

    names = list(dict.fromkeys(row["fold"] for row in rows))
    out = {}
    for m, values in arms.items():
        maes = [
            agreement(
                [v for v, r in zip(values, rows) if r["fold"] == n], [r["dft_eV"] for r in rows if r["fold"] == n]
            )["mae_eV"]
            for n in names
        ]
        out[m] = {"mae_eV": float(np.mean(maes)) if maes else None, "n_folds": len(maes)}
    return out


class FoldsDiffer(ValueError):
    """Fold reports that were not made the same way (model, options, DFT settings or frames) and cannot be pooled."""


def pool_reports(reports: list[dict]) -> dict:
    """One leave-one-material-out report from the reports of folds run apart (``--materials M --out M.json``).

    They must share the calculator, the options, the DFT settings hash and, where recorded, the frames' sha256, and
    hold each fold once; otherwise :class:`FoldsDiffer` says which. The pooled figures are those of one run over
    every row, plus ``per_material``: the mean over folds of each fold's MAE (eV), so that a material with several
    relaxations counts once."""
    if not reports:
        raise FoldsDiffer("no fold reports to pool")
    for key in ("calculator", "options", "settings_hash"):
        values = {json.dumps(r.get(key), sort_keys=True) for r in reports}
        if len(values) > 1:
            raise FoldsDiffer(f"the folds differ in {key}: {sorted(values)}")
    hashes = {r["frames_sha256"] for r in reports if r.get("frames_sha256")}
    if len(hashes) > 1:
        raise FoldsDiffer(f"the folds read different frames (frames_sha256 {sorted(hashes)})")
    folds = [f for r in reports for f in r["folds"]]
    names = [f["material"] for f in folds]
    repeated = sorted({m for m in names if names.count(m) > 1})
    if repeated:
        raise FoldsDiffer(f"folds given twice: {repeated}")
    rows = [row for r in reports for row in r["rows"]]
    first = reports[0]
    return {
        **{k: first[k] for k in ("what", "calculator", "base_model", "options", "settings_hash") if k in first},
        "frames_sha256": next(iter(hashes), None),
        "frames_sha256_missing": [f["material"] for r in reports if not r.get("frames_sha256") for f in r["folds"]],
        "commands": [r.get("command") for r in reports],
        "units": first.get("units"),
        "folds": folds,
        "rows": rows,
        **summarise(rows),
        "cpu_s": float(sum(f.get("cpu_s", 0.0) for f in folds)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", nargs="+", default=["dft-runs/reference"], help="DFT run folder(s)")
    ap.add_argument("--workdir", default="lomo-runs", help="one fine-tuned model per fold, cached")
    ap.add_argument(
        "--calculator", choices=["chgnet-her", "sevennet-her"], default="chgnet-her", help="the MLIP to fine-tune"
    )
    ap.add_argument(
        "--epochs", type=int, default=None, help="default: 15 for chgnet-her, the plugin's for sevennet-her"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--materials", nargs="*", default=None, help="only these folds (formulas)")
    ap.add_argument(
        "--alignment",
        choices=["host", "element"],
        default="host",
        help="DFT-to-MLIP energy alignment of the fine-tune (gen2d.finetune; the plugins' default is host)",
    )
    ap.add_argument(
        "--in-sample",
        action="store_true",
        help="one fine-tune on every frame instead of the folds: the ΔE_H it reaches on its own training data",
    )
    ap.add_argument(
        "--replay-per-epoch",
        type=int,
        default=None,
        help="replay frames drawn afresh per epoch (FinetuneOptions.replay_per_epoch; default all): bounds a fold's "
        "cost, which the replay set dominates once the frames span several elements",
    )
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument(
        "--pool",
        nargs="+",
        default=None,
        metavar="FOLD_JSON",
        help="train nothing: pool the reports of folds run apart (each --materials M --out M.json) into one, "
        "printed and written to --out",
    )
    args = ap.parse_args(argv)
    if args.pool:
        try:
            pooled = pool_reports([json.loads(open(p).read()) for p in args.pool])
        except FoldsDiffer as exc:
            print(f"cannot pool: {exc}", file=sys.stderr)
            return 2
        print_summary(pooled)
        if args.out:
            from gen2d.fileio import write_json_atomic

            write_json_atomic(args.out, pooled)
        return 0

    from gen2d.finetune import deduplicate_frames, delta_e_h_rows, frame_group, frames_sha256
    from gen2d.frames import collect_frames

    t0 = time.process_time()
    frames, summary = collect_frames(args.frames)
    frames, _ = deduplicate_frames(frames)
    hashes = sorted({f.info.get("settings_hash") for f in frames})
    if len(hashes) != 1:
        print(f"frames of {len(hashes)} DFT settings ({', '.join(map(str, hashes))}): give one", file=sys.stderr)
        return 2
    materials = material_groups(frames)
    if len(materials) < 2 and not args.in_sample:  # a fold trains on the others: count them all
        print(f"leave-one-material-out needs two materials with H; found {sorted(materials)}", file=sys.stderr)
        return 2
    if args.materials:
        unknown = sorted(set(args.materials) - set(materials))
        if unknown:
            print(f"no slab+H frames of {unknown}; materials with H: {sorted(materials)}", file=sys.stderr)
            return 2
        materials = {m: g for m, g in materials.items() if m in args.materials}
    backend = Backend(args.calculator)
    base_eval = backend.base_evaluator()
    options = backend.options(args.epochs, args.threads, args.alignment)
    if args.replay_per_epoch is not None:  # named only when set, so that the folds cached without it keep their keys
        options["replay_per_epoch"] = args.replay_per_epoch
    report: dict = {
        "what": f"leave-one-material-out: {backend.base_name} fine-tuned ({args.calculator}) without a material, "
        "ΔE_H on that material's DFT geometries",
        "calculator": args.calculator,
        "base_model": backend.base_name,
        "options": {**options, "alignment": args.alignment},
        "command": "scripts/bench_finetune_lomo.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings_hash": hashes[0],
        "frames": summary,
        # the fine-tune's own record of the frames, before any fold's split
        "frames_sha256": frames_sha256(frames),
        "units": {"*_eV": "eV, ΔE_H at the DFT geometries; ΔG_H = ΔE_H + 0.27", "cpu_s": "CPU seconds"},
        "folds": [],
    }
    rows = []
    folds = {"all": []} if args.in_sample else materials
    if args.in_sample:
        report["what"] = f"in-sample: {backend.base_name} fine-tuned ({args.calculator}) on every frame"
    for material, held_out in folds.items():
        key = fold_key(frames, held_out, options)
        out = Path(args.workdir) / f"{material}-{key}"
        t_fold = time.process_time()
        if not (out / "MANIFEST.json").is_file():
            # held out by formula as the fold's frames are read: a run folder of this material written after
            # this script collected its frames (a DFT queue beside it) stays out of training too
            split = {"val_formulas": [material]} if held_out else {"val_fraction": 0.0}
            backend.finetune(
                frames=args.frames, out=str(out), seed=0, **split, **{**options, "alignment": args.alignment}
            )
        fold_rows = delta_e_h_rows(
            [f for f in frames if args.in_sample or f.info.get("formula") in (material, "H2")],
            {"base": base_eval, "tuned": backend.tuned_evaluator(str(out))},
            {g: "held out" for g in held_out} if held_out else {frame_group(f): "in-sample" for f in frames},
        )
        for r in fold_rows:
            r["fold"] = material
        rows += fold_rows
        report["folds"].append(
            {"material": material, "held_out": held_out, "model": str(out), "cpu_s": time.process_time() - t_fold}
        )
        for r in fold_rows:
            print(
                f"{material:6s} {r['group']:34s} frame {r['frame']:3d}  DFT {r['dft_eV']:+.3f}  "
                f"base {r['base_eV']:+.3f}  tuned {r['tuned_eV']:+.3f}",
                flush=True,
            )
    report["rows"] = rows
    report.update(summarise(rows))
    report["cpu_s"] = time.process_time() - t0
    print_summary(report)
    if args.out:
        from gen2d.fileio import write_json_atomic

        write_json_atomic(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
