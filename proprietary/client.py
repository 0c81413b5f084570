"""A Python client of the fast API: upload whole studies as a streamed zip, download them back,
follow an upload, read a series' preview stream into a numpy volume. On ``requests``; nothing of the server is imported, so it works
against any gateway.

    client = GatewayClient("https://pacs.example", token)
    report = client.upload(["/data/ct-2024-05-06"], expected=500)
    client.download(report.studies[0], Path("out"), unzip=True)

Uploads zip on the fly (``stream-zip``, entries stored, their CRC-32 computed first), so
nothing is written to disk. One upload is sent as a few archives at once (``parallel``): the
server reads each archive in one request, on one core, so several keep its cores busy. A
dropped connection is resumed: the client reads the upload's listing and sends new archives of
the entries it does not show yet (re-sending one is a harmless duplicate). Downloads resume with ``Range`` and ``If-Range``. Both retry with
exponential backoff.
"""
from __future__ import annotations

import json
import struct
import logging
import os
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator

import requests
from stream_zip import NO_COMPRESSION_64, stream_zip

logger = logging.getLogger(__name__)

DONE = ("stored", "duplicate", "replaced", "rejected", "skipped", "sidecar")  # outcomes not to send again
_CHUNK = 1024 * 1024
# Archives of one upload sent at once. The server unzips and parses an archive in the one
# request that carries it (one process, one core); four keep two cores busy, and more than
# the server's threads only queue.
PARALLEL = 4
# What a dropped or broken connection looks like through requests.
TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class ClientError(Exception):
    """The gateway refused a request (its JSON error message), or retries ran out."""

    def __init__(self, message: str, *, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


@dataclass
class UploadReport:
    upload_id: str
    status: str
    counts: dict[str, int]
    entries: list[dict]
    attempts: int = 1
    error: dict | None = None  # the refusal of a hostile or broken archive

    @property
    def rejected(self) -> list[dict]:
        return [e for e in self.entries if e["outcome"] == "rejected"]

    @property
    def studies(self) -> list[str]:
        return sorted({e["study_uid"] for e in self.entries if e.get("study_uid") and e["outcome"] != "rejected"})


def files_to_send(paths: Iterable[str | os.PathLike]) -> list[tuple[str, Path]]:
    """(entry name, file) of every file under ``paths`` (folders recursively, sorted); names are
    relative to the folder given, as POSIX paths."""
    found: list[tuple[str, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    file = Path(dirpath) / name
                    found.append((PurePosixPath(path.name, file.relative_to(path).as_posix()).as_posix(), file))
        elif path.is_file():
            found.append((path.name, path))
        else:
            raise FileNotFoundError(f"{path} does not exist")
    names = [name for name, _ in found]
    if len(set(names)) != len(names):
        raise ValueError("two files would have the same name in the archive: give folders, not files of "
                         "several folders with the same names")
    return found


def _split(entries: list[tuple[str, Path]], parts: int) -> list[list[tuple[str, Path]]]:
    """At most ``parts`` contiguous runs of the entries with about equal bytes, none empty
    (contiguous: a series stays in one or two archives, in its order)."""
    sizes = [path.stat().st_size for _, path in entries]
    total, parts = sum(sizes), max(1, min(parts, len(entries)))
    groups: list[list[tuple[str, Path]]] = []
    current: list[tuple[str, Path]] = []
    done = 0
    for i, (entry, size) in enumerate(zip(entries, sizes)):
        current.append(entry)
        done += size
        wanted = parts - len(groups) - 1  # archives still to start after this one
        if wanted and (done * parts >= total * (len(groups) + 1) or len(entries) - i - 1 == wanted):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def _crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def archive_stream(entries: list[tuple[str, Path]], *, sent: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """A zip of the files, made as it is sent (stored entries, ZIP64 when needed)."""
    def members():
        for name, path in entries:
            stat = path.stat()
            def chunks(path=path):
                with path.open("rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        yield chunk
            yield (name, datetime.fromtimestamp(stat.st_mtime), 0o644,
                   NO_COMPRESSION_64(stat.st_size, _crc32(path)), chunks())

    for chunk in stream_zip(members(), chunk_size=_CHUNK):
        if sent is not None:
            sent(len(chunk))
        yield chunk


@dataclass
class PreviewVolume:
    """A series' preview (README "Preview stream"): ``header`` the geometry, ``stored`` the
    samples as the modality stores them (slices × rows × columns[ × 3]), ``values`` them in
    modality units (Hounsfield units for CT). Non-diagnostic."""

    header: dict
    stored: "numpy.ndarray"  # noqa: F821 (numpy is imported when a preview is read)

    @property
    def values(self):
        import numpy as np

        slopes = np.array([s.get("rescale_slope", self.header["rescale_slope"]) for s in self.header["slices"]],
                          dtype=np.float32)
        intercepts = np.array([s.get("rescale_intercept", self.header["rescale_intercept"])
                               for s in self.header["slices"]], dtype=np.float32)
        shape = (-1,) + (1,) * (self.stored.ndim - 1)
        return self.stored.astype(np.float32) * slopes.reshape(shape) + intercepts.reshape(shape)


def _decode_codestream(data: bytes):
    """A JPEG 2000 codestream's samples: pylibjpeg-openjpeg from memory, else glymur."""
    try:
        import openjpeg
    except ImportError:
        import tempfile

        import glymur

        with tempfile.NamedTemporaryFile(suffix=".j2k") as fh:
            fh.write(data)
            fh.flush()
            return glymur.Jp2k(fh.name)[:]
    return openjpeg.decode(data)


def read_preview(chunks: Iterable[bytes], *, threads: int = 4) -> PreviewVolume:
    """A preview stream (an iterable of byte chunks, e.g. a streamed response) as a volume:
    slices are decoded on ``threads`` threads while the rest arrives."""
    import numpy as np

    buffer = bytearray()
    source = iter(chunks)

    def take(n: int) -> bytes:
        while len(buffer) < n:
            chunk = next(source, None)
            if chunk is None:
                raise ClientError(f"the preview stream ended early ({len(buffer)} of {n} bytes)")
            buffer.extend(chunk)
        piece = bytes(buffer[:n])
        del buffer[:n]
        return piece

    magic, length = struct.unpack("<4sI", take(8))
    if magic != b"DPV1":
        raise ClientError(f"not a preview stream (magic {magic!r})")
    header = json.loads(take(length))
    entries = sorted(header["slices"], key=lambda e: e["offset"])
    with ThreadPoolExecutor(threads) as pool:
        futures, position = [], 0
        for entry in entries:
            if entry["offset"] != position:
                take(entry["offset"] - position)
            futures.append(pool.submit(_decode_codestream, take(entry["length"])))
            position = entry["offset"] + entry["length"]
        decoded = [f.result() for f in futures]
    if not decoded:
        return PreviewVolume(header, np.zeros((0, header["rows"], header["columns"]), dtype=np.int32))
    stored = np.stack(decoded).astype(np.int32) + int(header.get("value_offset", 0))
    order = np.argsort([e["index"] for e in entries])
    return PreviewVolume(header, stored[order])


class GatewayClient:
    def __init__(self, url: str, token: str, *, retries: int = 5, backoff: float = 1.0, timeout: float = 120,
                 session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers.setdefault("User-Agent", "gateway-client")
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout

    # --- plumbing -------------------------------------------------------------------------------
    def _check(self, response: requests.Response) -> requests.Response:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            message = body.get("message") or response.reason
            raise ClientError(f"{response.status_code} {message}", status=response.status_code, body=body)
        return response

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        """A request retried on dropped connections and 503s, with backoff."""
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
                if response.status_code != 503 or attempt == self.retries:
                    return self._check(response)
                wait = float(response.headers.get("Retry-After", self.backoff * 2 ** attempt))
            except TRANSIENT as exc:
                if attempt == self.retries:
                    raise ClientError(f"{method} {path}: {exc}") from exc
                wait = self.backoff * 2 ** attempt
            logger.info("%s %s: retrying in %.1f s", method, path, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")

    # --- uploads ---------------------------------------------------------------------------------
    def open_upload(self, *, study: str | None = None, expected: int | None = None,
                    client: str = "gateway-client") -> dict:
        body = {"client": client}
        if study:
            body["study"] = study
        if expected:
            body["expected_instances"] = expected
        return self._request("POST", "/api/v1/uploads", json=body).json()

    def status(self, upload_id: str) -> dict:
        return self._request("GET", f"/api/v1/uploads/{upload_id}").json()

    def complete(self, upload_id: str) -> dict:
        return self._request("POST", f"/api/v1/uploads/{upload_id}/complete").json()

    def _settled(self, upload_id: str, wait: float = 60) -> dict:
        """The listing once no archive of the upload is being read any more."""
        deadline = time.monotonic() + wait
        while True:
            listing = self.status(upload_id)
            if all(p["state"] != "receiving" for p in listing["parts"]) or time.monotonic() > deadline:
                return listing
            time.sleep(0.5)

    def upload(self, paths: Iterable[str | os.PathLike], *, study: str | None = None, expected: int | None = None,
               complete: bool = True, progress: Callable[[int], None] | None = None,
               parallel: int = PARALLEL) -> UploadReport:
        """Send every file under ``paths`` in one upload, as ``parallel`` archives at once;
        resume after dropped connections."""
        entries = files_to_send(paths)
        upload = self.open_upload(study=study, expected=expected)
        upload_id, remaining = upload["id"], entries
        lock = threading.Lock()

        def sent(n: int) -> None:
            with lock:
                progress(n)

        attempts, error = 0, None
        while remaining:
            attempts += 1
            groups = _split(remaining, parallel)
            with ThreadPoolExecutor(len(groups), thread_name_prefix="upload") as pool:
                results = list(pool.map(lambda group: self._send_archive(
                    upload_id, group, sent if progress else None), groups))
            refusals = [r for r in results if isinstance(r, dict)]
            if refusals:  # a refused archive: the server says why, no retry
                error = refusals[0]
                break
            lost = [r for r in results if isinstance(r, BaseException)]
            if lost:
                if attempts > self.retries:
                    raise ClientError(f"upload {upload_id}: the connection kept dropping ({lost[0]})") from lost[0]
                wait = self.backoff * 2 ** (attempts - 1)
                logger.info("upload %s: %d of %d archives lost (%s); resuming in %.1f s", upload_id, len(lost),
                            len(groups), lost[0], wait)
                time.sleep(wait)
            listing = self._settled(upload_id)
            done = {e["name"] for e in listing["entries"] if e["outcome"] in DONE}
            remaining = [(name, path) for name, path in entries if name not in done]
        listing = self.complete(upload_id) if complete and error is None else self.status(upload_id)
        return UploadReport(upload_id, listing["status"], listing["counts"], listing["entries"], attempts, error)

    def _send_archive(self, upload_id: str, entries: list[tuple[str, Path]],
                      sent: Callable[[int], None] | None) -> dict | BaseException | None:
        """One archive of the upload: None once received, the refusal of the server (400, 413),
        or the exception of a dropped connection."""
        try:
            response = self.session.put(f"{self.url}/api/v1/uploads/{upload_id}/archive",
                                        data=archive_stream(entries, sent=sent), timeout=self.timeout,
                                        headers={"Content-Type": "application/zip"})
        except TRANSIENT as exc:
            return exc
        if response.status_code in (400, 413):
            body = response.json()
            return body.get("errors", {}) | {"message": body.get("message")}
        self._check(response)
        return None

    def events(self, upload_id: str, *, after: int = 0) -> Iterator[tuple[str, dict]]:
        """(event, data) of the upload as they come, until it is complete or expired; reconnects
        with Last-Event-ID when the stream drops."""
        last = after
        for attempt in range(self.retries + 1):
            try:
                with self.session.get(f"{self.url}/api/v1/uploads/{upload_id}/events", stream=True,
                                      timeout=self.timeout, headers={"Accept": "text/event-stream",
                                                                     "Last-Event-ID": str(last)}) as response:
                    self._check(response)
                    event = None
                    for line in response.iter_lines(decode_unicode=True):
                        if line.startswith("id: "):
                            last = int(line[4:])
                        elif line.startswith("event: "):
                            event = line[7:]
                        elif line.startswith("data: "):
                            yield event, json.loads(line[6:])
                            if event in ("complete", "expired"):
                                return
                return
            except TRANSIENT:
                if attempt == self.retries:
                    raise
                time.sleep(self.backoff * 2 ** attempt)

    # --- downloads -------------------------------------------------------------------------------
    # --- previews --------------------------------------------------------------------------------
    def preview_status(self, study: str, series: str) -> dict:
        return self._request("GET", f"/api/v1/studies/{study}/series/{series}/preview/status").json()

    def preview(self, study: str, series: str, *, slices: str | None = None, wait: float = 0) -> PreviewVolume:
        """The series' preview as a numpy volume (``slices=a-b``: those only); ``wait`` seconds
        for it to be made when it is not yet (else the 404 is a :class:`ClientError`)."""
        path = f"/api/v1/studies/{study}/series/{series}/preview"
        deadline = time.monotonic() + wait
        while True:
            with self.session.get(self.url + path, params={"slices": slices} if slices else None, stream=True,
                                  timeout=self.timeout) as response:
                if response.status_code == 404 and time.monotonic() < deadline and \
                        "derived" in (response.json().get("errors") or {}):
                    time.sleep(0.5)
                    continue
                self._check(response)
                return read_preview(response.iter_content(_CHUNK))

    def download(self, study: str, dest: str | os.PathLike, *, series: str | None = None, slices: str | None = None,
                 deflate: bool = False, unzip: bool = False,
                 progress: Callable[[int, int | None], None] | None = None) -> Path:
        """The study (or series, or its slice range) as a zip in folder ``dest`` (or unpacked
        there with ``unzip``); an interrupted transfer resumes where it stopped."""
        path = f"/api/v1/studies/{study}" + (f"/series/{series}" if series else "") + "/archive"
        params = {k: v for k, v in (("slices", slices), ("compress", "deflate" if deflate else None)) if v}
        folder = Path(dest)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / (f"{study}" + (f"_{series}" if series else "") + (f"_{slices}" if slices else "") + ".zip")
        partial = target.with_suffix(".zip.part")
        partial.unlink(missing_ok=True)
        etag, total = None, None
        for attempt in range(self.retries + 1):
            have = partial.stat().st_size if partial.exists() else 0
            # Resume only what is known to be the same archive (its ETag); else from the start.
            headers = {"Range": f"bytes={have}-", "If-Range": etag} if have and etag else {}
            try:
                with self.session.get(self.url + path, params=params, headers=headers, stream=True,
                                      timeout=self.timeout) as response:
                    self._check(response)
                    if response.status_code != 206:  # from the start (first try, or the archive changed)
                        have = 0
                        total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers \
                            else None
                        etag = response.headers.get("ETag")
                    with partial.open("ab" if response.status_code == 206 else "wb") as out:
                        for chunk in response.iter_content(_CHUNK):
                            out.write(chunk)
                            have += len(chunk)
                            if progress is not None:
                                progress(have, total)
                if total is not None and have != total:
                    raise requests.ConnectionError(f"the download stopped at {have} of {total} bytes")
                break
            except TRANSIENT as exc:
                if attempt == self.retries:
                    raise ClientError(f"download of {path}: {exc}") from exc
                wait = self.backoff * 2 ** attempt
                logger.info("download %s: %s; resuming in %.1f s", path, exc, wait)
                time.sleep(wait)
        partial.replace(target)
        if not unzip:
            return target
        out_dir = folder / target.stem
        with zipfile.ZipFile(target) as archive:
            for member in archive.infolist():
                name = PurePosixPath(member.filename)
                if name.is_absolute() or ".." in name.parts:  # the gateway never names entries so; a proxy might
                    raise ClientError(f"the archive holds an unsafe name {member.filename!r}")
                archive.extract(member, out_dir)
        target.unlink()
        return out_dir
