"""Crashes: SIGKILL a running discover flow at a random point, locally and under FireWorks on
mongomock; rerun it. It resumes, duplicates nothing, and every score written before the kill survives."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gen2d.store import get_score, open_store

HERE = Path(__file__).resolve().parent
SPEC = {
    "flow": "discover",
    "name": "crash",
    "set": "crash",
    "generate": {"generator": "templates", "n": 24},
    "scorers": [{"name": "synth.pu", "batch_size": 3}],
    "report": None,
}


def _state(uri):
    with open_store(uri) as cs:
        out = {}
        for d in cs.query({}):
            sc = get_score(d, "synth.pu")
            out[d["candidate_id"]] = sc["provenance"]["created_at"] if sc else None
        return out


def _kill_at_random(cmd, env, cwd, seconds_max):
    p = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    time.sleep(random.uniform(0.3, 1.0) * seconds_max)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return p.returncode


def test_local_flow_killed_and_rerun(tmp_path):
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    uri = f"monty://{tmp_path}/store"
    cmd = [sys.executable, "-m", "gen2d.cli", "run", str(spec_path), "--store", uri, "--json"]
    # how long a whole run takes here, on a separate store
    t0 = time.time()
    subprocess.run(
        [*cmd[:-3], "--store", f"monty://{tmp_path}/timing", "--json"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    full = time.time() - t0
    random.seed(int.from_bytes(os.urandom(4), "little"))
    rc = _kill_at_random(cmd, env, tmp_path, full)
    before = _state(uri) if (tmp_path / "store").exists() else {}
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    after = _state(uri)
    assert len(after) == 24 and all(after.values())  # resumed: every candidate scored
    for cid, stamp in before.items():  # nothing written before the kill was lost or redone
        if stamp is not None:
            assert after[cid] == stamp
    print(
        f"killed after a random fraction of {full:.1f} s (rc {rc}); {sum(v is not None for v in before.values())}"
        f" scores had landed"
    )


FW_RUN = """
import copy, json, os, sys, threading, time
import bson.json_util
import mongomock.collection
from fireworks import FWorker, LaunchPad
from fireworks.core.rocket_launcher import rapidfire
# mongomock applies an update to the stored document in place, one operator at a time, without a lock: a
# snapshot taken meanwhile holds a half-updated document, which a real MongoDB never shows (its single-
# document writes are atomic). Every write here holds one lock, and so does the snapshot.
WRITES = threading.RLock()
def _locked(method):
    def run(*args, **kwargs):
        with WRITES:
            return method(*args, **kwargs)
    return run
for name in ("_insert", "_update", "_delete"):
    setattr(mongomock.collection.Collection, name, _locked(getattr(mongomock.collection.Collection, name)))
lp = LaunchPad()
# mongomock_persistence writes its file only at a clean exit, so a SIGKILL would take the 'server'
# down with the worker. A real MongoDB keeps what the worker wrote (a Firework marked RUNNING); this
# thread persists the mock server every 0.2 s, atomically, so the kill leaves the same trace.
server = lp.connection._store
path = os.environ["MONGOMOCK_SERVERSTORE_FILE"]
def persist():
    while True:
        time.sleep(0.2)
        with WRITES:
            snapshot = copy.deepcopy(server.to_dict())
        text = bson.json_util.dumps(snapshot)
        with open(path + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(path + ".tmp", path)
threading.Thread(target=persist, daemon=True).start()
if os.environ.get("SLOW_SCORING"):
    # test harness only: a scoring batch here takes a few ms, shorter than the 0.2 s persistence tick,
    # so the kill could never be timed inside a RUNNING Firework; hold each batch open for a while
    from gen2d_synth_pu.scorer import PUSynthScorer
    fast = PUSynthScorer.score
    def slow(self, *args, **kwargs):
        time.sleep(float(os.environ["SLOW_SCORING"]))
        return fast(self, *args, **kwargs)
    PUSynthScorer.score = slow
for cat in ("gpu", "cpu", "gpu", "cpu", "cpu"):
    rapidfire(lp, FWorker(name=cat, category=cat), strm_lvl="ERROR")
"""

FW_ADD = """
import sys
from fireworks import LaunchPad
from jobflow.managers.fireworks import flow_to_workflow
from gen2d.config import load_spec
from gen2d.flows import build_flow, job_store
spec = load_spec(sys.argv[1]); spec.store = sys.argv[2]
lp = LaunchPad(); lp.reset("", require_password=False)
lp.add_wf(flow_to_workflow(build_flow(spec), store=job_store(spec.store)))
"""

FW_RECOVER = """
import json
from fireworks import LaunchPad
lp = LaunchPad()
lost = lp.detect_lostruns(expiration_secs=0, rerun=True)
print(json.dumps({"lost_fw_ids": lost[0], "lost_launch_ids": lost[1]}))
"""


def _fw_running(server: Path) -> bool:
    """A Firework whose current state in the persisted mock server is RUNNING."""
    try:
        docs = json.loads(server.read_text())["fireworks"]["fireworks"]["documents"]
    except (ValueError, KeyError):
        return False
    return any(doc.get("state") == "RUNNING" for _, doc in docs)


def test_fireworks_flow_killed_lost_runs_detected_and_rerun(tmp_path):
    server = tmp_path / "mongomock.json"
    server.write_text("{}")
    env = {**os.environ, "MONGOMOCK_SERVERSTORE_FILE": str(server), "OMP_NUM_THREADS": "1"}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    uri = f"monty://{tmp_path}/store"
    for name, text in (("add.py", FW_ADD), ("run.py", FW_RUN), ("recover.py", FW_RECOVER)):
        (tmp_path / name).write_text(text)
    subprocess.run(
        [sys.executable, "add.py", str(spec_path), uri], env=env, cwd=tmp_path, check=True, capture_output=True
    )
    # kill the worker once it is inside the scoring batches (a Firework is RUNNING then)
    p = subprocess.Popen(
        [sys.executable, "run.py"],
        env={**env, "SLOW_SCORING": "1.0"},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        if (tmp_path / "store").exists() and any(_state(uri).values()):
            time.sleep(random.uniform(0.0, 1.5))
            break
    # the kill must land while the persisted launchpad shows a Firework RUNNING, not between two
    # Fireworks or before the worker's RUNNING state reached the (mock) server
    while time.time() < deadline and not _fw_running(server):
        time.sleep(0.05)
    assert p.poll() is None, "the worker finished before a Firework was seen RUNNING: nothing to kill"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    before = _state(uri)
    rec = subprocess.run([sys.executable, "recover.py"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert rec.returncode == 0, rec.stderr[-3000:]
    lost = json.loads(rec.stdout.strip().splitlines()[-1])
    subprocess.run([sys.executable, "run.py"], env=env, cwd=tmp_path, check=True, capture_output=True)
    after = _state(uri)
    assert len(after) == 24 and all(after.values())
    for cid, stamp in before.items():
        if stamp is not None:
            assert after[cid] == stamp
    # the killed Firework was RUNNING with nobody behind it: a lost run, found and rerun
    assert lost["lost_fw_ids"] or lost["lost_launch_ids"]
