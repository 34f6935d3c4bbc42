"""SevenNet calculator backend (entry point ``gen2d.calculators: sevennet``).

SevenNet ships SevenNet-0, -l3i5 and -MF-0 weights in its wheel; other models download at run time
and are reported unavailable when their file is absent.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from gen2d.scoring import PluginUnavailable, file_sha256

DEFAULT_MODEL = "7net-0"


def _checkpoint_path(model: str) -> str | None:
    """A local checkpoint for ``model`` (a file path or a pretrained name), or None."""
    if os.path.isfile(model):
        return model
    from sevenn.util import pretrained_name_to_path

    try:
        path = pretrained_name_to_path(model)
    except Exception:  # unknown name or a model whose weights would have to be downloaded
        return None
    return path if path and os.path.isfile(path) else None


def available(model: str | None = None) -> tuple[bool, str]:
    """(True, "") when sevenn imports and the model's weights are on disk."""
    try:
        import sevenn  # noqa: F401
    except ImportError as exc:
        return False, f"sevenn is not installed ({exc}); install the extra: pip install 'gen2d[sevennet]'"
    name = model or DEFAULT_MODEL
    if _checkpoint_path(name) is None:
        return False, f"SevenNet model {name!r} has no local checkpoint (weights cannot be downloaded here)"
    return True, ""


def make_calculator(model: str | None = None, device: str = "auto", **kw: Any):
    """An ASE calculator for SevenNet.

    Parameters
    ----------
    model : str, optional
        Pretrained name (``7net-0``, ``7net-l3i5``, ``7net-mf-0``) or a checkpoint path; default 7net-0.
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    **kw
        Passed to ``SevenNetCalculator`` (e.g. ``modal`` for multi-fidelity models).
    """
    name = model or DEFAULT_MODEL
    ok, why = available(name)
    if not ok:
        raise PluginUnavailable(why)
    import sevenn
    from sevenn.calculator import SevenNetCalculator

    ckpt = _checkpoint_path(name)
    with contextlib.redirect_stdout(sys.stderr):  # stdout stays clean for `gen2d ... --json`
        calc = SevenNetCalculator(model=ckpt, device=device, **kw)
    calc.gen2d_model = f"SevenNet {name} (sevenn {sevenn.__version__})"
    calc.gen2d_checkpoint_sha256 = file_sha256(ckpt)
    return calc


make_calculator.available = available
