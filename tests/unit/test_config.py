"""Settings: defaults, TOML file, environment, validation, and ``gateway config show``."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import gateway.cli
import gateway.config
from gateway.cli import main
from gateway.config import SETTINGS, Setting, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No GATEWAY_* variable of the developer's shell, and no ./gateway.toml, leaks in."""
    for key in list(os.environ):
        if key.startswith("GATEWAY_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- layers ----------------------------------------------------------------------------------


def test_defaults():
    settings = load_settings(environ={})
    assert dict(settings) == {s.name: s.default for s in SETTINGS}
    assert set(settings.sources.values()) == {"default"}
    assert settings["server.port"] == 8042
    assert settings["ingest.duplicate_policy"] == "reject"
    assert settings["dicomweb.cors_origins"] == ["*"]
    assert settings.data_dir == (Path.cwd() / "gateway-data").resolve()
    assert settings.path("storage.blob_dir", "blobs") == settings.data_dir / "blobs"
    assert settings.path("storage.sqlite_path", "index.sqlite3") == settings.data_dir / "index.sqlite3"


def test_default_values_pass_their_own_conversion():
    for setting in SETTINGS:
        assert setting.convert(setting.default) == setting.default, setting.name


def test_toml_file_from_gateway_config(tmp_path):
    path = write_toml(tmp_path / "x.toml", """
[server]
port = 9000
workers = 4
[storage]
data_dir = "/srv/pacs"
fsync = false
[dicomweb]
cors_origins = ["https://viewer.example", "https://other.example"]
""")
    settings = load_settings(environ={"GATEWAY_CONFIG": str(path)})
    assert settings["server.port"] == 9000
    assert settings["server.workers"] == 4
    assert settings["storage.fsync"] is False
    assert settings["dicomweb.cors_origins"] == ["https://viewer.example", "https://other.example"]
    assert settings.data_dir == Path("/srv/pacs")
    assert settings.sources["server.port"] == f"file {path}"
    assert settings.sources["server.host"] == "default"


def test_gateway_toml_in_working_directory():
    write_toml(Path("gateway.toml"), '[ingest]\nduplicate_policy = "replace"\n')
    settings = load_settings(environ={})
    assert settings["ingest.duplicate_policy"] == "replace"
    assert settings.sources["ingest.duplicate_policy"] == "file gateway.toml"


def test_gateway_config_wins_over_working_directory_file(tmp_path):
    write_toml(Path("gateway.toml"), "[server]\nport = 1111\nworkers = 3\n")
    other = write_toml(tmp_path / "other.toml", "[server]\nport = 2222\n")
    settings = load_settings(environ={"GATEWAY_CONFIG": str(other)})
    assert settings["server.port"] == 2222
    assert settings["server.workers"] == 2  # ./gateway.toml is not read at all


def test_config_file_argument(tmp_path):
    path = write_toml(tmp_path / "arg.toml", "[server]\nport = 3333\n")
    assert load_settings(environ={}, config_file=path)["server.port"] == 3333


def test_environment_overrides_toml(tmp_path):
    path = write_toml(tmp_path / "x.toml", '[server]\nport = 9000\nhost = "0.0.0.0"\n')
    settings = load_settings(environ={"GATEWAY_CONFIG": str(path), "GATEWAY_SERVER__PORT": "9100"})
    assert settings["server.port"] == 9100
    assert settings.sources["server.port"] == "environment"
    assert settings["server.host"] == "0.0.0.0"  # from the file: the layers merge per setting


def test_overrides_win_over_environment():
    settings = load_settings(overrides={"server.port": 7000}, environ={"GATEWAY_SERVER__PORT": "9100"})
    assert settings["server.port"] == 7000
    assert settings.sources["server.port"] == "overrides"


def test_process_environment_is_the_default(monkeypatch):
    monkeypatch.setenv("GATEWAY_SERVER__THREADS", "16")
    assert load_settings()["server.threads"] == 16


@pytest.mark.parametrize("env, name, value", [
    ({"GATEWAY_STORAGE__DATA_DIR": "/data/x"}, "storage.data_dir", "/data/x"),
    ({"GATEWAY_INGEST__DUPLICATE_POLICY": "REPLACE"}, "ingest.duplicate_policy", "replace"),
    ({"GATEWAY_INGEST__MAX_INSTANCE_BYTES": "1048576"}, "ingest.max_instance_bytes", 1048576),
    ({"GATEWAY_DICOMWEB__CORS_ORIGINS": "http://a, http://b,"}, "dicomweb.cors_origins", ["http://a", "http://b"]),
    ({"GATEWAY_DICOMWEB__CORS_ORIGINS": ""}, "dicomweb.cors_origins", []),
    ({"GATEWAY_DICOMWEB__QIDO_MAX_LIMIT": "500"}, "dicomweb.qido_max_limit", 500),
    ({"GATEWAY_STORAGE__FSYNC": "no"}, "storage.fsync", False),
    ({"GATEWAY_STORAGE__FSYNC": "0"}, "storage.fsync", False),
    ({"GATEWAY_STORAGE__FSYNC": "On"}, "storage.fsync", True),
    ({"GATEWAY_LOG__LEVEL": "debug"}, "log.level", "debug"),
    ({"GATEWAY_SERVER__PUBLIC_URL": "https://pacs.example"}, "server.public_url", "https://pacs.example"),
])
def test_double_underscore_nesting(env, name, value):
    settings = load_settings(environ=env)
    assert settings[name] == value
    assert settings.sources[name] == "environment"


def test_other_variables_are_ignored():
    settings = load_settings(environ={"PATH": "/bin", "GATEWAY_CONFIG_DIR_HINT": "x", "HOME": "/root"})
    assert set(settings.sources.values()) == {"default"}


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("env, names", [
    ({"GATEWAY_SERVER__PORT": "abc"}, ["GATEWAY_SERVER__PORT", "'abc'"]),
    ({"GATEWAY_INGEST__DUPLICATE_POLICY": "maybe"}, ["GATEWAY_INGEST__DUPLICATE_POLICY", "reject, replace"]),
    ({"GATEWAY_SERVER__WORKERS": "0"}, ["GATEWAY_SERVER__WORKERS", "positive"]),
    ({"GATEWAY_SERVER__THREADS": "-1"}, ["GATEWAY_SERVER__THREADS"]),
    ({"GATEWAY_STORAGE__FSYNC": "maybe"}, ["GATEWAY_STORAGE__FSYNC", "true or false"]),
    ({"GATEWAY_LOG__FORMAT": "xml"}, ["GATEWAY_LOG__FORMAT", "text, json"]),
])
def test_invalid_environment_value_names_the_variable(env, names):
    with pytest.raises(SettingsError) as info:
        load_settings(environ=env)
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize("toml, names", [
    ('[server]\nport = "abc"\n', ["server.port"]),
    ("[server]\nport = true\n", ["server.port"]),  # a TOML boolean is no port number
    ('[ingest]\nduplicate_policy = "maybe"\n', ["ingest.duplicate_policy"]),
    ("[server]\nworkers = 0\n", ["server.workers"]),
])
def test_invalid_file_value_names_the_setting_and_file(tmp_path, toml, names):
    path = write_toml(tmp_path / "bad.toml", toml)
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"GATEWAY_CONFIG": str(path)})
    for name in [*names, str(path)]:
        assert name in str(info.value)


def test_invalid_override_names_the_setting():
    with pytest.raises(SettingsError, match="server.workers in overrides"):
        load_settings(overrides={"server.workers": 0}, environ={})


def test_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)


@pytest.mark.parametrize("key", ["GATEWAY_SERVER__PROT", "GATEWAY_X__Y", "GATEWAY_STORAGE__DATA__DIR"])
def test_unknown_environment_setting_is_rejected(key):
    with pytest.raises(SettingsError, match=key):
        load_settings(environ={key: "1"})


def test_unknown_file_setting_is_rejected(tmp_path):
    path = write_toml(tmp_path / "x.toml", "[server]\nprot = 1\n")
    with pytest.raises(SettingsError, match=r"unknown setting 'server\.prot'"):
        load_settings(environ={"GATEWAY_CONFIG": str(path)})


def test_unknown_override_is_rejected():
    with pytest.raises(SettingsError, match="server.prot"):
        load_settings(overrides={"server.prot": 1}, environ={})


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings(environ={"GATEWAY_CONFIG": str(tmp_path / "nope.toml")})


def test_invalid_toml(tmp_path):
    path = write_toml(tmp_path / "x.toml", "[server\nport = 1\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(environ={"GATEWAY_CONFIG": str(path)})


def test_settings_are_read_only():
    settings = load_settings(environ={})
    with pytest.raises(TypeError):
        settings["server.port"] = 1  # type: ignore[index]


# --- secrets and `gateway config show` ------------------------------------------------------------


@pytest.fixture
def secret_setting(monkeypatch):
    secret = Setting("auth.client_secret", "", str, "OIDC client secret", secret=True)
    settings = (*gateway.config.SETTINGS, secret)
    monkeypatch.setattr(gateway.config, "SETTINGS", settings)
    monkeypatch.setattr(gateway.config, "_BY_NAME", {s.name: s for s in settings})
    monkeypatch.setattr(gateway.cli, "SETTINGS", settings)  # the CLI holds its own reference
    return secret


def test_secret_is_masked(secret_setting):
    settings = load_settings(environ={"GATEWAY_AUTH__CLIENT_SECRET": "s3cr3t"})
    assert settings["auth.client_secret"] == "s3cr3t"  # the code gets the value
    assert settings.masked()["auth.client_secret"] == "********"
    assert load_settings(environ={}).masked()["auth.client_secret"] == ""  # nothing to hide


def run_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env or {}, catch_exceptions=False)


def test_config_show_lists_every_setting_with_its_source(tmp_path):
    path = write_toml(tmp_path / "x.toml", "[server]\nworkers = 5\n")
    result = run_cli("config", "show", env={"GATEWAY_CONFIG": str(path), "GATEWAY_SERVER__PORT": "9001"})
    assert result.exit_code == 0, result.output
    lines = {line.split(" = ", 1)[0]: line for line in result.output.splitlines() if " = " in line}
    assert set(lines) == {s.name for s in SETTINGS}
    assert lines["server.port"].startswith("server.port = 9001 ")
    assert "[environment; GATEWAY_SERVER__PORT]" in lines["server.port"]
    assert f"[file {path}; GATEWAY_SERVER__WORKERS]" in lines["server.workers"]
    assert "[default; GATEWAY_SERVER__HOST]" in lines["server.host"]


def test_config_show_json():
    result = run_cli("config", "show", "--json", env={"GATEWAY_DICOMWEB__CORS_ORIGINS": "http://a,http://b"})
    assert result.exit_code == 0, result.output
    values = json.loads(result.output)
    assert set(values) == {s.name for s in SETTINGS}
    assert values["dicomweb.cors_origins"] == ["http://a", "http://b"]
    assert values["server.port"] == 8042
    assert values["storage.fsync"] is True


def test_config_show_masks_secrets(secret_setting):
    env = {"GATEWAY_AUTH__CLIENT_SECRET": "s3cr3t"}
    text = run_cli("config", "show", env=env)
    assert text.exit_code == 0, text.output
    assert "s3cr3t" not in text.output
    assert "auth.client_secret = '********'" in text.output
    as_json = run_cli("config", "show", "--json", env=env)
    assert "s3cr3t" not in as_json.output
    assert json.loads(as_json.output)["auth.client_secret"] == "********"


def test_config_show_reports_invalid_settings():
    result = run_cli("config", "show", env={"GATEWAY_SERVER__PORT": "abc"})
    assert result.exit_code == 1
    assert "GATEWAY_SERVER__PORT" in result.output
    assert "Traceback" not in result.output
