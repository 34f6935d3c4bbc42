#!/usr/bin/env bash
# Install gen2d into .venv (idempotent) and run the main job: the discover flow (workflows/quickstart.yaml)
# on the embedded store ./gen2d-data, with the shipped models and the offline scorers. Prints the
# top candidates and where the report is. A rerun reuses what is stored and redoes no finished score.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
GEN2D_EXTRAS=${GEN2D_EXTRAS:-test,sevennet} ./scripts/_install.sh
export GEN2D_STORE=${GEN2D_STORE:-monty://$root/gen2d-data}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$(date +%s)
.venv/bin/gen2d run workflows/quickstart.yaml
.venv/bin/gen2d top --set quickstart --k 10
echo "wall time: $(( $(date +%s) - start )) s; store: $GEN2D_STORE; report: $root/gen2d-report/index.html"
