"""Named failures of the hull code: :class:`HullError` (entries, hull) and :class:`ReferenceUnavailable`."""

from __future__ import annotations

from gen2d.scoring import PluginUnavailable


class HullError(Exception):
    """A named failure while building entries or the hull (``reason`` is snake_case)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class ReferenceUnavailable(PluginUnavailable):
    """A reference provider cannot deliver (no key, no network, no file); ``reason`` names it."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
