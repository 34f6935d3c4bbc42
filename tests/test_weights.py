"""Named model weights (gen2d.weights, `gen2d models`): download, cache and sha256 checks against a
file server on 127.0.0.1 that the test starts; nothing here reaches the internet."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from typer.testing import CliRunner

from gen2d import weights
from gen2d.cli import app

NAME = "mattersim-v1.0.0-1M"
FILENAME = "mattersim-v1.0.0-1M.pth"


@contextlib.contextmanager
def serve_files(files: dict, lifetime: float = 120.0, auth: list | None = None):
    """An HTTP server on 127.0.0.1 (port chosen by the OS) serving ``files`` (name -> bytes).

    A value ``(body, declared_length)`` announces a Content-Length other than the body's, to imitate a
    broken connection. Yields ``(base_url, hits)``, hits being the paths requested; ``auth`` collects
    the Authorization headers received. The server stops
    when the block ends, or by itself after ``lifetime`` seconds.
    """
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            if auth is not None:
                auth.append(self.headers.get("Authorization"))
            entry = files.get(self.path.lstrip("/").split("?")[0])
            if entry is None:
                self.send_error(404)
                return
            body, length = entry if isinstance(entry, tuple) else (entry, len(entry))
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep the test output clean
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(lifetime, server.shutdown)
    stopper.daemon = True
    stopper.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        stopper.cancel()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A private cache, downloads allowed, no proxy in the way of 127.0.0.1."""
    monkeypatch.setenv("GEN2D_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GEN2D_OFFLINE", raising=False)
    monkeypatch.delenv("GEN2D_MODELS_BASE_URL", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path / "cache" / "models"


@pytest.fixture
def payload():
    # 2.5 MiB: more than one read chunk, so streaming and hashing across chunks are exercised
    return os.urandom(5 << 19)


def _leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_registry_mirrors_mattersims_own_urls():
    from mattersim.utils import download_utils

    src = open(download_utils.__file__).read()
    assert weights.MATTERSIM_CHECKPOINT_PREFIX in src  # the prefix mattersim's download_checkpoint uses
    for size in ("1M", "5M"):
        m = weights.get_model(f"mattersim-v1.0.0-{size}")
        assert m.url == weights.MATTERSIM_CHECKPOINT_PREFIX + m.filename and m.sha256 is None
    assert weights.get_model("MATTERSIM-V1.0.0-1M.pth").name == NAME
    with pytest.raises(weights.WeightsUnavailable, match="unknown model"):
        weights.get_model("no-such-model")


def test_fetch_downloads_once_records_sha_and_second_fetch_stays_local(env, payload, monkeypatch):
    with serve_files({FILENAME: payload}) as (base, hits):
        monkeypatch.setenv("GEN2D_MODELS_BASE_URL", base + "/")
        seen = []
        got = weights.fetch(NAME, progress=lambda done, total: seen.append((done, total)))
        assert got.downloaded and got.path == env / FILENAME and got.path.read_bytes() == payload
        assert got.sha256 == hashlib.sha256(payload).hexdigest() and got.sha256_source == "recorded"
        assert got.size_bytes == len(payload) and seen[-1] == (len(payload), len(payload))
        record = json.loads((env / weights.REGISTRY_FILE).read_text())[FILENAME]
        assert record["sha256"] == got.sha256 and record["origin"] == f"downloaded from {base}/{FILENAME}"
        again = weights.fetch(NAME)
        assert not again.downloaded and again.sha256 == got.sha256
        assert hits == [f"/{FILENAME}"]  # the second fetch never asked the server
    assert _leftovers(env) == [FILENAME, weights.REGISTRY_FILE]  # no temporary file left behind


def test_pinned_sha256_is_enforced_and_a_bad_download_leaves_nothing(env, payload, monkeypatch):
    good = hashlib.sha256(payload).hexdigest()
    monkeypatch.setitem(
        weights.MODELS,
        "test-pinned",
        weights.ModelWeights("test-pinned", "pinned.bin", "http://127.0.0.1:9/pinned.bin", sha256="0" * 64),
    )
    with serve_files({"pinned.bin": payload}) as (base, hits):
        with pytest.raises(weights.ChecksumMismatch, match="publisher's is 0000"):
            weights.fetch("test-pinned", url_override=f"{base}/pinned.bin")
        assert len(hits) == 1
        assert _leftovers(env) == []  # neither the file nor a record
        monkeypatch.setitem(
            weights.MODELS,
            "test-pinned",
            weights.ModelWeights("test-pinned", "pinned.bin", f"{base}/pinned.bin", sha256=good.upper()),
        )
        got = weights.fetch("test-pinned")
        assert got.sha256 == good and got.sha256_source == "pinned" and got.downloaded
    # flip every bit of the last byte: a fixed replacement byte equals the random one 1 time in 256
    (env / "pinned.bin").write_bytes(payload[:-1] + bytes([payload[-1] ^ 0xFF]))
    with pytest.raises(weights.ChecksumMismatch, match="not the published one"):
        weights.fetch("test-pinned")


def test_trust_on_first_use_detects_a_changed_file(env, payload, monkeypatch):
    files = {FILENAME: payload}
    with serve_files(files) as (base, hits):
        monkeypatch.setenv("GEN2D_MODELS_BASE_URL", base)
        first = weights.fetch(NAME)
        # the cached file is modified: every later use refuses it and says where the record is
        first.path.write_bytes(payload[:100] + b"tampered" + payload[108:])
        with pytest.raises(weights.ChecksumMismatch, match="recorded at its first download") as exc:
            weights.fetch(NAME)
        assert str(env / weights.REGISTRY_FILE) in str(exc.value)
        assert first.sha256 in str(exc.value)
        # the file is deleted and the server now serves other bytes: the record still holds
        first.path.unlink()
        files[FILENAME] = payload[::-1]
        with pytest.raises(weights.ChecksumMismatch):
            weights.fetch(NAME)
        assert _leftovers(env) == [weights.REGISTRY_FILE]
        assert weights.recorded_sha256(NAME) == first.sha256
        assert len(hits) == 2


def test_offline_without_a_cached_file_names_the_command(env, payload, monkeypatch):
    with serve_files({FILENAME: payload}) as (base, hits):
        monkeypatch.setenv("GEN2D_MODELS_BASE_URL", base)
        monkeypatch.setenv("GEN2D_OFFLINE", "1")
        with pytest.raises(weights.OfflineError) as exc:
            weights.fetch(NAME)
        msg = str(exc.value)
        assert f"gen2d models fetch {NAME}" in msg and str(env / FILENAME) in msg
        assert hits == [] and _leftovers(env) == []
        assert weights.fetch(NAME, offline=False).downloaded  # the argument wins over the environment
        assert not weights.fetch(NAME).downloaded  # cached: offline is no obstacle
        assert len(hits) == 1


def test_failed_downloads_leave_nothing_and_never_print_credentials(env, payload):
    auth = []
    with serve_files({"short.pth": (payload[:1000], len(payload))}, auth=auth) as (base, hits):
        secret_url = base.replace("http://", "http://alice:s3cret@") + "/missing.pth?token=t0ken"
        with pytest.raises(weights.WeightsUnavailable, match="HTTP 404") as exc:
            weights.fetch(NAME, url_override=secret_url)
        assert "s3cret" not in str(exc.value) and "t0ken" not in str(exc.value)
        # the user:password of a private mirror is sent as basic auth, never as part of the host name
        assert hits == ["/missing.pth?token=t0ken"] and auth == ["Basic YWxpY2U6czNjcmV0"]  # alice:s3cret
        # the connection ends before the announced length: refused, nothing kept
        with pytest.raises(weights.WeightsUnavailable, match="cannot download|stopped after"):
            weights.fetch(NAME, url_override=f"{base}/short.pth")
        assert len(hits) == 2
    assert _leftovers(env) == []
    with pytest.raises(weights.WeightsUnavailable, match="only http and https"):
        weights.fetch(NAME, url_override="file:///etc/hostname")


def test_install_file_and_a_hand_copied_file_are_recorded_then_checked(env, payload, tmp_path):
    src = tmp_path / "elsewhere.pth"
    src.write_bytes(payload)
    got = weights.install_file(NAME, src)
    assert got.path.read_bytes() == payload and weights.recorded_sha256(NAME) == got.sha256
    src.write_bytes(payload[::-1])  # another file under the same name is refused, nothing replaced
    with pytest.raises(weights.ChecksumMismatch):
        weights.install_file(NAME, src)
    assert got.path.read_bytes() == payload
    # a file put into the cache by hand, without a record: recorded at first sight, checked from then on
    other = "mattersim-v1.0.0-5M"
    weights.cache_path(other).write_bytes(b"five")
    assert weights.status(other)["sha256"] is None and weights.status(other)["cached"]
    assert weights.verify(other).sha256 == hashlib.sha256(b"five").hexdigest()
    weights.cache_path(other).write_bytes(b"six")
    with pytest.raises(weights.ChecksumMismatch):
        weights.verify(other)


def test_cli_models_fetch_and_list_json(env, payload, monkeypatch):
    runner = CliRunner()
    sha = hashlib.sha256(payload).hexdigest()
    with serve_files({FILENAME: payload}) as (base, hits):
        monkeypatch.setenv("GEN2D_MODELS_BASE_URL", base)
        res = runner.invoke(app, ["models", "fetch", NAME, "--json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["sha256"] == sha and doc["downloaded"] is True and doc["path"] == str(env / FILENAME)
        assert doc["url"] == f"{base}/{FILENAME}" and doc["sha256_source"] == "recorded"
        again = json.loads(runner.invoke(app, ["models", "fetch", NAME, "--json"]).stdout)
        assert again["downloaded"] is False and len(hits) == 1
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    listing = json.loads(res.stdout)
    rows = {r["name"]: r for r in listing["models"]}
    assert listing["cache"] == str(env)
    assert rows[NAME]["cached"] and rows[NAME]["sha256"] == sha and rows[NAME]["sha256_source"] == "recorded"
    assert not rows["mattersim-v1.0.0-5M"]["cached"] and rows["mattersim-v1.0.0-5M"]["sha256"] is None
    assert rows["mattersim-v1.0.0-5M"]["url"] == f"{base}/mattersim-v1.0.0-5M.pth"  # the mirror is set
    monkeypatch.setenv("GEN2D_OFFLINE", "1")
    res = runner.invoke(app, ["models", "fetch", "mattersim-v1.0.0-5M", "--json"])
    assert res.exit_code == 1 and "gen2d models fetch mattersim-v1.0.0-5M" in json.loads(res.stdout)["error"]
    # offline, a copy made elsewhere is installed with --from
    copy = env.parent.parent / "copy.pth"
    copy.write_bytes(b"weights")
    res = runner.invoke(app, ["models", "fetch", "mattersim-v1.0.0-5M", "--from", str(copy), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["sha256"] == hashlib.sha256(b"weights").hexdigest()
    res = runner.invoke(app, ["models", "fetch", "nope", "--json"])
    assert res.exit_code == 2 and "unknown model" in json.loads(res.stdout)["error"]
