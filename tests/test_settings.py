"""gen2d.settings: precedence (environment > settings file > default), secrets masked, callers use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from gen2d import settings as settings_mod
from gen2d.settings import CHECKOUT_DATA_DIR, DEFAULT_STORE_URI, Gen2dSettings, get_settings, reset_settings

ENV_NAMES = [f.validation_alias for f in Gen2dSettings.model_fields.values()] + ["GEN2D_CONFIG_FILE"]
SECRET = "mp-key-that-must-never-print-1234567890"


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    """No gen2d variable set and no user settings file: only what a test sets counts."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(settings_mod, "DEFAULT_CONFIG_FILE", tmp_path / "no-such-settings.yaml")
    reset_settings()
    yield monkeypatch
    reset_settings()


def test_defaults(clean_env):
    s = get_settings()
    assert s.data_dir == CHECKOUT_DATA_DIR
    assert s.store == DEFAULT_STORE_URI == "monty://./gen2d-data"
    assert s.cache_dir == Path.home() / ".cache" / "gen2d"
    assert s.offline is False
    assert s.mp_api_key is None and s.mattersim_checkpoint is None


def test_env_over_file_over_default(clean_env, tmp_path):
    cfg = tmp_path / "settings.yaml"
    cfg.write_text("store: monty:///from/file\ncache_dir: /from/file/cache\noffline: true\n")
    clean_env.setenv("GEN2D_CONFIG_FILE", str(cfg))
    s = get_settings()
    assert (s.store, s.cache_dir, s.offline) == ("monty:///from/file", Path("/from/file/cache"), True)
    assert s.data_dir == CHECKOUT_DATA_DIR  # not in the file: the default

    clean_env.setenv("GEN2D_STORE", "mongodb://from-env/db")
    clean_env.setenv("GEN2D_OFFLINE", "0")
    s = get_settings()  # the cache notices the changed environment
    assert s.store == "mongodb://from-env/db" and s.offline is False
    assert s.cache_dir == Path("/from/file/cache")

    clean_env.setenv("GEN2D_STORE", "")  # empty counts as unset: the file wins again
    assert get_settings().store == "monty:///from/file"


def test_default_settings_file_is_read_when_present(clean_env, tmp_path):
    cfg = tmp_path / "user-settings.yaml"
    cfg.write_text("data_dir: ~/gen2d-data\n")
    clean_env.setattr(settings_mod, "DEFAULT_CONFIG_FILE", cfg)
    reset_settings()
    assert get_settings().data_dir == Path.home() / "gen2d-data"
    assert get_settings().public_dict()["config_file"] == str(cfg)


def test_settings_file_errors_are_named(clean_env, tmp_path):
    clean_env.setenv("GEN2D_CONFIG_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError, match="GEN2D_CONFIG_FILE"):
        get_settings()
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_directory: /x\n")
    clean_env.setenv("GEN2D_CONFIG_FILE", str(bad))
    with pytest.raises(ValueError, match="data_directory"):
        get_settings()
    bad.write_text("offline: perhaps\n")
    with pytest.raises(ValidationError):
        Gen2dSettings()


def test_secret_never_printed(clean_env, tmp_path):
    clean_env.setenv("MP_API_KEY", SECRET)
    s = get_settings()
    assert s.mp_api_key.get_secret_value() == SECRET
    for text in (repr(s), str(s), s.model_dump_json(), json.dumps(s.public_dict())):
        assert SECRET not in text
    result = CliRunner().invoke(_app(), ["settings", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["mp_api_key"] == "**********" and SECRET not in result.output
    result = CliRunner().invoke(_app(), ["settings"])
    assert result.exit_code == 0 and SECRET not in result.output and "GEN2D_DATA" in result.output


def test_keyword_arguments_use_field_names(clean_env):
    s = Gen2dSettings(data_dir="/d", store="memory://")
    assert s.data_dir == Path("/d") and s.store == "memory://"
    with pytest.raises(ValueError, match="unknown"):
        Gen2dSettings(data="/d")


def test_callers_read_the_settings(clean_env, tmp_path):
    # every place that used to read os.environ now follows the settings (here: the settings file)
    from gen2d_synth_csllm.scorer import CSLLMSettings
    from gen2d_synth_pu.datasets import data_dir as pu_data_dir

    from gen2d.data.readers import data_dir
    from gen2d.diffusion.train import default_data_dir
    from gen2d.hull import EntriesFileProvider, MLIPPrototypesProvider
    from gen2d.hull.references import _mp_api_key
    from gen2d.store import resolve_store_uri

    cfg = tmp_path / "settings.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path}/data\nstore: memory://fromfile\ncache_dir: {tmp_path}/cache\n"
        f"mp_api_key: {SECRET}\ncsllm_base: {tmp_path}/base\nmattersim_checkpoint: {tmp_path}/m.pth\n"
    )
    cfg.chmod(0o600)  # a key in a file others can read draws a warning (tested below)
    clean_env.setenv("GEN2D_CONFIG_FILE", str(cfg))
    assert data_dir() == default_data_dir() == pu_data_dir() == tmp_path / "data"
    assert EntriesFileProvider().path == tmp_path / "data" / "mp_elemental_reference_entries.json.gz"
    assert resolve_store_uri() == "memory://fromfile" and resolve_store_uri("memory://x") == "memory://x"
    assert MLIPPrototypesProvider(calculator=object()).cache_dir == tmp_path / "cache" / "references"
    assert _mp_api_key(None) == SECRET and _mp_api_key("explicit") == "explicit"
    assert CSLLMSettings.from_env_and().base_model_path == tmp_path / "base"
    assert CSLLMSettings.from_env_and(base_model_path="/given").base_model_path == Path("/given")
    import gen2d_mattersim

    with pytest.raises(Exception, match="m.pth"):
        gen2d_mattersim.resolve_checkpoint()


def test_offline_mp_api_refuses_before_the_network(clean_env):
    from gen2d.hull import MPAPIProvider, ReferenceUnavailable

    clean_env.setenv("GEN2D_OFFLINE", "true")
    with pytest.raises(ReferenceUnavailable) as err:
        MPAPIProvider(api_key="x" * 32).entries(["Mo", "S"])
    assert err.value.reason == "offline"


def _app():
    from gen2d.cli import app

    return app


def test_example_settings_file_loads(clean_env):
    example = Path(__file__).resolve().parents[1] / "configs" / "settings.example.yaml"
    clean_env.setenv("GEN2D_CONFIG_FILE", str(example))
    s = get_settings()
    assert s.data_dir == Path.home() / "gen2d" / "shared" / "data"
    assert s.store == DEFAULT_STORE_URI and s.offline is False and s.mp_api_key is None


def test_a_key_in_a_readable_settings_file_is_warned_about(clean_env, tmp_path):
    cfg = tmp_path / "settings.yaml"
    cfg.write_text(f"mp_api_key: {SECRET}\n")
    cfg.chmod(0o644)
    clean_env.setenv("GEN2D_CONFIG_FILE", str(cfg))
    with pytest.warns(UserWarning, match="chmod 600") as caught:
        get_settings()
    assert all(SECRET not in str(w.message) for w in caught)
    cfg.chmod(0o600)
    reset_settings()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_settings().mp_api_key.get_secret_value() == SECRET
