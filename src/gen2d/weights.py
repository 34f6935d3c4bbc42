"""Named model weights: where each file is published, download into gen2d's cache, sha256 verification.

A file is checked against a pinned sha256 where its publisher gives one; otherwise its hash is recorded
at the first download (trust on first use) in ``sha256.json`` beside it, and every later use is checked
against that record. Set ``GEN2D_OFFLINE=1`` to forbid downloads; then only cached files are used.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import http.client
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from gen2d import __version__

log = logging.getLogger(__name__)

REGISTRY_FILE = "sha256.json"
_CHUNK = 1 << 20

# mattersim 1.2.3 downloads its named checkpoints from this prefix + file name
# (mattersim/utils/download_utils.py, ``download_checkpoint``: GITHUB_CHECKPOINT_PREFIX); the
# constant is local to that function, so it is mirrored here. MatterSim publishes no checksum.
MATTERSIM_CHECKPOINT_PREFIX = "https://raw.githubusercontent.com/microsoft/mattersim/main/pretrained_models/"


class WeightsError(RuntimeError):
    """Base class: a named model file cannot be used; the message says what to do."""


class WeightsUnavailable(WeightsError):
    """The file is not cached and cannot be downloaded (unknown name, network or server error)."""


class OfflineError(WeightsUnavailable):
    """The file is not cached and ``GEN2D_OFFLINE`` forbids the download."""


class ChecksumMismatch(WeightsError):
    """A file's sha256 differs from the pinned or the recorded one."""


@dataclass(frozen=True)
class ModelWeights:
    """One downloadable model file.

    Parameters
    ----------
    name : str
        The name users type (``gen2d models fetch NAME``); matched case-insensitively.
    filename : str
        The file's name in the cache (and on the server).
    url : str
        Where the publisher serves it.
    sha256 : str, optional
        The publisher's checksum; None when none is published (then trust on first use).
    source : str
        Who publishes it and where gen2d took the URL from.
    """

    name: str
    filename: str
    url: str
    sha256: Optional[str] = None
    source: str = ""


@dataclass(frozen=True)
class CachedWeights:
    """A verified file in the cache."""

    name: str
    path: Path
    sha256: str
    sha256_source: str  # "pinned" (published) or "recorded" (at first download or first sight)
    url: str
    downloaded: bool  # fetched from ``url`` by this call
    size_bytes: int

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


MODELS: dict[str, ModelWeights] = {}


def register(model: ModelWeights) -> ModelWeights:
    """Add (or replace) a named model in the registry."""
    MODELS[model.name.lower()] = model
    return model


for _size in ("1M", "5M"):
    register(
        ModelWeights(
            name=f"mattersim-v1.0.0-{_size}",
            filename=f"mattersim-v1.0.0-{_size}.pth",
            url=MATTERSIM_CHECKPOINT_PREFIX + f"mattersim-v1.0.0-{_size}.pth",
            sha256=None,
            source="Microsoft MatterSim (MIT); the URL mattersim 1.2.3 itself downloads from",
        )
    )


# ----------------------------------------------------------------------------------------------------
# Settings: each read in one function
# ----------------------------------------------------------------------------------------------------


def _offline() -> bool:
    """True when ``GEN2D_OFFLINE`` (the ``offline`` setting) forbids downloads."""
    from gen2d.settings import get_settings

    return bool(get_settings().offline)


def is_offline() -> bool:
    """True when downloads are forbidden (``GEN2D_OFFLINE``)."""
    return _offline()


def _cache_dir() -> Path:
    """``$GEN2D_CACHE/models``, else ``~/.cache/gen2d/models``."""
    from gen2d.settings import get_settings

    return Path(get_settings().cache_dir).expanduser() / "models"


def default_cache_dir() -> Path:
    """The cache folder used when none is given."""
    return _cache_dir()


def _base_url_override() -> Optional[str]:
    """``GEN2D_MODELS_BASE_URL``: a mirror serving the same file names (None when unset)."""
    from gen2d.settings import get_settings

    return get_settings().models_base_url or None


# ----------------------------------------------------------------------------------------------------


def get_model(name: str) -> ModelWeights:
    """The registry entry for ``name`` (case-insensitive; a trailing ``.pth`` is accepted).

    Raises
    ------
    WeightsUnavailable
        For an unknown name; the message lists the known ones.
    """
    key = name.strip().lower()
    if key in MODELS:
        return MODELS[key]
    for model in MODELS.values():
        if model.filename.lower() == key:
            return model
    raise WeightsUnavailable(f"unknown model {name!r}; known: {', '.join(m.name for m in MODELS.values())}")


def cache_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the file of ``name`` lives in the cache (whether or not it is there)."""
    return Path(cache_dir or _cache_dir()) / get_model(name).filename


def source_url(name: str, url_override: Optional[str] = None) -> str:
    """The URL a download of ``name`` uses: ``url_override``, else the mirror base, else the publisher's."""
    model = get_model(name)
    if url_override:
        return url_override
    base = _base_url_override()
    if base:
        return base.rstrip("/") + "/" + model.filename
    return model.url


def redact_url(url: str) -> str:
    """The URL without user, password or query string (safe to print, log or store)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _registry_path(cache_dir: Path) -> Path:
    return cache_dir / REGISTRY_FILE


def _read_registry(cache_dir: Path) -> dict[str, dict[str, Any]]:
    path = _registry_path(cache_dir)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"the hash record {path} cannot be read ({type(exc).__name__}: {exc}); repair it, "
            "or delete it and the files beside it to fetch them anew"
        ) from exc
    if not isinstance(doc, dict):
        raise WeightsError(
            f"the hash record {path} is not a JSON object; repair it, or delete it and the "
            "files beside it to fetch them anew"
        )
    return doc


def _record(cache_dir: Path, model: ModelWeights, sha256: str, origin: str) -> None:
    doc = _read_registry(cache_dir)
    doc[model.filename] = {
        "model": model.name,
        "sha256": sha256,
        "origin": origin,
        "recorded_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    fd, tmp = tempfile.mkstemp(prefix=".sha256-", suffix=".json", dir=cache_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2, sort_keys=True)
        os.replace(tmp, _registry_path(cache_dir))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def recorded_sha256(name: str, cache_dir: str | os.PathLike | None = None) -> Optional[str]:
    """The sha256 recorded for ``name`` at its first download (None when nothing is recorded)."""
    entry = _read_registry(Path(cache_dir or _cache_dir())).get(get_model(name).filename) or {}
    return entry.get("sha256")


def expected_sha256(name: str, cache_dir: str | os.PathLike | None = None) -> tuple[Optional[str], Optional[str]]:
    """(sha256, "pinned" | "recorded") that a file of ``name`` must have, or (None, None) before its first use."""
    model = get_model(name)
    if model.sha256:
        return model.sha256.lower(), "pinned"
    recorded = recorded_sha256(name, cache_dir)
    return (recorded, "recorded") if recorded else (None, None)


def _mismatch_message(model: ModelWeights, got: str, want: str, how: str, what: str, cache_dir: Path) -> str:
    if how == "pinned":
        return (
            f"{what} of {model.name} has sha256 {got}, but its publisher's is {want}: the file is not the "
            "published one (corrupted, truncated or replaced)"
        )
    return (
        f"{what} of {model.name} has sha256 {got}, but {want} was recorded at its first download "
        f"(in {_registry_path(cache_dir)}): the file changed. If its publisher really replaced it, delete "
        f"that entry and the cached file, then run `gen2d models fetch {model.name}`"
    )


def verify(name: str, cache_dir: str | os.PathLike | None = None) -> CachedWeights:
    """The cached file of ``name``, checked against its pinned or recorded sha256.

    A cached file without a record (copied in by hand) has its hash recorded now.

    Raises
    ------
    WeightsUnavailable
        When the file is not in the cache.
    ChecksumMismatch
        When its sha256 differs from the pinned or the recorded one. The file is left in place.
    """
    model = get_model(name)
    cdir = Path(cache_dir or _cache_dir())
    path = cdir / model.filename
    if not path.is_file():
        raise WeightsUnavailable(f"{model.filename} is not in the cache {cdir}")
    got = _sha256_of(path)
    want, how = expected_sha256(name, cdir)
    if want is None:
        _record(cdir, model, got, origin=f"found in the cache at {path}")
        how = "recorded"
    elif got != want:
        raise ChecksumMismatch(_mismatch_message(model, got, want, how, f"the cached file {path}", cdir))
    return CachedWeights(model.name, path, got, how, redact_url(source_url(name)), False, path.stat().st_size)


def _install(model: ModelWeights, tmp: Path, got: str, cdir: Path, origin: str, what: str) -> Path:
    """Check a finished temporary file against the pinned/recorded hash, then move it into place."""
    want, how = expected_sha256(model.name, cdir)
    if want is not None and got != want:
        tmp.unlink(missing_ok=True)
        raise ChecksumMismatch(_mismatch_message(model, got, want, how, what, cdir))
    final = cdir / model.filename
    os.replace(tmp, final)
    if how != "recorded":
        _record(cdir, model, got, origin=origin)
    return final


def _request(url: str) -> urllib.request.Request:
    """A GET request; a user:password in the URL (a private mirror) becomes a basic-auth header that is
    not passed on to a redirect's target."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    req = urllib.request.Request(
        urllib.parse.urlunsplit(parts._replace(netloc=netloc)), headers={"User-Agent": f"gen2d/{__version__}"}
    )
    if parts.username is not None:
        token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        req.add_unredirected_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    return req


def fetch(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    offline: Optional[bool] = None,
    url_override: Optional[str] = None,
    progress: Optional[Callable[[int, Optional[int]], None]] = None,
    timeout: float = 60.0,
) -> CachedWeights:
    """The verified local file of ``name``, downloaded into the cache if it is not there yet.

    The download streams to a temporary file in the cache folder while hashing, is checked against
    the pinned sha256 (or the one recorded by an earlier download), and only then renamed into place,
    so a failed or rejected download leaves nothing behind.

    Parameters
    ----------
    name : str
        A registered model name (``gen2d models list``).
    cache_dir : path, optional
        Default ``$GEN2D_CACHE/models`` or ``~/.cache/gen2d/models``.
    offline : bool, optional
        Forbid the download; default from ``GEN2D_OFFLINE``.
    url_override : str, optional
        Download from this URL instead (a mirror); default ``GEN2D_MODELS_BASE_URL`` + file name, else
        the publisher's URL.
    progress : callable, optional
        Called as ``progress(bytes_done, bytes_total_or_None)`` while downloading.
    timeout : float
        Seconds without data before the download is abandoned.

    Raises
    ------
    OfflineError
        Not cached and downloads are forbidden; the message names the command and the file's place.
    WeightsUnavailable
        Unknown name, or the download failed.
    ChecksumMismatch
        The cached or the downloaded file has the wrong sha256 (a rejected download is deleted).

    Examples
    --------
    >>> from gen2d.weights import fetch
    >>> fetch("mattersim-v1.0.0-1M").sha256  # doctest: +SKIP
    """
    model = get_model(name)
    cdir = Path(cache_dir or _cache_dir())
    final = cdir / model.filename
    if final.is_file():
        return verify(name, cdir)
    url = source_url(name, url_override)
    shown = redact_url(url)
    if _offline() if offline is None else offline:
        raise OfflineError(
            f"{model.filename} is not cached and GEN2D_OFFLINE=1 forbids downloading it: run "
            f"`gen2d models fetch {model.name}` where there is internet (it downloads {shown}), or copy the "
            f"file to {final} (`gen2d models fetch {model.name} --from FILE` checks and copies it)"
        )
    if urllib.parse.urlsplit(url).scheme not in {"http", "https"}:
        raise WeightsUnavailable(f"cannot download {model.name} from {shown}: only http and https URLs are fetched")
    cdir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.filename}.", suffix=".part", dir=cdir)
    tmp = Path(tmp_name)
    log.info("downloading %s from %s to %s", model.name, shown, final)
    h = hashlib.sha256()
    done = 0
    try:
        with os.fdopen(fd, "wb") as out:
            req = _request(url)
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                for block in iter(lambda: resp.read(_CHUNK), b""):
                    out.write(block)
                    h.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
        if total is not None and done != total:
            raise WeightsUnavailable(f"download of {model.name} from {shown} stopped after {done} of {total} bytes")
        if done == 0:
            raise WeightsUnavailable(f"{shown} returned an empty file for {model.name}")
    except WeightsError:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        why = (
            f"HTTP {exc.code} {exc.reason}"
            if isinstance(exc, urllib.error.HTTPError)
            else f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        )
        why = why.replace(url, shown).replace(_request(url).full_url, shown)  # a URL in the error stays redacted
        raise WeightsUnavailable(
            f"cannot download {model.name} from {shown} ({why}); check the connection, set GEN2D_MODELS_BASE_URL "
            f"to a mirror, or copy the file to {final}"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    got = h.hexdigest()
    path = _install(model, tmp, got, cdir, origin=f"downloaded from {shown}", what=f"the download from {shown}")
    log.info("%s: sha256 %s", model.name, got)
    return CachedWeights(model.name, path, got, "pinned" if model.sha256 else "recorded", shown, True, done)


def install_file(name: str, source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> CachedWeights:
    """Copy a local file (e.g. downloaded elsewhere, or in MatterSim's own cache) into gen2d's cache.

    It is checked like a download: against the pinned sha256, or the recorded one; without either its
    hash is recorded now.

    Raises
    ------
    WeightsUnavailable
        When ``source`` is not a file.
    ChecksumMismatch
        When it has the wrong sha256 (nothing is copied).
    """
    model = get_model(name)
    src = Path(source).expanduser()
    if not src.is_file():
        raise WeightsUnavailable(f"{src} is not a file")
    cdir = Path(cache_dir or _cache_dir())
    cdir.mkdir(parents=True, exist_ok=True)
    final = cdir / model.filename
    if final.is_file() and final.resolve() == src.resolve():
        return verify(name, cdir)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.filename}.", suffix=".part", dir=cdir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(src, tmp)
        got = _sha256_of(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    path = _install(model, tmp, got, cdir, origin=f"copied from {src}", what=f"the file {src}")
    return CachedWeights(
        model.name,
        path,
        got,
        "pinned" if model.sha256 else "recorded",
        redact_url(source_url(name)),
        False,
        path.stat().st_size,
    )


def status(name: str, cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """What the cache knows about ``name``, without hashing or downloading anything."""
    model = get_model(name)
    cdir = Path(cache_dir or _cache_dir())
    path = cdir / model.filename
    sha, how = expected_sha256(name, cdir)
    return {
        "name": model.name,
        "filename": model.filename,
        "cached": path.is_file(),
        "path": str(path),
        "sha256": sha,
        "sha256_source": how,
        "url": redact_url(source_url(name)),
        "source": model.source,
    }


__all__ = [
    "ChecksumMismatch",
    "CachedWeights",
    "MODELS",
    "ModelWeights",
    "OfflineError",
    "WeightsError",
    "WeightsUnavailable",
    "cache_path",
    "default_cache_dir",
    "expected_sha256",
    "fetch",
    "get_model",
    "install_file",
    "is_offline",
    "recorded_sha256",
    "redact_url",
    "register",
    "source_url",
    "status",
    "verify",
]
