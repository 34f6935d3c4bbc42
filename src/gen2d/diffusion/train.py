"""Train the EGNN monolayer diffusion model: data loading, the training loop, checkpoints and resume.

Training data come from any mix of the 2DMatPedia ASE db, MC2D JSON, the 2DMatPedia POSCAR tarball
and PaddleMaterial's 2D CSVs, deduplicated by content hash; the run is device-agnostic (CPU, or CUDA
with mixed precision, a batch size measured from free memory and DataLoader workers).

The checkpoint is a plain dict (tensors, numbers, strings, lists) saved with ``torch.save`` and read
with ``torch.load(weights_only=True)``; it carries the model config, the element vocabulary, the
representation statistics and the schedule, so sampling can only use the schedule the model saw.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from gen2d.data.augment import random_strain
from gen2d.data.graphs import gauss_reduce_2d
from gen2d.data.readers import (
    MonolayerRecord,
    Rejection,
    ase_db_rows,
    is_paddle2d,
    is_poscar_tarball,
    load_mc2d_entries,
    matpedia_labels,
    mc2d_atoms,
    paddle2d_csv_files,
    read_paddle2d,
    read_poscar_tgz,
)
from gen2d.diffusion.loss import MonolayerBatch, Representation, diffusion_loss, shrinkage_stats
from gen2d.diffusion.schedule import DiffusionSchedule, ScheduleSpec
from gen2d.models.egnn import HEAD_NAMES, EGNNConfig, EGNNDenoiser
from gen2d.settings import get_settings

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "gen2d.egnn-diffusion/1"
#: version of the per-source cache of read monolayers; bump when a reader, the representation,
#: ``content_hash`` or ``validate_strict`` changes (the cache holds their results)
SOURCE_CACHE_FORMAT = "gen2d.training-source/1"
#: sources whose missing synth label means "hypothetical" (2DMatPedia's bottom-up layers), so the PU
#: rule may call it 0; elsewhere (the unlabelled POSCAR set, paddle2d) a missing label stays masked
PU_NEGATIVE_SOURCES = frozenset({"2dmatpedia"})
#: the sources of the first models; "auto" deduplication stays off for them so their splits reproduce
ORIGINAL_SOURCE_KINDS = frozenset({"2dmatpedia", "mc2d"})


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU (:func:`gen2d.scoring.device_name`)."""
    from gen2d.scoring import device_name

    return torch.device(device_name(device))


def resolve_amp(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run, or None for full float32.

    Mixed precision is CUDA only: ``"auto"`` and ``True`` give bfloat16 where the GPU supports it
    (no loss scaling needed), else float16 (with a ``GradScaler``). On CPU it is always None.
    """
    if device.type != "cuda" or amp is False or amp == "false":
        return None
    # native bfloat16 from Ampere (compute capability 8) on; torch.cuda.is_bf16_supported() also says yes where
    # it is only emulated (T4, V100), and it asks about the current device rather than this one
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def resolve_num_workers(num_workers: int | str, device: torch.device) -> int:
    """DataLoader workers: ``"auto"`` is 0 on CPU (collating in the training process costs nothing
    extra there and keeps runs bit-reproducible), and on CUDA one per free core, at most 8."""
    if num_workers != "auto":
        return int(num_workers)
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


def default_data_dir() -> Path:
    """The settings' data folder (``GEN2D_DATA``); see :mod:`gen2d.settings`."""
    return get_settings().data_dir


class TrainConfig(BaseModel):
    """Every knob of a training run (loaded from YAML, overridable from the CLI)."""

    data_dir: str | None = Field(None, description="folder with the datasets; default $GEN2D_DATA")
    sources: list[str] = Field(default_factory=lambda: ["2dmatpedia_filtered.db", "mc2d_258_exfoliable.json"])
    dg_h_labels: str | None = Field(None, description="JSON {source_id: dg_h in eV} from the HER surrogate")
    synth_unlabeled_as_negative: bool = Field(
        True,
        description="treat hypothetical (bottom-up) entries as synth 0: the positive-vs-unlabeled "
        "classifier ranks like the true P(synth) (Elkan & Noto 2008); with only positives "
        "known, the head would learn the constant 1",
    )
    max_atoms: int = 40
    max_thickness: float = Field(8.0, description="Å; thicker entries are not single layers to learn from")
    max_records: int | None = None
    deduplicate: bool | Literal["auto"] = Field(
        "auto",
        description="drop a monolayer whose gen2d.structures.content_hash an earlier one has (sources in "
        "order, so the first source wins; counted as 'duplicate'); auto = on when any source beyond the "
        "2DMatPedia db and MC2D JSON is read (the earlier models' splits stay as they were)",
    )
    source_cache: bool = Field(
        True,
        description="keep each fully read POSCAR tarball or paddle2d source (primitive cells, content "
        "hashes, strict verdicts) in <cache_dir>/training_sources, keyed by the files' sha256",
    )
    strict_valid_only: bool = Field(
        False,
        description="keep only monolayers that pass gen2d.structures.validate_strict (the data itself is "
        "78.6 % strict-valid; a generator trained on all of it learns the invalid 21 % too)",
    )
    val_fraction: float = 0.05
    holdout_formulas_fraction: float | None = Field(
        None,
        description="hold out this fraction of the reduced formulas (seeded) instead of val_fraction of "
        "the records: no formula of the validation set is in training",
    )
    train_fraction: float = Field(
        1.0,
        description="train on this seeded share of the training split (nested: a smaller share is a "
        "subset of a larger one); the validation split does not change (learning curves)",
    )
    hidden: int = 128
    n_layers: int = 4
    n_cond_layers: int = 1
    cutoff: float = 4.0
    frac_fourier: int = Field(
        3,
        description="harmonics of the fractional edge difference as edge features "
        "(0 = the original Cartesian-only edges)",
    )
    T: int = 1000
    sigma_min: float = 0.005
    sigma_max: float = 0.5
    lead_power: float = Field(
        1.0,
        description="types and lattice are noised to step (T-1)(t/(T-1))^p when the "
        "positions are at t (ScheduleSpec.lead_power); 1 = one clock",
    )
    type_diffusion: Literal["gaussian", "absorbing"] = Field(
        "gaussian",
        description="how atom types are diffused: gaussian = a continuous one-hot with a noise output (the "
        "original model); absorbing = masked discrete diffusion (D3PM's absorbing state, as MatterGen's "
        "atom types): each type is MASK with probability 1 - kappa_t on the types' clock, the network "
        "predicts the clean type's logits, the loss is their cross-entropy on the masked atoms. Stored in "
        "the checkpoint's model config, so the sampler follows it",
    )
    z_scale: float = 2.0
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int | Literal["auto"] = Field(
        32,
        description="structures per step; auto = 32 on CPU, and on CUDA measured from free memory "
        "(see resolve_batch_size)",
    )
    amp: bool | Literal["auto"] = Field(
        "auto", description="mixed precision on CUDA (bf16, else fp16 with loss scaling); a no-op on CPU"
    )
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader workers collating batches; auto = 0 on CPU, one per free core on CUDA"
    )
    max_steps: int = 10_000
    max_minutes: float | None = Field(
        None, description="wall-clock budget of this run, counted from the start (data reading included)"
    )
    max_cpu_minutes: float | None = Field(None, description="CPU-time budget of this run (fair on a shared machine)")
    cond_dropout: float = 0.15
    lambdas: tuple[float, float, float] = (1.0, 1.0, 0.5)
    rotate: bool = True
    max_strain: float = 0.02
    grad_clip: float = 10.0
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = 1
    out_dir: str = "runs/egnn"
    checkpoint_every: int = 500
    log_every: int = 50
    resume: bool = True
    progress: bool = True


@dataclass
class MonolayerArrays:
    """One training monolayer in the diffusion representation (numpy, before batching)."""

    source: str
    source_id: str
    species: list[str]
    lattice2d: np.ndarray  # (2, 2)
    frac: np.ndarray  # (N, 2)
    z: np.ndarray  # (N,), centred, Å
    labels: dict[str, float | None]
    content_hash: str | None = None  # filled on demand (deduplication) or from the source cache
    strict_ok: bool | None = None  # gen2d.structures.strict_verdict, filled on demand or from the cache

    @property
    def formula(self) -> str:
        """Reduced formula (pymatgen), the unit of the formula hold-out."""
        from pymatgen.core import Composition

        return Composition(dict(Counter(self.species))).reduced_formula

    @property
    def thickness(self) -> float:
        return float(self.z.max() - self.z.min()) if len(self.z) else 0.0

    def to_structure(self, vacuum: float = 20.0):
        return monolayer_structure(self.species, self.lattice2d, self.frac, self.z, vacuum)


def monolayer_structure(
    species: list[str], lattice2d: np.ndarray, frac: np.ndarray, z: np.ndarray, vacuum: float = 20.0
):
    """A pymatgen ``Structure`` in the gen2d frame: a, b in the xy-plane, c along z, layer centred,
    ``vacuum`` Å between periodic images of the layer. Inverse of :func:`arrays_from_cell`."""
    from pymatgen.core import Lattice, Structure

    thickness = float(z.max() - z.min()) if len(z) else 0.0
    c = thickness + vacuum
    lat = np.zeros((3, 3))
    lat[:2, :2] = lattice2d
    lat[2, 2] = c
    coords = np.concatenate([np.mod(frac, 1.0), ((z - (z.max() + z.min()) / 2)[:, None] / c) + 0.5], -1)
    return Structure(Lattice(lat), species, coords)


def arrays_from_cell(
    cell: np.ndarray,
    positions: np.ndarray,
    species: list[str],
    source: str,
    source_id: str,
    labels: dict[str, float | None],
) -> MonolayerArrays:
    """Bring a slab whose vacuum is along the third cell vector into the diffusion representation.

    The layer is unwrapped across the vacuum boundary (largest gap in the third fractional
    coordinate), z is taken along the plane normal, and the in-plane basis is Gauss-reduced.
    """
    cell = np.asarray(cell, float)
    frac3 = np.linalg.solve(cell.T, np.asarray(positions, float).T).T
    f3 = np.sort(np.mod(frac3[:, 2], 1.0))
    gaps = np.diff(np.concatenate([f3, f3[:1] + 1]))
    cut = f3[(np.argmax(gaps) + 1) % len(f3)]  # the layer starts after the widest vacuum gap
    frac3[:, 2] = np.mod(frac3[:, 2] - cut, 1.0)
    cart = frac3 @ cell
    a, b = cell[0], cell[1]
    normal = np.cross(a, b)
    normal /= np.linalg.norm(normal)
    e1 = a / np.linalg.norm(a)
    e2 = np.cross(normal, e1)
    z = cart @ normal
    xy = np.stack([cart @ e1, cart @ e2], -1)
    lat = np.array([[a @ e1, a @ e2], [b @ e1, b @ e2]])
    ra, rb, m = gauss_reduce_2d(lat[0].tolist(), lat[1].tolist())
    lat_r = np.array([ra, rb])
    # rotate so a' lies along x (rotation about z leaves the material unchanged)
    ang = math.atan2(lat_r[0, 1], lat_r[0, 0])
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    lat_r = lat_r @ rot
    xy = xy @ rot
    frac = np.mod(np.linalg.solve(lat_r.T, xy.T).T, 1.0)
    return MonolayerArrays(source, source_id, list(species), lat_r, frac, z - z.mean(), labels)


def _read_2dmatpedia(path: Path) -> Iterator[MonolayerArrays]:
    """2DMatPedia rows through :func:`gen2d.data.readers.ase_db_rows`; an undecodable row stops training."""
    for _, row in ase_db_rows(path):
        if isinstance(row, Exception):
            raise row
        atoms = row.toatoms()
        data = row.data or {}
        labels = matpedia_labels(data)
        yield arrays_from_cell(
            atoms.cell.array,
            atoms.positions,
            atoms.get_chemical_symbols(),
            "2dmatpedia",
            str(data.get("material_id", row.id)),
            {
                "dg_h": None,
                "e_hull": labels["e_hull"],
                "synth": None if labels["synth_label"] is None else float(labels["synth_label"]),
            },
        )


def _read_mc2d(path: Path) -> Iterator[MonolayerArrays]:
    """MC2D entries through :func:`gen2d.data.readers.mc2d_atoms`, keyed by ``db_id`` (the dg_h labels' key)."""
    for entry in load_mc2d_entries(path):
        atoms = mc2d_atoms(entry)
        # MC2D layers come from known 3D parents: they count as synthesizable; no hull energy given
        yield arrays_from_cell(
            atoms.cell.array,
            atoms.positions,
            atoms.get_chemical_symbols(),
            "mc2d",
            str(entry.get("db_id", entry.get("formula"))),
            {"dg_h": None, "e_hull": None, "synth": 1.0},
        )


def _arrays_from_record(rec: MonolayerRecord, source: str) -> MonolayerArrays:
    """A reader's :class:`MonolayerRecord` (oriented structure, gen2d label names) as training arrays."""
    s = rec.structure
    synth = rec.labels.get("synth_label")
    return arrays_from_cell(
        s.lattice.matrix,
        s.cart_coords,
        [site.specie.symbol for site in s],
        source,
        rec.source_id,
        {
            "dg_h": rec.labels.get("dg_h"),
            "e_hull": rec.labels.get("e_hull"),
            "synth": None if synth is None else float(synth),
        },
    )


def _read_poscar_tgz(path: Path) -> Iterator[MonolayerArrays | Rejection]:
    """The 2DMatPedia POSCAR tarball through :func:`gen2d.data.readers.read_poscar_tgz` (primitive cells, no labels)."""
    for outcome in read_poscar_tgz(path, source="2dmatpedia_poscar"):
        yield outcome.rejection if outcome.record is None else _arrays_from_record(outcome.record, "2dmatpedia_poscar")


def _read_paddle2d(path: Path) -> Iterator[MonolayerArrays | Rejection]:
    """PaddleMaterial's 2D CSVs through :func:`gen2d.data.readers.read_paddle2d` (DFT ``e_hull`` labels)."""
    for outcome in read_paddle2d(path, source="paddle2d"):
        yield outcome.rejection if outcome.record is None else _arrays_from_record(outcome.record, "paddle2d")


def source_kind(path: Path) -> str:
    """Which reader a training source needs, from its name: ``2dmatpedia`` (``.db``), ``poscar_tgz``
    (``.tgz``/``.tar.gz``), ``paddle2d`` (a CSV with ``cif`` and ``ehull`` columns, or a folder of
    them), else ``mc2d`` (JSON)."""
    if path.suffix == ".db":
        return "2dmatpedia"
    if is_poscar_tarball(path):
        return "poscar_tgz"
    if is_paddle2d(path):
        return "paddle2d"
    return "mc2d"


_READERS = {
    "2dmatpedia": _read_2dmatpedia,
    "mc2d": _read_mc2d,
    "poscar_tgz": _read_poscar_tgz,
    "paddle2d": _read_paddle2d,
}
#: the losses shown on the progress bar (ce_types: the cross-entropy of absorbing-state types)
_PROGRESS_KEYS = ("denoise", "eps_frac", "eps_z", "eps_types", "ce_types", "eps_lattice", "head_e_hull", "head_synth")
_CACHED_KINDS = frozenset({"poscar_tgz", "paddle2d"})  # the slow readers (primitive cells, CIF parsing)


def source_files(path: Path) -> list[Path]:
    """The files a source reads (a paddle2d folder: its CSVs)."""
    return paddle2d_csv_files(path) if path.is_dir() else [path]


def source_sha256(path: Path) -> str:
    """SHA-256 of a source file; of a folder, of its files' names and digests."""
    import hashlib

    from gen2d.scoring import file_sha256

    files = source_files(path)
    if not path.is_dir():
        return file_sha256(files[0])
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _record_hash(rec: MonolayerArrays) -> str | None:
    if rec.content_hash is None:
        from gen2d.structures import content_hash

        try:
            rec.content_hash = content_hash(rec.to_structure())
        except Exception:  # a structure the hash cannot canonicalise is kept, not deduplicated
            return None
    return rec.content_hash


def _record_strict(rec: MonolayerArrays) -> bool:
    if rec.strict_ok is None:
        from gen2d.structures import strict_verdict

        rec.strict_ok = strict_verdict(rec.to_structure())[0]  # a validator crash is not a valid structure
    return rec.strict_ok


def _cache_path(cache_dir: Path, kind: str, sha: str) -> Path:
    return cache_dir / f"{kind}-{sha[:16]}.json.gz"


def _cached_source(path: Path, kind: str, cache_dir: Path | None) -> Iterator[MonolayerArrays | Rejection]:
    """A source's records, from the cache when it holds them; a source read to the end is cached with
    every record's content hash and strict verdict (computed once, so later runs skip both)."""
    reader = _READERS[kind]
    if cache_dir is None or kind not in _CACHED_KINDS:
        yield from reader(path)
        return
    target = _cache_path(cache_dir, kind, source_sha256(path))
    if target.exists():
        try:
            payload = json.loads(gzip.decompress(target.read_bytes()))
            ok = payload.get("format") == SOURCE_CACHE_FORMAT
        except Exception:
            ok = False
        if ok:
            for d in payload["records"]:
                yield MonolayerArrays(
                    d["source"],
                    d["source_id"],
                    d["species"],
                    np.array(d["lattice2d"], float).reshape(2, 2),
                    np.array(d["frac"], float).reshape(-1, 2),
                    np.array(d["z"], float),
                    d["labels"],
                    d["content_hash"],
                    d["strict_ok"],
                )
            for d in payload["rejections"]:
                yield Rejection(**d)
            return
    records: list[dict[str, Any]] = []
    rejections: list[dict[str, str]] = []
    for item in reader(path):
        if isinstance(item, Rejection):
            rejections.append(item.as_dict())
        else:
            _record_hash(item)
            _record_strict(item)
            records.append(
                {
                    "source": item.source,
                    "source_id": item.source_id,
                    "species": item.species,
                    "lattice2d": item.lattice2d.tolist(),
                    "frac": item.frac.tolist(),
                    "z": item.z.tolist(),
                    "labels": dict(item.labels),
                    "content_hash": item.content_hash,
                    "strict_ok": item.strict_ok,
                }
            )
        yield item
    # only reached when the caller read the whole source (max_records stops a generator early)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        body = {"format": SOURCE_CACHE_FORMAT, "source": str(path), "records": records, "rejections": rejections}
        tmp.write_bytes(gzip.compress(json.dumps(body).encode()))
        tmp.replace(target)
    except OSError as exc:  # a read-only cache costs time, never the run
        log.warning("cannot cache %s: %s", path, exc)


def load_training_set(
    config: TrainConfig, stats: dict[str, dict[str, Any]] | None = None
) -> tuple[list[MonolayerArrays], dict[str, int]]:
    """Read every configured source; returns the kept monolayers and counts of why others were dropped.

    Each source is read by :mod:`gen2d.data.readers`, chosen by :func:`source_kind`. Filters, in order:
    atom count, thickness, strict validity (``strict_valid_only``), then a content-hash duplicate of
    an earlier kept monolayer (``deduplicate``; the first source in ``sources`` wins). A reader's named
    rejection (e.g. paddle2d's ``impossible_e_hull``) is counted under its reason.

    Parameters
    ----------
    stats : dict, optional
        Filled with one entry per source: path, kind, sha256, records read, kept and dropped by reason.
    """
    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    dg_h = json.loads(Path(config.dg_h_labels).read_text()) if config.dg_h_labels else {}
    paths = []
    for name in config.sources:
        path = data_dir / name
        if not path.exists():
            raise FileNotFoundError(f"training source {path} not found (set GEN2D_DATA or data_dir)")
        paths.append((name, path, source_kind(path)))
    dedup = config.deduplicate
    if dedup == "auto":
        dedup = any(kind not in ORIGINAL_SOURCE_KINDS for _, _, kind in paths)
    cache_dir = None
    if config.source_cache:
        cache_dir = Path(get_settings().cache_dir).expanduser() / "training_sources"
    kept: list[MonolayerArrays] = []
    dropped: Counter = Counter()
    seen: set[str] = set()
    for name, path, kind in paths:
        here: Counter = Counter()
        n_read = n_kept = 0
        if stats is not None:
            stats[name] = {"path": str(path), "kind": kind, "sha256": source_sha256(path)}
        full = True
        for rec in _cached_source(path, kind, cache_dir):
            if isinstance(rec, Rejection):
                here[rec.reason] += 1
                continue
            n_read += 1
            if len(rec.species) > config.max_atoms:
                here["too_many_atoms"] += 1
                continue
            if rec.thickness > config.max_thickness:
                here["too_thick"] += 1
                continue
            if config.strict_valid_only and not _record_strict(rec):
                here["not_strict_valid"] += 1
                continue
            if dedup:
                h = _record_hash(rec)
                if h is not None and h in seen:
                    here["duplicate"] += 1
                    continue
                if h is not None:
                    seen.add(h)
            if (
                rec.labels.get("synth") is None
                and config.synth_unlabeled_as_negative
                and rec.source in PU_NEGATIVE_SOURCES
            ):
                rec.labels["synth"] = 0.0
            key = f"{rec.source}:{rec.source_id}"
            if key in dg_h or rec.source_id in dg_h:
                rec.labels["dg_h"] = float(dg_h.get(key, dg_h.get(rec.source_id)))
            kept.append(rec)
            n_kept += 1
            if config.max_records and len(kept) >= config.max_records:
                full = False
                break
        dropped.update(here)
        if stats is not None:
            stats[name].update({"read": n_read, "kept": n_kept, "dropped": dict(here), "read_in_full": full})
        if not full:
            break
    return kept, dict(dropped)


def collate(
    records: list[MonolayerArrays],
    vocab_index: dict[str, int],
    strain: float = 0.0,
    generator: torch.Generator | None = None,
) -> MonolayerBatch:
    """Stack monolayers into one :class:`MonolayerBatch`; optional random strain of the lattice."""
    lat = torch.tensor(np.stack([r.lattice2d for r in records]), dtype=torch.float32)
    if strain > 0:
        lat = random_strain(lat, strain, generator)
    labels = torch.tensor(
        [[r.labels.get(k) if r.labels.get(k) is not None else 0.0 for k in HEAD_NAMES] for r in records],
        dtype=torch.float32,
    )
    mask = torch.tensor([[r.labels.get(k) is not None for k in HEAD_NAMES] for r in records])
    return MonolayerBatch(
        frac=torch.tensor(np.concatenate([r.frac for r in records]), dtype=torch.float32),
        z=torch.tensor(np.concatenate([r.z for r in records]), dtype=torch.float32),
        types=torch.tensor([vocab_index[s] for r in records for s in r.species]),
        lattice2d=lat,
        batch=torch.repeat_interleave(torch.arange(len(records)), torch.tensor([len(r.species) for r in records])),
        labels=labels,
        label_mask=mask,
    )


def fit_representation(records: list[MonolayerArrays], vocab: list[str], z_scale: float) -> Representation:
    lat = torch.tensor(np.stack([r.lattice2d for r in records]), dtype=torch.float64)
    a, b = lat[:, 0], lat[:, 1]
    raw = torch.stack(
        [a.norm(dim=-1).log(), b.norm(dim=-1).log(), (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))], -1
    )
    return Representation(
        vocab=vocab, lattice_mean=raw.mean(0).tolist(), lattice_std=raw.std(0).clamp_min(1e-3).tolist(), z_scale=z_scale
    )


def element_vocab(records: list[MonolayerArrays]) -> list[str]:
    from pymatgen.core import Element

    return sorted({s for r in records for s in r.species}, key=lambda s: Element(s).Z)


def split_records(
    records: list[MonolayerArrays],
    seed: int,
    val_fraction: float,
    holdout_formulas_fraction: float | None = None,
) -> tuple[list[MonolayerArrays], list[MonolayerArrays]]:
    """(train, validation) after a seeded shuffle.

    By default the first ``val_fraction`` of the records is held out (none for <= 10 records). With
    ``holdout_formulas_fraction``, that share of the distinct reduced formulas (at least one, when
    there are two or more) is held out with all their records, so no validation formula is trained on.
    """
    records = list(records)
    random.Random(seed).shuffle(records)
    if holdout_formulas_fraction is not None:
        formulas = sorted({r.formula for r in records})
        random.Random(seed).shuffle(formulas)
        n_f = max(1, round(len(formulas) * holdout_formulas_fraction)) if len(formulas) > 1 else 0
        held = set(formulas[:n_f])
        train = [r for r in records if r.formula not in held]
        return train, [r for r in records if r.formula in held]
    n_val = max(1, int(len(records) * val_fraction)) if len(records) > 10 else 0
    return records[n_val:] or records, records[:n_val]


def training_subset(train_set: list[MonolayerArrays], fraction: float, seed: int) -> list[MonolayerArrays]:
    """A seeded share of the training split; nested (a smaller share is a prefix of a larger one)."""
    if fraction >= 1.0:
        return train_set
    order = list(train_set)
    random.Random(seed + 1).shuffle(order)
    return order[: max(1, round(len(order) * fraction))]


def export_for_sampling(src: str | Path, dst: str | Path) -> Path:
    """Copy a training checkpoint without its optimizer state (what ships: about a third the size)."""
    payload = torch.load(str(src), map_location="cpu", weights_only=True)
    payload.pop("optimizer", None)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, dst)
    return dst


@dataclass
class DiffusionBundle:
    """Everything needed to sample: model, representation, schedule, atom-count prior, metadata."""

    model: EGNNDenoiser
    rep: Representation
    schedule: DiffusionSchedule
    n_atoms_counts: dict[int, int]
    meta: dict[str, Any]
    sha256: str | None = None


def save_checkpoint(
    path: Path,
    bundle: DiffusionBundle,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": bundle.model.config.to_dict(),
        "representation": bundle.rep.to_dict(),
        "schedule": bundle.schedule.to_dict(),
        "n_atoms_counts": {str(k): int(v) for k, v in bundle.n_atoms_counts.items()},
        "meta": bundle.meta,
        "state_dict": bundle.model.state_dict(),
        "step": step,
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    payload.update(extra or {})  # e.g. the GradScaler state of a float16 run
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash mid-write never leaves a truncated checkpoint


def load_checkpoint(path: str | Path, device: str = "auto") -> tuple[DiffusionBundle, dict]:
    """Load a checkpoint with ``weights_only=True``; returns the bundle and the raw payload."""
    from gen2d.scoring import file_sha256

    dev = resolve_device(device)
    payload = torch.load(str(path), map_location=dev, weights_only=True)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    model = EGNNDenoiser(EGNNConfig(**payload["model_config"])).to(dev)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    rep = Representation(**payload["representation"])
    schedule = DiffusionSchedule.from_dict(payload["schedule"])
    counts = {int(k): int(v) for k, v in payload["n_atoms_counts"].items()}
    return DiffusionBundle(model, rep, schedule, counts, payload.get("meta", {}), file_sha256(path)), payload


@torch.no_grad()
def evaluate_denoising(
    bundle: DiffusionBundle,
    records: list[MonolayerArrays],
    batch_size: int = 64,
    seed: int = 1234,
    repeats: int = 1,
    device: str = "auto",
    lambdas: tuple[float, float, float] = (1.0, 1.0, 0.5),
) -> dict[str, float]:
    """Mean denoising loss of each part (and of each property head, weighted by ``lambdas``) on
    ``records`` at uniformly drawn t, with two references on the same noise draws.

    ``trivial_*``: predicting zero noise (1.0 in expectation). ``shrinkage_*``: the best denoiser that
    knows only the mean and variance of each clean variable over ``records`` (no network; see
    :func:`gen2d.diffusion.loss.diffusion_loss`). Only the gap below the shrinkage value is learned.
    """
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    vocab_index = {s: i for i, s in enumerate(bundle.rep.vocab)}
    sums: Counter = Counter()
    n = 0
    bundle.model.eval()
    stats = shrinkage_stats(collate(records, vocab_index), bundle.rep) if records else None
    with torch.no_grad():  # an evaluation: no autograd graph
        for _ in range(repeats):
            for start in range(0, len(records), batch_size):
                data = collate(records[start : start + batch_size], vocab_index).to(dev)
                out = diffusion_loss(
                    bundle.model,
                    bundle.rep,
                    bundle.schedule,
                    data,
                    lambdas,
                    cond_dropout=1.0,
                    rotate=False,
                    generator=gen,
                    shrinkage=stats,
                )
                for k, v in out.items():
                    sums[k] += float(v) * data.n_graphs
                n += data.n_graphs
    return {k: v / max(n, 1) for k, v in sums.items()}


def _vocab_index(records: list[MonolayerArrays], vocab: list[str]) -> dict[str, int]:
    """Element -> type channel; every element of ``records`` must be in the checkpoint's ``vocab``."""
    missing = sorted({s for r in records for s in r.species} - set(vocab))
    if missing:
        raise ValueError(f"elements {missing} are not in the checkpoint's vocabulary")
    return {s: i for i, s in enumerate(vocab)}


def resolve_batch_size(
    batch_size: int | str,
    device: torch.device,
    per_sample_bytes: float | None = None,
    free_bytes: int | None = None,
    n_train: int | None = None,
) -> int:
    """Structures per step.

    An integer is used as given. ``"auto"`` is 32 on CPU (the size the shipped models were trained
    with). On CUDA it is the batch that fills half of the free memory, from ``per_sample_bytes``
    measured by :func:`probe_memory_per_sample` on the largest training monolayers (so a batch of
    typical ones uses less), rounded down to a multiple of 32 and kept within [32, 1024] and the
    training-set size. The learning rate is not rescaled with it.
    """
    if batch_size != "auto":
        return int(batch_size)
    if device.type != "cuda" or not per_sample_bytes:
        return 32
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    fit = int(0.5 * free_bytes / per_sample_bytes) // 32 * 32
    size = max(32, min(1024, fit))
    return min(size, n_train) if n_train else size


def probe_memory_per_sample(
    model: EGNNDenoiser,
    rep: Representation,
    schedule: DiffusionSchedule,
    records: list[MonolayerArrays],
    vocab_index: dict[str, int],
    cfg: TrainConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    n_probe: int = 8,
) -> float:
    """Peak CUDA memory (bytes) per structure of one training step (forward and backward, under the
    run's autocast) on the ``n_probe`` largest ``records``; the gradients are discarded."""
    largest = sorted(records, key=lambda r: len(r.species), reverse=True)[:n_probe]
    data = collate(largest, vocab_index).to(device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.autocast(device_type="cuda", dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = diffusion_loss(model, rep, schedule, data, tuple(cfg.lambdas), cfg.cond_dropout, cfg.rotate, gen)
    out["loss"].backward()
    peak = torch.cuda.max_memory_allocated(device) - base
    model.zero_grad(set_to_none=True)
    del out, data
    torch.cuda.empty_cache()
    return max(float(peak), 1.0) / len(largest)


class _BatchStream(torch.utils.data.IterableDataset):
    """Collated training batches for DataLoader workers, one per step, in step order.

    The batch of step k depends only on (seed, k): an epoch-wise seeded permutation of the training
    set and a per-step strain draw, so resuming at step k gives the batches an uninterrupted run would
    have had, whatever the number of workers (worker w makes steps w, w + n, ...; the DataLoader
    interleaves them back in order).
    """

    def __init__(self, records, vocab_index, batch_size: int, strain: float, seed: int, start: int, stop: int):
        self.records, self.vocab_index = records, vocab_index
        self.batch_size, self.strain, self.seed = batch_size, strain, seed
        self.start, self.stop = start, stop

    def _indices(self, step: int, perms: dict[int, list[int]]) -> list[int]:
        n = len(self.records)
        out = []
        for pos in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch = pos // n
            if epoch not in perms:
                perms.clear()  # one epoch at a time (two at an epoch boundary)
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perms[epoch] = torch.randperm(n, generator=g).tolist()
            out.append(perms[epoch][pos % n])
        return out

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        perms: dict[int, list[int]] = {}
        for step in range(self.start + wid, self.stop, nw):
            idx = self._indices(step, perms)
            g = torch.Generator().manual_seed(self.seed * 7_919 + step)
            yield collate([self.records[i] for i in idx], self.vocab_index, self.strain, g)


def train(config: TrainConfig | dict, records: list[MonolayerArrays] | None = None) -> dict[str, Any]:
    """Train (or resume) and write ``<out_dir>/checkpoint.pt``; returns a summary with the losses.

    Parameters
    ----------
    config : TrainConfig or dict
        See :class:`TrainConfig`. ``max_minutes`` counts from the call (data reading included).
    records : list of MonolayerArrays, optional
        Already read monolayers (from :func:`load_training_set` with this config), e.g. to train on
        several ``train_fraction`` values without reading the sources again.

    Returns
    -------
    dict
        steps, wall time, data counts per source, the resolved device, batch size, precision and
        workers, the last logged training losses and the validation denoising loss against the
        trivial 1.0.
    """
    t_call = time.monotonic()
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**config)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dev = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg.amp, dev)
    n_workers = resolve_num_workers(cfg.num_workers, dev)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"

    source_stats: dict[str, dict[str, Any]] = {}
    if records is None:
        records, dropped = load_training_set(cfg, source_stats)
    else:
        dropped = {}
    train_all, val = split_records(records, cfg.seed, cfg.val_fraction, cfg.holdout_formulas_fraction)
    train_set = training_subset(train_all, cfg.train_fraction, cfg.seed)

    resume_payload = None
    if cfg.resume and ckpt_path.exists():
        bundle, resume_payload = load_checkpoint(ckpt_path, str(dev))
        model, rep, schedule = bundle.model, bundle.rep, bundle.schedule
        if model.config.type_diffusion != cfg.type_diffusion:
            raise ValueError(
                f"{ckpt_path} diffuses atom types as {model.config.type_diffusion!r}, the config asks for "
                f"{cfg.type_diffusion!r}: resume with the checkpoint's setting or train into another out_dir"
            )
        log.info("resuming from %s at step %d", ckpt_path, resume_payload["step"])
    else:
        vocab = element_vocab(records)
        rep = fit_representation(train_set, vocab, cfg.z_scale)
        schedule = DiffusionSchedule(
            ScheduleSpec(T=cfg.T, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max, lead_power=cfg.lead_power)
        )
        model = EGNNDenoiser(
            EGNNConfig(
                n_types=len(vocab),
                hidden=cfg.hidden,
                n_layers=cfg.n_layers,
                n_cond_layers=cfg.n_cond_layers,
                cutoff=cfg.cutoff,
                frac_fourier=cfg.frac_fourier,
                type_diffusion=cfg.type_diffusion,
            )
        ).to(dev)
    vocab_index = _vocab_index(records, rep.vocab)
    per_sample = None
    if cfg.batch_size == "auto" and dev.type == "cuda":
        model.train()
        per_sample = probe_memory_per_sample(model, rep, schedule, train_set, vocab_index, cfg, dev, amp_dtype)
    batch_size = resolve_batch_size(cfg.batch_size, dev, per_sample, n_train=len(train_set))
    counts = Counter(len(r.species) for r in train_set)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # loss scaling is for float16 only; disabled it is the identity (CPU, bf16, fp32)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step = 0
    elapsed_before = 0.0
    if resume_payload is not None:
        if "optimizer" in resume_payload:
            opt.load_state_dict(resume_payload["optimizer"])
        if "grad_scaler" in resume_payload and scaler.is_enabled():
            scaler.load_state_dict(resume_payload["grad_scaler"])
        step = int(resume_payload["step"])
        elapsed_before = float(resume_payload["meta"].get("train_seconds", 0.0))

    gen = torch.Generator().manual_seed(cfg.seed + step)
    runtime = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
        "batch_size": batch_size,
        "memory_per_sample_bytes": per_sample,
        "num_workers": n_workers,
        "torch": str(torch.__version__),
    }
    meta = {
        "created": datetime.now(UTC).isoformat(),
        "config": cfg.model_dump(mode="json"),
        "n_train": len(train_set),
        "n_val": len(val),
        "dropped": dropped,
        "condition_labels": {k: sum(1 for r in train_set if r.labels.get(k) is not None) for k in HEAD_NAMES},
        "sources": cfg.sources,
        "source_stats": source_stats,
        "runtime": runtime,
        "vocab_size": len(rep.vocab),
    }
    if resume_payload is not None and "created" in resume_payload.get("meta", {}):
        meta["created"] = resume_payload["meta"]["created"]
        meta["resumed"] = datetime.now(UTC).isoformat()
    bundle = DiffusionBundle(model, rep, schedule, dict(counts), meta)
    log_path = out_dir / "train_log.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)

    def checkpoint() -> None:
        extra = {"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else None
        save_checkpoint(ckpt_path, bundle, opt, step, extra)

    from tqdm.auto import tqdm

    batches: Iterator[MonolayerBatch] | None = None
    if n_workers > 0:
        stream = _BatchStream(train_set, vocab_index, batch_size, cfg.max_strain, cfg.seed, step, cfg.max_steps)
        loader = torch.utils.data.DataLoader(
            stream, batch_size=None, num_workers=n_workers, prefetch_factor=4, persistent_workers=False
        )
        batches = iter(loader)

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not cfg.progress, desc="egnn-diffusion")
    t0 = time.monotonic()
    cpu0 = time.process_time()
    running: Counter = Counter()
    n_running = 0
    last_logged: dict[str, float] = {}
    order: list[int] = []
    model.train()
    while step < cfg.max_steps:
        if cfg.max_minutes is not None and (time.monotonic() - t_call) / 60 >= cfg.max_minutes:
            break
        if cfg.max_cpu_minutes is not None and (time.process_time() - cpu0) / 60 >= cfg.max_cpu_minutes:
            break
        if batches is not None:
            data = next(batches).to(dev)
        else:
            if len(order) < batch_size:
                perm = torch.randperm(len(train_set), generator=gen).tolist()
                order.extend(perm)
            idx, order = order[:batch_size], order[batch_size:]
            data = collate([train_set[i] for i in idx], vocab_index, cfg.max_strain, gen).to(dev)
        with torch.autocast(device_type=dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = diffusion_loss(model, rep, schedule, data, tuple(cfg.lambdas), cfg.cond_dropout, cfg.rotate, gen)
        opt.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        step += 1
        for k, v in out.items():
            running[k] += float(v.detach())
        n_running += 1
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            avg = {k: v / n_running for k, v in running.items()}
            last_logged = {"step": step, **avg}
            bar.set_postfix({k.replace("eps_", ""): f"{v:.3f}" for k, v in avg.items() if k in _PROGRESS_KEYS})
            with log_path.open("a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "step": step,
                            "seconds": elapsed_before + time.monotonic() - t0,
                            "cpu_seconds": time.process_time() - cpu0,
                            **avg,
                        }
                    )
                    + "\n"
                )
            running.clear()
            n_running = 0
        bar.update(1)
        if step % cfg.checkpoint_every == 0:
            meta["train_seconds"] = elapsed_before + time.monotonic() - t0
            meta["steps"] = step
            checkpoint()
    bar.close()
    batches = None  # stops the DataLoader workers
    meta["train_seconds"] = elapsed_before + time.monotonic() - t0
    meta["train_cpu_seconds"] = time.process_time() - cpu0
    meta["steps"] = step
    model.eval()
    if n_running:  # the losses since the last log line
        last_logged = {"step": step, **{k: v / n_running for k, v in running.items()}}
    summary: dict[str, Any] = {
        "steps": step,
        "train_seconds": meta["train_seconds"],
        "train_cpu_seconds_this_run": meta["train_cpu_seconds"],
        "n_train": len(train_set),
        "n_val": len(val),
        "dropped": dropped,
        "sources": source_stats,
        "runtime": runtime,
        "final_train": last_logged,
    }
    if val:
        summary["val"] = evaluate_denoising(bundle, val, device=str(dev), repeats=4)
        meta["val_denoising"] = summary["val"]
    checkpoint()
    summary["checkpoint"] = str(ckpt_path)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def finetune_heads(
    checkpoint: str | Path,
    out_path: str | Path,
    config: TrainConfig | dict,
    steps: int = 400,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Train only the property heads of a trained checkpoint, e.g. once ΔG_H labels come from the surrogate.

    The denoiser is frozen: every noise prediction, and so every unguided sample, is exactly what it was.
    The heads read the noisy state (x_t, t) before the condition enters, as in training, and learn from the
    labels ``config`` provides (``dg_h_labels``, E_hull and synth from the data); missing labels stay masked.

    Returns
    -------
    dict
        Steps, CPU seconds, and each head's training and validation loss before and after (same noise draws).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**config)
    bundle, payload = load_checkpoint(checkpoint, "cpu")
    records, dropped = load_training_set(cfg)
    train_set, val = split_records(records, cfg.seed, cfg.val_fraction, cfg.holdout_formulas_fraction)
    vocab_index = _vocab_index(records, bundle.rep.vocab)
    batch_size = resolve_batch_size(cfg.batch_size, torch.device("cpu"))
    model = bundle.model
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.heads.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.heads.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    lambdas = tuple(cfg.lambdas)

    def head_losses(recs, draw_seed: int) -> dict[str, float]:
        out = evaluate_denoising(bundle, recs, seed=draw_seed, device="cpu", lambdas=lambdas)
        return {k: out[f"head_{k}"] for k in HEAD_NAMES}

    before = head_losses(val, seed + 1) if val else {}
    train_before = head_losses(train_set, seed + 2)
    gen = torch.Generator().manual_seed(seed)
    cpu0 = time.process_time()
    for _ in range(steps):
        idx = torch.randint(0, len(train_set), (batch_size,), generator=gen).tolist()
        data = collate([train_set[i] for i in idx], vocab_index, cfg.max_strain, gen)
        out = diffusion_loss(model, bundle.rep, bundle.schedule, data, lambdas, 1.0, cfg.rotate, gen)
        loss = sum(out[f"head_{k}"] for k in HEAD_NAMES)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    cpu = time.process_time() - cpu0
    after = head_losses(val, seed + 1) if val else {}
    train_after = head_losses(train_set, seed + 2)
    n_dg = sum(1 for r in records if r.labels.get("dg_h") is not None)
    summary = {
        "steps": steps,
        "lr": lr,
        "cpu_seconds": cpu,
        "n_train": len(train_set),
        "n_val": len(val),
        "n_dg_h_labels": n_dg,
        "dg_h_labels": cfg.dg_h_labels,
        "val_head_loss_before": before,
        "val_head_loss_after": after,
        "train_head_loss_before": train_before,
        "train_head_loss_after": train_after,
        "date": datetime.now(UTC).isoformat(),
    }
    bundle.meta = {**bundle.meta, "heads_finetuned": summary}
    for p in model.parameters():
        p.requires_grad_(True)
    save_checkpoint(Path(out_path), bundle, None, int(payload.get("step", 0)))
    return summary
