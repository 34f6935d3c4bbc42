#!/usr/bin/env python
"""Would a batched SevenNet evaluation speed up lockstep relaxations on CPU? Serial calls against one batch.

The lockstep FIRE driver (:mod:`gen2d.relax`) evaluates all running structures in one model call when the
calculator carries ``gen2d_evaluate_batch``; CHGNet has one, SevenNet does not. This measures what a SevenNet
batch would give: ``n`` rattled 2H-MoS₂ cells of each size, energy, forces and stress, evaluated one by one through
``SevenNetCalculator`` and together as one ``torch_geometric`` batch of the same model (``set_is_batch_data``), in
process CPU seconds on one thread. It also checks that the batch gives the serial energies.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_sevennet_batch.py --repeats 1,2,3 --n 16
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="7net-0")
    ap.add_argument("--repeats", default="1,2,3", help="in-plane supercells of the 3-atom 2H-MoS2 cell")
    ap.add_argument("--n", type=int, default=16, help="structures per batch")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from ase.build import mx2

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph
    from torch_geometric.data import Batch

    from gen2d.relax import cached_calculator

    calc = cached_calculator("sevennet", model=args.model, device="cpu")
    model = calc.model
    print(f"{calc.gen2d_model}; {args.n} structures per batch; process CPU seconds, one thread")
    print(f"{'atoms':>6s} {'serial':>9s} {'batched':>9s} {'speed-up':>9s} {'max |dE| (eV)':>14s}")
    for r in (int(x) for x in args.repeats.split(",")):
        cells = []
        for k in range(args.n):
            a = mx2("MoS2", a=3.18, vacuum=7.5).repeat((r, r, 1))
            a.pbc = True
            a.rattle(0.05, seed=k)
            cells.append(a)
        serial_e = []
        calc.calculate(cells[0].copy(), ["energy", "forces", "stress"])  # warm-up
        t0 = time.process_time()
        for a in cells:
            calc.calculate(a.copy(), ["energy", "forces", "stress"])
            serial_e.append(float(calc.results["energy"]))
        t_serial = time.process_time() - t0
        t0 = time.process_time()
        data = [
            AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(a, calc.cutoff, with_shift=False)) for a in cells
        ]
        model.set_is_batch_data(True)
        try:
            out = model(Batch.from_data_list(data))
        finally:
            model.set_is_batch_data(False)
        batch_e = out["inferred_total_energy"].detach().numpy()
        t_batch = time.process_time() - t0
        diff = float(np.max(np.abs(batch_e - np.array(serial_e))))
        print(f"{len(cells[0]):6d} {t_serial:9.2f} {t_batch:9.2f} {t_serial / t_batch:8.2f}x {diff:14.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
