#!/usr/bin/env python
"""Benchmark the EGNN diffusion generator: denoising loss vs the trivial 1.0, sample metrics, throughput.

Usage (single thread, niced, on a shared CPU):

    OMP_NUM_THREADS=1 nice -n 10 python scripts/bench_generator.py --checkpoint CKPT \
        --n-samples 1000 --n-steps 100 --out bench.json

Prints every figure with its unit and writes them, with each metric's description, to ``--out``.
``--ship DIR`` also copies the checkpoint (without optimizer state) to DIR and writes DIR/MANIFEST.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch


def _log(msg: str) -> None:
    print(msg, flush=True)


def denoising_by_noise_level(bundle, records, seed: int = 7) -> dict:
    """Validation denoising loss, overall and in three bands of t, against the trivial value (predict zero
    noise) and the shrinkage one (the Wiener filter with each variable's mean and variance, no network)."""
    from gen2d.diffusion.loss import diffusion_loss, shrinkage_stats
    from gen2d.diffusion.train import collate, evaluate_denoising

    overall = evaluate_denoising(bundle, records, repeats=4, seed=seed, device="cpu")
    vocab_index = {s: i for i, s in enumerate(bundle.rep.vocab)}
    T = bundle.schedule.T
    bands = {}
    gen = torch.Generator().manual_seed(seed)
    stats = shrinkage_stats(collate(records, vocab_index), bundle.rep)
    for name, lo, hi in (("t<T/3", 0, T // 3), ("T/3<=t<2T/3", T // 3, 2 * T // 3), ("t>=2T/3", 2 * T // 3, T)):
        sums: dict[str, float] = {}
        n = 0
        with torch.no_grad():
            for start in range(0, len(records), 64):
                data = collate(records[start : start + 64], vocab_index)
                t = torch.randint(lo, hi, (data.n_graphs,), generator=gen)
                out = diffusion_loss(
                    bundle.model,
                    bundle.rep,
                    bundle.schedule,
                    data,
                    cond_dropout=1.0,
                    rotate=False,
                    generator=gen,
                    t=t,
                    shrinkage=stats,
                )
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * data.n_graphs
                n += data.n_graphs
        bands[name] = {
            k: v / n for k, v in sums.items() if k.startswith(("eps_", "ce_", "denoise", "trivial", "shrinkage"))
        }
    return {"overall": overall, "by_t": bands}


def _part_keys(losses: dict) -> list[str]:
    """The denoising parts of a loss dict; a model with absorbing-state types has ``ce_types`` (the masked
    atoms' cross-entropy over ln K) where a Gaussian-type one has ``eps_types``."""
    types = "ce_types" if "ce_types" in losses else "eps_types"
    return ["eps_frac", "eps_z", types, "eps_lattice"]


def throughput(bundle, sizes: list[int], n_structures: int, n_steps: int | None, seed: int = 0, base=None) -> dict:
    """Structures per second of a full reverse process at each atom count (one batch of n_structures),
    with the sampling settings of ``base`` (default: the sampler's defaults, geometry prior on)."""
    from gen2d.diffusion.sampler import SamplingConfig, sample

    out = {}
    for n_atoms in sizes:
        cfg = (base or SamplingConfig()).model_copy(update={"n_steps": n_steps, "max_atoms_per_batch": 10**9})
        t0, c0 = time.perf_counter(), time.process_time()
        sample(bundle, n_structures, seed, cfg, "cpu", n_atoms=[n_atoms] * n_structures)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        out[str(n_atoms)] = {
            "structures_per_s_wall": n_structures / wall,
            "structures_per_s_cpu": n_structures / cpu,
            "wall_s": wall,
            "cpu_s": cpu,
            "batch": n_structures,
            "steps": len(bundle.schedule.timesteps(n_steps)),
        }
        _log(
            f"  throughput {n_atoms:3d} atoms: {n_structures / cpu:.3f} structures/CPU-s "
            f"({n_structures / wall:.3f}/wall-s), {cpu:.1f} CPU-s for {n_structures} structures"
        )
    return out


def _last_logged_cpu(checkpoint: str) -> float | None:
    """CPU seconds from the training log next to the checkpoint (a run stopped between checkpoints
    has no final summary)."""
    log = Path(checkpoint).with_name("train_log.jsonl")
    if not log.exists():
        return None
    lines = log.read_text().splitlines()
    return json.loads(lines[-1]).get("cpu_seconds") if lines else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--config", default="configs/egnn.yaml", help="training config (data sources, split seed)")
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--n-steps", type=int, default=100, help="respaced reverse steps (None/0 = all T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", default="none", help="none, cfg, gradient or both")
    p.add_argument("--n-template", type=int, default=0, help="extra samples from template starts")
    p.add_argument("--template-t-start", type=float, default=0.2, help="fraction of T template starts are noised to")
    p.add_argument("--throughput-sizes", default="8,16,32,60")
    p.add_argument("--throughput-batch", type=int, default=8)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-training-validity", action="store_true")
    p.add_argument(
        "--no-geometry-prior",
        action="store_true",
        help="the bare model: switch off the sampler's overlap / lone-atom projection (and so the "
        "periodic shrink, which needs it)",
    )
    p.add_argument(
        "--no-composition-prior",
        action="store_true",
        help="switch off charge-balanced type decoding (the per-atom argmax of the model)",
    )
    p.add_argument("--out", default="bench_generator.json")
    p.add_argument("--ship", default=None, help="copy checkpoint + MANIFEST.json to this folder")
    p.add_argument("--train-command", default="", help="the command that trained the checkpoint (for the manifest)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    from gen2d_egnn import sampling_config

    from gen2d.diffusion.sampler import sample, template_starts
    from gen2d.diffusion.train import (
        TrainConfig,
        export_for_sampling,
        load_checkpoint,
        load_training_set,
        split_records,
    )
    from gen2d.metrics import evaluate_samples

    n_steps = args.n_steps or None
    bundle, payload = load_checkpoint(args.checkpoint, "cpu")
    raw = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    train_cfg = (
        TrainConfig(**{**payload["meta"].get("config", {}), **{"progress": False}})
        if payload["meta"].get("config")
        else TrainConfig(**raw.get("train", {}))
    )
    records, dropped = load_training_set(train_cfg)
    # the checkpoint's own split: with a formula hold-out, its validation formulas were never trained on
    train_set, val = split_records(
        records, train_cfg.seed, train_cfg.val_fraction, getattr(train_cfg, "holdout_formulas_fraction", None)
    )
    report: dict = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_sha256": bundle.sha256,
        "train_steps": payload.get("step"),
        "train_meta": {
            k: payload["meta"].get(k)
            for k in ("n_train", "n_val", "dropped", "sources", "train_seconds", "train_cpu_seconds")
        },
        "schedule": bundle.schedule.to_dict(),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.now(UTC).isoformat(),
    }
    _log(
        f"checkpoint {args.checkpoint} sha256 {bundle.sha256[:12]}, step {payload.get('step')}, "
        f"train {len(train_set)} / val {len(val)} monolayers"
    )

    t0 = time.process_time()
    den = denoising_by_noise_level(bundle, val)
    report["denoising_validation"] = den
    o = den["overall"]

    def refs(v: dict, part: str) -> str:
        return f" (trivial {v['trivial_' + part]:.3f}, shrinkage {v['shrinkage_' + part]:.3f})"

    _log(
        f"denoising loss on {len(val)} held-out monolayers (trivial = predict zero noise; shrinkage = the "
        f"Wiener filter with each variable's mean and variance, no network): {o['denoise']:.3f}"
        + refs(o, "denoise")
        + "; parts: "
        + ", ".join(f"{k.split('_', 1)[1]} {o[k]:.3f}" + refs(o, k.split("_", 1)[1]) for k in _part_keys(o))
        + f" [{time.process_time() - t0:.0f} CPU-s]"
    )
    for band, v in den["by_t"].items():
        _log(
            f"  {band:>12}: denoise {v['denoise']:.3f}"
            + refs(v, "denoise")
            + "; "
            + ", ".join(f"{k.split('_', 1)[1]} {v[k]:.3f}" + refs(v, k.split("_", 1)[1]) for k in _part_keys(v))
        )

    # novelty is judged against every monolayer of the sources, also when training kept only the strictly
    # valid ones (a stricter reference, and the same one as for a model trained on all of them)
    ref_records = records
    if getattr(train_cfg, "strict_valid_only", False):
        ref_records, _ = load_training_set(train_cfg.model_copy(update={"strict_valid_only": False}))
    reference = [r.to_structure() for r in ref_records]
    report["novelty_reference_n"] = len(reference)
    if not args.skip_training_validity:
        from gen2d.metrics import SMACTValidity, StrictValidity

        t0 = time.process_time()
        sv, sm = StrictValidity()(reference), SMACTValidity()(reference)
        report["training_set_reference"] = {
            "strict_2d_validity": sv.value,
            "smact_validity": sm.value,
            "n": len(reference),
            "strict_reasons": sv.details["reasons"],
        }
        _log(
            f"training set itself: strict 2D validity {sv.value:.3f}, SMACT validity {sm.value:.3f} "
            f"(n={len(reference)}) [{time.process_time() - t0:.0f} CPU-s]"
        )

    cfg = sampling_config(args.guidance, n_steps=n_steps)
    if args.no_geometry_prior:
        cfg = cfg.model_copy(update={"overlap_scale": 0.0, "fragment_scale": 0.0})
    report["geometry_prior"] = {
        k: getattr(cfg, k)
        for k in (
            "overlap_scale",
            "fragment_scale",
            "projection_from",
            "projection_iterations",
            "periodic_scale",
            "periodic_from",
        )
    }
    _log(f"geometry prior: {report['geometry_prior']}")
    if args.no_composition_prior:
        cfg = cfg.model_copy(update={"charge_balance": False})
    report["composition_prior"] = {k: getattr(cfg, k) for k in ("charge_balance", "composition_from")}
    _log(f"composition prior: {report['composition_prior']}")
    if args.n_samples > 0:  # 0: only templates and/or throughput
        t0, c0 = time.perf_counter(), time.process_time()
        samples = sample(bundle, args.n_samples, args.seed, cfg, "cpu")
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        _log(
            f"sampled {len(samples)} free-start monolayers ({len(bundle.schedule.timesteps(n_steps))} steps, "
            f"guidance {args.guidance}) in {cpu:.0f} CPU-s / {wall:.0f} wall-s"
        )
        structures = [s.to_structure() for s in samples]
        t0 = time.process_time()
        metrics = evaluate_samples(structures, reference, [s.predicted for s in samples])
        report["free_start"] = {
            "n": len(samples),
            "n_steps": len(bundle.schedule.timesteps(n_steps)),
            "guidance": args.guidance,
            "sampling_cpu_s": cpu,
            "sampling_wall_s": wall,
            "metrics": metrics,
        }
        for name, m in metrics.items():
            val_s = "n/a" if m["value"] is None else f"{m['value']:.3f}"
            _log(f"  {name}: {val_s} {m['unit']} (n={m['n']})")
        _log(f"  strict failure reasons: {metrics['strict_2d_validity']['details']['reasons']}")
        _log(f"  [metrics {time.process_time() - t0:.0f} CPU-s]")

    if args.n_template:
        from gen2d.data import templates as tmpl

        names = tmpl.list_templates()
        reps = max(1, args.n_template // len(names))
        starts, skipped = template_starts(bundle, names, repeats=reps)
        tcfg = cfg.model_copy(update={"template_t_start": args.template_t_start})
        ts = sample(bundle, 0, args.seed, tcfg, "cpu", starts=starts)
        tstruct = [s.to_structure() for s in ts]
        tm = evaluate_samples(tstruct, reference, [s.predicted for s in ts])
        report["template_start"] = {"n": len(ts), "skipped": skipped, "t_start": args.template_t_start, "metrics": tm}
        _log(f"template starts ({len(ts)} samples, {len(skipped)} templates skipped: {sorted(skipped)}):")
        for name, m in tm.items():
            val_s = "n/a" if m["value"] is None else f"{m['value']:.3f}"
            _log(f"  {name}: {val_s} {m['unit']} (n={m['n']})")

    if not args.skip_throughput:
        sizes = [int(x) for x in args.throughput_sizes.split(",")]
        report["throughput"] = throughput(bundle, sizes, args.throughput_batch, n_steps, base=cfg)

    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    _log(f"wrote {args.out}")

    if args.ship:
        ship = Path(args.ship)
        dst = export_for_sampling(args.checkpoint, ship / "egnn_diffusion.pt")
        from gen2d.scoring import file_sha256

        manifest = {
            "model": "gen2d EGNN diffusion generator",
            "file": dst.name,
            "sha256": file_sha256(dst),
            "size_bytes": dst.stat().st_size,
            "date": datetime.now(UTC).isoformat(),
            "data": {
                "sources": train_cfg.sources,
                "n_train": len(train_set),
                "n_val": len(val),
                "dropped": dropped,
                "licenses": "2DMatPedia CC BY 4.0 (Zhou et al. 2019); MC2D CC BY 4.0 (Mounet et al. 2018)",
            },
            "command": args.train_command,
            "train_steps": payload.get("step"),
            "train_seconds": payload["meta"].get("train_seconds"),
            "train_cpu_seconds": payload["meta"].get("train_cpu_seconds") or _last_logged_cpu(args.checkpoint),
            "schedule": bundle.schedule.to_dict(),
            "benchmark_command": "python " + " ".join([Path(__file__).name, *(argv or sys.argv[1:])]),
            "metrics": {
                "denoising_validation": {
                    k: o[k]
                    for k in (
                        "denoise",
                        "trivial_denoise",
                        "eps_frac",
                        "eps_z",
                        "eps_types",
                        "ce_types",
                        "eps_lattice",
                        "trivial_frac",
                        "trivial_z",
                        "trivial_types",
                        "trivial_lattice",
                        "shrinkage_denoise",
                        "shrinkage_frac",
                        "shrinkage_z",
                        "shrinkage_types",
                        "shrinkage_lattice",
                    )
                    if k in o
                },
                "free_start": {
                    k: {"value": v["value"], "unit": v["unit"], "n": v["n"], "description": v["description"]}
                    for k, v in metrics.items()
                },
                "free_start_n_steps": len(bundle.schedule.timesteps(n_steps)),
                "free_start_strict_reasons": metrics["strict_2d_validity"]["details"]["reasons"],
                "free_start_sampling_cpu_s": report["free_start"]["sampling_cpu_s"],
                "geometry_prior": report["geometry_prior"],
                "composition_prior": report["composition_prior"],
                **(
                    {
                        "template_start": {
                            "t_start": args.template_t_start,
                            **{
                                k: {"value": v["value"], "unit": v["unit"], "n": v["n"]}
                                for k, v in report["template_start"]["metrics"].items()
                            },
                        }
                    }
                    if "template_start" in report
                    else {}
                ),
                **({"throughput": report["throughput"]} if "throughput" in report else {}),
            },
        }
        (ship / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, default=str))
        _log(f"shipped {dst} ({dst.stat().st_size / 1e6:.2f} MB) and {ship / 'MANIFEST.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
