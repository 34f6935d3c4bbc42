#!/usr/bin/env bash
# The DFT reference build's queue, as two chains of one CP2K process each (one core each, niced), so that a new
# machine resumes it with one command. Every part is cached in dft-runs/reference: a rerun goes on from the last
# frame and wavefunction. Run from the repository root:
#
#   nohup setsid bash dft-runs/queue.sh A > chainA.log 2>&1 &
#   nohup setsid bash dft-runs/queue.sh B > chainB.log 2>&1 &
#
# Stop a chain with `kill -- -<its process group>`; never stash or check out files under a running run directory.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 GEN2D_DATA=${GEN2D_DATA:-$(cd .. && pwd)/shared/data}
build() { nice -n 10 .venv/bin/python scripts/build_dgh_dft_reference.py --n-sites 1 --workdir dft-runs/reference --fold-k "$@"; }
# Two passes: the second finds every finished row stored (seconds each) and tries a stored failure again, which a
# rule or SCF rung added while the first pass ran may now rescue (a failure the current rules keep returns at once).
for pass in 1 2; do
case "${1:-}" in
  A)  # the MXene "site 1" literature rows (their own hollow sites). Ti2CO2 and Sc2CO2 last: Ti2CO2's first slab+H SCF
      # is slow, and Sc2CO2+H's SCF sloshes (residual 1e-3 to 5e-3 after 130 steps even at 1500 K)
    for m in Nb2CF2-site1 Zr2CF2-site1 Hf2NF2-site1 Nb2NF2-site1 Sc2NF2-site1 V2NF2-site1 Ti2CO2-site1 Sc2CO2-site1; do
      echo "== $m pass $pass $(date -u +%FT%TZ)"; build --materials "$m"
    done ;;
  B)  # well-studied basal planes, top sites; 1T′-MoS₂ for a like-for-like 1T-MoS₂ literature comparison
    for m in MoSe2-2H WSe2-2H PtSe2-1T SnS2-1T phosphorene MoS2-1Tprime; do
      echo "== $m pass $pass $(date -u +%FT%TZ)"; build --materials "$m" --site-kinds ontop
    done ;;
  *) echo "usage: $0 A|B" >&2; exit 2 ;;
esac
done
echo "== chain $1 done $(date -u +%FT%TZ)"
