"""Security: malicious pickles are refused (weights_only), no trust_remote_code, and a password in a
store URI never reaches errors, logs or the report."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this would run os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"format": "gen2d-egnn-diffusion", "state_dict": _Payload(marker)}, str(path))
    return path


def test_egnn_loader_refuses_a_malicious_pickle(tmp_path):
    from gen2d.diffusion.train import load_checkpoint

    marker = tmp_path / "pwned"
    bad = _malicious_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(Exception) as e:
        load_checkpoint(bad, "cpu")
    assert "weights_only" in str(e.value) or "Unsupported" in str(e.value) or "global" in str(e.value).lower()
    assert not marker.exists()


def test_dimenet_scorer_refuses_a_malicious_member(tmp_path, mos2):
    from gen2d.scoring import get_scorer

    marker = tmp_path / "pwned"
    ckdir = tmp_path / "ens"
    ckdir.mkdir()
    _malicious_checkpoint(ckdir / "member_0.pt", marker)
    scorer = get_scorer("dgh.dimenet", checkpoint_dir=str(ckdir))
    results = scorer.score([mos2])
    assert len(results) == 1 and not results[0].ok
    assert not marker.exists()


def test_no_trust_remote_code_and_every_torch_load_is_weights_only():
    offenders = []
    for path in list((ROOT / "src").rglob("*.py")) + list((ROOT / "plugins").rglob("*.py")):
        text = path.read_text()
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{path}: enables trust_remote_code")
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path}: {line.strip()}")
    assert offenders == []


def test_password_never_in_errors_logs_or_report(tmp_path, caplog):
    from maggma.stores import MemoryStore

    from gen2d.report import write_report
    from gen2d.store import CandidateStore, StoreUnavailable, open_store

    secret = "Sup3rS3cret"
    uri = f"mongodb://gen2d:{secret}@127.0.0.1:9/gen2d"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreUnavailable) as e:
        open_store(uri, timeout_ms=200)
    assert secret not in str(e.value)
    assert secret not in caplog.text
    # a store whose URI holds a password writes a report without it
    cs = CandidateStore(MemoryStore("r"), uri).connect()
    files = write_report(cs, tmp_path / "rep")
    for f in files:
        if f.suffix in (".html", ".json"):
            assert secret not in f.read_text()
    assert "gen2d:***@127.0.0.1:9" in (tmp_path / "rep" / "report.json").read_text()
