"""CHGNet fine-tuned on gen2d's own DFT frames (entry point ``gen2d.calculators: chgnet-her``).

The foundation CHGNet was trained on bulk crystals; H on a 2D surface is far from its data. This backend
loads a CHGNet whose last interaction block and readout were fine-tuned on the CP2K frames of ``dgh.dft``
runs (:mod:`gen2d.finetune` builds the data, :func:`train` runs CHGNet's own ``Trainer``). Any scorer that
takes a calculator name can use it: ``ehull.chgnet`` with ``calculator=chgnet-her``, ``dgh.mlip`` with
``calculator=chgnet-her``.

The checkpoint is a plain state dict (``torch.load(weights_only=True)``) of the whole network, loaded into
the architecture of its base model from the chgnet wheel. gen2d ships one under
``gen2d/assets/chgnet_her`` with its MANIFEST; ``model=PATH`` loads another.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import gen2d.checkpoints
from gen2d.checkpoints import FineTunedCheckpoint
from gen2d.scoring import device_name, file_sha256

#: file name of the checkpoint inside a model folder
CHECKPOINT_NAME = "chgnet_her.pt"
#: format tag stored in every checkpoint this plugin writes
CHECKPOINT_FORMAT = "gen2d-chgnet-her/1"


class CheckpointUnavailable(gen2d.checkpoints.CheckpointUnavailable):
    """No usable fine-tuned checkpoint: missing, unreadable, or not written by this plugin."""


#: the checkpoint files of this plugin (a state dict of the whole network over its base model)
CHECKPOINT = FineTunedCheckpoint(
    what="CHGNet",
    calculator="chgnet-her",
    file_name=CHECKPOINT_NAME,
    format=CHECKPOINT_FORMAT,
    asset="chgnet_her",
    required=("base_model", "state_dict"),
    error=CheckpointUnavailable,
)
default_model_dir = CHECKPOINT.default_dir
checkpoint_path = CHECKPOINT.path
load_checkpoint = CHECKPOINT.load


def available(model: str | None = None) -> tuple[bool, str]:
    """(True, "") when chgnet imports and the fine-tuned checkpoint exists."""
    return CHECKPOINT.available(model, "chgnet", "pip install chgnet")


def load_model(model: str | None = None, device: str = "cpu"):
    """The fine-tuned ``CHGNet`` network: its base architecture from the chgnet wheel, its weights from the checkpoint.

    Returns the network and the checkpoint dict.
    """
    from chgnet.model import CHGNet

    state = load_checkpoint(checkpoint_path(model))
    with contextlib.redirect_stdout(sys.stderr):  # CHGNet prints; stdout stays clean for --json
        try:
            net = CHGNet.load(model_name=state["base_model"], use_device="cpu", verbose=False)
        except ValueError as exc:
            raise CheckpointUnavailable(f"base model {state['base_model']!r} is not in this chgnet: {exc}") from exc
    try:
        net.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointUnavailable(f"checkpoint does not fit CHGNet {state['base_model']}: {exc}") from exc
    return net.to(device), state


def make_calculator(model: str | None = None, device: str = "auto", **kw: Any):
    """An ASE calculator for the fine-tuned CHGNet.

    Parameters
    ----------
    model : str, optional
        Checkpoint file, or a folder holding ``chgnet_her.pt``; default: the checkpoint shipped with gen2d.
    device : str
        ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.
    **kw
        Passed to ``CHGNetCalculator``.

    Returns
    -------
    chgnet.model.dynamics.CHGNetCalculator
        With ``gen2d_model`` (names the fine-tune and its base) and ``gen2d_checkpoint_sha256``.

    Raises
    ------
    CheckpointUnavailable
        (a :class:`~gen2d.scoring.PluginUnavailable`) when the checkpoint is missing or unusable.
    """
    ok, why = available(model)
    if not ok:
        raise CheckpointUnavailable(why)
    import chgnet
    from chgnet.model.dynamics import CHGNetCalculator

    dev = device_name(device)
    path = checkpoint_path(model)
    net, state = load_model(model, dev)
    with contextlib.redirect_stdout(sys.stderr):
        calc = CHGNetCalculator(model=net, use_device=dev, **kw)
    sha = file_sha256(path)
    calc.gen2d_model = (
        f"CHGNet-HER {sha[:12]} (CHGNet {state['base_model']} fine-tuned on DFT frames; chgnet {chgnet.__version__})"
    )
    calc.gen2d_checkpoint_sha256 = sha
    return calc


make_calculator.available = available


def train(**options: Any) -> dict[str, Any]:
    """Fine-tune CHGNet on DFT frames (``gen2d train --calculator chgnet-her -o frames=DIR -o out=DIR``).

    Options are :class:`~gen2d_chgnet_her.training.FinetuneOptions`; see :func:`gen2d_chgnet_her.training.finetune`.
    """
    from gen2d_chgnet_her.training import finetune

    return finetune(**options)


__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CheckpointUnavailable",
    "available",
    "checkpoint_path",
    "default_model_dir",
    "load_checkpoint",
    "load_model",
    "make_calculator",
    "train",
]
