"""Fine-tuned MLIP checkpoints: where a calculator plugin's file is, and reading it without pickle.

The fine-tuned calculators (``chgnet-her``, ``sevennet-her``) each describe their checkpoint with one
:class:`FineTunedCheckpoint`: the file name inside a model folder, the shipped asset folder, the format tag every
file they write carries, and the keys it must hold. Reading goes through ``torch.load(weights_only=True)`` and
checks the tag, so a file of another plugin or an arbitrary pickle is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gen2d.scoring import PluginUnavailable


class CheckpointUnavailable(PluginUnavailable):
    """No usable fine-tuned checkpoint: missing, unreadable, or not written by the plugin that reads it."""


@dataclass(frozen=True)
class FineTunedCheckpoint:
    """One fine-tuned calculator's checkpoint files.

    Parameters
    ----------
    what : str
        The base network's name in messages ("CHGNet").
    calculator : str
        The calculator's entry-point name ("chgnet-her"), for the command that makes a checkpoint.
    file_name : str
        The checkpoint's file name inside a model folder.
    format : str
        The tag stored in every checkpoint the plugin writes.
    asset : str
        The folder under ``gen2d/assets`` that holds the shipped checkpoint and its MANIFEST.
    required : tuple of str
        Keys a checkpoint must hold besides ``format``.
    error : type
        The exception raised for an unusable checkpoint: the plugin's own subclass of
        :class:`CheckpointUnavailable`.
    """

    what: str
    calculator: str
    file_name: str
    format: str
    asset: str
    required: tuple[str, ...]
    error: type[CheckpointUnavailable] = CheckpointUnavailable

    def default_dir(self) -> Path:
        """``gen2d/assets/<asset>``: the shipped checkpoint, its MANIFEST.json and what was measured with it."""
        import gen2d

        return Path(gen2d.__file__).resolve().parent / "assets" / self.asset

    def path(self, model: str | None = None) -> Path:
        """The checkpoint file for ``model``: a file, a folder holding :attr:`file_name`, or None (the shipped one)."""
        path = Path(model).expanduser() if model else self.default_dir()
        return path / self.file_name if path.is_dir() or not path.suffix else path

    def missing(self, path: Path) -> str:
        """Why ``path`` cannot be used when it does not exist, with the command that makes a checkpoint."""
        return (
            f"no fine-tuned {self.what} checkpoint at {path}; make one with "
            f"`gen2d train --calculator {self.calculator} -o frames=DFT_RUNS -o out=DIR` and pass model=DIR"
        )

    def available(self, model: str | None, package: str, install: str) -> tuple[bool, str]:
        """(True, "") when ``package`` (the base network's library) imports and the checkpoint of ``model``
        exists; otherwise False and why, with ``install`` (how to get the package) or the command that makes a
        checkpoint."""
        import importlib

        try:
            importlib.import_module(package)
        except ImportError as exc:
            return False, f"{package} is not installed ({exc}); {install}"
        path = self.path(model)
        if not path.is_file():
            return False, self.missing(path)
        return True, ""

    def load(self, path: str | Path) -> dict[str, Any]:
        """The checkpoint dict, read with ``weights_only=True``.

        Raises
        ------
        CheckpointUnavailable
            (:attr:`error`) when the file is missing, cannot be read as a weights-only checkpoint, or is not
            this plugin's (another format tag, or a required key absent).
        """
        import torch

        path = Path(path)
        if not path.is_file():
            raise self.error(self.missing(path))
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise self.error(f"{path} is not a weights-only torch checkpoint: {type(exc).__name__}: {exc}") from exc
        if (
            not isinstance(state, dict)
            or state.get("format") != self.format
            or any(k not in state for k in self.required)
        ):
            raise self.error(f"{path} is not a {self.format} checkpoint")
        return state


__all__ = ["CheckpointUnavailable", "FineTunedCheckpoint"]
