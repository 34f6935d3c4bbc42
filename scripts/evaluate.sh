#!/usr/bin/env bash
# The committed evaluation run (README "Evaluation"): every arm of workflows/evaluate.yaml at an equal
# generation CPU budget, niced, one thread per process, the MLIP reference cache kept in $GEN2D_CACHE.
#   scripts/evaluate.sh [OUT_DIR] [extra gen2d evaluate options, e.g. -s seeds=[0,1,2,3,4]]
# Writes OUT_DIR/evaluate.json (every metric with its description and unit), OUT_DIR/results.md and the
# plots OUT_DIR/*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-evaluate-out}"
shift || true
export GEN2D_DATA="${GEN2D_DATA:-$(cd .. && pwd)/shared/data}"
export GEN2D_CACHE="${GEN2D_CACHE:-$HOME/.cache/gen2d}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec nice -n 10 .venv/bin/gen2d evaluate workflows/evaluate.yaml --out "$OUT" "$@"
