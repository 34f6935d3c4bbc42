"""Shared fixtures: reference data location, hand-built monolayers and bad structures, stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, graphene, mx2
from pymatgen.core import Lattice, Structure

from gen2d.structures import from_ase, orient_2d

# Keep torch-based tests from fighting over the 2 cores of a CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Every run starts with an empty MLIP reference cache, as CI on a fresh machine does: a warm
# ~/.cache/gen2d must never make a test pass or look fast.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["GEN2D_CACHE"] = tempfile.mkdtemp(prefix="gen2d-test-cache-")
atexit.register(shutil.rmtree, os.environ["GEN2D_CACHE"], ignore_errors=True)  # runs never pile up in /tmp
# Tests never touch the network: a model that would download weights fails offline instead. The
# download path itself is tested against a server on 127.0.0.1 (tests/test_weights.py).
os.environ.setdefault("GEN2D_OFFLINE", "1")
# Nor may a user's ~/.config/gen2d/settings.yaml (it could name a real store): an empty settings file
# stands in unless GEN2D_CONFIG_FILE names one on purpose.
if not os.environ.get("GEN2D_CONFIG_FILE"):
    os.environ["GEN2D_CONFIG_FILE"] = os.path.join(tempfile.mkdtemp(prefix="gen2d-test-settings-"), "settings.yaml")
    atexit.register(shutil.rmtree, os.path.dirname(os.environ["GEN2D_CONFIG_FILE"]), ignore_errors=True)
    open(os.environ["GEN2D_CONFIG_FILE"], "w").close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from gen2d.data.readers import data_dir as _dd

    d = _dd()
    assert (d / "2dmatpedia_filtered.db").is_file(), f"reference data not found in {d} (set GEN2D_DATA)"
    return d


def make_mos2(vacuum: float = 20.0, a: float = 3.18) -> Structure:
    """2H-MoS2 monolayer: a = 3.18 Å, S-S height 3.13 Å (bulk-derived; Wilson & Yoffe 1969)."""
    atoms = mx2("MoS2", kind="2H", a=a, thickness=3.13, vacuum=vacuum / 2)
    return orient_2d(from_ase(atoms), vacuum=vacuum)


def make_graphene(vacuum: float = 20.0) -> Structure:
    atoms = graphene("C2", a=2.46, vacuum=vacuum / 2)
    return orient_2d(from_ase(atoms), vacuum=vacuum)


@pytest.fixture
def mos2() -> Structure:
    return make_mos2()


@pytest.fixture
def graphene_layer() -> Structure:
    return make_graphene()


@pytest.fixture
def bulk_si() -> Structure:
    return from_ase(bulk("Si", "diamond", a=5.43))


@pytest.fixture
def mos2_bilayer() -> Structure:
    """Two MoS2 layers 6.15 Å apart (bulk 2H stacking distance), with vacuum above and below."""
    layer = make_mos2(vacuum=20.0)
    z = layer.cart_coords[:, 2]
    species = list(layer.species) * 2
    shift = np.array([layer.lattice.matrix[0] / 3 + layer.lattice.matrix[1] * 2 / 3])
    cart = np.vstack([layer.cart_coords, layer.cart_coords + shift + [0, 0, 6.15]])
    lat = Lattice(np.vstack([layer.lattice.matrix[:2], [0, 0, np.ptp(z) + 6.15 + 20]]))
    return Structure(lat, species, cart, coords_are_cartesian=True)


@pytest.fixture
def memory_store():
    import uuid

    from gen2d.store import open_store

    cs = open_store(f"memory://t{uuid.uuid4().hex[:8]}")
    yield cs
    cs.close()


def write_cif(structure: Structure, path: Path) -> Path:
    structure.to(filename=str(path), fmt="cif")
    return path


def load_script(name: str):
    """The module of ``scripts/<name>.py`` (the scripts are not a package), freshly executed."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cp2k_available() -> tuple[bool, str]:
    from gen2d_cp2k import available

    return available()


HAVE_CP2K, _WHY_NO_CP2K = _cp2k_available()
#: tests that run CP2K: skipped, with the reason, where the executable or its data files are missing
needs_cp2k = pytest.mark.skipif(not HAVE_CP2K, reason=f"CP2K not installed: {_WHY_NO_CP2K}")

#: Small but physical CP2K settings for tests: a minimal basis on heavy atoms, a double-zeta H, a coarse grid.
CP2K_TINY = {
    "cutoff_ry": 200.0,
    "rel_cutoff_ry": 30.0,
    "basis_set": "SZV-MOLOPT-SR-GTH",
    "dispersion": None,
    "eps_scf": 1e-4,
    "added_mos": 8,
    "electronic_temperature_k": 1000.0,
    "mixing_alpha": 0.4,
}
#: ``dgh.dft`` options that keep a graphene run to about a minute: one site, a 2×2 cell, only H and its C relax, a
#: coarser grid, a thin vacuum without the dipole correction (a flat sheet with one H has a small dipole), the
#: single-zeta basis on H too and looser integral screening. Measured on one SCF of 2×2 graphene + H: 3.3 s per SCF
#: step with H in DZVP-MOLOPT-GTH and EPS_DEFAULT 1e-12, 0.65 s with both changed (the diffuse H basis in a 4.9 Å
#: cell is what costs).
DGH_DFT_TINY = {
    "cp2k": CP2K_TINY
    | {
        "cutoff_ry": 150.0,
        "rel_cutoff_ry": 25.0,
        "dipole_correction": False,
        "basis_overrides": {},
        "eps_default": 1e-8,
    },
    "n_sites": 1,
    "min_inplane_length": 4.9,
    "free_radius": 1.8,
    "steps": 12,
    "fmax": 0.3,
    "relax_slab_reference": False,
    "vacuum": 8.0,
    "h2_box": 7.0,
    "max_sites_per_face": 1,
    # graphene's top site is a minimum, not a symmetric saddle: start on it and keep the 12-step budget
    # (the jitter that takes H off a saddle is tested with EMT in tests/test_adsorption.py)
    "h_jitter": 0.0,
    # the clean-slab start without the spin check, so that the test adds the check to a finished site itself
    # (the MLIP-prepared start is tested with EMT in tests/test_adsorption.py)
    "prerelax": None,
    "spin_starts": [],
}


@pytest.fixture(scope="session")
def dft_workdir(tmp_path_factory) -> Path:
    """One DFT work directory for the session: a run finished by one test is read from cache by the next."""
    return tmp_path_factory.mktemp("dft")


def spy_on_replay_sampler(monkeypatch, training_module) -> list:
    """Record every ``replay_sampler(n_fixed, n_replay, per_epoch, seed)`` a fine-tuning plugin's training module
    makes, as ``(n_fixed, n_replay, per_epoch, sampler)``; the real sampler is still used."""
    from gen2d.finetune import replay_sampler

    drawn: list = []

    def spy(n_fixed, n_replay, per_epoch, seed=0):
        sampler = replay_sampler(n_fixed, n_replay, per_epoch, seed)
        drawn.append((n_fixed, n_replay, per_epoch, sampler))
        return sampler

    monkeypatch.setattr(training_module, "replay_sampler", spy)
    return drawn
