"""Atomic file writes: write beside the target, then rename over it.

A crash, a kill or a full disk mid-write leaves either the old file or the new one, never half of one.
The temporary name carries the process id, so two processes writing the same file never share a
temporary; the last rename wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``, on an error it is removed.

    For writers that want a file name (``ase.io.write``, ``gzip.open``, ``torch.save``)::

        with atomic_path(out) as tmp:
            ase.io.write(tmp, frames, format="extxyz")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, doc: Any, **dumps: Any) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically (``dumps`` go to :func:`json.dumps`); returns the path."""
    return write_text_atomic(path, json.dumps(doc, **dumps))


def write_jsonl_atomic(path: str | os.PathLike, docs: Any, **dumps: Any) -> Path:
    """Write one JSON document per line to ``path`` atomically; returns the path."""
    return write_text_atomic(path, "".join(json.dumps(d, **dumps) + "\n" for d in docs))
