"""CHGNet calculator backend (entry point ``gen2d.calculators: chgnet``).

CHGNet ships its pretrained weights inside its wheel, so this is the offline default MLIP.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from gen2d.scoring import PluginUnavailable, device_name, file_sha256

DEFAULT_MODEL = "0.3.0"


def _checkpoint_path(model: str) -> Path | None:
    """The weight file CHGNet.load reads for a named model (it lives in the chgnet wheel)."""
    import chgnet

    folder = Path(chgnet.__file__).parent / "pretrained" / model
    files = sorted(folder.glob("*.pth.tar"))
    return files[0] if files else None


def available(model: str | None = None) -> tuple[bool, str]:
    """(True, "") when chgnet imports and the model's weights are in the wheel."""
    try:
        import chgnet  # noqa: F401
    except ImportError as exc:
        return False, f"chgnet is not installed ({exc}); pip install chgnet"
    name = model or DEFAULT_MODEL
    if _checkpoint_path(name) is None:
        return False, f"CHGNet {name} weights not found in the chgnet package"
    return True, ""


def make_calculator(model: str | None = None, device: str = "auto", **kw: Any):
    """An ASE calculator for CHGNet.

    Parameters
    ----------
    model : str, optional
        CHGNet model name shipped in the wheel (``0.3.0``, ``0.2.0``, ``r2scan``); default 0.3.0.
    device : str
        ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.
    **kw
        Passed to ``CHGNetCalculator`` (e.g. ``on_isolated_atoms``).

    Returns
    -------
    chgnet.model.dynamics.CHGNetCalculator
        With ``gen2d_model`` and ``gen2d_checkpoint_sha256`` attributes for provenance.
    """
    ok, why = available(model)
    if not ok:
        raise PluginUnavailable(why)
    import chgnet
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    name = model or DEFAULT_MODEL
    dev = device_name(device)
    # CHGNet prints its banner to stdout; keep stdout clean for `gen2d ... --json`.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            net = CHGNet.load(model_name=name, use_device=dev, verbose=False)
        except ValueError as exc:
            raise PluginUnavailable(f"unknown CHGNet model {name!r}: {exc}") from exc
        calc = CHGNetCalculator(model=net, use_device=dev, **kw)
    ckpt = _checkpoint_path(name)
    calc.gen2d_evaluate_batch = BatchEvaluator(calc)
    calc.gen2d_model = f"CHGNet {net.version} (chgnet {chgnet.__version__})"
    calc.gen2d_checkpoint_sha256 = file_sha256(ckpt) if ckpt else None
    # the energy scale the model learned: MP2020's corrections (the E_hull scorers) are fitted to PBE(+U) only
    calc.gen2d_functional = "r2SCAN" if name == "r2scan" else "PBE"
    return calc


make_calculator.available = available


# Unit factor CHGNet's ``_compute`` applies to d(E)/d(strain) / V (eV/Å^3 -> GPa); the calculator then
# multiplies by its ``stress_weight`` (GPa -> eV/Å^3). Both are reproduced literally below.
_CHGNET_EV_A3_TO_GPA = 160.21766208


#: Transient memory of one batched CHGNet evaluation (energy, forces, stress) on CPU, per three-body angle and per
#: bond of its graphs, in bytes: a least-squares fit of ``scripts/bench_mlip_batch_memory.py`` (fcc Cu cells at two
#: densities, batches of 1 to 16). A 32-structure batch of reference phases reached 7 GB before batches were capped.
BYTES_PER_ANGLE = 25_000
BYTES_PER_BOND = 16_000


def graph_bytes(graph: Any) -> int:
    """Estimated transient memory (bytes) of a CHGNet ``CrystalGraph`` in a batched evaluation."""
    return BYTES_PER_ANGLE * int(graph.bond_graph.shape[0]) + BYTES_PER_BOND * int(graph.atom_graph.shape[0])


def memory_chunks(sizes: list[int], budget: float) -> list[list[int]]:
    """Consecutive indices of ``sizes`` grouped so that each group's sum stays within ``budget``; an item larger
    than the budget goes alone."""
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        if current and total + size > budget:
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    if current:
        chunks.append(current)
    return chunks


class BatchEvaluator:
    """Energy, forces and stress of many structures in one batched CHGNet call (``gen2d_evaluate_batch``).

    Returns, per structure, the ``results`` :class:`chgnet.model.dynamics.CHGNetCalculator` would set
    (energy and free_energy in eV, forces in eV/Å, 3x3 stress in eV/Å^3 with ASE's sign), or the
    exception that structure raised. It runs what ``CHGNet.forward(task="efs")`` runs (composition
    model, ``BatchedGraph`` with strains, ``_compute``), except that forces and stress come from one
    first-order ``autograd.grad`` of the summed energy over positions and strains together, instead of
    two ``create_graph=True`` passes that only training needs: the same derivatives for less work.

    A structure whose graph cannot be built fails alone; when the batched forward raises or returns
    non-finite numbers, the structures concerned are evaluated one by one so that one bad structure
    never takes the batch down. :meth:`verified` compares it once with the calculator itself.
    """

    def __init__(self, calc: Any, memory_budget_gb: float | None = None):
        self.calc = calc
        self._verified: bool | None = None
        # None: the ``mlip_batch_memory_gb`` setting at each call
        self.memory_budget_gb = memory_budget_gb
        self.n_forwards = 0  # batched forwards run (a batch over the budget takes several)

    # evaluation ------------------------------------------------------------------------------------
    def _forward(self, graphs: list) -> list[dict[str, Any]]:
        import torch
        from chgnet.model.model import BatchedGraph

        model = self.calc.model
        model.eval()
        self.n_forwards += 1
        device = next(model.parameters()).device
        graphs = [g.to(device) for g in graphs]
        comp_energy = 0 if model.composition_model is None else model.composition_model(graphs)
        batched = BatchedGraph.from_graphs(
            graphs,
            bond_basis_expansion=model.bond_basis_expansion,
            angle_basis_expansion=model.angle_basis_expansion,
            compute_stress=True,
        )
        prediction = model._compute(batched)  # energy only; per atom if the model is intensive
        energy = prediction["e"]
        n_atoms = prediction["atoms_per_graph"]
        total = energy * n_atoms if model.is_intensive else energy  # d(total)/d(energy) is exactly n/n = 1
        n = len(graphs)
        grads = torch.autograd.grad(total.sum(), [*batched.atom_positions, *batched.strains])
        scale = 1 / batched.volumes * _CHGNET_EV_A3_TO_GPA
        e = (energy + comp_energy).detach().cpu().numpy()
        out = []
        for i in range(n):
            # Exactly CHGNetCalculator.calculate's conversion of CHGNet.predict_graph's output.
            factor = int(n_atoms[i]) if model.is_intensive else 1
            e_i = e[i] * factor
            forces = (-1 * grads[i]).detach().cpu().numpy()
            stress = (grads[n + i] * scale[i]).detach().cpu().numpy() * self.calc.stress_weight
            out.append({"energy": e_i, "free_energy": e_i, "forces": forces, "stress": stress})
        return out

    @staticmethod
    def _finite(result: dict[str, Any]) -> bool:
        import numpy as np

        return bool(
            np.isfinite(result["energy"])
            and np.all(np.isfinite(result["forces"]))
            and np.all(np.isfinite(result["stress"]))
        )

    def _evaluate_graphs(self, graphs: list) -> list:
        try:
            results = self._forward(graphs)
        except Exception as exc:
            if len(graphs) == 1:
                return [exc]
            return [self._evaluate_graphs([g])[0] for g in graphs]
        if len(graphs) > 1:
            for i, res in enumerate(results):
                if not self._finite(res):  # confirm alone: a NaN must never be another structure's
                    results[i] = self._evaluate_graphs([graphs[i]])[0]
        return results

    def __call__(self, atoms_list: list) -> list:
        from pymatgen.io.ase import AseAtomsAdaptor

        model = self.calc.model
        out: list = [None] * len(atoms_list)
        graphs, where = [], []
        for i, atoms in enumerate(atoms_list):
            try:
                graphs.append(model.graph_converter(AseAtomsAdaptor.get_structure(atoms)))
                where.append(i)
            except Exception as exc:
                out[i] = exc
        if graphs:
            budget = self.memory_budget_gb
            if budget is None:
                from gen2d.settings import get_settings

                budget = get_settings().mlip_batch_memory_gb
            for chunk in memory_chunks([graph_bytes(g) for g in graphs], budget * 1e9):
                results = self._evaluate_graphs([graphs[k] for k in chunk])
                for k, res in zip(chunk, results, strict=True):
                    out[where[k]] = res
        return out

    # self-check ------------------------------------------------------------------------------------
    def verified(self) -> bool:
        """True when this evaluator reproduces the calculator on a probe crystal (checked once)."""
        if self._verified is None:
            self._verified = self._check()
        return self._verified

    def _check(self) -> bool:
        import logging

        import numpy as np
        from ase import Atoms

        log = logging.getLogger(__name__)
        probes = [
            Atoms(
                "NaCl",
                cell=[[0, 2.9, 2.9], [2.9, 0, 2.9], [2.9, 2.9, 0]],
                scaled_positions=[[0, 0, 0], [0.47, 0.5, 0.53]],
                pbc=True,
            ),
            Atoms("Mo", cell=[[-1.55, 1.6, 1.6], [1.6, -1.6, 1.6], [1.6, 1.6, -1.58]], pbc=True),
        ]
        try:
            batched = self(probes)
            for probe, got in zip(probes, batched, strict=True):
                if isinstance(got, BaseException):
                    raise got
                ref = probe.copy()
                self.calc.calculate(ref, ["energy", "forces", "stress"])
                want = dict(self.calc.results)
                self.calc.reset()
                n = len(probe)
                if not (
                    abs(float(got["energy"]) - float(want["energy"])) / n < 1e-4
                    and np.abs(got["forces"] - want["forces"]).max() < 1e-3
                    and np.abs(np.asarray(got["stress"]) - np.asarray(want["stress"])).max() < 1e-4
                ):
                    log.warning(
                        "CHGNet batched evaluator disagrees with CHGNetCalculator on %s; "
                        "relaxations fall back to the serial path",
                        probe.get_chemical_formula(),
                    )
                    return False
        except Exception as exc:
            log.warning(
                "CHGNet batched evaluator unusable here (%s: %s); relaxations fall back to the serial path",
                type(exc).__name__,
                exc,
            )
            return False
        return True
