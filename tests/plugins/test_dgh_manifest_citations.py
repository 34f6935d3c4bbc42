"""The shipped DimeNet++ MANIFEST cites its label recipe by an importable name, and that name is the recipe."""

from __future__ import annotations

import importlib
import json
import re
from importlib import resources

import gen2d_dgh_dimenet.labels as labels


def test_manifest_cites_the_label_recipe_in_package_code():
    manifest = json.loads((resources.files("gen2d") / "assets" / "dgh_dimenet" / "MANIFEST.json").read_text())
    text = " ".join(manifest["label_commands"])
    cited = re.findall(r"\b(gen2d\w*(?:\.\w+)+)\.([A-Z][A-Z_]+)\b", text)
    assert ("gen2d_dgh_dimenet.labels", "LABEL_RECIPE") in cited
    for module, name in cited:  # every cited constant exists where the MANIFEST says
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    assert "bench_her.LABEL_RECIPE" not in text  # a script is no place for what defines a shipped asset


def test_label_recipe_is_the_cheap_dgh_mlip_setting():
    # the recipe the shipped labels record: two sites per face, looser relaxations, CHGNet on the CPU
    assert labels.LABEL_RECIPE == {
        "calculator": "chgnet",
        "device": "cpu",
        "max_sites_per_face": 2,
        "steps": 100,
        "fmax": 0.1,
        "slab_fmax": 0.1,
        "slab_steps": 150,
    }
    assert labels.FULL_RECIPE == {"calculator": "chgnet", "device": "cpu"}
