"""Fine-tuning data for an MLIP from gen2d's own DFT frames: the frame set, the energy reference alignment, the
replay set that guards what E_hull depends on, the split and the manifest.

The training itself belongs to a calculator plugin (``chgnet-her``); this module knows no MLIP. It takes the
base model as a function that labels structures, so the same data work for any backend.

Energy scales. A CP2K total energy and an MPtrj-trained MLIP energy of the same structure differ by a constant
per atom of each element (pseudopotentials, reference states), plus the physics the MLIP gets wrong. The first
part is removed by a shift, and what is left is what fine-tuning must learn. Two alignments
(``FinetuneDataSettings.alignment``):

- ``host`` (default): one constant per host structure (content hash), the mean DFT − MLIP difference of its clean
  slab frames, plus per-element μ for what the frame adds to its host (H), fitted on the molecules (H₂). Every
  host's clean slab then sits on the MLIP's own energy, whatever the MLIP makes of its polymorph, so a fine-tune
  learns the H binding and the energy differences along each relaxation, never a polymorph energy (2H against
  1T-MoS₂) that the distillation set is there to keep.
- ``element``: one μ per element, fitted by least squares on all frames, clean slabs weighted by
  ``anchor_weight``. It assumes DFT − MLIP is linear in the composition; two polymorphs of one composition that the
  MLIP orders differently from DFT break that, and the fit then moves one of them off the MLIP's scale.

A reaction energy that balances its atoms (ΔE_H = E(slab+H) − E(slab) − ½E(H₂)) sees neither, so the alignment
never changes a DFT ΔE_H; with the clean slabs on the MLIP's own energy, the whole DFT−MLIP difference in ΔE_H lands
on the frames with H.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field

from gen2d.adsorption import DEFAULT_DG_CORRECTION
from gen2d.fileio import atomic_path, write_text_atomic
from gen2d.frames import OFF_SOLUTION_FLAGS, site_of
from gen2d.scoring import file_sha256

#: per-frame labels an evaluator returns: total energy (eV) and forces (eV/Å, n x 3)
Labels = tuple[float, np.ndarray]
Evaluator = Callable[[Sequence[Atoms]], list[Labels]]

#: named failures of the dataset (``FinetuneDataError.reason``)
REASONS = {
    "no_frames": "no DFT frame with an energy under the given folders",
    "mixed_settings": "the frames come from DFT runs with different settings hashes: their energies are not one scale",
    "unknown_val_system": "a validation system names no (run/system) group of the frames",
    "empty_training_set": "nothing is left to train on after the split",
    "bad_labels": "the base model returned a non-finite energy or forces of the wrong shape",
}


class FinetuneDataError(ValueError):
    """The DFT frames cannot make a fine-tuning set; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


# ----------------------------------------------------------------------------------------------
# energy reference alignment


@dataclass
class ReferenceShift:
    """Per-element energies μ (eV per atom of the element) that take a DFT total energy to the MLIP's scale.

    ``E_mlip_scale = E_dft − Σ_el n_el μ_el``. Fitted by :func:`fit_reference_shift`; elements whose
    counts are linearly dependent in the frames (Mo and S always 1:2) share a min-norm split, which is
    the same shift on every composition the frames span.
    """

    elements: list[str]
    mu: list[float]
    rank: int
    n_frames: int
    residual_rms: float  # eV/atom, weighted, after the shift
    method: str = "weighted least squares on per-atom energy differences E_dft − E_mlip, min-norm solution"
    #: host alignment (:func:`fit_host_shift`): "content_hash/formula" -> {"content_hash", "offset_eV": c,
    #: "counts": {element: n}}; one entry per clean-slab composition of a content hash (3x3 and 4x4 apart)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: elements whose μ was fitted on molecules: what a frame may add to its host (H)
    adsorbates: list[str] = field(default_factory=list)

    def host_of(self, symbols: Sequence[str] | Atoms, host: str | None = None) -> dict[str, Any] | None:
        """The fitted host entry a frame belongs to: same content hash, the host's atoms all present, and only
        adsorbate atoms (:attr:`adsorbates`) beyond them; the largest such host, or None."""
        if isinstance(symbols, Atoms):
            host = host or symbols.info.get("content_hash")
            symbols = symbols.get_chemical_symbols()
        if not host or not self.hosts:
            return None
        counts = Counter(symbols)
        fits = []
        for entry in self.hosts.values():
            if entry.get("content_hash") != host:
                continue
            rest = counts.copy()
            rest.subtract(entry["counts"])
            if all(n >= 0 for n in rest.values()) and all(el in self.adsorbates for el, n in rest.items() if n):
                fits.append(entry)
        return max(fits, key=lambda e: sum(e["counts"].values()), default=None)

    def of(self, symbols: Sequence[str] | Atoms, host: str | None = None) -> float:
        """The shift (eV) of a structure: Σ n_el μ_el, or, for a frame of a fitted host (:meth:`host_of`), the
        host's constant plus μ of what the frame adds to the host. An :class:`~ase.Atoms` names its host by
        ``info['content_hash']``."""
        entry = self.host_of(symbols, host)
        if isinstance(symbols, Atoms):
            symbols = symbols.get_chemical_symbols()
        counts = Counter(symbols)
        base = 0.0
        if entry is not None:
            base = float(entry["offset_eV"])
            counts.subtract(entry["counts"])
        unknown = sorted(el for el, n in counts.items() if n and el not in self.elements)
        if unknown:
            raise KeyError(f"the reference shift was fitted without {', '.join(unknown)}")
        mu = dict(zip(self.elements, self.mu))
        return base + float(sum(n * mu[el] for el, n in counts.items() if n))

    def as_dict(self) -> dict[str, Any]:
        out = {
            "mu": {el: m for el, m in zip(self.elements, self.mu)},
            "unit": "eV per atom of the element",
            "rank": self.rank,
            "n_elements": len(self.elements),
            "n_frames": self.n_frames,
            "residual_rms_mev_per_atom": 1000 * self.residual_rms,
            "method": self.method,
            "convention": "E_mlip_scale = E_dft - sum_el n_el * mu_el",
        }
        if self.hosts:
            out["hosts"] = self.hosts
            out["adsorbates"] = self.adsorbates
            out["convention"] = (
                "E_mlip_scale = E_dft - host.offset_eV - sum_el (n_el - host.counts[el]) * mu_el, host the entry of "
                "the frame's content hash whose atoms the frame holds plus adsorbate atoms only; frames of no listed "
                "host: E_dft - sum_el n_el * mu_el"
            )
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceShift:
        els = sorted(d["mu"])
        return cls(
            elements=els,
            mu=[float(d["mu"][e]) for e in els],
            rank=int(d.get("rank", len(els))),
            n_frames=int(d.get("n_frames", 0)),
            residual_rms=float(d.get("residual_rms_mev_per_atom", 0.0)) / 1000,
            method=d.get("method", cls.method),
            hosts={k: {"content_hash": k.split("/", 1)[0], **v} for k, v in d.get("hosts", {}).items()},
            adsorbates=list(d.get("adsorbates", [])),
        )


def element_counts(frames: Sequence[Atoms | Sequence[str]], elements: Sequence[str]) -> np.ndarray:
    """Matrix (n_frames x n_elements) of how many atoms of each element each frame holds."""
    index = {el: j for j, el in enumerate(elements)}
    out = np.zeros((len(frames), len(elements)))
    for i, frame in enumerate(frames):
        symbols = frame.get_chemical_symbols() if isinstance(frame, Atoms) else frame
        for el, n in Counter(symbols).items():
            out[i, index[el]] = n
    return out


def fit_reference_shift(
    counts: np.ndarray,
    dft_energies: Sequence[float],
    mlip_energies: Sequence[float],
    elements: Sequence[str],
    weights: Sequence[float] | None = None,
) -> ReferenceShift:
    """Fit per-element μ so that ``E_dft − n·μ`` matches ``E_mlip`` in the least-squares sense.

    The fit is on per-atom differences, so that a 30-atom slab and an H₂ molecule count alike, each row
    weighted by ``weights`` (default 1). Among the μ that fit equally well (an element pair that always
    comes in one ratio), the one of least norm is returned (``numpy.linalg.lstsq``).

    Parameters
    ----------
    counts : array (n, k)
        Atoms of each element in each frame (:func:`element_counts`).
    dft_energies, mlip_energies : sequences of n floats
        Total energies (eV) of the same frames.
    elements : sequence of k str
        Element of each column.
    weights : sequence of n floats, optional
        Weight of each frame in the fit.

    Examples
    --------
    >>> import numpy as np
    >>> counts = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    >>> mlip = np.array([-1.0, -2.0, -3.0])
    >>> dft = mlip + counts @ np.array([-13.6, -150.0])
    >>> [round(m, 6) for m in fit_reference_shift(counts, dft, mlip, ["H", "O"]).mu]
    [-13.6, -150.0]
    """
    counts = np.asarray(counts, float)
    diff = np.asarray(dft_energies, float) - np.asarray(mlip_energies, float)
    n, k = counts.shape
    if n == 0:
        raise FinetuneDataError("no_frames", "no frames to fit the reference shift on")
    if diff.shape != (n,) or not np.all(np.isfinite(diff)):
        raise FinetuneDataError("bad_labels", "energies must be finite, one per frame")
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    natoms = counts.sum(axis=1)
    scale = np.sqrt(w) / natoms
    a = counts * scale[:, None]
    b = diff * scale
    mu, _, rank, _ = np.linalg.lstsq(a, b, rcond=None)
    resid = (diff - counts @ mu) / natoms
    rms = float(np.sqrt(np.sum(w * resid**2) / np.sum(w)))
    return ReferenceShift(
        elements=list(elements), mu=[float(m) for m in mu], rank=int(rank), n_frames=n, residual_rms=rms
    )


def fit_host_shift(
    frames: Sequence[Atoms],
    dft_energies: Sequence[float],
    mlip_energies: Sequence[float],
    weights: Sequence[float] | None = None,
) -> ReferenceShift:
    """Host alignment: one constant per host structure plus μ for the atoms a frame adds to its host.

    - A host is a content hash (``info['content_hash']``) and a composition of its clean-slab frames
      (``config_type`` ``slab``; a 3x3 and a 4x4 cell of one layer are two hosts); its constant is the weighted mean
      of E_dft − E_mlip over them (eV), so its clean slab sits on the MLIP's scale. A frame belongs to the largest
      host of its content hash whose atoms it holds, plus adsorbate atoms only (:meth:`ReferenceShift.host_of`).
    - μ (per element) comes from the molecules (``config_type`` ``molecule``, H₂) where they hold the element, so
      H₂ sits on the MLIP's scale too; otherwise from :func:`fit_reference_shift` over all frames, which is also
      the shift of every frame that belongs to no host (``build_dataset`` counts them in its summary).
      Adsorbates are the molecules' elements, or without molecules the elements no clean slab holds.
    - ``weights`` (default 1) weigh the frames in both fits (:func:`frame_weights`).

    What is left, E_dft − shift − E_mlip, is zero on average on clean slabs and molecules, and on frames with H it
    is the error of the MLIP's H binding: what a fine-tune should learn.

    Examples
    --------
    >>> from ase import Atoms
    >>> slab, slab_h, h2 = Atoms("Mo2S4"), Atoms("Mo2S4H"), Atoms("H2")
    >>> for a, kind in ((slab, "slab"), (slab_h, "slab+H"), (h2, "molecule")):
    ...     a.info.update(config_type=kind, content_hash="g2d-x" if kind != "molecule" else "")
    >>> shift = fit_host_shift([slab, slab_h, h2], [-900.0, -913.0, -31.0], [-40.0, -43.0, -6.6])
    >>> round(shift.of(slab), 6), round(shift.of(h2), 6), round(shift.of(slab_h), 6)
    (-860.0, -24.4, -872.2)
    """
    dft = np.asarray(dft_energies, float)
    mlip = np.asarray(mlip_energies, float)
    w = np.ones(len(frames)) if weights is None else np.asarray(weights, float)
    elements = sorted({s for f in frames for s in f.get_chemical_symbols()})
    counts = element_counts(frames, elements)
    base = fit_reference_shift(counts, dft, mlip, elements, w)
    mu = dict(zip(elements, base.mu))
    molecules = np.array([f.info.get("config_type") == "molecule" for f in frames])
    if molecules.any():
        cols = [j for j, el in enumerate(elements) if counts[molecules, j].any()]
        mol = fit_reference_shift(
            counts[np.ix_(molecules, cols)], dft[molecules], mlip[molecules], [elements[j] for j in cols], w[molecules]
        )
        mu.update(zip(mol.elements, mol.mu))
    slab_elements = {el for f in frames if f.info.get("config_type") == "slab" for el in f.get_chemical_symbols()}
    adsorbates = sorted(
        {el for f, m in zip(frames, molecules) if m for el in f.get_chemical_symbols()} or set(elements) - slab_elements
    )
    hosts: dict[str, dict[str, Any]] = {}
    by_host: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, f in enumerate(frames):
        if f.info.get("config_type") == "slab" and f.info.get("content_hash"):
            by_host[(f.info["content_hash"], f.get_chemical_formula())].append(i)
    for (content_hash, formula), idx in sorted(by_host.items()):
        hosts[f"{content_hash}/{formula}"] = {
            "content_hash": content_hash,
            "offset_eV": float(np.average(dft[idx] - mlip[idx], weights=w[idx])),
            "counts": dict(sorted(Counter(frames[idx[0]].get_chemical_symbols()).items())),
            "n_frames": len(idx),
        }
    shift = ReferenceShift(
        elements=elements,
        mu=[mu[el] for el in elements],
        rank=base.rank,
        n_frames=len(frames),
        residual_rms=0.0,
        method="host: per content hash and slab composition, the weighted mean E_dft − E_mlip of its clean slabs; "
        "μ of added atoms from the molecules (else the per-element fit)",
        hosts=hosts,
        adsorbates=adsorbates,
    )
    natoms = counts.sum(axis=1)
    resid = (dft - mlip - np.array([shift.of(f) for f in frames])) / natoms
    shift.residual_rms = float(np.sqrt(np.sum(w * resid**2) / np.sum(w)))
    return shift


def frame_group(atoms: Atoms) -> str:
    """The (run, system) a frame belongs to, as ``run/system``: frames of one relaxation are one group, the
    relaxation a lower spin start took over on (``site_k-…/lowest_start_H+1``) with its site."""
    return f"{atoms.info.get('run', '')}/{site_of(atoms.info.get('system', ''))}"


def frame_weights(frames: Sequence[Atoms], anchor_weight: float = 100.0) -> np.ndarray:
    """Weights for :func:`fit_reference_shift`: each (run, system) group weighs 1 in total, whatever its number of
    frames, and clean slabs (``config_type`` ``slab``) weigh ``anchor_weight`` times that."""
    sizes = Counter(frame_group(f) for f in frames)
    w = np.array([1.0 / sizes[frame_group(f)] for f in frames])
    clean = np.array([f.info.get("config_type") == "slab" for f in frames])
    return np.where(clean, w * anchor_weight, w)


# ----------------------------------------------------------------------------------------------
# frames, split


def deduplicate_frames(frames: Iterable[Atoms]) -> tuple[list[Atoms], int]:
    """The frames with identical atoms, cell and energy kept once (two runs sharing one slab single point);
    returns them and how many were dropped."""
    seen: set[str] = set()
    out: list[Atoms] = []
    n = 0
    for f in frames:
        n += 1
        key = frame_fingerprint(f)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out, n - len(out)


def frame_fingerprint(atoms: Atoms) -> str:
    """sha256 of symbols, positions and cell (1e-6 Å) and energy (1e-6 eV)."""
    h = hashlib.sha256()
    h.update(" ".join(atoms.get_chemical_symbols()).encode())
    h.update(np.round(atoms.positions, 6).tobytes())
    h.update(np.round(np.asarray(atoms.cell), 6).tobytes())
    h.update(f"{float(atoms.info.get('energy', np.nan)):.6f}".encode())
    return h.hexdigest()


def frames_sha256(frames: Iterable[Atoms]) -> str:
    """sha256 of the sorted :func:`frame_fingerprint` of ``frames``: which frames a dataset or a benchmark read."""
    return hashlib.sha256(" ".join(sorted(map(frame_fingerprint, frames))).encode()).hexdigest()


def split_frames(
    frames: Sequence[Atoms],
    val_systems: Sequence[str] | None = None,
    val_fraction: float = 0.5,
    seed: int = 0,
    val_formulas: Sequence[str] | None = None,
) -> tuple[list[Atoms], list[Atoms], list[str]]:
    """Train and validation frames, split by whole (run, system) groups.

    Frames of one relaxation are near copies of each other, so a random frame split would validate on
    the training data. Only groups with H (``slab+H``) go to validation; clean slabs and molecules stay
    in training, since every ΔE_H needs them. ``val_systems`` names the validation groups: ``run/system``
    (that group, whatever it holds) or ``run`` (its slab+H groups); ``val_formulas`` holds out every group,
    bare slab included, of a material (the frames' ``formula``), among the frames as they are read, so that a
    leave-one-material-out fold also holds out run folders of that material written after the fold was planned.
    Without either, ``val_fraction`` of the slab+H groups are drawn with ``seed``, leaving at least one for
    training.

    Returns train frames, validation frames and the validation group names.
    """
    groups = sorted({frame_group(f) for f in frames})
    eligible = sorted({frame_group(f) for f in frames if f.info.get("config_type") == "slab+H"})
    if val_systems or val_formulas:
        chosen = set()
        for formula in val_formulas or ():
            hit = sorted({frame_group(f) for f in frames if f.info.get("formula") == formula})
            if not any(g in eligible for g in hit):
                known = sorted({f.info.get("formula") for f in frames if f.info.get("config_type") == "slab+H"})
                raise FinetuneDataError(
                    "unknown_val_system", f"formula {formula!r} has no frame group with H (with H: {known})"
                )
            chosen.update(hit)
        for name in val_systems or ():
            hit = [g for g in groups if g == name] or [g for g in eligible if g.split("/", 1)[0] == name]
            if not hit:
                raise FinetuneDataError(
                    "unknown_val_system", f"{name!r} names no frame group with H: {', '.join(groups)}"
                )
            chosen.update(hit)
    else:
        n_val = min(int(np.floor(val_fraction * len(eligible))), max(0, len(eligible) - 1))
        rng = np.random.default_rng(seed)
        chosen = set(rng.choice(eligible, size=n_val, replace=False).tolist()) if n_val else set()
    train = [f for f in frames if frame_group(f) not in chosen]
    val = [f for f in frames if frame_group(f) in chosen]
    if not any(f.info.get("config_type") in ("slab", "slab+H") for f in train):  # H2 alone teaches no surface
        raise FinetuneDataError(
            "empty_training_set", f"no slab or slab+H frame is left for training ({', '.join(sorted(chosen))} held out)"
        )
    return train, val, sorted(chosen)


# ----------------------------------------------------------------------------------------------
# replay set


def _references_dir() -> Path:
    return Path(__file__).resolve().parent / "assets" / "references"


def reference_replay_structures(elements: Iterable[str], references_dir: str | os.PathLike | None = None) -> list:
    """``(id, Structure)`` of every shipped hull reference phase made only of ``elements``.

    These are the bulk phases (element and binary prototypes, AA-stacked database layers) that the
    ``mlip-prototypes`` hull of those elements is built from, relaxed by the base model.
    """
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    allowed = set(elements)
    root = Path(references_dir) if references_dir else _references_dir()
    out, seen = [], set()
    for path in sorted(root.glob("*/*.json.gz")):
        with gzip.open(path, "rt") as fh:
            doc = json.load(fh)
        for d in doc.get("entries", []):
            entry = ComputedStructureEntry.from_dict(d)
            if {el.symbol for el in entry.composition.elements} <= allowed and entry.entry_id not in seen:
                seen.add(entry.entry_id)
                out.append((f"reference:{entry.entry_id}", entry.structure))
    return out


def layer_replay_structures(
    elements: Iterable[str],
    n: int = 24,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    max_atoms: int = 12,
) -> tuple[list, list[str]]:
    """``(id, Structure)`` of ``n`` monolayers from 2DMatPedia and MC2D (at most ``max_atoms`` atoms each).

    Half of them share an element with ``elements`` (the layers whose energies a fine-tune on those
    elements is most likely to move), the rest are drawn from all layers, both with ``seed``. Returns the
    layers and the sources read (a missing file is left out and not named).
    """
    from gen2d.data.readers import data_dir as default_data_dir
    from gen2d.data.readers import read_ase_db, read_mc2d_json

    if n <= 0:
        return [], []
    root = Path(data_dir) if data_dir else default_data_dir()
    pool: list = []
    used: list[str] = []
    for name, reader in (("2dmatpedia_filtered.db", read_ase_db), ("mc2d_258_exfoliable.json", read_mc2d_json)):
        path = root / name
        if not path.is_file():
            continue
        used.append(name)
        for outcome in reader(path):
            rec = outcome.record
            if rec is not None and len(rec.structure) <= max_atoms:
                pool.append((f"{rec.source}:{rec.source_id}", rec.structure))
    if not pool:
        return [], used
    rng = np.random.default_rng(seed)
    allowed = set(elements)
    near = [i for i, (_, s) in enumerate(pool) if allowed & {el.symbol for el in s.composition.elements}]
    pick = list(rng.permutation(near)[: n // 2]) if near else []
    taken = set(pick)
    rest = [i for i in rng.permutation(len(pool)) if i not in taken]
    pick += rest[: n - len(pick)]
    return [pool[i] for i in pick], used


def dehydrogenated_slabs(frames: Sequence[Atoms], every: int = 3) -> list:
    """``(id, Atoms)``: every ``every``-th slab+H frame with its H removed, and each clean slab as it is.

    Labelled by the base model, they tell the fine-tune that the layer itself, at the geometries the
    DFT visited, keeps the base model's energy: what changes is the H.
    """
    out = []
    for f in frames:
        kind = f.info.get("config_type")
        if f.info.get("vibration"):  # H moved by 0.01 Å: without H, the relaxed slab again
            continue
        if kind == "slab":
            out.append((f"dft-slab:{frame_group(f)}#{f.info.get('frame', 0)}", f.copy()))
        elif kind == "slab+H" and int(f.info.get("frame", 0)) % max(1, every) == 0:
            keep = [i for i, s in enumerate(f.get_chemical_symbols()) if s != "H"]
            if keep:
                # the system, not the group: a takeover's frame k and its site's frame k are two geometries
                out.append(
                    (
                        f"dft-slab-without-H:{f.info.get('run', '')}/{f.info.get('system', '')}#{f.info.get('frame', 0)}",
                        f[keep],
                    )
                )
    return out


def _as_atoms(obj: Any) -> Atoms:
    if isinstance(obj, Atoms):
        atoms = obj.copy()
        atoms.calc = None
        return atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(obj)


def label_replay(
    items: Sequence[tuple[str, Any]],
    evaluate: Evaluator,
    rattle: float = 0.03,
    n_rattled: int = 1,
    seed: int = 0,
    label_model: str = "",
) -> list[Atoms]:
    """The replay frames: each structure as given and ``n_rattled`` copies with Gaussian noise of ``rattle``
    Å on every coordinate, labelled with the base model's energy (eV) and forces (eV/Å) by ``evaluate``.

    A copy with forces gives the fine-tune the base model's slopes, not only its minimum.
    """
    frames: list[Atoms] = []
    for k, (ident, obj) in enumerate(items):
        base = _as_atoms(obj)
        for r in range(n_rattled + 1):
            atoms = base.copy()
            if r:
                atoms.rattle(stdev=rattle, seed=seed * 100_003 + k * 101 + r)
            atoms.info.update(
                config_type="replay",
                replay_id=ident,
                run="replay",
                system=ident,
                frame=r,
                rattle=rattle if r else 0.0,
                label_model=label_model,
            )
            frames.append(atoms)
    labels = evaluate(frames)
    for atoms, (energy, forces) in zip(frames, labels, strict=True):
        _check_labels(atoms, energy, forces)
        atoms.info["target_energy"] = float(energy)
        atoms.info["base_energy"] = float(energy)
        atoms.arrays["forces"] = np.asarray(forces, float)
    return frames


def _check_labels(atoms: Atoms, energy: float, forces: Any) -> None:
    forces = np.asarray(forces, float)
    if not np.isfinite(energy) or forces.shape != (len(atoms), 3) or not np.all(np.isfinite(forces)):
        raise FinetuneDataError(
            "bad_labels", f"{atoms.get_chemical_formula()}: energy {energy}, forces of shape {forces.shape}"
        )


def split_replay(frames: Sequence[Atoms], val_fraction: float = 0.2, seed: int = 0) -> tuple[list, list]:
    """Replay frames split by structure (a structure and its rattled copies stay together)."""
    ids = sorted({f.info["replay_id"] for f in frames})
    rng = np.random.default_rng(seed + 1)
    n_val = int(round(val_fraction * len(ids))) if len(ids) > 1 else 0
    val_ids = set(rng.choice(ids, size=n_val, replace=False).tolist()) if n_val else set()
    return [f for f in frames if f.info["replay_id"] not in val_ids], [
        f for f in frames if f.info["replay_id"] in val_ids
    ]


def item_repeats(frame: Atoms, repeats: int) -> int:
    """How often a frame appears in an epoch's training items: a DFT frame ``repeats`` times, a replay frame once."""
    return 1 if frame.info.get("config_type") == "replay" else repeats


def training_items(frames: Sequence[Atoms], repeats: int) -> int:
    """How many training items ``frames`` make (:func:`item_repeats`), as the trainers build them."""
    return sum(item_repeats(f, repeats) for f in frames)


def replay_sampler(n_fixed: int, n_replay: int, per_epoch: int | None, seed: int = 0):
    """A ``torch.utils.data.Sampler`` for a training set of ``n_fixed`` DFT items followed by ``n_replay`` replay
    items: each epoch (each iteration over it) yields every DFT item and a fresh draw, without replacement, of
    ``per_epoch`` replay items, all in a random order. Each epoch is drawn independently from ``seed`` and its
    index, so a run is reproducible, and over E epochs a replay item is drawn with probability
    1 − (1 − per_epoch/n_replay)^E. None when ``per_epoch`` is None or not below ``n_replay``: then every item is
    in every epoch (a shuffled ``DataLoader``, as without this option)."""
    if per_epoch is None or per_epoch >= n_replay:
        return None
    import torch
    from torch.utils.data import Sampler

    class ReplaySubsetSampler(Sampler[int]):
        def __init__(self) -> None:
            self.epoch = 0

        def __len__(self) -> int:
            return n_fixed + per_epoch

        def __iter__(self):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + self.epoch)
            self.epoch += 1
            replay = n_fixed + torch.randperm(n_replay, generator=gen)[:per_epoch]
            items = torch.cat([torch.arange(n_fixed), replay])
            return iter(items[torch.randperm(len(items), generator=gen)].tolist())

    return ReplaySubsetSampler()


# ----------------------------------------------------------------------------------------------
# the dataset


@dataclass
class FinetuneDataSettings:
    """What goes into a fine-tuning set (all lengths Å, energies eV)."""

    val_systems: list[str] | None = None
    val_fraction: float = 0.5
    seed: int = 0
    anchor_weight: float = 100.0
    val_formulas: list[str] | None = None
    alignment: str = "host"  # "host" (fit_host_shift) or "element" (fit_reference_shift)
    settings_hash: str | None = None
    replay_references: bool = True
    replay_layers: int = 24
    replay_layer_max_atoms: int = 12
    replay_dehydrogenated_every: int = 3
    replay_rattle: float = 0.03
    replay_n_rattled: int = 1
    replay_val_fraction: float = 0.2
    data_dir: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if out["val_formulas"] is None:  # manifests written before the option keep their shape
            out.pop("val_formulas")
        return out


class FinetuneOptions(BaseModel):
    """The options every fine-tuning plugin shares (``gen2d train --calculator NAME -o key=value``): the data, the
    split, the replay set, the device. A plugin subclasses it with its base model, trainable parameters, losses and
    defaults; energies eV, lengths Å."""

    model_config = ConfigDict(extra="forbid")

    frames: list[str] | str | None = Field(
        None, description="DFT run folder(s); default: the DFT folder of the settings (GEN2D_DFT_DIR)"
    )
    out: str = Field(..., description="output folder: checkpoint, MANIFEST.json")
    data_out: str | None = Field(None, description="where the train/val/replay extxyz go; default OUT/data")
    trainable: list[str] = Field(..., description="parameter-name prefixes that train; the rest is frozen")
    epochs: int = Field(..., ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    dft_repeats: int = Field(
        2, ge=1, description="times each DFT frame appears per epoch (the replay set is larger; this keeps the balance)"
    )
    val_systems: list[str] | None = Field(None, description="run or run/system groups held out for validation")
    val_formulas: list[str] | None = Field(
        None, description="materials (formulas) whose every frame group, bare slab included, is held out for validation"
    )
    val_fraction: float = Field(
        0.5, ge=0, lt=1, description="share of slab+H groups held out when val_systems and val_formulas are unset"
    )
    anchor_weight: float = Field(100.0, gt=0, description="weight of clean slabs in the reference-shift fit")
    alignment: Literal["host", "element"] = Field(
        "host",
        description="DFT-to-MLIP energy alignment: one constant per host slab plus mu of H from H2 (host), or one mu "
        "per element over all frames (element); see gen2d.finetune",
    )
    settings_hash: str | None = Field(None, description="use only frames of this DFT settings hash")
    replay_references: bool = True
    replay_layers: int = Field(24, ge=0, description="2DMatPedia/MC2D layers in the replay set")
    replay_layer_max_atoms: int = Field(12, ge=1)
    replay_dehydrogenated_every: int = Field(1, ge=0, description="every k-th slab+H frame without H (0: none)")
    replay_rattle: float = Field(0.03, ge=0, description="Å, Gaussian noise of the rattled replay copies")
    replay_n_rattled: int = Field(1, ge=0)
    replay_val_fraction: float = Field(0.2, ge=0, lt=1)
    replay_per_epoch: int | None = Field(
        None,
        ge=1,
        description="replay frames drawn afresh for each epoch (None: all of them in every epoch); every DFT frame "
        "is in every epoch. The replay set grows with the elements of the DFT frames (every reference phase of "
        "them), so this bounds an epoch's cost",
    )
    data_dir: str | None = Field(None, description="reference datasets (GEN2D_DATA)")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu or cuda")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's, i.e. OMP_NUM_THREADS)")

    def data_settings(self) -> FinetuneDataSettings:
        """The :class:`FinetuneDataSettings` of these options."""
        return FinetuneDataSettings(**{k: getattr(self, k) for k in FinetuneDataSettings.__dataclass_fields__})


@dataclass
class FinetuneDataset:
    """DFT frames split into train and validation, on the MLIP's energy scale, with the replay set.

    Every frame carries ``info['target_energy']`` (eV, MLIP scale) and ``info['base_energy']`` (the base
    model's energy, eV); DFT frames also ``info['dft_energy']`` and, where recorded, ``arrays['forces']``
    (eV/Å; the shift does not touch forces). Replay frames are labelled by the base model.
    """

    train: list[Atoms]
    val: list[Atoms]
    replay_train: list[Atoms]
    replay_val: list[Atoms]
    shift: ReferenceShift
    summary: dict[str, Any] = field(default_factory=dict)

    def sets(self) -> dict[str, list[Atoms]]:
        return {"train": self.train, "val": self.val, "replay_train": self.replay_train, "replay_val": self.replay_val}

    def write(self, out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
        """Write each set as extended XYZ under ``out_dir``; returns name -> {path, sha256, n_frames}."""
        from ase.io import write

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, frames in self.sets().items():
            path = out_dir / f"{name}.extxyz"
            with atomic_path(path) as tmp:
                write(str(tmp), [detached(f) for f in frames], format="extxyz")
            files[name] = {"path": path.name, "sha256": file_sha256(path), "n_frames": len(frames)}
        return files

    def manifest_data(self, files: dict[str, dict[str, Any]], data_out: str | os.PathLike) -> dict[str, Any]:
        """The ``data`` section of a fine-tune's MANIFEST: the summary, the written files (:meth:`write`), and
        which DFT frames and replay structures went where, by fingerprint and id."""
        return {
            **self.summary,
            "files": files,
            "data_out": str(data_out),
            "frames": {
                "train": sorted({frame_fingerprint(f) for f in self.train}),
                "val": sorted({frame_fingerprint(f) for f in self.val}),
            },
            "replay_val_ids": sorted({f.info["replay_id"] for f in self.replay_val}),
            "dft_settings": "CP2K settings of the runs: see each run.json (settings_hash above)",
        }


def calculator_evaluator(calculator: Any) -> Evaluator:
    """An :data:`Evaluator` from an ASE calculator, one structure at a time."""

    def evaluate(frames: Sequence[Atoms]) -> list[Labels]:
        out = []
        for f in frames:
            atoms = f.copy()
            atoms.calc = calculator
            out.append((float(atoms.get_potential_energy()), np.asarray(atoms.get_forces(), float)))
        return out

    return evaluate


def delta_e_h_rows(
    frames: Sequence[Atoms], evaluators: dict[str, Evaluator], split: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """ΔE_H = E(slab+H) − E(slab) − ½E(H₂) at the DFT geometries, by DFT and by each evaluator.

    One row per slab+H relaxation (``run/system`` group): its last frame, its bare slab and the last H₂ frame of
    its DFT settings. The bare slab is a clean-slab frame of the same content hash with one atom fewer, the single
    point of the site's own run where there is one (the E(slab) of its row), else another run's single point,
    else the last such frame. Every model sees the same three geometries, so a difference between rows is the
    energies alone. ``split`` maps a group to a label (``in-sample``, ``held out``); other groups get
    ``added after training``. eV; none when the frames hold no H₂.
    """
    frames = [f for f in frames if not f.info.get("vibration")]  # displaced geometries, not a relaxation's end
    by_group: dict[str, list[Atoms]] = defaultdict(list)
    for f in frames:
        by_group[frame_group(f)].append(f)
    slab_frames = [f for f in frames if f.info.get("config_type") == "slab"]
    h2 = [f for f in frames if f.info.get("config_type") == "molecule" and f.get_chemical_formula() == "H2"]
    if not h2:
        return []

    def slab_of(site: Atoms) -> Atoms | None:
        # a 3×3 and a 4×4 cell of one layer share the content hash: the atom count tells them apart
        fits = [
            s
            for s in slab_frames
            if s.info.get("content_hash") == site.info.get("content_hash") and len(s) == len(site) - 1
        ]
        single = [s for s in fits if s.info.get("system") == "slab"]
        own = [s for s in single if s.info.get("run") == site.info.get("run")]
        pool = own or single or fits
        return max(pool, key=lambda s: s.info["frame"]) if pool else None

    def h2_of(site: Atoms) -> Atoms:
        same = [f for f in h2 if f.info.get("settings_hash", "") == site.info.get("settings_hash", "")]
        return max(same or h2, key=lambda f: f.info["frame"])

    rows = []
    for g, fs in sorted(by_group.items()):
        if fs[0].info.get("config_type") != "slab+H":
            continue
        # the relaxation's end: a takeover's last frame (system "site…/lowest_start…", relaxed on after the
        # site's own) over the site's; a frame of a superseded spin solution, or after an SCF jump, never
        fs = [f for f in fs if not any(f.info.get(flag) for flag in OFF_SOLUTION_FLAGS)] or fs
        last = max(fs, key=lambda f: (site_of(f.info.get("system", "")) != f.info.get("system"), f.info["frame"]))
        slab = slab_of(last)
        if slab is None:
            continue
        h2_final = h2_of(last)
        row = {
            "group": g,
            "formula": last.info.get("formula"),
            "frame": int(last.info["frame"]),
            "split": (split or {}).get(g, "added after training"),
            "dft_eV": last.info["energy"] - slab.info["energy"] - 0.5 * h2_final.info["energy"],
        }
        for name, ev in evaluators.items():
            e_site, e_slab, e_h2 = (x[0] for x in ev([last, slab, h2_final]))
            row[f"{name}_eV"] = e_site - e_slab - 0.5 * e_h2
        rows.append(row)
    return rows


def agreement(
    pred: Sequence[float], ref: Sequence[float], dg_correction: float = DEFAULT_DG_CORRECTION, window: float = 0.2
) -> dict[str, Any]:
    """MAE, bias (mean of pred − ref), Spearman ρ (None below three rows) and hit agreement of ΔE_H values (eV).

    A hit is |ΔE_H + ``dg_correction``| ≤ ``window`` (gen2d's ΔG_H hit rule); ``hits_agree`` counts the rows
    where model and reference make the same call, ``hits_ref`` and ``hits_both`` the reference's hits and those
    the model finds too.
    """
    p, r = np.asarray(pred, float), np.asarray(ref, float)
    if p.shape != r.shape:
        raise ValueError(f"pred and ref differ in length: {p.shape} vs {r.shape}")
    if not len(p):
        return {"n": 0}
    rho = None
    if len(p) >= 3:
        from scipy.stats import spearmanr

        rho = float(spearmanr(p, r).statistic)
    hit_p, hit_r = np.abs(p + dg_correction) <= window, np.abs(r + dg_correction) <= window
    return {
        "n": int(len(p)),
        "mae_eV": float(np.abs(p - r).mean()),
        "bias_eV": float((p - r).mean()),
        "spearman_rho": rho,
        "hits_agree": int((hit_p == hit_r).sum()),
        "hits_ref": int(hit_r.sum()),
        "hits_both": int((hit_p & hit_r).sum()),
    }


def build_dataset(
    roots: Iterable[str | os.PathLike],
    evaluate: Evaluator,
    settings: FinetuneDataSettings | None = None,
    label_model: str = "",
) -> FinetuneDataset:
    """The fine-tuning set from the DFT run folders ``roots`` and the base model ``evaluate``.

    Steps: collect the frames (:func:`gen2d.frames.collect_frames`, energy-only single points included),
    drop exact duplicates, label them with the base model, fit the reference shift
    (:func:`fit_host_shift` or :func:`fit_reference_shift`, by ``settings.alignment``, with :func:`frame_weights`),
    put the DFT energies on the MLIP scale, split by group (:func:`split_frames`), and build and label the replay set (shipped reference phases
    of the frames' elements, database layers, the DFT slabs without H; each with rattled copies).

    Raises
    ------
    FinetuneDataError
        ``no_frames``, ``mixed_settings``, ``unknown_val_system``, ``empty_training_set``, ``bad_labels``.
    """
    from gen2d.frames import collect_frames

    settings = settings or FinetuneDataSettings()
    roots = [Path(r) for r in roots]
    # a higher spin solution where a lower one took over, and the frames after an SCF jump, are left out
    frames, collected = collect_frames(roots)
    if settings.settings_hash:
        frames = [f for f in frames if f.info.get("settings_hash") == settings.settings_hash]
    if not frames:
        where = ", ".join(map(str, roots)) or "(no folder)"
        raise FinetuneDataError("no_frames", f"no DFT frame with an energy under {where}")
    hashes = Counter(f.info.get("settings_hash", "") for f in frames)
    if len(hashes) > 1:
        raise FinetuneDataError("mixed_settings", f"settings hashes {dict(hashes)}; choose one with settings_hash=...")
    frames, n_dupes = deduplicate_frames(frames)

    labels = evaluate(frames)
    for f, (energy, forces) in zip(frames, labels, strict=True):
        _check_labels(f, energy, forces)
        f.info["base_energy"] = float(energy)
        f.info["dft_energy"] = float(f.info["energy"])
    elements = sorted({s for f in frames for s in f.get_chemical_symbols()})
    if settings.alignment not in ("host", "element"):
        raise ValueError(f"alignment must be 'host' or 'element', not {settings.alignment!r}")
    train, val, val_groups = split_frames(
        frames, settings.val_systems, settings.val_fraction, settings.seed, settings.val_formulas
    )
    # the shift is fitted on the training frames only: a held-out material's frames (leave-one-material-out) must
    # not take part in setting the targets the model trains on
    weights = frame_weights(train, settings.anchor_weight)
    dft_e = [f.info["dft_energy"] for f in train]
    base_e = [f.info["base_energy"] for f in train]
    if settings.alignment == "host":
        shift = fit_host_shift(train, dft_e, base_e, weights)
    else:
        fitted = sorted({s for f in train for s in f.get_chemical_symbols()})
        shift = fit_reference_shift(element_counts(train, fitted), dft_e, base_e, fitted, weights)
    for f in train:
        f.info["target_energy"] = f.info["dft_energy"] - shift.of(f)
    # a validation frame with an element no training frame holds has no μ, so no target: it leaves validation
    # (its ΔE_H is still compared, by delta_e_h_rows, which needs no target)
    kept, unaligned = [], set()
    for f in val:
        try:
            f.info["target_energy"] = f.info["dft_energy"] - shift.of(f)
        except KeyError:
            unaligned.add(frame_group(f))
            continue
        kept.append(f)
    val = kept
    aligned = [*train, *val]

    items: list = []
    sources: dict[str, int] = {}
    if settings.replay_references:
        refs = reference_replay_structures(elements)
        items += refs
        sources["shipped hull reference phases"] = len(refs)
    layers, used = layer_replay_structures(
        elements, settings.replay_layers, settings.seed, settings.data_dir, settings.replay_layer_max_atoms
    )
    items += layers
    sources["database layers (" + (", ".join(used) or "none found") + ")"] = len(layers)
    if settings.replay_dehydrogenated_every > 0:
        slabs = dehydrogenated_slabs(train, settings.replay_dehydrogenated_every)
        items += slabs
        sources["DFT slabs of the training frames, H removed"] = len(slabs)
    replay = (
        label_replay(items, evaluate, settings.replay_rattle, settings.replay_n_rattled, settings.seed, label_model)
        if items
        else []
    )
    replay_train, replay_val = split_replay(replay, settings.replay_val_fraction, settings.seed)

    without_host = (
        sorted(
            {frame_group(f) for f in aligned if f.info.get("config_type") != "molecule" and shift.host_of(f) is None}
        )
        if shift.hosts
        else []
    )
    if without_host:
        print(
            f"gen2d.finetune: {len(without_host)} frame group(s) have no clean-slab host and fall back to one μ per "
            f"element: {', '.join(without_host)}",
            file=sys.stderr,
        )
    residual = defaultdict(list)
    for f in aligned:
        residual[f.info.get("config_type", "")].append(
            1000 * (f.info["target_energy"] - f.info["base_energy"]) / len(f)
        )
    summary = {
        "roots": [str(r) for r in roots],
        "collected": {k: v for k, v in collected.items() if k != "skipped"},
        "skipped": collected.get("skipped", []),
        "n_duplicates_dropped": n_dupes,
        "n_superseded_spin_solution_dropped": collected.get("n_superseded_spin_solution", 0),
        "n_scf_jump_dropped": collected.get("n_scf_jump", 0),
        "frames_sha256": frames_sha256(frames),
        "frames_sha256_of": "sha256 of the sorted frame fingerprints (symbols, positions, cell, DFT energy)",
        "elements": elements,
        "settings_hash": next(iter(hashes)),
        "val_groups": val_groups,
        "train_groups": sorted({frame_group(f) for f in train}),
        "n": {"train": len(train), "val": len(val), "replay_train": len(replay_train), "replay_val": len(replay_val)},
        "n_energy_only": sum(bool(f.info.get("energy_only")) for f in frames),
        "replay_sources": sources,
        "shift": shift.as_dict(),
        "groups_without_host": without_host,
        "val_groups_without_target": sorted(unaligned),
        "target_minus_base_mev_per_atom": {
            k: {"mean": float(np.mean(v)), "max_abs": float(np.max(np.abs(v))), "n": len(v)}
            for k, v in sorted(residual.items())
        },
        "settings": settings.as_dict(),
    }
    return FinetuneDataset(train, val, replay_train, replay_val, shift, summary)


# ----------------------------------------------------------------------------------------------
# provenance


def invocation(function: str = "") -> str:
    """This process's command line as typed; ``python -c`` hides its code, so then say which function ran."""
    if not sys.argv or sys.argv[0] in ("-c", ""):
        return f"{sys.executable} -c ... ({function or 'gen2d.finetune'})"
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def write_manifest(path: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """Write ``MANIFEST.json`` (``fields`` plus ``date`` in UTC and ``command``) and return it."""
    from datetime import UTC, datetime

    from gen2d.scoring import package_version

    doc = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": invocation(),
        "gen2d_version": package_version(),
    }
    doc.update(fields)
    write_text_atomic(path, json.dumps(doc, indent=1, default=_jsonable, ensure_ascii=False) + "\n")
    return doc


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def frame_roots(frames: Sequence[str] | str | None) -> list[Path]:
    """The DFT run folders of a fine-tune: ``frames`` (one or several), or the settings' DFT folder
    (``GEN2D_DFT_DIR``, else ``<cache>/dft``)."""
    if frames is None:
        from gen2d.settings import get_settings

        s = get_settings()
        return [Path(s.dft_dir or s.cache_dir / "dft")]
    return [Path(f).expanduser() for f in ([frames] if isinstance(frames, str) else frames)]


def detached(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` without its calculator (its stored energy and forces), for an evaluator's input."""
    out = atoms.copy()
    out.calc = None
    return out


def freeze_except(model: Any, names: Sequence[str]) -> int:
    """Freeze every parameter of a torch ``model`` not in ``names``; returns the number of trainable parameters."""
    keep = set(names)
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad = name in keep
        n += p.numel() if p.requires_grad else 0
    return n


def set_errors(frames: Sequence[Atoms], evaluate: Evaluator) -> dict[str, Any]:
    """Energy MAE (meV/atom, against ``target_energy``) and force MAE (eV/Å, frames with forces) of a model."""
    if not frames:
        return {"n": 0}
    labels = evaluate(frames)
    e_err = [abs(e - f.info["target_energy"]) / len(f) for f, (e, _) in zip(frames, labels, strict=True)]
    f_err = [
        np.abs(np.asarray(fc) - f.arrays["forces"]).ravel()
        for f, (_, fc) in zip(frames, labels, strict=True)
        if "forces" in f.arrays
    ]
    out = {"n": len(frames), "energy_mae_mev_per_atom": 1000 * float(np.mean(e_err))}
    if f_err:
        out["force_mae_ev_per_a"] = float(np.mean(np.concatenate(f_err)))
        out["n_with_forces"] = len(f_err)
    return out


def dataset_metrics(dataset: FinetuneDataset, base_eval: Evaluator, tuned_eval: Evaluator) -> dict[str, Any]:
    """Errors of the base and the fine-tuned model on every set (DFT train/val against DFT on the MLIP scale,
    replay against the base model's own labels, i.e. drift)."""
    out: dict[str, Any] = {}
    for name, frames in dataset.sets().items():
        if name.startswith("replay"):
            tuned = set_errors(frames, tuned_eval)
            out[name] = {
                "n": tuned["n"],
                "energy_drift_mae_mev_per_atom": tuned.get("energy_mae_mev_per_atom"),
                "force_drift_mae_ev_per_a": tuned.get("force_mae_ev_per_a"),
            }
        else:
            out[name] = {"base": set_errors(frames, base_eval), "tuned": set_errors(frames, tuned_eval)}
    return out


#: the units of :func:`dataset_metrics`' figures, for a fine-tune's MANIFEST
METRICS_UNITS = {
    "energy_mae_mev_per_atom": "meV/atom against DFT put on the base model's scale by the shift",
    "force_mae_ev_per_a": "eV/Å, per force component",
    "energy_drift_mae_mev_per_atom": "meV/atom, fine-tuned against base model on the replay set",
}
#: what a fine-tune's validation figures hold out, for its MANIFEST
VALIDATION_NOTE = (
    "validation frames are whole relaxations held out (val_groups); the replay validation set holds structures "
    "whose labels the fine-tune never saw"
)


__all__ = [
    "REASONS",
    "METRICS_UNITS",
    "VALIDATION_NOTE",
    "FinetuneDataError",
    "FinetuneDataSettings",
    "FinetuneOptions",
    "FinetuneDataset",
    "ReferenceShift",
    "build_dataset",
    "dataset_metrics",
    "detached",
    "calculator_evaluator",
    "deduplicate_frames",
    "dehydrogenated_slabs",
    "element_counts",
    "fit_host_shift",
    "fit_reference_shift",
    "frame_fingerprint",
    "frame_group",
    "frame_roots",
    "freeze_except",
    "frame_weights",
    "invocation",
    "label_replay",
    "layer_replay_structures",
    "reference_replay_structures",
    "set_errors",
    "split_frames",
    "split_replay",
    "write_manifest",
]
