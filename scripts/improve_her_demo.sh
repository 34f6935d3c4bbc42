#!/usr/bin/env bash
# One improve-her iteration with small settings, on the quickstart's set (run ./scripts/quickstart.sh first):
# 2 candidates, a minimal CP2K setting (SZV basis, 150 Ry, 2x2 cells: the plumbing, not publishable DFT),
# 3 fine-tuning epochs, a 2-member surrogate on 6 relabelled monolayers. Writes OUT/improve-her.json and
# prints the wall and CPU time. Usage: scripts/improve_her_demo.sh [OUT]   (default /tmp/gen2d-improve-demo)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/gen2d-improve-demo}
export GEN2D_STORE=${GEN2D_STORE:-monty://$root/gen2d-data}
export GEN2D_DATA=${GEN2D_DATA:-$(cd "$root/.." && pwd)/shared/data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cp2k='{cutoff_ry: 150, rel_cutoff_ry: 25, basis_set: SZV-MOLOPT-SR-GTH, dispersion: null, eps_scf: 1.0e-4, added_mos: 8, electronic_temperature_k: 1000, mixing_alpha: 0.4, dipole_correction: false}'
start=$(date +%s)
TIMEFORMAT='improve-her demo: %R s wall, %U s user CPU, %S s system CPU (with its CP2K processes)'
time "$root/.venv/bin/gen2d" run "$root/workflows/improve-her.yaml" \
  -s set=quickstart -s improve.k=2 -s "improve.workdir=$out" \
  -s "improve.dft={threads: 1, n_sites: 1, prerelax: chgnet, cp2k: $cp2k, min_inplane_length: 4.9, free_radius: 2.5, steps: 15, fmax: 0.2, vacuum: 8.0, h2_box: 7.0, max_sites_per_face: 1}" \
  -s "improve.finetune={epochs: 3}" \
  -s "improve.surrogate_train={n: 6, epochs: 10, n_models: 2, mlip: {max_sites_per_face: 1, steps: 50, fmax: 0.15, slab_fmax: 0.15, slab_steps: 80}}"
echo "report: $out/improve-her.json ($(( $(date +%s) - start )) s)"
