"""Write the reference samples of the shipped (Gaussian-type) checkpoint that the back-compatibility test
compares against: run with the code of the commit named in the file, before the absorbing-state types.

    cd /work/main && PYTHONPATH=src:plugins python /path/to/tests/diffusion/make_gaussian_reference.py OUT.json
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

#: (name, SamplingConfig fields, n_atoms, seed): unguided with both priors, and guided (cfg + gradient) in a
#: restricted chemical space, so every Gaussian type path of the sampler is pinned
CASES = [
    ("priors", {"n_steps": 10}, [3, 4, 5], 0),
    ("guided_space", {"n_steps": 10, "cfg_weight": 2.0, "eta": 0.05, "elements": ["Mo", "W", "S", "Se"]}, [3, 6], 1),
]


def reference_samples(checkpoint: str | Path) -> dict:
    from gen2d.diffusion.sampler import SamplingConfig, sample
    from gen2d.diffusion.train import load_checkpoint

    torch.set_num_threads(1)
    bundle, _ = load_checkpoint(checkpoint, "cpu")
    out = {}
    for name, fields, n_atoms, seed in CASES:
        smp = sample(bundle, len(n_atoms), seed=seed, config=SamplingConfig(**fields), device="cpu", n_atoms=n_atoms)
        out[name] = [
            {
                "species": s.species,
                "frac": s.frac.tolist(),
                "z": s.z.tolist(),
                "lattice2d": s.lattice2d.tolist(),
                "predicted": s.predicted,
            }
            for s in smp
        ]
    return out


def main(argv: list[str]) -> int:
    import gen2d
    from gen2d.scoring import file_sha256

    root = Path(gen2d.__file__).resolve().parents[2]
    ckpt = root / "src" / "gen2d" / "assets" / "egnn" / "egnn_diffusion.pt"
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    body = {
        "description": "samples of the shipped egnn checkpoint (Gaussian one-hot types) drawn by the sampler of "
        "`commit`, before absorbing-state types existed; units: frac fractional, z Å (centred), lattice2d Å, "
        "predicted dg_h eV, e_hull eV/atom, p_synth probability",
        "command": "PYTHONPATH=src:plugins python tests/diffusion/make_gaussian_reference.py " + " ".join(argv),
        "commit": commit,
        "checkpoint_sha256": file_sha256(ckpt),
        "torch": torch.__version__,
        "cases": {name: {"config": f, "n_atoms": n, "seed": s} for name, f, n, s in CASES},
        "samples": reference_samples(ckpt),
    }
    Path(argv[0]).write_text(json.dumps(body, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
