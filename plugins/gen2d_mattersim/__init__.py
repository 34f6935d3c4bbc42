"""MatterSim calculator backend (entry point ``gen2d.calculators: mattersim``).

MatterSim downloads its weights at run time. gen2d never triggers that download: a model name is
resolved to MatterSim's own cache folder, or a local checkpoint path is given (argument or
``GEN2D_MATTERSIM_CHECKPOINT``); without a file the backend is unavailable and says why.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from gen2d.scoring import PluginUnavailable, file_sha256
from gen2d.settings import get_settings

DEFAULT_MODEL = "mattersim-v1.0.0-1M"
# Where mattersim's Potential.from_checkpoint looks for (and would download) its named models.
PRETRAINED_DIR = Path("~/.local/mattersim/pretrained_models").expanduser()
_NAMED = {"mattersim-v1.0.0-1m": "mattersim-v1.0.0-1M.pth", "mattersim-v1.0.0-5m": "mattersim-v1.0.0-5M.pth"}


def resolve_checkpoint(model: str | None = None) -> Path:
    """The local checkpoint file for ``model`` (name, path, or the env/config default).

    Raises
    ------
    PluginUnavailable
        When no file exists; the message names where it was looked for.
    """
    model = model or get_settings().mattersim_checkpoint or DEFAULT_MODEL
    key = model.lower().removesuffix(".pth")
    if key in _NAMED:
        path = PRETRAINED_DIR / _NAMED[key]
        if not path.is_file():
            raise PluginUnavailable(
                f"MatterSim weights {_NAMED[key]} not found in {PRETRAINED_DIR} and cannot be downloaded "
                "here; put the file there or pass a local checkpoint (model=/path/to.pth or "
                "GEN2D_MATTERSIM_CHECKPOINT)")
        return path
    path = Path(model).expanduser()
    if not path.is_file():
        raise PluginUnavailable(f"MatterSim checkpoint {str(path)!r} does not exist")
    return path


def available(model: str | None = None) -> tuple[bool, str]:
    """(True, "") when mattersim imports and a checkpoint file is on disk."""
    try:
        import mattersim  # noqa: F401
        from mattersim.forcefield.potential import Potential  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA torchvision pulled in by its deps
        return False, f"mattersim cannot be imported ({type(exc).__name__}: {exc}); install the extra gen2d[mattersim]"
    try:
        resolve_checkpoint(model)
    except PluginUnavailable as exc:
        return False, str(exc)
    return True, ""


def make_calculator(model: str | None = None, device: str = "auto", **kw: Any):
    """An ASE calculator for MatterSim through ``Potential.from_checkpoint(load_path=...)``.

    Parameters
    ----------
    model : str, optional
        ``mattersim-v1.0.0-1M`` / ``-5M`` (looked up in MatterSim's cache, never downloaded) or a
        local checkpoint path; default: ``GEN2D_MATTERSIM_CHECKPOINT`` or the 1M model.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    **kw
        Passed to ``MatterSimCalculator``.
    """
    ok, why = available(model)
    if not ok:
        raise PluginUnavailable(why)
    import mattersim
    import torch
    from mattersim.forcefield.potential import MatterSimCalculator, Potential

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    path = resolve_checkpoint(model)
    # mattersim's own torch.load uses torch's default weights_only=True (torch >= 2.6), so a
    # checkpoint that needs unpickling of arbitrary objects is refused rather than executed.
    with contextlib.redirect_stdout(sys.stderr):  # stdout stays clean for `gen2d ... --json`
        potential = Potential.from_checkpoint(load_path=str(path), device=dev, load_training_state=False)
        calc = MatterSimCalculator(potential=potential, device=dev, **kw)
    calc.gen2d_model = f"MatterSim {path.name} (mattersim {mattersim.__version__})"
    calc.gen2d_checkpoint_sha256 = file_sha256(path)
    return calc


make_calculator.available = available
