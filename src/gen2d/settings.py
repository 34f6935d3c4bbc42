"""gen2d's settings: where its data, store, cache and model files are, from one place.

Every path or key that gen2d reads from the environment is a field of :class:`Gen2dSettings`. A value
comes from, highest first:

1. the environment (``GEN2D_DATA``, ``GEN2D_STORE``, ... and ``MP_API_KEY``; an empty variable counts
   as unset);
2. a YAML file: ``$GEN2D_CONFIG_FILE``, else ``~/.config/gen2d/settings.yaml`` when it exists, with the
   field names as keys (``data_dir: /scratch/gen2d-data``; ``configs/settings.example.yaml`` shows them all);
3. the defaults below.

Code asks :func:`get_settings`; it is cached and re-read when one of those variables or the YAML file
changes, so a job started with another ``GEN2D_STORE`` sees it. ``gen2d settings`` prints the result.

Examples
--------
>>> from gen2d.settings import get_settings
>>> get_settings().store  # doctest: +SKIP
'monty://./gen2d-data'
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "CONFIG_FILE_ENV",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_STORE_URI",
    "CHECKOUT_DATA_DIR",
    "Gen2dSettings",
    "get_settings",
    "reset_settings",
]

#: environment variable naming the YAML settings file
CONFIG_FILE_ENV = "GEN2D_CONFIG_FILE"
#: settings file read when ``GEN2D_CONFIG_FILE`` is unset (only if it exists)
DEFAULT_CONFIG_FILE = Path("~/.config/gen2d/settings.yaml")
#: candidate store when nothing else is configured: an embedded montydb folder in the working directory
DEFAULT_STORE_URI = "monty://./gen2d-data"
#: ``shared/data`` beside the repository checkout (src/gen2d/settings.py -> <checkout>/../shared/data):
#: the reference datasets of a development checkout. An installed gen2d sets ``GEN2D_DATA`` instead.
CHECKOUT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class Gen2dSettings(BaseSettings):
    """Paths, store and keys of one gen2d installation.

    Each field names its environment variable in ``validation_alias``; the YAML file uses the field
    name. The Materials Project key is a :class:`~pydantic.SecretStr`: it prints as ``**********`` in
    ``repr``, logs and ``model_dump_json``; code that needs it calls ``get_secret_value()``.
    """

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True)

    data_dir: Path = Field(
        CHECKOUT_DATA_DIR,
        validation_alias="GEN2D_DATA",
        description="folder of the reference datasets (2dmatpedia_filtered.db, "
        "mc2d_258_exfoliable.json, mp_elemental_reference_entries.json.gz, ...); "
        "default: shared/data beside the repository checkout",
    )
    store: str = Field(
        DEFAULT_STORE_URI,
        validation_alias="GEN2D_STORE",
        description="candidate store URI (monty://, mongodb://, memory://)",
    )
    cache_dir: Path = Field(
        Path("~/.cache/gen2d"),
        validation_alias="GEN2D_CACHE",
        description="cache folder; MLIP reference phases go to <cache_dir>/references",
    )
    offline: bool = Field(
        False,
        validation_alias="GEN2D_OFFLINE",
        description="never reach the network (the mp-api reference set then refuses "
        "chemical systems it has not cached)",
    )
    models_base_url: str | None = Field(
        None,
        validation_alias="GEN2D_MODELS_BASE_URL",
        description="a mirror serving the model files of `gen2d models fetch` under their upstream names",
    )
    cp2k_command: str | None = Field(
        None,
        validation_alias="GEN2D_CP2K_COMMAND",
        description="command that starts CP2K in shell mode, e.g. "
        "'mpirun -np 32 cp2k.psmp -s'; default: cp2k_shell on PATH",
    )
    cp2k_data_dir: Path | None = Field(
        None,
        validation_alias="GEN2D_CP2K_DATA_DIR",
        description="folder of CP2K's BASIS_MOLOPT, GTH_POTENTIALS, dftd3.dat; "
        "default: CP2K_DATA_DIR, /usr/share/cp2k or the conda prefix",
    )
    cp2k_threads: int = Field(
        1,
        validation_alias="GEN2D_CP2K_THREADS",
        description="OpenMP threads of each CP2K process when a job does not say",
    )
    threads: int | None = Field(
        None,
        ge=1,
        validation_alias="GEN2D_THREADS",
        description="torch CPU threads of a gen2d process; default: OMP_NUM_THREADS when set, else the "
        "cores that are idle when it starts (see gen2d.threads: spinning OpenMP threads on busy cores cost 5x)",
    )
    mlip_batch_memory_gb: float = Field(
        2.0,
        gt=0,
        validation_alias="GEN2D_MLIP_BATCH_MEMORY_GB",
        description="largest transient memory of one batched MLIP evaluation in a lockstep relaxation (GB); a "
        "batch whose graphs would need more is evaluated in chunks (same results). CHGNet on CPU needs about "
        "25 kB per three-body angle and 16 kB per bond (scripts/bench_mlip_batch_memory.py); on a large GPU, raise it",
    )
    dft_dir: Path | None = Field(
        None, validation_alias="GEN2D_DFT_DIR", description="DFT restart files and frames; default <cache_dir>/dft"
    )
    mattersim_checkpoint: str | None = Field(
        None,
        validation_alias="GEN2D_MATTERSIM_CHECKPOINT",
        description="MatterSim model name or local .pth file; default: the plugin's 1M model",
    )
    csllm_base: Path | None = Field(
        None, validation_alias="GEN2D_CSLLM_BASE", description="folder of CSLLM's base causal LM"
    )
    csllm_adapter: Path | None = Field(
        None, validation_alias="GEN2D_CSLLM_ADAPTER", description="folder of CSLLM's synthesizability LoRA adapter"
    )
    csllm_tokenizer: Path | None = Field(
        None, validation_alias="GEN2D_CSLLM_TOKENIZER", description="CSLLM tokenizer folder; default: the base model's"
    )
    mp_api_key: SecretStr | None = Field(
        None,
        validation_alias="MP_API_KEY",
        description="Materials Project API key (mp-api reference set); falls back to pymatgen's PMG_MAPI_KEY",
    )

    def __init__(self, **values: Any):
        # keyword arguments use field names (data_dir=...), like the YAML file
        super().__init__(**_by_alias(values))

    @field_validator(
        "data_dir", "cache_dir", "csllm_base", "csllm_adapter", "csllm_tokenizer", "cp2k_data_dir", "dft_dir"
    )
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(value).expanduser()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ):
        return init_settings, env_settings, _yaml_source(settings_cls, config_file())

    def public_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values, secrets masked, plus the settings file that was read."""
        doc = self.model_dump(mode="json")
        doc["config_file"] = str(config_file()) if config_file() else None
        return doc


def _by_alias(values: dict[str, Any], where: str = "Gen2dSettings") -> dict[str, Any]:
    """``values`` keyed by field name, re-keyed by environment variable (the fields' validation aliases)."""
    aliases = {name: f.validation_alias for name, f in Gen2dSettings.model_fields.items()}
    unknown = set(values) - set(aliases) - set(aliases.values())
    if unknown:
        raise ValueError(f"unknown gen2d setting(s) {sorted(unknown)} in {where}; known: {sorted(aliases)}")
    return {aliases.get(k, k): v for k, v in values.items()}


def _yaml_source(settings_cls: type[BaseSettings], path: Path | None) -> InitSettingsSource:
    """The settings file as a source keyed like the environment, so one validation path serves both."""
    data: Any = {}
    if path is not None:
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"gen2d settings file {path} must be a mapping of setting: value")
        if data.get("mp_api_key") and path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.warn(
                f"{path} holds mp_api_key and can be read by other users; run: chmod 600 {path}", stacklevel=2
            )
    return InitSettingsSource(settings_cls, _by_alias(data, str(path)))


def config_file() -> Path | None:
    """The YAML settings file in force: ``$GEN2D_CONFIG_FILE``, or the default file if it exists.

    Raises
    ------
    FileNotFoundError
        When ``GEN2D_CONFIG_FILE`` names a file that does not exist (a typo should not pass silently).
    """
    named = os.environ.get(CONFIG_FILE_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{CONFIG_FILE_ENV}={named} does not exist")
        return path
    default = DEFAULT_CONFIG_FILE.expanduser()
    return default if default.is_file() else None


def _env_names() -> tuple[str, ...]:
    return (CONFIG_FILE_ENV,) + tuple(f.validation_alias for f in Gen2dSettings.model_fields.values())


_cache: tuple[Any, Gen2dSettings] | None = None


def _cache_key() -> tuple[Any, ...]:
    env = tuple(os.environ.get(name) for name in _env_names())
    path = config_file()
    stamp = (str(path), path.stat().st_mtime_ns) if path else None
    return env, stamp


def get_settings() -> Gen2dSettings:
    """The resolved :class:`Gen2dSettings`, built once and rebuilt when the environment or file changes."""
    global _cache
    key = _cache_key()
    if _cache is None or _cache[0] != key:
        _cache = (key, Gen2dSettings())
    return _cache[1]


def reset_settings() -> None:
    """Forget the cached settings (tests that change the environment or the settings file call this)."""
    global _cache
    _cache = None
