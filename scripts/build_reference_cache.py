#!/usr/bin/env python
"""Build the shipped MLIP reference cache for one chemical space (``src/gen2d/assets/references``).

The ``mlip-prototypes`` convex hull relaxes every elemental polymorph and every binary prototype of
each element pair with the candidate's own MLIP, stacks every database layer of the space
(:mod:`gen2d.hull.stacked`) and puts each molecule of the space's pairs in a box (:mod:`gen2d.hull.molecules`).
Cold, that costs ~6 s per element and ~30 s per pair on 2 cores, which dominates a first run. This script relaxes
them once for a chemical space and writes the same gzip JSON files the provider caches at run time, plus a
MANIFEST.json saying how they were made. The provider reads the shipped files read-only, under the same cache key (MLIP checkpoint hash,
prototype-library version, fmax, steps, a hash of the subsystem's own starts), so a different MLIP, version or setting
never uses them: it recomputes.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/build_reference_cache.py \\
        --elements Mo,W,Nb,Ta,V,Ti,S,Se,Te,C --out src/gen2d/assets/references

When a new prototype-library version only adds binary prototypes, narrows which decorations are built, or changes
only starts outside the space (the start-density floor of v6; the script checks that none of the space is changed),
``--derive-from OLD`` makes the new cache from an older one (same MLIP checkpoint, fmax and steps): every old
entry that the current library still builds is kept as it was relaxed, entries it no longer builds are left
out, and only the decorations of prototypes the old library did not have are relaxed, through the provider's
own (lockstep batched) relaxation path. Elemental polymorphs and stacked layers must be unchanged; the files
are re-keyed under the current version. The molecules have their own version: an old cache's molecules are kept
when their key is the current one, and relaxed otherwise. OLD may be ``--out`` itself (it is read completely first):

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/build_reference_cache.py \\
        --derive-from src/gen2d/assets/references --out src/gen2d/assets/references
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shlex
import sys
import time
from datetime import date
from itertools import combinations
from pathlib import Path
from typing import Any


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elements", help="comma-separated chemical space, e.g. Mo,W,S,Se (with --derive-from: OLD's)")
    ap.add_argument("--calculator", default="chgnet")
    ap.add_argument("--out", type=Path, required=True, help="cache directory to fill (created)")
    ap.add_argument(
        "--derive-from",
        type=Path,
        default=None,
        metavar="OLD",
        help="an older cache (with its MANIFEST.json) of the same MLIP and settings: keep its entries, relax only "
        "the decorations of binary prototypes it did not have",
    )
    args = ap.parse_args(argv)
    command = "OMP_NUM_THREADS=1 .venv/bin/python scripts/build_reference_cache.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )

    from gen2d.hull import MLIPPrototypesProvider
    from gen2d.relax import cached_calculator

    if args.derive_from is None and not args.elements:
        ap.error("--elements is required unless --derive-from is given")
    calc = cached_calculator(args.calculator)
    load = [round(x, 2) for x in os.getloadavg()]  # others' work on the machine makes the timings upper bounds
    if args.derive_from is not None:
        old = read_cache(args.derive_from)  # all of it, before --out (possibly the same folder) is cleared
        elements = sorted(old["manifest"]["chemical_space"])
        if args.elements and sorted({e.strip() for e in args.elements.split(",") if e.strip()}) != elements:
            ap.error(f"--elements must be the old cache's chemical space {elements} when deriving")
    else:
        elements = sorted({e.strip() for e in args.elements.split(",") if e.strip()})
    prov = MLIPPrototypesProvider(calc, cache_dir=args.out, shipped=False)
    if args.derive_from is not None:
        entries, manifest = derive(old, prov, elements)  # checks and relaxes before anything is removed
        manifest["load_average_at_start"] = load
        clear(args.out)
        for sub, found in entries.items():
            prov._write_cache(prov._key(sub), sub, found)
        return finish(manifest, prov, elements, args.out, command)
    clear(args.out)
    t0, c0 = time.time(), cpu_seconds()
    timings: dict[str, float] = {}
    for el in elements:
        t = time.time()
        n = len(prov.element_entries(el))
        timings[el] = round(time.time() - t, 1)
        print(f"{el}: {n} phases, {timings[el]} s", flush=True)
    for a, b in combinations(elements, 2):
        t = time.time()
        n = len(prov.binary_entries(a, b))
        timings[f"{a}-{b}"] = round(time.time() - t, 1)
        print(f"{a}-{b}: {n} phases, {timings[f'{a}-{b}']} s", flush=True)
    if prov.stacked is not None:  # stacked database layers of every chemical system inside the space
        t = time.time()
        n = len(prov.stacked_entries(elements))
        timings["stacked"] = round(time.time() - t, 1)
        print(f"stacked layers: {n} phases, {timings['stacked']} s", flush=True)
    if prov.molecules:  # the molecules of the space's pairs (CS2 for C-S), each in its box
        t = time.time()
        found = prov._ensure(prov.molecule_subsystems(elements))
        timings["molecules"] = round(time.time() - t, 1)
        print(f"molecules: {sum(map(len, found.values()))}, {timings['molecules']} s", flush=True)
    manifest = {
        "wall_seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(cpu_seconds() - c0, 1),
        "seconds_per_subsystem": timings,
        "load_average_at_start": load,
    }
    return finish(manifest, prov, elements, args.out, command)


def clear(out: Path) -> None:
    """Remove the cache files of ``out``: files under another library version or model are never read again."""
    if out.is_dir():
        for old_file in out.glob("*/*.json.gz"):
            old_file.unlink()
        for d in out.iterdir():
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def finish(manifest: dict[str, Any], prov: Any, elements: list[str], out: Path, command: str) -> int:
    """Write MANIFEST.json: what the cache holds, how it was made (``manifest`` adds the timings)."""
    from gen2d.hull import PROTOTYPE_LIBRARY_VERSION

    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json.gz"))
    entries = {}
    for rel in files:
        with gzip.open(out / rel, "rt") as fh:
            entries[rel] = len(json.load(fh)["entries"])
    manifest = {
        "what": "mlip-prototypes reference phases (MP2020-corrected ComputedEntries), read-only seed cache",
        "chemical_space": elements,
        "n_elements": len(elements),
        "n_pairs": len(elements) * (len(elements) - 1) // 2,
        "provider": prov.describe(),
        "prototype_library_version": PROTOTYPE_LIBRARY_VERSION,
        "files": entries,
        **manifest,
        "command": command,
        "date": date.today().isoformat(),
        "python": platform.python_version(),
        "note": "Energies are the MLIP's own; only a run with the same MLIP checkpoint and settings reads them.",
    }
    manifest["provider"]["cache_dir"] = "src/gen2d/assets/references"
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(
        f"{len(files)} files, {sum(entries.values())} phases; wall {manifest['wall_seconds']} s, "
        f"CPU {manifest['cpu_seconds']} s"
    )
    return 0


def read_cache(folder: Path) -> dict[str, Any]:
    """An existing cache: its MANIFEST and, per subsystem, the stored document (``ref_key``, entries)."""
    from gen2d.hull.mlip_prototypes import split_key

    path = folder / "MANIFEST.json"
    if not path.is_file():
        raise SystemExit(f"--derive-from {folder}: no MANIFEST.json there")
    manifest = json.loads(path.read_text())
    docs = {}
    for rel in manifest["files"]:
        with gzip.open(folder / rel, "rt") as fh:
            doc = json.load(fh)
        docs[doc.get("chemsys") or split_key(doc["ref_key"])[1]] = doc
    return {"manifest": manifest, "docs": docs, "sha256": _content_sha256(folder, list(manifest["files"]))}


def _content_sha256(folder: Path, files: list[str]) -> str:
    """sha256 of MANIFEST.json and the listed cache files, in order: which cache a derivation read."""
    import hashlib

    h = hashlib.sha256()
    for rel in ["MANIFEST.json", *sorted(files)]:
        h.update(rel.encode() + b"\0" + (folder / rel).read_bytes())
    return h.hexdigest()


def _site_counts(proto: Any) -> tuple[float, float]:
    """(A sites, B sites) in the conventional cell of a binary prototype: its stoichiometry."""
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup(
        proto.spacegroup,
        Lattice.from_parameters(*proto.lattice),
        ["Li" if x == "A" else "Be" for x, _ in proto.sites],
        [c for _, c in proto.sites],
        tol=1e-3,
    )
    return s.composition["Li"], s.composition["Be"]


def _floored_starts(elements: list[str], binary_prototypes: Any) -> list[str]:
    """``subsystem:prototype`` of every phase of ``elements`` whose start the density floor
    (:data:`gen2d.hull.mlip_prototypes.MIN_VOLUME_PER_ATOM`, library v6) changes: an older cache's relaxation of
    such a phase is not what the current library computes."""
    from gen2d.hull import BINARY_PROTOTYPES, ELEMENT_PROTOTYPES, binary_decorations, element_polymorphs
    from gen2d.hull.mlip_prototypes import MIN_VOLUME_PER_ATOM

    out = []
    for el in elements:
        for name in element_polymorphs(el):
            s = ELEMENT_PROTOTYPES[name].build(el, min_volume_per_atom=0.0)
            if s.volume / len(s) < MIN_VOLUME_PER_ATOM:
                out.append(f"{el}:{name}")
    for a, b in combinations(elements, 2):
        for name, x, y in binary_decorations(a, b, binary_prototypes):
            s = BINARY_PROTOTYPES[name].build(x, y, min_volume_per_atom=0.0)
            if s.volume / len(s) < MIN_VOLUME_PER_ATOM:
                out.append(f"{a}-{b}:{name}({x}{y})")
    return out


def derive(old: dict[str, Any], prov: Any, elements: list[str]) -> tuple[dict[str, list], dict[str, Any]]:
    """The current library's entries of ``elements`` made from an older cache (see the module docstring).

    Returns the entries per subsystem and the MANIFEST fields that say how: the old build's provenance, what
    was kept, left out and relaxed. Nothing is written.
    """
    from pymatgen.core import Composition

    from gen2d.hull import BINARY_PROTOTYPES, PROTOTYPE_LIBRARY_VERSION, binary_decorations, element_polymorphs
    from gen2d.hull.mlip_prototypes import STACKED_PREFIX, _Crashed, content_tag, settled, split_key
    from gen2d.hull.references import _decode_entry

    old_manifest, docs = old["manifest"], old["docs"]
    was = old_manifest["provider"]
    now = prov.describe()
    # the model string names the package version that ran the checkpoint: energies made under another version
    # are not relabelled as this one's (the provider would then read them as its own)
    for field in ("checkpoint_sha256", "model", "fmax", "steps"):
        if was.get(field) != now.get(field):
            raise SystemExit(
                f"cannot derive: the old cache has {field}={was.get(field)!r}, this run {now.get(field)!r}"
            )
    other = sorted(sub for sub, doc in docs.items() if doc.get("model") not in (None, prov.model))
    if other:
        raise SystemExit(f"cannot derive: {', '.join(other)} were made by another model than {prov.model!r}; rebuild")
    old_protos = set(was["binary_prototypes"])
    added = [p for p in prov.binary_prototypes if p not in old_protos]
    counts = {name: _site_counts(BINARY_PROTOTYPES[name]) for name in prov.binary_prototypes}
    subsystems = [*elements, *(f"{a}-{b}" for a, b in combinations(elements, 2))]
    if prov.stacked is not None:
        subsystems += [f"{STACKED_PREFIX}{cs}" for cs in prov.stacked.chemical_systems(elements)]
    missing = [s for s in subsystems if s not in docs]
    if missing:
        raise SystemExit(f"cannot derive: the old cache lacks {missing}")
    floored = _floored_starts(elements, prov.binary_prototypes)
    if floored:
        raise SystemExit(f"cannot derive: the start-density floor changes the starts of {floored}; rebuild")
    kept: dict[str, list] = {}
    removed, dropped_before, jobs, owner = [], [], [], []
    for sub in subsystems:
        old_key, new_key = docs[sub]["ref_key"], prov._key(sub)
        entries = [_decode_entry(d) for d in docs[sub]["entries"]]
        old_tag = split_key(old_key)[2]
        if old_tag and not sub.startswith(STACKED_PREFIX) and old_tag != content_tag(sub, was["binary_prototypes"]):
            # the old build's own prototypes now build other starts (a moved site, a new lattice, a new rule)
            raise SystemExit(f"cannot derive: the starts of {sub} changed since the old build; rebuild")
        if sub.startswith(STACKED_PREFIX):
            if old_key.split("-stacked", 1)[1] != new_key.split("-stacked", 1)[1]:
                raise SystemExit(f"cannot derive: the stacked layers changed ({old_key} vs {new_key}); rebuild")
            kept[sub] = entries
        elif "-" not in sub:
            if sorted(e.data["prototype"] for e in entries) != sorted(element_polymorphs(sub)):
                raise SystemExit(f"cannot derive: the polymorphs of {sub} changed (or one was dropped); rebuild")
            kept[sub] = entries
        else:
            a, b = sub.split("-")
            decorations = binary_decorations(a, b, prov.binary_prototypes)
            covered = set()
            kept[sub] = []
            for e in entries:
                name = e.data["prototype"]
                match = [
                    (n, x, y)
                    for n, x, y in decorations
                    if n == name
                    and Composition({x: counts[n][0], y: counts[n][1]}).reduced_composition
                    == e.composition.reduced_composition
                ]
                if match:
                    kept[sub].append(e)
                    covered.update(match)
                else:
                    removed.append(e.entry_id)
            for deco in decorations:
                if deco[0] in added:
                    jobs.append((deco[0], BINARY_PROTOTYPES[deco[0]].build(deco[1], deco[2])))
                    owner.append(sub)
                elif deco not in covered:  # the old build relaxed it and dropped it (or it was widened: rebuild)
                    dropped_before.append("{}:{}{}".format(*deco))
    # an old build's phase whose relaxation stopped still falling (before the rule existed) is not carried over
    unsettled = [e.entry_id for entries in kept.values() for e in entries if not settled(e)]
    kept = {sub: [e for e in entries if settled(e)] for sub, entries in kept.items()}
    molecules_relaxed = []
    for sub in prov.molecule_subsystems(elements):  # versioned apart from the library: kept when the key matches
        if sub in docs and docs[sub]["ref_key"] == prov._key(sub):
            kept[sub] = [_decode_entry(d) for d in docs[sub]["entries"]]
            continue
        kept[sub] = []
        for job in prov._subsystem_jobs(sub):
            jobs.append(job)
            owner.append(sub)
            molecules_relaxed.append(job[0])
    t0, c0 = time.time(), cpu_seconds()
    print(f"keeping {sum(map(len, kept.values()))} phases, relaxing {len(jobs)} new decorations", flush=True)
    relaxed = prov._relax_jobs(jobs, ", ".join(added))  # the provider's own (batched) relaxation
    wall, cpu = round(time.time() - t0, 1), round(cpu_seconds() - c0, 1)
    crashed = [e.message for e in relaxed if isinstance(e, _Crashed)]
    if crashed:  # a phase the MLIP crashed on is not a phase that does not exist: never shipped as absent
        raise SystemExit(f"the MLIP failed on {len(crashed)} new decoration(s), e.g. {crashed[0]}; nothing written")
    new = []
    for (name, structure), sub, entry in zip(jobs, owner, relaxed, strict=True):
        formula = structure.composition.reduced_formula
        if entry is not None:
            kept[sub].append(entry)
        how = (
            {} if entry is None else {k: entry.data[k] for k in ("converged", "steps", "final_fmax") if k in entry.data}
        )
        new.append({"subsystem": sub, "prototype": name, "formula": formula, "kept": entry is not None, **how})
        print(f"{sub}: {name} {formula} {'kept' if entry is not None else 'dropped'}", flush=True)
    history = {k: v for k, v in old_manifest.items() if k not in ("files", "provider", "what", "note")}
    return kept, {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "derived": (
            f"Library v{PROTOTYPE_LIBRARY_VERSION} from the v{was['library_version']} cache in derived_from: every "
            f"entry the current library still builds is that build's relaxation; {len(removed)} it no longer builds "
            f"were left out; the {len(jobs) - len(molecules_relaxed)} decorations of the prototypes it lacked "
            f"({', '.join(added) or 'none'}) and the {len(molecules_relaxed)} molecules it lacked "
            f"({', '.join(molecules_relaxed) or 'none'}) were relaxed here (new_decorations); wall_seconds and "
            "cpu_seconds are theirs. The start-density floor "
            "(MIN_VOLUME_PER_ATOM) changes no start of this space (checked before deriving)."
        ),
        "new_decorations": new,
        "removed_entries": removed,
        "unsettled_entries_left_out": unsettled,
        "dropped_by_old_build": dropped_before,
        "derived_from": {
            "prototype_library_version": was["library_version"],
            "input_sha256": old.get("sha256"),
            **history,
        },
        **{k: old_manifest[k] for k in ("model_note", "stacked_note") if k in old_manifest},
    }


if __name__ == "__main__":
    sys.exit(main())
