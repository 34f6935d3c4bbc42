"""How many CPU threads torch uses in a gen2d process.

torch's default is one intra-op thread per core, and its OpenMP threads spin while they wait for each
other. That is right on an idle machine and very wrong on a busy one: on the 2-core development machine,
30 CHGNet single points on a 54-atom 3×3 cell of bulk 2H-MoS₂ take 2.7 s with 2 threads and 4.5 s with 1 when
the machine is idle, but 31.9 s with 2 threads and 6.2 s with 1 while two niced CP2K processes hold both cores
(a 5× slowdown from oversubscription; ``OMP_WAIT_POLICY=PASSIVE`` only halves it, and costs 2× when idle). A
laptop running the quickstart beside a DFT run, or an HPC node shared by several FireWorks rockets, is the busy
case.

So a gen2d process picks its thread count once, when it starts its first job:

1. ``GEN2D_THREADS`` (or ``threads:`` in the settings file), when set;
2. else ``OMP_NUM_THREADS``, when set: a batch script or ``srun --cpus-per-task`` has decided;
3. else the cores this process may run on that are idle now: the affinity mask's size minus the
   one-minute load average, rounded, at least 1.

:func:`configure_torch_threads` applies it and logs the choice and the reason once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

__all__ = ["ThreadChoice", "choose_threads", "configure_torch_threads"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and where it came from (``setting``, ``OMP_NUM_THREADS`` or ``idle cores``)."""

    threads: int
    reason: str


def choose_threads(cores: int, load: float, omp_num_threads: str | None, setting: int | None) -> ThreadChoice:
    """The thread count for a process allowed ``cores`` cores on a machine whose load average is ``load``.

    ``omp_num_threads`` is the environment's ``OMP_NUM_THREADS`` (unparsable or < 1 counts as unset);
    ``setting`` is ``GEN2D_THREADS``. Never more than ``cores``, never less than 1.
    """
    cores = max(1, int(cores))
    if setting is not None:
        return ThreadChoice(max(1, min(int(setting), cores)), "setting GEN2D_THREADS")
    try:
        omp = int(omp_num_threads) if omp_num_threads not in (None, "") else None
    except ValueError:
        omp = None
    if omp is not None and omp >= 1:
        return ThreadChoice(min(omp, cores), "OMP_NUM_THREADS")
    idle = int(cores - max(0.0, float(load)) + 0.5)
    return ThreadChoice(max(1, min(cores, idle)), f"idle cores ({cores} allowed, load {load:.1f})")


_applied: ThreadChoice | None = None


def configure_torch_threads(force: bool = False) -> ThreadChoice:
    """Set torch's intra-op threads by :func:`choose_threads`, once per process (again with ``force``)."""
    global _applied
    if _applied is not None and not force:
        return _applied
    import torch

    from gen2d.settings import get_settings

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows): assume idle
        load = 0.0
    choice = choose_threads(cores, load, os.environ.get("OMP_NUM_THREADS"), get_settings().threads)
    torch.set_num_threads(choice.threads)
    log.info("torch CPU threads: %d (%s)", choice.threads, choice.reason)
    _applied = choice
    return choice
