"""The report: an HTML page with PNG figures and tables drawn from the stored candidates.

Figures: the ΔG_H distribution with the hit window shaded, E_hull against P_synth coloured by ΔG_H,
top and side views of the best candidates. Tables: the top-k, and a comparison across sources
(generator, baseline CIF sets, templates) with validity, stability, hits and hits per CPU-hour.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gen2d.ranking import RankThresholds, summary_cautions  # noqa: E402
from gen2d.store import Candidate, CandidateStore  # noqa: E402


def _val(doc: Candidate, prop: str) -> float | None:
    return doc.value(prop)


def _scorer(doc: Candidate, prop: str) -> str:
    entry = doc.summary.get(prop)
    return (entry.scorer or "") if entry is not None else ""


#: the ΔG_H funnel, cheapest first: the surrogate on everything, the explicit-H MLIP on the best, DFT on the very best
DG_H_STAGES = (("surrogate", "dgh.dimenet"), ("MLIP", "dgh.mlip"), ("DFT", "dgh.dft"))


def dg_h_stages(doc: Candidate) -> dict[str, Any]:
    """ΔG_H (eV) of each funnel stage that scored ``doc`` (None where it did not or failed), with DFT's failure."""
    out: dict[str, Any] = {}
    for label, scorer in DG_H_STAGES:
        sc = doc.score(scorer)
        out[f"dg_h_{label.lower()}_eV"] = sc.value if sc is not None and sc.ok else None
        if scorer == "dgh.dft" and sc is not None and not sc.ok:
            out["dft_failure"] = sc.failure.reason if sc.failure else "failed"
        if scorer == "dgh.dft" and sc is not None and sc.ok and "gamma_samples_k" in sc.extra:
            # False: a hexagonal cell whose Γ misses K, where the band edges of many layers are (dgh.dft fold_k)
            out["dft_gamma_samples_k"] = sc.extra["gamma_samples_k"]
    return out


def _cpu_seconds(doc: Candidate) -> float:
    return sum(float(sc.extra.get("cpu_seconds") or 0.0) for sc in doc.iter_scores())


def _below_hull(doc: Candidate) -> bool:
    return "below_reference_hull" in summary_cautions(doc.summary, doc.scores or {})


def below_hull_rows(docs: list[Candidate]) -> list[dict[str, Any]]:
    """Layers more than 0.05 eV/atom below their reference hull: not called stable, with the phase that is
    probably missing from the reference set (from the E_hull scorer), lowest E_hull first."""
    rows = []
    for d in docs:
        if not _below_hull(d):
            continue
        scorer = _scorer(d, "e_hull")
        sc = d.score(scorer) if scorer else None
        extra = sc.extra if sc is not None else {}
        rows.append(
            {
                "candidate_id": d.candidate_id,
                "formula": d.formula,
                "e_hull_eV_per_atom": _val(d, "e_hull"),
                "e_hull_scorer": scorer,
                "reference_set": extra.get("provider"),
                "decomposition": [p.get("formula") for p in extra.get("decomposition") or []],
                "missing_reference": extra.get("missing_reference")
                or f"a bulk phase of {d.chemsys} near {d.formula} (stored before gen2d named it)",
            }
        )
    rows.sort(key=lambda r: r["e_hull_eV_per_atom"] if r["e_hull_eV_per_atom"] is not None else 0.0)
    return rows


def _hit(doc: Candidate) -> bool:
    return bool(doc.rank is not None and doc.rank.hit)


def source_table(docs: list[Candidate], t: RankThresholds) -> list[dict[str, Any]]:
    """Per source kind and set: count, strict validity, stability, hits, scoring CPU-hours, hits/CPU-hour."""
    groups: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for d in docs:
        kinds = {(s.kind, s.set) for s in d.sources} or {("", "")}
        for k in kinds:
            groups[k].append(d)
    rows = []
    for (kind, set_name), ds in sorted(groups.items()):
        n = len(ds)
        strict = sum(d.validity.strict_ok for d in ds)
        eh = [_val(d, "e_hull") for d in ds]
        n_e = sum(v is not None for v in eh)
        stable = sum(v is not None and v <= t.e_hull_max and not _below_hull(d) for v, d in zip(eh, ds))
        hits = sum(_hit(d) for d in ds)
        cpu_h = sum(_cpu_seconds(d) for d in ds) / 3600.0
        rows.append(
            {
                "source": kind,
                "set": set_name,
                "n": n,
                "strict_valid": strict,
                "strict_valid_fraction": round(strict / n, 4) if n else None,
                "with_e_hull": n_e,
                "stable": stable,
                "stable_fraction": round(stable / n_e, 4) if n_e else None,
                "hits": hits,
                "scoring_cpu_hours": round(cpu_h, 5),
                "hits_per_cpu_hour": round(hits / cpu_h, 3) if cpu_h > 0 else None,
            }
        )
    return rows


def _plot_dgh(docs, t: RankThresholds, path: Path) -> None:
    vals = [v for v in (_val(d, "dg_h") for d in docs) if v is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.axvspan(
        -t.dg_h_window, t.dg_h_window, color="tab:green", alpha=0.2, label=f"hit window |ΔG_H| ≤ {t.dg_h_window} eV"
    )
    if vals:
        bins = np.linspace(min(vals + [-1.0]), max(vals + [1.0]), 40)
        ax.hist(vals, bins=bins, color="tab:blue", edgecolor="white")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel("ΔG_H (eV)")
    ax.set_ylabel("candidates")
    ax.set_title(f"ΔG_H distribution (n = {len(vals)})")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_ehull_psynth(docs, t: RankThresholds, path: Path) -> None:
    pts = [(_val(d, "e_hull"), _val(d, "p_synth"), _val(d, "dg_h")) for d in docs]
    pts = [p for p in pts if p[0] is not None and p[1] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if pts:
        e, s, g = (np.array([p[i] if p[i] is not None else np.nan for p in pts], dtype=float) for i in range(3))
        sc = ax.scatter(
            e, s, c=np.where(np.isnan(g), 0.0, g), cmap="coolwarm", vmin=-1.0, vmax=1.0, edgecolors="k", linewidths=0.3
        )
        fig.colorbar(sc, ax=ax, label="ΔG_H (eV)")
    ax.axvline(t.e_hull_max, color="gray", ls="--", lw=0.8)
    ax.axhline(t.p_synth_min, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("E_hull (eV/atom)")
    ax.set_ylabel("P_synth")
    ax.set_title("stability against synthesizability")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_structure(doc: Candidate, path: Path) -> None:
    from ase.visualize.plot import plot_atoms

    from gen2d.structures import to_ase

    atoms = to_ase(doc.get_structure()).repeat((3, 3, 1))
    z = atoms.positions[:, 2]
    atoms.positions[:, 2] -= z.min()
    atoms.cell[2, 2] = max(1.0, float(np.ptp(z)) + 1.0)
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    plot_atoms(atoms, axes[0], rotation="0x,0y,0z", radii=0.5)
    plot_atoms(atoms, axes[1], rotation="-90x,0y,0z", radii=0.5)
    axes[0].set_title("top")
    axes[1].set_title("side")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"{doc.formula} ({doc.candidate_id})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else html.escape(str(v))


def write_report(
    cs: CandidateStore,
    out_dir: str | Path,
    sets: list[str] | None = None,
    top_k: int = 10,
    thresholds: RankThresholds | None = None,
) -> list[Path]:
    """Write ``index.html``, ``report.json`` and PNGs into ``out_dir``; return the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    crit = {"sets": {"$in": sets}} if sets else {}
    docs = [Candidate.model_validate(d) for d in cs.query(crit)]
    t = thresholds
    if t is None:
        ranked = [d for d in docs if d.rank is not None and d.rank.thresholds]
        t = RankThresholds(**ranked[0].rank.thresholds) if ranked else RankThresholds()
    files: list[Path] = []
    f1, f2 = out / "dg_h_distribution.png", out / "e_hull_vs_p_synth.png"
    _plot_dgh(docs, t, f1)
    _plot_ehull_psynth(docs, t, f2)
    files += [f1, f2]
    ranked_docs = sorted(
        (d for d in docs if d.rank is not None and d.rank.score is not None), key=lambda d: d.rank.position or 10**9
    )
    top = ranked_docs[:top_k]
    pics = []
    for k, d in enumerate(top[: min(top_k, 6)]):
        p = out / f"top{k + 1}_{d.candidate_id}.png"
        try:
            _plot_structure(d, p)
            pics.append(p)
        except Exception as exc:  # a picture must never sink the report
            (out / f"top{k + 1}_error.txt").write_text(str(exc))
    files += pics
    sources = source_table(docs, t)
    top_rows = [
        {
            "position": d.rank.position,
            "candidate_id": d.candidate_id,
            "formula": d.formula,
            "sets": d.sets,
            "dg_h_eV": _val(d, "dg_h"),
            "dg_h_scorer": _scorer(d, "dg_h"),
            "e_hull_eV_per_atom": _val(d, "e_hull"),
            "e_hull_scorer": _scorer(d, "e_hull"),
            "p_synth": _val(d, "p_synth"),
            "p_synth_scorer": _scorer(d, "p_synth"),
            "hit": d.rank.hit,
            "cautions": list(d.rank.cautions or []),
            # cautions that do not block a hit, e.g. stronger_site_fills_first (gen2d.adsorption.AdsorptionResult)
            "dg_h_flags": list(d.summary["dg_h"].flags) if "dg_h" in d.summary else [],
            "score": d.rank.score,
            "pareto_front": d.rank.pareto_front,
        }
        for d in top
    ]
    funnel = [
        {
            "position": d.rank.position if d.rank else None,
            "candidate_id": d.candidate_id,
            "formula": d.formula,
            **dg_h_stages(d),
        }
        for d in docs
        if d.score("dgh.dft") is not None
    ]
    funnel.sort(key=lambda r: r["position"] if r["position"] is not None else 10**9)
    below = below_hull_rows(docs)
    summary = {
        "sets": sets,
        "store": cs.uri,
        "n_candidates": len(docs),
        "thresholds": t.model_dump(),
        "top": top_rows,
        "sources": sources,
        "dg_h_by_stage": funnel,
        "below_reference_hull": below,
        "descriptions": {
            "dg_h_eV": "hydrogen adsorption free energy of the best site, eV (ΔE_H + 0.27 eV unless stated)",
            "e_hull_eV_per_atom": "energy above the convex hull of the named reference set, eV/atom",
            "p_synth": "probability of synthesizability from the named scorer",
            "hits_per_cpu_hour": "hits divided by the scoring CPU time recorded on the candidates",
            "stable": "E_hull at most the threshold and not below_reference_hull",
            "below_reference_hull": "layers more than 0.05 eV/atom below their reference hull: never called "
            "stable or a hit, since a monolayer cannot lie below the bulk phases it competes with; "
            "missing_reference names the bulk phase the reference set probably lacks",
            "dg_h_by_stage": "ΔG_H (eV) of the candidates DFT scored, by funnel stage: surrogate "
            "(dgh.dimenet), explicit-H MLIP (dgh.mlip) and DFT (dgh.dft, CP2K); dft_gamma_samples_k false: "
            "the DFT cell's Γ point missed the hexagonal K point (graphene's Dirac point, the 2H dichalcogenides' "
            "band edges), which moved graphene's ΔE_H by 0.37 eV; dgh.dft fold_k=true samples it",
        },
    }
    fj = out / "report.json"
    fj.write_text(json.dumps(summary, indent=2, default=str))
    files.append(fj)
    rows_html = "".join(
        f"<tr><td>{r['position']}</td><td><code>{r['candidate_id']}</code></td><td>{html.escape(r['formula'])}</td>"
        f"<td>{_fmt(r['dg_h_eV'])}</td><td>{_fmt(r['e_hull_eV_per_atom'])}</td><td>{_fmt(r['p_synth'], 2)}</td>"
        f"<td>{'HIT' if r['hit'] else html.escape(', '.join(r['cautions']))}"
        f"{html.escape(''.join(f' ({f})' for f in r['dg_h_flags']))}</td>"
        f"<td>{_fmt(r['score'])}</td><td>{_fmt(r['pareto_front'])}</td></tr>"
        for r in top_rows
    )
    src_html = "".join(
        f"<tr><td>{html.escape(r['source'])}</td><td>{html.escape(r['set'])}</td><td>{r['n']}</td>"
        f"<td>{_fmt(r['strict_valid_fraction'], 3)}</td><td>{r['stable']}/{r['with_e_hull']}</td><td>{r['hits']}</td>"
        f"<td>{_fmt(r['scoring_cpu_hours'], 4)}</td><td>{_fmt(r['hits_per_cpu_hour'])}</td></tr>"
        for r in sources
    )
    pics_html = "".join(f'<img src="{p.name}" alt="{p.stem}">' for p in pics)
    funnel_html = "".join(
        f"<tr><td>{_fmt(r['position'])}</td><td><code>{r['candidate_id']}</code></td><td>{html.escape(r['formula'])}</td>"
        f"<td>{_fmt(r['dg_h_surrogate_eV'])}</td><td>{_fmt(r['dg_h_mlip_eV'])}</td>"
        f"<td>{_fmt(r['dg_h_dft_eV']) if r['dg_h_dft_eV'] is not None else html.escape(r.get('dft_failure', ''))}"
        f"{' (Γ misses K)' if r.get('dft_gamma_samples_k') is False else ''}</td></tr>"
        for r in funnel
    )
    funnel_section = (
        (
            "<h2>ΔG_H by stage (DFT-confirmed candidates)</h2><table><tr><th>#</th><th>id</th><th>formula</th>"
            "<th>surrogate (eV)</th><th>MLIP (eV)</th><th>DFT (eV)</th></tr>"
            f"{funnel_html}</table>"
        )
        if funnel
        else ""
    )
    below_html = "".join(
        f"<tr><td><code>{r['candidate_id']}</code></td><td>{html.escape(r['formula'])}</td>"
        f"<td>{_fmt(r['e_hull_eV_per_atom'])}</td><td>{html.escape(', '.join(map(str, r['decomposition'])))}</td>"
        f"<td style='text-align:left'>{html.escape(r['missing_reference'])}</td></tr>"
        for r in below
    )
    below_section = (
        (
            "<h2>Below the reference hull (not called stable)</h2><p>A monolayer cannot lie below the bulk "
            "phases it competes with: these E_hull values point to a reference phase the set lacks.</p>"
            "<table><tr><th>id</th><th>formula</th><th>E_hull (eV/atom)</th><th>decomposes to</th>"
            f"<th>probably missing</th></tr>{below_html}</table>"
        )
        if below
        else ""
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>gen2d report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:48%}}</style></head><body>
<h1>gen2d report</h1>
<p>{len(docs)} candidates in {html.escape(", ".join(sets) if sets else "all sets")} ({html.escape(cs.uri)}).
Hit: |ΔG_H| ≤ {t.dg_h_window} eV, E_hull ≤ {t.e_hull_max} eV/atom, P_synth ≥ {t.p_synth_min}
{"and strictly valid" if t.require_strict else ""}.
MLIP and surrogate numbers are screening figures; the top candidates need DFT.</p>
<h2>Top {len(top_rows)}</h2>
<table><tr><th>#</th><th>id</th><th>formula</th><th>ΔG_H (eV)</th><th>E_hull (eV/atom)</th><th>P_synth</th>
<th>hit</th><th>score</th><th>Pareto front</th></tr>{rows_html}</table>
{funnel_section}
{below_section}
<h2>Sources</h2>
<table><tr><th>source</th><th>set</th><th>n</th><th>strict valid</th><th>stable</th><th>hits</th>
<th>scoring CPU-h</th><th>hits / CPU-h</th></tr>{src_html}</table>
<h2>Figures</h2><img src="{f1.name}" alt="dG_H"><img src="{f2.name}" alt="E_hull vs P_synth">
<h2>Best candidates</h2>{pics_html}
</body></html>"""
    fh = out / "index.html"
    fh.write_text(page)
    files.append(fh)
    return files
