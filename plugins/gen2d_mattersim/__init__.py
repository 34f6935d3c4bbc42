"""MatterSim calculator backend (entry point ``gen2d.calculators: mattersim``).

A named model (``mattersim-v1.0.0-1M`` / ``-5M``) is taken from gen2d's model cache; at its first use
it is copied from MatterSim's own cache folder if it is there, else downloaded through
:mod:`gen2d.weights` from the URL MatterSim itself uses (unless ``GEN2D_OFFLINE=1``). Its sha256 is
verified on every load and goes into the provenance. A local checkpoint path (argument or
``GEN2D_MATTERSIM_CHECKPOINT``) is used as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gen2d import weights
from gen2d.scoring import PluginUnavailable, device_name, file_sha256
from gen2d.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_MODEL = "mattersim-v1.0.0-1M"
# Where mattersim's own Potential.from_checkpoint keeps (and downloads) its named models
# (mattersim 1.2.3, forcefield/potential.py). A file found there is copied into gen2d's cache once.
PRETRAINED_DIR = Path("~/.local/mattersim/pretrained_models").expanduser()
_NAMED = {"mattersim-v1.0.0-1m", "mattersim-v1.0.0-5m"}


def _named(model: str) -> str | None:
    """The registry name when ``model`` names a published MatterSim checkpoint, else None."""
    key = model.strip().lower().removesuffix(".pth")
    return weights.get_model(key).name if key in _NAMED else None


def _requested(model: str | None) -> str:
    return model or get_settings().mattersim_checkpoint or DEFAULT_MODEL


def checkpoint(model: str | None = None) -> tuple[Path, str]:
    """(local file, sha256) of ``model``: a name (fetched and verified) or a path (hashed).

    Raises
    ------
    PluginUnavailable
        When no file can be had; the message says what to run or where to put the file.
    """
    model = _requested(model)
    name = _named(model)
    if name is None:
        path = Path(model).expanduser()
        if not path.is_file():
            raise PluginUnavailable(f"MatterSim checkpoint {str(path)!r} does not exist")
        return path, file_sha256(path)
    try:
        if weights.cache_path(name).is_file():
            cached = weights.verify(name)
        elif (PRETRAINED_DIR / weights.get_model(name).filename).is_file():
            cached = weights.install_file(name, PRETRAINED_DIR / weights.get_model(name).filename)
        else:
            cached = weights.fetch(name)
    except weights.WeightsError as exc:
        raise PluginUnavailable(f"MatterSim weights: {exc}") from None
    return cached.path, cached.sha256


def resolve_checkpoint(model: str | None = None) -> Path:
    """The local checkpoint file for ``model`` (name, path, or the env/config default); see :func:`checkpoint`."""
    return checkpoint(model)[0]


def available(model: str | None = None) -> tuple[bool, str]:
    """(True, "") when mattersim imports and a checkpoint is on disk or may be downloaded at first use.

    Nothing is downloaded or hashed here.
    """
    try:
        import mattersim  # noqa: F401
        from mattersim.forcefield.potential import Potential  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CUDA torchvision pulled in by its deps
        return False, f"mattersim cannot be imported ({type(exc).__name__}: {exc}); install the extra gen2d[mattersim]"
    model = _requested(model)
    name = _named(model)
    if name is None:
        path = Path(model).expanduser()
        return (True, "") if path.is_file() else (False, f"MatterSim checkpoint {str(path)!r} does not exist")
    filename = weights.get_model(name).filename
    if weights.cache_path(name).is_file() or (PRETRAINED_DIR / filename).is_file():
        return True, ""
    if weights.is_offline():
        return False, (
            f"MatterSim weights {filename} are not cached and GEN2D_OFFLINE=1 forbids the download: "
            f"run `gen2d models fetch {name}` where there is internet, or copy the file to "
            f"{weights.cache_path(name)} (`gen2d models fetch {name} --from FILE` checks and copies it)"
        )
    return True, ""  # downloaded, and its sha256 recorded, at first use


def load_potential(path: str | os.PathLike, device: str = "cpu"):
    """A MatterSim ``Potential`` from a checkpoint file, read with ``torch.load(weights_only=True)``.

    mattersim's ``Potential.from_checkpoint`` calls ``torch.load`` without ``weights_only``, so whether
    it may unpickle arbitrary objects depends on the torch version and ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
    This builds the same model (``M3Gnet(**model_args)``, ``load_state_dict(strict=False)``, eval mode,
    no training state) from a weights-only read.

    Raises
    ------
    PluginUnavailable
        When the file is not a weights-only M3GNet checkpoint.
    """
    import torch
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
    from mattersim.forcefield.potential import Potential

    try:
        ckpt = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:
        raise PluginUnavailable(
            f"MatterSim checkpoint {path} cannot be read as weights only ({type(exc).__name__}: {str(exc)[:300]})"
        ) from None
    if not (
        isinstance(ckpt, dict)
        and ckpt.get("model_name") == "m3gnet"
        and isinstance(ckpt.get("model"), dict)
        and isinstance(ckpt.get("model_args"), dict)
    ):
        raise PluginUnavailable(
            f"{path} is not a MatterSim M3GNet checkpoint (expected model_name 'm3gnet', model and model_args)"
        )
    args = {k: v for k, v in ckpt["model_args"].items() if k != "device"}
    model = M3Gnet(device=device, **args).to(device)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:  # mattersim loads with strict=False too; say what did not match
        log.warning(
            "MatterSim checkpoint %s: %d parameters missing, %d unexpected (%s)",
            path,
            len(missing),
            len(unexpected),
            ", ".join(list(missing)[:3] + list(unexpected)[:3]),
        )
    model.eval()
    return Potential(model, device=device, model_name="m3gnet")


_CALCULATOR_CLASS = None


def _calculator_class():
    """``MatterSimCalculator`` whose unpickling rebuilds the model from the pickled weights.

    mattersim's own ``__setstate__`` first loads (and if missing downloads, unverified) the 1M model
    through ``Potential.from_checkpoint`` and then overwrites its weights; a copy of a 5M calculator
    would even get the 1M architecture. This one needs neither the network nor another file. It is
    built on first use, so importing this module does not import mattersim.
    """
    global _CALCULATOR_CLASS
    if _CALCULATOR_CLASS is not None:
        return _CALCULATOR_CLASS
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
    from mattersim.forcefield.potential import MatterSimCalculator, Potential

    class Gen2dMatterSimCalculator(MatterSimCalculator):
        def __setstate__(self, state):
            weights_, args, name = (state.pop(k) for k in ("_model_state_dict", "_model_args", "_model_name"))
            self.__dict__.update(state)
            model = M3Gnet(device=self.device, **{k: v for k, v in args.items() if k != "device"}).to(self.device)
            model.load_state_dict(weights_)
            model.eval()
            self.potential = Potential(model, device=self.device, model_name=name)

    # pickle finds the class as gen2d_mattersim.Gen2dMatterSimCalculator (module __getattr__ below)
    Gen2dMatterSimCalculator.__module__ = __name__
    Gen2dMatterSimCalculator.__qualname__ = "Gen2dMatterSimCalculator"
    _CALCULATOR_CLASS = Gen2dMatterSimCalculator
    return _CALCULATOR_CLASS


def __getattr__(name: str):
    if name == "Gen2dMatterSimCalculator":
        return _calculator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_calculator(model: str | None = None, device: str = "auto", **kw: Any):
    """An ASE calculator for MatterSim on a verified checkpoint.

    Parameters
    ----------
    model : str, optional
        ``mattersim-v1.0.0-1M`` / ``-5M`` (from gen2d's model cache, downloaded at first use unless
        ``GEN2D_OFFLINE=1``) or a local checkpoint path; default: ``GEN2D_MATTERSIM_CHECKPOINT`` or
        the 1M model.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    **kw
        Passed to ``MatterSimCalculator``.
    """
    ok, why = available(model)
    if not ok:
        raise PluginUnavailable(why)
    import mattersim

    dev = device_name(device)
    path, sha256 = checkpoint(model)
    with contextlib.redirect_stdout(sys.stderr):  # stdout stays clean for `gen2d ... --json`
        potential = load_potential(path, dev)
        calc = _calculator_class()(potential=potential, device=dev, **kw)
    calc.gen2d_model = f"MatterSim {path.name} (mattersim {mattersim.__version__})"
    calc.gen2d_checkpoint_sha256 = sha256
    return calc


make_calculator.available = available
