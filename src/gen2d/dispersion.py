"""Grimme's D3 dispersion added to an MLIP, for monolayers and their bulk references alike.

The offline MLIPs are trained on PBE (MPtrj) and have no dispersion term, so a stacked layered crystal is barely
bound and a monolayer sits on its layered bulk's energy: it never pays its exfoliation energy. D3 (Grimme et al.,
J. Chem. Phys. 132, 154104 (2010); Becke–Johnson damping, J. Comput. Chem. 32, 1456 (2011)) with the PBE
parameters is the correction DFT users apply to the same functional. :func:`with_dispersion` wraps any gen2d
calculator backend; the sum carries its own model name and hash, so the hull's reference cache keeps the two apart.

The D3 part is ``torch_dftd`` (Preferred Networks' PyTorch implementation of the DFT-D3 reference code, same
parameters), run in float64 on the CPU. Two-body only (no three-body ATM term), as in most PBE-D3 work.

Examples
--------
>>> from gen2d.relax import cached_calculator  # doctest: +SKIP
>>> calc = with_dispersion(cached_calculator("chgnet"))  # doctest: +SKIP
>>> calc.gen2d_model  # doctest: +SKIP
'CHGNet 0.3.0 (chgnet 0.3.0) + D3(BJ) PBE (torch-dftd 0.5.3, cutoff 40 bohr)'
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr

from gen2d.scoring import PluginUnavailable

#: dispersion methods: name -> torch_dftd damping
METHODS = {"d3bj": "bj", "d3zero": "zero"}

#: pair cutoff and coordination-number cutoff (bohr). The reference code's 95 bohr pair cutoff reaches 50 Å and
#: counts thousands of images of a small cell; at 40 bohr (21 Å) graphite's interlayer D3 energy moves by < 1 meV/atom.
DEFAULT_CUTOFF_BOHR = 40.0


class DispersionUnavailable(PluginUnavailable):
    """The dispersion correction cannot run here (``torch-dftd`` missing, unknown method or functional)."""


def d3_calculator(method: str = "d3bj", xc: str = "pbe", cutoff_bohr: float = DEFAULT_CUTOFF_BOHR) -> Calculator:
    """The bare D3 calculator (``torch_dftd.TorchDFTD3Calculator``) of ``method`` for functional ``xc``."""
    if method not in METHODS:
        raise DispersionUnavailable(f"unknown dispersion method {method!r}; one of {', '.join(METHODS)}")
    try:
        import torch
        from torch_dftd.torch_dftd3_calculator import TorchDFTD3Calculator
    except ImportError as exc:
        raise DispersionUnavailable(f"torch-dftd is not installed ({exc}); pip install torch-dftd") from exc
    try:
        return TorchDFTD3Calculator(
            xc=xc,
            damping=METHODS[method],
            device="cpu",
            cutoff=cutoff_bohr * Bohr,
            cnthr=cutoff_bohr * Bohr,
            dtype=torch.float64,
        )
    except (KeyError, ValueError) as exc:
        raise DispersionUnavailable(f"no D3 parameters for {xc!r} with {METHODS[method]} damping: {exc}") from exc


def _d3_results(d3: Calculator, atoms: Atoms) -> dict[str, Any]:
    work = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    periodic = bool(work.pbc.any())
    d3.reset()  # calculate() alone keeps the previous structure's results (a stress of a bulk for a molecule)
    with warnings.catch_warnings():  # torch-dftd builds its cell tensor from ase's Cell: slow-path warning only
        warnings.simplefilter("ignore", UserWarning)
        d3.calculate(work, ["energy", "forces"] + (["stress"] if periodic else []), all_changes)
    return {
        "energy": float(d3.results["energy"]),
        "forces": np.asarray(d3.results["forces"], float),
        "stress": np.asarray(d3.results["stress"], float) if periodic else np.zeros(6),
    }


def _add(base: dict[str, Any], d3: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key in ("energy", "free_energy"):
        if key in out:
            out[key] = float(out[key]) + d3["energy"]
    if "forces" in out:
        out["forces"] = np.asarray(out["forces"], float) + d3["forces"]
    if "stress" in out:
        stress = np.asarray(out["stress"], float)
        add = d3["stress"]
        if stress.shape == (3, 3):
            from ase.stress import voigt_6_to_full_3x3_stress

            add = voigt_6_to_full_3x3_stress(add)
        out["stress"] = stress + add
    return out


class _BatchWithDispersion:
    """The base backend's batched evaluator with the D3 terms of each structure added."""

    def __init__(self, base: Any, d3: Calculator):
        self.base = base
        self.d3 = d3

    def __call__(self, atoms_list: list) -> list:
        out = []
        for atoms, res in zip(atoms_list, self.base(atoms_list), strict=True):
            if isinstance(res, BaseException):
                out.append(res)
                continue
            try:
                out.append(_add(res, _d3_results(self.d3, atoms)))
            except Exception as exc:  # noqa: BLE001 - one structure fails alone, as in the base evaluator
                out.append(exc)
        return out

    def verified(self) -> bool:
        check = getattr(self.base, "verified", None)
        return bool(check()) if callable(check) else True


class DispersionCorrected(Calculator):
    """An MLIP calculator plus D3: energy, free energy, forces and stress are the sums.

    Provenance attributes follow the backend's (``gen2d_model``, ``gen2d_checkpoint_sha256``) with the dispersion
    named in the model and mixed into the hash, so caches keyed by either never mix corrected and bare energies.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self, base: Calculator, method: str = "d3bj", xc: str = "pbe", cutoff_bohr: float = DEFAULT_CUTOFF_BOHR
    ):
        super().__init__()
        self.base = base
        self.d3 = d3_calculator(method, xc, cutoff_bohr)
        import torch_dftd

        version = getattr(torch_dftd, "__version__", "?")
        label = f"D3({METHODS[method].upper()}) {xc.upper()} (torch-dftd {version}, cutoff {cutoff_bohr:g} bohr)"
        base_model = getattr(base, "gen2d_model", type(base).__name__)
        base_sha = getattr(base, "gen2d_checkpoint_sha256", None)
        self.gen2d_model = f"{base_model} + {label}"
        self.gen2d_checkpoint_sha256 = hashlib.sha256(f"{base_sha or base_model}|{label}".encode()).hexdigest()
        self.gen2d_base_checkpoint_sha256 = base_sha
        # the base's batched evaluator as it is: its one-off check against the calculator runs when a relaxation
        # first asks (gen2d.relax.batch_evaluator calls verified()), not when the sum is built
        batch = getattr(base, "gen2d_evaluate_batch", None)
        if callable(batch):
            self.gen2d_evaluate_batch = _BatchWithDispersion(batch, self.d3)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        properties = list(properties or ["energy"])
        super().calculate(atoms, properties, system_changes)
        work = self.atoms.copy()
        work.calc = self.base
        base = {"energy": work.get_potential_energy(), "forces": work.get_forces()}
        if "stress" in properties:
            base["stress"] = work.get_stress()
        base["free_energy"] = base["energy"]
        self.results = _add(base, _d3_results(self.d3, self.atoms))


def with_dispersion(
    calculator: Calculator, method: str | None = "d3bj", xc: str = "pbe", cutoff_bohr: float = DEFAULT_CUTOFF_BOHR
) -> Calculator:
    """``calculator`` plus D3 (``method`` ``d3bj`` or ``d3zero``); ``None`` or ``"none"`` returns it unchanged.

    Raises
    ------
    DispersionUnavailable
        torch-dftd missing, or an unknown method or functional.
    """
    if method in (None, "none"):
        return calculator
    return DispersionCorrected(calculator, method, xc, cutoff_bohr)
