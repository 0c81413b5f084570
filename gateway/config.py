"""Settings: environment variables over an optional TOML file over defaults.

Every setting has a dotted name (``storage.data_dir``). It is read, in order of
precedence, from

1. the environment: ``GATEWAY_`` + the name upper-cased with ``__`` for each dot
   (``GATEWAY_STORAGE__DATA_DIR``);
2. a TOML file: ``GATEWAY_CONFIG`` if set, else ``./gateway.toml`` if present
   (``[storage] data_dir = "..."``);
3. the defaults below.

Invalid values fail at start-up with a :class:`SettingsError` naming the setting.
"""
from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

logger = logging.getLogger(__name__)

ENV_PREFIX = "GATEWAY_"
CONFIG_ENV = "GATEWAY_CONFIG"


class SettingsError(ValueError):
    """A setting has a value the gateway cannot use."""


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _str_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return text

    return convert


def _positive(convert: Callable[[Any], int]) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        number = convert(value)
        if number <= 0:
            raise ValueError(f"expected a positive number, got {value!r}")
        return number

    return check


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    convert: Callable[[Any], Any]
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("server.host", "127.0.0.1", str, "address the HTTP server binds"),
    Setting("server.port", 8042, _int, "HTTP port"),
    Setting("server.workers", 2, _positive(_int), "gunicorn worker processes"),
    Setting("server.threads", 8, _positive(_int), "threads per gunicorn worker"),
    Setting("server.timeout", 300, _positive(_int), "seconds a request may take before gunicorn restarts the worker"),
    Setting("server.public_url", "", str, "external base URL (scheme://host[:port]) used in RetrieveURL/BulkDataURI; empty: taken from each request"),
    Setting("storage.data_dir", "./gateway-data", str, "folder of the embedded stores (SQLite index, blob folder, staging)"),
    Setting("storage.blob_backend", "filesystem", str, "blob store entry point in group gateway.blob_stores"),
    Setting("storage.index_backend", "sqlite", str, "index store entry point in group gateway.index_stores"),
    Setting("storage.blob_dir", "", str, "filesystem blob store folder; empty: <data_dir>/blobs"),
    Setting("storage.sqlite_path", "", str, "SQLite index file; empty: <data_dir>/index.sqlite3"),
    Setting("storage.fsync", True, _bool, "fsync every blob before it is acknowledged (power-loss durability)"),
    Setting("ingest.duplicate_policy", "reject", _choice("reject", "replace"), "same SOP Instance UID with different bytes: reject (409 / 0x0111) or replace"),
    Setting("ingest.max_instance_bytes", 4 * 1024**3, _positive(_int), "largest single instance accepted, in bytes"),
    Setting("dicomweb.cors_origins", ["*"], _str_list, "allowed CORS origins (comma separated); empty list disables CORS"),
    Setting("dicomweb.qido_max_limit", 10000, _positive(_int), "largest QIDO-RS page; larger limits are cut with a Warning header"),
    Setting("dicomweb.qido_default_limit", 1000, _positive(_int), "QIDO-RS page size when the request gives no limit"),
    Setting("dicomweb.thumbnail_size", 128, _positive(_int), "edge of thumbnails in pixels when no viewport is asked"),
    Setting("log.level", "INFO", _choice("debug", "info", "warning", "error"), "log level"),
    Setting("log.format", "text", _choice("text", "json"), "log line format"),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper().replace(".", "__")


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return _flatten(tomllib.load(fh))
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from exc


class Settings(Mapping[str, Any]):
    """The effective settings: a read-only mapping of dotted names to values."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]):
        self._values = values
        self.sources = sources

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def data_dir(self) -> Path:
        return Path(self["storage.data_dir"]).expanduser().resolve()

    def path(self, name: str, default_under_data_dir: str) -> Path:
        """A path setting; empty means ``<data_dir>/<default_under_data_dir>``."""
        value = self[name]
        return Path(value).expanduser().resolve() if value else self.data_dir / default_under_data_dir

    def masked(self) -> dict[str, Any]:
        return {
            name: ("********" if _BY_NAME[name].secret and value else value)
            for name, value in self._values.items()
        }


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike | None = None,
) -> Settings:
    """Build the effective settings; ``overrides`` (dotted names) win over everything."""
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, dict[str, Any]]] = []

    path = config_file or environ.get(CONFIG_ENV)
    if path:
        layers.append((f"file {path}", _read_toml(Path(path))))
    elif Path("gateway.toml").is_file():
        layers.append(("file gateway.toml", _read_toml(Path("gateway.toml"))))

    env_values = {}
    known_env = {_env_name(s.name): s.name for s in SETTINGS}
    for key, value in environ.items():
        if key in known_env:
            env_values[known_env[key]] = value
        elif key.startswith(ENV_PREFIX) and "__" in key:
            raise SettingsError(f"unknown setting {key}: known ones are listed by 'gateway config show'")
    layers.append(("environment", env_values))
    if overrides:
        layers.append(("overrides", dict(overrides)))

    values = {s.name: s.default for s in SETTINGS}
    sources = {s.name: "default" for s in SETTINGS}
    for source, layer in layers:
        for name, raw in layer.items():
            setting = _BY_NAME.get(name)
            if setting is None:
                raise SettingsError(f"unknown setting {name!r} in {source}")
            try:
                values[name] = setting.convert(raw)
            except (TypeError, ValueError) as exc:
                where = _env_name(name) if source == "environment" else f"{name} in {source}"
                raise SettingsError(f"invalid setting {where}: {exc}") from None
            sources[name] = source
    return Settings(values, sources)
