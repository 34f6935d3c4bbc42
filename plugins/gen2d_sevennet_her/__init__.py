"""SevenNet fine-tuned on gen2d's own DFT frames (entry point ``gen2d.calculators: sevennet-her``).

SevenNet-0 was trained on bulk crystals (MPtrj); H on a 2D surface is far from its data. This backend loads a
SevenNet whose last interaction block and readout were fine-tuned on the CP2K frames of ``dgh.dft`` runs
(:mod:`gen2d.finetune` builds the data, :func:`train` drives sevenn's own ``Trainer``). Any scorer that takes a
calculator name can use it: ``ehull.sevennet`` or ``dgh.mlip`` with ``calculator=sevennet-her``.

The checkpoint holds only the trained parameters, as a plain dict of tensors read with
``torch.load(weights_only=True)``. Everything else comes from the base checkpoint in the sevenn wheel, whose
sha256 is pinned in :data:`BASE_MODELS`, recorded in the checkpoint and checked before sevenn reads the file. gen2d
ships one under ``gen2d/assets/sevennet_her`` with its MANIFEST; ``model=PATH`` loads another.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import warnings
from pathlib import Path
from typing import Any

import gen2d.checkpoints
from gen2d.checkpoints import FineTunedCheckpoint
from gen2d.scoring import device_name, file_sha256

#: file name of the checkpoint inside a model folder
CHECKPOINT_NAME = "sevennet_her.pt"
#: format tag stored in every checkpoint this plugin writes
CHECKPOINT_FORMAT = "gen2d-sevennet-her/1"
#: the base models a fine-tune may start from: sevenn's pretrained name -> the sha256 of its checkpoint file in
#: the sevenn wheel (sevenn 0.13.0). A fine-tune is a delta over these bytes, so any other file is refused.
BASE_MODELS = {
    "7net-0": "7052cb42b7b3be42b40b97fa0d21077a48c54b5548948fc4dcf346629f813c36",  # SevenNet-0 (11Jul2024)
    "7net-l3i5": "a7ff190d41efe5b8317a03d20a468e4036a1a3e64e0b14fdbab64ac3f4bfc09d",  # SevenNet-l3i5
}
DEFAULT_BASE_MODEL = "7net-0"


class CheckpointUnavailable(gen2d.checkpoints.CheckpointUnavailable):
    """No usable fine-tuned checkpoint: missing, unreadable, or not written by this plugin."""


class BaseCheckpointMismatch(CheckpointUnavailable):
    """The base SevenNet checkpoint on disk is not the file the fine-tune was made from (sha256 differs)."""


#: the checkpoint files of this plugin (the trained parameters only, over a pinned base checkpoint)
CHECKPOINT = FineTunedCheckpoint(
    what="SevenNet",
    calculator="sevennet-her",
    file_name=CHECKPOINT_NAME,
    format=CHECKPOINT_FORMAT,
    asset="sevennet_her",
    required=("base_model", "base_checkpoint_sha256", "parameters"),
    error=CheckpointUnavailable,
)
default_model_dir = CHECKPOINT.default_dir
checkpoint_path = CHECKPOINT.path
load_checkpoint = CHECKPOINT.load


def available(model: str | None = None) -> tuple[bool, str]:
    """(True, "") when sevenn imports and the fine-tuned checkpoint exists."""
    return CHECKPOINT.available(model, "sevenn", "install the extra: pip install 'gen2d[sevennet]'")


def base_checkpoint(name: str, expected_sha256: str | None = None) -> tuple[Path, str]:
    """The base checkpoint file of ``name`` in the sevenn wheel and its sha256, checked against the pin.

    ``expected_sha256`` (a checkpoint's record) must also match when given.

    Raises
    ------
    CheckpointUnavailable
        ``name`` is not one of :data:`BASE_MODELS`, or its file is absent.
    BaseCheckpointMismatch
        The file's sha256 is not the pinned one (another sevenn release reshipped the weights).
    """
    if name not in BASE_MODELS:
        raise CheckpointUnavailable(f"base model {name!r} is not one of {', '.join(BASE_MODELS)}")
    from sevenn.util import pretrained_name_to_path

    try:
        path = Path(pretrained_name_to_path(name))
    except Exception as exc:  # absent from the wheel; sevenn would try to download it
        raise CheckpointUnavailable(f"SevenNet {name} has no local checkpoint: {type(exc).__name__}: {exc}") from exc
    sha = file_sha256(path)
    for want, what in (
        (BASE_MODELS[name], "pinned by gen2d_sevennet_her"),
        (expected_sha256, "recorded in the fine-tune"),
    ):
        if want and sha != want:
            raise BaseCheckpointMismatch(
                f"{path} has sha256 {sha}, not the {want} {what}: the fine-tune is a delta over other weights"
            )
    return path, sha


def load_base_model(name: str = DEFAULT_BASE_MODEL, expected_sha256: str | None = None):
    """A fresh copy of the base SevenNet network, built by sevenn from its sha256-checked wheel checkpoint.

    sevenn reads its own checkpoint with pickle (it holds numpy arrays and a ``torch.device``); the file is
    the wheel's, checked against :data:`BASE_MODELS` first, on every call. sevenn builds a network in about 3
    CPU-s (6 the first time), so each process builds it once and hands out deep copies (0.7 s).
    Returns the network, sevenn's config and the sha256.
    """
    from sevenn.checkpoint import SevenNetCheckpoint

    path, sha = base_checkpoint(name, expected_sha256)
    if (name, sha) not in _BASE_NETS:
        cp = SevenNetCheckpoint(str(path))
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sevenn's "no TP accelerator" and version notes
            _BASE_NETS[(name, sha)] = (cp.build_model().cpu().eval(), cp.config)
    net, config = _BASE_NETS[(name, sha)]
    return copy.deepcopy(net), copy.deepcopy(config), sha


#: (base model, sha256) -> the network sevenn built and its config; :func:`load_base_model` copies them
_BASE_NETS: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}


def apply_parameters(net, parameters: dict[str, Any], where: str = "checkpoint") -> None:
    """Put the fine-tuned ``parameters`` (name -> tensor) into the base network ``net``, in place.

    Raises
    ------
    CheckpointUnavailable
        A name the network does not have, or a tensor of another shape.
    """
    own = net.state_dict()
    bad = [k for k in parameters if k not in own]
    bad += [
        f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}"
        for k, v in parameters.items()
        if k in own and v.shape != own[k].shape
    ]
    if bad:
        raise CheckpointUnavailable(f"{where} does not fit the base SevenNet: {', '.join(bad[:5])}")
    own.update({k: v.to(own[k].dtype) for k, v in parameters.items()})
    net.load_state_dict(own, strict=True)


def load_model(model: str | None = None, device: str = "cpu"):
    """The fine-tuned SevenNet network: the base network from the sevenn wheel, the trained parameters from the
    checkpoint. Returns the network and the checkpoint dict."""
    path = checkpoint_path(model)
    state = load_checkpoint(path)
    net, _, _ = load_base_model(state["base_model"], state["base_checkpoint_sha256"])
    apply_parameters(net, state["parameters"], str(path))
    return net.to(device).eval(), state


def make_calculator(model: str | None = None, device: str = "auto", **kw: Any):
    """An ASE calculator for the fine-tuned SevenNet.

    Parameters
    ----------
    model : str, optional
        Checkpoint file, or a folder holding ``sevennet_her.pt``; default: the checkpoint shipped with gen2d.
    device : str
        ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.
    **kw
        Passed to ``SevenNetCalculator``.

    Returns
    -------
    sevenn.calculator.SevenNetCalculator
        With ``gen2d_model`` (names the fine-tune and its base) and ``gen2d_checkpoint_sha256``.

    Raises
    ------
    CheckpointUnavailable
        (a :class:`~gen2d.scoring.PluginUnavailable`) when the checkpoint is missing or unusable;
        :class:`BaseCheckpointMismatch` when the wheel's base checkpoint is not the one it was made from.
    """
    ok, why = available(model)
    if not ok:
        raise CheckpointUnavailable(why)
    import sevenn
    from sevenn.calculator import SevenNetCalculator

    dev = device_name(device)
    path = checkpoint_path(model)
    net, state = load_model(model, dev)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc = SevenNetCalculator(model=net, file_type="model_instance", device=dev, **kw)
    sha = file_sha256(path)
    calc.gen2d_model = f"SevenNet-HER {sha[:12]} (SevenNet {state['base_model']} fine-tuned on DFT frames; sevenn {sevenn.__version__})"
    calc.gen2d_checkpoint_sha256 = sha
    return calc


make_calculator.available = available


def train(**options: Any) -> dict[str, Any]:
    """Fine-tune SevenNet on DFT frames (``gen2d train --calculator sevennet-her -o frames=DIR -o out=DIR``).

    Options are :class:`~gen2d_sevennet_her.training.FinetuneOptions`; see :func:`gen2d_sevennet_her.training.finetune`.
    """
    from gen2d_sevennet_her.training import finetune

    return finetune(**options)


__all__ = [
    "BASE_MODELS",
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "DEFAULT_BASE_MODEL",
    "BaseCheckpointMismatch",
    "CheckpointUnavailable",
    "apply_parameters",
    "available",
    "base_checkpoint",
    "checkpoint_path",
    "default_model_dir",
    "load_base_model",
    "load_checkpoint",
    "load_model",
    "make_calculator",
    "train",
]
