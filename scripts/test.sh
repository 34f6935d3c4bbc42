#!/usr/bin/env bash
# Install gen2d into .venv (idempotent), build the docs strictly, and run the test suite. Called by .ci/run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export GEN2D_EXTRAS=${GEN2D_EXTRAS:-test,docs,csllm,sevennet,mattersim}
./scripts/_install.sh
./scripts/_system_packages.sh   # CP2K for the DFT tests (apt-get where missing and possible)
export GEN2D_DATA=${GEN2D_DATA:-$(cd "$root/.." && pwd)/shared/data}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# a broken page, link or docstring reference fails the test command; the site goes to the ignored site/.
# Not -q: mkdocs counts a warning for --strict only when it is logged, and -q drops warnings before that.
if [ -x .venv/bin/mkdocs ]; then
  if ! docs_log=$(NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict -d "$root/site" 2>&1); then
    printf '%s\n' "$docs_log" | grep -v "^INFO" >&2 || true
    echo "test.sh: mkdocs build --strict failed (the warnings above)" >&2
    exit 1
  fi
else
  echo "test.sh: mkdocs is not installed (GEN2D_EXTRAS=$GEN2D_EXTRAS has no docs): docs build skipped" >&2
fi
# lint and format (ruff, configured in pyproject.toml)
.venv/bin/ruff check --quiet src plugins scripts tests
.venv/bin/ruff format --check --quiet src plugins scripts tests
# the tests run single-threaded (tests/conftest.py), so one worker per core, at most 4 (each loads its own MLIPs);
# a file's tests stay in one worker, in order, sharing its fixtures. GEN2D_TEST_WORKERS=0 runs them in this process.
cores=$(nproc 2>/dev/null || echo 1)
workers=${GEN2D_TEST_WORKERS:-$((cores < 4 ? cores : 4))}
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile "$@"
