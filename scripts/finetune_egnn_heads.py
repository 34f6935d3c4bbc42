#!/usr/bin/env python
"""Give the EGNN's ΔG_H head its labels: score the generator's training monolayers with the dgh.dimenet
surrogate, then train only the property heads (the denoiser stays frozen, so unguided samples do not change).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/finetune_egnn_heads.py \\
        --checkpoint src/gen2d/assets/egnn/egnn_diffusion.pt --out /tmp/egnn_heads.pt --labels-out dgh_labels.json

``--ship DIR`` copies the result over DIR/egnn_diffusion.pt and records the step in DIR/MANIFEST.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--labels-out", required=True, help="JSON {source:source_id: ΔG_H eV} written here")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ship", default=None)
    args = p.parse_args(argv)

    from gen2d_dgh_dimenet import DimeNetDGHScorer

    from gen2d.diffusion.train import TrainConfig, finetune_heads, load_checkpoint, load_training_set
    from gen2d.scoring import file_sha256

    bundle, payload = load_checkpoint(args.checkpoint, "cpu")
    cfg = TrainConfig(**{**payload["meta"]["config"], "progress": False, "dg_h_labels": None})
    records, _ = load_training_set(cfg)
    surrogate = DimeNetDGHScorer(device="cpu")
    t0 = time.process_time()
    results = surrogate.score([r.to_structure() for r in records])
    labels = {f"{r.source}:{r.source_id}": float(res.value) for r, res in zip(records, results) if res.ok}
    failed = sum(1 for res in results if not res.ok)
    Path(args.labels_out).write_text(json.dumps(labels, indent=0))
    print(
        f"surrogate ΔG_H for {len(labels)} of {len(records)} training monolayers ({failed} refused) in "
        f"{time.process_time() - t0:.0f} CPU-s; sha256 of the ensemble {surrogate.provenance().checkpoint_sha256}"
    )
    summary = finetune_heads(
        args.checkpoint, args.out, cfg.model_copy(update={"dg_h_labels": args.labels_out}), steps=args.steps, lr=args.lr
    )
    summary["label_source"] = {
        "scorer": "dgh.dimenet",
        "checkpoint_sha256": surrogate.provenance().checkpoint_sha256,
        "n_labels": len(labels),
    }
    print(json.dumps(summary, indent=1))
    if args.ship:
        dst = Path(args.ship)
        shutil.copy(args.out, dst / "egnn_diffusion.pt")
        manifest = json.loads((dst / "MANIFEST.json").read_text())
        manifest["sha256"] = file_sha256(dst / "egnn_diffusion.pt")
        manifest["size_bytes"] = (dst / "egnn_diffusion.pt").stat().st_size
        manifest["heads_finetuned"] = {**summary, "command": "scripts/finetune_egnn_heads.py " + " ".join(sys.argv[1:])}
        (dst / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        print(f"shipped to {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
