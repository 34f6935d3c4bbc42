"""Atomic file writes: write beside the target, then rename over it; and JSON-lines journals that survive a kill.

A crash, a kill or a full disk mid-write leaves either the old file or the new one, never half of one.
The temporary name carries the process id, so two processes writing the same file never share a
temporary; the last rename wins.

Append-only JSON-lines files (benchmark records, label caches, run journals) cannot be written atomically line by
line: a kill can cut the last line. :func:`read_jsonl` skips such a line (its item is computed again) and
:func:`append_jsonl` / :func:`end_torn_line` end it before the next line is appended, so the new line parses.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


class JsonlCorrupt(ValueError):
    """A JSON-lines file that was written whole (atomically) has a line that does not parse."""


def read_jsonl(path: str | os.PathLike, *, strict: bool = False) -> list[Any]:
    """The JSON documents of ``path``, one per line, in order; ``[]`` when the file does not exist.

    Blank lines are skipped. A line that does not parse is, in an append-only journal (``strict=False``), a write
    cut by a kill: it is skipped with a warning naming its line, so its item is computed again. In a file written
    whole (``strict=True``) it is damage, and raises :class:`JsonlCorrupt` instead of dropping a stored row.
    """
    target = Path(path)
    if not target.is_file():
        return []
    docs: list[Any] = []
    for number, line in enumerate(target.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            docs.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if strict:
                raise JsonlCorrupt(f"{target}: line {number} is not JSON ({exc.msg})") from exc
            log.warning("%s: line %d is not JSON (a write cut by a kill?); skipped", target, number)
    return docs


def end_torn_line(path: str | os.PathLike) -> None:
    """End ``path`` with a newline if its last line was cut (a kill mid-append), so that the next appended line
    starts on its own line instead of continuing the cut one."""
    target = Path(path)
    try:
        with target.open("rb+") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
    except FileNotFoundError:
        return


def append_jsonl(path: str | os.PathLike, doc: Any, **dumps: Any) -> None:
    """Append ``doc`` to ``path`` as one JSON line, flushed (after :func:`end_torn_line`)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    end_torn_line(target)
    with target.open("a") as fh:
        fh.write(json.dumps(doc, **dumps) + "\n")
        fh.flush()
