"""CHGNet calculator backend (entry point ``gen2d.calculators: chgnet``).

CHGNet ships its pretrained weights inside its wheel, so this is the offline default MLIP.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from gen2d.scoring import PluginUnavailable, file_sha256

DEFAULT_MODEL = "0.3.0"


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _checkpoint_path(model: str) -> Path | None:
    """The weight file CHGNet.load reads for a named model (it lives in the chgnet wheel)."""
    import chgnet

    folder = Path(chgnet.__file__).parent / "pretrained" / model
    files = sorted(folder.glob("*.pth.tar"))
    return files[0] if files else None


def available(model: str | None = None) -> tuple[bool, str]:
    """(True, "") when chgnet imports and the model's weights are in the wheel."""
    try:
        import chgnet  # noqa: F401
    except ImportError as exc:
        return False, f"chgnet is not installed ({exc}); pip install chgnet"
    name = model or DEFAULT_MODEL
    if _checkpoint_path(name) is None:
        return False, f"CHGNet {name} weights not found in the chgnet package"
    return True, ""


def make_calculator(model: str | None = None, device: str = "auto", **kw: Any):
    """An ASE calculator for CHGNet.

    Parameters
    ----------
    model : str, optional
        CHGNet model name shipped in the wheel (``0.3.0``, ``0.2.0``, ``r2scan``); default 0.3.0.
    device : str
        ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.
    **kw
        Passed to ``CHGNetCalculator`` (e.g. ``on_isolated_atoms``).

    Returns
    -------
    chgnet.model.dynamics.CHGNetCalculator
        With ``gen2d_model`` and ``gen2d_checkpoint_sha256`` attributes for provenance.
    """
    ok, why = available(model)
    if not ok:
        raise PluginUnavailable(why)
    import chgnet
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    name = model or DEFAULT_MODEL
    dev = _device(device)
    # CHGNet prints its banner to stdout; keep stdout clean for `gen2d ... --json`.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            net = CHGNet.load(model_name=name, use_device=dev, verbose=False)
        except ValueError as exc:
            raise PluginUnavailable(f"unknown CHGNet model {name!r}: {exc}") from exc
        calc = CHGNetCalculator(model=net, use_device=dev, **kw)
    ckpt = _checkpoint_path(name)
    calc.gen2d_model = f"CHGNet {net.version} (chgnet {chgnet.__version__})"
    calc.gen2d_checkpoint_sha256 = file_sha256(ckpt) if ckpt else None
    return calc


make_calculator.available = available
