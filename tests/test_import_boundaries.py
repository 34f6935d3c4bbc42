"""Import boundaries: the core never pulls in plugin-owned models, diffusion code or a plugin by name.

The EGNN model and diffusion (plugin ``egnn-diffusion``) and DimeNet++ (plugin ``dgh.dimenet``) live under
``gen2d.models`` and ``gen2d.diffusion``; importing any other core module must not load them, nor any
``gen2d_*`` plugin package (the core finds plugins through the registry only).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CORE = [
    "settings",
    "structures",
    "neighbors",
    "scoring",
    "store",
    "jobs",
    "flows",
    "hull",
    "adsorption",
    "relax",
    "metrics",
    "frames",
    "finetune",
    "data",
    "data.readers",
    "data.templates",
    "data.graphs",
    "data.ingest",
    "evaluate",
    "report",
    "config",
    "cli",
]
FORBIDDEN = ("gen2d.models", "gen2d.diffusion", "gen2d_")

PROBE = """
import importlib, json, sys
forbidden = tuple(sys.argv[2:])
seen, found = set(sys.modules), {}
for name in sys.argv[1].split(","):
    importlib.import_module("gen2d." + name)
    new = sorted(k for k in set(sys.modules) - seen if k.startswith(forbidden))
    if new:
        found[name] = new
    seen = set(sys.modules)
print(json.dumps(found))
"""


def test_core_modules_do_not_import_plugin_owned_code():
    # one fresh interpreter, modules imported one after the other: whatever a module adds to sys.modules
    # is what importing it pulled in
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(CORE), *FORBIDDEN],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_the_probe_sees_an_import_of_plugin_owned_code():
    # the same probe, pointed at the plugin-owned package itself, reports it (so an empty result means something)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "diffusion.schedule", *FORBIDDEN],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    )
    assert "gen2d.diffusion.schedule" in json.loads(out.stdout.strip().splitlines()[-1])["diffusion.schedule"]
