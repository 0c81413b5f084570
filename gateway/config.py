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

import json
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from gateway.proxies import parse_networks

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


def _networks(value: Any) -> list[str]:
    values = _str_list(value)
    parse_networks(values)
    return values


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


# --- DIMSE and forwarding: tables of peers, destinations and rules ----------------------
# Given as TOML arrays of tables ([[dimse.peers]]) or, in the environment, as a JSON list.

DIMSE_SERVICES = ("echo", "store", "find", "move", "get")


def _float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _non_negative(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        number = convert(value)
        if number < 0:
            raise ValueError(f"expected zero or a positive number, got {value!r}")
        return number

    return check


def _port(value: Any) -> int:
    number = _int(value)
    if not 1 <= number <= 65535:
        raise ValueError(f"expected a TCP port (1-65535), got {value!r}")
    return number


def _ae_title(value: Any, *, wildcard: bool = False) -> str:
    text = str(value).strip()
    if wildcard and text == "*":
        return text
    if not text or len(text) > 16 or "\\" in text or not text.isascii() or not text.isprintable():
        raise ValueError(f"{value!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return text


def _text_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        value = [v for v in value.split(",")]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} must be a list of strings, got {value!r}")
    return [str(v).strip() for v in value if str(v).strip()]


def _tables(value: Any, what: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"expected a JSON list of {what}: {exc}") from None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, Mapping) for v in value):
        raise ValueError(f"expected a list of {what} (tables), got {value!r}")
    return [dict(v) for v in value]


def _check_keys(entry: dict[str, Any], index: int, what: str, allowed: set[str], required: set[str]) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{what} {index + 1}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(entry))
    if missing:
        raise ValueError(f"{what} {index + 1}: {missing[0]!r} is required")


def _peers(value: Any) -> list[dict[str, Any]]:
    """Calling AEs allowed to associate: ae_title ("*" = any), hosts, clinic, allow."""
    peers = []
    for i, entry in enumerate(_tables(value, "peers")):
        _check_keys(entry, i, "peer", {"ae_title", "host", "hosts", "clinic", "allow"}, {"ae_title"})
        try:
            hosts = _text_list(entry.get("hosts", []), "hosts") + _text_list(entry.get("host", []), "host")
            allow = [s.lower() for s in _text_list(entry.get("allow", list(DIMSE_SERVICES)), "allow")]
            if "all" in allow:
                allow = list(DIMSE_SERVICES)
            bad = [s for s in allow if s not in DIMSE_SERVICES]
            if bad:
                raise ValueError(f"unknown service {bad[0]!r} in allow (known: {', '.join(DIMSE_SERVICES)}, all)")
            clinic = str(entry.get("clinic", "default")).strip()
            if not clinic:
                raise ValueError("clinic must not be empty")
            peers.append({"ae_title": _ae_title(entry["ae_title"], wildcard=True), "hosts": hosts,
                          "clinic": clinic, "allow": [s for s in DIMSE_SERVICES if s in allow]})
        except ValueError as exc:
            raise ValueError(f"peer {i + 1}: {exc}") from None
    return peers


def _destinations(value: Any) -> list[dict[str, Any]]:
    """Remote AEs we connect to (C-MOVE destinations, forwarding targets): ae_title, host, port."""
    destinations = []
    seen: set[str] = set()
    for i, entry in enumerate(_tables(value, "destinations")):
        _check_keys(entry, i, "destination", {"ae_title", "host", "port"}, {"ae_title", "host", "port"})
        try:
            ae = _ae_title(entry["ae_title"])
            host = str(entry["host"]).strip()
            if not host:
                raise ValueError("host must not be empty")
            port = _port(entry["port"])
        except ValueError as exc:
            raise ValueError(f"destination {i + 1}: {exc}") from None
        if ae in seen:
            raise ValueError(f"destination {i + 1}: AE title {ae!r} is declared twice")
        seen.add(ae)
        destinations.append({"ae_title": ae, "host": host, "port": port})
    return destinations


def _forward_rules(value: Any) -> list[dict[str, Any]]:
    """Forwarding rules: name, to (destination AE titles), optional clinic/modalities/sop_classes filters."""
    rules = []
    for i, entry in enumerate(_tables(value, "forwarding rules")):
        _check_keys(entry, i, "forwarding rule", {"name", "to", "clinic", "modalities", "sop_classes"}, {"to"})
        try:
            to = [_ae_title(v) for v in _text_list(entry["to"], "to")]
            if not to:
                raise ValueError("'to' names no destination")
            rules.append({
                "name": str(entry.get("name") or f"rule{i + 1}").strip(),
                "to": to,
                "clinic": str(entry["clinic"]).strip() if entry.get("clinic") else "",
                "modalities": [m.upper() for m in _text_list(entry.get("modalities", []), "modalities")],
                "sop_classes": _text_list(entry.get("sop_classes", []), "sop_classes"),
            })
        except ValueError as exc:
            raise ValueError(f"forwarding rule {i + 1}: {exc}") from None
    return rules


def _ratio(value: Any) -> float:
    ratio = _float(value)
    if not 1 <= ratio <= 1000:
        raise ValueError(f"expected a compression ratio from 1 (lossless) to 1000, got {value!r}")
    return ratio


def _binning(value: Any) -> int:
    factor = _int(value)
    if not 1 <= factor <= 4:
        raise ValueError(f"expected a binning factor from 1 to 4, got {value!r}")
    return factor


def _preview_clinics(value: Any) -> list[dict[str, Any]]:
    """Per-clinic preview parameters: clinic, and compression_ratio and/or binning."""
    entries = []
    for i, entry in enumerate(_tables(value, "preview clinics")):
        _check_keys(entry, i, "preview clinic", {"clinic", "compression_ratio", "binning"}, {"clinic"})
        try:
            item = {"clinic": str(entry["clinic"]).strip()}
            if "compression_ratio" in entry:
                item["compression_ratio"] = _ratio(entry["compression_ratio"])
            if "binning" in entry:
                item["binning"] = _binning(entry["binning"])
        except ValueError as exc:
            raise ValueError(f"preview clinic {i + 1}: {exc}") from None
        entries.append(item)
    return entries


DEFAULT_SNAPSHOT_PRESETS = [
    {"name": "bone", "window": [150.0, 1800.0], "opacity": [[150.0, 0.0], [400.0, 0.04], [1000.0, 0.25], [2000.0, 0.6]]},
    {"name": "soft_tissue", "window": [-300.0, 300.0],
     "opacity": [[-500.0, 0.0], [-200.0, 0.01], [100.0, 0.04], [300.0, 0.08], [600.0, 0.0]]},
]


def _snapshot_presets(value: Any) -> list[dict[str, Any]]:
    """Presets of the 3D snapshot: name, window [low, high] (HU), opacity [[HU, alpha], ...]."""
    presets = []
    for i, entry in enumerate(_tables(value, "snapshot presets")):
        _check_keys(entry, i, "snapshot preset", {"name", "window", "opacity"}, {"name", "window", "opacity"})
        name = str(entry["name"]).strip()
        try:
            if not name or not all(c.isalnum() or c == "_" for c in name):
                raise ValueError(f"name {name!r} must be letters, digits and _")
            window = [float(v) for v in entry["window"]]
            if len(window) != 2 or not window[0] < window[1]:
                raise ValueError("window must be [low, high] with low < high")
            points = [[float(h), float(a)] for h, a in entry["opacity"]]
            if len(points) < 2 or any(b[0] <= a[0] for a, b in zip(points, points[1:])) or \
                    any(not 0 <= a <= 1 for _, a in points):
                raise ValueError("opacity must be two or more [HU, alpha] points, HU rising, alpha in 0-1")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"snapshot preset {i + 1}: {exc}") from None
        presets.append({"name": name, "window": window, "opacity": points})
    if len({p["name"] for p in presets}) != len(presets):
        raise ValueError("snapshot presets must have distinct names")
    return presets


def _snapshot_size(value: Any) -> int:
    size = _int(value)
    if not 256 <= size <= 512:
        raise ValueError(f"expected 256 to 512 pixels, got {value!r}")
    return size


def _thumbnail_max_age(value: Any) -> int:
    seconds = _int(value)
    if not 7 * 86400 <= seconds <= 30 * 86400:
        raise ValueError(f"expected 7 to 30 days in seconds (604800-2592000), got {value!r}")
    return seconds


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    convert: Callable[[Any], Any]
    help: str
    secret: bool = False


# --- production backends (storage.postgres_*, storage.s3_*) ------------------------------

# Storage classes whose objects can be read at once (archive classes need a restore first,
# which WADO-RS cannot wait for).
S3_STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR",
                      "REDUCED_REDUNDANCY", "EXPRESS_ONEZONE")


def _s3_sse(value: Any) -> str:
    text = str(value).strip()
    known = {"": "", "none": "", "aes256": "AES256", "aws:kms": "aws:kms", "aws:kms:dsse": "aws:kms:dsse"}
    if text.lower() not in known:
        raise ValueError(f"expected AES256, aws:kms, aws:kms:dsse or empty, got {value!r}")
    return known[text.lower()]


def _s3_storage_class(value: Any) -> str:
    text = str(value).strip().upper()
    if text and text not in S3_STORAGE_CLASSES:
        raise ValueError(f"expected one of {', '.join(S3_STORAGE_CLASSES)} or empty, got {value!r}")
    return text


def _s3_part_size(value: Any) -> int:
    number = _int(value)
    if not 5 * 1024**2 <= number <= 5 * 1024**3:
        raise ValueError(f"S3 parts are 5 MiB to 5 GiB, got {value!r}")
    return number


# --- authentication (auth.*) ---------------------------------------------------------------

# Asymmetric JWS algorithms only: HMAC ("HS256") would let anyone holding the public key sign.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def _jwt_algorithms(value: Any) -> list[str]:
    names = _str_list(value)
    by_upper = {a.upper(): a for a in JWT_ALGORITHMS}
    bad = [n for n in names if n.upper() not in by_upper]
    if bad:
        raise ValueError(f"{bad[0]!r} is not allowed: use asymmetric algorithms only ({', '.join(JWT_ALGORITHMS)})")
    if not names:
        raise ValueError("at least one algorithm is needed")
    return [by_upper[n.upper()] for n in names]


SETTINGS: tuple[Setting, ...] = (
    Setting("server.host", "127.0.0.1", str, "address the HTTP server binds"),
    Setting("server.port", 8042, _int, "HTTP port"),
    Setting("server.workers", 2, _positive(_int), "gunicorn worker processes"),
    Setting("server.threads", 8, _positive(_int), "threads per gunicorn worker"),
    Setting("server.timeout", 300, _positive(_int), "seconds a request may take before gunicorn restarts the worker"),
    Setting("server.keepalive", 75, _positive(_int), "seconds an idle kept-alive connection stays open (behind a load balancer: more than its idle timeout, e.g. 60 s)"),
    Setting("server.trusted_proxies", [], _networks, "addresses or CIDR networks of reverse proxies / load balancers whose X-Forwarded-For/-Proto/-Host/-Port are believed (comma separated); empty: none"),
    Setting("server.max_request_line", 8190, _positive(_int), "longest request line (method, URL, version) in bytes; longer: 414"),
    Setting("server.max_header_bytes", 8190, _positive(_int), "longest request header line in bytes; longer: 431"),
    Setting("server.max_headers", 100, _positive(_int), "most header lines of a request; more: 431"),
    Setting("server.public_url", "", str, "external base URL (scheme://host[:port]) used in RetrieveURL/BulkDataURI; empty: taken from each request"),
    Setting("storage.data_dir", "./gateway-data", str, "folder of the embedded stores (SQLite index, blob folder, staging)"),
    Setting("storage.blob_backend", "filesystem", str, "blob store entry point in group gateway.blob_stores"),
    Setting("storage.index_backend", "sqlite", str, "index store entry point in group gateway.index_stores"),
    Setting("storage.metadata_backend", "sql", str, "image metadata store entry point in group gateway.metadata_stores: sql (tables in the index database) or dynamodb"),
    Setting("storage.blob_dir", "", str, "filesystem blob store folder; empty: <data_dir>/blobs"),
    Setting("storage.sqlite_path", "", str, "SQLite index file; empty: <data_dir>/index.sqlite3"),
    Setting("storage.fsync", True, _bool, "fsync every blob before it is acknowledged (power-loss durability)"),
    Setting("ingest.duplicate_policy", "reject", _choice("reject", "replace"), "same SOP Instance UID with different bytes: reject (409 / 0x0111) or replace"),
    Setting("ingest.max_instance_bytes", 4 * 1024**3, _positive(_int), "largest single instance accepted, in bytes"),
    Setting("ingest.max_sequence_depth", 32, _positive(_int), "deepest nesting of sequences in an instance (an instance nested deeper is refused as invalid)"),
    Setting("dicomweb.cors_origins", ["*"], _str_list, "allowed CORS origins (comma separated); empty list disables CORS"),
    Setting("dicomweb.qido_max_limit", 10000, _positive(_int), "largest QIDO-RS page; larger limits are cut with a Warning header"),
    Setting("dicomweb.max_part_header_bytes", 16 * 1024, _positive(_int), "largest header block of one multipart part, in bytes (400 beyond, nothing stored)"),
    Setting("dicomweb.max_parts", 10000, _positive(_int), "most parts of one STOW-RS multipart body (413 beyond, nothing stored)"),
    Setting("dicomweb.qido_default_limit", 1000, _positive(_int), "QIDO-RS page size when the request gives no limit"),
    Setting("dicomweb.thumbnail_size", 128, _positive(_int), "edge of thumbnails in pixels when no viewport is asked"),
    Setting("metrics.token", "", str, "bearer token a Prometheus scraper sends to GET /metrics; empty: /metrics answers only to metrics.allow", secret=True),
    Setting("metrics.allow", ["127.0.0.1/32", "::1/128"], _networks, "addresses or CIDR networks that may read /metrics without metrics.token (comma separated)"),
    Setting("log.level", "info", _choice("debug", "info", "warning", "error"), "log level"),
    Setting("log.format", "text", _choice("text", "json"), "log line format"),
    Setting("dimse.enabled", True, _bool, "'gateway serve' also starts the DIMSE listener and the job worker (a child process)"),
    Setting("dimse.ae_title", "DENTALGW", _ae_title, "AE title of the DIMSE listener and of its outgoing associations"),
    Setting("dimse.host", "127.0.0.1", str, "address the DIMSE listener binds"),
    Setting("dimse.port", 11112, _port, "DIMSE port"),
    Setting("dimse.listeners", 1, _positive(_int), "listener processes sharing dimse.port (SO_REUSEPORT: the kernel spreads new associations over them, so that parallel C-STOREs use several cores); dimse.max_associations counts per process; more than 1 needs a fixed port"),
    Setting("dimse.max_associations", 32, _positive(_int), "simultaneous incoming associations; more are rejected (transient)"),
    Setting("dimse.max_pdu_size", 0, _non_negative(_int), "largest PDU the listener receives, in bytes; 0 = unlimited"),
    Setting("dimse.acse_timeout", 30.0, _positive(_float), "seconds to wait for association messages"),
    Setting("dimse.dimse_timeout", 120.0, _positive(_float), "seconds to wait for a DIMSE message (e.g. a C-STORE response)"),
    Setting("dimse.network_timeout", 300.0, _positive(_float), "seconds of silence before an association is closed"),
    Setting("dimse.connection_timeout", 10.0, _positive(_float), "seconds to wait when connecting to a remote AE (C-MOVE, forwarding)"),
    Setting("dimse.check_called_ae", False, _bool, "reject associations whose called AE title is not dimse.ae_title"),
    Setting("dimse.peers", [], _peers, "calling AEs allowed to associate: [[dimse.peers]] ae_title (\"*\" = any), hosts, clinic, allow = echo/store/find/move/get; others are rejected"),
    Setting("dimse.destinations", [], _destinations, "remote AEs for C-MOVE and forwarding: [[dimse.destinations]] ae_title, host, port"),
    Setting("dimse.find_max_results", 0, _non_negative(_int), "most C-FIND matches returned per request; 0 = all"),
    Setting("forward.rules", [], _forward_rules, "[[forward.rules]] name, to = [destination AE titles], optional clinic, modalities, sop_classes"),
    Setting("forward.retry_initial", 5.0, _positive(_float), "seconds before the first retry of a failed forward; doubles on each failure"),
    Setting("forward.retry_max", 600.0, _positive(_float), "longest wait between two retries, in seconds"),
    Setting("forward.max_attempts", 20, _positive(_int), "attempts after which a forward is marked failed (retry it with 'gateway forwards retry')"),
    Setting("forward.poll_interval", 1.0, _positive(_float), "seconds between two looks at the job queue for forwards (when idle)"),
    Setting("forward.batch_size", 50, _positive(_int), "forwards sent on one association"),
    Setting("forward.lease_seconds", 600, _positive(_int), "a claimed batch not finished in this time is claimed again by another worker"),
    Setting("upload.max_entry_bytes", 4 * 1024**3, _positive(_int), "largest entry a zip upload may unpack to, in bytes (413 beyond)"),
    Setting("upload.max_total_bytes", 64 * 1024**3, _positive(_int), "most bytes one uploaded archive may unpack to (413 beyond)"),
    Setting("upload.max_compression_ratio", 200.0, _positive(_float), "largest unpacked:packed ratio of an entry once it passed upload.ratio_check_after bytes (a zip bomb; 413 beyond)"),
    Setting("upload.ratio_check_after", 8 * 1024**2, _positive(_int), "bytes an entry unpacks to before its compression ratio is checked"),
    Setting("upload.max_entries", 100_000, _positive(_int), "most entries one uploaded archive may hold (413 beyond)"),
    Setting("upload.max_central_directory", 32 * 1024**2, _positive(_int), "largest central directory of an uploaded archive, in bytes (it is read to find symlink entries)"),
    Setting("upload.expire_after", 86400, _positive(_int), "seconds an upload stays open after its last archive; then it expires"),
    Setting("previews.enabled", True, _bool, "make previews and thumbnails of every series (the previews job); false: none are made (those made before are still served)"),
    Setting("previews.settle_seconds", 10.0, _non_negative(_float), "a series stored instance by instance (STOW-RS, C-STORE) gets its previews once no new instance came for this many seconds (zip uploads: at completion)"),
    Setting("previews.compression_ratio", 10.0, _ratio, "JPEG 2000 compression ratio of preview slices, relative to 16-bit samples (1 = lossless)"),
    Setting("previews.binning", 2, _binning, "preview slices are the means of binning × binning pixel blocks (1-4; 2: 512² → 256²)"),
    Setting("previews.clinics", [], _preview_clinics, "per-clinic preview parameters: [[previews.clinics]] clinic, compression_ratio, binning"),
    Setting("previews.threads", 2, _positive(_int), "threads decoding and encoding the slices of one previews job (use the cores)"),
    Setting("previews.thumbnail_quality", 85, _positive(_int), "JPEG quality of thumbnails (1-100)"),
    Setting("previews.snapshot_size", 512, _snapshot_size, "longer edge of 3D snapshots in pixels (256-512)"),
    Setting("previews.snapshot_presets", DEFAULT_SNAPSHOT_PRESETS, _snapshot_presets, "3D snapshot presets: [[previews.snapshot_presets]] name, window = [low, high] HU, opacity = [[HU, alpha], ...] (the transfer function)"),
    Setting("previews.preview_max_age", 300, _non_negative(_int), "Cache-Control max-age of preview streams, in seconds (short: a new version replaces them)"),
    Setting("previews.thumbnail_max_age", 7 * 86400, _thumbnail_max_age, "Cache-Control max-age of thumbnails, in seconds (7 to 30 days)"),
    Setting("previews.lease_seconds", 600, _positive(_int), "a previews job not heard of for this long is taken over by another worker"),
    Setting("previews.poll_interval", 1.0, _positive(_float), "seconds between two looks at the job queue for previews (when idle)"),
    Setting("previews.retry_initial", 10.0, _positive(_float), "seconds before a failed previews job is tried again; doubles on each failure"),
    Setting("previews.retry_max", 600.0, _positive(_float), "longest wait between two tries of a previews job, in seconds"),
    Setting("previews.max_attempts", 5, _positive(_int), "tries after which a previews job goes to the dead letter"),
    Setting("masks.max_bytes", 16 * 1024**2, _positive(_int), "largest mask PNG a signed upload URL is made for, in bytes (413 beyond)"),
    Setting("masks.max_batch", 5000, _positive(_int), "most masks one signed-url request may name (413 beyond)"),
    Setting("worker.embedded", True, _bool, "'gateway serve' runs a job worker beside the HTTP server (in the DIMSE child, or in a child of its own when some kind of job has work); false: only 'gateway worker' processes run jobs"),
    Setting("worker.threads", 1, _positive(_int), "threads of each job worker ('gateway worker', and beside the DIMSE listener), each claiming jobs on its own"),
    Setting("storage.postgres_dsn", "", str, "PostgreSQL connection string for storage.index_backend = postgresql (postgresql://user@host:5432/db or key=value)", secret=True),
    Setting("storage.postgres_password", "", str, "PostgreSQL password when it is not in the DSN (else PGPASSWORD or ~/.pgpass)", secret=True),
    Setting("storage.postgres_pool_min", 1, _positive(_int), "PostgreSQL connections each process keeps open"),
    Setting("storage.postgres_pool_max", 10, _positive(_int), "most PostgreSQL connections per process (size it to server.threads; mind max_connections)"),
    Setting("storage.postgres_pool_timeout", 5.0, _positive(_float), "seconds a request waits for a PostgreSQL connection before it gets 503"),
    Setting("storage.postgres_connect_timeout", 5, _positive(_int), "seconds to wait when opening a PostgreSQL connection"),
    Setting("storage.postgres_statement_timeout", 30.0, _non_negative(_float), "seconds after which a PostgreSQL statement is cancelled (503); 0 = no limit"),
    Setting("storage.dynamodb_table", "gateway-metadata", str, "DynamoDB table of the dynamodb metadata store (create it with 'gateway metadata-table create')"),
    Setting("storage.dynamodb_region", "", str, "DynamoDB region; empty: storage.s3_region, else from the AWS environment or profile"),
    Setting("storage.dynamodb_endpoint_url", "", str, "DynamoDB-compatible endpoint, e.g. http://dynamodb-local:8000; empty: AWS"),
    Setting("storage.dynamodb_access_key_id", "", str, "access key for DynamoDB; empty: the default AWS credential chain"),
    Setting("storage.dynamodb_secret_access_key", "", str, "secret key of storage.dynamodb_access_key_id", secret=True),
    Setting("storage.dynamodb_max_attempts", 5, _positive(_int), "attempts per DynamoDB request on throttling and transient errors"),
    Setting("metadata.inline_annotations_max", 64 * 1024, _positive(_int), "annotation bodies of a metadata record larger than this many bytes (JSON) go to the blob store, the record keeps a reference"),
    Setting("metadata.max_annotations_bytes", 16 * 1024**2, _positive(_int), "largest annotations body of one metadata record, in bytes (413 beyond)"),
    Setting("storage.s3_bucket", "", str, "bucket of the s3 blob store (storage.blob_backend = s3); it must exist"),
    Setting("storage.s3_prefix", "", str, "key prefix inside the bucket, e.g. 'pacs/' to share a bucket"),
    Setting("storage.s3_region", "", str, "region; empty: from the AWS environment or profile"),
    Setting("storage.s3_endpoint_url", "", str, "S3-compatible endpoint (MinIO, Ceph, ...), e.g. http://minio:9000; empty: AWS"),
    Setting("storage.s3_addressing_style", "auto", _choice("auto", "path", "virtual"), "bucket in the host name (virtual) or in the path (path, for most S3-compatible servers)"),
    Setting("storage.s3_access_key_id", "", str, "access key; empty: the default AWS credential chain (environment, profile, instance or task role)"),
    Setting("storage.s3_secret_access_key", "", str, "secret key of storage.s3_access_key_id", secret=True),
    Setting("storage.s3_sse", "", _s3_sse, "server-side encryption of new objects: AES256, aws:kms, aws:kms:dsse; empty: the bucket's default"),
    Setting("storage.s3_sse_kms_key_id", "", str, "KMS key (id, ARN or alias) for aws:kms; empty: the AWS managed key"),
    Setting("storage.s3_storage_class", "", _s3_storage_class, "storage class of new objects (STANDARD, STANDARD_IA, INTELLIGENT_TIERING, ...); empty: STANDARD"),
    Setting("storage.s3_multipart_threshold", 16 * 1024**2, _s3_part_size, "objects of this many bytes or more are uploaded in parts"),
    Setting("storage.s3_multipart_chunksize", 16 * 1024**2, _s3_part_size, "bytes per uploaded part"),
    Setting("storage.s3_max_concurrency", 4, _positive(_int), "parts of one object uploaded in parallel"),
    Setting("storage.s3_max_attempts", 5, _positive(_int), "attempts per S3 request, with exponential backoff, on throttling and transient errors"),
    Setting("storage.s3_retry_mode", "standard", _choice("standard", "adaptive", "legacy"), "botocore retry mode; adaptive also rate-limits the client when throttled"),
    Setting("storage.s3_connect_timeout", 5.0, _positive(_float), "seconds to wait when connecting to S3"),
    Setting("storage.s3_read_timeout", 60.0, _positive(_float), "seconds to wait for S3 to answer or send more bytes"),
    Setting("storage.s3_max_pool_connections", 32, _positive(_int), "HTTP connections to S3 per process"),
    Setting("storage.s3_read_ahead", 1024 * 1024, _positive(_int), "bytes fetched by one ranged GET when an object is read (header parsing, frames)"),
    Setting("storage.s3_presign_expiry", 3600, _positive(_int), "default lifetime of presigned URLs, in seconds (at most 604800)"),
    Setting("auth.provider", "local", str, "authentication provider: entry point in group gateway.auth_providers (local, oidc)"),
    Setting("auth.key_dir", "", str, "folder of the local issuer's signing keys and the URL-signing keys; empty: <data_dir>/auth"),
    Setting("auth.local_issuer", "dental-pacs-gateway", str, "iss of the tokens the local issuer signs ('gateway token')"),
    Setting("auth.local_audience", "dental-pacs-gateway", str, "aud of the tokens the local issuer signs"),
    Setting("auth.local_algorithm", "ES256", lambda v: _choice("es256", "rs256")(v).upper(), "algorithm of the local issuer's keys (ES256 or RS256), used when a key is created"),
    Setting("auth.token_max_ttl", 30 * 86400, _positive(_int), "longest lifetime 'gateway token --ttl' may give, in seconds"),
    Setting("auth.leeway", 30, _non_negative(_int), "seconds of clock skew allowed on exp, nbf and iat"),
    Setting("auth.token_cache_seconds", 60.0, _non_negative(_float), "a verified bearer token is trusted again without a signature check for at most this many seconds, never past its exp nor after its key is retired or replaced; 0: verify every request"),
    Setting("auth.oidc_issuer", "", str, "OIDC issuer URL (Keycloak: https://host/realms/REALM); its tokens' iss must equal it"),
    Setting("auth.oidc_jwks_url", "", str, "JWKS URL; empty: jwks_uri of the issuer's /.well-known/openid-configuration"),
    Setting("auth.oidc_audience", [], _str_list, "accepted aud values (comma separated); a token must name one of them"),
    Setting("auth.oidc_algorithms", ["RS256", "ES256"], _jwt_algorithms, "accepted JWS algorithms (asymmetric only)"),
    Setting("auth.oidc_client_id", "", str, "client id whose resource_access.<client>.roles are roles too"),
    Setting("auth.oidc_clinic_claim", "clinicId", str, "claim (dotted path) holding the clinic"),
    Setting("auth.oidc_user_claim", "sub", str, "claim (dotted path) naming the user"),
    Setting("auth.oidc_roles_claims", ["realm_access.roles", "resource_access.{client_id}.roles"], _str_list, "claims (dotted paths, {client_id} = auth.oidc_client_id) holding role lists"),
    Setting("auth.oidc_jwks_min_refresh", 30.0, _non_negative(_float), "a token with an unknown kid refetches the JWKS at most once per this many seconds"),
    Setting("auth.oidc_jwks_max_age", 3600.0, _positive(_float), "seconds after which the JWKS is fetched again"),
    Setting("auth.oidc_http_timeout", 5.0, _positive(_float), "seconds to wait for the discovery document and the JWKS"),
    Setting("auth.patient_role", False, _bool, "honour the patient role (read what is shared with the patient); off: the role is ignored"),
    Setting("auth.operator_clinics", [], _str_list, "clinics whose admins administer every clinic (audit of all clinics, failed logins, all forwards)"),
    Setting("auth.share_default_ttl", 7 * 86400, _positive(_int), "lifetime of a share created without expires_at or ttl, in seconds"),
    Setting("auth.share_max_ttl", 365 * 86400, _positive(_int), "longest lifetime of a share, in seconds"),
    Setting("auth.url_signing_keys", "", str, "HMAC keys of signed URLs: 'kid:base64key,kid2:base64key' (first signs, all verify); empty: generated in auth.key_dir", secret=True),
    Setting("auth.signed_url_ttl", 600, _positive(_int), "default lifetime of signed URLs, in seconds"),
    Setting("auth.signed_url_max_ttl", 3600, _positive(_int), "longest lifetime of signed URLs, in seconds"),
    Setting("audit.durable_reads", False, _bool, "successful reads and searches are committed waiting for the disk too, as changes and refusals always are (slower; when false, a power loss or a database crash may lose the last second of them)"),
    Setting("audit.read_window", 300, _non_negative(_int), "a principal's successful reads (and stores) of one study are logged once per this many seconds per process; 0: every request"),
    Setting("auth.share_link_url", "", str, "the URL a link share answers, with {study}, {series} and {token}, e.g. https://viewer.example/viewer?StudyInstanceUIDs={study}&token={token} (OHIF); empty: the study's DICOMweb metadata URL with ?share="),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper().replace(".", "__")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # an inline table
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def example_toml() -> str:
    """A ``gateway.toml`` of every setting at its default, each with its help as a comment
    (``gateway config example``): loading it gives the defaults."""
    lines = ["# gateway.toml: every setting at its default (gateway config example). Give this file with",
             "# GATEWAY_CONFIG=/path/gateway.toml; each setting is also GATEWAY_<SECTION>__<NAME> in the",
             "# environment, which wins over the file."]
    tables: dict[str, list[Setting]] = {}
    for setting in SETTINGS:  # a table once, its settings in the order of the code
        tables.setdefault(setting.name.split(".", 1)[0], []).append(setting)
    for table, settings in tables.items():
        lines += ["", f"[{table}]"]
        for setting in settings:
            _example_lines(lines, setting)
    return "\n".join(lines) + "\n"


def _example_lines(lines: list[str], setting: Setting) -> None:
    key = setting.name.split(".", 1)[1]
    env = "GATEWAY_" + setting.name.upper().replace(".", "__")
    lines.append(f"# {setting.help} ({env}{'; a secret: prefer the environment' if setting.secret else ''})")
    lines.append(f"{key} = {_toml_value(setting.default)}")


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
