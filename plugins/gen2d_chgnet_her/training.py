"""Fine-tuning CHGNet on DFT frames with CHGNet's own ``Trainer``: data from :mod:`gen2d.finetune`, all but the last
interaction block and the readout frozen, a few epochs; writes the checkpoint, the data files and MANIFEST.json.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from gen2d.fileio import atomic_path
from gen2d.finetune import (
    METRICS_UNITS,
    VALIDATION_NOTE,
    build_dataset,
    dataset_metrics,
    detached,
    frame_roots,
    freeze_except,
    item_repeats,
    replay_sampler,
    training_items,
    write_manifest,
)
from gen2d.finetune import (
    FinetuneOptions as BaseFinetuneOptions,
)
from gen2d.scoring import check_options, device_name, file_sha256
from gen2d_chgnet_her import CHECKPOINT_FORMAT, CHECKPOINT_NAME

#: the parameters that train by default: the last atom interaction block and the readout (the rest is frozen)
DEFAULT_TRAINABLE = ("atom_conv_layers.-1", "readout_norm", "mlp")


class FinetuneOptions(BaseFinetuneOptions):
    """Options of ``gen2d train --calculator chgnet-her`` (``-o key=value``); the shared ones are
    :class:`gen2d.finetune.FinetuneOptions`'s. Energies eV, lengths Å."""

    out: str = Field("chgnet-her", description="output folder: checkpoint, MANIFEST.json")
    base_model: str = Field("0.3.0", description="CHGNet model in the chgnet wheel to start from")
    trainable: list[str] = Field(
        list(DEFAULT_TRAINABLE),
        description="parameter-name prefixes that train (``atom_conv_layers.-1`` is the last block); the rest is frozen",
    )
    epochs: int = Field(15, ge=1)
    energy_loss_ratio: float = Field(100.0, ge=0, description="weight of the per-atom energy MSE (eV/atom)²")
    force_loss_ratio: float = Field(1.0, ge=0, description="weight of the force MSE (eV/Å)²")
    criterion: str = Field("MSE", description="MSE, Huber or MAE (CHGNet's CombinedLoss)")


def chgnet_evaluator(model, batch_size: int = 16):
    """An evaluator for :func:`gen2d.finetune.build_dataset`: CHGNet's own batched ``predict_structure``,
    on the structures ``CHGNetCalculator`` would build from the same atoms; returns (eV, eV/Å) per frame."""
    from pymatgen.io.ase import AseAtomsAdaptor

    def evaluate(frames):
        if not frames:
            return []
        structures = [AseAtomsAdaptor.get_structure(detached(f)) for f in frames]
        with contextlib.redirect_stdout(sys.stderr):
            preds = model.predict_structure(structures, task="ef", batch_size=batch_size)
        if isinstance(preds, dict):
            preds = [preds]
        factor = [len(s) if model.is_intensive else 1 for s in structures]
        return [(float(p["e"]) * n, np.asarray(p["f"], float)) for p, n in zip(preds, factor, strict=True)]

    return evaluate


def resolve_trainable(model, prefixes: Sequence[str]) -> list[str]:
    """Parameter names of ``model`` under ``prefixes``; a negative index counts from the end of its layer list
    (``atom_conv_layers.-1`` is the last atom interaction block).

    Raises
    ------
    ValueError
        When a prefix matches no parameter (a typo would otherwise train less than asked).
    """
    names = [n for n, _ in model.named_parameters()]
    out: list[str] = []
    for prefix in prefixes:
        head, _, idx = prefix.partition(".")
        layers = getattr(model, head, None)
        if idx.lstrip("-").isdigit() and hasattr(layers, "__len__") and len(layers):
            prefix = f"{head}.{int(idx) % len(layers)}"
        hit = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hit:
            raise ValueError(f"trainable prefix {prefix!r} matches no parameter of CHGNet")
        out += [n for n in hit if n not in out]
    return out


def _structure_data(frames, graph_converter, repeats: int = 1):
    """CHGNet ``StructureData`` of frames: per-atom target energy, forces (NaN where the frame has none: CHGNet's
    loss masks missing labels), ids ``run/system#frame``."""
    from chgnet.data.dataset import StructureData
    from pymatgen.io.ase import AseAtomsAdaptor

    structures, energies, forces, ids = [], [], [], []
    for f in frames:
        for _ in range(item_repeats(f, repeats)):
            structures.append(AseAtomsAdaptor.get_structure(detached(f)))
            energies.append(float(f.info["target_energy"]) / len(f))
            forces.append(f.arrays["forces"] if "forces" in f.arrays else np.full((len(f), 3), np.nan))
            vib = "vib" if f.info.get("vibration") else ""  # a part's vibration frames count from 0 too
            ids.append(f"{f.info.get('run', '')}/{f.info.get('system', '')}#{vib}{f.info.get('frame', 0)}")
    with contextlib.redirect_stdout(sys.stderr):
        return StructureData(
            structures=structures,
            energies=energies,
            forces=forces,
            structure_ids=ids,
            graph_converter=graph_converter,
            shuffle=False,
        )


def energy_only_safe_loss(criterion):
    """CHGNet's ``CombinedLoss`` that also takes a batch whose frames all lack forces.

    CHGNet masks missing (NaN) force labels, but a batch with none left makes the force MSE of an empty
    tensor, NaN, and one NaN step ruins the weights. Such a batch (energy-only single points drawn
    together) gets the energy loss alone.
    """
    import torch
    from chgnet.trainer.trainer import CombinedLoss

    class EnergyOnlySafeLoss(CombinedLoss):
        def forward(self, targets, prediction):
            if "f" in self.target_str and not any(bool(torch.isfinite(t).any()) for t in targets["f"]):
                full = self.target_str
                self.target_str = full.replace("f", "")
                try:
                    out = super().forward(targets, prediction)
                finally:
                    self.target_str = full
                out["f_MAE"] = torch.zeros(())
                out["f_MAE_size"] = 0
                return out
            return super().forward(targets, prediction)

    criterion.__class__ = EnergyOnlySafeLoss
    return criterion


def finetune(**options: Any) -> dict[str, Any]:
    """Fine-tune CHGNet on the DFT frames under ``frames`` and write ``out/chgnet_her.pt`` and ``out/MANIFEST.json``.

    Data: :func:`gen2d.finetune.build_dataset` (frames on the base model's energy scale through a fitted
    per-element shift, a group-wise train/validation split, a replay set labelled by the base model).
    Training: ``chgnet.trainer.Trainer`` (Adam, cosine schedule, energy and force loss; CHGNet's loss masks
    the forces of energy-only frames) with every parameter frozen except ``trainable``.

    Returns ``checkpoint`` (path), ``manifest`` (path) and ``metrics``.

    Raises
    ------
    gen2d.scoring.ScorerOptionsError
        Unknown or malformed options, by name.
    gen2d.finetune.FinetuneDataError
        No frames, mixed DFT settings, a bad split.
    """
    import chgnet
    import torch
    from chgnet.data.dataset import collate_graphs
    from chgnet.model import CHGNet
    from chgnet.trainer import Trainer
    from torch.utils.data import DataLoader

    opts = FinetuneOptions(**check_options(FinetuneOptions, options, "calculator chgnet-her (train)"))
    if opts.threads:
        torch.set_num_threads(opts.threads)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    device = device_name(opts.device)
    out = Path(opts.out)
    data_out = Path(opts.data_out) if opts.data_out else out / "data"
    roots = frame_roots(opts.frames)

    with contextlib.redirect_stdout(sys.stderr):
        base = CHGNet.load(model_name=opts.base_model, use_device="cpu", verbose=False)
    base_sha = _wheel_checkpoint_sha(opts.base_model)
    base_name = f"CHGNet {base.version} (chgnet {chgnet.__version__})"
    base_eval = chgnet_evaluator(base)
    settings = opts.data_settings()
    dataset = build_dataset(roots, base_eval, settings, label_model=base_name)
    files = dataset.write(data_out)

    torch.manual_seed(opts.seed)
    with contextlib.redirect_stdout(sys.stderr):
        model = CHGNet.load(model_name=opts.base_model, use_device="cpu", verbose=False)
    names = resolve_trainable(model, opts.trainable)
    n_trainable = freeze_except(model, names)
    train_set = _structure_data(dataset.train + dataset.replay_train, model.graph_converter, opts.dft_repeats)
    val_frames = dataset.val + dataset.replay_val
    val_set = _structure_data(val_frames or dataset.train, model.graph_converter)
    gen = torch.Generator().manual_seed(opts.seed)
    sampler = replay_sampler(
        training_items(dataset.train, opts.dft_repeats), len(dataset.replay_train), opts.replay_per_epoch, opts.seed
    )
    train_loader = DataLoader(
        train_set,
        batch_size=opts.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate_graphs,
        generator=None if sampler else gen,
    )
    val_loader = DataLoader(val_set, batch_size=opts.batch_size, shuffle=False, collate_fn=collate_graphs)
    trainer = Trainer(
        model=model,
        targets="ef",
        energy_loss_ratio=opts.energy_loss_ratio,
        force_loss_ratio=opts.force_loss_ratio,
        optimizer="Adam",
        scheduler="CosLR",
        criterion=opts.criterion,
        epochs=opts.epochs,
        learning_rate=opts.learning_rate,
        print_freq=10**6,
        torch_seed=opts.seed,
        data_seed=opts.seed or None,
        use_device=device,
    )
    energy_only_safe_loss(trainer.criterion)
    with tempfile.TemporaryDirectory(prefix="gen2d-chgnet-her-") as tmp, contextlib.redirect_stdout(sys.stderr):
        trainer.train(train_loader, val_loader, save_dir=tmp)
    tuned = trainer.model.to("cpu").eval()
    train_wall, train_cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT_NAME
    state = {
        "format": CHECKPOINT_FORMAT,
        "base_model": opts.base_model,
        "base_checkpoint_sha256": base_sha,
        "chgnet_version": chgnet.__version__,
        "trainable": names,
        "reference_shift": dataset.shift.as_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in tuned.state_dict().items()},
    }
    with atomic_path(ckpt) as tmp_ckpt:
        torch.save(state, tmp_ckpt)

    metrics = dataset_metrics(dataset, base_eval, chgnet_evaluator(tuned))
    history = {k: {s: [float(x) for x in v[s]] for s in ("train", "val")} for k, v in trainer.training_history.items()}
    manifest = write_manifest(
        out / "MANIFEST.json",
        what="CHGNet fine-tuned on gen2d's CP2K DFT frames (calculator chgnet-her)",
        file=ckpt.name,
        sha256=file_sha256(ckpt),
        size_bytes=ckpt.stat().st_size,
        base_model={
            "name": base_name,
            "chgnet_model": opts.base_model,
            "checkpoint_sha256": base_sha,
            "chgnet_version": chgnet.__version__,
            "torch_version": torch.__version__,
        },
        data=dataset.manifest_data(files, data_out),
        training={
            "trainer": "chgnet.trainer.Trainer",
            "trainable": names,
            "n_trainable_parameters": n_trainable,
            "n_parameters": sum(p.numel() for p in tuned.parameters()),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "options": opts.model_dump(),
            "history_mae": history,
            "history_units": {"e": "eV/atom", "f": "eV/Å"},
            "wall_seconds": train_wall,
            "cpu_seconds": train_cpu,
            "validation_note": VALIDATION_NOTE,
        },
        metrics=metrics,
        metrics_units=METRICS_UNITS,
    )
    return {
        "checkpoint": str(ckpt),
        "manifest": str(out / "MANIFEST.json"),
        "sha256": manifest["sha256"],
        "metrics": metrics,
        "wall_seconds": train_wall,
    }


def _wheel_checkpoint_sha(model_name: str) -> str | None:
    import chgnet

    files = sorted((Path(chgnet.__file__).parent / "pretrained" / model_name).glob("*.pth.tar"))
    return file_sha256(files[0]) if files else None
