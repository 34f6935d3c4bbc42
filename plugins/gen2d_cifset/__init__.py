"""Generator plugin ``cif-set``: structures from a folder of files, an ASE db or an MC2D JSON file.

It lets baseline sets (a folder of CIFs from another generator, a database dump) go through the same
scoring and ranking as generated candidates.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gen2d.data.readers import ReadOutcome, read_any
from gen2d.scoring import GeneratedStructure


class CifSetGenerator:
    """Reads ``path``; :meth:`outcomes` also gives the named rejections of unreadable inputs."""

    name = "cif-set"

    def __init__(self, path: str | Path | None = None, labels_csv: str | Path | None = None):
        self.path = Path(path) if path else None
        self.labels_csv = labels_csv

    def available(self) -> tuple[bool, str]:
        if self.path is None:
            return True, "needs a path (a folder, an ASE db or an MC2D JSON file)"
        if not self.path.exists():
            return False, f"{self.path} does not exist"
        return True, ""

    def outcomes(self) -> Iterator[ReadOutcome]:
        if self.path is None:
            raise ValueError("cif-set needs a path")
        yield from read_any(self.path, labels_csv=self.labels_csv)

    def generate(self, n: int | None = None, seed: int = 0, **params: Any) -> Iterator[GeneratedStructure]:
        count = 0
        for outcome in self.outcomes():
            if outcome.record is None:
                continue
            rec = outcome.record
            yield GeneratedStructure(
                structure=rec.structure, source_id=rec.source_id, parameters={"path": str(self.path)}, labels=rec.labels
            )
            count += 1
            if n and count >= n:
                return
