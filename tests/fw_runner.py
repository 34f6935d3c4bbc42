"""Run a gen2d flow spec through a FireWorks LaunchPad on mongomock, in-process rapidfire.

Used by tests/test_flows.py in a subprocess, because FireWorks reads MONGOMOCK_SERVERSTORE_FILE at import.
usage: python fw_runner.py SPEC STORE_URI
"""

import json
import sys

from fireworks import FWorker, LaunchPad
from fireworks.core.rocket_launcher import rapidfire
from jobflow.managers.fireworks import flow_to_workflow

from gen2d.config import load_spec
from gen2d.flows import build_flow, job_store

spec = load_spec(sys.argv[1])
spec.store = sys.argv[2]
lp = LaunchPad()
lp.reset("", require_password=False)
wf = flow_to_workflow(build_flow(spec), store=job_store(spec.store))
lp.add_wf(wf)
categories = sorted({fw.spec.get("_category", "") for fw in wf.fws})
# a GPU node, a CPU node and a DFT node, taking turns until nothing is left
for _ in range(10):
    for cat in ("gpu", "cpu", "dft"):
        rapidfire(lp, FWorker(name=f"{cat}-node", category=cat), strm_lvl="WARNING")
states = {}
for fw_id in lp.get_fw_ids():
    fw = lp.get_fw_by_id(fw_id)
    states[fw.name] = fw.state
print(json.dumps({"categories": categories, "states": states}))
