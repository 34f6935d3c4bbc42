"""Charge-balanced type decoding (gen2d.diffusion.composition)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gen2d.diffusion.composition import charge_balanced_types, composition_is_valid

VOCAB = ["W", "S", "Se", "Nb", "Mo"]


def _h(rows: list[dict[str, float]]) -> np.ndarray:
    h = np.zeros((len(rows), len(VOCAB)))
    for i, row in enumerate(rows):
        for el, v in row.items():
            h[i, VOCAB.index(el)] = v
    return h


def test_smact_facts_the_search_relies_on():
    assert composition_is_valid("WS2") and composition_is_valid("NbSe2") and composition_is_valid("MoS2")
    assert not composition_is_valid("W2S")  # no W+1 in SMACT's oxidation states
    assert composition_is_valid("S") and composition_is_valid("W")  # elemental layers count as valid


def test_valid_argmax_is_kept_at_zero_cost():
    h = _h([{"Mo": 1.0}, {"S": 0.9, "Mo": 0.1}, {"S": 0.7, "Se": 0.3}])
    r = charge_balanced_types(h, VOCAB)
    assert [VOCAB[k] for k in r.types] == ["Mo", "S", "S"]
    assert r.valid and r.changed == 0 and r.cost == 0.0


def test_invalid_composition_changes_the_most_weakly_held_atom():
    # argmax W2S is not charge-balanced; atom 1 prefers W over S by 0.1 only, atom 0 by 1.0
    h = _h([{"W": 1.0}, {"W": 0.55, "S": 0.45}, {"S": 1.0}])
    r = charge_balanced_types(h, VOCAB)
    assert [VOCAB[k] for k in r.types] == ["W", "S", "S"]  # WS2
    assert r.valid and r.changed == 1 and r.cost == pytest.approx(0.1)


def test_permuting_atoms_permutes_the_result():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(9, len(VOCAB)))
    perm = rng.permutation(9)
    a = charge_balanced_types(h, VOCAB)
    b = charge_balanced_types(h[perm], VOCAB)
    assert a.valid and b.valid
    assert np.array_equal(a.types[perm], b.types) and a.cost == pytest.approx(b.cost)


def test_blocked_channels_and_element_limit_are_respected():
    rng = np.random.default_rng(5)
    h = torch.tensor(rng.normal(size=(12, len(VOCAB))))
    blocked = torch.tensor([v in ("Se", "Nb") for v in VOCAB])
    r = charge_balanced_types(h, VOCAB, blocked=blocked, max_elements=2)
    names = {VOCAB[k] for k in r.types}
    assert r.valid and not names & {"Se", "Nb"} and len(names) <= 2
    counts = {el: int(sum(VOCAB[k] == el for k in r.types)) for el in names}
    from pymatgen.core import Composition

    assert composition_is_valid(Composition(counts).reduced_formula)


def test_on_a_tight_budget_the_cheapest_elemental_layer_is_returned():
    # an elemental layer is always valid and costs exactly its bound, so the search starts from it
    h = _h([{"W": 1.0}, {"W": 0.55, "S": 0.45}, {"S": 1.0}])
    r = charge_balanced_types(h, VOCAB, max_expansions=1)  # only the argmax itself is examined
    assert [VOCAB[k] for k in r.types] == ["W", "W", "W"] and r.valid and r.cost == pytest.approx(1.0)
    assert charge_balanced_types(h, VOCAB).cost == pytest.approx(0.1)  # with the budget: WS2


def test_well_known_tellurides_are_kept():
    # SMACT's Pauling test rejects MoTe2 (Pauling electronegativity Mo 2.16 > Te 2.1, so the "anion" is
    # less electronegative than the cation); the prior asks only for charge neutrality: MoTe2 stays MoTe2
    assert not composition_is_valid("MoTe2", use_pauling_test=True) and composition_is_valid("MoTe2")
    vocab = ["Mo", "Te", "Se"]
    h = np.array([[1.0, 0.0, 0.0], [0.0, 0.9, 0.1], [0.0, 0.8, 0.2]])
    r = charge_balanced_types(h, vocab)
    assert [vocab[k] for k in r.types] == ["Mo", "Te", "Te"] and r.changed == 0


def test_a_many_element_argmax_is_reduced_not_enumerated():
    # SMACT's oxidation-state enumeration does not end for many elements: the search must never ask it
    # about the 8-element argmax, and must come down to at most max_elements
    vocab = ["Mo", "W", "Nb", "Ta", "V", "Ti", "S", "Se"]
    h = np.eye(8) + 0.01 * np.random.default_rng(0).random((8, 8))
    r = charge_balanced_types(h, vocab, max_elements=3)
    assert r.valid and len({vocab[k] for k in r.types}) <= 3 and r.changed >= 5
    assert r.cost < charge_balanced_types(h, vocab, max_expansions=1).cost  # the budget buys a cheaper one


METALS, CHALCOGENS = [VOCAB.index(e) for e in ("W", "Nb", "Mo")], [VOCAB.index(e) for e in ("S", "Se")]


def test_a_required_group_turns_an_elemental_chalcogen_layer_into_a_compound():
    # the argmax is elemental sulfur, valid on its own; atom 0 holds S most weakly against Mo
    h = _h([{"S": 0.6, "Mo": 0.5}, {"S": 1.0, "W": 0.2}, {"S": 1.0}])
    assert [VOCAB[k] for k in charge_balanced_types(h, VOCAB).types] == ["S", "S", "S"]
    r = charge_balanced_types(h, VOCAB, require=[METALS, CHALCOGENS])
    assert [VOCAB[k] for k in r.types] == ["Mo", "S", "S"]  # MoS2: one change, at the least cost
    assert r.valid and r.requirement_met and r.changed == 1 and r.cost == pytest.approx(0.1)


def test_required_groups_hold_on_random_states():
    rng = np.random.default_rng(11)
    for _ in range(25):
        h = rng.normal(size=(int(rng.integers(2, 10)), len(VOCAB)))
        r = charge_balanced_types(h, VOCAB, require=[METALS, CHALCOGENS])
        present = set(r.types.tolist())
        assert r.requirement_met and present & set(METALS) and present & set(CHALCOGENS)
        assert r.valid == composition_is_valid(
            "".join(f"{VOCAB[k]}{int((r.types == k).sum())}" for k in sorted(present))
        )


def test_a_requirement_beyond_the_budget_is_met_but_not_called_balanced():
    # W2S-like argmax; with one expansion nothing charge-balanced is examined
    h = _h([{"W": 1.0}, {"W": 0.9}, {"W": 0.8, "S": 0.1}])
    r = charge_balanced_types(h, VOCAB, max_expansions=1, require=[METALS, CHALCOGENS])
    present = {VOCAB[k] for k in r.types}
    assert r.requirement_met and "W" in present and "S" in present
    assert not r.valid  # W2S is not charge-balanced, and the result says so
