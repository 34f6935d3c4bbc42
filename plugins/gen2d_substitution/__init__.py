"""Generator plugin ``substitution``: lattice decoration of the built-in templates by element substitution.

The baseline that 2D databases are built from (C2DB, 2DMatPedia bottom-up): take a known prototype and
swap its elements for chemically similar ones. Substitutes are drawn from the data-mined ion
substitution probabilities of Hautier et al. (Inorg. Chem. 50, 656 (2011); pymatgen
``SubstitutionProbability``), isovalent by default so that a charge-balanced template stays charge
balanced; elemental layers (no oxidation state) and species outside that table swap within their
periodic-table group. The geometry is rescaled by the change in covalent bond lengths; the scorers'
MLIP relaxation does the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure

from gen2d.scoring import GeneratedStructure

__version__ = "0.1.0"
NAME = "substitution"

# No noble gases, nothing radioactive without a stable isotope, nothing beyond Bi: the MLIPs and MP2020
# have little or no data there, and a lab would not make such a layer.
_EXCLUDED = {"He", "Ne", "Ar", "Kr", "Xe", "Rn", "Tc", "Pm", "Po", "At", "Fr", "Ra"}
MAX_Z = 83


def default_allowed_elements() -> list[str]:
    """Elements a substitute may be: Z <= 83, no noble gas, no radioactive element."""
    return [el.symbol for el in Element if el.Z <= MAX_Z and el.symbol not in _EXCLUDED]


def _covalent_radius(symbol: str) -> float:
    from ase.data import atomic_numbers, covalent_radii

    return float(covalent_radii[atomic_numbers[symbol]])


class SubstitutionGenerator:
    """Random element substitution on the built-in templates (``gen2d.data.templates``).

    Parameters
    ----------
    method : str
        ``probability`` (default): substitutes drawn from pymatgen's ``SubstitutionProbability``
        conditional probabilities for the site's oxidation state (group fallback for species outside the
        table); ``group``: uniformly within the same periodic-table group, at most ``max_row_shift`` rows
        away.
    isovalent : bool
        ``probability`` only: keep each species' oxidation state, so charge balance is kept.
    min_probability : float
        ``probability`` only: ignore substitutions whose conditional probability is below this.
    max_row_shift : int
        ``group`` method and fallback: how many periods up or down a substitute may be.
    allowed_elements : list of str, optional
        Substitutes are restricted to these (default: :func:`default_allowed_elements`).
    templates : list of str, optional
        Templates to decorate (default: the whole library).

    Examples
    --------
    >>> gen = SubstitutionGenerator()
    >>> [g.parameters["substitutions"] for g in gen.generate(n=2, seed=0)]  # doctest: +SKIP
    [{'Mo': 'W'}, {'B': 'Al'}]
    """

    name = NAME

    def __init__(
        self,
        method: str = "probability",
        isovalent: bool = True,
        min_probability: float = 1e-3,
        max_row_shift: int = 2,
        allowed_elements: Sequence[str] | None = None,
        templates: Sequence[str] | None = None,
    ):
        if method not in ("probability", "group"):
            raise ValueError(f"method must be 'probability' or 'group', not {method!r}")
        self.method = method
        self.isovalent = isovalent
        self.min_probability = float(min_probability)
        self.max_row_shift = int(max_row_shift)
        self.allowed = set(allowed_elements or default_allowed_elements())
        self.templates = list(templates) if templates else None
        self._table = None
        self._choices: dict[tuple[str, float | None], tuple[list[str], np.ndarray]] = {}

    def available(self) -> tuple[bool, str]:
        try:
            from gen2d.data.templates import list_templates

            if not list_templates():
                return False, "template library is empty"
            if self.method == "probability":
                self._probability_table()
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, ""

    # -- substitution tables -------------------------------------------------------------------------
    def _probability_table(self):
        if self._table is None:
            from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

            self._table = SubstitutionProbability()
        return self._table

    def _group_choices(self, symbol: str) -> tuple[list[str], np.ndarray]:
        el = Element(symbol)
        out = []
        for other in Element:
            if other.symbol == symbol or other.symbol not in self.allowed:
                continue
            if (
                other.group == el.group
                and abs(other.row - el.row) <= self.max_row_shift
                and other.is_lanthanoid == el.is_lanthanoid
                and other.is_actinoid == el.is_actinoid
            ):
                out.append(other.symbol)
        return out, np.full(len(out), 1.0 / len(out)) if out else np.zeros(0)

    def substitutes(self, symbol: str, oxidation_state: float | None) -> tuple[list[str], np.ndarray]:
        """Possible substitutes of one element and their probabilities (summing to 1; self excluded)."""
        key = (symbol, oxidation_state)
        if key in self._choices:
            return self._choices[key]
        choices: tuple[list[str], np.ndarray] = ([], np.zeros(0))
        if self.method == "probability" and oxidation_state:
            from pymatgen.core import Species

            table = self._probability_table()
            try:
                fixed = Species(symbol, oxidation_state)
            except ValueError:
                fixed = None
            if fixed is not None and fixed in table.species:
                names, probs = [], []
                for sp in table.species:
                    if sp.symbol == symbol or sp.symbol not in self.allowed:
                        continue
                    if self.isovalent and sp.oxi_state != fixed.oxi_state:
                        continue
                    p = table.cond_prob(sp, fixed)
                    if p >= self.min_probability:
                        names.append(sp.symbol)
                        probs.append(p)
                if names:
                    # one element may appear with several oxidation states (non-isovalent mode): merge
                    merged: dict[str, float] = {}
                    for nm, p in zip(names, probs):
                        merged[nm] = merged.get(nm, 0.0) + p
                    w = np.array(list(merged.values()))
                    choices = (list(merged), w / w.sum())
        if not choices[0]:
            choices = self._group_choices(symbol)
        self._choices[key] = choices
        return choices

    # -- generation ----------------------------------------------------------------------------------
    @staticmethod
    def _oxidation_states(structure: Structure) -> dict[str, float | None]:
        comp = structure.composition
        if len(comp.elements) < 2:
            return {el.symbol: None for el in comp.elements}
        try:
            guesses = comp.oxi_state_guesses(max_sites=-50)
        except Exception:
            guesses = ()
        if not guesses:
            return {el.symbol: None for el in comp.elements}
        return {k: float(v) for k, v in guesses[0].items()}

    @staticmethod
    def decorate(structure: Structure, mapping: dict[str, str]) -> Structure:
        """The template with elements replaced by ``mapping``, rescaled to the new covalent radii.

        The in-plane lattice and the heights above the mid-plane are scaled by the mean ratio of the new
        to the old covalent-radius sum over bonded pairs (1.25 x covalent sum); the vacuum is kept.
        """
        from gen2d.structures import bond_edges, orient_2d

        s = structure.copy()
        i, j, _ = bond_edges(s)
        old = [site.specie.symbol for site in s]
        new = [mapping.get(x, x) for x in old]
        if len(i):
            ratio = np.array(
                [
                    (_covalent_radius(new[a]) + _covalent_radius(new[b]))
                    / (_covalent_radius(old[a]) + _covalent_radius(old[b]))
                    for a, b in zip(i, j)
                ]
            )
            scale = float(ratio.mean())
        else:
            scale = float(np.mean([_covalent_radius(n) / _covalent_radius(o) for n, o in zip(new, old)]))
        m = s.lattice.matrix.copy()
        cart = s.cart_coords.copy()
        zmid = cart[:, 2].mean()
        m[:2] *= scale
        frac_inplane = s.frac_coords[:, :2]
        cart_new = frac_inplane[:, :1] * m[0] + frac_inplane[:, 1:2] * m[1]
        cart_new[:, 2] = zmid + (cart[:, 2] - zmid) * scale
        out = Structure(m, new, cart_new, coords_are_cartesian=True)
        return orient_2d(out)

    def generate(
        self,
        n: int | None = None,
        seed: int = 0,
        templates: list[str] | None = None,
        validate: bool = True,
        **params: Any,
    ) -> Iterator[GeneratedStructure]:
        """Yield ``n`` decorated templates (default: one per template).

        Each sample picks a template (cycling through a seeded shuffle of ``templates``) and replaces
        each of its elements, independently with probability 1/2, by a substitute drawn from
        :meth:`substitutes`; at least one element is always replaced, so the parent is never proposed.
        """
        from gen2d.data.templates import TEMPLATES, build_template, list_templates

        names = list(templates or self.templates or list_templates())
        n = len(names) if n is None else int(n)
        rng = np.random.default_rng(seed)
        order: list[str] = []
        built: dict[str, tuple[Structure, dict[str, float | None]]] = {}
        for k in range(n):
            if not order:
                order = list(rng.permutation(names))
            name = order.pop(0)
            if name not in built:
                st = build_template(name)
                built[name] = (st, self._oxidation_states(st))
            st, oxi = built[name]
            elements = sorted(oxi)
            swappable = [el for el in elements if self.substitutes(el, oxi[el])[0]]
            if not swappable:
                continue
            swap = [el for el in swappable if rng.random() < 0.5]
            if not swap:
                swap = [swappable[int(rng.integers(len(swappable)))]]
            mapping, prob = {}, 1.0
            for el in swap:
                subs, p = self.substitutes(el, oxi[el])
                pick = int(rng.choice(len(subs), p=p))
                mapping[el] = subs[pick]
                prob *= float(p[pick])
            structure = self.decorate(st, mapping)
            labels: dict[str, Any] = {}
            if validate:
                from gen2d.structures import strict_verdict

                labels["strict_valid"], labels["strict_reasons"] = strict_verdict(structure)
            yield GeneratedStructure(
                structure=structure,
                source_id=f"{NAME}:seed{seed}:{k}:{name}",
                parameters={
                    "generator": NAME,
                    "version": __version__,
                    "seed": seed,
                    "index": k,
                    "template": name,
                    "family": TEMPLATES[name].family,
                    "substitutions": mapping,
                    "oxidation_states": {el: oxi[el] for el in elements},
                    "method": self.method,
                    "isovalent": self.isovalent,
                    "substitution_probability": prob,
                },
                labels=labels,
            )


__all__ = ["SubstitutionGenerator", "default_allowed_elements"]
