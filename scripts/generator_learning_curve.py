#!/usr/bin/env python
"""Learning curve of the EGNN diffusion generator: validity and held-out denoising loss against data.

Reads the training sources once, holds out a share of the reduced formulas (the same validation set
for every point), then for each fraction of the training split trains a fresh model for the same
number of steps and reports the held-out denoising loss (with the trivial and shrinkage references on
the same noise draws) and the strict and SMACT validity of free, unguided samples, from the same model and
the same seed twice: the bare network (every sampler prior off) and the sampler as configured (``sample:``
section of ``--config``, geometry and composition priors on). ``--out`` is rewritten after every point.

Usage (the full curve is hours of CPU; run it when the machine is free, or on a GPU with --device cuda):

    OMP_NUM_THREADS=1 nice -n 10 python scripts/generator_learning_curve.py \
        --fractions 0.1 0.25 0.5 1.0 --steps 3000 --samples 200 --out learning_curve.json

A smoke test: ``--fractions 0.5 1.0 --steps 2 --samples 2 --sample-steps 5 -o max_records=24 -o hidden=16``.
Each point's run goes to ``--work-dir/frac-<f>`` and is resumed when it is there; a point already in ``--out``
(same fraction, training and sampling settings, and number of samples) is kept and not redone, so a stopped curve goes on where it stopped.
``-s KEY=VALUE`` changes the configured sampler; the bare column always has the priors off.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES = ["2dmatpedia_filtered.db", "mc2d_258_exfoliable.json", "paddle2d", "2dmatpedia_all_poscars.tgz"]

METRICS = {
    "n_train": "training monolayers at this fraction (the same held-out formulas for every point)",
    "val_denoise": "held-out denoising loss (mean of the four noise-prediction parts; predicting zero scores "
    "about 1.0), 4 repeats at uniformly drawn t, the same draws for every point",
    "val_trivial_denoise": "the same loss for a zero prediction, on the same draws",
    "val_shrinkage_denoise": "the same loss for the best denoiser that knows only each variable's mean and "
    "variance over the held-out set (no network); only the gap below it is learned",
    "strict_validity": "fraction of free unguided samples that pass gen2d.structures.validate_strict "
    "(one connected layer, periodic in both in-plane directions, bounded thickness), sampler as configured",
    "smact_validity": "fraction of the same samples whose composition passes gen2d.metrics.SMACTValidity",
    "strict_failures": "count of each strict-check failure reason over the samples",
    "bare": "the same figures for the bare network: every sampler prior off (overlap_scale, fragment_scale and "
    "periodic_scale 0, charge_balance false), the same model, seed and number of samples",
    "train_seconds": "s, wall time of the training loop",
}


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


#: the sampler with every prior off: what the network alone draws
BARE = {"overlap_scale": 0.0, "fragment_scale": 0.0, "periodic_scale": 0.0, "charge_balance": False}


def _validity(bundle, n: int, seed: int, config, device: str) -> dict:
    """Strict and SMACT validity (and strict failure reasons) of ``n`` free samples."""
    from gen2d.diffusion.sampler import sample
    from gen2d.metrics import SMACTValidity, StrictValidity

    structures = [s.to_structure() for s in sample(bundle, n, seed=seed, config=config, device=device)]
    strict = StrictValidity()(structures)
    return {
        "n_samples": len(structures),
        "strict_validity": strict.value,
        "smact_validity": SMACTValidity()(structures).value,
        "strict_failures": strict.details["reasons"],
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    ap.add_argument("--steps", type=int, default=3000, help="training steps per point (the same for all)")
    ap.add_argument("--samples", type=int, default=200, help="free samples per point for validity")
    ap.add_argument("--sample-steps", type=int, default=200, help="reverse steps per sample (respaced)")
    ap.add_argument("--holdout", type=float, default=0.05, help="share of reduced formulas held out")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "egnn.yaml")
    ap.add_argument("--sources", nargs="+", default=DEFAULT_SOURCES)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--option", action="append", default=[], help="TrainConfig KEY=VALUE (YAML value)")
    ap.add_argument("-s", "--sampling-option", action="append", default=[], help="SamplingConfig KEY=VALUE")
    ap.add_argument("--work-dir", type=Path, default=Path("runs/learning_curve"))
    ap.add_argument("--out", type=Path, default=Path("learning_curve.json"))
    args = ap.parse_args()

    from gen2d.diffusion.sampler import SamplingConfig
    from gen2d.diffusion.train import TrainConfig, load_checkpoint, load_training_set, train

    raw = yaml.safe_load(args.config.read_text()) or {}
    fields = dict(raw.get("train", raw))
    fields.update(
        sources=args.sources,
        strict_valid_only=True,
        holdout_formulas_fraction=args.holdout,
        max_steps=args.steps,
        max_minutes=None,
        max_cpu_minutes=None,
        device=args.device,
        seed=args.seed,
        progress=False,
        checkpoint_every=max(args.steps // 4, 1),
    )
    fields.update(_options(args.option))
    base = TrainConfig(**fields)
    sampling = SamplingConfig(**{**(raw.get("sample") or {}), "n_steps": args.sample_steps})
    sampling = sampling.model_copy(update=_options(args.sampling_option))
    bare = sampling.model_copy(update=BARE)
    done = {}
    prior = json.loads(args.out.read_text()) if args.out.is_file() else {}
    # a stopped curve: keep the points it finished, only where training and sampling were set up the same way
    if prior.get("train_config") == base.model_dump(mode="json") and prior.get(
        "sampling_config"
    ) == sampling.model_dump(mode="json"):
        done = {p["fraction"]: p for p in prior.get("points", []) if p.get("n_samples") == args.samples and "bare" in p}

    t0 = time.monotonic()
    source_stats: dict = {}
    records, dropped = load_training_set(base, source_stats)
    read_seconds = time.monotonic() - t0
    print(f"read {len(records)} monolayers in {read_seconds:.0f} s; dropped {dropped}", flush=True)

    points = []

    def write() -> None:
        doc = {
            "what": "EGNN diffusion generator learning curve: fixed steps per point, nested training subsets, "
            "one formula-held-out validation set",
            "date": datetime.now(UTC).isoformat(),
            "git_commit": _git_commit(),
            "metrics": METRICS,
            "train_config": base.model_dump(mode="json"),
            "sampling_config": sampling.model_dump(mode="json"),
            "bare_sampling_config": bare.model_dump(mode="json"),
            "sources": source_stats,
            "dropped": dropped,
            "n_records": len(records),
            "read_seconds": read_seconds,
            "points": points,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")

    for fraction in sorted(args.fractions):
        if fraction in done:
            points.append(done[fraction])
            print(f"fraction {fraction:g}: kept from {args.out}", flush=True)
            continue
        out_dir = args.work_dir / f"frac-{fraction:g}"
        cfg = base.model_copy(update={"train_fraction": fraction, "out_dir": str(out_dir)})
        summary = train(cfg, records=records)
        bundle, _ = load_checkpoint(summary["checkpoint"], args.device)
        t1 = time.process_time()
        with_priors = _validity(bundle, args.samples, args.seed, sampling, args.device)
        bare_figures = _validity(bundle, args.samples, args.seed, bare, args.device)
        val = summary.get("val", {})
        point = {
            "fraction": fraction,
            "n_train": summary["n_train"],
            "n_val": summary["n_val"],
            "steps": summary["steps"],
            "val_denoise": val.get("denoise"),
            "val_trivial_denoise": val.get("trivial_denoise"),
            "val_shrinkage_denoise": val.get("shrinkage_denoise"),
            "val": val,
            "final_train": summary.get("final_train"),
            **with_priors,
            "bare": bare_figures,
            "train_seconds": summary["train_seconds"],
            "sampling_cpu_seconds": time.process_time() - t1,
            "checkpoint": summary["checkpoint"],
        }
        points.append(point)
        write()
        print(
            f"fraction {fraction:g}: n_train {point['n_train']}, val denoise {point['val_denoise']}, "
            f"strict {point['strict_validity']:.3f} / SMACT {point['smact_validity']:.3f} with the priors, "
            f"bare {bare_figures['strict_validity']:.3f} / {bare_figures['smact_validity']:.3f}",
            flush=True,
        )

    write()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
