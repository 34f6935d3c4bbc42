#!/usr/bin/env bash
# Install gen2d into .venv (idempotent) and run the test suite. Called by .ci/run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
GEN2D_EXTRAS=${GEN2D_EXTRAS:-test,csllm,sevennet,mattersim} ./scripts/_install.sh
export GEN2D_DATA=${GEN2D_DATA:-$(cd "$root/.." && pwd)/shared/data}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
