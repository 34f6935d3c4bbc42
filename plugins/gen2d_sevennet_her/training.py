"""Fine-tuning SevenNet on DFT frames with sevenn's own training code: data from :mod:`gen2d.finetune`, graphs from
``sevenn.train.dataload``, sevenn's ``Trainer``, losses and epoch loop (``processing_epoch_v2``), all but the last
interaction block and the readout frozen; writes the trained parameters, the data files and MANIFEST.json.
"""

from __future__ import annotations

import contextlib
import csv
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

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
from gen2d_sevennet_her import (
    BASE_MODELS,
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    DEFAULT_BASE_MODEL,
    load_base_model,
)

#: the parameters that train by default: the last interaction block and the readout (the rest is frozen)
DEFAULT_TRAINABLE = ("block.-1", "reduce_input_to_hidden", "reduce_hidden_to_energy")


class FinetuneOptions(BaseFinetuneOptions):
    """Options of ``gen2d train --calculator sevennet-her`` (``-o key=value``); the shared ones are
    :class:`gen2d.finetune.FinetuneOptions`'s. Energies eV, lengths Å."""

    out: str = Field("sevennet-her", description="output folder: checkpoint, MANIFEST.json")
    base_model: Literal["7net-0", "7net-l3i5"] = Field(
        DEFAULT_BASE_MODEL, description="SevenNet in the sevenn wheel to start from (sha256-pinned)"
    )
    trainable: list[str] = Field(
        list(DEFAULT_TRAINABLE),
        description="parameter-name prefixes that train (``block.-1`` is the last interaction block); the rest is "
        "frozen",
    )
    epochs: int = Field(4, ge=1)
    energy_loss_weight: float = Field(100.0, ge=0, description="weight of the per-atom energy loss (eV/atom)")
    force_loss_weight: float = Field(1.0, ge=0, description="weight of the force loss (eV/Å)")
    criterion: Literal["mse", "huber"] = Field("mse", description="sevenn's loss: mse or huber")
    huber_delta: float = Field(0.01, gt=0, description="Huber's delta (sevenn's fine-tuning preset: 0.01)")
    replay_dehydrogenated_every: int = Field(3, ge=0, description="every k-th slab+H frame without H (0: none)")


def sevennet_evaluator(model, cutoff: float, batch_size: int = 8, device: str = "cpu"):
    """An evaluator for :func:`gen2d.finetune.build_dataset`: the SevenNet network on batches of the graphs sevenn's
    calculator builds (``unlabeled_atoms_to_graph``, the atoms' own pbc); returns (eV, eV/Å) per frame."""
    import sevenn._keys as KEY
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph
    from torch_geometric.loader import DataLoader

    def evaluate(frames):
        if not frames:
            return []
        graphs = [AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(detached(f), cutoff)) for f in frames]
        model.to(device).eval()
        model.set_is_batch_data(True)
        out = []
        try:
            for batch in DataLoader(graphs, batch_size=batch_size, shuffle=False):
                res = model(batch.to(device))
                energies = res[KEY.PRED_TOTAL_ENERGY].detach().cpu().numpy().reshape(-1)
                forces = res[KEY.PRED_FORCE].detach().cpu().numpy()
                sizes = res[KEY.NUM_ATOMS].detach().cpu().numpy().reshape(-1)
                for e, f in zip(energies, np.split(forces, np.cumsum(sizes)[:-1]), strict=True):
                    out.append((float(e), np.asarray(f, float)))
        finally:
            model.set_is_batch_data(False)
        return out

    return evaluate


def resolve_trainable(model, prefixes: Sequence[str], n_blocks: int) -> list[str]:
    """Trainable parameter names of ``model`` under ``prefixes``. ``block.K`` names interaction block K (sevenn's
    ``K_`` modules; a negative K counts from the end, ``block.-1`` is the last of ``n_blocks``); any other prefix
    is a module name (``reduce_input_to_hidden``). Parameters sevenn keeps fixed (the convolution denominators,
    the per-element shift and scale) stay fixed.

    Raises
    ------
    ValueError
        When a prefix matches no trainable parameter (a typo would otherwise train less than asked).
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    out: list[str] = []
    for prefix in prefixes:
        head, _, idx = prefix.partition(".")
        if head == "block" and idx.lstrip("-").isdigit():
            k = int(idx)
            if not -n_blocks <= k < n_blocks:
                raise ValueError(f"trainable prefix {prefix!r}: SevenNet has {n_blocks} interaction blocks")
            hit = [n for n in names if n.startswith(f"{k % n_blocks}_")]
        else:
            hit = [n for n in names if n == prefix or n.startswith(prefix + ".")]
        if not hit:
            raise ValueError(f"trainable prefix {prefix!r} matches no trainable parameter of SevenNet")
        out += [n for n in hit if n not in out]
    return out


def graphs_of(frames, cutoff: float, repeats: int = 1) -> list:
    """sevenn ``AtomGraphData`` of frames, built by ``sevenn.train.dataload.graph_build``: total target energy,
    forces (NaN where the frame has none: sevenn's losses and error metrics skip unlabelled values), no stress.
    DFT frames appear ``repeats`` times, replay frames once."""
    from sevenn.train.dataload import graph_build

    atoms_list = []
    for f in frames:
        a = detached(f)
        a.info = {
            "y_energy": float(f.info["target_energy"]),
            "y_stress": np.full(6, np.nan),
        }
        a.arrays["y_force"] = (
            np.asarray(f.arrays["forces"], float) if "forces" in f.arrays else np.full((len(f), 3), np.nan)
        )
        atoms_list += [a] * item_repeats(f, repeats)
    with contextlib.redirect_stderr(_Null()):  # tqdm bars
        return graph_build(atoms_list, cutoff, num_cores=1, transfer_info=False, allow_unlabeled=True)


class _Null:
    def write(self, *_):
        return 0

    def flush(self):
        pass


def loss_functions(opts: FinetuneOptions) -> list:
    """sevenn's per-atom energy and force losses (``sevenn.train.loss``) with the options' criterion and weights."""
    import torch.nn as nn
    from sevenn.train.loss import ForceLoss, PerAtomEnergyLoss

    crit = nn.MSELoss() if opts.criterion == "mse" else nn.HuberLoss(delta=opts.huber_delta)
    return [
        (PerAtomEnergyLoss(criterion=crit), opts.energy_loss_weight),
        (ForceLoss(criterion=crit), opts.force_loss_weight),
    ]


def _history(csv_path: Path) -> dict[str, list[float]]:
    """sevenn's learning curve (``lc.csv``: one row per epoch) as column -> values."""
    if not csv_path.is_file():
        return {}
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def finetune(**options: Any) -> dict[str, Any]:
    """Fine-tune SevenNet on the DFT frames under ``frames`` and write ``out/sevennet_her.pt`` and
    ``out/MANIFEST.json``.

    Data: :func:`gen2d.finetune.build_dataset` (frames on the base model's energy scale through a fitted
    per-element shift, a group-wise train/validation split, a replay set labelled by the base model).
    Training: sevenn's ``Trainer`` driven by its epoch loop ``processing_epoch_v2`` (Adam, cosine schedule,
    sevenn's per-atom energy and force losses, which skip the forces of energy-only frames) with every
    parameter frozen except ``trainable``. The checkpoint holds the trained parameters only; the rest is the
    sha256-pinned base checkpoint of the sevenn wheel.

    Returns ``checkpoint`` (path), ``manifest`` (path), ``sha256``, ``metrics`` and ``wall_seconds``.

    Raises
    ------
    gen2d.scoring.ScorerOptionsError
        Unknown or malformed options, by name.
    gen2d.finetune.FinetuneDataError
        No frames, mixed DFT settings, a bad split.
    gen2d_sevennet_her.BaseCheckpointMismatch
        The wheel's base checkpoint is not the pinned file.
    """
    import sevenn
    import sevenn._keys as KEY
    import torch
    from sevenn.error_recorder import ErrorRecorder
    from sevenn.scripts.processing_epoch import processing_epoch_v2
    from sevenn.train.optim import optim_dict, scheduler_dict
    from sevenn.train.trainer import Trainer
    from torch_geometric.loader import DataLoader

    opts = FinetuneOptions(**check_options(FinetuneOptions, options, "calculator sevennet-her (train)"))
    if opts.threads:
        torch.set_num_threads(opts.threads)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    device = device_name(opts.device)
    out = Path(opts.out)
    data_out = Path(opts.data_out) if opts.data_out else out / "data"
    roots = frame_roots(opts.frames)

    base, config, base_sha = load_base_model(opts.base_model)
    cutoff = float(config[KEY.CUTOFF])
    n_blocks = int(config[KEY.NUM_CONVOLUTION])
    base_name = f"SevenNet {opts.base_model} (sevenn {sevenn.__version__})"
    base_eval = sevennet_evaluator(base, cutoff, opts.batch_size)
    settings = opts.data_settings()
    dataset = build_dataset(roots, base_eval, settings, label_model=base_name)
    files = dataset.write(data_out)

    torch.manual_seed(opts.seed)
    model, _, _ = load_base_model(opts.base_model, base_sha)
    names = resolve_trainable(model, opts.trainable, n_blocks)
    n_trainable = freeze_except(model, names)
    val_frames = dataset.val + dataset.replay_val
    gen = torch.Generator().manual_seed(opts.seed)
    sampler = replay_sampler(
        training_items(dataset.train, opts.dft_repeats), len(dataset.replay_train), opts.replay_per_epoch, opts.seed
    )
    loaders = {
        "trainset": DataLoader(
            graphs_of(dataset.train + dataset.replay_train, cutoff, opts.dft_repeats),
            batch_size=opts.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=None if sampler else gen,
        ),
        "validset": DataLoader(graphs_of(val_frames or dataset.train, cutoff), batch_size=opts.batch_size),
    }
    losses = loss_functions(opts)
    trainer = Trainer(
        model,
        loss_functions=losses,
        optimizer_cls=optim_dict["adam"],
        optimizer_args={"lr": opts.learning_rate},
        scheduler_cls=scheduler_dict["cosineannealinglr"],
        scheduler_args={"T_max": opts.epochs},
        device=device,
    )
    # sevenn's own epoch loop reads these keys; it writes its full checkpoints and lc.csv into a scratch folder
    loop_config = {
        KEY.EPOCH: opts.epochs,
        KEY.PER_EPOCH: opts.epochs + 1,
        KEY.BEST_METRIC: "TotalLoss",
        KEY.IS_TRAIN_STRESS: False,
        KEY.FORCE_WEIGHT: opts.force_loss_weight,
        KEY.LOSS: opts.criterion,
        KEY.ERROR_RECORD: [["Energy", "MAE"], ["Force", "MAE"], ["TotalLoss", "None"]],
    }
    recorder = ErrorRecorder.from_config(loop_config, losses)
    with (
        tempfile.TemporaryDirectory(prefix="gen2d-sevennet-her-") as tmp,
        contextlib.redirect_stdout(sys.stderr),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        processing_epoch_v2(loop_config, trainer, loaders, error_recorder=recorder, working_dir=tmp)
        history = _history(Path(tmp) / "lc.csv")
    tuned = trainer.model.to("cpu").eval()
    tuned.set_is_batch_data(False)
    train_wall, train_cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu

    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT_NAME
    params = dict(tuned.named_parameters())
    state = {
        "format": CHECKPOINT_FORMAT,
        "base_model": opts.base_model,
        "base_checkpoint_sha256": base_sha,
        "sevenn_version": sevenn.__version__,
        "trainable": names,
        "reference_shift": dataset.shift.as_dict(),
        "parameters": {k: params[k].detach().cpu().clone() for k in names},
    }
    with atomic_path(ckpt) as tmp_ckpt:
        torch.save(state, tmp_ckpt)

    metrics = dataset_metrics(dataset, base_eval, sevennet_evaluator(tuned, cutoff, opts.batch_size))
    manifest = write_manifest(
        out / "MANIFEST.json",
        what="SevenNet fine-tuned on gen2d's CP2K DFT frames (calculator sevennet-her)",
        file=ckpt.name,
        sha256=file_sha256(ckpt),
        size_bytes=ckpt.stat().st_size,
        checkpoint_holds="the trained parameters only (names in training.trainable); the rest of the network is "
        "the base checkpoint below, loaded by sevenn after its sha256 is checked",
        base_model={
            "name": base_name,
            "sevenn_model": opts.base_model,
            "checkpoint_sha256": base_sha,
            "pinned_sha256": BASE_MODELS[opts.base_model],
            "sevenn_version": sevenn.__version__,
            "torch_version": torch.__version__,
        },
        data=dataset.manifest_data(files, data_out),
        training={
            "trainer": "sevenn.train.trainer.Trainer driven by sevenn.scripts.processing_epoch.processing_epoch_v2",
            "losses": "sevenn.train.loss.PerAtomEnergyLoss, ForceLoss",
            "optimizer": "Adam",
            "scheduler": "CosineAnnealingLR (T_max = epochs, stepped per epoch)",
            "model_kept": "the last epoch's weights",
            "trainable": names,
            "n_trainable_parameters": n_trainable,
            "n_parameters": sum(p.numel() for p in tuned.parameters()),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "options": opts.model_dump(),
            "history": history,
            "history_units": {"Energy_MAE": "eV/atom", "Force_MAE": "eV/Å", "lr": "learning rate"},
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
