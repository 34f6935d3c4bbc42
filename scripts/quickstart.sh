#!/usr/bin/env bash
# Install gen2d into .venv (idempotent) and run the main job on the embedded store (./gen2d-data).
# Today the main job ingests the built-in template library and prints the candidate table; it grows
# into the whole discover flow (generate -> score -> rank -> report) as those parts land.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
GEN2D_EXTRAS=${GEN2D_EXTRAS:-test} ./scripts/_install.sh
export GEN2D_STORE=${GEN2D_STORE:-monty://$root/gen2d-data}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/gen2d ingest builtin:templates --set templates
.venv/bin/gen2d top --set templates --k 100
echo "store: $GEN2D_STORE  (try: .venv/bin/gen2d show <id>, .venv/bin/gen2d plugins)"
