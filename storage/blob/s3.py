"""Blob store on Amazon S3 or an S3-compatible server (MinIO, Ceph RGW, ...), through boto3.

- Object ``{prefix}{key}`` in one bucket; keys are checked like the filesystem store's.
- :meth:`S3BlobStore.put_file` uploads the staged file with boto3's transfer manager:
  one PUT below ``multipart_threshold``, a multipart upload of ``multipart_chunksize``
  parts (``max_concurrency`` in flight) above it, read from the file part by part (never
  the whole object in memory). S3 makes the object visible only once the PUT or the
  CompleteMultipartUpload succeeds; a failed multipart upload is aborted.
- :meth:`S3BlobStore.open` gives a seekable reader doing ranged GETs with a read-ahead
  buffer: parsing a header costs one request, a frame one request, and sequential reads
  fetch growing ranges (up to 8 MiB) so a streamed retrieve costs few requests.
- Every request is signed with SigV4 and retried by botocore with exponential backoff on
  throttling (SlowDown, 503) and transient errors; a read cut mid-body is resumed.
  Failures raise :class:`storage.errors.Unavailable` (503 / 0xA700 at the front doors).
- Server-side encryption and the storage class of new objects come from settings;
  presigned GET/PUT URLs let clients move bytes without passing through the gateway.
"""
from __future__ import annotations

import base64
import io
import logging
import mimetypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.errors import ObjectNotFound, StorageError, Unavailable
from storage.records import PresignedRequest

logger = logging.getLogger(__name__)

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_MAX_FETCH = 8 * 1024 * 1024  # longest ranged GET of sequential reads
_READ_ATTEMPTS = 3  # a body cut off mid-way is fetched again from where it broke
_PUT_THREADS = 8  # objects uploaded at once by put_files (within the client's connection pool)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 limit
mimetypes.add_type("application/dicom", ".dcm")


def check_key(key: str) -> str:
    """The rules of every blob store: relative, '/'-separated, no empty, '.' or '..' parts."""
    parts = key.split("/") if isinstance(key, str) else [""]
    if not key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid blob key {key!r}")
    return key


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3BlobStore:
    def __init__(self, bucket: str, *, staging: Path | str, prefix: str = "", region: str | None = None,
                 endpoint_url: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, addressing_style: str = "auto", sse: str = "",
                 sse_kms_key_id: str = "", storage_class: str = "", multipart_threshold: int = 16 * 1024**2,
                 multipart_chunksize: int = 16 * 1024**2, max_concurrency: int = 4, max_attempts: int = 5,
                 retry_mode: str = "standard", connect_timeout: float = 5.0, read_timeout: float = 60.0,
                 max_pool_connections: int = 32, read_ahead: int = 1024 * 1024, presign_expiry: int = 3600):
        if not bucket:
            raise ValueError("no S3 bucket (setting storage.s3_bucket)")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.endpoint_url = endpoint_url or None
        self.read_ahead = read_ahead
        self.presign_expiry = presign_expiry
        self.put_args: dict[str, str] = {}
        if sse:
            self.put_args["ServerSideEncryption"] = sse
            if sse.startswith("aws:kms") and sse_kms_key_id:
                self.put_args["SSEKMSKeyId"] = sse_kms_key_id
        if storage_class:
            self.put_args["StorageClass"] = storage_class
        self._session_args = {"region_name": region or None, "aws_access_key_id": access_key_id or None,
                              "aws_secret_access_key": secret_access_key or None}
        self._config = Config(
            signature_version="s3v4",  # a custom endpoint would otherwise presign with SigV2
            retries={"max_attempts": max_attempts, "mode": retry_mode},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
            max_pool_connections=max_pool_connections, s3={"addressing_style": addressing_style},
            user_agent_extra="dental-pacs-gateway",
        )
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=multipart_chunksize,
                                       max_concurrency=max_concurrency, use_threads=True)
        self._client_obj = None
        self._client_pid = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "S3BlobStore":
        if not settings["storage.s3_bucket"]:
            raise ValueError("storage.blob_backend is 's3' but storage.s3_bucket is empty")
        return cls(
            settings["storage.s3_bucket"], staging=settings.data_dir / "staging",
            prefix=settings["storage.s3_prefix"], region=settings["storage.s3_region"],
            endpoint_url=settings["storage.s3_endpoint_url"],
            access_key_id=settings["storage.s3_access_key_id"],
            secret_access_key=settings["storage.s3_secret_access_key"],
            addressing_style=settings["storage.s3_addressing_style"], sse=settings["storage.s3_sse"],
            sse_kms_key_id=settings["storage.s3_sse_kms_key_id"],
            storage_class=settings["storage.s3_storage_class"],
            multipart_threshold=settings["storage.s3_multipart_threshold"],
            multipart_chunksize=settings["storage.s3_multipart_chunksize"],
            max_concurrency=settings["storage.s3_max_concurrency"],
            max_attempts=settings["storage.s3_max_attempts"], retry_mode=settings["storage.s3_retry_mode"],
            connect_timeout=settings["storage.s3_connect_timeout"],
            read_timeout=settings["storage.s3_read_timeout"],
            max_pool_connections=settings["storage.s3_max_pool_connections"],
            read_ahead=settings["storage.s3_read_ahead"], presign_expiry=settings["storage.s3_presign_expiry"],
        )

    # --- plumbing ----------------------------------------------------------------------
    @property
    def client(self):
        """The boto3 client of this process (clients are thread-safe; one per process after fork)."""
        client, pid = self._client_obj, os.getpid()
        if client is not None and self._client_pid == pid:
            return client
        with self._lock:
            if self._client_obj is None or self._client_pid != pid:
                session = boto3.session.Session(**self._session_args)
                self._client_obj = session.client("s3", endpoint_url=self.endpoint_url, config=self._config)
                self._client_pid = pid
            return self._client_obj

    def object_name(self, key: str) -> str:
        """The S3 key of a blob key."""
        return self.prefix + check_key(key)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    # --- the BlobStore protocol --------------------------------------------------------
    def staging_dir(self) -> Path:
        return self.staging

    def put_file(self, key: str, path: Path) -> None:
        name = self.object_name(key)
        path = Path(path)
        path.stat()  # a missing source is the caller's error (FileNotFoundError), not the store's
        extra = dict(self.put_args)
        extra["ContentType"] = mimetypes.guess_type(key)[0] or "application/octet-stream"
        try:
            self.client.upload_file(str(path), self.bucket, name, ExtraArgs=extra, Config=self.transfer)
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise Unavailable(f"cannot write blob {self._where(key)}: {exc}") from exc
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def put_files(self, items: Sequence[tuple[str, Path]]) -> list[Exception | None]:
        """Several uploads at once (each one request or a multipart upload): S3 answers each
        in tens of milliseconds but takes many in parallel."""
        def put(item: tuple[str, Path]) -> Exception | None:
            try:
                self.put_file(*item)
            except (StorageError, ValueError, OSError) as exc:
                return exc
            return None

        if len(items) <= 1:
            return [put(item) for item in items]
        with ThreadPoolExecutor(min(_PUT_THREADS, len(items)), thread_name_prefix="s3-put") as pool:
            return list(pool.map(put, items))

    def sync_staged(self, path: Path) -> None:
        """Nothing: the staged file is uploaded, not kept."""

    def open(self, key: str) -> "S3ObjectReader":
        name = self.object_name(key)
        reader = S3ObjectReader(self.client, self.bucket, name, read_ahead=self.read_ahead, label=self._where(key))
        reader.load_head()
        return reader

    def delete(self, key: str) -> None:
        name = self.object_name(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return
            raise Unavailable(f"cannot delete blob {self._where(key)}: {exc}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"cannot delete blob {self._where(key)}: {exc}") from exc

    def exists(self, key: str) -> bool:
        name = self.object_name(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=name)
            return True
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise Unavailable(f"cannot look up blob {self._where(key)}: {exc}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"cannot look up blob {self._where(key)}: {exc}") from exc

    def keys(self, prefix: str = "") -> Iterator[str]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                           Prefix=self.prefix + prefix)
            for page in pages:
                for item in page.get("Contents", ()):
                    yield item["Key"][len(self.prefix):]
        except (BotoCoreError, ClientError) as exc:
            raise Unavailable(f"cannot list s3://{self.bucket}/{self.prefix}{prefix}: {exc}") from exc

    def ping(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise Unavailable(f"S3 bucket {self.bucket} unusable: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            client, self._client_obj = self._client_obj, None
        if client is not None and self._client_pid == os.getpid():
            client.close()

    # --- optional capabilities -----------------------------------------------------------
    def _expiry(self, expires_in: int | None) -> int:
        seconds = self.presign_expiry if expires_in is None else int(expires_in)
        if not 1 <= seconds <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"presigned URLs live 1 to {MAX_PRESIGN_SECONDS} seconds, not {seconds}")
        return seconds

    def presigned_get_url(self, key: str, *, expires_in: int | None = None, download_name: str | None = None,
                          content_type: str | None = None) -> str:
        """A URL that GETs the object (ranges allowed) until it expires; no request is sent."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_name(key)}
        if download_name:
            params["ResponseContentDisposition"] = f'attachment; filename="{download_name}"'
        if content_type:
            params["ResponseContentType"] = content_type
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self._expiry(expires_in))

    def presigned_put(self, key: str, *, expires_in: int | None = None, content_type: str | None = None,
                      content_length: int | None = None, sha256: str | None = None) -> PresignedRequest:
        """A PUT that stores one object (up to 5 GB) under ``key``, with this store's encryption
        and storage class; the client must send the returned headers unchanged. The content
        type, and when given the exact length and the SHA-256 (``x-amz-checksum-sha256``, which
        S3 checks against the body), are signed: S3 refuses a PUT whose headers differ."""
        content_type = content_type or mimetypes.guess_type(key)[0] or "application/octet-stream"
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_name(key), "ContentType": content_type,
                                  **self.put_args}
        headers = {"Content-Type": content_type}
        if content_length is not None:
            params["ContentLength"] = int(content_length)
            headers["Content-Length"] = str(int(content_length))
        if sha256 is not None:
            params["ChecksumSHA256"] = headers["x-amz-checksum-sha256"] = \
                base64.b64encode(bytes.fromhex(sha256)).decode()
        seconds = self._expiry(expires_in)
        url = self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=seconds)
        names = {"ServerSideEncryption": "x-amz-server-side-encryption",
                 "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
                 "StorageClass": "x-amz-storage-class"}
        for param, header in names.items():
            if param in self.put_args:
                headers[header] = self.put_args[param]
        return PresignedRequest(url, "PUT", headers, seconds)


class S3ObjectReader(io.RawIOBase):
    """A seekable, read-only file object over one S3 object, read with ranged GETs.

    A read outside the buffer fetches at least ``read_ahead`` bytes; reads that continue
    where the previous fetch ended double the fetch size up to 8 MiB. Reads are pinned to
    the ETag seen first, so that a concurrent overwrite cannot mix two versions.
    """

    def __init__(self, client, bucket: str, name: str, *, read_ahead: int = 1024 * 1024, label: str = ""):
        super().__init__()
        self._client = client
        self.bucket = bucket
        self.key = name
        self.label = label or f"s3://{bucket}/{name}"
        self.read_ahead = max(1, read_ahead)
        self.size = 0
        self.etag: str | None = None
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self._next_fetch = self.read_ahead
        self.requests = 0  # GETs sent (for tests and benchmarks)

    # --- fetching ------------------------------------------------------------------------
    def _fail(self, exc: Exception, what: str) -> StorageError:
        if isinstance(exc, ClientError):
            code = _code(exc)
            if code in _NOT_FOUND:
                return ObjectNotFound(self.label)
            if code in ("PreconditionFailed", "412"):
                return StorageError(f"{self.label} was overwritten while being read")
        return Unavailable(f"cannot {what} {self.label}: {exc}")

    def load_head(self) -> None:
        """First GET: the object's size and ETag, and its first bytes (most reads start there)."""
        try:
            self.requests += 1
            response = self._client.get_object(Bucket=self.bucket, Key=self.key,
                                               Range=f"bytes=0-{self.read_ahead - 1}")
        except ClientError as exc:
            if _code(exc) in ("InvalidRange", "416"):  # an empty object has no byte 0
                self._head_only()
                return
            raise self._fail(exc, "read") from exc
        except BotoCoreError as exc:
            raise self._fail(exc, "read") from exc
        self.etag = response.get("ETag")
        content_range = response.get("ContentRange")
        try:
            if content_range:  # "bytes 0-1023/5000"
                self.size = int(content_range.rsplit("/", 1)[1])
                self._buf = response["Body"].read()
            else:  # the server ignored Range: it sends the whole object; keep the start only
                self.size = int(response["ContentLength"])
                self._buf = response["Body"].read(self.read_ahead)
                response["Body"].close()
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "read") from exc
        self._buf_start = 0

    def _head_only(self) -> None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.key)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc, "read") from exc
        self.size, self.etag = int(head["ContentLength"]), head.get("ETag")

    def _get(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object, resuming a body that breaks off."""
        parts: list[bytes] = []
        got = 0
        for attempt in range(1, _READ_ATTEMPTS + 1):
            args: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key,
                                    "Range": f"bytes={start + got}-{end - 1}"}
            if self.etag:
                args["IfMatch"] = self.etag
            try:
                self.requests += 1
                body = self._client.get_object(**args)["Body"]
                while got < end - start:
                    chunk = body.read(min(1024 * 1024, end - start - got))
                    if not chunk:
                        break
                    parts.append(chunk)
                    got += len(chunk)
                if got >= end - start:
                    return b"".join(parts)
                raise StorageError(f"{self.label} ended at byte {start + got}, expected {end}")
            except ClientError as exc:
                raise self._fail(exc, "read") from exc
            except BotoCoreError as exc:  # connection reset, timeout, truncated body
                if attempt == _READ_ATTEMPTS:
                    raise self._fail(exc, "read") from exc
                logger.info("ranged read of %s broke off at byte %d, resuming: %s", self.label, start + got, exc)
        raise AssertionError("unreachable")

    # --- io.RawIOBase ------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, b) -> int:
        self._checkClosed()
        view = memoryview(b).cast("B")
        wanted = min(len(view), max(0, self.size - self._pos))
        done = 0
        while done < wanted:
            pos = self._pos
            offset = pos - self._buf_start
            if 0 <= offset < len(self._buf):  # served from the buffer
                n = min(wanted - done, len(self._buf) - offset)
                view[done:done + n] = self._buf[offset:offset + n]
            else:
                sequential = pos == self._buf_start + len(self._buf)
                self._next_fetch = min(self._next_fetch * 2, _MAX_FETCH) if sequential else self.read_ahead
                rest = wanted - done
                if rest >= self._next_fetch:  # a large read goes straight into the caller's buffer
                    data = self._get(pos, pos + rest)
                    n = len(data)
                    view[done:done + n] = data
                    self._buf, self._buf_start = b"", pos + n
                else:
                    self._buf = self._get(pos, min(self.size, pos + self._next_fetch))
                    self._buf_start = pos
                    continue
            done += n
            self._pos += n
        return done

    def readall(self) -> bytes:
        rest = max(0, self.size - self._pos)
        out = bytearray(rest)
        n = self.readinto(out)
        return bytes(out[:n])

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        out = bytearray(min(size, max(0, self.size - self._pos)))
        n = self.readinto(out)
        return bytes(out[:n])

    def close(self) -> None:
        self._buf = b""
        super().close()
