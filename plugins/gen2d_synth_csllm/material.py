"""CSLLM's material string and prompt, built with pyxtal exactly as CSLLM's own training data were.

``{spg} |{a:.3f},{b:.3f},{c:.3f},{α:.2f},{β:.2f},{γ:.2f}| ({El}-{mult}{letter}{xyz})->(…)``, asked as
``Can this material structure be synthesized "{string}"?`` inside ``###Human: {question}###Assistant:``.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from pymatgen.core import Structure

QUESTION_TEMPLATE = 'Can this material structure be synthesized "{material}"?'
CHAT_TEMPLATE = "###Human: {question}###Assistant:"
#: pyxtal's own defaults for ``_from_pymatgen``, which CSLLM's training strings were made with.
DEFAULT_SYMPREC = 1e-3
DEFAULT_ANGLE_TOL = 5.0


class MaterialStringError(ValueError):
    """The structure has no CSLLM material string; ``reason`` is a snake_case token."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _position_text(position: np.ndarray) -> str:
    # CSLLM formatted ``site.position`` with ``str()``: NumPy's default array printing. Pin the
    # defaults so that a caller's np.set_printoptions cannot change the prompt.
    with np.printoptions(
        precision=8, suppress=False, floatmode="maxprec", linewidth=75, sign="-", legacy=False, threshold=1000
    ):
        return str(np.asarray(position, dtype=float))


def material_string(
    structure: Structure, symprec: float = DEFAULT_SYMPREC, angle_tol: float = DEFAULT_ANGLE_TOL
) -> str:
    """CSLLM's text form of a crystal, one ``(El-{mult}{letter}{xyz})`` group per Wyckoff site.

    Parameters
    ----------
    structure
        Any ordered pymatgen structure; a monolayer is read as the 3D crystal of its vacuum-padded cell.
    symprec, angle_tol
        pyxtal's symmetry tolerances (its defaults, as in CSLLM's training data).

    Returns
    -------
    str
        e.g. ``225 |5.640,5.640,5.640,90.00,90.00,90.00| (Na-4a[0. 0. 0.])->(Cl-4b[0.5 0.5 0.5])``.

    Raises
    ------
    MaterialStringError
        ``not_a_structure``, ``empty_structure``, ``partial_occupancy`` or ``symmetry_analysis_failed``.
    """
    from pyxtal import pyxtal

    if not isinstance(structure, Structure):
        raise MaterialStringError("not_a_structure", f"expected a pymatgen Structure, got {type(structure).__name__}")
    if len(structure) == 0:
        raise MaterialStringError("empty_structure", "the structure has no sites")
    if not structure.is_ordered:
        raise MaterialStringError("partial_occupancy", "pyxtal needs one element per site")
    if not np.all(np.isfinite(structure.frac_coords)) or not np.all(np.isfinite(structure.lattice.matrix)):
        raise MaterialStringError("non_finite_coordinates", "coordinates or lattice contain NaN or inf")
    crystal = pyxtal()
    # pyxtal reports some failures by printing and carrying on; keep its chatter out of our output.
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crystal._from_pymatgen(structure, tol=symprec, a_tol=angle_tol)
    except Exception as exc:
        raise MaterialStringError(
            "symmetry_analysis_failed", f"pyxtal could not read the structure: {type(exc).__name__}: {exc}"
        ) from None
    if not getattr(crystal, "valid", False) or not crystal.atom_sites:
        raise MaterialStringError("symmetry_analysis_failed", "pyxtal found no Wyckoff sites")
    # CSLLM took the cell from pyxtal's Lattice string (4 decimals) and reformatted it; going through
    # the same string keeps every rounding identical to its training data.
    a, b, c, alpha, beta, gamma = (float(v) for v in str(crystal.lattice).split(",")[:6])
    lattice_text = f"|{a:.3f},{b:.3f},{c:.3f},{alpha:.2f},{beta:.2f},{gamma:.2f}|"
    sites = [
        f"({site.specie}-{site.wp.multiplicity}{site.wp.letter}{_position_text(site.position)})"
        for site in crystal.atom_sites
    ]
    return f"{crystal.group.number} {lattice_text} {'->'.join(sites)}"


def build_question(material: str) -> str:
    """``Can this material structure be synthesized "{material}"?``"""
    return QUESTION_TEMPLATE.format(material=material)


def build_prompt(
    structure: Structure | str, symprec: float = DEFAULT_SYMPREC, angle_tol: float = DEFAULT_ANGLE_TOL
) -> str:
    """The exact text CSLLM receives: the question in its ``###Human: …###Assistant:`` chat frame.

    ``structure`` may also be a material string already built.
    """
    material = structure if isinstance(structure, str) else material_string(structure, symprec, angle_tol)
    return CHAT_TEMPLATE.format(question=build_question(material))
