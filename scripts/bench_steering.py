#!/usr/bin/env python
"""Benchmark particle steering against unguided and gradient-guided sampling of the EGNN diffusion generator.

Usage (single thread, niced, on a shared CPU):

    OMP_NUM_THREADS=1 nice -n 5 python scripts/bench_steering.py --n 18 --seeds 0 1 --out bench_steering.json

Every arm samples the same template starts (a seeded shuffle of the evaluation's 18 HER templates, one batch
per seed) in the evaluation's chemical space (Mo W Nb Ta V Ti / S Se Te C) with 100 steps. Per arm it prints:

- generation CPU seconds (``time.process_time``, reward evaluations included, model loading excluded);
- reward evaluations (structures passed to each reward term while sampling) and their CPU seconds;
- the steering reward of the final samples (the default terms: ``dgh.dimenet`` log P(|ΔG_H| ≤ 0.2 eV),
  ``synth.pu`` log P_synth, ``stability.chgnet`` log σ(−(E_hull − 0.1)/0.1) on a single-point E_hull),
  mean over samples, in nats;
- the evaluation's own scoring of the final samples (``gen2d.evaluate.arms.score_samples``: strict 2D,
  uniqueness, CHGNet E_hull after in-plane relaxation, DimeNet++ ΔG_H on the relaxed slab, PU P_synth) and
  its hits (|ΔG_H| ≤ 0.2 eV, E_hull ≤ 0.1 eV/atom, P_synth ≥ 0.5, strictly valid); no MLIP confirmation and
  no novelty here.

It also reports the Spearman correlation between the stability proxy of the final samples and their relaxed
E_hull, the fidelity of that proxy. ``--out`` writes every figure with its unit and the command line.

Two studies behind the defaults of ``SteeringConfig`` run instead of the arms with ``--study``:
``proxy-fidelity`` (the stability proxy, single point or a few FIRE steps, against the relaxed E_hull of
unguided samples) and ``lookahead`` (the reward of x̂₀ at step t against that of the final sample).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

SPACE = ["Mo", "W", "Nb", "Ta", "V", "Ti", "S", "Se", "Te", "C"]
TEMPLATES = [
    "MoS2-2H", "WS2-2H", "MoSe2-2H", "WSe2-2H", "MoTe2-2H", "NbSe2-2H", "TaS2-2H", "TiS2-1T", "TiSe2-1T",
    "VSe2-1T", "WTe2-1T'", "MoTe2-1T'", "graphene", "Ti2C", "V2C", "Nb2C", "Mo2C", "Ti3C2",
]  # fmt: skip
ARMS = {
    "unguided": "none",
    "gradient": "gradient",
    "steered": "steered",
}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict:
    import torch
    from gen2d_egnn import GUIDANCE_PRESETS, EGNNDiffusionGenerator
    from scipy.stats import spearmanr

    from gen2d.diffusion.steering import Reward, SteeringConfig
    from gen2d.evaluate.arms import Resources, score_samples, template_cycle
    from gen2d.evaluate.spec import EvaluateScorers, EvaluateSpec
    from gen2d.metrics import Uniqueness

    torch.set_num_threads(1)
    gen = EGNNDiffusionGenerator(checkpoint=args.checkpoint, device="cpu")
    fields = json.loads(args.steering) if args.steering else {}
    if args.strength:
        fields["strength"] = args.strength
    steering = SteeringConfig(**fields)
    guidance = {name: GUIDANCE_PRESETS[preset] for name, preset in ARMS.items() if name in args.arms}
    if "steered" in guidance:
        guidance["steered"] = {**guidance["steered"], "steering": steering.model_dump()}
    spec = EvaluateSpec(scorers=EvaluateScorers(confirm=None))
    res = Resources(spec, reference=[])  # novelty is not measured here
    instrument = Reward.from_config(SteeringConfig())  # the default reward, to measure every arm's samples

    # warm-up, not counted: model loads (the DimeNet++ basis alone takes ~20 s) and reference hulls
    c0 = time.process_time()
    warm = list(gen.generate(n=2, seed=0, guidance=guidance.get("steered", "none"), start="templates",
                             templates=TEMPLATES[:2], n_steps=10, elements=SPACE))  # fmt: skip
    instrument([g.structure for g in warm])
    score_samples(res, [warm[0].structure])
    _log(f"warm-up {time.process_time() - c0:.1f} CPU-s")

    per_arm: dict[str, dict] = {a: {"seeds": []} for a in guidance}
    for seed in args.seeds:
        cycle = template_cycle(TEMPLATES, seed)
        picked = [next(cycle) for _ in range(args.n)]
        for arm, g in guidance.items():
            c0 = time.process_time()
            items = list(gen.generate(n=args.n, seed=seed, guidance=g, start="templates", templates=picked,
                                      n_steps=args.n_steps, elements=SPACE))  # fmt: skip
            gen_cpu = time.process_time() - c0
            structures = [it.structure for it in items]
            steer = items[0].parameters["diagnostics"].get("steering") if items else None
            final = instrument(structures)
            c0 = time.process_time()
            records, _ = score_samples(res, structures)
            score_cpu = time.process_time() - c0
            proxy_e_hull = instrument.terms["stability.chgnet"][0].last_e_hull  # eV/atom, single point
            pairs = [
                (p, r["e_hull"]) for p, r in zip(proxy_e_hull, records) if p is not None and r["e_hull"] is not None
            ]
            e_hulls = [r["e_hull"] for r in records if r["e_hull"] is not None]
            row = {
                "seed": seed,
                "n": len(items),
                "generation_cpu_s": round(gen_cpu, 2),
                "reward_evaluations": sum(steer["reward_evaluations"].values()) if steer else 0,
                "reward_evaluations_by_term": steer["reward_evaluations"] if steer else {},
                "reward_cpu_s": round(sum(steer["reward_cpu_s"].values()), 2) if steer else 0.0,
                "resamplings": steer["resamplings"] if steer else 0,
                "ess": steer["ess"] if steer else [],
                "distinct_roots": len({it.parameters["diagnostics"]["steering"]["root"] for it in items})
                if steer
                else None,
                "reward_mean_nats": round(float(final.total.mean()), 3),
                "reward_terms_mean_nats": {k: round(float(v.mean()), 3) for k, v in final.terms.items()},
                "strict": sum(r["strict_ok"] for r in records),
                "unique": sum(r["unique"] for r in records),
                "distinct_formulas": len({r["formula"] for r in records}),
                "e_hull_scored": sum(r["e_hull"] is not None for r in records),
                "stable": sum(bool(r["stable"]) for r in records),
                "dg_h_within_0.2": sum(r["dg_h"] is not None and abs(r["dg_h"]) <= 0.2 for r in records),
                "p_synth_ge_0.5": sum(r["p_synth"] is not None and r["p_synth"] >= 0.5 for r in records),
                "hits": sum(r["hit"] for r in records),
                "unique_hits": Uniqueness()([st for st, r in zip(structures, records) if r["hit"]]).details.get(
                    "n_unique", 0
                ),
                "hit_formulas": sorted(r["formula"] for r in records if r["hit"]),
                "e_hull_median": round(float(np.median(e_hulls)), 3) if e_hulls else None,
                "proxy_e_hull_median": round(float(np.median([p for p, _ in pairs])), 3) if pairs else None,
                "scoring_cpu_s": round(score_cpu, 2),
                "proxy_vs_relaxed_e_hull_spearman": round(float(spearmanr(*zip(*pairs)).correlation), 3)
                if len(pairs) >= 3
                else None,
                "formulas": [r["formula"] for r in records],
            }
            per_arm[arm]["seeds"].append(row)
            _log(f"seed {seed} {arm}: {json.dumps({k: v for k, v in row.items() if k not in ('formulas', 'ess')})}")

    keys = ["n", "generation_cpu_s", "reward_evaluations", "reward_cpu_s", "resamplings", "strict", "unique",
            "distinct_formulas", "e_hull_scored", "stable", "dg_h_within_0.2", "p_synth_ge_0.5", "hits",
            "unique_hits", "scoring_cpu_s"]  # fmt: skip
    for arm, d in per_arm.items():
        rows = d["seeds"]
        d["total"] = {k: round(sum(r[k] for r in rows), 2) for k in keys}
        d["total"]["lineages"] = sum(r["distinct_roots"] or r["n"] for r in rows)
        d["reward_mean_nats"] = round(float(np.mean([r["reward_mean_nats"] for r in rows])), 3)
        d["reward_terms_mean_nats"] = {
            t: round(float(np.mean([r["reward_terms_mean_nats"][t] for r in rows])), 3)
            for t in rows[0]["reward_terms_mean_nats"]
        }
        d["hits_per_generation_cpu_hour"] = (
            round(3600 * d["total"]["hits"] / d["total"]["generation_cpu_s"], 1)
            if d["total"]["generation_cpu_s"]
            else None
        )
        d["guidance"] = guidance[arm]
    return {
        "what": "particle steering (Feynman-Kac resampling on x̂₀) vs unguided and gradient guidance, EGNN diffusion",
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now(UTC).isoformat(),
        "host": platform.node(),
        "torch_threads": 1,
        "checkpoint_sha256": gen.bundle.sha256,
        "settings": {
            "n": args.n,
            "seeds": args.seeds,
            "n_steps": args.n_steps,
            "space": SPACE,
            "templates": TEMPLATES,
            "steering": steering.model_dump(),
        },  # fmt: skip
        "units": {
            "generation_cpu_s": "CPU seconds (time.process_time), rewards included, model loading excluded",
            "reward_cpu_s": "CPU seconds spent in the reward terms while sampling",
            "reward_evaluations": "structures passed to reward terms while sampling (summed over terms)",
            "reward_mean_nats": "default steering reward of the final samples, mean, nats (log-probabilities)",
            "hits": "gen2d hit rule on the evaluation's scorers (no MLIP confirmation)",
            "unique_hits": "hits that match no earlier hit of the same arm and seed (StructureMatcher, gen2d.metrics)",
            "e_hull_median": "eV/atom, CHGNet after in-plane relaxation",
            "proxy_e_hull_median": "eV/atom, CHGNet single point of the final (unrelaxed) sample: the steering proxy",
        },
        "arms": per_arm,
    }


def _unguided_batches(gen, seeds: list[int], n: int, n_steps: int, guidance="none"):
    """Samples of each seed from the same template shuffle as the arms."""
    from gen2d.evaluate.arms import template_cycle

    out = []
    for seed in seeds:
        cycle = template_cycle(TEMPLATES, seed)
        picked = [next(cycle) for _ in range(n)]
        out.append(
            list(
                gen.generate(
                    n=n,
                    seed=seed,
                    guidance=guidance,
                    start="templates",
                    templates=picked,
                    n_steps=n_steps,
                    elements=SPACE,
                )
            )  # fmt: skip
        )
    return out


def study_proxy_fidelity(args: argparse.Namespace) -> dict:
    """How well the stability proxy (single point, or a few FIRE steps) ranks final unguided samples by their
    E_hull after the full relaxation of ``ehull.chgnet``: Spearman, the probability that a stable layer
    (relaxed E_hull ≤ 0.1 eV/atom) gets a lower proxy than an unstable one (AUC), and CPU per structure."""
    from gen2d_egnn import EGNNDiffusionGenerator
    from scipy.stats import spearmanr

    from gen2d.diffusion.steering import StabilityProxyReward
    from gen2d.scoring import get_scorer

    gen = EGNNDiffusionGenerator(checkpoint=args.checkpoint, device="cpu")
    structures = [g.structure for batch in _unguided_batches(gen, args.seeds, args.n, args.n_steps) for g in batch]
    scorer = get_scorer("ehull.chgnet", progress=False, max_elements=3, device="cpu")
    c0 = time.process_time()
    relaxed = [r.value if r.ok else None for r in scorer.score(structures)]
    rows = [{"relax_steps": "full (ehull.chgnet, fmax 0.05, <= 500 steps)", "cpu_s_per_structure": round((time.process_time() - c0) / len(structures), 3)}]  # fmt: skip
    for steps in (0, 5, 15, 40):
        term = StabilityProxyReward("chgnet", relax_steps=steps, device="cpu")
        term(structures)  # prepares the reference hulls: not counted
        c0 = time.process_time()
        term(structures)
        cpu = (time.process_time() - c0) / len(structures)
        pairs = [(p, r) for p, r in zip(term.last_e_hull, relaxed) if p is not None and r is not None]
        stable = [p for p, r in pairs if r <= 0.1]
        unstable = [p for p, r in pairs if r > 0.1]
        auc = float(np.mean([a < b for a in stable for b in unstable])) if stable and unstable else None
        rows.append(
            {
                "relax_steps": steps,
                "cpu_s_per_structure": round(cpu, 3),
                "n_pairs": len(pairs),
                "n_stable": len(stable),
                "spearman_vs_relaxed": round(float(spearmanr(*zip(*pairs)).correlation), 3),
                "auc_stable_vs_unstable": round(auc, 3) if auc is not None else None,
                "median_proxy_e_hull": round(float(np.median([p for p, _ in pairs])), 3),
                "median_relaxed_e_hull": round(float(np.median([r for _, r in pairs])), 3),
            }
        )
        _log(json.dumps(rows[-1]))
    return {"study": "proxy-fidelity", "n_structures": len(structures), "rows": rows}


def study_lookahead(args: argparse.Namespace) -> dict:
    """How well the default reward of a particle's clean estimate x̂₀ at step t predicts the reward of the
    sample it ends as: potentials at every 5th step from 0.55 T, no resampling (ESS threshold 1e-9),
    Spearman over the batch per step and seed."""
    from gen2d_egnn import EGNNDiffusionGenerator
    from scipy.stats import spearmanr

    from gen2d.diffusion.steering import Reward, SteeringConfig

    gen = EGNNDiffusionGenerator(checkpoint=args.checkpoint, device="cpu")
    cfg = SteeringConfig(ess_threshold=1e-9, interval=5, start=0.55, stop=0.01)
    reward = Reward.from_config(SteeringConfig())
    by_t: dict[int, list[float]] = {}
    batches = _unguided_batches(gen, args.seeds, args.n, args.n_steps, guidance={"steering": cfg.model_dump()})
    for batch in batches:
        final = reward([g.structure for g in batch]).total
        d0 = batch[0].parameters["diagnostics"]["steering"]
        traces = np.array([g.parameters["diagnostics"]["steering"]["reward_trace"] for g in batch])
        for k, t in enumerate(d0["potential_steps"]):
            by_t.setdefault(t, []).append(round(float(spearmanr(traces[:, k], final).correlation), 3))
    rows = [
        {"t": t, "t_over_T": round(t / 1000, 3), "spearman_per_seed": v} for t, v in sorted(by_t.items(), reverse=True)
    ]
    for r in rows:
        _log(json.dumps(r))
    return {"study": "lookahead", "rows": rows}


def table(doc: dict) -> str:
    lines = [
        "| arm | samples | gen CPU-s | reward evals | reward CPU-s | resamplings (lineages left) | reward (nats) "
        "| dgh / synth / stab "
        "| strict | unique | stable | \\|ΔG_H\\| ≤ 0.2 | P_synth ≥ 0.5 | hits (unique) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, d in doc["arms"].items():
        t, m = d["total"], d["reward_terms_mean_nats"]
        terms = " / ".join(f"{m[k]:.2f}" for k in ("dgh.dimenet", "synth.pu", "stability.chgnet"))
        lines.append(
            f"| {arm} | {t['n']:.0f} | {t['generation_cpu_s']:.1f} | {t['reward_evaluations']:.0f} | "
            f"{t['reward_cpu_s']:.1f} | {t['resamplings']:.0f} ({t['lineages']}) | {d['reward_mean_nats']:.2f} | {terms} | "
            f"{t['strict']:.0f} | {t['unique']:.0f} | {t['stable']:.0f} | {t['dg_h_within_0.2']:.0f} | "
            f"{t['p_synth_ge_0.5']:.0f} | {t['hits']:.0f} ({t['unique_hits']:.0f}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=9, help="samples per arm and seed (one batch: the particles)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--n-steps", type=int, default=100)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--strength", type=float, default=None, help="steering λ (default: SteeringConfig's)")
    p.add_argument(
        "--steering", default=None, help='SteeringConfig fields as JSON, e.g. \'{"rewards": {"dgh.dimenet": 1}}\''
    )
    p.add_argument("--checkpoint", default=None, help="default: the shipped checkpoint")
    p.add_argument("--out", default=None, help="JSON file for every figure")
    p.add_argument(
        "--study",
        choices=["proxy-fidelity", "lookahead"],
        default=None,
        help="instead of the arms: proxy-fidelity (stability proxy against the relaxed E_hull) or lookahead "
        "(reward of x̂₀ at step t against that of the final sample)",
    )
    args = p.parse_args(argv)
    if args.study:
        import torch

        torch.set_num_threads(1)
        doc = (study_proxy_fidelity if args.study == "proxy-fidelity" else study_lookahead)(args)
        doc.update({"command": " ".join(["python", *sys.argv]), "date": datetime.now(UTC).isoformat()})
        print(json.dumps(doc, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(doc, indent=1))
        return 0
    doc = run(args)
    print(table(doc))
    for arm, d in doc["arms"].items():
        rho = [r["proxy_vs_relaxed_e_hull_spearman"] for r in d["seeds"]]
        print(f"{arm}: hits per generation CPU-hour {d['hits_per_generation_cpu_hour']}; "
              f"stability proxy vs relaxed E_hull, Spearman per seed {rho}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
