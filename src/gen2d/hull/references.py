"""Reference-set providers from data: ``entries-file`` (a JSON of entries) and ``mp-api`` (Materials Project).

Each gives the MP2020-corrected reference entries of a chemical system (:class:`ReferenceProvider`)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from gen2d.hull.errors import ReferenceUnavailable
from gen2d.settings import get_settings


class ReferenceProvider(Protocol):
    """Gives the MP2020-corrected reference entries of a chemical system.

    ``energy_source`` is ``"mlip"`` when references are computed with the candidate's own MLIP
    (self-consistent) and ``"dft"`` otherwise.
    """

    name: str
    energy_source: str

    def entries(self, elements: Iterable[str]) -> list[ComputedEntry]: ...

    def describe(self) -> dict[str, Any]: ...


def _decode_entry(d: dict[str, Any]) -> ComputedEntry:
    if d.get("@class") == "ComputedStructureEntry":
        return ComputedStructureEntry.from_dict(d)
    return ComputedEntry.from_dict(d)


def _entry_elements(entry: ComputedEntry) -> set[str]:
    return {el.symbol for el in entry.composition.elements}


class EntriesFileProvider:
    """Reference entries from a JSON(.gz) file of ``ComputedEntry`` / ``ComputedStructureEntry`` dicts.

    The file is a list of entry dicts or a mapping name -> entry dict (as
    ``mp_elemental_reference_entries.json.gz``). Entries are used as they are: they must already carry
    MP2020 corrections (MP's own entries do).
    """

    name = "entries-file"

    def __init__(self, path: str | os.PathLike | None = None):
        if path is None:
            path = get_settings().data_dir / "mp_elemental_reference_entries.json.gz"
        self.path = Path(path)
        self._entries: list[ComputedEntry] | None = None
        self._sha256: str | None = None

    def _load(self) -> list[ComputedEntry]:
        if self._entries is None:
            if not self.path.is_file():
                raise ReferenceUnavailable("reference_file_missing", f"entries file {self.path} does not exist")
            raw_bytes = self.path.read_bytes()
            self._sha256 = hashlib.sha256(raw_bytes).hexdigest()
            text = gzip.decompress(raw_bytes) if raw_bytes[:2] == b"\x1f\x8b" else raw_bytes
            try:
                raw = json.loads(text)
                items = raw.values() if isinstance(raw, dict) else raw
                self._entries = [_decode_entry(d) for d in items]
            except Exception as exc:
                raise ReferenceUnavailable(
                    "reference_file_invalid", f"cannot read entries from {self.path}: {exc}"
                ) from exc
        return self._entries

    @property
    def energy_source(self) -> str:
        sources = {e.data.get("energy_source", "dft") for e in self._load()}
        return sources.pop() if len(sources) == 1 else "mixed"

    def models(self) -> set[str]:
        """MLIP checkpoint hashes the file's entries were computed with (empty for DFT entries)."""
        return {
            e.data.get("gen2d_checkpoint_sha256") for e in self._load() if e.data.get("energy_source") == "mlip"
        } - {None}

    def entries(self, elements: Iterable[str]) -> list[ComputedEntry]:
        wanted = set(elements)
        return [e for e in self._load() if _entry_elements(e) <= wanted]

    def describe(self) -> dict[str, Any]:
        self._load()
        return {
            "provider": self.name,
            "path": str(self.path),
            "sha256": self._sha256,
            "n_entries": len(self._entries or []),
            "energy_source": self.energy_source,
        }


def _mp_api_key(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    key = get_settings().mp_api_key
    if key is not None:
        return key.get_secret_value()
    try:
        from pymatgen.core import SETTINGS

        return SETTINGS.get("PMG_MAPI_KEY")
    except Exception:  # pragma: no cover - settings file unreadable
        return None


class MPAPIProvider:
    """Materials Project entries (GGA/GGA+U mixing, MP2020-corrected by MP) through ``mp_api``.

    Needs the ``mp-api`` package, an API key (argument, ``MP_API_KEY`` or pymatgen's
    ``PMG_MAPI_KEY``) and internet. Results are cached per chemical system in ``store`` (a connected
    maggma ``Store``) so a chemical system is fetched once.
    """

    name = "mp-api"
    energy_source = "dft"

    def __init__(self, api_key: str | None = None, store: Any = None, thermo_type: str = "GGA_GGA+U"):
        self.api_key = _mp_api_key(api_key)
        self.store = store
        self.thermo_type = thermo_type

    def _cache_key(self, chemsys: str) -> str:
        return f"mp-api:{self.thermo_type}:{chemsys}"

    def entries(self, elements: Iterable[str]) -> list[ComputedEntry]:
        elements = sorted(set(elements))
        chemsys = "-".join(elements)
        if self.store is not None:
            doc = self.store.query_one({"ref_key": self._cache_key(chemsys)})
            if doc:
                return [_decode_entry(d) for d in doc["entries"]]
        if get_settings().offline:
            raise ReferenceUnavailable(
                "offline",
                f"GEN2D_OFFLINE is set and chemical system {chemsys} is not "
                "cached: provider mp-api would need the network",
            )
        if not self.api_key:
            raise ReferenceUnavailable(
                "mp_api_key_missing",
                "provider mp-api needs a Materials Project API key: set MP_API_KEY "
                "(or PMG_MAPI_KEY in ~/.config/.pmgrc.yaml) and have internet access",
            )
        try:
            from mp_api.client import MPRester
        except ImportError as exc:
            raise ReferenceUnavailable(
                "mp_api_not_installed", f"provider mp-api needs the mp-api package ({exc}); pip install mp-api"
            ) from exc
        try:
            with MPRester(self.api_key) as mpr:
                found = mpr.get_entries_in_chemsys(elements, additional_criteria={"thermo_types": [self.thermo_type]})
        except Exception as exc:
            raise ReferenceUnavailable(
                "mp_api_unreachable", f"Materials Project query for {chemsys} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if self.store is not None:
            self.store.update(
                [
                    {
                        "ref_key": self._cache_key(chemsys),
                        "provider": self.name,
                        "chemsys": chemsys,
                        "entries": [e.as_dict() for e in found],
                    }
                ],
                key="ref_key",
            )
        return list(found)

    def describe(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "thermo_type": self.thermo_type,
            "energy_source": self.energy_source,
            "cached_in_store": self.store is not None,
        }
