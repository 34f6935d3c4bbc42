"""The ``gen2d`` command. ``--json`` on any command prints exactly one JSON document to stdout."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="gen2d: guided generation, scoring and ranking of 2D monolayers for HER.")
err = Console(stderr=True)
# tables keep their rows on one line when piped into a file or a pager
out = Console() if sys.stdout.isatty() else Console(width=220)

StoreOpt = typer.Option(None, "--store", help="store URI (monty:///path, mongodb://..., memory://); "
                                             "default $GEN2D_STORE or monty://./gen2d-data")
JsonOpt = typer.Option(False, "--json", help="print one JSON document to stdout and nothing else")


def _emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")


def _fail(message: str, as_json: bool, code: int = 2) -> None:
    if as_json:
        _emit_json({"error": message})
    else:
        err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _open(store: Optional[str], as_json: bool):
    from gen2d.store import StoreUnavailable, open_store

    try:
        return open_store(store)
    except StoreUnavailable as exc:
        _fail(str(exc), as_json)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, disable=not enabled, transient=False)


# ----------------------------------------------------------------------------------------------
@app.command()
def ingest(
    path: str = typer.Argument(..., help="a structure file, a folder, an ASE db, an MC2D JSON, or builtin:templates"),
    set_name: str = typer.Option(..., "--set", help="name of the candidate set to add to"),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV of labels (file, e_hull, dg_h, synth_label)"),
    max_atoms: int = typer.Option(500, "--max-atoms", help="refuse larger structures before any graph is built"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """Validate and upsert structures as candidates; list every rejected input with its reason."""
    from gen2d.data.ingest import ingest_outcomes
    from gen2d.data.readers import MonolayerRecord, ReadOutcome, Rejection, read_any

    kind = "dataset"
    if path == "builtin:templates":
        from gen2d.scoring import get_generator

        gen = get_generator("templates")
        outcomes = (ReadOutcome(record=MonolayerRecord(g.structure, "templates", g.source_id,
                                                       {k: v for k, v in g.labels.items() if v is not None},
                                                       g.parameters))
                    for g in gen.generate())
        kind = "templates"
    else:
        p = Path(path)
        if not p.exists():
            _fail(f"{path}: no such file or folder", as_json)
        outcomes = read_any(p, labels_csv=labels)
        kind = "cif-set" if p.is_dir() or p.suffix.lower() not in (".db", ".json") else "dataset"
    cs = _open(store, as_json)
    with _progress(not as_json and err.is_terminal) as prog:
        task = prog.add_task(f"ingest {Path(path).name}", total=None)
        report = ingest_outcomes(outcomes, cs, set_name, kind=kind, max_atoms=max_atoms,
                                 progress=lambda k: prog.advance(task, k))
    doc = report.as_dict()
    if as_json:
        _emit_json(doc)
        return
    out.print(f"read {doc['read']}, accepted {doc['accepted']} ({100 * doc['accepted_fraction']:.1f} %), "
              f"new {doc['inserted']}, already stored {doc['updated']}; strict 2D valid "
              f"{doc['strict_ok']} of accepted ({100 * doc['strict_fraction']:.1f} %) → {cs.uri}")
    if report.rejected:
        t = Table(title=f"rejected inputs ({len(report.rejected)})")
        for c in ("source_id", "reason", "message"):
            t.add_column(c, overflow="fold")
        for r in report.rejected[:200]:
            t.add_row(r["source_id"], r["reason"], r["message"][:120])
        out.print(t)
        out.print("reasons: " + ", ".join(f"{k} {v}" for k, v in report.reasons.items()))


# ----------------------------------------------------------------------------------------------
@app.command()
def plugins(as_json: bool = JsonOpt):
    """List registered generators, scorers and calculators, with why any is unavailable."""
    from gen2d.scoring import discover

    infos = discover()
    if as_json:
        _emit_json({"plugins": [i.as_dict() for i in infos]})
        return
    t = Table(title="gen2d plugins")
    for c in ("kind", "name", "available", "property", "unit", "reason"):
        t.add_column(c, overflow="fold")
    for i in infos:
        t.add_row(i.kind, i.name, "yes" if i.available else "[red]no[/red]", i.property or "", i.unit or "",
                  i.reason[:160])
    out.print(t)


# ----------------------------------------------------------------------------------------------
def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _row_view(doc: dict[str, Any]) -> dict[str, Any]:
    summ = doc.get("summary") or {}
    rank = doc.get("rank") or {}

    def val(p: str) -> Any:
        return (summ.get(p) or {}).get("value")

    def unit(p: str) -> Any:
        return (summ.get(p) or {}).get("unit")

    return {
        "candidate_id": doc["candidate_id"], "formula": doc.get("formula"), "nsites": doc.get("nsites"),
        "sets": doc.get("sets", []),
        "source": ",".join(sorted({s.get("kind", "") for s in doc.get("sources", [])})),
        "strict_ok": ((doc.get("validity") or {}).get("strict") or {}).get("ok"),
        "e_hull": val("e_hull"), "e_hull_unit": unit("e_hull") or "eV/atom",
        "dg_h": val("dg_h"), "dg_h_unit": unit("dg_h") or "eV",
        "p_synth": val("p_synth"), "p_synth_unit": unit("p_synth") or "probability",
        "hit": rank.get("hit"), "rank_score": rank.get("score"), "pareto_front": rank.get("pareto_front"),
        "labels": {k: v for k, v in (doc.get("labels") or {}).items() if k in ("e_hull", "synth_label", "dg_h")},
    }


@app.command()
def top(
    k: int = typer.Option(20, "--k", help="how many rows"),
    sort: Optional[str] = typer.Option(None, "--sort", help="field or alias (e_hull, dg_h, abs_dg_h, p_synth, "
                                                              "rank_score); prefix '-' for descending"),
    where: list[str] = typer.Option([], "--where", help="filter FIELD<VALUE (<, <=, >, >=, =, !=); repeatable"),
    set_name: Optional[str] = typer.Option(None, "--set", help="only this candidate set"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """The top candidates in the store, with all three properties and their units."""
    from gen2d.store import FIELD_ALIASES, parse_where

    try:
        crit = parse_where(where)
    except ValueError as exc:
        _fail(str(exc), as_json)
    if set_name:
        crit["sets"] = set_name
    cs = _open(store, as_json)
    if sort:
        desc = sort.startswith("-")
        field = FIELD_ALIASES.get(sort.lstrip("-"), sort.lstrip("-"))
        order = [(field, -1 if desc else 1)]
    elif cs.count({**crit, "rank.score": {"$ne": None}}):
        order = [("rank.score", -1)]
    else:
        order = [("formula", 1)]
    rows = [_row_view(d) for d in cs.query(crit, sort=order, limit=k,
                                           properties=["candidate_id", "formula", "nsites", "sets", "sources",
                                                       "validity", "summary", "rank", "labels"])]
    total = cs.count(crit)
    if as_json:
        _emit_json({"store": cs.uri, "total": total, "sort": order, "rows": rows})
        return
    t = Table(title=f"top {len(rows)} of {total} candidates ({cs.uri})")
    for c in ("id", "formula", "n", "set", "source", "2D", "E_hull (eV/atom)", "ΔG_H (eV)", "P_synth", "hit",
              "score"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(r["candidate_id"], r["formula"], str(r["nsites"]), ",".join(r["sets"]), r["source"],
                  "✓" if r["strict_ok"] else "✗", _fmt(r["e_hull"]), _fmt(r["dg_h"]), _fmt(r["p_synth"], 2),
                  {True: "HIT", False: "", None: ""}[r["hit"]], _fmt(r["rank_score"]))
    out.print(t)


@app.command()
def show(
    candidate_id: str = typer.Argument(..., help="a candidate id (a unique prefix is enough)"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """Everything stored about one candidate."""
    cs = _open(store, as_json)
    doc = cs.get(candidate_id)
    if doc is None:
        _fail(f"no candidate {candidate_id!r} in {cs.uri}", as_json, code=1)
    if as_json:
        _emit_json(doc)
        return
    from pymatgen.core import Structure

    s = Structure.from_dict(doc["structure"])
    out.print(f"[bold]{doc['candidate_id']}[/bold]  {doc['formula']}  ({doc['nsites']} sites)  sets: "
              f"{', '.join(doc.get('sets', []))}")
    out.print(f"cell: a={doc['cell'].get('a')} Å, b={doc['cell'].get('b')} Å, γ={doc['cell'].get('gamma')}°, "
              f"thickness={doc['cell'].get('thickness')} Å")
    for level in ("ingest", "strict"):
        v = doc["validity"].get(level, {})
        out.print(f"validity {level}: {'ok' if v.get('ok') else 'FAILED ' + ', '.join(v.get('reasons', []))}")
    out.print(f"labels: {json.dumps({k: v for k, v in doc.get('labels', {}).items() if k != 'source_properties'}, default=str)}")
    for name, sc in _flatten_scores(doc.get("scores") or {}):
        status = _fmt(sc.get("value")) + f" {sc.get('unit', '')}" if sc.get("ok") else \
            f"FAILED {((sc.get('failure') or {}).get('reason'))}"
        prov = sc.get("provenance") or {}
        out.print(f"score {name}: {status}  [model {prov.get('model', '')}; reference {prov.get('reference_set')}]")
    if doc.get("rank"):
        out.print(f"rank: {json.dumps(doc['rank'], default=str)}")
    out.print(s)


def _flatten_scores(scores: dict[str, Any], prefix: str = ""):
    for k, v in scores.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and "scorer" in v and "unit" in v:
            yield name, v
        elif isinstance(v, dict):
            yield from _flatten_scores(v, name)


@app.command()
def export(
    out_dir: Path = typer.Option(..., "--out", help="folder to write into"),
    fmt: str = typer.Option("cif", "--format", help="cif or extxyz"),
    set_name: Optional[str] = typer.Option(None, "--set"),
    where: list[str] = typer.Option([], "--where"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """Write stored candidates as CIF or extxyz files named <id>_<formula>."""
    from pymatgen.core import Structure

    from gen2d.store import parse_where
    from gen2d.structures import to_ase

    if fmt not in ("cif", "extxyz"):
        _fail(f"unsupported format {fmt!r}: use cif or extxyz", as_json)
    crit = parse_where(where)
    if set_name:
        crit["sets"] = set_name
    cs = _open(store, as_json)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for doc in cs.query(crit, properties=["candidate_id", "formula", "structure"]):
        s = Structure.from_dict(doc["structure"])
        target = out_dir / f"{doc['candidate_id']}_{doc['formula']}.{fmt}"
        if fmt == "cif":
            s.to(filename=str(target), fmt="cif")
        else:
            from ase.io import write as ase_write

            ase_write(target, to_ase(s), format="extxyz")
        written.append(str(target))
    if as_json:
        _emit_json({"written": len(written), "files": written, "format": fmt})
    else:
        out.print(f"wrote {len(written)} {fmt} files to {out_dir}")


def main() -> None:  # pragma: no cover
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
