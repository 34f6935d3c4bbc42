"""Charge-balanced type decoding: the nearest one-hot assignment whose composition SMACT accepts.

The denoiser chooses each atom's element on its own channel, so nothing ties a layer's composition
to oxidation states: about half of the free samples of the shipped model are not charge-balanced. This
module is the composition counterpart of the geometry prior (:func:`gen2d.diffusion.sampler.project_geometry`):
it changes atom types, at the least total cost in the model's own scores, until the composition is
charge-neutral in SMACT's oxidation states (``smact.screening.smact_validity`` without the Pauling test;
alloys allowed, so an all-metal composition passes too).

With ``h`` the continuous type state ``(n, K)`` (one-hot when clean), the cost of an assignment ``e`` is
``sum_i max_k h_ik - h_i,e_i``; minimising it is the L2 projection of ``h`` onto one-hot assignments, and
the per-atom argmax costs zero. The search (:func:`charge_balanced_types`) is a branch and bound over sets
of at most ``max_elements`` elements drawn from a pool of ``max_candidates``, each set searched by uniform
cost over single-atom changes. The result is the cheapest valid assignment within the pool (an element
outside it is never tried), not over the whole vocabulary; when nothing valid is found within
``max_expansions`` the cheapest elemental layer of the pool is returned, and the argmax only when even that
is blocked.

Much of what it fixes is not charge but breadth: on 200 free samples of the shipped model, 59 % carry
more than four elements (median five, a few over twenty; the SMACT metric counts more than six as invalid).
The returned composition has at most ``max_elements`` (4).

A chemical space can also ask for a kind of compound, not just a set of elements: ``require`` holds groups of
elements, and an accepted composition has at least one atom of every group (e.g. a transition metal and a
chalcogen, so that "Mo W Nb Ta V Ti / S Se Te C" yields no elemental sulfur). Element sets that miss a group are
not searched, and when the budget finds no charge-balanced composition that meets them, the cheapest assignment
that meets them is returned (``valid=False``).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

MAX_SMACT_ELEMENTS = 6  # as gen2d.metrics.SMACTValidity


@lru_cache(maxsize=65536)
def composition_is_valid(reduced_formula: str, use_pauling_test: bool = False) -> bool:
    """SMACT validity of a reduced formula (elemental layers are valid; alloys allowed).

    The prior's default asks for charge neutrality in SMACT's oxidation states only. SMACT's Pauling test
    (``use_pauling_test=True``, what :class:`gen2d.metrics.SMACTValidity` counts) rejects MoTe2, PdTe2 and
    other well-known tellurides; a prior that forbade them would push samples away from real layers.
    """
    from pymatgen.core import Composition

    from gen2d.metrics import smact_formula_valid

    comp = Composition(reduced_formula)
    if len(comp.elements) <= 1:
        return True
    if len(comp.elements) > MAX_SMACT_ELEMENTS:  # SMACT's enumeration never ends; the metric says invalid
        return False
    return smact_formula_valid(reduced_formula, use_pauling_test)


def _formula(counts: dict[str, int]) -> str:
    from pymatgen.core import Composition

    return Composition({el: c for el, c in counts.items() if c > 0}).reduced_formula


@dataclass
class BalancedTypes:
    """Result of :func:`charge_balanced_types` for one structure."""

    types: np.ndarray  # (n,) element indices into the vocabulary
    valid: bool  # the returned composition passes SMACT (and meets the requirement, when there is one)
    changed: int  # atoms whose type differs from the argmax
    cost: float  # sum over changed atoms of (own top score - score of the new type)
    expansions: int
    requirement_met: bool = True  # every ``require`` group has an atom (True when nothing is required)


def meets(present: Iterable[Hashable], groups: Iterable[Iterable[Hashable]]) -> bool:
    """Whether ``present`` (elements, or channel indices) holds a member of every one of ``groups``."""
    present = set(present)
    return all(present & set(group) for group in groups)


def _force_requirement(assign: np.ndarray, regret: np.ndarray, require: list[set[int]]) -> np.ndarray:
    """The cheapest single-atom changes, group by group, that give every ``require`` group an atom.

    An atom is moved only if its element keeps another atom, or belongs to no group the move would empty.
    """
    assign = assign.copy()
    for group in require:
        if set(assign.tolist()) & group:
            continue
        counts = np.bincount(assign, minlength=regret.shape[1])
        best, best_cost = None, np.inf
        for i in range(len(assign)):
            cur = int(assign[i])
            if counts[cur] == 1 and any(cur in g for g in require):
                continue  # the last atom of a group's element stays
            for k in group:
                c = regret[i, k] - regret[i, cur]
                if np.isfinite(regret[i, k]) and c < best_cost:
                    best, best_cost = (i, k), c
        if best is not None:
            assign[best[0]] = best[1]
    return assign


def _search_within(
    sub: np.ndarray,
    elements: list[int],
    vocab: list[str],
    max_expansions: int,
    bound: float,
    require: list[set[int]] | None = None,
) -> tuple[np.ndarray | None, float, int]:
    """Uniform-cost search over single-atom changes within ``elements`` (columns of ``sub``, the regret).

    Starts from each atom's cheapest element of the set; returns (assignment as column indices, cost,
    expansions), the assignment None when nothing valid costs less than ``bound`` within the budget. With
    ``require`` (groups of vocabulary indices), a valid assignment also has an atom of every group.
    """
    n, m = sub.shape
    assign = sub.argmin(-1)
    cost0 = float(sub[np.arange(n), assign].sum())
    tie = itertools.count()
    heap = [(cost0, next(tie), tuple(np.bincount(assign, minlength=m).tolist()), assign)]
    seen: set[tuple[int, ...]] = set()
    expansions = 0
    while heap and expansions < max_expansions:
        cost, _, counts, assign = heapq.heappop(heap)
        if cost >= bound:
            break
        if counts in seen:
            continue
        seen.add(counts)
        expansions += 1
        if (not require or meets({elements[j] for j, c in enumerate(counts) if c}, require)) and composition_is_valid(
            _formula({vocab[elements[j]]: c for j, c in enumerate(counts)})
        ):
            return assign, cost, expansions
        cur = sub[np.arange(n), assign]
        for b in range(m):
            delta = sub[:, b] - cur  # cost of moving each atom to b
            for a in {int(x) for x in assign} - {b}:
                nxt_counts = list(counts)
                nxt_counts[a] -= 1
                nxt_counts[b] += 1
                nxt_counts = tuple(nxt_counts)
                if nxt_counts in seen:
                    continue
                d = np.where(assign == a, delta, np.inf)  # the atom of a that holds a most weakly
                i = int(d.argmin())
                if not np.isfinite(d[i]):
                    continue
                nxt = assign.copy()
                nxt[i] = b
                heapq.heappush(heap, (cost + float(d[i]), next(tie), nxt_counts, nxt))
    return None, float("inf"), expansions


def charge_balanced_types(
    h: torch.Tensor | np.ndarray,
    vocab: list[str],
    blocked: torch.Tensor | None = None,
    max_candidates: int = 8,
    max_elements: int = 4,
    max_expansions: int = 400,
    require: list[list[int]] | None = None,
) -> BalancedTypes:
    """The cheapest change of an atom-type state ``h`` ``(n, K)`` into a SMACT-valid composition.

    Branch and bound over element sets: every set of at most ``max_elements`` of the candidate elements
    has a lower bound, the cost of giving each atom its cheapest element of the set. Sets are searched in
    the order of that bound (a uniform-cost search over single-atom changes within the set, from that
    assignment), and the search stops when the cheapest valid assignment found costs no more than the
    next set's bound.

    Parameters
    ----------
    h : tensor or array
        Type scores of one structure; larger is more likely (the sampler's clean type state).
    vocab : list of str
        Element symbol of each of the ``K`` channels.
    blocked : bool tensor, optional
        ``(K,)`` channels that may not be chosen (a restricted chemical space).
    max_candidates : int
        Elements the sets are drawn from: the argmax's elements first (most atoms first), then the largest
        "support" sum_i max(0, 1 - regret_ik), so an element an atom holds as one-hot counts 1 for it.
    max_elements : int
        Largest number of distinct elements of a returned composition.
    max_expansions : int
        Compositions examined in all. The search starts from the cheapest elemental layer, which is always
        valid, so ``valid=False`` (with the argmax) comes back only when every element is blocked.
    require : list of lists of int, optional
        Groups of channels; a returned composition has an atom of every group. Only element sets that meet
        every group are searched (the candidate pool takes each group's best-supported element when it has
        none), and no elemental start is assumed valid. When nothing charge-balanced meets them within the
        budget, the cheapest assignment that does is returned with ``valid=False``.
    """
    groups = [set(int(k) for k in g) for g in require] if require else []
    scores = h.detach().cpu().double().numpy() if isinstance(h, torch.Tensor) else np.asarray(h, dtype=float)
    if blocked is not None:
        scores = np.where(blocked.cpu().numpy()[None, :], -np.inf, scores)
    n = scores.shape[0]
    top = scores.argmax(-1)
    if n == 0:
        return BalancedTypes(top, True, 0, 0.0, 0)
    best = scores[np.arange(n), top]
    regret = best[:, None] - scores  # (n, K) >= 0: cost of giving atom i type k; 0 for the argmax
    present = list(dict.fromkeys(top.tolist()))
    counts = {vocab[k]: int(c) for k, c in enumerate(np.bincount(top, minlength=len(vocab))) if c}
    if len(counts) <= max_elements and meets(set(present), groups) and composition_is_valid(_formula(counts)):
        return BalancedTypes(top, True, 0, 0.0, 1)
    support = np.clip(1.0 - regret, 0.0, None).sum(0)
    order = [int(k) for k in np.argsort(-support, kind="stable") if np.isfinite(regret[:, k]).any()]
    by_count = sorted(present, key=lambda k: -int((top == k).sum()))  # the argmax's elements come first
    cand = list(dict.fromkeys(by_count + order))[: max(max_candidates, max_elements)]
    for group in groups:  # every group has an element in the pool: its best-supported allowed one
        if not group & set(cand):
            allowed = [k for k in order if k in group]
            if allowed:
                cand.append(allowed[0])
    sets = [list(c) for r in range(1, max_elements + 1) for c in itertools.combinations(cand, r)]
    if groups:
        sets = [c for c in sets if meets(set(c), groups)]
    bounds = np.array([regret[:, c].min(-1).sum() for c in sets])
    # an elemental layer is always valid and costs exactly its bound: the search starts from the cheapest
    singles = [j for j, c in enumerate(sets) if len(c) == 1 and np.isfinite(bounds[j])]
    found, found_cost, expansions = None, float("inf"), 1
    if singles:
        j = min(singles, key=lambda j: bounds[j])
        found, found_cost = np.full(n, sets[j][0]), float(bounds[j])
    for j in np.argsort(bounds, kind="stable"):
        if bounds[j] >= found_cost or expansions >= max_expansions:
            break
        elements = sets[j]
        assign, cost, used = _search_within(
            regret[:, elements], elements, vocab, max_expansions - expansions, found_cost, groups
        )
        expansions += used
        if assign is not None and cost < found_cost:
            found, found_cost = np.array([elements[a] for a in assign]), cost
    if found is None and groups and sets:
        # nothing charge-balanced meets the requirement: the cheapest set's assignment, made to meet it
        c = sets[int(np.argmin(bounds))]
        start = np.array([c[a] for a in regret[:, c].argmin(-1)])
        forced = _force_requirement(start, regret, groups)
        met = meets(set(forced.tolist()), groups)
        cost = float(regret[np.arange(n), forced].sum())
        return BalancedTypes(forced, False, int((forced != top).sum()), cost, expansions, met)
    if found is None:
        return BalancedTypes(top, False, 0, 0.0, expansions, meets(set(present), groups))
    return BalancedTypes(found, True, int((found != top).sum()), float(found_cost), expansions)
