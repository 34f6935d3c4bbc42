"""Train the EGNN monolayer diffusion model: data loading, the training loop, checkpoints and resume.

The checkpoint is a plain dict (tensors, numbers, strings, lists) saved with ``torch.save`` and read
with ``torch.load(weights_only=True)``; it carries the model config, the element vocabulary, the
representation statistics and the schedule, so sampling can only use the schedule the model saw.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field

from gen2d.data.augment import random_strain
from gen2d.data.graphs import gauss_reduce_2d
from gen2d.data.readers import ase_db_rows, load_mc2d_entries, matpedia_labels, mc2d_atoms
from gen2d.diffusion.loss import MonolayerBatch, Representation, diffusion_loss, shrinkage_stats
from gen2d.diffusion.schedule import DiffusionSchedule, ScheduleSpec
from gen2d.models.egnn import HEAD_NAMES, EGNNConfig, EGNNDenoiser
from gen2d.settings import get_settings

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "gen2d.egnn-diffusion/1"


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
    strict_valid_only: bool = Field(
        False,
        description="keep only monolayers that pass gen2d.structures.validate_strict (the data itself is "
        "78.6 % strict-valid; a generator trained on all of it learns the invalid 21 % too)",
    )
    val_fraction: float = 0.05
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
    z_scale: float = 2.0
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    max_steps: int = 10_000
    max_minutes: float | None = Field(None, description="wall-clock budget of this run")
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


def load_training_set(config: TrainConfig) -> tuple[list[MonolayerArrays], dict[str, int]]:
    """Read every configured source; returns the kept monolayers and counts of why others were dropped.

    A ``.db`` source is read as 2DMatPedia, anything else as MC2D JSON, both by :mod:`gen2d.data.readers`.
    """
    data_dir = Path(config.data_dir) if config.data_dir else default_data_dir()
    dg_h = json.loads(Path(config.dg_h_labels).read_text()) if config.dg_h_labels else {}
    kept: list[MonolayerArrays] = []
    dropped: Counter = Counter()
    for name in config.sources:
        path = data_dir / name
        if not path.exists():
            raise FileNotFoundError(f"training source {path} not found (set GEN2D_DATA or data_dir)")
        reader = _read_2dmatpedia if path.suffix == ".db" else _read_mc2d
        for rec in reader(path):
            if len(rec.species) > config.max_atoms:
                dropped["too_many_atoms"] += 1
                continue
            if rec.thickness > config.max_thickness:
                dropped["too_thick"] += 1
                continue
            if config.strict_valid_only:
                from gen2d.structures import strict_verdict

                if not strict_verdict(rec.to_structure())[0]:  # a validator crash is not a valid structure
                    dropped["not_strict_valid"] += 1
                    continue
            if rec.labels.get("synth") is None and config.synth_unlabeled_as_negative:
                rec.labels["synth"] = 0.0
            key = f"{rec.source}:{rec.source_id}"
            if key in dg_h or rec.source_id in dg_h:
                rec.labels["dg_h"] = float(dg_h.get(key, dg_h.get(rec.source_id)))
            kept.append(rec)
            if config.max_records and len(kept) >= config.max_records:
                return kept, dict(dropped)
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
    records: list[MonolayerArrays], seed: int, val_fraction: float
) -> tuple[list[MonolayerArrays], list[MonolayerArrays]]:
    """(train, validation): a seeded shuffle, the first ``val_fraction`` held out (none for <= 10 records)."""
    records = list(records)
    random.Random(seed).shuffle(records)
    n_val = max(1, int(len(records) * val_fraction)) if len(records) > 10 else 0
    return records[n_val:] or records, records[:n_val]


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
    path: Path, bundle: DiffusionBundle, optimizer: torch.optim.Optimizer | None = None, step: int = 0
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


def train(config: TrainConfig | dict) -> dict[str, Any]:
    """Train (or resume) and write ``<out_dir>/checkpoint.pt``; returns a summary with the losses.

    Parameters
    ----------
    config : TrainConfig or dict
        See :class:`TrainConfig`.

    Returns
    -------
    dict
        steps, wall time, data counts, final train / validation denoising loss against the trivial 1.0.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig(**config)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    dev = resolve_device(cfg.device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"

    records, dropped = load_training_set(cfg)
    train_set, val = split_records(records, cfg.seed, cfg.val_fraction)

    resume_payload = None
    if cfg.resume and ckpt_path.exists():
        bundle, resume_payload = load_checkpoint(ckpt_path, cfg.device)
        model, rep, schedule = bundle.model, bundle.rep, bundle.schedule
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
            )
        ).to(dev)
    vocab_index = _vocab_index(records, rep.vocab)
    counts = Counter(len(r.species) for r in train_set)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    elapsed_before = 0.0
    if resume_payload is not None:
        if "optimizer" in resume_payload:
            opt.load_state_dict(resume_payload["optimizer"])
        step = int(resume_payload["step"])
        elapsed_before = float(resume_payload["meta"].get("train_seconds", 0.0))

    gen = torch.Generator().manual_seed(cfg.seed + step)
    meta = {
        "created": datetime.now(UTC).isoformat(),
        "config": cfg.model_dump(mode="json"),
        "n_train": len(train_set),
        "n_val": len(val),
        "dropped": dropped,
        "condition_labels": {k: sum(1 for r in train_set if r.labels.get(k) is not None) for k in HEAD_NAMES},
        "sources": cfg.sources,
        "vocab_size": len(rep.vocab),
    }
    bundle = DiffusionBundle(model, rep, schedule, dict(counts), meta)
    log_path = out_dir / "train_log.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not cfg.progress, desc="egnn-diffusion")
    t0 = time.monotonic()
    cpu0 = time.process_time()
    running: Counter = Counter()
    n_running = 0
    order: list[int] = []
    model.train()
    while step < cfg.max_steps:
        if cfg.max_minutes is not None and (time.monotonic() - t0) / 60 >= cfg.max_minutes:
            break
        if cfg.max_cpu_minutes is not None and (time.process_time() - cpu0) / 60 >= cfg.max_cpu_minutes:
            break
        if len(order) < cfg.batch_size:
            perm = torch.randperm(len(train_set), generator=gen).tolist()
            order.extend(perm)
        idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        data = collate([train_set[i] for i in idx], vocab_index, cfg.max_strain, gen).to(dev)
        out = diffusion_loss(model, rep, schedule, data, tuple(cfg.lambdas), cfg.cond_dropout, cfg.rotate, gen)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        for k, v in out.items():
            running[k] += float(v.detach())
        n_running += 1
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            avg = {k: v / n_running for k, v in running.items()}
            bar.set_postfix(
                {
                    k.replace("eps_", ""): f"{v:.3f}"
                    for k, v in avg.items()
                    if k in ("denoise", "eps_frac", "eps_z", "eps_types", "eps_lattice", "head_e_hull", "head_synth")
                }
            )
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
            save_checkpoint(ckpt_path, bundle, opt, step)
    bar.close()
    meta["train_seconds"] = elapsed_before + time.monotonic() - t0
    meta["train_cpu_seconds"] = time.process_time() - cpu0
    meta["steps"] = step
    model.eval()
    summary: dict[str, Any] = {
        "steps": step,
        "train_seconds": meta["train_seconds"],
        "train_cpu_seconds_this_run": meta["train_cpu_seconds"],
        "n_train": len(train_set),
        "n_val": len(val),
        "dropped": dropped,
    }
    if val:
        summary["val"] = evaluate_denoising(bundle, val, device=cfg.device, repeats=4)
        meta["val_denoising"] = summary["val"]
    save_checkpoint(ckpt_path, bundle, opt, step)
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
    train_set, val = split_records(records, cfg.seed, cfg.val_fraction)
    vocab_index = _vocab_index(records, bundle.rep.vocab)
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
        idx = torch.randint(0, len(train_set), (cfg.batch_size,), generator=gen).tolist()
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
