"""The documentation's front page shows the README's status table, with links relative to docs/."""

from __future__ import annotations

from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_docs_front_page_status_is_the_readmes():
    sync = load_script("sync_docs_status")
    readme, index = (ROOT / "README.md").read_text(), (ROOT / "docs" / "index.md").read_text()
    table = sync.status_table(readme)
    assert table.startswith("| part | measured | state |") and table.count("\n") >= 10
    assert sync.status_table(index) == sync.for_docs(table), "run scripts/sync_docs_status.py"
    # the link rewrite only strips the docs/ prefix
    assert sync.for_docs("[a](docs/scorers/x.md) [b](CHANGELOG.md)") == "[a](scorers/x.md) [b](CHANGELOG.md)"
