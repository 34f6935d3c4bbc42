"""The embedded (montydb) store, opened under one file lock by every process."""

from __future__ import annotations

from pathlib import Path

from maggma.stores import MontyStore

from gen2d.store import monty_lock


class LockedMontyStore(MontyStore):
    """maggma's ``MontyStore`` whose ``connect`` holds :func:`gen2d.store.monty_lock`.

    ``MontyStore.connect`` rewrites montydb's storage config files (``set_storage`` opens them for writing)
    every time it connects. A process reading them while another connects can find them empty and fail with
    ``ValueError: Empty module name``. The candidate store and the jobflow job store both open the embedded
    database, in a FireWorks worker and in whoever queries it at the same time, so both connect under the lock.
    """

    def connect(self, force_reset: bool = False):
        Path(self.database_path).mkdir(parents=True, exist_ok=True)
        with monty_lock(self.database_path):
            super().connect(force_reset=force_reset)
