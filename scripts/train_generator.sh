#!/usr/bin/env bash
# Train the EGNN diffusion generator for a wall-clock budget; writes OUT/checkpoint.pt, OUT/summary.json,
# OUT/train_log.jsonl and OUT/MANIFEST.json (command, date, git commit, device, data sources with sha256
# and record counts, steps, final losses, wall and CPU time).
#   scripts/train_generator.sh BUDGET_MINUTES OUT [extra gen2d train args, e.g. --device cuda -o hidden=256]
# Data: every strictly valid monolayer of the 2DMatPedia db, MC2D, paddle2d and the 2DMatPedia POSCAR
# tarball under $GEN2D_DATA (GEN2D_TRAIN_SOURCES overrides the list), deduplicated by content hash, with
# 5 % of the reduced formulas held out for validation. The budget counts from the start of training,
# data reading included (the first read of the tarball takes about 15 CPU minutes; it is cached in
# $GEN2D_CACHE/training_sources). A fresh run that makes no training step within the budget exits 3 without
# a MANIFEST or checkpoint (the data is cached by then: run it again). An OUT that holds a checkpoint is resumed.
# A GPU needs a CUDA build of torch: the checkout's .venv holds the CPU build, so point GEN2D_PYTHON at an
# environment with CUDA torch and pass --device cuda, which fails loudly where there is no GPU (auto would
# quietly train on the CPU).
# Device: auto (CUDA when present). On CUDA: bf16 (else fp16) autocast, batch size from free GPU memory,
# DataLoader workers from the free cores; on CPU: float32, batch 32, one thread.
# Installs nothing: uses the checkout's .venv (GEN2D_PYTHON overrides the interpreter).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: $0 BUDGET_MINUTES OUT [extra gen2d train args]" >&2
  exit 2
fi
BUDGET="$1"
OUT="$2"
shift 2
PY="${GEN2D_PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "no Python at $PY: create the checkout's .venv (README) or set GEN2D_PYTHON" >&2
  exit 2
fi
export GEN2D_DATA="${GEN2D_DATA:-$(cd "$ROOT/.." && pwd)/shared/data}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export GEN2D_ROOT="$ROOT"
export GEN2D_TRAIN_SOURCES="${GEN2D_TRAIN_SOURCES:-[2dmatpedia_filtered.db, mc2d_258_exfoliable.json, paddle2d, 2dmatpedia_all_poscars.tgz]}"
mkdir -p "$OUT"
exec "$PY" - "$BUDGET" "$OUT" "$@" <<'PY'
"""Run `gen2d train --generator egnn-diffusion` as a child and write OUT/MANIFEST.json from its summary."""
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from gen2d.scoring import file_sha256

budget, out, extra = float(sys.argv[1]), Path(sys.argv[2]).resolve(), sys.argv[3:]
root = Path(os.environ["GEN2D_ROOT"])
sources = os.environ["GEN2D_TRAIN_SOURCES"]
resumed = (out / "checkpoint.pt").exists()
cmd = [
    sys.executable, "-c", "from gen2d.cli import app; app(prog_name='gen2d')",
    "train", "--generator", "egnn-diffusion", "--config", str(root / "configs" / "egnn.yaml"),
    "-o", f"out_dir={out}",
    "-o", f"max_minutes={budget}",
    "-o", "max_cpu_minutes=null",  # the wall budget is the only stop (besides max_steps)
    "-o", "max_steps=1000000000",
    "-o", f"sources={sources}",
    "-o", "strict_valid_only=true",
    "-o", "holdout_formulas_fraction=0.05",
    "-o", "batch_size=auto",
    "-o", "amp=auto",
    "-o", "num_workers=auto",
    "-o", "resume=true",
    "-o", "progress=false",
    "--json",
    *extra,  # later options win
]
started = datetime.now(UTC)
t0 = time.monotonic()
proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=root)
wall = time.monotonic() - t0
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
try:
    summary = json.loads(proc.stdout)
except json.JSONDecodeError:
    summary = {"error": proc.stdout[-2000:]}
if proc.returncode != 0 or "error" in summary:
    sys.stderr.write(f"training failed (exit {proc.returncode}): {summary.get('error')}\n")
    sys.exit(proc.returncode or 1)
if not resumed and not summary.get("steps"):
    # the budget went to reading the data (the first read of the POSCAR tarball alone is about 15 CPU minutes):
    # an untrained checkpoint is no result, and the sources are cached now, so the next run starts training at once;
    # the step-0 checkpoint goes too, or the next run would take it for a resume (and, with no step again, write a
    # MANIFEST of an untrained model)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    sys.stderr.write(
        f"no training step within {budget:g} min ({wall:.0f} s went to reading and checking the data, now cached "
        f"under $GEN2D_CACHE/training_sources); run the same command again; no MANIFEST or checkpoint kept\n"
    )
    sys.exit(3)


def git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


ckpt = Path(summary["checkpoint"])
manifest = {
    "what": "EGNN diffusion generator (gen2d.diffusion.train) trained for a wall-clock budget",
    "command": shlex.join(["scripts/train_generator.sh", sys.argv[1], sys.argv[2], *extra]),
    "train_command": shlex.join(cmd),
    "date": started.isoformat(),
    "finished": datetime.now(UTC).isoformat(),
    "git_commit": git("rev-parse", "HEAD"),
    "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    "host": platform.node(),
    "python": platform.python_version(),
    "device": summary.get("runtime", {}),
    "data_dir": os.environ["GEN2D_DATA"],
    "sources": summary.get("sources", {}),
    "n_train": summary.get("n_train"),
    "n_val": summary.get("n_val"),
    "dropped": summary.get("dropped"),
    "resumed": resumed,
    "steps": summary.get("steps"),
    "final_train_losses": summary.get("final_train"),
    "val_denoising": summary.get("val"),
    "budget_minutes": budget,
    "wall_seconds": round(wall, 2),
    "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
    "train_seconds_total": summary.get("train_seconds"),
    "checkpoint": {"path": str(ckpt), "sha256": file_sha256(ckpt)},
    "units": {
        "losses": "mean squared noise-prediction error, normalised so predicting zero noise scores 1.0 "
        "(gen2d.diffusion.loss.diffusion_loss); heads: dg_h L1 (eV), e_hull squared ((eV/atom)^2), synth BCE",
        "wall_seconds": "s, this invocation (data reading, training, validation, checkpoint)",
        "cpu_seconds": "s, user + system CPU time of the training process",
        "train_seconds_total": "s, training-loop wall time summed over every resumed run",
    },
}
(out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
print(json.dumps({"manifest": str(out / "MANIFEST.json"), "steps": manifest["steps"], "device": manifest["device"]}))
PY
