"""Streaming multipart/related (RFC 2046 / RFC 2387) reading and writing.

STOW-RS request bodies can be several GB, so :class:`MultipartReader` never
holds more than about two read chunks (plus at most ``max_header_bytes`` of
part headers) in memory: part bodies are handed out chunk by chunk as soon as
it is certain they cannot be the start of a delimiter.

Delimiter recognition follows the RFC 2046 grammar: ``CRLF "--" boundary``
counts as a delimiter only when followed by optional transport padding
(spaces/tabs) and a line break, or by ``--`` (close delimiter) then padding
and a line break or the end of the stream.  Anything else, e.g.
``\\r\\n--boundaryX``, is body data.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable, Iterator
from typing import Protocol

from dicomweb.media_types import parse_media_type

logger = logging.getLogger(__name__)

__all__ = [
    "MalformedMultipart",
    "MultipartReader",
    "Part",
    "iter_multipart",
    "new_boundary",
    "parse_boundary",
]

_CR, _LF, _SP, _TAB = 13, 10, 32, 9
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_BREAK = re.compile(r"\r?\n")
# RFC 2046 bounds boundaries at 70 characters; allow more to be lenient, but
# keep the delimiter (and so the reader's look-behind) small.
_MAX_BOUNDARY = 256


class MalformedMultipart(ValueError):
    """The multipart body (or its Content-Type) does not follow RFC 2046."""


class _Truncated(MalformedMultipart):
    """The stream ended before a delimiter was found."""


class ReadableStream(Protocol):
    def read(self, n: int, /) -> bytes: ...


def parse_boundary(content_type_header: str) -> str:
    """Return the ``boundary`` parameter of a multipart Content-Type header.

    The value may be quoted or not; its case is preserved.  Raises
    MalformedMultipart if the header is not multipart/* or has no usable
    boundary.
    """
    try:
        media_type, params = parse_media_type(content_type_header or "")
    except ValueError as exc:
        raise MalformedMultipart(f"invalid Content-Type: {exc}") from None
    if not media_type.startswith("multipart/"):
        raise MalformedMultipart(f"expected a multipart Content-Type, got {media_type!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise MalformedMultipart(f"Content-Type {content_type_header.strip()!r} has no boundary parameter")
    _check_boundary(boundary)
    return boundary


def _check_boundary(boundary: str) -> None:
    if not boundary:
        raise MalformedMultipart("multipart boundary is empty")
    if len(boundary) > _MAX_BOUNDARY:
        raise MalformedMultipart(f"multipart boundary is longer than {_MAX_BOUNDARY} characters")
    if "\r" in boundary or "\n" in boundary:
        raise MalformedMultipart("multipart boundary contains a line break")


def _encode_boundary(boundary: str) -> bytes:
    # Header values reach us decoded as latin-1 (WSGI), so that is the
    # byte-exact inverse; fall back to UTF-8 for anything outside it.
    try:
        return boundary.encode("latin-1")
    except UnicodeEncodeError:
        return boundary.encode("utf-8")


def new_boundary() -> str:
    """A random boundary made of characters that never need quoting."""
    return "dicomweb-" + secrets.token_hex(16)


class Part:
    """One body part of a multipart stream, valid while it is the reader's current part.

    Consume it with ``for chunk in part``, :meth:`iter_chunks` or :meth:`read`.
    Once the reader moves to the next part, whatever was not consumed is
    skipped and iterating this part raises RuntimeError.
    """

    def __init__(self, reader: MultipartReader, headers: dict[str, str], index: int) -> None:
        self._reader = reader
        self.headers = headers
        self.index = index
        self._done = False

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def iter_chunks(self) -> Iterator[bytes]:
        """Yield the body as non-empty bytes chunks.

        Raises MalformedMultipart if the stream ends inside this part.
        """
        if self._done or self._reader._current is not self:
            raise RuntimeError(f"body of multipart part #{self.index} was already consumed or skipped")
        while True:
            if self._done:  # skipped by the reader while this iterator was suspended
                raise RuntimeError(f"multipart part #{self.index} was skipped before its body was consumed")
            chunk = self._reader._next_chunk()
            if chunk is None:
                self._done = True
                return
            yield chunk

    __iter__ = iter_chunks

    def read(self) -> bytes:
        """The whole (remaining) body in memory: only for parts known to be small."""
        return b"".join(self.iter_chunks())

    def _skip(self) -> None:
        if not self._done and self._reader._current is self:
            while self._reader._next_chunk() is not None:
                pass
        self._done = True

    def __repr__(self) -> str:
        return f"<Part #{self.index} content_type={self.content_type!r}>"


class MultipartReader:
    """Iterate over the parts of a multipart body read from ``stream``.

    ``stream.read(n)`` may return fewer than ``n`` bytes and returns b"" at
    end of stream.  The reader can be iterated once; parts come in order and
    must be consumed (or are skipped) before the next one is produced.

    ``max_preamble_bytes`` bounds how much text before the first boundary is
    tolerated, so a wrong boundary on a huge upload fails fast instead of
    after reading the whole body; None disables the bound.
    """

    def __init__(
        self,
        stream: ReadableStream,
        boundary: str,
        *,
        chunk_size: int = 256 * 1024,
        max_header_bytes: int = 16 * 1024,
        max_preamble_bytes: int | None = 1024 * 1024,
    ) -> None:
        _check_boundary(boundary)
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._stream = stream
        self._boundary = boundary
        self._delim = b"\r\n--" + _encode_boundary(boundary)
        self._chunk_size = chunk_size
        self._max_header_bytes = max_header_bytes
        self._max_preamble_bytes = max_preamble_bytes
        # The leading CRLF lets a first boundary at the very start of the
        # stream match the same delimiter as every other one.
        self._buf = bytearray(b"\r\n")
        self._eof = False
        self._in_body = False  # scanning preamble or part body for a delimiter
        self._search_from = 0  # no unclassified delimiter starts before this index
        self._closed = False  # close delimiter seen
        self._current: Part | None = None
        self._started = False

    # -- public -------------------------------------------------------------

    def __iter__(self) -> Iterator[Part]:
        if self._started:
            raise RuntimeError("a MultipartReader can only be iterated once")
        self._started = True
        self._skip_preamble()
        index = 0
        while not self._closed:
            headers = self._read_headers(index)
            part = Part(self, headers, index)
            self._current = part
            logger.debug("multipart part #%d: %s", index, part.content_type)
            yield part
            part._skip()
            self._current = None
            index += 1

    # -- internals ----------------------------------------------------------

    def _fill_once(self) -> bool:
        if self._eof:
            return False
        data = self._stream.read(self._chunk_size)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _fill_to(self, size: int) -> None:
        while len(self._buf) < size and self._fill_once():
            pass

    def _closing(self) -> str:
        return f"--{self._boundary}--"

    def _truncated(self, where: str = "") -> _Truncated:
        return _Truncated(f"multipart body ended before the closing boundary {self._closing()!r}{where}")

    def _skip_padding(self, pos: int) -> int:
        """Index of the first byte at or after ``pos`` that is not a space or tab."""
        start = pos
        buf = self._buf
        while True:
            if pos >= len(buf) and not self._fill_once():
                return pos
            if buf[pos] not in (_SP, _TAB):
                return pos
            pos += 1
            if pos - start > self._max_header_bytes:
                raise MalformedMultipart(f"transport padding after a boundary exceeds {self._max_header_bytes} bytes")

    def _classify(self, i: int) -> tuple[str | None, int]:
        """Decide whether the delimiter bytes found at ``i`` really are a delimiter.

        Returns ("part", index of the boundary line's line break),
        ("close", _) or (None, _) when the bytes are just body data.
        """
        buf = self._buf
        j = i + len(self._delim)
        self._fill_to(j + 2)
        if buf[j : j + 2] == b"--":
            k = self._skip_padding(j + 2)
            if k >= len(buf) or buf[k] in (_CR, _LF):
                return "close", k
            return None, 0
        k = self._skip_padding(j)
        if k >= len(buf):
            # Not a _Truncated: this is a real boundary, even in the preamble.
            raise MalformedMultipart(f"{self._truncated()} (stream ends right after a boundary)")
        if buf[k] == _LF:
            return "part", k
        if buf[k] == _CR:
            self._fill_to(k + 2)
            if buf[k + 1 : k + 2] == b"\n":
                return "part", k
        return None, 0

    def _next_chunk(self) -> bytes | None:
        """Next piece of the current body, or None once its delimiter is reached."""
        buf = self._buf
        delim_len = len(self._delim)
        while self._in_body:
            i = buf.find(self._delim, self._search_from)
            if i != -1:
                kind, end = self._classify(i)
                if kind is None:
                    self._search_from = i + 1
                    continue
                chunk = bytes(buf[:i])
                if kind == "close":
                    self._closed = True
                    buf.clear()  # the epilogue is ignored
                else:
                    # Keep the boundary line's line break: _read_headers
                    # then finds an empty header block as "\r\n\r\n" at 0.
                    del buf[:end]
                self._in_body = False
                self._search_from = 0
                return chunk or None
            if self._eof:
                raise self._truncated()
            # Only the last delim_len - 1 bytes can hold the start of a
            # delimiter, and such a start must be a CR.
            tail = max(0, len(buf) - delim_len + 1)
            self._search_from = max(self._search_from, tail)
            if len(buf) >= self._chunk_size:
                cut = buf.find(b"\r", tail)
                if cut == -1:
                    cut = len(buf)
                if cut > 0:
                    chunk = bytes(buf[:cut])
                    del buf[:cut]
                    self._search_from = max(0, self._search_from - cut)
                    return chunk
            self._fill_once()
        return None

    def _skip_preamble(self) -> None:
        self._in_body = True
        skipped = 0
        try:
            while (chunk := self._next_chunk()) is not None:
                skipped += len(chunk)
                if self._max_preamble_bytes is not None and skipped > self._max_preamble_bytes:
                    raise MalformedMultipart(
                        f"no part starts with boundary {'--' + self._boundary!r} "
                        f"in the first {self._max_preamble_bytes} bytes"
                    )
        except _Truncated:
            raise MalformedMultipart(f"no part starts with boundary {'--' + self._boundary!r}") from None
        if skipped > 2:  # the 2 bytes are our own leading CRLF
            logger.debug("ignored a multipart preamble of %d bytes", skipped - 2)

    def _read_headers(self, index: int) -> dict[str, str]:
        buf = self._buf
        limit = self._max_header_bytes
        while True:
            match = _HEADER_END.search(buf)
            if match is not None:
                if match.start() > limit:
                    break
                raw = bytes(buf[: match.start()])
                del buf[: match.end()]
                self._in_body = True
                self._search_from = 0
                return _parse_headers(raw, index)
            if len(buf) > limit + 4:
                break
            if not self._fill_once():
                raise self._truncated(f" (inside the headers of part #{index})")
        raise MalformedMultipart(f"part headers exceed {limit} bytes (part #{index}; dicomweb.max_part_header_bytes)")


def _parse_headers(raw: bytes, index: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for line in _LINE_BREAK.split(raw.decode("utf-8", errors="replace")):
        if not line:
            continue
        if line[0] in " \t":
            # Obsolete line folding: continuation of the previous header.
            if last is None:
                raise MalformedMultipart(f"part #{index} headers start with a continuation line {line!r}")
            headers[last] = f"{headers[last]} {line.strip()}".strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise MalformedMultipart(f"malformed header line {line!r} in part #{index}")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
        last = name
    return headers


def _encode_headers(headers: dict[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        text = f"{name}: {value}"
        if "\r" in text or "\n" in text or not name or ":" in name:
            raise ValueError(f"invalid multipart header {name!r}: {value!r}")
        lines.append(text.encode("utf-8") + b"\r\n")
    return b"".join(lines)


def iter_multipart(
    parts: Iterable[tuple[dict[str, str], Iterable[bytes] | bytes]],
    boundary: str,
) -> Iterator[bytes]:
    """Encode ``parts`` as a multipart body, lazily (suitable for a streamed response).

    Each part is ``(headers, body)`` where ``body`` is bytes-like or an
    iterable of bytes chunks; bodies are pulled only as the output is
    consumed.  The output ends with the close delimiter and a CRLF.
    """
    _check_boundary(boundary)
    dash_boundary = b"--" + _encode_boundary(boundary)
    opening = dash_boundary + b"\r\n"
    any_part = False
    for headers, body in parts:
        any_part = True
        yield opening + _encode_headers(headers) + b"\r\n"
        if isinstance(body, (bytes, bytearray, memoryview)):
            if body:
                yield bytes(body)
        elif isinstance(body, str):
            raise TypeError("multipart part body must be bytes or an iterable of bytes, not str")
        else:
            for chunk in body:
                if chunk:
                    yield bytes(chunk)
        # The CRLF ending a body belongs to the next delimiter.
        opening = b"\r\n" + dash_boundary + b"\r\n"
    closing = dash_boundary + b"--\r\n"
    yield b"\r\n" + closing if any_part else closing
