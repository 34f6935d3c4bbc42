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

from gen2d.scoring import iter_score_docs

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="gen2d: guided generation, scoring and ranking of 2D monolayers for HER.",
)
err = Console(stderr=True)
# tables keep their rows on one line when piped into a file or a pager
out = Console() if sys.stdout.isatty() else Console(width=220)

StoreOpt = typer.Option(
    None,
    "--store",
    help="store URI (monty:///path, mongodb://..., memory://); default $GEN2D_STORE or monty://./gen2d-data",
)
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

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=False,
    )


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
    from gen2d.data.readers import MonolayerRecord, ReadOutcome, read_any

    kind = "dataset"
    if path == "builtin:templates":
        from gen2d.scoring import get_generator

        gen = get_generator("templates")
        outcomes = (
            ReadOutcome(
                record=MonolayerRecord(
                    g.structure,
                    "templates",
                    g.source_id,
                    {k: v for k, v in g.labels.items() if v is not None},
                    g.parameters,
                )
            )
            for g in gen.generate()
        )
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
        report = ingest_outcomes(
            outcomes, cs, set_name, kind=kind, max_atoms=max_atoms, progress=lambda k: prog.advance(task, k)
        )
    doc = report.as_dict()
    if as_json:
        _emit_json(doc)
        return
    out.print(
        f"read {doc['read']}, accepted {doc['accepted']} ({100 * doc['accepted_fraction']:.1f} %), "
        f"new {doc['inserted']}, already stored {doc['updated']}; strict 2D valid "
        f"{doc['strict_ok']} of accepted ({100 * doc['strict_fraction']:.1f} %) → {cs.uri}"
    )
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
        t.add_row(
            i.kind, i.name, "yes" if i.available else "[red]no[/red]", i.property or "", i.unit or "", i.reason[:160]
        )
    out.print(t)


@app.command("settings")
def settings_(as_json: bool = JsonOpt):
    """Print the resolved settings (environment > settings file > defaults); secrets are masked."""
    from gen2d.settings import Gen2dSettings, get_settings

    try:
        doc = get_settings().public_dict()
    except (ValueError, OSError) as exc:
        _fail(f"invalid gen2d settings: {exc}", as_json)
    if as_json:
        _emit_json(doc)
        return
    t = Table(title=f"gen2d settings (file: {doc.pop('config_file') or 'none'})")
    for c in ("setting", "environment variable", "value"):
        t.add_column(c, overflow="fold")
    for name, info in Gen2dSettings.model_fields.items():
        t.add_row(name, info.validation_alias, "" if doc[name] is None else str(doc[name]))
    out.print(t)


# ----------------------------------------------------------------------------------------------
def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _row_view(doc: dict[str, Any]) -> dict[str, Any]:
    from gen2d.schemas import PropertySummary, Rank, Validity, parse_summary

    summ = parse_summary(doc.get("summary"))
    rank = Rank.model_validate(doc.get("rank") or {})
    validity = Validity.model_validate(doc.get("validity") or {})

    def val(p: str) -> Any:
        return summ.get(p, PropertySummary()).value

    def unit(p: str) -> Any:
        return summ.get(p, PropertySummary()).unit

    return {
        "candidate_id": doc["candidate_id"],
        "formula": doc.get("formula"),
        "nsites": doc.get("nsites"),
        "sets": doc.get("sets", []),
        "source": ",".join(sorted({s.get("kind", "") for s in doc.get("sources", [])})),
        "strict_ok": validity.strict.ok if "strict" in (doc.get("validity") or {}) else None,
        "e_hull": val("e_hull"),
        "e_hull_unit": unit("e_hull") or "eV/atom",
        "dg_h": val("dg_h"),
        "dg_h_unit": unit("dg_h") or "eV",
        "p_synth": val("p_synth"),
        "p_synth_unit": unit("p_synth") or "probability",
        "hit": rank.hit,
        "rank_score": rank.score,
        "pareto_front": rank.pareto_front,
        "labels": {k: v for k, v in (doc.get("labels") or {}).items() if k in ("e_hull", "synth_label", "dg_h")},
    }


@app.command()
def top(
    k: int = typer.Option(20, "--k", help="how many rows"),
    sort: Optional[str] = typer.Option(
        None, "--sort", help="field or alias (e_hull, dg_h, abs_dg_h, p_synth, rank_score); prefix '-' for descending"
    ),
    where: list[str] = typer.Option([], "--where", help="filter FIELD<VALUE (<, <=, >, >=, =, !=); repeatable"),
    set_name: Optional[str] = typer.Option(None, "--set", help="only this candidate set"),
    show_failed: bool = typer.Option(
        False, "--show-failed", help="list candidates with failed scores or failed strict validity, with reasons"
    ),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """The top candidates in the store, with all three properties and their units."""
    if show_failed:
        return _top_failed(k, set_name, store, as_json)
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
    rows = [
        _row_view(d)
        for d in cs.query(
            crit,
            sort=order,
            limit=k,
            properties=[
                "candidate_id",
                "formula",
                "nsites",
                "sets",
                "sources",
                "validity",
                "summary",
                "rank",
                "labels",
            ],
        )
    ]
    total = cs.count(crit)
    if as_json:
        _emit_json({"store": cs.uri, "total": total, "sort": order, "rows": rows})
        return
    t = Table(title=f"top {len(rows)} of {total} candidates ({cs.uri})")
    for c in ("id", "formula", "n", "set", "source", "2D", "E_hull (eV/atom)", "ΔG_H (eV)", "P_synth", "hit", "score"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(
            r["candidate_id"],
            r["formula"],
            str(r["nsites"]),
            ",".join(r["sets"]),
            r["source"],
            "✓" if r["strict_ok"] else "✗",
            _fmt(r["e_hull"]),
            _fmt(r["dg_h"]),
            _fmt(r["p_synth"], 2),
            {True: "HIT", False: "", None: ""}[r["hit"]],
            _fmt(r["rank_score"]),
        )
    out.print(t)


def _failures_of(doc: dict[str, Any]) -> list[str]:
    reasons = []
    strict = (doc.get("validity") or {}).get("strict") or {}
    if strict and not strict.get("ok"):
        reasons += [f"strict:{r}" for r in strict.get("reasons", [])]
    for name, detail in sorted((doc.get("flags") or {}).items()):
        why = ",".join(detail.get("diverged_reasons", [])) if isinstance(detail, dict) else ""
        reasons.append(f"flag:{name}" + (f"({why})" if why else ""))
    for name, sc in iter_score_docs(doc.get("scores") or {}):
        if not sc.get("ok"):
            reasons.append(f"{name}:{(sc.get('failure') or {}).get('reason', 'unknown')}")
    return reasons


def _top_failed(k: int, set_name: Optional[str], store: Optional[str], as_json: bool) -> None:
    cs = _open(store, as_json)
    crit: dict[str, Any] = {"sets": set_name} if set_name else {}
    rows = []
    for d in cs.query(crit, properties=["candidate_id", "formula", "sets", "validity", "scores", "flags"]):
        reasons = _failures_of(d)
        if reasons:
            rows.append(
                {
                    "candidate_id": d["candidate_id"],
                    "formula": d["formula"],
                    "sets": d.get("sets", []),
                    "reasons": reasons,
                }
            )
    if as_json:
        _emit_json({"store": cs.uri, "failed": len(rows), "rows": rows[:k] if k else rows})
        return
    t = Table(title=f"{len(rows)} candidates with failures ({cs.uri})")
    for c in ("id", "formula", "set", "reasons"):
        t.add_column(c, overflow="fold")
    for r in rows[:k]:
        t.add_row(r["candidate_id"], r["formula"], ",".join(r["sets"]), "; ".join(r["reasons"]))
    out.print(t)


@app.command()
def show(
    candidate_id: str = typer.Argument(..., help="a candidate id (a unique prefix is enough)"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """Everything stored about one candidate."""
    cs = _open(store, as_json)
    doc = cs.get_document(candidate_id)  # printed as stored
    if doc is None:
        _fail(f"no candidate {candidate_id!r} in {cs.uri}", as_json, code=1)
    if as_json:
        _emit_json(doc)
        return
    from rich.markup import escape

    from gen2d.store import Candidate

    cand = Candidate.model_validate(doc)
    out.print(f"[bold]{cand.candidate_id}[/bold]  {cand.formula}  ({cand.nsites} sites)  sets: {', '.join(cand.sets)}")
    out.print(
        f"cell: a={cand.cell.get('a')} Å, b={cand.cell.get('b')} Å, γ={cand.cell.get('gamma')}°, "
        f"thickness={cand.cell.get('thickness')} Å"
    )
    for level, v in (("ingest", cand.validity.ingest), ("strict", cand.validity.strict)):
        out.print(f"validity {level}: {'ok' if v.ok else 'FAILED ' + ', '.join(v.reasons)}")
    out.print(f"labels: {json.dumps({k: v for k, v in cand.labels.items() if k != 'source_properties'}, default=str)}")
    for name, detail in sorted(cand.flags.items()):
        out.print(f"[red]flag {name}[/red] (never a hit): {json.dumps(detail, default=str)}")
    for sc in cand.iter_scores():
        status = _fmt(sc.value) + f" {sc.unit}" if sc.ok else f"FAILED {(sc.failure or {}).get('reason')}"
        # escaped: rich would read "[model ...]" as a markup tag and drop it
        out.print(
            escape(
                f"score {sc.scorer}: {status}  [model {sc.provenance.get('model', '')}; "
                f"reference {sc.provenance.get('reference_set')}]"
            )
        )
    if cand.rank is not None:
        out.print(f"rank: {json.dumps(cand.rank.model_dump(mode='json'), default=str)}")
    out.print(cand.get_structure())


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


# ----------------------------------------------------------------------------------------------
def _parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML) into a dict; dotted keys nest."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"option {pair!r} is not KEY=VALUE")
        k, v = pair.split("=", 1)
        cur = out
        keys = k.strip().split(".")
        for part in keys[:-1]:
            cur = cur.setdefault(part, {})
        cur[keys[-1]] = yaml.safe_load(v)
    return out


OptionOpt = typer.Option([], "--option", "-o", help="plugin option KEY=VALUE (YAML value); repeatable")


@app.command()
def score(
    scorer: str = typer.Option(..., "--scorer", help="registered scorer name, e.g. ehull.chgnet"),
    set_name: Optional[str] = typer.Option(None, "--set"),
    where: list[str] = typer.Option([], "--where"),
    batch_size: int = typer.Option(32, "--batch-size"),
    option: list[str] = OptionOpt,
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """Score the stored candidates that lack this scorer's result; never redo finished work."""
    from gen2d.jobs import candidates_to_score, score_candidates
    from gen2d.scoring import get_scorer
    from gen2d.store import parse_where

    options = _parse_options(option)
    try:
        sc = get_scorer(scorer, **options)
    except Exception as exc:
        _fail(f"cannot load scorer {scorer}: {type(exc).__name__}: {exc}", as_json)
    ok, why = sc.available()
    if not ok:
        _fail(f"scorer {scorer} is unavailable: {why}", as_json)
    crit = parse_where(where)
    if set_name:
        crit["sets"] = set_name
    cs = _open(store, as_json)
    todo = candidates_to_score(cs, scorer, sc, crit)  # the same selection as a flow's score jobs
    total = {
        "scorer": scorer,
        "store": cs.uri,
        "to_score": len(todo),
        "n_scored": 0,
        "n_ok": 0,
        "n_failed": 0,
        "failures": {},
    }
    with _progress(not as_json and err.is_terminal) as prog:
        task = prog.add_task(f"score {scorer}", total=len(todo))
        for i in range(0, len(todo), batch_size):
            res = score_candidates(
                scorer, options, todo[i : i + batch_size], store, progress=lambda k: prog.advance(task, k)
            )
            for k in ("n_scored", "n_ok", "n_failed"):
                total[k] += getattr(res, k)
            for k, v in res.failures.items():
                total["failures"][k] = total["failures"].get(k, 0) + v
    if as_json:
        _emit_json(total)
    else:
        out.print(
            f"{scorer}: scored {total['n_scored']} (ok {total['n_ok']}, failed {total['n_failed']}"
            f"{' ' + json.dumps(total['failures']) if total['failures'] else ''}) in {cs.uri}"
        )


@app.command()
def explain(
    path: Path = typer.Argument(..., help="a structure file"),
    scorer: str = typer.Option(..., "--scorer"),
    option: list[str] = OptionOpt,
    as_json: bool = JsonOpt,
):
    """Show what a scorer would do with one structure, and its full result."""
    from gen2d.scoring import get_scorer
    from gen2d.structures import StructureError, load_structure

    try:
        s = load_structure(path)
    except StructureError as exc:
        _fail(str(exc), as_json)
    try:
        sc = get_scorer(scorer, **_parse_options(option))
    except Exception as exc:
        _fail(f"cannot load scorer {scorer}: {type(exc).__name__}: {exc}", as_json)
    doc = sc.explain(s)  # BaseScorer's default: the full result
    if as_json:
        _emit_json(doc)
    else:
        if isinstance(doc, dict) and isinstance(doc.get("prompt"), str):
            # the prompt byte for byte (no markup, no wrapping): it is what the model reads
            sys.stdout.write(doc["prompt"] + "\n")
            doc = {k: v for k, v in doc.items() if k != "prompt"}
        out.print_json(json.dumps(doc, default=str))


@app.command()
def train(
    generator: Optional[str] = typer.Option(None, "--generator", help="train a generator plugin"),
    scorer: Optional[str] = typer.Option(None, "--scorer", help="train a scorer plugin (e.g. synth.pu)"),
    surrogate: Optional[str] = typer.Option(
        None, "--surrogate", help="label with the MLIP and train a surrogate (e.g. dgh.dimenet)"
    ),
    calculator: Optional[str] = typer.Option(
        None, "--calculator", help="fine-tune a calculator plugin on DFT frames (e.g. chgnet-her)"
    ),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML of training options"),
    option: list[str] = OptionOpt,
    device: Optional[str] = typer.Option(
        None, "--device", help="auto, cpu or cuda[:N] (the option device=...); CUDA trains in mixed precision"
    ),
    as_json: bool = JsonOpt,
):
    """Train a plugin: the generator, a scorer, a surrogate or a calculator (an MLIP fine-tuned on DFT frames).
    Options come from --config, --option and --device (which wins)."""
    import yaml

    from gen2d.jobs import train_plugin
    from gen2d.scoring import PluginUnavailable

    chosen = [
        (k, v)
        for k, v in (("generator", generator), ("scorer", scorer), ("scorer", surrogate), ("calculator", calculator))
        if v
    ]
    if len(chosen) != 1:
        _fail("give exactly one of --generator, --scorer, --surrogate, --calculator", as_json)
    kind, name = chosen[0]
    options: dict[str, Any] = {}
    if config:
        raw = yaml.safe_load(config.read_text()) or {}
        if not isinstance(raw, dict):
            _fail(f"{config}: expected a mapping of training options", as_json)
        # a config with a `train:` section (configs/egnn.yaml) trains from that section, as the
        # plugin's own train(config) does; the other sections (sampling, ...) are not training options
        options.update(raw["train"] if isinstance(raw.get("train"), dict) else raw)
    options.update(_parse_options(option))
    if device is not None:
        options["device"] = device
    try:
        result = train_plugin(kind, name, **options)
    except (KeyError, TypeError) as exc:
        _fail(str(exc.args[0]) if exc.args else str(exc), as_json)
    except (ValueError, PluginUnavailable) as exc:  # bad options or data, named by the plugin
        _fail(f"{type(exc).__name__}: {exc}", as_json)
    doc = {"plugin": name, "kind": kind, **result}
    if as_json:
        _emit_json(doc)
    else:
        out.print_json(json.dumps(doc, default=str))


@app.command()
def generate(
    n: int = typer.Option(..., "--n", help="how many structures"),
    generator: str = typer.Option("egnn-diffusion", "--generator"),
    guidance: list[str] = typer.Option(
        [],
        "--guidance",
        help="a preset (none, cfg, gradient, both, steered) or KEY=VALUE (cfg_weight=2, eta=0.08, targets.dg_h=0, "
        "steering.strength=0.5); repeatable",
    ),
    seed: int = typer.Option(0, "--seed"),
    set_name: str = typer.Option("generated", "--set"),
    start: Optional[str] = typer.Option(None, "--start", help="egnn-diffusion: free or templates"),
    steps: Optional[int] = typer.Option(None, "--steps", help="egnn-diffusion: respace the schedule to K steps"),
    elements: Optional[str] = typer.Option(
        None, "--elements", help="egnn-diffusion: sample only these elements (a chemical space), e.g. Mo,W,S,Se"
    ),
    require: Optional[str] = typer.Option(
        None,
        "--require",
        help="egnn-diffusion: a kind of compound, as groups separated by '/': every sample holds an atom of each "
        "group, e.g. Mo,W/S,Se for a metal chalcogenide (no elemental S, no Mo-W alloy)",
    ),
    option: list[str] = OptionOpt,
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """Generate candidates with a generator plugin, validate them and store them with their parameters."""
    from gen2d.jobs import generate_candidates

    params: dict[str, Any] = {}
    presets = [g for g in guidance if "=" not in g]
    if len(presets) > 1 or (presets and len(guidance) > 1):
        _fail("give one guidance preset, or KEY=VALUE pairs, not both", as_json)
    if presets:
        params["guidance"] = presets[0]
    elif guidance:
        params["guidance"] = _parse_options(guidance)
    if start:
        params["start"] = start
    if steps:
        params["n_steps"] = steps
    if elements:
        params["elements"] = [e.strip() for e in elements.split(",") if e.strip()]
    if require:
        groups = [[e.strip() for e in g.split(",") if e.strip()] for g in require.split("/")]
        if not all(groups):
            _fail(f"--require {require!r} has an empty group; give groups of elements like Mo,W/S,Se", as_json)
        params["require_any_of"] = groups
    _open(store, as_json)  # fail early and clearly on a bad store
    with _progress(not as_json and err.is_terminal) as prog:
        task = prog.add_task(f"generate ({generator})", total=n)
        try:
            res = generate_candidates(
                generator,
                _parse_options(option),
                n,
                seed,
                params,
                set_name,
                store,
                progress=lambda k: prog.advance(task, k),
            )
        except RuntimeError as exc:
            _fail(str(exc), as_json)
    doc = res.model_dump()
    if as_json:
        _emit_json(doc)
    else:
        out.print(
            f"generated {res.n_generated}, stored {res.n_accepted} (strict 2D valid {res.n_strict}) in set "
            f"{set_name}; rejected {len(res.rejected)}"
            + (
                f"; {res.n_flagged} flagged (diverged generation, see `gen2d top --show-failed`)"
                if res.n_flagged
                else ""
            )
        )


@app.command()
def rank(
    set_name: list[str] = typer.Option([], "--set", help="sets to rank (default: all)"),
    option: list[str] = typer.Option([], "--threshold", help="e.g. dg_h_window=0.15 e_hull_max=0.05"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """Recompute hits, Pareto fronts and rank scores from the stored scores."""
    from gen2d.jobs import rank_set
    from gen2d.scoring import RankThresholds

    cs = _open(store, as_json)
    res = rank_set(cs, list(set_name) or None, RankThresholds(**_parse_options(option)))
    if as_json:
        _emit_json(res.model_dump())
    else:
        out.print(f"ranked {res.n_ranked} ({res.n_complete} with all three properties); hits {res.n_hits}")


@app.command()
def report(
    out_dir: Path = typer.Option(Path("report"), "--out"),
    set_name: list[str] = typer.Option([], "--set"),
    top_k: int = typer.Option(10, "--k"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """Write the HTML report with its figures and tables."""
    from gen2d.report import write_report

    cs = _open(store, as_json)
    files = write_report(cs, out_dir, sets=list(set_name) or None, top_k=top_k)
    if as_json:
        _emit_json({"out_dir": str(out_dir.resolve()), "files": [str(f) for f in files]})
    else:
        out.print(f"report: {(out_dir / 'index.html').resolve()}")


def _load_flow_spec(spec: Path, override: list[str], as_json: bool):
    """The flow spec at ``spec`` with overrides, or a clear error (never a traceback)."""
    from pydantic import ValidationError

    from gen2d.config import load_spec

    if not spec.is_file():
        _fail(f"{spec}: no such spec", as_json)
    try:
        return load_spec(spec, override)
    except (ValidationError, ValueError) as exc:
        _fail(f"invalid spec {spec}: {exc}", as_json)


def _build_flow(fs, spec: Path, as_json: bool):
    """The jobflow Flow of ``fs``; an unknown scorer or a bad scorer option is a named error."""
    import contextlib

    from gen2d.flows import build_flow
    from gen2d.scoring import ScorerOptionsError

    try:
        with contextlib.redirect_stdout(sys.stderr):  # a plugin that prints on import keeps stdout clean
            return build_flow(fs)
    except ScorerOptionsError as exc:
        _fail(f"invalid spec {spec}: {exc}", as_json)


@app.command()
def run(
    spec: Path = typer.Argument(..., help="a flow spec (workflows/*.yaml)"),
    override: list[str] = typer.Option([], "--set-option", "-s", help="spec override KEY=VALUE, e.g. generate.n=20"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
):
    """Run a flow locally (jobflow run_locally) on the embedded store or the given one."""
    from jobflow import run_locally

    from gen2d.flows import job_store
    from gen2d.store import resolve_store_uri

    fs = _load_flow_spec(spec, override, as_json)
    if store:
        fs.store = store
    fs.store = resolve_store_uri(fs.store)
    cs = _open(fs.store, as_json)
    flow = _build_flow(fs, spec, as_json)
    if not as_json:
        err.print(f"running flow {fs.name} ({fs.flow}, {len(flow.jobs)} jobs) on {cs.uri}")
    logging.getLogger("jobflow").setLevel(logging.WARNING if as_json else logging.INFO)
    responses = run_locally(flow, store=job_store(fs.store), log=not as_json, ensure_success=False)
    failed = [j.name for j in flow.jobs if j.uuid not in responses]
    from gen2d.jobs import rank_set

    ranked = rank_set(cs, [fs.set], fs.thresholds)
    doc = {
        "flow": fs.flow,
        "name": fs.name,
        "store": cs.uri,
        "set": fs.set,
        "jobs": len(responses),
        "failed_jobs": failed,
        "rank": ranked.model_dump(),
        "report": str(Path(fs.report.out).absolute() / "index.html") if fs.report else None,
    }
    if as_json:
        _emit_json(doc)
    else:
        out.print(
            f"flow finished: {len(responses)} jobs ran{', FAILED: ' + ', '.join(failed) if failed else ''}; "
            f"{ranked.n_complete} candidates fully scored, {ranked.n_hits} hits"
        )
        if doc["report"]:
            out.print(f"report: {doc['report']}")
    if failed:
        raise typer.Exit(1)


@app.command()
def submit(
    spec: Path = typer.Argument(..., help="a flow spec (workflows/*.yaml)"),
    launchpad: Path = typer.Option(..., "--launchpad", help="your my_launchpad.yaml"),
    override: list[str] = typer.Option([], "--set-option", "-s"),
    store: Optional[str] = typer.Option(
        None,
        "--store",
        help="candidate store URI for the workers (default: the spec's, else each worker's $GEN2D_STORE); "
        "a monty:// store is made absolute and also takes the jobflow outputs",
    ),
    as_json: bool = JsonOpt,
):
    """Convert a flow to a FireWorks workflow and add it to your LaunchPad (gpu, cpu and dft worker categories)."""
    from fireworks import LaunchPad
    from jobflow.managers.fireworks import flow_to_workflow

    from gen2d.store import readable_secret_warning, redact_uri

    warning = readable_secret_warning(launchpad)
    if warning:
        err.print(f"[yellow]warning:[/yellow] {warning}")
    fs = _load_flow_spec(spec, override, as_json)
    jobs_to = None  # the workers' jobflow settings
    store = store or fs.store  # --store, else the spec's; None: each worker's GEN2D_STORE
    if store:
        if redact_uri(store) != store:
            _fail(
                "a store URI with a password would be written into the workflow; set GEN2D_STORE on the "
                "workers instead",
                as_json,
            )
        if store.startswith("memory://"):
            _fail(
                f"{store} lives inside one process, so FireWorks workers cannot share it; use monty:///abs/path "
                "(workers on this machine) or mongodb://host/db (set GEN2D_STORE on the workers)",
                as_json,
            )
        if store.startswith("monty://"):
            from gen2d.flows import job_store
            from gen2d.store import StoreUnavailable, _monty_path

            # a worker runs each Firework in its own launch folder: a relative path would open a new, empty store
            # there. Its jobflow outputs go to the same database, under the same file lock as the candidates.
            try:
                store = f"monty://{Path(_monty_path(store)).resolve()}"
            except StoreUnavailable as exc:
                _fail(str(exc), as_json)
            jobs_to = job_store(store)
        fs.store = store
    flow = _build_flow(fs, spec, as_json)  # a bad scorer option is refused here, not on a worker
    import contextlib

    # FireWorks logs to stdout; keep stdout for the one JSON document
    with contextlib.redirect_stdout(sys.stderr):
        try:
            lp = LaunchPad.from_file(str(launchpad))
        except Exception as exc:
            lp = None
            problem = f"cannot read launchpad {launchpad}: {type(exc).__name__}: {redact_uri(str(exc))[:200]}"
        if lp is not None:
            wf = flow_to_workflow(flow, store=jobs_to)
            try:
                mapping = lp.add_wf(wf)
                problem = None
            except Exception as exc:
                problem = f"cannot add the workflow: {type(exc).__name__}: {redact_uri(str(exc))[:200]}"
    if problem:
        _fail(problem, as_json)
    cats = sorted({fw.spec.get("_category", "") for fw in wf.fws})
    doc = {
        "workflow": wf.name,
        "fireworks": len(wf.fws),
        "categories": cats,
        "fw_ids": list(mapping.values()),
        "store": fs.store,  # None: each worker's GEN2D_STORE
        "job_store": "workflow" if jobs_to is not None else "worker jobflow settings",
    }
    if as_json:
        _emit_json(doc)
    else:
        out.print(
            f"added workflow {wf.name!r}: {len(wf.fws)} fireworks, categories {cats}. On the cluster: "
            "rlaunch -c <config dir> rapidfire (or qlaunch) with a FWorker of each of these categories "
            "(configs/fworker_<category>.example.yaml)."
        )


@app.command()
def evaluate(
    spec: Path = typer.Argument(..., help="an evaluation spec (workflows/evaluate.yaml)"),
    override: list[str] = typer.Option(
        [], "--set-option", "-s", help="spec override KEY=VALUE, e.g. seeds=[0,1,2] or arms.3.generator=substitution"
    ),
    out_dir: Optional[Path] = typer.Option(
        None, "--out", help="folder for evaluate.json, results.md and the plots (default: the spec's `out`)"
    ),
    as_json: bool = JsonOpt,
):
    """Run the evaluation suite: every arm at an equal generation CPU budget, scored the same way, 95 % CIs."""
    import contextlib

    from gen2d.evaluate import load_evaluate_spec, results_table, run_evaluation

    if not spec.is_file():
        _fail(f"{spec}: no such spec", as_json)
    try:
        es = load_evaluate_spec(spec, override)
    except Exception as exc:
        _fail(f"invalid spec {spec}: {type(exc).__name__}: {exc}", as_json)
    if out_dir is not None:
        es.out = str(out_dir)
    _, alias = es.all_arms()

    def progress(msg: str) -> None:  # stderr: stdout stays for the one JSON document
        err.print(msg)

    err.print(
        f"evaluating {len(es.arms)} arms + {sum(len(s.values) for s in es.sweeps) - len(alias)} sweep "
        f"points x {len(es.seeds)} seeds, {es.budget_cpu_s:g} CPU-s of generation each"
    )
    # some backends print to stdout when they load; stdout keeps the one JSON document
    problem = None
    with contextlib.redirect_stdout(sys.stderr):
        try:
            doc = run_evaluation(es, progress=progress)
        except (KeyError, RuntimeError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    if problem:
        _fail(problem, as_json)
    import shlex

    doc["command"] = shlex.join(
        [
            "gen2d",
            "evaluate",
            str(spec),
            *[a for o in override for a in ("-s", o)],
            *(["--out", str(out_dir)] if out_dir is not None else []),
            *(["--json"] if as_json else []),
        ]
    )
    Path(doc["files"]["json"]).write_text(json.dumps(doc, indent=2, default=str))
    if as_json:
        _emit_json(doc)
        return
    out.print(results_table(doc))
    out.print(f"JSON: {doc['files']['json']}; table: {doc['files']['table']}; plots: {', '.join(doc['plots'])}")


# ----------------------------------------------------------------------------------------------
# gen2d models: named MLIP weights (download into the cache, sha256 check)
frames_app = typer.Typer(no_args_is_help=True, help="DFT frames (energies, forces, provenance) as training data.")
app.add_typer(frames_app, name="frames")


@frames_app.command("export")
def frames_export(
    out_path: Path = typer.Option(..., "--out", help="extended-XYZ file to write"),
    directory: list[Path] = typer.Option(
        [], "--dir", help="DFT run folders to read (repeatable; default: the DFT folder of the settings)"
    ),
    settings_hash: str | None = typer.Option(
        None, "--settings-hash", help="keep only the frames of this CP2K settings hash (a training set holds one)"
    ),
    as_json: bool = JsonOpt,
):
    """Write every DFT frame (``dgh.dft`` runs, the H2 reference) once as extended XYZ, with energy (eV),
    forces (eV/Å), settings hash and source in each frame's info."""
    from gen2d.frames import export_extxyz
    from gen2d.settings import get_settings

    settings = get_settings()
    roots = list(directory) or [settings.dft_dir or settings.cache_dir / "dft"]  # where dgh.dft runs by default
    missing = [str(r) for r in roots if not Path(r).is_dir()]
    if missing:
        _fail(f"no such DFT folder: {', '.join(missing)}", as_json)
    summary = export_extxyz(roots, out_path, settings_hash=settings_hash)
    if as_json:
        _emit_json(summary)
        return
    out.print(
        f"{summary['n_frames']} frames ({summary['n_with_forces']} with forces) from {summary['n_runs']} runs "
        f"-> {summary['path']}"
    )
    if summary["n_duplicates_dropped"]:
        out.print(f"  {summary['n_duplicates_dropped']} frames held twice (runs sharing a part) written once")
    for key, n in summary["by_settings_hash"].items():
        out.print(f"  settings {key or '?'}: {n} frames found")
    if summary["mixed_settings"]:
        out.print("  [yellow]frames of several DFT settings: give --settings-hash to train on one[/yellow]")
    for skip in summary["skipped"]:
        out.print(f"  skipped {skip['path']}: {skip['reason']}")


models_app = typer.Typer(no_args_is_help=True, help="Named model weights: list them, download and verify them.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(as_json: bool = JsonOpt):
    """Every named model: cached or not, its sha256 (pinned or recorded at first download), its URL."""
    from gen2d import weights

    try:
        rows = [weights.status(m.name) for m in weights.MODELS.values()]
    except weights.WeightsError as exc:
        _fail(str(exc), as_json, code=1)
    if as_json:
        _emit_json({"cache": str(weights.default_cache_dir()), "offline": weights.is_offline(), "models": rows})
        return
    t = Table(title=f"gen2d models (cache {weights.default_cache_dir()})")
    for c in ("name", "cached", "sha256", "url"):
        t.add_column(c, overflow="fold")
    for r in rows:
        sha = f"{r['sha256']} ({r['sha256_source']})" if r["sha256"] else "none yet (recorded at first download)"
        t.add_row(r["name"], "yes" if r["cached"] else "no", sha, r["url"])
    out.print(t)


@models_app.command("fetch")
def models_fetch(
    name: str = typer.Argument(..., help="a model name from `gen2d models list`"),
    from_file: Optional[Path] = typer.Option(
        None, "--from", help="install this local copy instead of downloading (checked like a download)"
    ),
    url: Optional[str] = typer.Option(None, "--url", help="download from this URL (a mirror) instead"),
    as_json: bool = JsonOpt,
):
    """Download a named model into the cache (or check the cached copy), verifying its sha256."""
    from gen2d import weights

    try:
        weights.get_model(name)
    except weights.WeightsError as exc:
        _fail(str(exc), as_json)
    with _progress(not as_json and err.is_terminal) as prog:
        task = prog.add_task(f"fetching {name}", total=None)
        try:
            if from_file is not None:
                got = weights.install_file(name, from_file)
            else:
                got = weights.fetch(
                    name, url_override=url, progress=lambda done, total: prog.update(task, completed=done, total=total)
                )
        except weights.WeightsError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            problem = None
    if problem:
        _fail(problem, as_json, code=1)
    doc = got.as_dict()
    if as_json:
        _emit_json(doc)
    else:
        how = "downloaded" if got.downloaded else "already cached" if from_file is None else "copied"
        out.print(f"{got.name}: {how}, {got.path} ({got.size_bytes} bytes), sha256 {got.sha256} ({got.sha256_source})")


def main() -> None:  # pragma: no cover
    logging.basicConfig(level=logging.WARNING)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
