#!/usr/bin/env python
"""Copy the README's status table into the documentation's front page (docs/index.md).

The README is the one place the measured status is written; the documentation shows the same table with its links
made relative to docs/. ``tests/test_docs.py`` fails when the two differ.

    .venv/bin/python scripts/sync_docs_status.py          # rewrite docs/index.md's table
    .venv/bin/python scripts/sync_docs_status.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status_table(markdown: str) -> str:
    """The first table after the ``## Status`` heading (its lines, header included)."""
    after = markdown.split("\n## Status\n", 1)
    if len(after) != 2:
        raise ValueError("no '## Status' section")
    lines = after[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def for_docs(table: str) -> str:
    """The README table with its links relative to docs/ (``docs/x.md`` -> ``x.md``)."""
    return re.sub(r"\]\(docs/", "](", table)


def synced(readme: str, index: str) -> str:
    """``index`` with its status table replaced by the README's."""
    return index.replace(status_table(index), for_docs(status_table(readme)), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when docs/index.md is out of date")
    args = ap.parse_args(argv)
    readme, index_path = (ROOT / "README.md").read_text(), ROOT / "docs" / "index.md"
    index = index_path.read_text()
    new = synced(readme, index)
    if new == index:
        print("docs/index.md status table is current")
        return 0
    if args.check:
        print("docs/index.md status table differs from README.md: run scripts/sync_docs_status.py")
        return 1
    index_path.write_text(new)
    print("docs/index.md status table rewritten from README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
