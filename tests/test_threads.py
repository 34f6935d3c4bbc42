"""gen2d.threads: a gen2d process never starts more torch threads than the machine has idle cores."""

from __future__ import annotations

import pytest
import torch

from gen2d import threads as threads_mod
from gen2d.settings import reset_settings
from gen2d.threads import choose_threads, configure_torch_threads


def test_idle_machine_gets_every_core():
    assert choose_threads(cores=8, load=0.2, omp_num_threads=None, setting=None).threads == 8


def test_busy_cores_are_left_alone():
    # two CP2K processes on a 2-core machine: one thread, not two spinning on held cores
    choice = choose_threads(cores=2, load=2.1, omp_num_threads=None, setting=None)
    assert choice.threads == 1 and "idle cores" in choice.reason
    assert choose_threads(cores=16, load=5.6, omp_num_threads=None, setting=None).threads == 10
    # more load than cores still runs, on one thread
    assert choose_threads(cores=4, load=40.0, omp_num_threads=None, setting=None).threads == 1


def test_omp_num_threads_is_respected_and_capped():
    assert choose_threads(cores=8, load=7.9, omp_num_threads="4", setting=None) == threads_mod.ThreadChoice(
        4, "OMP_NUM_THREADS"
    )
    assert choose_threads(cores=2, load=0.0, omp_num_threads="64", setting=None).threads == 2
    # unparsable or zero counts as unset: back to the idle cores
    for bad in ("", "four", "0"):
        assert choose_threads(cores=4, load=1.0, omp_num_threads=bad, setting=None).threads == 3


def test_setting_wins_over_the_environment():
    choice = choose_threads(cores=8, load=8.0, omp_num_threads="1", setting=6)
    assert choice.threads == 6 and "GEN2D_THREADS" in choice.reason


@pytest.fixture()
def restore_threads(monkeypatch):
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)
    monkeypatch.setattr(threads_mod, "_applied", None)
    reset_settings()


def test_configure_sets_torch_once_per_process(restore_threads):
    restore_threads.setattr(threads_mod, "_applied", None)
    restore_threads.setenv("GEN2D_THREADS", "1")
    reset_settings()
    first = configure_torch_threads()
    assert first.threads == 1 and torch.get_num_threads() == 1
    # a later call in the same process keeps the first choice, even when the setting changed
    restore_threads.setenv("GEN2D_THREADS", "2")
    reset_settings()
    assert configure_torch_threads() is first and torch.get_num_threads() == 1


def test_bad_setting_is_a_named_error(restore_threads):
    from pydantic import ValidationError

    restore_threads.setenv("GEN2D_THREADS", "0")
    reset_settings()
    with pytest.raises(ValidationError, match="GEN2D_THREADS"):
        configure_torch_threads(force=True)
